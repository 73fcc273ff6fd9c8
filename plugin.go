// Package wsnotify lets a Gin application push a message to a user's open
// WebSocket from any node of a cluster. Each node keeps its own sockets
// (melody under a Gin route) and subscribes in Redis only to the users it
// holds, so a notification reaches exactly the nodes that hold its user.
// Every notification is also kept in the user's history, so a client that
// reconnects, to any node, resumes where it left off.
package wsnotify

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/gorilla/websocket"
	"github.com/olahol/melody"
	"github.com/redis/go-redis/v9"
)

// Hub is one node's end of the notification system: it owns the node's
// sockets and its Redis link. All methods are safe for concurrent use.
type Hub struct {
	cfg      config
	keys     keyspace
	rdb      redis.UniversalClient
	ownRDB   bool // rdb is a copy of the caller's client that Close must close
	melody   *melody.Melody
	sessions *sessionIndex
	broker   adapter
	workers  *dispatcher
	resyncs  *resyncer
	counters counters

	functions *functionLoader

	nodeID string
	seq    atomic.Uint64

	// closing is read lock-free on every Notify; it is set, and read by
	// upgrades, under mu together with the upgrades WaitGroup, so no upgrade
	// can start once Close waits for them.
	mu       sync.Mutex
	closing  atomic.Bool
	upgrades sync.WaitGroup
	replays  sync.WaitGroup
}

// New creates a hub on rdb, which may be any redis.UniversalClient but a
// Ring. The hub subscribes at once; New does not wait for Redis, and Ready
// tells when the link is up. Close the hub to release its goroutines.
//
// When rdb is a *redis.Client or *redis.ClusterClient whose
// ContextTimeoutEnabled is false, the hub opens its own pool from a copy of
// rdb's options with it set: otherwise go-redis ignores context deadlines on
// socket I/O and a stalled Redis would hang Notify.
func New(rdb redis.UniversalClient, opts ...Option) (*Hub, error) {
	cfg := defaultConfig()
	for _, o := range opts {
		o(&cfg)
	}
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	client, own, err := deadlineAwareClient(rdb)
	if err != nil {
		return nil, err
	}
	if cfg.partitions == 0 {
		cfg.partitions = 1
		if _, ok := client.(*redis.ClusterClient); ok {
			cfg.partitions = defaultClusterPartitions
		}
	}
	keys, err := newKeyspace(cfg.prefix, cfg.partitions)
	if err != nil {
		if own {
			_ = client.Close()
		}
		return nil, err
	}
	h := &Hub{
		cfg:      cfg,
		keys:     keys,
		rdb:      client,
		ownRDB:   own,
		sessions: newSessionIndex(),
		nodeID:   randomNodeID(),
	}
	if cfg.metrics != nil {
		if err := h.registerMetrics(cfg.metrics); err != nil {
			if own {
				_ = client.Close()
			}
			return nil, fmt.Errorf("wsnotify: metrics: %w", err)
		}
	}
	h.melody = h.newMelody()
	h.workers = newDispatcher(cfg.workers, 1024, h.deliver)
	h.functions = newFunctionLoader(client, cfg.history, cfg.subscribeWait, cfg.logger)
	h.broker = newRedisAdapter(client, &cfg, keys, h.nodeID, redisEvents{
		message:      h.route,
		resubscribed: h.resubscribed,
		linkDown:     func() { h.counters.linkDowns.Add(1) },
		linkUp:       h.functions.kick,
	})
	h.resyncs = newResyncer(h.resync)
	h.broker.hold(keys.broadcastChannel())
	return h, nil
}

