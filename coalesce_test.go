package wsnotify

import (
	"bytes"
	"net"
	"testing"
	"time"
)

// recordingConn records each write that reaches the socket.
type recordingConn struct {
	net.Conn
	writes [][]byte
	closed bool
}

func (c *recordingConn) Write(p []byte) (int, error) {
	c.writes = append(c.writes, bytes.Clone(p))
	return len(p), nil
}

func (c *recordingConn) Close() error { c.closed = true; return nil }

func (c *recordingConn) sent() []byte { return bytes.Join(c.writes, nil) }

func textFrame(payload string) []byte { return append([]byte{0x81, byte(len(payload))}, payload...) }

func TestCoalescingKeepsFramesBackOnlyWhileMoreAreQueued(t *testing.T) {
	behind := 0
	rec := &recordingConn{}
	c := &coalescingConn{Conn: rec, pending: func() bool { return behind > 0 }}

	var want []byte
	for i, p := range []string{"a", "bb", "ccc"} {
		behind = 2 - i
		f := textFrame(p)
		want = append(want, f...)
		if n, err := c.Write(f); n != len(f) || err != nil {
			t.Fatalf("Write = %d, %v", n, err)
		}
		if i < 2 && len(rec.writes) != 0 {
			t.Fatalf("frame %d reached the socket with frames queued behind it", i)
		}
	}
	if !bytes.Equal(rec.sent(), want) {
		t.Fatalf("socket got %q, want %q", rec.sent(), want)
	}

	// A lone frame goes at once.
	rec.writes = nil
	behind = 0
	_, _ = c.Write(textFrame("x"))
	if len(rec.writes) != 1 {
		t.Fatalf("a lone frame took %d writes, want 1", len(rec.writes))
	}
}

func TestCoalescingWritesControlFramesAtOnce(t *testing.T) {
	rec := &recordingConn{}
	c := &coalescingConn{Conn: rec, pending: func() bool { return true }}
	data := textFrame("kept")
	_, _ = c.Write(data)
	ping := []byte{0x89, 0x00}
	_, _ = c.Write(ping)
	if want := append(bytes.Clone(data), ping...); !bytes.Equal(rec.sent(), want) {
		t.Fatalf("socket got %q, want the kept frame then the ping %q", rec.sent(), want)
	}
}

func TestCoalescingBoundsWhatItKeeps(t *testing.T) {
	rec := &recordingConn{}
	c := &coalescingConn{Conn: rec, pending: func() bool { return true }}
	big := make([]byte, maxCoalesced/2+1)
	big[0] = 0x81
	for range 3 {
		_, _ = c.Write(big)
	}
	if got := len(rec.sent()); got != 2*len(big) {
		t.Fatalf("%d bytes reached the socket, want the %d that no longer fit", got, 2*len(big))
	}
	if c.keptLen() > maxCoalesced {
		t.Fatalf("kept %d bytes, more than %d", c.keptLen(), maxCoalesced)
	}
	_ = c.Close()
	if !rec.closed {
		t.Fatal("Close did not close the socket")
	}
	sent := len(rec.sent())
	if _, err := c.Write(big); err == nil || len(rec.sent()) != sent || c.buf != nil {
		t.Fatalf("a write after Close: err %v, %d more bytes sent, buffer kept %v", err, len(rec.sent())-sent, c.buf != nil)
	}
}

// blockingConn's writes block until the connection is closed, as a write to
// a client that reads nothing does once the socket buffers are full.
type blockingConn struct {
	net.Conn
	entered chan struct{}
	closed  chan struct{}
}

func (c *blockingConn) Write(p []byte) (int, error) {
	close(c.entered)
	<-c.closed
	return 0, net.ErrClosed
}

func (c *blockingConn) Close() error { close(c.closed); return nil }

func TestCoalescingCloseDoesNotWaitForABlockedWrite(t *testing.T) {
	conn := &blockingConn{entered: make(chan struct{}), closed: make(chan struct{})}
	c := &coalescingConn{Conn: conn, pending: func() bool { return false }}
	wrote := make(chan error, 1)
	go func() { _, err := c.Write(textFrame("stuck")); wrote <- err }()
	<-conn.entered
	closed := make(chan struct{})
	go func() { _ = c.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("Close waited for the write it should have unblocked")
	}
	if err := <-wrote; err == nil {
		t.Fatal("the blocked write succeeded after Close")
	}
}
