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
	// trimmed reports whether entries were ever trimmed from stream.
	trimmed(ctx context.Context, stream string) (bool, error)
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
	partition                int
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
	// linkDown and linkUp report a pub/sub link that went down, or came up
	// (the first time, or again).
	linkDown func()
	linkUp   func()
}

// redisAdapter carries the node's subscriptions over one pub/sub link per
// partition (one link in all on standalone Redis and Sentinel; sharded
// pub/sub on a Cluster). Subscribes and unsubscribes are collected and sent
// in batches by one goroutine; each link's own goroutine reads it and hands
// messages to the hub.
type redisAdapter struct {
	rdb     redis.UniversalClient
	cluster *redis.ClusterClient // non-nil: sharded pub/sub (SSUBSCRIBE, SPUBLISH)
	keys    keyspace
	batch   *batcher
	grace   time.Duration
	quiet   time.Duration
	log     *slog.Logger
	events  redisEvents
	links   []*link

	mu      sync.Mutex
	subs    map[string]*subscription
	pending map[string]struct{} // channels whose wanted state may differ from what Redis was told
	kick    chan struct{}

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// link is the pub/sub connection of one partition.
type link struct {
	partition int
	probe     string        // a channel only this node subscribes to, in this partition
	ps        *redis.PubSub // guarded by the adapter's mu; nil until the read loop starts
	up        atomic.Bool
}

// subscription is this node's interest in one channel.
type subscription struct {
	link      *link
	refs      int
	grace     *time.Timer   // non-nil while refs is 0 but unsubscribing waits
	sent      bool          // SUBSCRIBE sent on the link's current PubSub, no UNSUBSCRIBE since
	confirmed bool          // Redis confirmed it on the current link
	known     bool          // confirmed on some earlier link
	ready     chan struct{} // closed when confirmed
}

func (s *subscription) wanted() bool { return s.refs > 0 || s.grace != nil }

func newRedisAdapter(rdb redis.UniversalClient, cfg *config, keys keyspace, node string, events redisEvents) *redisAdapter {
	ctx, cancel := context.WithCancel(context.Background())
	cluster, _ := rdb.(*redis.ClusterClient)
	a := &redisAdapter{
		rdb:     rdb,
		cluster: cluster,
		keys:    keys,
		batch:   newBatcher(rdb, cluster != nil, cfg.publishTimeout),
		grace:   cfg.unsubscribeGrace,
		quiet:   cfg.probeInterval,
		log:     cfg.logger,
		events:  events,
		subs:    make(map[string]*subscription),
		pending: make(map[string]struct{}),
		kick:    make(chan struct{}, 1),
		ctx:     ctx,
		cancel:  cancel,
	}
	for p := range keys.tags {
		l := &link{partition: p, probe: keys.probeChannel(p, node)}
		a.links = append(a.links, l)
		a.hold(l.probe)
		a.wg.Go(func() { a.readLoop(l) })
	}
	a.wg.Go(a.flushLoop)
	return a
}

func unavailable(op string, err error) error {
	return fmt.Errorf("%w: %s: %w", ErrUnavailable, op, err)
}

func (a *redisAdapter) notify(ctx context.Context, req notifyRequest) (notifyResult, error) {
	if req.maxLen > 0 && req.idemKey == "" {
		r, err := a.batch.notify(ctx, &req)
		if err != nil {
			return notifyResult{}, unavailable("notify", err)
		}
		return r, nil
	}
	keys := []string{req.stream, req.channel}
	if req.idemKey != "" {
		keys = append(keys, req.idemKey)
	}
	sharded := "0"
	if a.cluster != nil {
		sharded = "1"
	}
	args := make([]any, 0, 3+len(keys)+7)
	args = append(args, "evalsha", a.batch.single.Hash(), len(keys))
	for _, k := range keys {
		args = append(args, k)
	}
	args = append(args, req.typ, req.data, req.maxLen, req.maxAge.Milliseconds(), req.idemTTL.Milliseconds(), req.id, sharded)
	cmd := redis.NewCmd(ctx, args...)
	if err := a.batch.do(ctx, cmd); err != nil {
		return notifyResult{}, unavailable("notify", err)
	}
	v, err := cmd.Slice()
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
	publish := "publish"
	if a.cluster != nil {
		publish = "spublish"
	}
	cmd := redis.NewIntCmd(ctx, publish, channel, payload)
	if err := a.batch.do(ctx, cmd); err != nil {
		return 0, unavailable("publish", err)
	}
	return cmd.Val(), nil
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

// trimmed compares the entries ever added to those still held (XINFO STREAM,
// Redis 7). A stream that is gone held nothing for the whole retention age.
func (a *redisAdapter) trimmed(ctx context.Context, stream string) (bool, error) {
	info, err := a.rdb.XInfoStream(ctx, stream).Result()
	if err != nil {
		if strings.Contains(err.Error(), "no such key") {
			return false, nil
		}
		return false, unavailable("history", err)
	}
	return info.EntriesAdded > info.Length, nil
}

// receivers asks the master of channel's slot on a Cluster: SHARDNUMSUB
// counts only the subscribers of the node it runs on.
func (a *redisAdapter) receivers(ctx context.Context, channel string) (int64, error) {
	var counts map[string]int64
	var err error
	if a.cluster != nil {
		var master *redis.Client
		if master, err = a.cluster.MasterForKey(ctx, channel); err == nil {
			counts, err = master.PubSubShardNumSub(ctx, channel).Result()
		}
	} else {
		counts, err = a.rdb.PubSubNumSub(ctx, channel).Result()
	}
	if err != nil {
		return 0, unavailable("pubsub numsub", err)
	}
	return counts[channel], nil
}

func (a *redisAdapter) ready(ctx context.Context) error {
	for _, l := range a.links {
		if !l.up.Load() {
			return fmt.Errorf("%w: pub/sub link of partition %d is down", ErrUnavailable, l.partition)
		}
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
		s = &subscription{link: a.links[min(a.keys.partitionOf(channel), len(a.links)-1)], ready: make(chan struct{})}
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

// batch is what one flush tells one link's PubSub.
type batch struct {
	ps         *redis.PubSub
	sub, unsub []string
}

// flushLoop sends the subscription changes that piled up since the last
// flush, as one SUBSCRIBE and one UNSUBSCRIBE per link.
func (a *redisAdapter) flushLoop() {
	for {
		select {
		case <-a.kick:
		case <-a.ctx.Done():
			return
		}
		for _, b := range a.takePending() {
			a.send(b)
		}
	}
}

func (a *redisAdapter) send(b *batch) {
	subscribe, unsubscribe := b.ps.Subscribe, b.ps.Unsubscribe
	if a.cluster != nil {
		subscribe, unsubscribe = b.ps.SSubscribe, b.ps.SUnsubscribe
	}
	if len(b.sub) > 0 {
		// On error go-redis keeps the channels and subscribes them when
		// the read loop reconnects, so there is nothing to retry here.
		if err := subscribe(a.ctx, b.sub...); err != nil && a.ctx.Err() == nil {
			a.log.Warn("wsnotify: subscribe deferred until redis is back", "channels", len(b.sub), "err", err)
		}
	}
	// Never call Unsubscribe with no channels: that unsubscribes all.
	if len(b.unsub) > 0 {
		if err := unsubscribe(a.ctx, b.unsub...); err != nil && a.ctx.Err() == nil {
			a.log.Warn("wsnotify: unsubscribe failed", "channels", len(b.unsub), "err", err)
		}
	}
}

// takePending settles each pending channel against what its link's PubSub
// was told. Channels of a link whose PubSub does not exist yet stay pending;
// the link kicks a flush when it has one.
func (a *redisAdapter) takePending() map[*link]*batch {
	a.mu.Lock()
	defer a.mu.Unlock()
	batches := make(map[*link]*batch)
	for ch := range a.pending {
		s := a.subs[ch]
		if s == nil {
			delete(a.pending, ch)
			continue
		}
		if s.link.ps == nil {
			continue
		}
		delete(a.pending, ch)
		b := batches[s.link]
		if b == nil {
			b = &batch{ps: s.link.ps}
			batches[s.link] = b
		}
		switch want := s.wanted(); {
		case want && !s.sent:
			s.sent = true
			b.sub = append(b.sub, ch)
		case !want && s.sent:
			delete(a.subs, ch)
			b.unsub = append(b.unsub, ch)
		case !want:
			delete(a.subs, ch)
		}
	}
	return batches
}

// readLoop owns the receiving side of one link. It never does socket work:
// the events only queue. go-redis reconnects and resubscribes on errors, and
// the confirmations arrive here again. A link that stays quiet is probed by
// publishing to the node's own channel; if even that does not come back, the
// link is replaced, since a link can look healthy and receive nothing.
func (a *redisAdapter) readLoop(l *link) {
	ps := a.newPubSub(l)
	quiet := 0
	for {
		msg, err := ps.ReceiveTimeout(a.ctx, a.quiet)
		if a.ctx.Err() != nil {
			return
		}
		if err != nil {
			if !isTimeout(err) {
				a.linkDown(l, err)
				a.backoff()
				continue
			}
			if quiet++; quiet == 1 {
				a.sendProbe(l)
			} else {
				a.linkDown(l, errors.New("probe did not come back"))
				old := ps
				ps = a.newPubSub(l)
				_ = old.Close()
				quiet = 0
			}
			continue
		}
		quiet = 0
		if !l.up.Swap(true) {
			a.events.linkUp()
		}
		switch m := msg.(type) {
		case *redis.Message:
			a.events.message(m.Channel, m.Payload)
		case *redis.Subscription:
			if (m.Kind == "subscribe" || m.Kind == "ssubscribe") && a.confirm(m.Channel) {
				a.events.resubscribed(m.Channel)
			}
		}
	}
}

// newPubSub gives l a fresh PubSub and has every channel of l subscribed on
// it. On a Cluster the PubSub is created with the link's probe channel: its
// slot is what pins the connection to the partition's master.
func (a *redisAdapter) newPubSub(l *link) *redis.PubSub {
	var ps *redis.PubSub
	if a.cluster != nil {
		ps = a.cluster.SSubscribe(a.ctx, l.probe)
	} else {
		ps = a.rdb.Subscribe(a.ctx, l.probe)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	l.ps = ps
	for ch, s := range a.subs {
		if s.link == l {
			s.sent = ch == l.probe
			a.markPending(ch)
		}
	}
	return ps
}

func (a *redisAdapter) sendProbe(l *link) {
	ctx, cancel := context.WithTimeout(a.ctx, a.quiet)
	defer cancel()
	if _, err := a.publish(ctx, l.probe, []byte("probe")); err != nil && a.ctx.Err() == nil {
		a.log.Warn("wsnotify: redis probe failed", "partition", l.partition, "err", err)
	}
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

// linkDown forgets the link's confirmations: until Redis confirms again on a
// new connection, nothing is known to be delivered.
func (a *redisAdapter) linkDown(l *link, err error) {
	if l.up.Swap(false) {
		a.events.linkDown()
		a.log.Warn("wsnotify: redis pub/sub link down", "partition", l.partition, "err", err)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, s := range a.subs {
		if s.link == l && s.confirmed {
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

// close ends the loops. Closing the pub/sub connections drops every
// subscription of this node at once.
func (a *redisAdapter) close() error {
	a.cancel()
	a.batch.stop()
	a.mu.Lock()
	var err error
	for _, l := range a.links {
		if l.ps != nil {
			err = errors.Join(err, l.ps.Close())
		}
	}
	a.mu.Unlock()
	a.wg.Wait()
	a.mu.Lock()
	for _, l := range a.links {
		if l.ps != nil { // a read loop may have made one while closing
			_ = l.ps.Close()
		}
	}
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
	if c, ok := rdb.(*redis.ClusterClient); ok {
		return c.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error {
			return loadFunction(ctx, m)
		})
	}
	err := rdb.FunctionLoadReplace(ctx, FunctionLibrary()).Err()
	if err != nil && strings.Contains(strings.ToLower(err.Error()), "unknown command") {
		return nil
	}
	return err
}
