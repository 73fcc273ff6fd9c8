package wsnotify_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/gorilla/websocket"
	"github.com/redis/go-redis/v9"

	"github.com/wsnotify/wsnotify"
	"github.com/wsnotify/wsnotify/internal/redistest"
)

// numbered is the payload of the stream tests: n counts from 0.
type numbered struct {
	N int `json:"n"`
}

// receiver reads numbered notifications for one user across reconnects and
// checks that each n arrives once, in order.
type receiver struct {
	t      *testing.T
	user   string
	next   int
	lastID string
}

// take reads from conn until it has seen want messages in all or the socket
// closes; it returns the close code (0 when want was reached).
func (r *receiver) take(conn *websocket.Conn, want int) int {
	r.t.Helper()
	for r.next < want {
		_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, msg, err := conn.ReadMessage()
		if err != nil {
			var ce *websocket.CloseError
			if errors.As(err, &ce) {
				return ce.Code
			}
			r.t.Fatalf("%s: read after %d messages: %v", r.user, r.next, err)
		}
		var env wsnotify.Envelope
		if err := json.Unmarshal(msg, &env); err != nil {
			r.t.Fatalf("bad frame %q: %v", msg, err)
		}
		switch env.Type {
		case wsnotify.HelloType:
			var hello struct {
				LastID string `json:"last_id"`
			}
			_ = json.Unmarshal(env.Data, &hello)
			if r.lastID == "" {
				r.lastID = hello.LastID // where to resume before the first notification
			} else if hello.LastID != r.lastID {
				r.t.Fatalf("%s: hello names %s, resumed from %s", r.user, hello.LastID, r.lastID)
			}
			continue
		case wsnotify.TruncatedType:
			r.t.Fatalf("%s: unexpected truncated frame after %d messages", r.user, r.next)
		}
		var p numbered
		if err := json.Unmarshal(env.Data, &p); err != nil {
			r.t.Fatalf("bad payload %s: %v", env.Data, err)
		}
		if p.N != r.next {
			r.t.Fatalf("%s: got n=%d, want %d (lost or duplicated)", r.user, p.N, r.next)
		}
		r.next++
		r.lastID = env.ID
	}
	return 0
}

// takeUntil reads until the sender has finished and every message it sent
// has arrived. It reads only what was already sent, so it never waits on a
// message that will not come.
func (r *receiver) takeUntil(conn *websocket.Conn, finished *atomic.Bool, sent *atomic.Int64) int {
	for {
		done := finished.Load() // read before sent: nothing is sent after finishing
		n := int(sent.Load())
		if r.next < n {
			if code := r.take(conn, n); code != 0 {
				return code
			}
			continue
		}
		if done {
			return 0
		}
		runtime.Gosched() // nothing sent yet beyond what arrived
	}
}

