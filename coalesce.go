package wsnotify

import (
	"bufio"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
)

// Write coalescing: when frames queue up behind a socket, several of them
// leave in one system call instead of one call each.
//
// melody's writer hands gorilla one queued frame at a time, and gorilla
// writes each frame to the connection at once. A loopback or LAN write
// system call costs far more than framing a message, so under load the
// writer spends most of its time in them. The connection gorilla writes to
// is wrapped: a data frame with more frames of the session queued behind it
// is kept in a buffer, and the last frame of the run carries the buffer with
// it in one writev. A frame with nothing behind it, and every control frame
// (ping, pong, close), is written at once, so a lone notification is never
// delayed.

// maxCoalesced bounds the bytes kept back before a write, so a long run of
// frames still streams out in pieces.
const maxCoalesced = 32 << 10

var coalescePool = sync.Pool{New: func() any { b := make([]byte, 0, maxCoalesced); return &b }}

// coalescingWriter is the handler's ResponseWriter with a Hijack that
// returns a coalescingConn.
type coalescingWriter struct {
	http.ResponseWriter
	pending func() bool // more frames queued behind the one being written
}

func (w *coalescingWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	conn, brw, err := http.NewResponseController(w.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	return &coalescingConn{Conn: conn, pending: w.pending}, brw, nil
}

// coalescingConn is safe for the use gorilla makes of it: writes come one at
// a time (gorilla serializes them), Close may come from any goroutine. Close
// touches nothing a write uses, so it never waits behind a write blocked on
// a slow client: closing the connection is what unblocks that write.
type coalescingConn struct {
	net.Conn
	pending func() bool
	closed  atomic.Bool
	buf     *[]byte // frames kept back; nil while there are none; only Write touches it
}

func (c *coalescingConn) Write(p []byte) (int, error) {
	if c.closed.Load() {
		c.release()
		return 0, net.ErrClosed
	}
	if !isControlFrame(p) && c.pending() && c.keptLen()+len(p) <= maxCoalesced {
		if c.buf == nil {
			c.buf = coalescePool.Get().(*[]byte)
		}
		*c.buf = append(*c.buf, p...)
		return len(p), nil
	}
	if c.buf == nil {
		return c.Conn.Write(p)
	}
	bufs := net.Buffers{*c.buf, p}
	_, err := bufs.WriteTo(c.Conn) // one writev on a TCP connection
	c.release()
	if err != nil {
		return 0, err
	}
	return len(p), nil
}

// Close closes the connection. Frames still kept back are dropped: a socket
// closed without a close frame (whose write flushes them) has lost its peer
// or failed a write, and its client resumes from history.
func (c *coalescingConn) Close() error {
	c.closed.Store(true)
	return c.Conn.Close()
}

func (c *coalescingConn) keptLen() int {
	if c.buf == nil {
		return 0
	}
	return len(*c.buf)
}

func (c *coalescingConn) release() {
	if c.buf == nil {
		return
	}
	*c.buf = (*c.buf)[:0]
	coalescePool.Put(c.buf)
	c.buf = nil
}

// isControlFrame reports whether p starts a ping, pong or close frame: its
// opcode (the low four bits of the first byte) is 8 or above. gorilla writes
// each control frame in one piece.
func isControlFrame(p []byte) bool {
	return len(p) > 0 && p[0]&0x08 != 0
}