func (c *config) validate() error {
	switch {
	case c.userKey == nil:
		return errors.New("wsnotify: WithUserKey is required")
	case c.workers < 1:
		return errors.New("wsnotify: WithWorkers needs at least 1")
	case c.queueMsgs < 2 || c.queueBytes < 1:
		return errors.New("wsnotify: WithSessionQueue needs at least 2 messages and 1 byte")
	case c.maxMessageSize < 1:
		return errors.New("wsnotify: WithMaxMessageSize needs at least 1")
	case c.history && (c.historyLen < 1 || c.historyAge < time.Millisecond):
		return errors.New("wsnotify: WithHistory needs a length of at least 1 and an age of at least 1ms")
	case c.probeInterval <= 0 || c.subscribeWait <= 0 || c.publishTimeout <= 0:
		return errors.New("wsnotify: probe interval, subscribe wait and publish timeout must be positive")
	}
	return validateType(c.defaultType)
}

func deadlineAwareClient(rdb redis.UniversalClient) (redis.UniversalClient, bool, error) {
	switch c := rdb.(type) {
	case nil:
		return nil, false, errors.New("wsnotify: nil redis client")
	case *redis.Ring:
		return nil, false, errors.New("wsnotify: redis.Ring is not supported: its pub/sub binds to one shard; use a Client, FailoverClient or ClusterClient")
	case *redis.Client:
		if !c.Options().ContextTimeoutEnabled {
			opt := *c.Options()
			opt.ContextTimeoutEnabled = true
			// The push processor belongs to the caller's client; a copy
			// sharing it would fight over its handlers.
			opt.PushNotificationProcessor = nil
			if mc := opt.MaintNotificationsConfig; mc != nil {
				cp := *mc
				opt.MaintNotificationsConfig = &cp
			}
			return redis.NewClient(&opt), true, nil
		}
	case *redis.ClusterClient:
		if !c.Options().ContextTimeoutEnabled {
			opt := *c.Options()
			opt.ContextTimeoutEnabled = true
			return redis.NewClusterClient(&opt), true, nil
		}
	}
	return rdb, false, nil
}

func randomNodeID() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func (h *Hub) newMelody() *melody.Melody {
	m := melody.New()
	m.Config.MaxMessageSize = h.cfg.maxMessageSize
	// The session keeps at most melodySlots frames in melody's queue (the
	// rest wait in its backlog); the spare slots take the close frames
	// queued on shutdown (melody's two and the hub's sweep).
	m.Config.MessageBufferSize = melodySlots + 4
	// Origins are checked before the upgrade, where the hub can answer with
	// a reason; melody's default accepts every origin.
	m.Upgrader.CheckOrigin = h.originAllowed
	// The handler returns once the socket is open, so the HTTP server's
	// buffers are freed with it. An idle socket then keeps only a small read
	// buffer (clients send little: the hello and pongs) and borrows a write
	// buffer from the pool for each frame.
	m.Upgrader.ReadBufferSize = readBufferSize
	m.Upgrader.WriteBufferSize = 0
	m.Upgrader.WriteBufferPool = &sync.Pool{}
	m.HandleConnect(h.onConnect)
	m.HandleMessage(h.onMessage)
	m.HandleMessageBinary(func(ms *melody.Session, _ []byte) {
		_ = sessionOf(ms).closeWith(websocket.CloseUnsupportedData, "binary frames are not accepted")
	})
	m.HandleSentMessage(func(ms *melody.Session, msg []byte) { sessionOf(ms).sent(msg) })
	m.HandleError(h.onError)
	return m
}

func sessionOf(ms *melody.Session) *Session {
	v, _ := ms.Get(sessionKey)
	return v.(*Session)
}

func (h *Hub) onMessage(ms *melody.Session, msg []byte) {
	if h.cfg.onMessage != nil {
		h.cfg.onMessage(sessionOf(ms), msg)
	}
}

// onError runs synchronously inside melody, sometimes under its locks: it
// must only touch the session itself. The hub's own queue accounting keeps
// melody's buffer from filling, so this is a last line of defence.
func (h *Hub) onError(ms *melody.Session, err error) {
	if errors.Is(err, melody.ErrMessageBufferFull) {
		sessionOf(ms).markSlow() // may run under the session's own lock
	}
}

