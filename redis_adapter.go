package wsnotify

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// adapter is the hub's boundary to the broker that carries notifications
// between nodes. The Redis implementation below is the only one; the
// interface keeps the hub's logic free of Redis types.
type adapter interface {
	// publish sends payload on channel and returns how many nodes received it.
	publish(ctx context.Context, channel string, payload []byte) (int64, error)
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

// redisAdapter multiplexes every channel this node needs over one pub/sub
// connection. Subscribes and unsubscribes are collected and sent in batches by
// one goroutine; another reads the link and hands messages to onMessage.
type redisAdapter struct {
	rdb       redis.UniversalClient
	ps        *redis.PubSub
	grace     time.Duration
	ping      time.Duration
	log       *slog.Logger
	onMessage func(channel, payload string)

	mu      sync.Mutex
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
	sent      bool          // SUBSCRIBE sent and no UNSUBSCRIBE since
	confirmed bool          // Redis confirmed it on the current link
	ready     chan struct{} // closed when confirmed
}

func (s *subscription) wanted() bool { return s.refs > 0 || s.grace != nil }

func newRedisAdapter(rdb redis.UniversalClient, cfg *config, onMessage func(channel, payload string)) *redisAdapter {
	ctx, cancel := context.WithCancel(context.Background())
	a := &redisAdapter{
		rdb:       rdb,
		ps:        rdb.Subscribe(ctx),
		grace:     cfg.unsubscribeGrace,
		ping:      cfg.pingInterval,
		log:       cfg.logger,
		onMessage: onMessage,
		subs:      make(map[string]*subscription),
		pending:   make(map[string]struct{}),
		kick:      make(chan struct{}, 1),
		ctx:       ctx,
		cancel:    cancel,
	}
	a.wg.Go(a.flushLoop)
	a.wg.Go(a.readLoop)
	return a
}

func (a *redisAdapter) publish(ctx context.Context, channel string, payload []byte) (int64, error) {
	n, err := a.rdb.Publish(ctx, channel, payload).Result()
	if err != nil {
		return 0, fmt.Errorf("%w: publish: %w", ErrUnavailable, err)
	}
	return n, nil
}

func (a *redisAdapter) receivers(ctx context.Context, channel string) (int64, error) {
	counts, err := a.rdb.PubSubNumSub(ctx, channel).Result()
	if err != nil {
		return 0, fmt.Errorf("%w: pubsub numsub: %w", ErrUnavailable, err)
	}
	return counts[channel], nil
}

func (a *redisAdapter) ready(ctx context.Context) error {
	if !a.linkUp.Load() {
		return fmt.Errorf("%w: pub/sub link is down", ErrUnavailable)
	}
	if err := a.rdb.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("%w: ping: %w", ErrUnavailable, err)
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
		sub, unsub := a.takePending()
		if len(sub) > 0 {
			// On error go-redis keeps the channels and subscribes them when
			// the read loop reconnects, so there is nothing to retry here.
			if err := a.ps.Subscribe(a.ctx, sub...); err != nil && a.ctx.Err() == nil {
				a.log.Warn("wsnotify: subscribe deferred until redis is back", "channels", len(sub), "err", err)
			}
		}
		// Never call Unsubscribe with no channels: that unsubscribes all.
		if len(unsub) > 0 {
			if err := a.ps.Unsubscribe(a.ctx, unsub...); err != nil && a.ctx.Err() == nil {
				a.log.Warn("wsnotify: unsubscribe failed", "channels", len(unsub), "err", err)
			}
		}
	}
}

func (a *redisAdapter) takePending() (sub, unsub []string) {
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
	return sub, unsub
}

// readLoop owns the receiving side of the link. It never does socket work:
// onMessage only queues. A silent link is pinged; go-redis reconnects and
// resubscribes on errors, and the confirmations arrive here again.
func (a *redisAdapter) readLoop() {
	silent := 0
	for {
		msg, err := a.ps.ReceiveTimeout(a.ctx, a.ping)
		if a.ctx.Err() != nil {
			return
		}
		if err != nil {
			if isTimeout(err) {
				if silent++; silent > 1 {
					a.linkDown(errors.New("no answer to ping"))
				}
				_ = a.ps.Ping(a.ctx)
				continue
			}
			a.linkDown(err)
			a.backoff()
			continue
		}
		silent = 0
		a.linkUp.Store(true)
		switch m := msg.(type) {
		case *redis.Message:
			a.onMessage(m.Channel, m.Payload)
		case *redis.Subscription:
			if m.Kind == "subscribe" {
				a.confirm(m.Channel)
			}
		}
	}
}

func (a *redisAdapter) confirm(channel string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if s := a.subs[channel]; s != nil && s.sent && !s.confirmed {
		s.confirmed = true
		close(s.ready)
	}
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
	t := time.NewTimer(200 * time.Millisecond)
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
	err := a.ps.Close()
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
