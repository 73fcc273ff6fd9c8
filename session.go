package wsnotify

import (
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	"github.com/olahol/melody"
)

// Close codes the hub sends besides the standard ones (1001 on shutdown,
// 1003 for a binary frame, 1009 for an oversized frame).
const (
	// CloseTryAgainLater (1013) closes a socket whose history could not be
	// read from Redis; the client should reconnect with its last id.
	CloseTryAgainLater = 1013

	// CloseSlowConsumer closes a socket whose outbound queue is full: the
	// client reads too slowly. Nothing was dropped silently: the client
	// should reconnect with its last id and resume from history.
	CloseSlowConsumer = 4008
)

// sessionKey is where a melody session keeps its *Session.
const sessionKey = "wsnotify.session"

// Session is one open WebSocket of one user on this node. Its methods are safe
// for concurrent use.
type Session struct {
	user  string
	ms    *melody.Session
	limit queueLimit
	stats *counters // the hub's running totals

	mu        sync.Mutex
	holds     int     // > 0 while a replay runs: live frames wait in held
	held      []frame // live frames that arrived while holding
	heldBytes int64
	last      streamID      // last history id written to the socket
	gone      bool          // closing: write nothing more
	space     chan bool     // signalled when the queue drains below half
	ended     chan struct{} // closed when the socket ends
	opened    chan<- error  // set until the socket opens; only run and onConnect touch it

	// Frames queued for the socket: at most melodySlots in melody's queue,
	// the rest in backlog, which melody's writer refills from as it drains.
	// melody's queue is a channel allocated whole for every socket, so it is
	// kept short; backlog costs nothing while the socket is idle.
	inMelody int
	backlog  [][]byte

	queuedMsgs  atomic.Int64 // inMelody + len(backlog), read without the lock
	queuedBytes atomic.Int64
	slow        atomic.Bool
}

// melodySlots is how many frames wait in melody's own queue per socket.
const melodySlots = 8

type queueLimit struct {
	msgs  int64
	bytes int64
}

// newSession starts holding: frames that arrive before the socket is
// upgraded and its history replayed are kept, not lost.
func newSession(user string, limit queueLimit, stats *counters) *Session {
	return &Session{user: user, limit: limit, stats: stats, holds: 1,
		space: make(chan bool, 1), ended: make(chan struct{})}
}

func (s *Session) melodySession() *melody.Session {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ms
}

// User returns the user key the socket was opened for.
func (s *Session) User() string { return s.user }

// Request returns the HTTP request that opened the socket. Its headers and
// context are released once the OnConnect hook returns, so that an open
// socket does not keep them: copy what you need with Set in OnConnect.
// Method, URL, Host and RemoteAddr stay.
func (s *Session) Request() *http.Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ms.Request
}

// handOver tells the waiting HTTP handler that the socket is open and no
// longer needs the handler's writer or request, so the handler may return.
// It runs once, on the socket's goroutine.
func (s *Session) handOver() {
	s.opened <- nil
	s.opened = nil
}

// releaseRequest keeps only the small parts of the request that opened the
// socket; the headers alone often outweigh everything else an idle socket
// holds.
func (s *Session) releaseRequest() {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.ms.Request
	s.ms.Request = &http.Request{
		Method: r.Method, URL: r.URL, Proto: r.Proto, ProtoMajor: r.ProtoMajor, ProtoMinor: r.ProtoMinor,
		Header: http.Header{}, Host: r.Host, RemoteAddr: r.RemoteAddr, RequestURI: r.RequestURI, TLS: r.TLS,
	}
}

// Get returns a value stored with Set, or one the gin context held when the
// socket was opened (the keys an auth middleware put there).
func (s *Session) Get(key string) (any, bool) { return s.ms.Get(key) }

// Set stores a value for the life of the socket, for the hooks to share.
func (s *Session) Set(key string, value any) { s.ms.Set(key, value) }

// LastID returns the id of the last notification from history written to
// this socket ("" before the first).
func (s *Session) LastID() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.last.isZero() {
		return ""
	}
	return s.last.String()
}

// Write queues a text frame for this socket alone, outside history. It does
// not block; a full queue closes the socket with CloseSlowConsumer.
func (s *Session) Write(msg []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.send(msg)
	return nil
}

