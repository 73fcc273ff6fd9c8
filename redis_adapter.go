package wsnotify

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// adapter is the hub's boundary to the broker that carries notifications
// between nodes and keeps their history. The Redis implementation below is
// the only one; the interface keeps the hub's logic free of Redis types.
type adapter interface {
	// notify stores (when the request keeps history) and publishes one
	// notification atomically.
	notify(ctx context.Context, req notifyRequest) (notifyResult, error)
	// publish sends payload on channel, outside history.
	publish(ctx context.Context, channel string, payload []byte) (int64, error)
	// history returns the entries of stream from start on, inclusive, in
	// order, until the end of the stream.
	history(ctx context.Context, stream string, start streamID) ([]frame, error)
	// lastID returns the newest id of stream, or zero when it is empty.
	lastID(ctx context.Context, stream string) (streamID, error)
	// hold makes this node subscribed to channel; the returned channel is
	// closed once Redis confirms it. release undoes one hold after a grace.
	hold(channel string) <-chan struct{}
	release(channel string)
	// receivers counts the nodes subscribed to channel, cluster-wide.
	receivers(ctx context.Context, channel string) (int64, error)
	// ready reports whether the pub/sub link is up and Redis answers.
	ready(ctx context.Context) error
	close() error
}

type notifyRequest struct {
	stream, channel, idemKey string // idemKey "" means no idempotency
	typ                      string
	data                     []byte
	maxLen                   int64 // 0: no history
	maxAge, idemTTL          time.Duration
	id                       string // used without history
}

type notifyResult struct {
	id        string
	receivers int64
	replayed  bool
}

// redisEvents are the adapter's calls back into the hub. Both run on the
// read loop and must only queue work.
type redisEvents struct {
	message func(channel, payload string)
	// resubscribed reports a channel confirmed again on a new link: what was
	// published in between reached nobody here and must be read from history.
	resubscribed func(channel string)
}

