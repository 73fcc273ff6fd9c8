package main

import (
	"bytes"
	"context"
	_ "embed"
	"errors"
	"fmt"
	"html/template"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/go-redis/v9"
	"github.com/skip2/go-qrcode"

	"github.com/wsnotify/wsnotify"
	"github.com/wsnotify/wsnotify/middleware"
)

//go:embed static/index.html
var indexHTML string

var indexTemplate = template.Must(template.New("index").Parse(indexHTML))

// nodeOptions describes one node of the demo cluster.
type nodeOptions struct {
	Name    string                // shown on the page, e.g. "A"
	Redis   redis.UniversalClient // owned by the caller; shared Redis, own client
	Prefix  string                // Redis channel and key prefix; nodes of one cluster share it
	PeerURL string                // base URL of the other node, where the merchant panel pays
	Logger  *slog.Logger          // nil: slog.Default()
}

// node is one server of the cluster: a gin engine with its own hub.
type node struct {
	name       string
	hub        *wsnotify.Hub
	ledger     ledger
	engine     *gin.Engine
	page       []byte
	peerOrigin string
	logger     *slog.Logger
}

func newNode(opts nodeOptions) (*node, error) {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	logger := opts.Logger.With("node", opts.Name)
	peer, err := url.Parse(opts.PeerURL)
	if err != nil || peer.Scheme == "" || peer.Host == "" {
		return nil, errors.New("peer URL must look like http://host:port")
	}

	// Demo only: the user key is whatever the page puts in ?user=, so anyone
	// can listen as anyone. A real app identifies the socket with a signed,
	// short-lived ticket (middleware.Tickets) or its own session.
	// Each node has its own registry: two nodes share this process.
	metrics := prometheus.NewRegistry()
	hub, err := wsnotify.New(opts.Redis,
		wsnotify.WithUserKey(middleware.FromQuery("user")),
		wsnotify.WithPrefix(opts.Prefix),
		wsnotify.WithLogger(logger),
		wsnotify.WithMetrics(metrics),
	)
	if err != nil {
		return nil, err
	}

	var page bytes.Buffer
	err = indexTemplate.Execute(&page, map[string]string{"Node": opts.Name, "Peer": opts.PeerURL})
	if err != nil {
		_ = hub.Close(context.Background())
		return nil, err
	}

	n := &node{
		name:       opts.Name,
		hub:        hub,
		ledger:     ledger{rdb: opts.Redis, prefix: opts.Prefix},
		engine:     gin.New(),
		page:       page.Bytes(),
		peerOrigin: peer.Scheme + "://" + peer.Host,
		logger:     logger,
	}
	r := n.engine
	r.Use(gin.Recovery(), hub.Middleware()) // Middleware lets handlers call wsnotify.Notify(c, ...)
	r.GET("/", n.index)
	hub.Mount(r, "/ws") // the socket at /ws, the browser client at /ws/client.js
	r.GET("/healthz", n.healthz)
	r.GET("/metrics", gin.WrapH(promhttp.HandlerFor(metrics, promhttp.HandlerOpts{})))
	r.GET("/api/qr", n.qr)
	r.GET("/api/balance", n.balance)
	r.POST("/api/pay", n.cors, n.pay)
	r.OPTIONS("/api/pay", n.cors)
	return n, nil
}

// Handler returns the node's routes, to serve with any http.Server.
func (n *node) Handler() http.Handler { return n.engine }

// Close closes the node's sockets (they reconnect elsewhere) and its hub.
// Shut the http.Server down first, so that no payment is cut off before it
// has notified.
func (n *node) Close(ctx context.Context) error { return n.hub.Close(ctx) }

func (n *node) index(c *gin.Context) {
	c.Data(http.StatusOK, "text/html; charset=utf-8", n.page)
}

func (n *node) healthz(c *gin.Context) {
	ctx, cancel := context.WithTimeout(c.Request.Context(), 2*time.Second)
	defer cancel()
	if err := n.hub.Ready(ctx); err != nil {
		c.JSON(http.StatusServiceUnavailable, gin.H{"status": "unavailable", "node": n.name, "error": err.Error()})
		return
	}
	c.JSON(http.StatusOK, gin.H{"status": "ok", "node": n.name})
}

// qr answers the user's payment code: what a merchant's terminal scans to
// charge the user.
func (n *node) qr(c *gin.Context) {
	user, ok := userParam(c)
	if !ok {
		return
	}
	png, err := qrcode.Encode("wsnotify-demo:pay?"+url.Values{"user": {user}}.Encode(), qrcode.Medium, 256)
	if err != nil {
		c.JSON(http.StatusInternalServerError, gin.H{"error": err.Error()})
		return
	}
	c.Data(http.StatusOK, "image/png", png)
}

func (n *node) balance(c *gin.Context) {
	user, ok := userParam(c)
	if !ok {
		return
	}
	cents, err := n.ledger.balance(c.Request.Context(), user)
	if err != nil {
		c.JSON(http.StatusServiceUnavailable, gin.H{"error": "payment store unavailable: " + err.Error()})
		return
	}
	c.JSON(http.StatusOK, gin.H{"user": user, "balance_cents": cents})
}

// userParam reads ?user= the way the socket route does, answering 400 itself
// when it is unusable.
func userParam(c *gin.Context) (string, bool) {
	user := strings.TrimSpace(c.Query("user"))
	if user == "" || len(user) > maxUserLen {
		c.JSON(http.StatusBadRequest, gin.H{"error": fmt.Sprintf("user must be 1 to %d bytes", maxUserLen)})
		return "", false
	}
	return user, true
}

// cors lets the page served by the peer node pay through this node, so the
// demo can show a payment crossing the cluster. Other foreign origins are
// refused outright: a browser would not let them read the answer, but a
// plain form post would still move money.
func (n *node) cors(c *gin.Context) {
	origin := c.GetHeader("Origin")
	h := c.Writer.Header()
	h.Add("Vary", "Origin")
	switch {
	case origin == n.peerOrigin:
		h.Set("Access-Control-Allow-Origin", origin)
	case origin == "" || origin == "http://"+c.Request.Host || origin == "https://"+c.Request.Host:
		// Same origin, or not a browser.
	default:
		c.AbortWithStatusJSON(http.StatusForbidden, gin.H{"error": "origin not allowed: " + origin})
		return
	}
	if c.Request.Method == http.MethodOptions {
		h.Set("Access-Control-Allow-Methods", "POST")
		h.Set("Access-Control-Allow-Headers", "Content-Type")
		h.Set("Access-Control-Max-Age", "600")
		c.AbortWithStatus(http.StatusNoContent)
	}
}