// Close closes the socket with a normal closure.
func (s *Session) Close() error {
	return s.closeWith(websocket.CloseNormalClosure, "")
}

// offer delivers a live frame: written now, or kept until a replay ends.
func (s *Session) offer(f frame) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.holds > 0 {
		// Held frames wait in memory, not in the socket's queue: the byte
		// bound alone applies, so a replay of a busy user fits.
		if s.heldBytes+int64(len(f.payload)) > s.limit.bytes {
			s.dropSlow()
			return
		}
		s.held = append(s.held, f)
		s.heldBytes += int64(len(f.payload))
		return
	}
	s.write(f)
}

// hold makes live frames wait until release, so a replay can write the
// frames of history first.
func (s *Session) hold() {
	s.mu.Lock()
	s.holds++
	s.mu.Unlock()
}

// release ends one hold. The last one writes the frames kept meanwhile,
// paced like a replay, and lets live frames through once none is left.
func (s *Session) release() {
	for {
		s.mu.Lock()
		if s.holds > 1 || len(s.held) == 0 {
			s.holds--
			s.mu.Unlock()
			return
		}
		n := min(len(s.held), int(max(s.limit.msgs/2, 1)))
		for _, f := range s.held[:n] {
			s.heldBytes -= int64(len(f.payload))
			s.write(f)
		}
		rest := copy(s.held, s.held[n:])
		clear(s.held[rest:])
		s.held = s.held[:rest]
		s.mu.Unlock()
		if !s.waitSpace() {
			s.mu.Lock()
			s.holds-- // the socket is closing: what is held goes nowhere
			clear(s.held)
			s.held, s.heldBytes = s.held[:0], 0
			s.mu.Unlock()
			return
		}
	}
}

// replayed writes frames read from history; a frame already written is
// skipped, so replays and live delivery may overlap freely. A session still
// being upgraded skips them: its first replay, which comes later, covers them.
func (s *Session) replayed(f frame) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ms != nil {
		s.write(f)
	}
}

// lastID is where a replay for this socket starts.
func (s *Session) lastID() streamID {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.last
}

// setLast sets where history starts for a socket that resumes nothing.
func (s *Session) setLast(id streamID) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.last = id
}

// write must be called with s.mu held. Frames with a stream id are written
// once, in id order; others are written as they come.
func (s *Session) write(f frame) {
	if !f.id.isZero() {
		if !s.last.less(f.id) {
			return // already written
		}
		s.last = f.id
	}
	s.stats.delivered.Add(1)
	s.send(f.payload)
}

// send must be called with s.mu held. It keeps its own count of what melody
// has queued, because melody drops a message on a full queue and reports
// success; the hub closes the socket instead.
func (s *Session) send(payload []byte) {
	if s.gone {
		return
	}
	n := int64(len(payload))
	if s.queuedMsgs.Load() >= s.limit.msgs || s.queuedBytes.Load()+n > s.limit.bytes {
		s.dropSlow()
		return
	}
	s.queuedMsgs.Add(1)
	s.queuedBytes.Add(n)
	if len(s.backlog) > 0 || s.inMelody == melodySlots {
		s.backlog = append(s.backlog, payload)
		return
	}
	s.toMelody(payload)
}

// framesBehind reports whether more frames are queued behind the one being
// written, so the connection may keep this one back and write them together.
func (s *Session) framesBehind() bool { return s.queuedMsgs.Load() > 1 }

// toMelody must be called with s.mu held.
func (s *Session) toMelody(payload []byte) {
	s.inMelody++
	if err := s.ms.Write(payload); err != nil {
		s.gone = true // closed under us: its disconnect is already on the way
	}
}

// sent is called by melody's writer after a queued frame reached the socket:
// it moves the next frame of the backlog into melody's queue.
func (s *Session) sent(payload []byte) {
	s.mu.Lock()
	s.inMelody--
	if len(s.backlog) > 0 && !s.gone {
		s.toMelody(s.backlog[0])
		s.backlog[0] = nil
		if s.backlog = s.backlog[1:]; len(s.backlog) == 0 {
			s.backlog = nil // an idle socket keeps no array
		}
	}
	s.mu.Unlock()
	if s.queuedBytes.Add(-int64(len(payload))); s.queuedMsgs.Add(-1) <= s.limit.msgs/2 {
		select {
		case s.space <- true:
		default:
		}
	}
}

