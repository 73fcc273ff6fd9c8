package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/gorilla/websocket"
	"github.com/redis/go-redis/v9"

	"github.com/wsnotify/wsnotify"
	"github.com/wsnotify/wsnotify/internal/redistest"
)

func TestMain(m *testing.M) {
	gin.SetMode(gin.TestMode)
	os.Exit(m.Run())
}

// cluster is nodes A and B on one Redis, each with its own client, as two
// processes would be.
type cluster struct {
	a, b       *node
	urlA, urlB string
}

func newCluster(t *testing.T) *cluster {
	t.Helper()
	addr, prefix := redistest.Addr(t), redistest.Prefix(t)
	// Unstarted servers already own their listeners, so each node can be
	// told its peer's URL before either serves.
	srvA, srvB := httptest.NewUnstartedServer(nil), httptest.NewUnstartedServer(nil)
	c := &cluster{
		urlA: "http://" + srvA.Listener.Addr().String(),
		urlB: "http://" + srvB.Listener.Addr().String(),
	}
	c.a = startNode(t, srvA, nodeOptions{Name: "A", Prefix: prefix, PeerURL: c.urlB}, addr)
	c.b = startNode(t, srvB, nodeOptions{Name: "B", Prefix: prefix, PeerURL: c.urlA}, addr)
	return c
}

func startNode(t *testing.T, srv *httptest.Server, opts nodeOptions, redisAddr string) *node {
	t.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: redisAddr, ContextTimeoutEnabled: true})
	t.Cleanup(func() { _ = rdb.Close() })
	opts.Redis = rdb
	n, err := newNode(opts)
	if err != nil {
		t.Fatal(err)
	}
	srv.Config.Handler = n.Handler()
	srv.Start()
	t.Cleanup(srv.Close)
	t.Cleanup(func() { // runs first: the sockets must close before srv.Close waits
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := n.Close(ctx); err != nil && !errors.Is(err, wsnotify.ErrClosed) {
			t.Errorf("close node %s: %v", opts.Name, err)
		}
	})
	return n
}

