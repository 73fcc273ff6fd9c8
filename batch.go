package wsnotify

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// batcher lets concurrent Notify calls share round trips to Redis. Calls
// queue their command; a sender takes whatever has queued (up to maxBatch)
// and sends it as one pipeline. Under light load a batch is one
// command and costs what a plain call costs; under heavy load many commands
// ride one write and one read, for the caller and for Redis alike.
// Notifications with history go further: those of one partition in a batch
// are stored and published by one call of the notify_many script.
type batcher struct {
	rdb     redis.UniversalClient
	single  *redis.Script // wsnotify_notify: one notification
	many    *redis.Script // wsnotify_notify_many: several with history
	sharded string        // "1" on a Cluster: the scripts use SPUBLISH
	timeout time.Duration // bound of one pipeline round trip
	queue   chan *call
	quit    chan struct{}
	wg      sync.WaitGroup
}

// call is one queued command, or one notification for notify_many; done is
// closed when its result is in cmd, or in res and err.
type call struct {
	cmd  redis.Cmder
	note *notifyRequest
	res  notifyResult
	err  error
	done chan struct{}
}

const (
	maxBatch = 256
	// maxNotes bounds the notifications of one notify_many call, so one
	// script does not hold Redis for long.
	maxNotes = 64
	// batchSender is how many pipelines may be in flight at once. One lets
	// batches grow with the load: go run ./bench -scenario s2 delivered
	// 113,748/s with one and 85,383/s with four (history off, medians of 3),
	// and the same latency at 500/s.
	batchSender = 1
)

func newBatcher(rdb redis.UniversalClient, sharded bool, timeout time.Duration) *batcher {
	b := &batcher{
		rdb:     rdb,
		single:  redis.NewScript(evalScriptSource()),
		many:    redis.NewScript(evalManySource()),
		sharded: "0",
		timeout: timeout,
		queue:   make(chan *call, maxBatch*batchSender),
		quit:    make(chan struct{}),
	}
	if sharded {
		b.sharded = "1"
	}
	for range batchSender {
		b.wg.Go(b.send)
	}
	return b
}

// do queues cmd and waits for its result or for ctx. A call abandoned at its
// deadline may still be sent: like any Redis command cut off by a timeout,
// it may or may not have run.
func (b *batcher) do(ctx context.Context, cmd redis.Cmder) error {
	c := &call{cmd: cmd, done: make(chan struct{})}
	if err := b.wait(ctx, c); err != nil {
		return err
	}
	return cmd.Err()
}

// notify queues a notification with history and no idempotency key, to be
// sent with others of its partition, and waits for its result or for ctx.
func (b *batcher) notify(ctx context.Context, req *notifyRequest) (notifyResult, error) {
	c := &call{note: req, done: make(chan struct{})}
	if err := b.wait(ctx, c); err != nil {
		return notifyResult{}, err
	}
	return c.res, c.err
}

func (b *batcher) wait(ctx context.Context, c *call) error {
	select {
	case b.queue <- c:
	case <-ctx.Done():
		return ctx.Err()
	case <-b.quit:
		return ErrClosed
	}
	select {
	case <-c.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-b.quit:
		return ErrClosed
	}
}

func (b *batcher) send() {
	batch := make([]*call, 0, maxBatch)
	for {
		select {
		case c := <-b.queue:
			batch = append(batch[:0], c)
		case <-b.quit:
			return
		}
		// Let callers that are runnable queue their calls first: after a
		// round trip the callers it woke are about to send again, and one
		// yield makes them one batch instead of a trickle of small ones.
		runtime.Gosched()
	more:
		for len(batch) < maxBatch {
			select {
			case c := <-b.queue:
				batch = append(batch, c)
			default:
				break more
			}
		}
		b.exec(batch)
		clear(batch)
	}
}

// entry is one command of a pipeline: a call's own command, or a notify_many
// carrying notes. A command refused with NOSCRIPT (a restart, a failover, a
// new shard) has its script loaded and is sent again.
type entry struct {
	cmd    redis.Cmder
	script *redis.Script // nil: not a script
	notes  []*call
}

