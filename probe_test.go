package wsnotify_test

import (
	"bytes"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/wsnotify/wsnotify"
	"github.com/wsnotify/wsnotify/internal/redistest"
)

// freezer is a TCP proxy to Redis that can turn its pub/sub connections into
// black holes: the sockets stay open and bytes vanish, the way a link can
// look healthy after a failover and deliver nothing.
type freezer struct {
	ln       net.Listener
	upstream string
	mu       sync.Mutex
	conns    []*proxied
	wg       sync.WaitGroup
}

type proxied struct {
	client, server net.Conn
	mu             sync.Mutex
	pubsub, frozen bool
}

func newFreezer(t *testing.T, upstream string) *freezer {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &freezer{ln: ln, upstream: upstream}
	f.wg.Go(f.accept)
	t.Cleanup(f.close)
	return f
}

func (f *freezer) addr() string { return f.ln.Addr().String() }

func (f *freezer) accept() {
	for {
		c, err := f.ln.Accept()
		if err != nil {
			return
		}
		s, err := net.Dial("tcp", f.upstream)
		if err != nil {
			c.Close()
			continue
		}
		p := &proxied{client: c, server: s}
		f.mu.Lock()
		f.conns = append(f.conns, p)
		f.mu.Unlock()
		f.wg.Go(func() { p.pipe(s, c, true) })
		f.wg.Go(func() { p.pipe(c, s, false) })
	}
}

// pipe copies src to dst until either side closes, dropping what a frozen
// connection carries.
func (p *proxied) pipe(dst, src net.Conn, fromClient bool) {
	defer dst.Close()
	defer src.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.mu.Lock()
			if fromClient && isSubscribe(buf[:n]) {
				p.pubsub = true
			}
			frozen := p.frozen
			p.mu.Unlock()
			if !frozen {
				if _, err := dst.Write(buf[:n]); err != nil {
					return
				}
			}
		}
		if err != nil {
			return
		}
	}
}

// freezePubSub freezes every pub/sub connection open now; later ones flow.
func (f *freezer) freezePubSub() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, p := range f.conns {
		p.mu.Lock()
		if p.pubsub {
			p.frozen = true
			n++
		}
		p.mu.Unlock()
	}
	return n
}

// isSubscribe reports whether a client's bytes hold a SUBSCRIBE or
// SSUBSCRIBE command: the name as a whole RESP bulk string, not a word in
// some argument (a script's source, say).
func isSubscribe(b []byte) bool {
	b = bytes.ToLower(b)
	return bytes.Contains(b, []byte("\r\nsubscribe\r\n")) || bytes.Contains(b, []byte("\r\nssubscribe\r\n"))
}

func (f *freezer) close() {
	f.ln.Close()
	f.mu.Lock()
	for _, p := range f.conns {
		p.client.Close()
		p.server.Close()
	}
	f.mu.Unlock()
	f.wg.Wait()
}

func TestSilentLinkIsProbedAndReplaced(t *testing.T) {
	cl := newCluster(t)
	proxy := newFreezer(t, cl.addr)
	direct := cl.addr
	cl.addr = proxy.addr()
	a := cl.node(wsnotify.WithProbeInterval(100 * time.Millisecond))
	cl.addr = direct
	b := cl.node()

	r := &receiver{t: t, user: "mallory"}
	conn := r.dial(a)
	notify(t, b, "mallory", numbered{0})
	r.take(conn, 1)

	if n := proxy.freezePubSub(); n != 1 {
		t.Fatalf("froze %d pub/sub connections, want node A's one", n)
	}
	for i := 1; i <= 20; i++ {
		notify(t, b, "mallory", numbered{i})
	}
	r.take(conn, 21) // they arrive once the probe has replaced the link
	if st := a.hub.Stats(); st.Resyncs == 0 {
		t.Fatalf("no resync recorded: %+v", st)
	}
	// The frozen link was closed, so Redis counts node A once, on its new link.
	redistest.Eventually(t, 5*time.Second, func() bool { return cl.subscribers(cl.prefix+":{0}:user:mallory") == 1 },
		"node A is not subscribed exactly once after replacing its link")
}
