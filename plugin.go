// Package wsnotify lets a Gin application push a message to a user's open
// WebSocket from any node of a cluster. Each node keeps its own sockets
// (melody under a Gin route) and subscribes in Redis only to the users it
// holds, so a notification reaches exactly the nodes that hold its user.
package wsnotify

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"strconv"
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

	nodeID string
	seq    atomic.Uint64

	// mu guards closing and the upgrades WaitGroup, so no upgrade can start
	// once Close waits for them.
	mu       sync.Mutex
	closing  bool
	upgrades sync.WaitGroup
	closed   chan struct{}
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
	keys, err := newKeyspace(cfg.prefix)
	if err != nil {
		return nil, err
	}
	client, own, err := deadlineAwareClient(rdb)
	if err != nil {
		return nil, err
	}
	h := &Hub{
		cfg:      cfg,
		keys:     keys,
		rdb:      client,
		ownRDB:   own,
		sessions: newSessionIndex(),
		nodeID:   randomNodeID(),
		closed:   make(chan struct{}),
	}
	h.melody = h.newMelody()
	h.workers = newDispatcher(cfg.workers, 1024, h.deliver)
	h.broker = newRedisAdapter(client, &cfg, h.route)
	h.broker.hold(keys.broadcastChannel())
	return h, nil
}