// resumeURL is the socket URL of n for r's user, resuming after r.lastID.
func (r *receiver) dial(n *node) *websocket.Conn {
	r.t.Helper()
	url := n.wsURL(r.user)
	if r.lastID != "" {
		url += "&since=" + r.lastID
	}
	conn, resp, err := websocket.DefaultDialer.Dial(url, nil)
	if err != nil {
		r.t.Fatalf("dial %s: %v %v", url, err, resp)
	}
	r.t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// stream notifies user count times from n at a steady pace, each notification
// retried until Redis takes it; it returns when all are sent.
func stream(t *testing.T, n *node, user string, count int, every time.Duration, sent *atomic.Int64) <-chan error {
	done := make(chan error, 1)
	go func() {
		tick := time.NewTicker(every)
		defer tick.Stop()
		for i := 0; i < count; i++ {
			<-tick.C
			key := fmt.Sprintf("%s-%d", user, i)
			for {
				ctx, cancel := context.WithTimeout(context.Background(), time.Second)
				_, err := n.hub.Notify(ctx, user, numbered{i}, wsnotify.WithIdempotencyKey(key))
				cancel()
				if err == nil {
					break
				}
				if !errors.Is(err, wsnotify.ErrUnavailable) {
					done <- err
					return
				}
			}
			if sent != nil {
				sent.Add(1)
			}
		}
		done <- nil
	}()
	return done
}

func TestResumeOnTheOtherNodeMidStream(t *testing.T) {
	testResumeOnTheOtherNodeMidStream(t, newCluster(t))
}

func testResumeOnTheOtherNodeMidStream(t *testing.T, cl *cluster) {
	a, b := cl.node(), cl.node()
	r := &receiver{t: t, user: "alice"}
	conn := r.dial(a)
	const total = 600
	var sent atomic.Int64
	done := stream(t, b, "alice", total, time.Millisecond, &sent)

	r.take(conn, 150)
	_ = conn.Close() // the till drops its connection...
	redistest.Eventually(t, 10*time.Second, func() bool { return sent.Load() > int64(r.next)+50 },
		"no notifications were sent while the client was away")
	conn = r.dial(b) // ...and comes back through the load balancer to the other node
	if code := r.take(conn, total); code != 0 {
		t.Fatalf("closed with %d", code)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestNodeClosedMidStreamLosesNothing(t *testing.T) {
	testNodeClosedMidStreamLosesNothing(t, newCluster(t))
}

func testNodeClosedMidStreamLosesNothing(t *testing.T, cl *cluster) {
	a, b := cl.node(), cl.node()
	r := &receiver{t: t, user: "bob"}
	conn := r.dial(a)
	const total = 600
	done := stream(t, b, "bob", total, time.Millisecond, nil)

	r.take(conn, 200)
	go func() { _ = a.hub.Close(context.Background()) }()
	if code := r.take(conn, total); code != websocket.CloseGoingAway {
		t.Fatalf("node A's socket ended with %d, want 1001", code)
	}
	conn = r.dial(b)
	if code := r.take(conn, total); code != 0 {
		t.Fatalf("closed with %d", code)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestPubSubKillMidStreamLosesNothing(t *testing.T) {
	srv := redistest.Server(t)
	cl := &cluster{t: t, addr: srv.Addr, prefix: redistest.Prefix(t)}
	a, b := cl.node(), cl.node()
	r := &receiver{t: t, user: "carol"}
	conn := r.dial(a)
	const total = 1000
	var sent atomic.Int64
	done := stream(t, b, "carol", total, time.Millisecond, &sent)

	admin := redis.NewClient(&redis.Options{Addr: srv.Addr})
	defer admin.Close()
	for _, at := range []int64{250, 500, 750} {
		redistest.Eventually(t, 20*time.Second, func() bool { return sent.Load() >= at }, "stream stalled before %d", at)
		killed, err := admin.ClientKillByFilter(context.Background(), "TYPE", "pubsub").Result()
		if err != nil || killed == 0 {
			t.Fatalf("CLIENT KILL TYPE pubsub = %d, %v", killed, err)
		}
	}
	if code := r.take(conn, total); code != 0 {
		t.Fatalf("closed with %d", code)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if st := a.hub.Stats(); st.Resyncs == 0 {
		t.Fatalf("node A never resynced: %+v", st)
	}
}

func TestRedisRestartKeepsSessionsAndHistory(t *testing.T) {
	srv := redistest.Server(t)
	cl := &cluster{t: t, addr: srv.Addr, prefix: redistest.Prefix(t)}
	a, b := cl.node(), cl.node()
	live := &receiver{t: t, user: "dave"}
	liveConn := live.dial(a)
	away := &receiver{t: t, user: "erin"}
	awayConn := away.dial(a)

	for i := range 3 {
		notify(t, b, "dave", numbered{i})
		notify(t, b, "erin", numbered{i})
	}
	live.take(liveConn, 3)
	away.take(awayConn, 1)
	_ = awayConn.Close() // erin saw only the first; two are waiting in history

	srv.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	start := time.Now()
	_, err := b.hub.Notify(ctx, "dave", numbered{3})
	cancel()
	if took := time.Since(start); !errors.Is(err, wsnotify.ErrUnavailable) || took > time.Second {
		t.Fatalf("Notify with Redis stopped: %v after %v; want ErrUnavailable within the deadline", err, took)
	}
	redistest.Eventually(t, 5*time.Second, func() bool { return a.hub.Ready(context.Background()) != nil },
		"Ready still nil with Redis stopped")

	srv.Start()
	waitReady(t, a.hub)
	waitReady(t, b.hub)
	notify(t, b, "dave", numbered{3})
	live.take(liveConn, 4) // the socket stayed open across the outage

	awayConn = away.dial(b)
	away.take(awayConn, 3) // acknowledged before the stop, delivered after it
}

func TestSlowConsumerIsDisconnectedAndResumes(t *testing.T) {
	cl := newCluster(t)
	a, b := cl.node(wsnotify.WithSessionQueue(16, 256<<10)), cl.node()
	slow := &receiver{t: t, user: "slow"}
	slowConn := slow.dial(a)
	fast := &receiver{t: t, user: "fast"}
	fastConn := fast.dial(a)

	// The slow client reads nothing until the node gives up on it. Big
	// payloads fill the socket buffers first, then the queue.
	pad := strings.Repeat("x", 16<<10)
	sent := 0
	for a.hub.Stats().SlowConsumers == 0 {
		if sent == 5000 {
			t.Fatal("5000 notifications and the slow consumer is still connected")
		}
		if _, err := b.hub.Notify(context.Background(), "slow", gin.H{"n": sent, "pad": pad}); err != nil {
			t.Fatal(err)
		}
		// The healthy client on the same node gets each of its messages.
		notify(t, b, "fast", numbered{sent})
		fast.take(fastConn, sent+1)
		sent++
	}
	for ; sent%7 != 0; sent++ { // a few more while it is gone
		notify(t, b, "slow", gin.H{"n": sent, "pad": pad})
	}

	if code := slow.take(slowConn, sent); code != wsnotify.CloseSlowConsumer {
		t.Fatalf("slow consumer closed with %d, want %d", code, wsnotify.CloseSlowConsumer)
	}
	slowConn = slow.dial(b)
	if code := slow.take(slowConn, sent); code != 0 {
		t.Fatalf("resumed socket closed with %d", code)
	}
}

func TestIdempotencyKeyPublishesOnce(t *testing.T) { testIdempotencyKeyPublishesOnce(t, newCluster(t)) }

func testIdempotencyKeyPublishesOnce(t *testing.T, cl *cluster) {
	a, b := cl.node(), cl.node()
	conn := a.dial(t, "frank")
	first := notify(t, b, "frank", "paid", wsnotify.WithIdempotencyKey("order-42"))
	again := notify(t, a, "frank", "paid", wsnotify.WithIdempotencyKey("order-42"))
	if first.Duplicate || !again.Duplicate || again.ID != first.ID || again.Nodes != first.Nodes {
		t.Fatalf("first %+v, again %+v; want the first result replayed", first, again)
	}
	other := notify(t, b, "frank", "next", wsnotify.WithIdempotencyKey("order-43"))
	if env := readEnvelope(t, conn); env.ID != first.ID {
		t.Fatalf("first frame %s, want %s", env.ID, first.ID)
	}
	if env := readEnvelope(t, conn); env.ID != other.ID {
		t.Fatalf("second frame %s (%s), want the next order, not a repeat", env.ID, env.Data)
	}
	// The key belongs to its user: another user's order-42 is new.
	if res := notify(t, b, "grace", "paid", wsnotify.WithIdempotencyKey("order-42")); res.Duplicate {
		t.Fatal("idempotency key leaked across users")
	}
}

func TestResumeFromTrimmedHistoryIsTruncated(t *testing.T) {
	testResumeFromTrimmedHistoryIsTruncated(t, newCluster(t))
}

func testResumeFromTrimmedHistoryIsTruncated(t *testing.T, cl *cluster) {
	a := cl.node(wsnotify.WithHistory(10, time.Hour))
	var firstID string
	for i := range 250 {
		res := notify(t, a, "heidi", numbered{i})
		if i == 0 {
			firstID = res.ID
		}
	}
	conn, _, err := websocket.DefaultDialer.Dial(a.wsURL("heidi")+"&since="+firstID, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if env := readEnvelope(t, conn); env.Type != wsnotify.HelloType || string(env.Data) != `{"last_id":"`+firstID+`"}` {
		t.Fatalf("first frame %+v, want a hello naming %s", env, firstID)
	}
	env := readEnvelope(t, conn)
	if env.Type != wsnotify.TruncatedType || string(env.Data) != `{"since":"`+firstID+`"}` {
		t.Fatalf("first frame %+v, want %s", env, wsnotify.TruncatedType)
	}
	var p numbered
	_ = json.Unmarshal(readEnvelope(t, conn).Data, &p)
	if p.N < 10 || p.N > 240 {
		t.Fatalf("after the truncated frame came n=%d, want what history still holds", p.N)
	}
	if st := a.hub.Stats(); st.Truncated != 1 {
		t.Fatalf("Stats.Truncated = %d", st.Truncated)
	}
}

func TestResumeWithinHistoryIsNotTruncated(t *testing.T) {
	cl := newCluster(t)
	a := cl.node()
	var ids []string
	for i := range 5 {
		ids = append(ids, notify(t, a, "ivan", numbered{i}).ID)
	}
	r := &receiver{t: t, user: "ivan", next: 2, lastID: ids[1]}
	r.take(r.dial(a), 5)
}

func TestBadSinceIsRefused(t *testing.T) {
	cl := newCluster(t)
	a := cl.node()
	for _, since := range []string{"abc", "1-", "-1", "1-2-3"} {
		_, resp, err := websocket.DefaultDialer.Dial(a.wsURL("judy")+"&since="+since, nil)
		if err == nil || resp.StatusCode != 400 {
			t.Fatalf("since=%q: %v %v, want 400", since, resp, err)
		}
	}
}

func TestOtherLanguagesNotifyWithHistoryThroughFCALL(t *testing.T) {
	testOtherLanguagesNotifyWithHistoryThroughFCALL(t, newCluster(t))
}

func testOtherLanguagesNotifyWithHistoryThroughFCALL(t *testing.T, cl *cluster) {
	a := cl.node()
	live := a.dial(t, "kate")
	notify(t, a, "kate", numbered{0})
	seen := readEnvelope(t, live).ID
	_ = live.Close()
	redistest.Eventually(t, 5*time.Second, func() bool {
		online, err := a.hub.Online(context.Background(), "kate")
		return err == nil && !online
	}, "kate still online after her socket closed")

	// What a Java (or any) service does, with a bare client: one command.
	bare := cl.client()
	defer bare.Close()
	stream, channel := a.hub.HistoryKeyOf("kate"), a.hub.ChannelOf("kate")
	if !cl.sharded && (stream != cl.prefix+":{0}:history:kate" || channel != cl.prefix+":{0}:user:kate") {
		t.Fatalf("names %q, %q differ from the documented ones", stream, channel)
	}
	sharded := "0"
	if cl.sharded {
		sharded = "1"
	}
	if err := cl.admin().Do(context.Background(), "FUNCTION", "LIST").Err(); err != nil &&
		strings.Contains(strings.ToLower(err.Error()), "unknown command") {
		t.Skip("this Redis has no FUNCTION command (the embedded fallback): other services would EVAL the script")
	}
	// The hub loads the function in the background once its link is up.
	redistest.Eventually(t, 5*time.Second, func() bool { return functionLoaded(cl, stream) },
		"the wsnotify function is not loaded")
	v, err := bare.Do(context.Background(), "FCALL", "wsnotify_notify", 2, stream, channel,
		"payment", `{"n":1}`, 1000, 86400000, 0, "", sharded).Slice()
	if err != nil {
		t.Fatalf("FCALL: %v", err)
	}
	if len(v) != 3 || v[1] != int64(0) {
		t.Fatalf("FCALL returned %v, want [id 0 0]: kate was offline", v)
	}

	r := &receiver{t: t, user: "kate", next: 1, lastID: seen}
	conn := r.dial(a)
	r.take(conn, 2)
	if r.lastID != v[0] {
		t.Fatalf("resumed id %s, FCALL returned %v", r.lastID, v[0])
	}
}

func TestHistoryOffIsPlainPublish(t *testing.T) {
	cl := newCluster(t)
	a, b := cl.node(wsnotify.WithoutHistory()), cl.node(wsnotify.WithoutHistory())
	a.history, b.history = false, false
	conn := a.dial(t, "leo")
	res := notify(t, b, "leo", 1)
	if env := readEnvelope(t, conn); env.ID != res.ID || res.Nodes != 1 {
		t.Fatalf("got %s, Notify said %+v", env.ID, res)
	}
	n, err := b.rdb.Exists(context.Background(), cl.prefix+":{0}:history:leo").Result()
	if err != nil || n != 0 {
		t.Fatalf("history key exists (%d, %v) with history off", n, err)
	}
	// A client resuming without history is told it may have missed things.
	conn2, _, err := websocket.DefaultDialer.Dial(a.wsURL("leo")+"&since=1-0", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn2.Close()
	if env := readEnvelope(t, conn2); env.Type != wsnotify.TruncatedType {
		t.Fatalf("got %+v, want a truncated frame", env)
	}
}

func TestConcurrentUsersKeepTheirOrder(t *testing.T) {
	testConcurrentUsersKeepTheirOrder(t, newCluster(t))
}

func testConcurrentUsersKeepTheirOrder(t *testing.T, cl *cluster) {
	a, b := cl.node(), cl.node()
	const users, each = 20, 50
	var wg sync.WaitGroup
	for u := range users {
		name := fmt.Sprintf("u%02d", u)
		r := &receiver{t: t, user: name}
		conn := r.dial(a)
		wg.Go(func() {
			for i := range each {
				if _, err := b.hub.Notify(context.Background(), name, numbered{i}); err != nil {
					t.Error(err)
					return
				}
			}
		})
		defer func() { r.take(conn, each) }()
	}
	wg.Wait()
}

// Concurrent notifications share script calls; each caller must still get
// the id and the count of its own notification.
func TestConcurrentNotifyGetsItsOwnResult(t *testing.T) {
	testConcurrentNotifyGetsItsOwnResult(t, newCluster(t))
}

func testConcurrentNotifyGetsItsOwnResult(t *testing.T, cl *cluster) {
	a, b := cl.node(), cl.node()
	const users = 40
	conns := make([]*websocket.Conn, users)
	for u := range users {
		conns[u] = a.dial(t, fmt.Sprintf("r%02d", u))
	}
	ids := make([]string, users)
	var wg sync.WaitGroup
	for u := range users {
		wg.Go(func() {
			res, err := b.hub.Notify(context.Background(), fmt.Sprintf("r%02d", u), u)
			if err != nil || res.Nodes != 1 {
				t.Errorf("user %d: %+v, %v", u, res, err)
			}
			ids[u] = res.ID
		})
	}
	wg.Wait()
	for u, conn := range conns {
		env := readEnvelope(t, conn)
		if string(env.Data) != strconv.Itoa(u) || env.ID != ids[u] {
			t.Fatalf("user %d got %s with id %s; Notify said id %s", u, env.Data, env.ID, ids[u])
		}
	}
}

func TestClosedBeforeTheFirstNotificationResumes(t *testing.T) {
	cl := newCluster(t)
	a, b := cl.node(), cl.node()
	notify(t, b, "olive", numbered{-1})              // a user with history...
	for _, user := range []string{"olive", "pete"} { // ...and one without
		conn, _, err := websocket.DefaultDialer.Dial(a.wsURL(user), nil)
		if err != nil {
			t.Fatal(err)
		}
		var hello struct {
			LastID string `json:"last_id"`
		}
		env := readEnvelope(t, conn)
		_ = json.Unmarshal(env.Data, &hello)
		conn.Close() // closed before any notification: the hello is all it has
		if env.Type != wsnotify.HelloType || hello.LastID == "" {
			t.Fatalf("%s: first frame %+v", user, env)
		}
		for i := range 3 {
			notify(t, b, user, numbered{i})
		}
		r := &receiver{t: t, user: user, lastID: hello.LastID}
		r.take(r.dial(b), 3) // fails on a truncated frame or a gap
	}
}

func TestNotifySurvivesAScriptFlush(t *testing.T) {
	srv := redistest.Server(t) // its own Redis: SCRIPT FLUSH is server-wide
	cl := &cluster{t: t, addr: srv.Addr, prefix: redistest.Prefix(t)}
	a := cl.node()
	conn := a.dial(t, "quinn")
	notify(t, a, "quinn", 1)
	if err := cl.admin().ScriptFlush(context.Background()).Err(); err != nil {
		t.Fatal(err)
	}
	// Redis forgot the scripts (as after a restart or a failover): the hub
	// loads them again and the notifications go through, the batched kind
	// and the single one that idempotency keys take.
	res := notify(t, a, "quinn", 2)
	if err := cl.admin().ScriptFlush(context.Background()).Err(); err != nil {
		t.Fatal(err)
	}
	notify(t, a, "quinn", 3, wsnotify.WithIdempotencyKey("order-3"))
	for _, want := range []string{"1", "2", "3"} {
		if env := readEnvelope(t, conn); string(env.Data) != want {
			t.Fatalf("got %s, want %s", env.Data, want)
		}
	}
	if res.Nodes != 1 {
		t.Fatalf("Nodes = %d", res.Nodes)
	}
}

// functionLoaded tells whether the Redis that holds key has the wsnotify
// function library.
func functionLoaded(cl *cluster, key string) bool {
	ctx := context.Background()
	var c redis.UniversalClient = cl.admin()
	if cc, ok := c.(*redis.ClusterClient); ok {
		m, err := cc.MasterForKey(ctx, key)
		if err != nil {
			return false
		}
		c = m
	}
	libs, err := c.FunctionList(ctx, redis.FunctionListQuery{LibraryNamePattern: "wsnotify"}).Result()
	return err == nil && len(libs) == 1
}

func TestHistoryIsTrimmedByAge(t *testing.T) {
	cl := newCluster(t)
	a := cl.node(wsnotify.WithHistory(5000, 20*time.Millisecond))
	first := notify(t, a, "rita", numbered{0}).ID
	stream := a.hub.HistoryKeyOf("rita")
	// Keep notifying until the first entry has aged out of history; staying
	// well under the length bound, so only age can have removed it.
	for i := 1; ; i++ {
		if i == 4000 {
			t.Fatal("the first entry is still in history after 4,000 notifications")
		}
		notify(t, a, "rita", numbered{i})
		msgs, err := cl.admin().XRangeN(context.Background(), stream, "-", "+", 1).Result()
		if err != nil {
			t.Fatal(err)
		}
		if len(msgs) == 1 && msgs[0].ID != first {
			break
		}
	}
	ttl, err := cl.admin().PTTL(context.Background(), stream).Result()
	if err != nil || ttl <= 0 || ttl > 20*time.Millisecond {
		t.Fatalf("history TTL %v, %v; want the age bound", ttl, err)
	}
}
