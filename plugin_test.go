package wsnotify_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/wsnotify/wsnotify"
	"github.com/wsnotify/wsnotify/internal/redistest"
)

func TestNotifyCrossesNodes(t *testing.T) { testNotifyCrossesNodes(t, newCluster(t)) }

func testNotifyCrossesNodes(t *testing.T, cl *cluster) {
	a, b := cl.node(), cl.node()
	alice := a.dial(t, "alice")

	res := notify(t, b, "alice", gin.H{"order": "o-1", "status": "paid"})
	if res.Nodes != 1 {
		t.Fatalf("Nodes = %d, want 1", res.Nodes)
	}
	env := readEnvelope(t, alice)
	if env.ID != res.ID || env.ID == "" {
		t.Fatalf("envelope id %q, Notify returned %q", env.ID, res.ID)
	}
	if env.Type != wsnotify.DefaultType {
		t.Fatalf("type %q, want %q", env.Type, wsnotify.DefaultType)
	}
	if string(env.Data) != `{"order":"o-1","status":"paid"}` {
		t.Fatalf("data %s is not the payload as JSON", env.Data)
	}
}

func TestNotifyReachesOnlyItsUser(t *testing.T) { testNotifyReachesOnlyItsUser(t, newCluster(t)) }

func testNotifyReachesOnlyItsUser(t *testing.T, cl *cluster) {
	a, b := cl.node(), cl.node()
	alice, bob := a.dial(t, "alice"), a.dial(t, "bob")

	notify(t, b, "alice", "for alice", wsnotify.WithType("secret"))
	if env := readEnvelope(t, alice); string(env.Data) != `"for alice"` || env.Type != "secret" {
		t.Fatalf("alice got %+v", env)
	}
	// Bob's first frame must be his own: alice's message was never his.
	notify(t, b, "bob", "for bob")
	if env := readEnvelope(t, bob); string(env.Data) != `"for bob"` {
		t.Fatalf("bob's first frame is %s, want his own", env.Data)
	}
}

func TestDeliveredCountFollowsSessions(t *testing.T) {
	testDeliveredCountFollowsSessions(t, newCluster(t))
}

func testDeliveredCountFollowsSessions(t *testing.T, cl *cluster) {
	a, b := cl.node(), cl.node()
	onA, onB := a.dial(t, "alice"), b.dial(t, "alice")
	tab2 := a.dial(t, "alice") // a second tab on the same node shares its subscription

	if res := notify(t, b, "alice", 1); res.Nodes != 2 {
		t.Fatalf("Nodes = %d, want 2", res.Nodes)
	}
	for i, c := range []*websocket.Conn{onA, onB, tab2} {
		if env := readEnvelope(t, c); string(env.Data) != "1" {
			t.Fatalf("session %d got %s", i, env.Data)
		}
	}

	channel := a.hub.ChannelOf("alice")
	_ = onB.Close()
	redistest.Eventually(t, 5*time.Second, func() bool { return cl.subscribers(channel) == 1 },
		"node B did not unsubscribe after its last session closed")
	if res := notify(t, b, "alice", 2); res.Nodes != 1 {
		t.Fatalf("Nodes = %d, want 1", res.Nodes)
	}

	_ = onA.Close()
	_ = tab2.Close()
	redistest.Eventually(t, 5*time.Second, func() bool { return cl.subscribers(channel) == 0 },
		"PUBSUB NUMSUB did not return to 0")
	if res := notify(t, a, "alice", 3); res.Nodes != 0 {
		t.Fatalf("Nodes = %d, want 0 for an offline user", res.Nodes)
	}
	online, err := a.hub.Online(context.Background(), "alice")
	if err != nil || online {
		t.Fatalf("Online = %v, %v; want false", online, err)
	}
}

func TestOnline(t *testing.T) { testOnline(t, newCluster(t)) }

