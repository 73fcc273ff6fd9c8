package wsnotify

import (
	"context"
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
type batcher struct {
	rdb     redis.UniversalClient
	script  *redis.Script
	timeout time.Duration // bound of one pipeline round trip
	queue   chan *call
	quit    chan struct{}
	wg      sync.WaitGroup
}

// call is one queued command; done is closed when its result is in cmd.
type call struct {
	cmd  redis.Cmder
	done chan struct{}
}

const (
	maxBatch = 256
	// batchSender is how many pipelines may be in flight at once. One lets
	// batches grow with the load: go run ./bench -scenario s2 delivered
	// 113,748/s with one and 85,383/s with four (history off, medians of 3),
	// and the same latency at 500/s.
	batchSender = 1
)

func newBatcher(rdb redis.UniversalClient, script *redis.Script, timeout time.Duration) *batcher {
	b := &batcher{rdb: rdb, script: script, timeout: timeout, queue: make(chan *call, maxBatch*batchSender), quit: make(chan struct{})}
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
	select {
	case b.queue <- c:
	case <-ctx.Done():
		return ctx.Err()
	case <-b.quit:
		return ErrClosed
	}
	select {
	case <-c.done:
		return cmd.Err()
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

// exec sends batch as one pipeline. Scripts go as EVALSHA; if Redis does not
// know the script (a restart, a failover, a new shard), it is loaded and the
// refused commands are sent again.
func (b *batcher) exec(batch []*call) {
	ctx, cancel := context.WithTimeout(context.Background(), b.timeout)
	defer cancel()
	b.pipeline(ctx, batch)
	var retry []*call
	for _, c := range batch {
		if err := c.cmd.Err(); err != nil && strings.HasPrefix(err.Error(), "NOSCRIPT") {
			retry = append(retry, c)
		}
	}
	if len(retry) > 0 {
		if err := b.script.Load(ctx, b.rdb).Err(); err == nil {
			for _, c := range retry {
				c.cmd.SetErr(nil)
			}
			b.pipeline(ctx, retry)
		}
	}
	for _, c := range batch {
		close(c.done)
	}
}

func (b *batcher) pipeline(ctx context.Context, batch []*call) {
	pipe := b.rdb.Pipeline()
	for _, c := range batch {
		_ = pipe.Process(ctx, c.cmd)
	}
	_, _ = pipe.Exec(ctx) // each command carries its own error
}

// stop ends the senders once the queue is empty; do must not be called after.
func (b *batcher) stop() {
	close(b.quit)
	b.wg.Wait()
}
