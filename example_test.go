package wsnotify_test

import (
	"context"
	"errors"
	"log"
	"net/http"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/redis/go-redis/v9"

	"github.com/wsnotify/wsnotify"
	"github.com/wsnotify/wsnotify/middleware"
)

// A node of a payment app: sockets at /ws, and a debit endpoint that tells
// the user, wherever their socket is, how the payment went.
func Example() {
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:6379"})
	hub, err := wsnotify.New(rdb, wsnotify.WithUserKey(middleware.FromContext("userID")))
	if err != nil {
		log.Fatal(err)
	}
	defer hub.Close(context.Background())

	r := gin.New()
	r.Use(hub.Middleware())
	hub.Mount(r, "/ws") // behind the app's own auth, which sets "userID"

	r.POST("/debit", func(c *gin.Context) {
		user, order := c.PostForm("user"), c.PostForm("order")
		// ... debit the account ...
		res, err := wsnotify.Notify(c, user, gin.H{"order": order, "status": "paid"},
			wsnotify.WithType("payment"), wsnotify.WithIdempotencyKey(order))
		if errors.Is(err, wsnotify.ErrUnavailable) {
			c.JSON(http.StatusServiceUnavailable, gin.H{"error": "try again"}) // a retry publishes once
			return
		}
		c.JSON(http.StatusOK, gin.H{"status": "paid", "user_online": res.Nodes > 0})
	})
	_ = r.Run("127.0.0.1:8080")
}

// Outside a request, a worker notifies through the hub itself, with its own
// deadline.
func ExampleHub_Notify() {
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:6379"})
	hub, err := wsnotify.New(rdb, wsnotify.WithUserKey(middleware.FromHeader("X-User")))
	if err != nil {
		log.Fatal(err)
	}
	defer hub.Close(context.Background())

	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	res, err := hub.Notify(ctx, "alice", map[string]any{"status": "declined"}, wsnotify.WithType("payment"))
	if err != nil {
		log.Printf("not sent: %v", err)
		return
	}
	log.Printf("stored as %s; %d node(s) hold alice", res.ID, res.Nodes)
}

// Browsers cannot set headers on a WebSocket: an endpoint behind the app's
// auth issues a short-lived signed ticket, and the page connects with
// ?ticket=.
func ExampleWithUserKey_tickets() {
	tickets, err := middleware.NewTickets([]byte("a secret of at least 32 bytes, shared by all nodes"), 30*time.Second)
	if err != nil {
		log.Fatal(err)
	}
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:6379"})
	hub, err := wsnotify.New(rdb, wsnotify.WithUserKey(tickets.FromQuery("ticket")))
	if err != nil {
		log.Fatal(err)
	}
	defer hub.Close(context.Background())

	r := gin.New()
	r.POST("/ws-ticket", func(c *gin.Context) { c.Set("userID", "alice"); c.Next() }, // your auth here
		tickets.IssueHandler(middleware.FromContext("userID")))
	hub.Mount(r, "/ws")
}
