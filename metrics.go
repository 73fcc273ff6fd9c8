package wsnotify

import (
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// counters are the hub's running totals. The hot path only adds to atomics;
// Stats and the Prometheus collectors read them.
type counters struct {
	published     atomic.Uint64 // Notify and Broadcast calls Redis accepted
	failed        atomic.Uint64 // Notify and Broadcast calls that returned an error from Redis
	delivered     atomic.Uint64 // frames queued to sockets on this node
	slowConsumers atomic.Uint64
	resyncs       atomic.Uint64
	truncated     atomic.Uint64
	linkDowns     atomic.Uint64
	notifyLatency prometheus.Histogram // nil unless WithMetrics
}

// Stats is a snapshot of one node's state and running totals.
type Stats struct {
	Sessions      int    // open sockets on this node
	Users         int    // users holding them
	Published     uint64 // notifications and broadcasts Redis accepted from this node
	Failed        uint64 // Notify and Broadcast calls that failed on Redis
	Delivered     uint64 // frames written to this node's sockets
	SlowConsumers uint64 // sockets closed with CloseSlowConsumer
	Resyncs       uint64 // users re-read from history after a link blink
	Truncated     uint64 // resumes told that history no longer held their id
	LinkDowns     uint64 // times a pub/sub link of this node went down
}

// Stats returns a snapshot of the node's sockets and counters.
func (h *Hub) Stats() Stats {
	sessions, users := h.sessions.count()
	c := &h.counters
	return Stats{
		Sessions:      sessions,
		Users:         users,
		Published:     c.published.Load(),
		Failed:        c.failed.Load(),
		Delivered:     c.delivered.Load(),
		SlowConsumers: c.slowConsumers.Load(),
		Resyncs:       c.resyncs.Load(),
		Truncated:     c.truncated.Load(),
		LinkDowns:     c.linkDowns.Load(),
	}
}

// observeNotify counts one Notify or Broadcast call and its latency.
func (c *counters) observeNotify(start time.Time, err error) {
	if err != nil {
		c.failed.Add(1)
	} else {
		c.published.Add(1)
	}
	if c.notifyLatency != nil {
		c.notifyLatency.Observe(time.Since(start).Seconds())
	}
}

// WithMetrics registers the hub's Prometheus metrics on reg (all named
// wsnotify_*). Nothing is registered globally; wrap reg with
// prometheus.WrapRegistererWith to add a node label. New fails if a metric
// is already registered on reg, for example by a second hub.
func WithMetrics(reg prometheus.Registerer) Option { return func(c *config) { c.metrics = reg } }

func (h *Hub) registerMetrics(reg prometheus.Registerer) error {
	c := &h.counters
	c.notifyLatency = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "wsnotify_notify_duration_seconds",
		Help:    "Time Notify and Broadcast took to have Redis store and publish a message.",
		Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
	})
	counter := func(name, help string, v *atomic.Uint64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help},
			func() float64 { return float64(v.Load()) })
	}
	gauge := func(name, help string, f func() float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, f)
	}
	collectors := []prometheus.Collector{
		c.notifyLatency,
		gauge("wsnotify_sessions", "Open WebSocket sessions on this node.",
			func() float64 { n, _ := h.sessions.count(); return float64(n) }),
		gauge("wsnotify_users_online", "Users with at least one open session on this node.",
			func() float64 { _, n := h.sessions.count(); return float64(n) }),
		counter("wsnotify_notifications_published_total", "Notifications and broadcasts Redis accepted from this node.", &c.published),
		counter("wsnotify_notifications_failed_total", "Notify and Broadcast calls that failed on Redis.", &c.failed),
		counter("wsnotify_notifications_delivered_total", "Frames written to this node's sockets.", &c.delivered),
		counter("wsnotify_slow_consumer_disconnects_total", "Sockets closed because their queue was full.", &c.slowConsumers),
		counter("wsnotify_resyncs_total", "Users re-read from history after a pub/sub link came back.", &c.resyncs),
		counter("wsnotify_truncated_resumes_total", "Resumes told that history no longer held their id.", &c.truncated),
		counter("wsnotify_redis_link_errors_total", "Times a pub/sub link of this node went down.", &c.linkDowns),
	}
	for _, col := range collectors {
		if err := reg.Register(col); err != nil {
			return err
		}
	}
	return nil
}