// replayStall is how long a replay waits for a client to read before it
// closes the socket as a slow consumer.
const replayStall = 10 * time.Second

// waitSpace blocks a replay while the queue is more than half full, so a long
// history paces itself to the client instead of overflowing the queue. It
// returns false once the socket has ended, or has read nothing for
// replayStall (then it is closed as a slow consumer).
func (s *Session) waitSpace() bool {
	var stall *time.Timer
	for s.queuedMsgs.Load() > s.limit.msgs/2 && !s.slow.Load() {
		if stall == nil {
			stall = time.NewTimer(replayStall)
			defer stall.Stop()
		}
		select {
		case <-s.space:
		case <-s.ended:
			return false
		case <-stall.C:
			s.markSlow()
			return false
		}
	}
	return !s.slow.Load()
}

// attach binds the upgraded connection; a session found slow while it was
// still being upgraded is closed now.
func (s *Session) attach(ms *melody.Session) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ms = ms
	if s.slow.Load() {
		s.closeSlow()
	}
}

// dropSlow must be called with s.mu held.
func (s *Session) dropSlow() {
	s.gone = true
	if s.ms != nil {
		s.markSlow()
	} else if !s.slow.Swap(true) {
		s.stats.slowConsumers.Add(1) // attach closes it
	}
}

// markSlow closes the socket as a slow consumer, once. It takes no lock, so
// melody's error handler may call it from inside a write.
func (s *Session) markSlow() {
	if !s.slow.Swap(true) {
		s.stats.slowConsumers.Add(1)
		s.closeSlow()
	}
}

// closeSlow closes the connection on its own goroutine: the close frame waits
// behind the full socket, and the caller is a worker that other users'
// messages are waiting for.
func (s *Session) closeSlow() {
	go func() { _ = s.closeWith(CloseSlowConsumer, "slow consumer: reconnect and resume") }()
}

// closeWith sends a close frame straight on the connection and closes it.
// It bypasses melody's queue, which may be full; gorilla allows WriteControl
// and Close from any goroutine.
func (s *Session) closeWith(code int, reason string) error {
	ms := s.melodySession()
	if ms == nil {
		return nil // not upgraded yet: its first replay decides
	}
	conn := ms.WebsocketConnection()
	msg := websocket.FormatCloseMessage(code, reason)
	_ = conn.WriteControl(websocket.CloseMessage, msg, time.Now().Add(5*time.Second))
	return conn.Close()
}

// sessionIndex maps each user to its sockets on this node, so a notification
// touches only its user's sessions instead of scanning all of them.
type sessionIndex struct {
	mu     sync.RWMutex
	byUser map[string]map[*Session]struct{}
}

func newSessionIndex() *sessionIndex {
	return &sessionIndex{byUser: make(map[string]map[*Session]struct{})}
}

// add registers s unless the user already holds limit sessions (0: no cap).
// Sessions join before their upgrade, so frames for them are kept from the
// moment the node subscribes.
func (x *sessionIndex) add(s *Session, limit int) bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	set := x.byUser[s.user]
	if limit > 0 && len(set) >= limit {
		return false
	}
	if set == nil {
		set = make(map[*Session]struct{})
		x.byUser[s.user] = set
	}
	set[s] = struct{}{}
	return true
}

func (x *sessionIndex) remove(s *Session) {
	x.mu.Lock()
	defer x.mu.Unlock()
	set := x.byUser[s.user]
	delete(set, s)
	if len(set) == 0 {
		delete(x.byUser, s.user)
	}
}

// appendUser appends user's sessions to dst. Writing happens after the lock is
// released, so no socket work runs under it.
func (x *sessionIndex) appendUser(dst []*Session, user string) []*Session {
	x.mu.RLock()
	defer x.mu.RUnlock()
	for s := range x.byUser[user] {
		dst = append(dst, s)
	}
	return dst
}

func (x *sessionIndex) appendAll(dst []*Session) []*Session {
	x.mu.RLock()
	defer x.mu.RUnlock()
	for _, set := range x.byUser {
		for s := range set {
			dst = append(dst, s)
		}
	}
	return dst
}

// count returns the number of sessions and of users holding them.
func (x *sessionIndex) count() (sessions, users int) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	for _, set := range x.byUser {
		sessions += len(set)
	}
	return sessions, len(x.byUser)
}