// exec sends batch as one pipeline.
func (b *batcher) exec(batch []*call) {
	ctx, cancel := context.WithTimeout(context.Background(), b.timeout)
	defer cancel()
	entries := b.entries(ctx, batch)
	b.pipeline(ctx, entries)
	var retry []entry
	loaded := map[*redis.Script]error{}
	for _, e := range entries {
		if err := e.cmd.Err(); e.script == nil || err == nil || !strings.HasPrefix(err.Error(), "NOSCRIPT") {
			continue
		}
		err, tried := loaded[e.script]
		if !tried {
			err = e.script.Load(ctx, b.rdb).Err()
			loaded[e.script] = err
		}
		if err == nil {
			e.cmd.SetErr(nil)
			retry = append(retry, e)
		}
	}
	if len(retry) > 0 {
		b.pipeline(ctx, retry)
	}
	for _, e := range entries {
		if e.notes != nil {
			settleNotes(e)
		}
	}
	for _, c := range batch {
		close(c.done)
	}
}

// entries turns a batch into pipeline commands: calls with a command keep
// it; notes are grouped by partition (one hash slot on a Cluster), in the
// order they came, maxNotes to a notify_many.
func (b *batcher) entries(ctx context.Context, batch []*call) []entry {
	entries := make([]entry, 0, len(batch))
	var groups map[int][]*call
	var order []int
	for _, c := range batch {
		if c.note == nil {
			e := entry{cmd: c.cmd}
			if isEvalSHA(c.cmd) {
				e.script = b.single
			}
			entries = append(entries, e)
			continue
		}
		if groups == nil {
			groups = make(map[int][]*call)
		}
		p := c.note.partition
		if _, seen := groups[p]; !seen {
			order = append(order, p)
		}
		groups[p] = append(groups[p], c)
	}
	for _, p := range order {
		for notes := groups[p]; len(notes) > 0; {
			n := min(len(notes), maxNotes)
			entries = append(entries, entry{cmd: b.manyCmd(ctx, notes[:n]), script: b.many, notes: notes[:n]})
			notes = notes[n:]
		}
	}
	return entries
}

func (b *batcher) manyCmd(ctx context.Context, notes []*call) *redis.Cmd {
	first := notes[0].note
	args := make([]any, 0, 3+4*len(notes)+3)
	args = append(args, "evalsha", b.many.Hash(), 2*len(notes))
	for _, c := range notes {
		args = append(args, c.note.stream, c.note.channel)
	}
	args = append(args, first.maxLen, first.maxAge.Milliseconds(), b.sharded)
	for _, c := range notes {
		args = append(args, c.note.typ, c.note.data)
	}
	return redis.NewCmd(ctx, args...)
}

// settleNotes hands each note of a notify_many its id and receiver count.
func settleNotes(e entry) {
	v, err := e.cmd.(*redis.Cmd).Slice()
	if err == nil && len(v) != 2*len(e.notes) {
		err = fmt.Errorf("wsnotify: notify_many returned %d values for %d notifications", len(v), len(e.notes))
	}
	for i, c := range e.notes {
		if err != nil {
			c.err = err
			continue
		}
		id, _ := v[2*i].(string)
		n, _ := v[2*i+1].(int64)
		c.res = notifyResult{id: id, receivers: n}
	}
}

func isEvalSHA(cmd redis.Cmder) bool {
	return strings.EqualFold(cmd.Name(), "evalsha")
}

func (b *batcher) pipeline(ctx context.Context, entries []entry) {
	pipe := b.rdb.Pipeline()
	for _, e := range entries {
		_ = pipe.Process(ctx, e.cmd)
	}
	_, _ = pipe.Exec(ctx) // each command carries its own error
}

// stop ends the senders once the queue is empty; do must not be called after.
func (b *batcher) stop() {
	close(b.quit)
	b.wg.Wait()
}