func testOnline(t *testing.T, cl *cluster) {
	a, b := cl.node(), cl.node()
	a.dial(t, "carol")
	for _, n := range []*node{a, b} {
		online, err := n.hub.Online(context.Background(), "carol")
		if err != nil || !online {
			t.Fatalf("Online(carol) = %v, %v; want true from every node", online, err)
		}
	}
	if online, _ := b.hub.Online(context.Background(), "dave"); online {
		t.Fatal("Online(dave) = true for a user who never connected")
	}
}

func TestRawPublishIsDelivered(t *testing.T) {
	cl := newCluster(t)
	a := cl.node()
	alice := a.dial(t, "alice")

	bare := redis.NewClient(&redis.Options{Addr: cl.addr})
	defer bare.Close()
	frame := `{"id":"java-1","type":"payment","data":{"status":"paid"}}`
	n, err := bare.Publish(context.Background(), cl.prefix+":{0}:user:alice", frame).Result()
	if err != nil || n != 1 {
		t.Fatalf("PUBLISH = %d, %v", n, err)
	}
	_ = alice.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, got, err := alice.ReadMessage()
	if err != nil || string(got) != frame {
		t.Fatalf("got %q, %v; want the published frame unchanged", got, err)
	}
}

func TestBroadcastReachesEveryNode(t *testing.T) { testBroadcastReachesEveryNode(t, newCluster(t)) }

func testBroadcastReachesEveryNode(t *testing.T, cl *cluster) {
	a, b := cl.node(), cl.node()
	alice, bob := a.dial(t, "alice"), b.dial(t, "bob")
	res, err := a.hub.Broadcast(context.Background(), "maintenance at 2am", wsnotify.WithType("notice"))
	if err != nil {
		t.Fatal(err)
	}
	if res.Nodes != 2 {
		t.Fatalf("Nodes = %d, want 2", res.Nodes)
	}
	for _, c := range []*websocket.Conn{alice, bob} {
		if env := readEnvelope(t, c); env.Type != "notice" || string(env.Data) != `"maintenance at 2am"` {
			t.Fatalf("got %+v", env)
		}
	}
}

func TestUpgradeRefusals(t *testing.T) {
	cl := newCluster(t)
	a := cl.node(
		wsnotify.WithAllowedOrigins("https://shop.example"),
		wsnotify.WithMaxSessionsPerUser(1),
	)
	a.dial(t, "erin")

	cases := []struct {
		name, user, origin string
		status             int
		reason             string
	}{
		{"no user", "", "", http.StatusUnauthorized, "unauthorized"},
		{"foreign origin", "alice", "https://evil.example", http.StatusForbidden, "origin not allowed"},
		{"oversized key", strings.Repeat("k", wsnotify.MaxUserKeyLength+1), "", http.StatusBadRequest, "invalid user key"},
		{"session cap", "erin", "", http.StatusTooManyRequests, "too many sessions"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := http.Header{}
			if tc.origin != "" {
				h.Set("Origin", tc.origin)
			}
			status, reason := a.dialStatus(t, tc.user, h)
			if status != tc.status || !strings.Contains(reason, tc.reason) {
				t.Fatalf("got %d %q, want %d with %q", status, reason, tc.status, tc.reason)
			}
		})
	}

	for i, origin := range []string{"https://shop.example", a.srv.URL} {
		h := http.Header{"Origin": {origin}}
		conn, _, err := websocket.DefaultDialer.Dial(a.wsURL("frank"+strconv.Itoa(i)), h)
		if err != nil {
			t.Fatalf("origin %s refused: %v", origin, err)
		}
		conn.Close()
	}
}

func TestUserKeyErrorIs401(t *testing.T) {
	cl := newCluster(t)
	a := cl.node(wsnotify.WithUserKey(func(*gin.Context) (string, error) {
		return "", errors.New("bad token")
	}))
	status, reason := a.dialStatus(t, "alice", nil)
	if status != http.StatusUnauthorized || !strings.Contains(reason, "bad token") {
		t.Fatalf("got %d %q", status, reason)
	}
}

