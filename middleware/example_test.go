package middleware_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/wsnotify/wsnotify/middleware"
)

// In real code the secret comes from configuration and is shared by every
// server instance; it must be at least 32 random bytes.
var exampleSecret = []byte("example-secret-at-least-32-bytes!")

func ExampleTickets() {
	tickets, err := middleware.NewTickets(exampleSecret, 30*time.Second)
	if err != nil {
		panic(err)
	}
	now := time.Date(2030, 1, 1, 12, 0, 0, 0, time.UTC)
	tickets.Now = func() time.Time { return now }

	ticket, err := tickets.Issue("alice")
	if err != nil {
		panic(err)
	}
	user, err := tickets.Verify(ticket)
	fmt.Println(user, err)

	_, err = tickets.Verify(ticket + "x")
	fmt.Println("tampered is invalid:", errors.Is(err, middleware.ErrTicketInvalid))

	now = now.Add(30 * time.Second)
	_, err = tickets.Verify(ticket)
	fmt.Println("late is expired:", errors.Is(err, middleware.ErrTicketExpired))
	// Output:
	// alice <nil>
	// tampered is invalid: true
	// late is expired: true
}

// The browser flow: an authenticated endpoint hands out a ticket, and the
// page opens the WebSocket with ?ticket=... because it cannot set headers.
func ExampleTickets_IssueHandler() {
	tickets, err := middleware.NewTickets(exampleSecret, 30*time.Second)
	if err != nil {
		panic(err)
	}

	// Stand-in for the application's own session middleware.
	appAuth := func(c *gin.Context) {
		if c.GetHeader("Authorization") == "Bearer alice-token" {
			c.Set("user", "alice")
		}
	}

	r := gin.New()
	r.POST("/ws-ticket", appAuth, tickets.IssueHandler(middleware.FromContext("user")))
	// In an app this func is passed to wsnotify; here a plain handler shows
	// what it decides.
	userKey := tickets.FromQuery("ticket")
	r.GET("/ws", func(c *gin.Context) {
		user, err := userKey(c)
		if err != nil {
			c.String(http.StatusUnauthorized, "401")
			return
		}
		c.String(http.StatusOK, "socket for "+user)
	})

	req := httptest.NewRequest(http.MethodPost, "/ws-ticket", nil)
	req.Header.Set("Authorization", "Bearer alice-token")
	rec := httptest.NewRecorder()
	r.ServeHTTP(rec, req)
	var resp middleware.TicketResponse
	if err := json.Unmarshal(rec.Body.Bytes(), &resp); err != nil {
		panic(err)
	}
	fmt.Println("issue:", rec.Code)

	rec = httptest.NewRecorder()
	r.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/ws?ticket="+resp.Ticket, nil))
	fmt.Println(rec.Body.String())

	rec = httptest.NewRecorder()
	r.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/ws-ticket", nil))
	fmt.Println("issue without login:", rec.Code, rec.Body.String())
	// Output:
	// issue: 200
	// socket for alice
	// issue without login: 401 {"error":"unauthorized"}
}

func ExampleFromContext() {
	userKey := middleware.FromContext("user")

	c, _ := gin.CreateTestContext(httptest.NewRecorder())
	c.Request = httptest.NewRequest(http.MethodGet, "/ws", nil)

	_, err := userKey(c)
	fmt.Println("before auth:", errors.Is(err, middleware.ErrNoIdentity))

	c.Set("user", "alice") // what the app's auth middleware does
	user, err := userKey(c)
	fmt.Println("after auth:", user, err)
	// Output:
	// before auth: true
	// after auth: alice <nil>
}

func ExampleFromHeader() {
	userKey := middleware.FromHeader("X-User")

	c, _ := gin.CreateTestContext(httptest.NewRecorder())
	c.Request = httptest.NewRequest(http.MethodGet, "/ws", nil)
	c.Request.Header.Set("X-User", " bob ")

	user, err := userKey(c)
	fmt.Printf("%q %v\n", user, err)
	// Output: "bob" <nil>
}
