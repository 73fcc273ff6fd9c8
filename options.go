package wsnotify

import (
	"log/slog"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/prometheus/client_golang/prometheus"
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
	queueMsgs          int
	queueBytes         int64
	history            bool
	historyLen         int64
	historyAge         time.Duration
	idempotencyTTL     time.Duration
	unsubscribeGrace   time.Duration
	publishTimeout     time.Duration
	subscribeWait      time.Duration
	probeInterval      time.Duration
	workers            int
	partitions         int // 0: the default for the client
	defaultType        string
	logger             *slog.Logger
	metrics            prometheus.Registerer
	onConnect          func(*Session)
	onDisconnect       func(*Session)
	onMessage          func(*Session, []byte)
}

func defaultConfig() config {
	return config{
		prefix:           "wsnotify",
		maxMessageSize:   64 << 10,
		queueMsgs:        64,
		queueBytes:       1 << 20,
		history:          true,
		historyLen:       1000,
		historyAge:       24 * time.Hour,
		idempotencyTTL:   24 * time.Hour,
		unsubscribeGrace: 5 * time.Second,
		publishTimeout:   5 * time.Second,
		subscribeWait:    3 * time.Second,
		probeInterval:    15 * time.Second,
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

// WithSessionQueue bounds what may wait for one slow socket: msgs frames and
// bytes bytes (defaults 64 and 1 MiB; each queued frame slot costs 40 bytes
// per socket, allocated up front). A socket over either bound is closed
// with CloseSlowConsumer rather than silently losing a message; its client
// resumes from history when it reconnects.
func WithSessionQueue(msgs int, bytes int64) Option {
	return func(c *config) { c.queueMsgs, c.queueBytes = msgs, bytes }
}

// WithHistory sets how much of each user's history Redis keeps for resuming
// clients: at least the last maxLen notifications (Redis trims in whole
// nodes, so a few more may stay) that are younger than maxAge (defaults 1000
// and 24h). A user's history expires maxAge after their last notification.
func WithHistory(maxLen int, maxAge time.Duration) Option {
	return func(c *config) { c.history, c.historyLen, c.historyAge = true, int64(maxLen), maxAge }
}

// WithoutHistory turns history off: Notify is a plain PUBLISH and delivery is
// at most once. Clients that resume get a truncated frame.
func WithoutHistory() Option { return func(c *config) { c.history = false } }

// WithIdempotencyTTL sets how long Notify remembers an idempotency key
// (default 24h).
func WithIdempotencyTTL(d time.Duration) Option { return func(c *config) { c.idempotencyTTL = d } }

// WithUnsubscribeGrace sets how long a node stays subscribed to a user after
// the user's last local socket closes (default 5s), so a reloading tab does
// not churn subscriptions. During the grace the user still counts as online.
func WithUnsubscribeGrace(d time.Duration) Option { return func(c *config) { c.unsubscribeGrace = d } }

// WithPublishTimeout bounds a Notify whose context has no deadline (default 5s).
func WithPublishTimeout(d time.Duration) Option { return func(c *config) { c.publishTimeout = d } }

// WithSubscribeWait bounds how long an upgrade waits for Redis to confirm the
// user's subscription (default 3s). Past it the upgrade is refused with 503,
// since the node could not promise to deliver.
func WithSubscribeWait(d time.Duration) Option { return func(c *config) { c.subscribeWait = d } }

// WithProbeInterval sets how long the pub/sub link may stay silent before the
// node publishes a probe to itself (default 15s). When the probe has not come
// back after another interval, the link is replaced and every local user is
// resynced from history.
func WithProbeInterval(d time.Duration) Option { return func(c *config) { c.probeInterval = d } }

// defaultClusterPartitions spreads users over enough slots to balance the
// masters of a typical cluster, at the cost of one pub/sub connection per
// partition on each node.
const defaultClusterPartitions = 16

// WithPartitions sets how many partitions users are spread over on a Redis
// Cluster, each with its own hash tag and its own sharded pub/sub connection
// per node (default 16 on a Cluster, 1 otherwise). Every node and every
// service that notifies must use the same count.
func WithPartitions(n int) Option { return func(c *config) { c.partitions = n } }

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
// own goroutine, while the upgrade request (headers and context) is still
// whole: copy what the socket needs later with Session.Set. The HTTP handler
// returns after fn.
func OnConnect(fn func(*Session)) Option { return func(c *config) { c.onConnect = fn } }

// OnDisconnect runs fn after a socket has closed.
func OnDisconnect(fn func(*Session)) Option { return func(c *config) { c.onDisconnect = fn } }

// OnMessage runs fn for each text frame a client sends, on that socket's read
// goroutine: the next frame is not read until fn returns.
func OnMessage(fn func(s *Session, msg []byte)) Option { return func(c *config) { c.onMessage = fn } }

// NotifyOption is a per-call choice for Notify and Broadcast.
type NotifyOption func(*notifyConfig)

type notifyConfig struct {
	typ     string
	idemKey string
}

// WithType sets the envelope's type, an event name the client switches on.
func WithType(t string) NotifyOption { return func(n *notifyConfig) { n.typ = t } }

// WithIdempotencyKey makes Notify idempotent under key (an order id, say):
// within the idempotency TTL, a later Notify with the same user and key
// publishes nothing and returns the first call's Result with Duplicate set.
func WithIdempotencyKey(key string) NotifyOption { return func(n *notifyConfig) { n.idemKey = key } }