func (c *config) validate() error {
	switch {
	case c.userKey == nil:
		return errors.New("wsnotify: WithUserKey is required")
	case c.workers < 1:
		return errors.New("wsnotify: WithWorkers needs at least 1")
	case c.sessionBuffer < 1:
		return errors.New("wsnotify: WithSessionBuffer needs at least 1")
	case c.maxMessageSize < 1:
		return errors.New("wsnotify: WithMaxMessageSize needs at least 1")
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
	m.Config.MessageBufferSize = h.cfg.sessionBuffer
	// Origins are checked before the upgrade, where the hub can answer with
	// a reason; melody's default accepts every origin.
	m.Upgrader.CheckOrigin = h.originAllowed
	m.HandleConnect(h.onConnect)
	m.HandleMessage(h.onMessage)
	m.HandleMessageBinary(func(ms *melody.Session, _ []byte) {
		_ = sessionOf(ms).closeWith(websocket.CloseUnsupportedData, "binary frames are not accepted")
	})
	m.HandleError(h.onError)
	return m
}

func sessionOf(ms *melody.Session) *Session {
	v, _ := ms.Get(sessionKey)
	return v.(*Session)
}

func (h *Hub) onConnect(ms *melody.Session) {
	s := sessionOf(ms)
	s.ms = ms
	h.sessions.add(s)
	// melody registers a session after its handshake, so one that completed
	// while Close ran may have missed melody's own sweep; Close sweeps the
	// index after setting closing, so one of the two catches every session.
	if h.isClosing() {
		_ = ms.CloseWithMsg(goingAway)
		return
	}
	if h.cfg.onConnect != nil {
		h.cfg.onConnect(s)
	}
}

func (h *Hub) onMessage(ms *melody.Session, msg []byte) {
	if h.cfg.onMessage != nil {
		h.cfg.onMessage(sessionOf(ms), msg)
	}
}

// onError runs synchronously inside melody, sometimes under its locks: it
// must only touch the connection itself.
func (h *Hub) onError(ms *melody.Session, err error) {
	if errors.Is(err, melody.ErrMessageBufferFull) {
		h.cfg.logger.Warn("wsnotify: slow consumer disconnected", "user", sessionOf(ms).user)
		_ = sessionOf(ms).closeWith(CloseSlowConsumer, "slow consumer")
	}
}

// Handler returns the WebSocket route. Before upgrading it checks the origin
// (403), the user key (401, or 400 when invalid) and the per-user cap (429),
// each answered as JSON {"error": "..."}; a closing hub answers 503. The
// handler then subscribes the node to the user and blocks for the life of
// the socket: once a client's handshake completes, every notification
// published for its user reaches it while Redis is up.
func (h *Hub) Handler() gin.HandlerFunc {
	return func(c *gin.Context) {
		if !h.beginUpgrade() {
			abortJSON(c, http.StatusServiceUnavailable, "server is shutting down")
			return
		}
		defer h.upgrades.Done()
		if !h.originAllowed(c.Request) {
			abortJSON(c, http.StatusForbidden, "origin not allowed: "+c.Request.Header.Get("Origin"))
			return
		}
		user, err := h.cfg.userKey(c)
		if err != nil || user == "" {
			abortJSON(c, http.StatusUnauthorized, unauthorizedReason(err))
			return
		}
		if err := validateUserKey(user); err != nil {
			abortJSON(c, http.StatusBadRequest, err.Error())
			return
		}
		if !websocket.IsWebSocketUpgrade(c.Request) {
			abortJSON(c, http.StatusBadRequest, "websocket upgrade required")
			return
		}
		if !h.sessions.reserve(user, h.cfg.maxSessionsPerUser) {
			abortJSON(c, http.StatusTooManyRequests, "too many sessions for this user")
			return
		}
		h.serve(c, user)
	}
}

func (h *Hub) serve(c *gin.Context, user string) {
	channel := h.keys.userChannel(user)
	defer h.broker.release(channel)
	if err := h.waitSubscribed(c.Request.Context(), h.broker.hold(channel)); err != nil {
		if c.Request.Context().Err() != nil {
			h.sessions.unreserve(user)
			return // the client went away while we waited
		}
		h.cfg.logger.Warn("wsnotify: upgrading before redis confirmed the subscription", "user", user, "err", err)
	}

	s := &Session{user: user}
	keys := make(map[string]any, len(c.Keys)+1)
	for k, v := range c.Keys {
		if name, ok := k.(string); ok {
			keys[name] = v
		}
	}
	keys[sessionKey] = s
	err := h.melody.HandleRequestWithKeys(c.Writer, c.Request, keys)
	if s.ms == nil {
		h.sessions.unreserve(user) // the upgrade failed; gorilla answered the client
	} else {
		h.sessions.remove(s)
		if h.cfg.onDisconnect != nil {
			h.cfg.onDisconnect(s)
		}
	}
	if errors.Is(err, melody.ErrClosed) {
		abortJSON(c, http.StatusServiceUnavailable, "server is shutting down")
	}
}

func (h *Hub) waitSubscribed(ctx context.Context, ready <-chan struct{}) error {
	t := time.NewTimer(h.cfg.subscribeWait)
	defer t.Stop()
	select {
	case <-ready:
		return nil
	case <-t.C:
		return errors.New("no confirmation from redis yet")
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (h *Hub) beginUpgrade() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closing {
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
	return origin == "http://"+r.Host || origin == "https://"+r.Host
}

// Notify sends payload to every open socket of user, on every node. payload
// is encoded with encoding/json once (a json.RawMessage is sent as is).
//
// It returns when Redis has accepted the message; Result.Nodes is the number
// of nodes that held the user at that moment (0: the user is offline
// everywhere). Delivery to the socket itself is at most once: a socket that
// drops at that moment misses the message.
//
// Notify fails with ErrInvalidUserKey, ErrInvalidType, ErrInvalidPayload,
// ErrClosed, or ErrUnavailable when Redis cannot be reached before ctx's
// deadline (or the publish timeout when ctx has none).
func (h *Hub) Notify(ctx context.Context, user string, payload any, opts ...NotifyOption) (Result, error) {
	if err := validateUserKey(user); err != nil {
		return Result{}, err
	}
	return h.publish(ctx, h.keys.userChannel(user), payload, opts)
}

// Broadcast sends payload to every open socket on every node. Result.Nodes
// counts the nodes that received it.
func (h *Hub) Broadcast(ctx context.Context, payload any, opts ...NotifyOption) (Result, error) {
	return h.publish(ctx, h.keys.broadcastChannel(), payload, opts)
}

// Result tells what a Notify or Broadcast reached.
type Result struct {
	// ID is the envelope id the clients receive.
	ID string
	// Nodes is how many nodes were subscribed when Redis accepted the
	// message: for Notify, the nodes that hold the user.
	Nodes int64
}

func (h *Hub) publish(ctx context.Context, channel string, payload any, opts []NotifyOption) (Result, error) {
	if h.isClosing() {
		return Result{}, ErrClosed
	}
	nc := notifyConfig{typ: h.cfg.defaultType}
	for _, o := range opts {
		o(&nc)
	}
	if err := validateType(nc.typ); err != nil {
		return Result{}, err
	}
	data, err := encodePayload(payload)
	if err != nil {
		return Result{}, err
	}
	id := h.newMessageID()
	env := appendEnvelope(make([]byte, 0, len(data)+len(id)+len(nc.typ)+32), id, nc.typ, data)

	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, h.cfg.publishTimeout)
		defer cancel()
	}
	n, err := h.broker.publish(ctx, channel, env)
	if err != nil {
		return Result{}, err
	}
	return Result{ID: id, Nodes: n}, nil
}

// newMessageID is unique across nodes: a random node id and a counter.
func (h *Hub) newMessageID() string {
	return h.nodeID + "-" + strconv.FormatUint(h.seq.Add(1), 10)
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
// PING; otherwise an error wrapping ErrUnavailable (or ErrClosed).
func (h *Hub) Ready(ctx context.Context) error {
	if h.isClosing() {
		return ErrClosed
	}
	return h.broker.ready(ctx)
}

// Stats counts this node's open sockets and the users holding them.
func (h *Hub) Stats() (sessions, users int) { return h.sessions.count() }

func (h *Hub) isClosing() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.closing
}

// route runs on the Redis read loop: it only queues.
func (h *Hub) route(channel, payload string) {
	if user, ok := h.keys.userOf(channel); ok {
		h.workers.submit(delivery{user: user, payload: []byte(payload)})
		return
	}
	if channel == h.keys.broadcastChannel() {
		h.workers.submit(delivery{payload: []byte(payload), broadcast: true})
	}
}

// deliver runs on a dispatcher worker.
func (h *Hub) deliver(d delivery, scratch []*Session) []*Session {
	if d.broadcast {
		scratch = h.sessions.appendAll(scratch)
	} else {
		scratch = h.sessions.appendUser(scratch, d.user)
	}
	for _, s := range scratch {
		_ = s.ms.Write(d.payload) // a closed session is already leaving the index
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
	if h.closing {
		h.mu.Unlock()
		return ErrClosed
	}
	h.closing = true
	h.mu.Unlock()

	_ = h.melody.CloseWithMsg(goingAway)
	for _, s := range h.sessions.appendAll(nil) {
		_ = s.ms.CloseWithMsg(goingAway)
	}
	done := make(chan error, 1)
	go func() {
		h.upgrades.Wait()
		err := h.broker.close()
		h.workers.stop()
		if h.ownRDB {
			err = errors.Join(err, h.rdb.Close())
		}
		close(h.closed)
		done <- err
	}()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return fmt.Errorf("wsnotify: close: %w", ctx.Err())
	}
}

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