func TestBadFramesCloseWithTheRightCode(t *testing.T) {
	cl := newCluster(t)
	a := cl.node(wsnotify.WithMaxMessageSize(1024))

	big := a.dial(t, "alice")
	if err := big.WriteMessage(websocket.TextMessage, make([]byte, 2048)); err != nil {
		t.Fatal(err)
	}
	if code := readCloseCode(t, big); code != websocket.CloseMessageTooBig {
		t.Fatalf("oversized frame closed with %d, want 1009", code)
	}

	bin := a.dial(t, "alice")
	if err := bin.WriteMessage(websocket.BinaryMessage, []byte{1, 2}); err != nil {
		t.Fatal(err)
	}
	if code := readCloseCode(t, bin); code != websocket.CloseUnsupportedData {
		t.Fatalf("binary frame closed with %d, want 1003", code)
	}
}

func TestOddUserKeysStayApart(t *testing.T) { testOddUserKeysStayApart(t, newCluster(t)) }

func testOddUserKeysStayApart(t *testing.T, cl *cluster) {
	a, b := cl.node(), cl.node()
	users := []string{"*", "a?", "a[bc]", "a:b c", "a", "ü✓", "a*"}
	conns := map[string]*websocket.Conn{}
	for _, u := range users {
		conns[u] = a.dial(t, u)
	}
	for _, u := range users {
		if res := notify(t, b, u, u); res.Nodes != 1 {
			t.Fatalf("Notify(%q).Nodes = %d, want 1", u, res.Nodes)
		}
	}
	for _, u := range users {
		var got string
		_ = json.Unmarshal(readEnvelope(t, conns[u]).Data, &got)
		if got != u {
			t.Fatalf("user %q received %q first", u, got)
		}
	}
}

func TestNotifyRejectsBadInput(t *testing.T) {
	cl := newCluster(t)
	a := cl.node()
	ctx := context.Background()
	cases := []struct {
		name    string
		user    string
		payload any
		opts    []wsnotify.NotifyOption
		want    error
	}{
		{"empty user", "", 1, nil, wsnotify.ErrInvalidUserKey},
		{"long user", strings.Repeat("x", wsnotify.MaxUserKeyLength+1), 1, nil, wsnotify.ErrInvalidUserKey},
		{"bad raw json", "alice", json.RawMessage(`{"a":`), nil, wsnotify.ErrInvalidPayload},
		{"unencodable", "alice", func() {}, nil, wsnotify.ErrInvalidPayload},
		{"type with quote", "alice", 1, []wsnotify.NotifyOption{wsnotify.WithType(`a"b`)}, wsnotify.ErrInvalidType},
		{"empty type", "alice", 1, []wsnotify.NotifyOption{wsnotify.WithType("")}, wsnotify.ErrInvalidType},
	}
	for _, tc := range cases {
		if _, err := a.hub.Notify(ctx, tc.user, tc.payload, tc.opts...); !errors.Is(err, tc.want) {
			t.Errorf("%s: err = %v, want %v", tc.name, err, tc.want)
		}
	}
	if _, err := a.hub.Notify(ctx, strings.Repeat("x", wsnotify.MaxUserKeyLength), 1); err != nil {
		t.Errorf("a key of exactly MaxUserKeyLength bytes: %v", err)
	}
}

