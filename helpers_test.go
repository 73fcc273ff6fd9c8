package wsnotify_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/gorilla/websocket"
	"github.com/redis/go-redis/v9"

	"github.com/wsnotify/wsnotify"
	"github.com/wsnotify/wsnotify/internal/redistest"
)

func init() { gin.SetMode(gin.TestMode) }

// node is one hub on its own gin engine, HTTP server and Redis client, as a
// real deployment runs one per process.
type node struct {
	hub     *wsnotify.Hub
	srv     *httptest.Server
	rdb     redis.UniversalClient
	history bool // sockets start with a hello frame
}

// cluster is the nodes of one test, sharing a Redis and a channel prefix.
// With connect set (a Redis Cluster or Sentinel), clients come from it;
// otherwise they dial addr.
type cluster struct {
	t       testing.TB
	addr    string
	prefix  string
	connect func() redis.UniversalClient
	sharded bool // a Redis Cluster: sharded pub/sub
	shared  redis.UniversalClient
}

func newCluster(t testing.TB) *cluster {
	return &cluster{t: t, addr: redistest.Addr(t), prefix: redistest.Prefix(t)}
}

// client returns a new client of the cluster's Redis; the caller closes it.
func (cl *cluster) client() redis.UniversalClient {
	if cl.connect != nil {
		return cl.connect()
	}
	return redis.NewClient(&redis.Options{Addr: cl.addr})
}

// admin is a client for the test's own checks, closed when the test ends.
func (cl *cluster) admin() redis.UniversalClient {
	if cl.shared == nil {
		cl.shared = cl.client()
		cl.t.Cleanup(func() { _ = cl.shared.Close() })
	}
	return cl.shared
}

// subscribers counts the nodes subscribed to channel: PUBSUB NUMSUB, or
// SHARDNUMSUB on the master of the channel's slot in a Cluster.
func (cl *cluster) subscribers(channel string) int64 {
	cl.t.Helper()
	ctx := context.Background()
	var counts map[string]int64
	var err error
	if c, ok := cl.admin().(*redis.ClusterClient); ok {
		var master *redis.Client
		if master, err = c.MasterForKey(ctx, channel); err == nil {
			counts, err = master.PubSubShardNumSub(ctx, channel).Result()
		}
	} else {
		counts, err = cl.admin().PubSubNumSub(ctx, channel).Result()
	}
	if err != nil {
		cl.t.Fatal(err)
	}
	return counts[channel]
}

func queryUser(c *gin.Context) (string, error) { return c.Query("user"), nil }

func (cl *cluster) node(opts ...wsnotify.Option) *node {
	t := cl.t
	t.Helper()
	rdb := cl.client()
	base := []wsnotify.Option{
		wsnotify.WithPrefix(cl.prefix),
		wsnotify.WithUserKey(queryUser),
		wsnotify.WithUnsubscribeGrace(20 * time.Millisecond),
	}
	hub, err := wsnotify.New(rdb, append(base, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	r := gin.New()
	r.Use(hub.Middleware())
	r.GET("/ws", hub.Handler())
	srv := httptest.NewServer(r)
	n := &node{hub: hub, srv: srv, rdb: rdb, history: true}
	t.Cleanup(n.close)
	waitReady(t, hub)
	return n
}

func (n *node) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = n.hub.Close(ctx)
	n.srv.Close()
	_ = n.rdb.Close()
}

func waitReady(t testing.TB, hub *wsnotify.Hub) {
	t.Helper()
	redistest.Eventually(t, 10*time.Second, func() bool {
		return hub.Ready(context.Background()) == nil
	}, "hub never became ready")
}

func (n *node) wsURL(user string) string {
	return "ws" + strings.TrimPrefix(n.srv.URL, "http") + "/ws?user=" + url.QueryEscape(user)
}

// dial opens a socket for user and closes it when the test ends.
func (n *node) dial(t testing.TB, user string) *websocket.Conn {
	t.Helper()
	conn, resp, err := websocket.DefaultDialer.Dial(n.wsURL(user), nil)
	if err != nil {
		t.Fatalf("dial %s: %v (response %v)", user, err, resp)
	}
	t.Cleanup(func() { _ = conn.Close() })
	if n.history {
		if env := readEnvelope(t, conn); env.Type != wsnotify.HelloType {
			t.Fatalf("first frame %+v, want %s", env, wsnotify.HelloType)
		}
	}
	return conn
}

// dialStatus tries an upgrade that should fail and returns the HTTP status and
// the JSON error reason.
func (n *node) dialStatus(t *testing.T, user string, header http.Header) (int, string) {
	t.Helper()
	conn, resp, err := websocket.DefaultDialer.Dial(n.wsURL(user), header)
	if err == nil {
		conn.Close()
		t.Fatalf("upgrade for %q succeeded, want a refusal", user)
	}
	if resp == nil {
		t.Fatalf("no HTTP response: %v", err)
	}
	defer resp.Body.Close()
	var body struct{ Error string }
	_ = json.NewDecoder(resp.Body).Decode(&body)
	return resp.StatusCode, body.Error
}

func readEnvelope(t testing.TB, conn *websocket.Conn) wsnotify.Envelope {
	t.Helper()
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	typ, msg, err := conn.ReadMessage()
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	if typ != websocket.TextMessage {
		t.Fatalf("frame type %d, want text", typ)
	}
	var env wsnotify.Envelope
	if err := json.Unmarshal(msg, &env); err != nil {
		t.Fatalf("frame %q is not an envelope: %v", msg, err)
	}
	return env
}

// readCloseCode reads until the server closes the socket and returns the code.
func readCloseCode(t *testing.T, conn *websocket.Conn) int {
	t.Helper()
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		_, _, err := conn.ReadMessage()
		if err == nil {
			continue
		}
		if ce, ok := err.(*websocket.CloseError); ok {
			return ce.Code
		}
		t.Fatalf("socket ended without a close frame: %v", err)
	}
}

func notify(t *testing.T, n *node, user string, payload any, opts ...wsnotify.NotifyOption) wsnotify.Result {
	t.Helper()
	res, err := n.hub.Notify(context.Background(), user, payload, opts...)
	if err != nil {
		t.Fatalf("notify %s: %v", user, err)
	}
	return res
}