// connect opens a socket for user on the node at baseURL and waits until the
// cluster sees the user online.
func connect(t *testing.T, baseURL string, n *node, user string) *websocket.Conn {
	t.Helper()
	u := "ws" + strings.TrimPrefix(baseURL, "http") + "/ws?user=" + url.QueryEscape(user)
	conn, _, err := websocket.DefaultDialer.Dial(u, nil)
	if err != nil {
		t.Fatalf("dial %s: %v", u, err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	// Every socket starts with a hello naming where its stream starts.
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	var hello wsnotify.Envelope
	if err := conn.ReadJSON(&hello); err != nil || hello.Type != wsnotify.HelloType {
		t.Fatalf("first frame %+v, %v; want %s", hello, err, wsnotify.HelloType)
	}
	redistest.Eventually(t, 5*time.Second, func() bool {
		ok, err := n.hub.Online(context.Background(), user)
		return err == nil && ok
	}, "%s online", user)
	return conn
}

func readPayment(t *testing.T, conn *websocket.Conn) (wsnotify.Envelope, paymentEvent) {
	t.Helper()
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	var env wsnotify.Envelope
	if err := conn.ReadJSON(&env); err != nil {
		t.Fatalf("read frame: %v", err)
	}
	var ev paymentEvent
	if err := json.Unmarshal(env.Data, &ev); err != nil {
		t.Fatalf("frame data %s: %v", env.Data, err)
	}
	return env, ev
}

func payJSON(user string, cents int64, orderID string) string {
	b, _ := json.Marshal(payRequest{User: user, AmountCents: cents, Merchant: "Coffee", OrderID: orderID})
	return string(b)
}

func post(t *testing.T, baseURL, body string) (int, []byte, payResponse) {
	t.Helper()
	resp, err := http.Post(baseURL+"/api/pay", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	var pr payResponse
	if err := json.Unmarshal(raw, &pr); err != nil {
		t.Fatalf("answer %s: %v", raw, err)
	}
	return resp.StatusCode, raw, pr
}

func getJSON(t *testing.T, u string, v any) int {
	t.Helper()
	resp, err := http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatalf("GET %s: %v", u, err)
	}
	return resp.StatusCode
}

func balanceOf(t *testing.T, baseURL, user string) int64 {
	t.Helper()
	var body struct {
		User         string `json:"user"`
		BalanceCents int64  `json:"balance_cents"`
	}
	if code := getJSON(t, baseURL+"/api/balance?user="+url.QueryEscape(user), &body); code != http.StatusOK || body.User != user {
		t.Fatalf("balance of %s: %d %+v", user, code, body)
	}
	return body.BalanceCents
}

func TestPaymentCrossesNodes(t *testing.T) {
	c := newCluster(t)
	alice := connect(t, c.urlA, c.a, "alice")

	// Paid through B, pushed to alice's socket on A.
	code, first, pr := post(t, c.urlB, payJSON("alice", 1250, "o-1"))
	if code != http.StatusOK || pr.Status != "paid" || pr.BalanceCents != 8750 || pr.Delivered != 1 || pr.OrderID != "o-1" {
		t.Fatalf("first payment: %d %s", code, first)
	}
	env, ev := readPayment(t, alice)
	want := paymentEvent{OrderID: "o-1", Status: "paid", AmountCents: 1250, Merchant: "Coffee", BalanceCents: 8750, Node: "B"}
	if env.Type != "payment" || env.ID == "" || ev != want {
		t.Fatalf("frame: type %q id %q data %+v, want type payment and %+v", env.Type, env.ID, ev, want)
	}

	// A retry answers the first result and neither debits nor notifies.
	code, again, _ := post(t, c.urlB, payJSON("alice", 1250, "o-1"))
	if code != http.StatusOK || !bytes.Equal(again, first) {
		t.Fatalf("replay: %d %s, want 200 %s", code, again, first)
	}
	if got := balanceOf(t, c.urlA, "alice"); got != 8750 {
		t.Fatalf("balance after replay = %d, want 8750", got)
	}
	if code, _, pr := post(t, c.urlB, payJSON("alice", 250, "o-2")); code != http.StatusOK || pr.BalanceCents != 8500 {
		t.Fatalf("second payment: %d %+v", code, pr)
	}
	if _, ev := readPayment(t, alice); ev.OrderID != "o-2" {
		t.Fatalf("next frame is order %q, want o-2 (the replay must not notify)", ev.OrderID)
	}

	// Declined: no debit, but the user is told.
	code, declined, pr := post(t, c.urlB, payJSON("alice", 9000, "o-3"))
	if code != http.StatusPaymentRequired || pr.Status != "declined" || pr.Error == "" || pr.BalanceCents != 8500 || pr.Delivered != 1 {
		t.Fatalf("declined payment: %d %s", code, declined)
	}
	if _, ev := readPayment(t, alice); ev.OrderID != "o-3" || ev.Status != "declined" || ev.BalanceCents != 8500 {
		t.Fatalf("declined frame: %+v", ev)
	}
	if code, again, _ := post(t, c.urlA, payJSON("alice", 9000, "o-3")); code != http.StatusPaymentRequired || !bytes.Equal(again, declined) {
		t.Fatalf("declined replay: %d %s, want 402 %s", code, again, declined)
	}

	// An order_id reused for another payment is refused, not replayed.
	if code, raw, _ := post(t, c.urlB, payJSON("alice", 1, "o-1")); code != http.StatusConflict {
		t.Fatalf("reused order_id: %d %s, want 409", code, raw)
	}
	if got := balanceOf(t, c.urlB, "alice"); got != 8500 {
		t.Fatalf("final balance = %d, want 8500", got)
	}
}

func TestPayRejectsBadRequests(t *testing.T) {
	c := newCluster(t)
	long := func(n int) string { return strings.Repeat("x", n) }
	cases := []struct {
		name, body string
	}{
		{"empty body", ``},
		{"malformed JSON", `{"user":"alice",`},
		{"not an object", `[1,2]`},
		{"unknown field", `{"user":"alice","amount":1250,"merchant":"Coffee","order_id":"o-1"}`},
		{"trailing data", payJSON("alice", 1, "o-1") + `{}`},
		{"fractional amount", `{"user":"alice","amount_cents":12.5,"merchant":"Coffee","order_id":"o-1"}`},
		{"missing user", `{"amount_cents":1250,"merchant":"Coffee","order_id":"o-1"}`},
		{"blank user", payJSON("   ", 1250, "o-1")},
		{"missing merchant", `{"user":"alice","amount_cents":1250,"order_id":"o-1"}`},
		{"missing order_id", `{"user":"alice","amount_cents":1250,"merchant":"Coffee"}`},
		{"missing amount", `{"user":"alice","merchant":"Coffee","order_id":"o-1"}`},
		{"zero amount", payJSON("alice", 0, "o-1")},
		{"negative amount", payJSON("alice", -5, "o-1")},
		{"absurd amount", payJSON("alice", maxAmountCents+1, "o-1")},
		{"long user", payJSON(long(maxUserLen+1), 1250, "o-1")},
		{"long order_id", payJSON("alice", 1250, long(maxFieldLen+1))},
		{"long merchant", `{"user":"alice","amount_cents":1,"merchant":"` + long(maxFieldLen+1) + `","order_id":"o-1"}`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := http.Post(c.urlB+"/api/pay", "application/json", strings.NewReader(tc.body))
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var body struct{ Error string }
			if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != http.StatusBadRequest || body.Error == "" {
				t.Fatalf("got %d %q, want 400 with an error", resp.StatusCode, body.Error)
			}
		})
	}
	if got := balanceOf(t, c.urlA, "alice"); got != startBalanceCents {
		t.Fatalf("rejected requests moved money: balance %d", got)
	}
}

func TestPayOfflineUser(t *testing.T) {
	c := newCluster(t)
	code, raw, pr := post(t, c.urlA, payJSON("bob", 100, "o-1"))
	if code != http.StatusOK || pr.Status != "paid" || pr.Delivered != 0 || pr.NotifyError != "" {
		t.Fatalf("payment to offline user: %d %s, want 200 paid delivered 0", code, raw)
	}
}

func TestPagesAndHealth(t *testing.T) {
	c := newCluster(t)

	// The hub links to Redis in the background: healthz turns 200 once it has.
	var health map[string]string
	redistest.Eventually(t, 5*time.Second, func() bool {
		health = nil
		return getJSON(t, c.urlA+"/healthz", &health) == http.StatusOK
	}, "healthz of node A answers 200")
	if health["status"] != "ok" || health["node"] != "A" {
		t.Fatalf("healthz: %v", health)
	}

	// A payment shows up in node B's metrics as a published notification.
	if code, raw, _ := post(t, c.urlB, payJSON("metrics-user", 100, "o-metrics")); code != http.StatusOK {
		t.Fatalf("payment: %d %s", code, raw)
	}
	resp, err := http.Get(c.urlB + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !bytes.Contains(metrics, []byte("wsnotify_notifications_published_total 1")) {
		t.Fatalf("metrics: %d\n%s", resp.StatusCode, metrics)
	}

	resp, err = http.Get(c.urlA + "/api/qr?user=alice")
	if err != nil {
		t.Fatal(err)
	}
	png, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "image/png" || !bytes.HasPrefix(png, []byte("\x89PNG\r\n\x1a\n")) {
		t.Fatalf("qr: %d %q %q", resp.StatusCode, resp.Header.Get("Content-Type"), png[:min(len(png), 8)])
	}
	var qrErr struct{ Error string }
	if code := getJSON(t, c.urlA+"/api/qr", &qrErr); code != http.StatusBadRequest || qrErr.Error == "" {
		t.Fatalf("qr without user: %d %+v", code, qrErr)
	}

	resp, err = http.Get(c.urlB + "/")
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") ||
		!bytes.Contains(page, []byte(`data-node="B"`)) || !bytes.Contains(page, []byte(c.urlA)) {
		t.Fatalf("page: %d %q, want HTML for node B paying through %s", resp.StatusCode, resp.Header.Get("Content-Type"), c.urlA)
	}

	if got := balanceOf(t, c.urlA, "newcomer"); got != startBalanceCents {
		t.Fatalf("new user's balance = %d, want %d", got, startBalanceCents)
	}
}

// A node whose hub is closed cannot notify, but a payment still goes
// through: the answer says so instead of hiding that money moved.
func TestClosedHub(t *testing.T) {
	rdb := redis.NewClient(&redis.Options{Addr: redistest.Addr(t), ContextTimeoutEnabled: true})
	t.Cleanup(func() { _ = rdb.Close() })
	n, err := newNode(nodeOptions{Name: "A", Redis: rdb, Prefix: redistest.Prefix(t), PeerURL: "http://localhost:8081"})
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	serve := func(method, target, body string) *httptest.ResponseRecorder {
		rec := httptest.NewRecorder()
		n.Handler().ServeHTTP(rec, httptest.NewRequest(method, target, strings.NewReader(body)))
		return rec
	}

	if rec := serve(http.MethodGet, "/healthz", ""); rec.Code != http.StatusServiceUnavailable || !strings.Contains(rec.Body.String(), "error") {
		t.Fatalf("healthz of a closed node: %d %s", rec.Code, rec.Body)
	}

	first := serve(http.MethodPost, "/api/pay", payJSON("alice", 100, "o-1"))
	var pr payResponse
	if err := json.Unmarshal(first.Body.Bytes(), &pr); err != nil {
		t.Fatal(err)
	}
	if first.Code != http.StatusOK || pr.Status != "paid" || pr.BalanceCents != startBalanceCents-100 || pr.Delivered != 0 || pr.NotifyError == "" {
		t.Fatalf("payment on a closed hub: %d %s, want 200 paid with delivered 0 and notify_error", first.Code, first.Body)
	}
	if again := serve(http.MethodPost, "/api/pay", payJSON("alice", 100, "o-1")); again.Code != http.StatusOK || again.Body.String() != first.Body.String() {
		t.Fatalf("replay: %d %s, want 200 %s", again.Code, again.Body, first.Body)
	}
}

func TestPayCORS(t *testing.T) {
	c := newCluster(t)
	preflight := func(origin string) *http.Response {
		req, _ := http.NewRequest(http.MethodOptions, c.urlB+"/api/pay", nil)
		req.Header.Set("Origin", origin)
		req.Header.Set("Access-Control-Request-Method", "POST")
		req.Header.Set("Access-Control-Request-Headers", "content-type")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}

	resp := preflight(c.urlA)
	if resp.StatusCode != http.StatusNoContent || resp.Header.Get("Access-Control-Allow-Origin") != c.urlA ||
		!strings.Contains(resp.Header.Get("Access-Control-Allow-Methods"), "POST") ||
		!strings.Contains(strings.ToLower(resp.Header.Get("Access-Control-Allow-Headers")), "content-type") {
		t.Fatalf("preflight from the peer: %d %v", resp.StatusCode, resp.Header)
	}

	resp = preflight("http://evil.example")
	if resp.StatusCode != http.StatusForbidden || resp.Header.Get("Access-Control-Allow-Origin") != "" {
		t.Fatalf("preflight from a stranger: %d %v", resp.StatusCode, resp.Header)
	}

	// Without a preflight (a plain form post) a stranger still moves no money.
	req, _ := http.NewRequest(http.MethodPost, c.urlB+"/api/pay", strings.NewReader(payJSON("alice", 100, "o-evil")))
	req.Header.Set("Origin", "http://evil.example")
	req.Header.Set("Content-Type", "text/plain")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("post from a stranger: %d, want 403", resp.StatusCode)
	}
	if got := balanceOf(t, c.urlB, "alice"); got != startBalanceCents {
		t.Fatalf("a stranger's post moved money: balance %d", got)
	}
}