// Handler returns the WebSocket route. Before upgrading it checks the origin
// (403), the user key (401, or 400 when invalid), the since parameter (400)
// and the per-user cap (429), each answered as JSON {"error": "..."}. When
// Redis cannot confirm the user's subscription in time it answers 503, and a
// closing hub answers 503 too.
//
// A client may pass since=<id>, the id of the last notification it saw: it
// then receives everything after that id from history before live
// notifications, with no gap and no duplicate. Without since, it receives
// every notification published after its upgrade request arrived. Either way
// the first frame is a HelloType frame naming the id the socket starts
// after, so a client that is closed before its first notification can still
// resume with since.
//
// The handler returns once the socket is open and the OnConnect hook has run
// (or the upgrade failed); the socket then runs on a goroutine of the hub's,
// so that the HTTP server's goroutine and buffers are freed for the socket's
// life. The request's context ends when the handler returns, so it is not the
// socket's: OnDisconnect tells when the socket closes.
func (h *Hub) Handler() gin.HandlerFunc {
	return func(c *gin.Context) {
		if !h.beginUpgrade() {
			abortJSON(c, http.StatusServiceUnavailable, "server is shutting down")
			return
		}
		if !h.admit(c) {
			h.upgrades.Done()
		}
	}
}

// admit checks the request and hands the socket over to run. It reports
// whether it did; if not, it has answered.
func (h *Hub) admit(c *gin.Context) bool {
	if !h.originAllowed(c.Request) {
		abortJSON(c, http.StatusForbidden, "origin not allowed: "+c.Request.Header.Get("Origin"))
		return false
	}
	user, err := h.cfg.userKey(c)
	if err != nil || user == "" {
		abortJSON(c, http.StatusUnauthorized, unauthorizedReason(err))
		return false
	}
	if err := validateUserKey(user); err != nil {
		abortJSON(c, http.StatusBadRequest, err.Error())
		return false
	}
	start := resumePoint{}
	if v, ok := c.GetQuery("since"); ok {
		if start.id, ok = parseStreamID(v); !ok {
			abortJSON(c, http.StatusBadRequest, "since must be a notification id such as 1700000000000-0")
			return false
		}
		start.fromClient = true
	}
	if !websocket.IsWebSocketUpgrade(c.Request) {
		abortJSON(c, http.StatusBadRequest, "websocket upgrade required")
		return false
	}
	s := newSession(user, queueLimit{int64(h.cfg.queueMsgs), h.cfg.queueBytes}, &h.counters)
	if !h.sessions.add(s, h.cfg.maxSessionsPerUser) {
		abortJSON(c, http.StatusTooManyRequests, "too many sessions for this user")
		return false
	}
	channel := h.keys.userChannel(s.user)
	if !h.settle(c, s, &start, channel) {
		h.sessions.remove(s)
		return false
	}
	keys := make(map[string]any, len(c.Keys)+2)
	for k, v := range c.Keys {
		if name, ok := k.(string); ok {
			keys[name] = v
		}
	}
	keys[sessionKey] = s
	keys[resumeKey] = start
	opened := make(chan error, 1)
	go h.run(c.Writer, c.Request, s, channel, keys, opened)
	if err := <-opened; errors.Is(err, melody.ErrClosed) {
		abortJSON(c, http.StatusServiceUnavailable, "server is shutting down")
	}
	return true
}

// run runs one socket from its upgrade to its end. The session is indexed
// and holding before the subscription (settle), so no live frame can slip
// between the history read and the first live write. opened receives nil
// once the socket is open, or the error of a failed upgrade: until then run
// uses w, which is the handler's, so the handler waits for it.
func (h *Hub) run(w http.ResponseWriter, r *http.Request, s *Session, channel string, keys map[string]any, opened chan<- error) {
	defer h.upgrades.Done()
	defer h.sessions.remove(s)
	defer h.broker.release(channel)
	s.opened = opened
	err := h.melody.HandleRequestWithKeys(&coalescingWriter{ResponseWriter: w, pending: s.framesBehind}, r, keys)
	close(s.ended)
	if s.opened != nil {
		s.opened <- err // never opened: the handler answers
		return
	}
	if h.cfg.onDisconnect != nil {
		h.cfg.onDisconnect(s)
	}
}

