package wsnotify_test

import (
	"context"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"go.uber.org/goleak"

	"github.com/wsnotify/wsnotify"
	"github.com/wsnotify/wsnotify/internal/redistest"
)

// TestChurnLeavesNothingBehind has 5,000 clients connect and disconnect over
// and over (500 at a time: the race detector caps live goroutines) while
// notifications flow, then checks that no session, subscription or goroutine
// is left. WSNOTIFY_CHURN_FOR sets how long (default 1m; it must be long
// enough for every user to connect at least once).
func TestChurnLeavesNothingBehind(t *testing.T) {
	if testing.Short() {
		t.Skip("churn runs for a minute; skipped with -short")
	}
	churnFor := time.Minute
	if v := os.Getenv("WSNOTIFY_CHURN_FOR"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("WSNOTIFY_CHURN_FOR: %v", err)
		}
		churnFor = d
	}
	before := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, before) }) // runs after the nodes' own cleanups
	cl := newCluster(t)
	a, b := cl.node(wsnotify.WithUnsubscribeGrace(50*time.Millisecond)), cl.node()

	const users, concurrent = 5000, 500
	var connects, received atomic.Int64
	stop := time.Now().Add(churnFor)
	var wg sync.WaitGroup
	for w := range concurrent {
		wg.Go(func() {
			for i := w; time.Now().Before(stop); i += concurrent {
				user := fmt.Sprintf("churn-%d", i%users)
				conn, _, err := websocket.DefaultDialer.Dial(a.wsURL(user), nil)
				if err != nil {
					t.Errorf("dial %s: %v", user, err)
					return
				}
				connects.Add(1)
				if _, err := b.hub.Notify(context.Background(), user, i); err != nil {
					t.Errorf("notify: %v", err)
				}
				_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
				for range 2 { // the hello, then the notification
					var env wsnotify.Envelope
					if err := conn.ReadJSON(&env); err != nil {
						break
					}
					if env.Type != wsnotify.HelloType {
						received.Add(1)
						break
					}
				}
				_ = conn.Close()
			}
		})
	}
	wg.Wait()
	t.Logf("%d connections in %v, %d notifications received", connects.Load(), churnFor, received.Load())
	if connects.Load() < users {
		t.Fatalf("only %d connections: fewer than one per user", connects.Load())
	}
	if received.Load() != connects.Load() {
		t.Errorf("%d of %d connected clients got their notification", received.Load(), connects.Load())
	}

	redistest.Eventually(t, 10*time.Second, func() bool { return a.hub.Stats().Sessions == 0 },
		"sessions left: %+v", a.hub.Stats())
	redistest.Eventually(t, 10*time.Second, func() bool {
		chans, err := cl.admin().PubSubChannels(context.Background(), cl.prefix+":*:user:*").Result()
		return err == nil && len(chans) == 0
	}, "user subscriptions left behind")
}