func TestPackageNotifyNeedsTheMiddleware(t *testing.T) {
	cl := newCluster(t)
	a := cl.node()
	alice := a.dial(t, "alice")

	handler := func(c *gin.Context) {
		res, err := wsnotify.Notify(c, "alice", gin.H{"via": c.FullPath()})
		if err != nil {
			c.JSON(http.StatusInternalServerError, gin.H{"error": err.Error(), "nohub": errors.Is(err, wsnotify.ErrNoHub)})
			return
		}
		c.JSON(http.StatusOK, gin.H{"nodes": res.Nodes})
	}
	r := gin.New()
	r.POST("/bare", handler)
	withHub := r.Group("/", a.hub.Middleware())
	withHub.POST("/pay", handler)

	w := httptest.NewRecorder()
	r.ServeHTTP(w, httptest.NewRequest(http.MethodPost, "/bare", nil))
	if w.Code != http.StatusInternalServerError || !strings.Contains(w.Body.String(), `"nohub":true`) {
		t.Fatalf("without middleware: %d %s", w.Code, w.Body)
	}
	w = httptest.NewRecorder()
	r.ServeHTTP(w, httptest.NewRequest(http.MethodPost, "/pay", nil))
	if w.Code != http.StatusOK || w.Body.String() != `{"nodes":1}` {
		t.Fatalf("with middleware: %d %s", w.Code, w.Body)
	}
	if env := readEnvelope(t, alice); string(env.Data) != `{"via":"/pay"}` {
		t.Fatalf("got %s", env.Data)
	}
}

func TestHooksSeeTheUserAndSessionData(t *testing.T) {
	cl := newCluster(t)
	type event struct{ kind, user, data string }
	events := make(chan event, 10)
	auth := func(c *gin.Context) { c.Set("tenant", "acme"); c.Next() }
	a := cl.node(
		wsnotify.OnConnect(func(s *wsnotify.Session) {
			tenant, _ := s.Get("tenant")
			s.Set("greeting", "hi "+s.User())
			events <- event{"connect", s.User(), tenant.(string)}
		}),
		wsnotify.OnMessage(func(s *wsnotify.Session, msg []byte) {
			g, _ := s.Get("greeting")
			events <- event{"message", s.User(), g.(string) + ":" + string(msg)}
		}),
		wsnotify.OnDisconnect(func(s *wsnotify.Session) { events <- event{"disconnect", s.User(), ""} }),
	)
	// Put an auth middleware in front of the route, as an app would.
	r := gin.New()
	r.GET("/ws", auth, a.hub.Handler())
	srv := httptest.NewServer(r)
	defer srv.Close()

	conn, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(srv.URL, "http")+"/ws?user=alice", nil)
	if err != nil {
		t.Fatal(err)
	}
	_ = conn.WriteMessage(websocket.TextMessage, []byte("ping"))
	_ = conn.Close()

	want := []event{{"connect", "alice", "acme"}, {"message", "alice", "hi alice:ping"}, {"disconnect", "alice", ""}}
	for _, w := range want {
		select {
		case got := <-events:
			if got != w {
				t.Fatalf("hook event %+v, want %+v", got, w)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("no %s hook", w.kind)
		}
	}
}

// An open socket needs neither the HTTP handler nor the request's headers:
// the handler returns once the socket is open, and the headers are released
// after OnConnect, which still sees them.
func TestOpenSocketOutlivesItsHandler(t *testing.T) {
	cl := newCluster(t)
	seen := make(chan string, 2)
	a := cl.node(
		wsnotify.OnConnect(func(s *wsnotify.Session) {
			r := s.Request()
			seen <- "connect:" + r.Header.Get("X-Till") + ":" + fmt.Sprint(r.Context().Err())
		}),
		wsnotify.OnMessage(func(s *wsnotify.Session, _ []byte) {
			r := s.Request()
			seen <- "message:" + r.Header.Get("X-Till") + ":" + r.URL.Query().Get("user")
		}),
	)
	returned := make(chan struct{})
	r := gin.New()
	r.GET("/ws", func(c *gin.Context) { c.Next(); close(returned) }, a.hub.Handler())
	srv := httptest.NewServer(r)
	defer srv.Close()

	header := http.Header{"X-Till": {"till-7"}}
	conn, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(srv.URL, "http")+"/ws?user=alice", header)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	readEnvelope(t, conn) // hello
	select {
	case <-returned:
	case <-time.After(5 * time.Second):
		t.Fatal("the handler did not return once the socket was open")
	}
	n, err := a.hub.Notify(context.Background(), "alice", "paid")
	if err != nil || n.Nodes != 1 {
		t.Fatalf("Notify after the handler returned = %+v, %v; want 1 node", n, err)
	}
	if env := readEnvelope(t, conn); string(env.Data) != `"paid"` {
		t.Fatalf("got %+v, want the notification", env)
	}
	if err := conn.WriteMessage(websocket.TextMessage, []byte("hi")); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"connect:till-7:<nil>", "message::alice"} {
		select {
		case got := <-seen:
			if got != want {
				t.Fatalf("hook saw %q, want %q", got, want)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("no hook call for %q", want)
		}
	}
}