// settle reads where a socket without since starts (before subscribing, so
// that everything published after the request arrived is either in history
// or held live) and subscribes the node to the user. On failure it has
// answered 503 and undone the subscription. Its deadline ends here, so an
// open socket keeps no timer.
func (h *Hub) settle(c *gin.Context, s *Session, start *resumePoint, channel string) bool {
	ctx, cancel := context.WithTimeout(c.Request.Context(), h.cfg.subscribeWait)
	defer cancel()
	if h.cfg.history && !start.fromClient {
		last, err := h.broker.lastID(ctx, h.keys.historyKey(s.user))
		if err != nil {
			abortJSON(c, http.StatusServiceUnavailable, "redis unavailable: "+err.Error())
			return false
		}
		start.id = last
	}
	s.setLast(start.id)
	select {
	case <-h.broker.hold(channel):
		return true
	case <-ctx.Done():
		h.broker.release(channel)
		abortJSON(c, http.StatusServiceUnavailable, "redis did not confirm the subscription in time")
		return false
	}
}

func (h *Hub) beginUpgrade() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closing.Load() {
		return false
	}
	h.upgrades.Add(1)
	return true
}

func unauthorizedReason(err error) string {
	if err != nil {
		return "unauthorized: " + err.Error()
	}
	return "unauthorized: no user key"
}

func abortJSON(c *gin.Context, status int, reason string) {
	c.AbortWithStatusJSON(status, gin.H{"error": reason})
}

// originAllowed accepts requests without an Origin header (not a browser),
// same-origin requests, and the origins given to WithAllowedOrigins.
func (h *Hub) originAllowed(r *http.Request) bool {
	origin := r.Header.Get("Origin")
	if origin == "" {
		return true
	}
	for _, o := range h.cfg.allowedOrigins {
		if o == "*" || o == origin {
			return true
		}
	}
	// Host names are case-insensitive; browsers send them lower-cased.
	return strings.EqualFold(origin, "http://"+r.Host) || strings.EqualFold(origin, "https://"+r.Host)
}

// Notify sends payload to every open socket of user, on every node, and keeps
// it in the user's history (unless the hub runs WithoutHistory). payload is
// encoded with encoding/json once; a json.RawMessage is sent as is.
//
// It returns when Redis has stored and published the message; Result.Nodes
// is the number of nodes that held the user at that moment (0: the user is
// offline everywhere, and will find the message in history on connecting
// with since). Storing and publishing happen in one atomic script, so the
// history id is the envelope id and ids grow monotonically per user.
//
// Concurrent calls share round trips: whatever is waiting goes to Redis as
// one pipeline. Notify blocks until Redis answers or ctx (or, when ctx has
// no deadline, the publish timeout) ends.
//
// Notify fails with ErrInvalidUserKey, ErrInvalidType, ErrInvalidPayload,
// ErrClosed, or ErrUnavailable when Redis did not confirm the notification
// in time; a notification cut off by a timeout may or may not have been
// stored, so retry it with WithIdempotencyKey.
func (h *Hub) Notify(ctx context.Context, user string, payload any, opts ...NotifyOption) (res Result, err error) {
	if err := validateUserKey(user); err != nil {
		return Result{}, err
	}
	nc, data, err := h.prepare(payload, opts)
	if err != nil {
		return Result{}, err
	}
	ctx, cancel := h.withTimeout(ctx)
	defer cancel()
	defer func(start time.Time) { h.counters.observeNotify(start, err) }(time.Now())
	if !h.cfg.history && nc.idemKey == "" {
		return h.publishOutsideHistory(ctx, h.keys.userChannel(user), nc.typ, data)
	}
	req := notifyRequest{
		partition: h.keys.partition(user),
		stream:    h.keys.historyKey(user),
		channel:   h.keys.userChannel(user),
		typ:       nc.typ,
		data:      data,
		maxAge:    h.cfg.historyAge,
		idemTTL:   h.cfg.idempotencyTTL,
		id:        h.newMessageID(),
	}
	if h.cfg.history {
		req.maxLen = h.cfg.historyLen
	}
	if nc.idemKey != "" {
		req.idemKey = h.keys.idempotencyKey(user, nc.idemKey)
	}
	r, err := h.broker.notify(ctx, req)
	if err != nil {
		return Result{}, err
	}
	return Result{ID: r.id, Nodes: r.receivers, Duplicate: r.replayed}, nil
}

