package wsnotify_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/wsnotify/wsnotify"
)

// The benchmarks run two nodes on one Redis, a real WebSocket client on node
// A and Notify on node B, so each op is the whole path: script or PUBLISH,
// pub/sub, dispatch, socket. Run them with a real Redis:
//
//	REDIS_ADDR=127.0.0.1:6379 go test -run '^$' -bench Notify -benchmem -count 3 .

func historyModes() map[string][]wsnotify.Option {
	return map[string][]wsnotify.Option{
		"history=on":  nil,
		"history=off": {wsnotify.WithoutHistory()},
	}
}

// BenchmarkNotifyThroughput fires notifications to 50 users from parallel
// goroutines and stops the clock when every client has received all of its
// own. A burst can overflow a socket's queue: the node then closes it with
// 4008 and the client resumes from history, as a real client does (history
// is made long enough to hold the whole burst). With history off what was
// queued is lost, and the benchmark reports it.
func BenchmarkNotifyThroughput(b *testing.B) {
	const users = 50
	for _, mode := range []string{"history=on", "history=off"} {
		b.Run(mode, func(b *testing.B) {
			opts := append([]wsnotify.Option{wsnotify.WithHistory(1_000_000, time.Hour)}, historyModes()[mode]...)
			a, n := startBenchNodes(b, opts)
			clients := make([]*benchClient, users)
			for i := range clients {
				clients[i] = &benchClient{b: b, node: a, user: fmt.Sprintf("bench-%d", i), seen: map[string]bool{}}
				clients[i].connect()
			}
			payload := map[string]any{"order": "o-123456", "status": "paid", "amount_cents": 1250}
			var next atomic.Int64
			b.SetParallelism(8)
			b.ResetTimer()
			var wg sync.WaitGroup
			lost := make([]int, users)
			for i, c := range clients {
				want := b.N / users
				if i < b.N%users {
					want++
				}
				wg.Go(func() { lost[i] = c.waitFor(want, mode == "history=off") })
			}
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					user := clients[(next.Add(1)-1)%users].user
					if _, err := n.hub.Notify(context.Background(), user, payload); err != nil {
						b.Error(err)
						return
					}
				}
			})
			wg.Wait()
			b.StopTimer()
			total, resumes := 0, 0
			for i, c := range clients {
				total += lost[i]
				resumes += c.reconnects
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "delivered/s")
			b.ReportMetric(float64(total), "lost")
			b.ReportMetric(float64(resumes), "resumes")
			if mode == "history=on" && total > 0 {
				b.Fatalf("%d notifications lost with history on", total)
			}
		})
	}
}

// benchClient reads one user's notifications, resuming after every close.
type benchClient struct {
	b          *testing.B
	node       *node
	user       string
	conn       *websocket.Conn
	lastID     string // the last stream id seen, for since
	seen       map[string]bool
	reconnects int
}

func (c *benchClient) connect() {
	url := c.node.wsURL(c.user)
	if c.lastID != "" {
		url += "&since=" + c.lastID
	}
	conn, _, err := websocket.DefaultDialer.Dial(url, nil)
	if err != nil {
		c.b.Error(err)
		return
	}
	c.conn = conn
	c.b.Cleanup(func() { conn.Close() })
}

// waitFor reads until want distinct notifications arrived; with allowLoss it
// stops once the socket has been idle for a second and returns the shortfall.
func (c *benchClient) waitFor(want int, allowLoss bool) (lost int) {
	for len(c.seen) < want && c.conn != nil {
		_ = c.conn.SetReadDeadline(time.Now().Add(time.Second))
		_, msg, err := c.conn.ReadMessage()
		if err == nil {
			var env wsnotify.Envelope
			if json.Unmarshal(msg, &env) == nil && env.Type == wsnotify.HelloType && c.lastID == "" {
				var hello struct {
					LastID string `json:"last_id"`
				}
				_ = json.Unmarshal(env.Data, &hello)
				c.lastID = hello.LastID
			} else if err == nil && !strings.HasPrefix(env.Type, "wsnotify.") {
				c.seen[env.ID] = true
				if strings.Count(env.ID, "-") == 1 && !strings.Contains(env.ID, "-n") {
					c.lastID = env.ID
				}
			}
			continue
		}
		var ce *websocket.CloseError
		switch {
		case errors.As(err, &ce):
			c.reconnects++
			c.connect()
		case allowLoss:
			return want - len(c.seen)
		default:
			c.b.Errorf("%s received %d of %d: %v", c.user, len(c.seen), want, err)
			return want - len(c.seen)
		}
	}
	return 0
}

// BenchmarkNotifyLatency sends one notification at a time and measures from
// the Notify call to the client's receipt.
func BenchmarkNotifyLatency(b *testing.B) {
	for _, mode := range []string{"history=on", "history=off"} {
		b.Run(mode, func(b *testing.B) {
			a, n := startBenchNodes(b, historyModes()[mode])
			conn := a.dial(b, "bench")
			lat := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for range b.N {
				start := time.Now()
				if _, err := n.hub.Notify(context.Background(), "bench", "paid"); err != nil {
					b.Fatal(err)
				}
				if _, _, err := conn.ReadMessage(); err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(start))
			}
			b.StopTimer()
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
		})
	}
}

func startBenchNodes(b *testing.B, opts []wsnotify.Option) (a, n *node) {
	cl := newCluster(b)
	a, n = cl.node(opts...), cl.node(opts...)
	a.history = !strings.HasSuffix(b.Name(), "history=off")
	return a, n
}
