package wsnotify

import (
	"log/slog"
	"time"

	"github.com/gin-gonic/gin"
)

// UserKeyFunc tells which user a WebSocket request belongs to. It runs before
// the upgrade; an error or an empty key rejects the request with 401. The
// middleware package has ready-made ones (header, query, gin key, ticket).
type UserKeyFunc func(c *gin.Context) (string, error)

// Option configures a Hub at construction.
type Option func(*config)

type config struct {
	userKey            UserKeyFunc
	allowedOrigins     []string
	prefix             string
	maxMessageSize     int64
	maxSessionsPerUser int
	sessionBuffer      int
	unsubscribeGrace   time.Duration
	publishTimeout     time.Duration
	subscribeWait      time.Duration
	pingInterval       time.Duration
	workers            int
	defaultType        string
	logger             *slog.Logger
	onConnect          func(*Session)
	onDisconnect       func(*Session)
	onMessage          func(*Session, []byte)
}

func defaultConfig() config {
	return config{
		prefix:           "wsnotify",
		maxMessageSize:   64 << 10,
		sessionBuffer:    256,
		unsubscribeGrace: 5 * time.Second,
		publishTimeout:   5 * time.Second,
		subscribeWait:    3 * time.Second,
		pingInterval:     15 * time.Second,
		workers:          8,
		defaultType:      DefaultType,
		logger:           slog.Default(),
	}
}

// WithUserKey sets how the WebSocket route learns the user of a request.
// Required: New fails without it.
func WithUserKey(fn UserKeyFunc) Option { return func(c *config) { c.userKey = fn } }

// WithAllowedOrigins lists the browser origins (scheme://host[:port]) that may
// open a socket besides the route's own origin. "*" allows any origin. By
// default only same-origin requests and requests without an Origin header
// (non-browser clients) are upgraded; others get 403.
func WithAllowedOrigins(origins ...string) Option {
	return func(c *config) { c.allowedOrigins = append(c.allowedOrigins, origins...) }
}

// WithPrefix sets the first part of every Redis channel name (default
// "wsnotify"). Hubs that should reach each other must share it.
func WithPrefix(prefix string) Option { return func(c *config) { c.prefix = prefix } }

// WithMaxMessageSize limits inbound client frames (default 64 KiB). A larger
// frame closes the socket with 1009 (message too big).
func WithMaxMessageSize(n int64) Option { return func(c *config) { c.maxMessageSize = n } }

// WithMaxSessionsPerUser caps the sockets one user may hold on one node
// (default 0: no cap). Upgrades past the cap get 429.
func WithMaxSessionsPerUser(n int) Option { return func(c *config) { c.maxSessionsPerUser = n } }

// WithSessionBuffer sets how many outbound messages may wait for one slow
// socket (default 256). A socket whose queue is full is closed with
// CloseSlowConsumer rather than silently losing a message.
func WithSessionBuffer(n int) Option { return func(c *config) { c.sessionBuffer = n } }

// WithUnsubscribeGrace sets how long a node stays subscribed to a user after
// the user's last local socket closes (default 5s), so a reloading tab does
// not churn subscriptions. During the grace the user still counts as online.
func WithUnsubscribeGrace(d time.Duration) Option { return func(c *config) { c.unsubscribeGrace = d } }

// WithPublishTimeout bounds a Notify whose context has no deadline (default 5s).
func WithPublishTimeout(d time.Duration) Option { return func(c *config) { c.publishTimeout = d } }

// WithSubscribeWait bounds how long an upgrade waits for Redis to confirm the
// user's subscription (default 3s). Past it the socket is accepted anyway and
// the subscription completes when Redis answers.
func WithSubscribeWait(d time.Duration) Option { return func(c *config) { c.subscribeWait = d } }

// WithPingInterval sets how long the pub/sub link may stay silent before the
// hub pings Redis to prove it alive (default 15s).
func WithPingInterval(d time.Duration) Option { return func(c *config) { c.pingInterval = d } }

// WithWorkers sets how many goroutines hand messages from Redis to sockets
// (default 8). A user is always served by the same worker, which keeps that
// user's messages in order.
func WithWorkers(n int) Option { return func(c *config) { c.workers = n } }

// WithDefaultType sets the envelope type of notifications sent without
// WithType (default "notification").
func WithDefaultType(t string) Option { return func(c *config) { c.defaultType = t } }

// WithLogger sets where the hub logs link and session trouble (default
// slog.Default()).
func WithLogger(l *slog.Logger) Option { return func(c *config) { c.logger = l } }

// OnConnect runs fn after a socket is upgraded and subscribed, on the socket's
// own goroutine.
func OnConnect(fn func(*Session)) Option { return func(c *config) { c.onConnect = fn } }

// OnDisconnect runs fn after a socket has closed.
func OnDisconnect(fn func(*Session)) Option { return func(c *config) { c.onDisconnect = fn } }

// OnMessage runs fn for each text frame a client sends, on that socket's read
// goroutine: the next frame is not read until fn returns.
func OnMessage(fn func(s *Session, msg []byte)) Option { return func(c *config) { c.onMessage = fn } }

// NotifyOption is a per-call choice for Notify and Broadcast.
type NotifyOption func(*notifyConfig)

type notifyConfig struct {
	typ string
}

// WithType sets the envelope's type, an event name the client switches on.
func WithType(t string) NotifyOption { return func(n *notifyConfig) { n.typ = t } }