// Broadcast sends payload to every open socket on every node. Broadcasts are
// not kept in history: delivery is at most once. Result.Nodes counts the
// nodes that received it.
func (h *Hub) Broadcast(ctx context.Context, payload any, opts ...NotifyOption) (res Result, err error) {
	nc, data, err := h.prepare(payload, opts)
	if err != nil {
		return Result{}, err
	}
	ctx, cancel := h.withTimeout(ctx)
	defer cancel()
	defer func(start time.Time) { h.counters.observeNotify(start, err) }(time.Now())
	return h.publishOutsideHistory(ctx, h.keys.broadcastChannel(), nc.typ, data)
}

// publishOutsideHistory is one PUBLISH of an envelope with an id of this
// node's making.
func (h *Hub) publishOutsideHistory(ctx context.Context, channel, typ string, data []byte) (Result, error) {
	id := h.newMessageID()
	env := appendEnvelope(make([]byte, 0, len(data)+len(id)+len(typ)+32), id, typ, data)
	n, err := h.broker.publish(ctx, channel, env)
	if err != nil {
		return Result{}, err
	}
	return Result{ID: id, Nodes: n}, nil
}

// Result tells what a Notify or Broadcast reached.
type Result struct {
	// ID is the envelope id the clients receive: with history, the id of
	// the message in the user's history.
	ID string
	// Nodes is how many nodes were subscribed when Redis accepted the
	// message: for Notify, the nodes that hold the user.
	Nodes int64
	// Duplicate is true when WithIdempotencyKey found an earlier call with
	// the same key: nothing was published, and ID and Nodes are that call's.
	Duplicate bool
}

func (h *Hub) prepare(payload any, opts []NotifyOption) (notifyConfig, []byte, error) {
	if h.isClosing() {
		return notifyConfig{}, nil, ErrClosed
	}
	nc := notifyConfig{typ: h.cfg.defaultType}
	for _, o := range opts {
		o(&nc)
	}
	if err := validateType(nc.typ); err != nil {
		return nc, nil, err
	}
	data, err := encodePayload(payload)
	return nc, data, err
}

func (h *Hub) withTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, h.cfg.publishTimeout)
}

// newMessageID is unique across nodes: a random node id and a counter. It
// names notifications that have no history id.
func (h *Hub) newMessageID() string {
	return h.nodeID + "-n" + strconv.FormatUint(h.seq.Add(1), 10)
}

// Online reports whether any node holds a socket of user (or has held one
// within the unsubscribe grace). It asks Redis, so it answers cluster-wide.
func (h *Hub) Online(ctx context.Context, user string) (bool, error) {
	if err := validateUserKey(user); err != nil {
		return false, err
	}
	n, err := h.broker.receivers(ctx, h.keys.userChannel(user))
	return n > 0, err
}

// Ready returns nil when the node's pub/sub link is up and Redis answers a
// PING; otherwise an error wrapping ErrUnavailable (or ErrClosed). Use it for
// a readiness probe.
func (h *Hub) Ready(ctx context.Context) error {
	if h.isClosing() {
		return ErrClosed
	}
	return h.broker.ready(ctx)
}