// blackHole accepts TCP connections and never answers: a Redis that hangs.
func blackHole(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var conns []net.Conn
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			conns = append(conns, c)
		}
	}()
	t.Cleanup(func() {
		l.Close()
		<-done
		for _, c := range conns {
			c.Close()
		}
	})
	return l.Addr().String()
}

func TestNotifyFailsFastWhenRedisIsUnreachable(t *testing.T) {
	refused := func(t *testing.T) string {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		l.Close()
		return addr
	}
	for name, addrOf := range map[string]func(*testing.T) string{"hanging": blackHole, "refused": refused} {
		t.Run(name, func(t *testing.T) {
			rdb := redis.NewClient(&redis.Options{Addr: addrOf(t)})
			defer rdb.Close()
			hub, err := wsnotify.New(rdb, wsnotify.WithUserKey(queryUser), wsnotify.WithPublishTimeout(300*time.Millisecond))
			if err != nil {
				t.Fatal(err)
			}
			defer hub.Close(context.Background())

			ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
			defer cancel()
			start := time.Now()
			_, err = hub.Notify(ctx, "alice", "x")
			if took := time.Since(start); !errors.Is(err, wsnotify.ErrUnavailable) || took > time.Second {
				t.Fatalf("with a deadline: err = %v after %v; want ErrUnavailable within the deadline", err, took)
			}

			start = time.Now()
			_, err = hub.Notify(context.Background(), "alice", "x")
			if took := time.Since(start); !errors.Is(err, wsnotify.ErrUnavailable) || took > 1300*time.Millisecond {
				t.Fatalf("without a deadline: err = %v after %v; want ErrUnavailable within the publish timeout", err, took)
			}
			if err := hub.Ready(context.Background()); !errors.Is(err, wsnotify.ErrUnavailable) {
				t.Fatalf("Ready = %v, want ErrUnavailable", err)
			}
		})
	}
}

func TestCloseSendsGoingAwayAndLeavesNothingRunning(t *testing.T) {
	cl := newCluster(t)
	if !redistest.Embedded() { // the embedded Redis serves each connection on goroutines of its own
		defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	}
	rdb := redis.NewClient(&redis.Options{Addr: cl.addr})
	defer rdb.Close()
	hub, err := wsnotify.New(rdb, wsnotify.WithPrefix(cl.prefix), wsnotify.WithUserKey(queryUser))
	if err != nil {
		t.Fatal(err)
	}
	r := gin.New()
	r.GET("/ws", hub.Handler())
	srv := httptest.NewServer(r)
	defer srv.Close()
	waitReady(t, hub)

	url := "ws" + strings.TrimPrefix(srv.URL, "http") + "/ws?user="
	conns := []*websocket.Conn{}
	for _, u := range []string{"alice", "bob", "alice"} {
		c, _, err := websocket.DefaultDialer.Dial(url+u, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conns = append(conns, c)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := hub.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}
	for i, c := range conns {
		if code := readCloseCode(t, c); code != websocket.CloseGoingAway {
			t.Fatalf("socket %d closed with %d, want 1001", i, code)
		}
	}
	if n := cl.subscribers(cl.prefix + ":{0}:user:alice"); n != 0 {
		t.Fatalf("NUMSUB after Close = %d, want 0", n)
	}
	if _, resp, err := websocket.DefaultDialer.Dial(url+"carol", nil); err == nil || resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("upgrade after Close: %v %v, want 503", resp, err)
	}
	if _, err := hub.Notify(ctx, "alice", 1); !errors.Is(err, wsnotify.ErrClosed) {
		t.Fatalf("Notify after Close = %v, want ErrClosed", err)
	}
	if err := hub.Close(ctx); !errors.Is(err, wsnotify.ErrClosed) {
		t.Fatalf("second Close = %v, want ErrClosed", err)
	}
	srv.Close()
}