// redisAdapter multiplexes every channel this node needs over one pub/sub
// connection. Subscribes and unsubscribes are collected and sent in batches by
// one goroutine; another reads the link and hands messages to the hub.
type redisAdapter struct {
	rdb    redis.UniversalClient
	script *redis.Script
	grace  time.Duration
	quiet  time.Duration
	probe  string // a channel only this node subscribes to
	log    *slog.Logger
	events redisEvents

	mu      sync.Mutex
	ps      *redis.PubSub
	subs    map[string]*subscription
	pending map[string]struct{} // channels whose wanted state may differ from what Redis was told
	kick    chan struct{}

	linkUp atomic.Bool
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// subscription is this node's interest in one channel.
type subscription struct {
	refs      int
	grace     *time.Timer   // non-nil while refs is 0 but unsubscribing waits
	sent      bool          // SUBSCRIBE sent on the current PubSub, no UNSUBSCRIBE since
	confirmed bool          // Redis confirmed it on the current link
	known     bool          // confirmed on some earlier link
	ready     chan struct{} // closed when confirmed
}

func (s *subscription) wanted() bool { return s.refs > 0 || s.grace != nil }

func newRedisAdapter(rdb redis.UniversalClient, cfg *config, probe string, events redisEvents) *redisAdapter {
	ctx, cancel := context.WithCancel(context.Background())
	a := &redisAdapter{
		rdb:     rdb,
		script:  redis.NewScript(evalScriptSource()),
		grace:   cfg.unsubscribeGrace,
		quiet:   cfg.probeInterval,
		probe:   probe,
		log:     cfg.logger,
		events:  events,
		ps:      rdb.Subscribe(ctx),
		subs:    make(map[string]*subscription),
		pending: make(map[string]struct{}),
		kick:    make(chan struct{}, 1),
		ctx:     ctx,
		cancel:  cancel,
	}
	a.hold(probe)
	a.wg.Go(a.flushLoop)
	a.wg.Go(a.readLoop)
	return a
}

func unavailable(op string, err error) error {
	return fmt.Errorf("%w: %s: %w", ErrUnavailable, op, err)
}

func (a *redisAdapter) notify(ctx context.Context, req notifyRequest) (notifyResult, error) {
	keys := []string{req.stream, req.channel}
	if req.idemKey != "" {
		keys = append(keys, req.idemKey)
	}
	v, err := a.script.Run(ctx, a.rdb, keys, req.typ, req.data, req.maxLen,
		req.maxAge.Milliseconds(), req.idemTTL.Milliseconds(), req.id).Slice()
	if err != nil {
		return notifyResult{}, unavailable("notify", err)
	}
	if len(v) != 3 {
		return notifyResult{}, fmt.Errorf("wsnotify: notify script returned %v", v)
	}
	id, _ := v[0].(string)
	n, _ := v[1].(int64)
	replayed, _ := v[2].(int64)
	return notifyResult{id: id, receivers: n, replayed: replayed == 1}, nil
}

func (a *redisAdapter) publish(ctx context.Context, channel string, payload []byte) (int64, error) {
	n, err := a.rdb.Publish(ctx, channel, payload).Result()
	if err != nil {
		return 0, unavailable("publish", err)
	}
	return n, nil
}

const historyPage = 256

func (a *redisAdapter) history(ctx context.Context, stream string, start streamID) ([]frame, error) {
	var out []frame
	from, skipFirst := start.String(), false
	for {
		msgs, err := a.rdb.XRangeN(ctx, stream, from, "+", historyPage).Result()
		if err != nil {
			return nil, unavailable("history", err)
		}
		full := len(msgs) == historyPage
		if skipFirst && len(msgs) > 0 {
			msgs = msgs[1:] // each later page starts at the previous page's last entry
		}
		for _, m := range msgs {
			f, ok := historyFrame(m)
			if !ok {
				return nil, fmt.Errorf("wsnotify: history entry %s of %s is malformed", m.ID, stream)
			}
			out = append(out, f)
		}
		if !full {
			return out, nil
		}
		from, skipFirst = out[len(out)-1].id.String(), true
	}
}

// historyFrame rebuilds the envelope the script published for entry m.
func historyFrame(m redis.XMessage) (frame, bool) {
	id, ok := parseStreamID(m.ID)
	typ, ok1 := m.Values["t"].(string)
	data, ok2 := m.Values["d"].(string)
	if !ok || !ok1 || !ok2 {
		return frame{}, false
	}
	payload := appendEnvelope(make([]byte, 0, len(m.ID)+len(typ)+len(data)+32), m.ID, typ, []byte(data))
	return frame{id: id, payload: payload}, true
}

func (a *redisAdapter) lastID(ctx context.Context, stream string) (streamID, error) {
	msgs, err := a.rdb.XRevRangeN(ctx, stream, "+", "-", 1).Result()
	if err != nil {
		return streamID{}, unavailable("history", err)
	}
	if len(msgs) == 0 {
		return streamID{}, nil
	}
	id, _ := parseStreamID(msgs[0].ID)
	return id, nil
}

func (a *redisAdapter) receivers(ctx context.Context, channel string) (int64, error) {
	counts, err := a.rdb.PubSubNumSub(ctx, channel).Result()
	if err != nil {
		return 0, unavailable("pubsub numsub", err)
	}
	return counts[channel], nil
}

func (a *redisAdapter) ready(ctx context.Context) error {
	if !a.linkUp.Load() {
		return fmt.Errorf("%w: pub/sub link is down", ErrUnavailable)
	}
	if err := a.rdb.Ping(ctx).Err(); err != nil {
		return unavailable("ping", err)
	}
	return nil
}

func (a *redisAdapter) hold(channel string) <-chan struct{} {
	a.mu.Lock()
	defer a.mu.Unlock()
	s := a.subs[channel]
	if s == nil {
		s = &subscription{ready: make(chan struct{})}
		a.subs[channel] = s
	}
	s.refs++
	if s.grace != nil {
		s.grace.Stop()
		s.grace = nil
	}
	if !s.sent {
		a.markPending(channel)
	}
	return s.ready
}

func (a *redisAdapter) release(channel string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	s := a.subs[channel]
	if s == nil || s.refs == 0 {
		return
	}
	if s.refs--; s.refs > 0 {
		return
	}
	if a.grace <= 0 {
		a.markPending(channel)
		return
	}
	var t *time.Timer
	t = time.AfterFunc(a.grace, func() {
		a.mu.Lock()
		defer a.mu.Unlock()
		if s.grace == t {
			s.grace = nil
			a.markPending(channel)
		}
	})
	s.grace = t
}

// markPending must be called with a.mu held.
func (a *redisAdapter) markPending(channel string) {
	a.pending[channel] = struct{}{}
	select {
	case a.kick <- struct{}{}:
	default: // a flush is already due; it will see this channel
	}
}

// flushLoop sends the subscription changes that piled up since the last
// flush as one SUBSCRIBE and one UNSUBSCRIBE.
func (a *redisAdapter) flushLoop() {
	for {
		select {
		case <-a.kick:
		case <-a.ctx.Done():
			return
		}
		ps, sub, unsub := a.takePending()
		if len(sub) > 0 {
			// On error go-redis keeps the channels and subscribes them when
			// the read loop reconnects, so there is nothing to retry here.
			if err := ps.Subscribe(a.ctx, sub...); err != nil && a.ctx.Err() == nil {
				a.log.Warn("wsnotify: subscribe deferred until redis is back", "channels", len(sub), "err", err)
			}
		}
		// Never call Unsubscribe with no channels: that unsubscribes all.
		if len(unsub) > 0 {
			if err := ps.Unsubscribe(a.ctx, unsub...); err != nil && a.ctx.Err() == nil {
				a.log.Warn("wsnotify: unsubscribe failed", "channels", len(unsub), "err", err)
			}
		}
	}
}

func (a *redisAdapter) takePending() (ps *redis.PubSub, sub, unsub []string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for ch := range a.pending {
		delete(a.pending, ch)
		s := a.subs[ch]
		if s == nil {
			continue
		}
		switch want := s.wanted(); {
		case want && !s.sent:
			s.sent = true
			sub = append(sub, ch)
		case !want && s.sent:
			delete(a.subs, ch)
			unsub = append(unsub, ch)
		case !want:
			delete(a.subs, ch)
		}
	}
	return a.ps, sub, unsub
}

// readLoop owns the receiving side of the link. It never does socket work:
// the events only queue. go-redis reconnects and resubscribes on errors, and
// the confirmations arrive here again. A link that stays quiet is probed by
// publishing to the node's own channel; if even that does not come back, the
// link is replaced, since a link can look healthy and receive nothing.
func (a *redisAdapter) readLoop() {
	quiet := 0
	for {
		ps := a.pubSub()
		msg, err := ps.ReceiveTimeout(a.ctx, a.quiet)
		if a.ctx.Err() != nil {
			return
		}
		if err != nil {
			if !isTimeout(err) {
				a.linkDown(err)
				a.backoff()
				continue
			}
			if quiet++; quiet == 1 {
				a.sendProbe()
			} else {
				a.linkDown(errors.New("probe did not come back"))
				a.restartLink(ps)
				quiet = 0
			}
			continue
		}
		quiet = 0
		a.linkUp.Store(true)
		switch m := msg.(type) {
		case *redis.Message:
			a.events.message(m.Channel, m.Payload)
		case *redis.Subscription:
			if m.Kind == "subscribe" && a.confirm(m.Channel) {
				a.events.resubscribed(m.Channel)
			}
		}
	}
}

func (a *redisAdapter) pubSub() *redis.PubSub {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.ps
}

func (a *redisAdapter) sendProbe() {
	ctx, cancel := context.WithTimeout(a.ctx, a.quiet)
	defer cancel()
	if err := a.rdb.Publish(ctx, a.probe, "probe").Err(); err != nil && a.ctx.Err() == nil {
		a.log.Warn("wsnotify: redis probe failed", "err", err)
	}
}

// restartLink replaces the PubSub: every wanted channel is subscribed again
// on a fresh connection, and the confirmations trigger a resync.
func (a *redisAdapter) restartLink(old *redis.PubSub) {
	a.mu.Lock()
	a.ps = a.rdb.Subscribe(a.ctx)
	for ch, s := range a.subs {
		s.sent = false
		a.markPending(ch)
	}
	a.mu.Unlock()
	_ = old.Close()
}

// confirm records Redis's confirmation of channel and reports whether the
// channel had been confirmed on an earlier link.
func (a *redisAdapter) confirm(channel string) (again bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	s := a.subs[channel]
	if s == nil || !s.sent || s.confirmed {
		return false
	}
	s.confirmed = true
	close(s.ready)
	again, s.known = s.known, true
	return again
}

// linkDown forgets every confirmation: until Redis confirms again on a new
// link, nothing is known to be delivered.
func (a *redisAdapter) linkDown(err error) {
	if a.linkUp.Swap(false) {
		a.log.Warn("wsnotify: redis pub/sub link down", "err", err)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, s := range a.subs {
		if s.confirmed {
			s.confirmed = false
			s.ready = make(chan struct{})
		}
	}
}

func (a *redisAdapter) backoff() {
	t := time.NewTimer(100 * time.Millisecond)
	defer t.Stop()
	select {
	case <-t.C:
	case <-a.ctx.Done():
	}
}

// close ends both loops. Closing the pub/sub connection drops every
// subscription of this node at once.
func (a *redisAdapter) close() error {
	a.cancel()
	err := a.pubSub().Close()
	a.wg.Wait()
	a.mu.Lock()
	for _, s := range a.subs {
		if s.grace != nil {
			s.grace.Stop()
		}
	}
	a.mu.Unlock()
	return err
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// loadFunction loads the notify script as a Redis Function library, so other
// services can FCALL it. Servers without FUNCTION (before Redis 7, or an
// embedded stand-in) keep working: the hub itself uses EVALSHA.
func loadFunction(ctx context.Context, rdb redis.UniversalClient) error {
	err := rdb.FunctionLoadReplace(ctx, FunctionLibrary()).Err()
	if err != nil && strings.Contains(strings.ToLower(err.Error()), "unknown command") {
		return nil
	}
	return err
}