func (h *Hub) isClosing() bool { return h.closing.Load() }

// route runs on the Redis read loop: it only queues.
func (h *Hub) route(channel, payload string) {
	if user, ok := h.keys.userOf(channel); ok {
		id, _ := envelopeID(payload)
		h.workers.submit(delivery{user: user, frame: frame{id: id, payload: []byte(payload)}})
		return
	}
	if channel == h.keys.broadcastChannel() {
		h.workers.submit(delivery{frame: frame{payload: []byte(payload)}, broadcast: true})
	}
}

// deliver runs on a dispatcher worker.
func (h *Hub) deliver(d delivery, scratch []*Session) []*Session {
	switch {
	case d.broadcast:
		scratch = h.sessions.appendAll(scratch)
	default:
		scratch = h.sessions.appendUser(scratch, d.user)
	}
	if d.resync {
		h.startResync(d.user, scratch)
	} else {
		for _, s := range scratch {
			s.offer(d.frame)
		}
	}
	clear(scratch) // let closed sessions be collected
	return scratch
}

// Close shuts the node down: new upgrades get 503, open sockets are closed
// with 1001 (going away) so their clients reconnect to another node, the
// node's subscriptions are dropped, and Close waits until every goroutine the
// hub started has returned, or ctx ends (then it returns ctx's error).
// Calls after the first return ErrClosed.
func (h *Hub) Close(ctx context.Context) error {
	h.mu.Lock()
	already := h.closing.Swap(true)
	h.mu.Unlock()
	if already {
		return ErrClosed
	}

	_ = h.melody.CloseWithMsg(goingAway)
	for _, s := range h.sessions.appendAll(nil) {
		if ms := s.melodySession(); ms != nil {
			_ = ms.CloseWithMsg(goingAway)
		}
	}
	result := make(chan error, 1)
	go func() {
		h.upgrades.Wait()
		h.replays.Wait()
		err := h.broker.close()
		h.workers.stop()
		h.resyncs.stop()
		h.functions.stop()
		if h.ownRDB {
			err = errors.Join(err, h.rdb.Close())
		}
		result <- err
	}()
	select {
	case err := <-result:
		return err
	case <-ctx.Done():
		return fmt.Errorf("wsnotify: close: %w", ctx.Err())
	}
}

// readBufferSize is each socket's read buffer; larger frames from a client
// are read through it in pieces.
const readBufferSize = 512

var goingAway = websocket.FormatCloseMessage(websocket.CloseGoingAway, "server shutting down")

// hubKey is where Middleware leaves the hub in the gin context.
const hubKey = "wsnotify.hub"

// Middleware puts the hub in every request's gin context, so that handlers
// can call the package-level Notify.
func (h *Hub) Middleware() gin.HandlerFunc {
	return func(c *gin.Context) {
		c.Set(hubKey, h)
		c.Next()
	}
}

// FromContext returns the hub that Middleware put in c.
func FromContext(c *gin.Context) (*Hub, bool) {
	v, ok := c.Get(hubKey)
	if !ok {
		return nil, false
	}
	h, ok := v.(*Hub)
	return h, ok
}

// Notify sends payload to user through the hub of c (see Hub.Notify). It uses
// the request's context for deadlines and fails with ErrNoHub when the route
// is not under hub.Middleware().
func Notify(c *gin.Context, user string, payload any, opts ...NotifyOption) (Result, error) {
	h, ok := FromContext(c)
	if !ok {
		return Result{}, ErrNoHub
	}
	return h.Notify(c.Request.Context(), user, payload, opts...)
}

// ChannelOf returns the Redis channel of user, for services that PUBLISH to
// it directly.
func (h *Hub) ChannelOf(user string) string { return h.keys.userChannel(user) }

// HistoryKeyOf returns the key of user's history stream, for services that
// notify through FCALL wsnotify_notify.
func (h *Hub) HistoryKeyOf(user string) string { return h.keys.historyKey(user) }