func TestNewRejectsBadConfig(t *testing.T) {
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"})
	defer rdb.Close()
	if _, err := wsnotify.New(rdb); err == nil {
		t.Error("New without WithUserKey succeeded")
	}
	if _, err := wsnotify.New(rdb, wsnotify.WithUserKey(queryUser), wsnotify.WithPrefix("a{b")); err == nil {
		t.Error("New with a brace in the prefix succeeded")
	}
	ring := redis.NewRing(&redis.RingOptions{Addrs: map[string]string{"a": "127.0.0.1:1"}})
	defer ring.Close()
	if _, err := wsnotify.New(ring, wsnotify.WithUserKey(queryUser)); err == nil || !strings.Contains(err.Error(), "Ring") {
		t.Errorf("New with a Ring: %v", err)
	}
}

func TestMountServesTheClient(t *testing.T) {
	cl := newCluster(t)
	a := cl.node()
	r := gin.New()
	a.hub.Mount(r, "/notify/")
	srv := httptest.NewServer(r)
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/notify/client.js")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body strings.Builder
	_, _ = io.Copy(&body, resp.Body)
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/javascript") ||
		!strings.Contains(body.String(), "export function connect") {
		t.Fatalf("client.js: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	conn, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(srv.URL, "http")+"/notify?user=olga", nil)
	if err != nil {
		t.Fatalf("socket at the mounted path: %v", err)
	}
	conn.Close()
}

func TestMetricsCountWhatHappens(t *testing.T) {
	cl := newCluster(t)
	reg := prometheus.NewRegistry()
	a := cl.node(wsnotify.WithMetrics(reg))
	conn := a.dial(t, "pat")
	notify(t, a, "pat", 1)
	readEnvelope(t, conn)
	if _, err := a.hub.Notify(context.Background(), "", 1); err == nil {
		t.Fatal("invalid key accepted")
	}

	got := map[string]float64{}
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		m := f.GetMetric()[0]
		switch {
		case m.Counter != nil:
			got[f.GetName()] = m.Counter.GetValue()
		case m.Gauge != nil:
			got[f.GetName()] = m.Gauge.GetValue()
		case m.Histogram != nil:
			got[f.GetName()] = float64(m.Histogram.GetSampleCount())
		}
	}
	want := map[string]float64{
		"wsnotify_sessions":                      1,
		"wsnotify_users_online":                  1,
		"wsnotify_notifications_published_total": 1,
		"wsnotify_notifications_failed_total":    0,
		"wsnotify_notifications_delivered_total": 1,
		"wsnotify_notify_duration_seconds":       1,
	}
	for name, v := range want {
		if got[name] != v {
			t.Errorf("%s = %v, want %v", name, got[name], v)
		}
	}
	// A second hub on the same registry is refused rather than double-counted.
	rdb := redis.NewClient(&redis.Options{Addr: cl.addr})
	defer rdb.Close()
	if _, err := wsnotify.New(rdb, wsnotify.WithUserKey(queryUser), wsnotify.WithMetrics(reg)); err == nil {
		t.Fatal("a second hub registered the same metrics")
	}
}
