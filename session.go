package wsnotify

import (
	"net/http"
	"sync"
	"time"

	"github.com/gorilla/websocket"
	"github.com/olahol/melody"
)

// Close codes the hub sends besides the standard ones (1001 on shutdown,
// 1003 for a binary frame, 1009 for an oversized frame).
const (
	// CloseSlowConsumer closes a socket whose outbound queue is full: the
	// client reads too slowly. It should reconnect.
	CloseSlowConsumer = 4008
)

// sessionKey is where a melody session keeps its *Session.
const sessionKey = "wsnotify.session"

// Session is one open WebSocket of one user on this node. Its methods are safe
// for concurrent use.
type Session struct {
	user string
	ms   *melody.Session
}

// User returns the user key the socket was opened for.
func (s *Session) User() string { return s.user }

// Request returns the HTTP request that opened the socket.
func (s *Session) Request() *http.Request { return s.ms.Request }

// Get returns a value stored with Set, or one the gin context held when the
// socket was opened (the keys an auth middleware put there).
func (s *Session) Get(key string) (any, bool) { return s.ms.Get(key) }

// Set stores a value for the life of the socket, for the hooks to share.
func (s *Session) Set(key string, value any) { s.ms.Set(key, value) }

// Write queues a text frame for this socket alone. It does not block; a full
// queue closes the socket with CloseSlowConsumer.
func (s *Session) Write(msg []byte) error { return s.ms.Write(msg) }

// Close closes the socket with a normal closure.
func (s *Session) Close() error {
	return s.closeWith(websocket.CloseNormalClosure, "")
}

// closeWith sends a close frame straight on the connection and closes it.
// It bypasses melody's queue, which is full when a slow consumer is dropped
// and would otherwise re-enter the error handler; gorilla allows WriteControl
// and Close from any goroutine.
func (s *Session) closeWith(code int, reason string) error {
	conn := s.ms.WebsocketConnection()
	msg := websocket.FormatCloseMessage(code, reason)
	_ = conn.WriteControl(websocket.CloseMessage, msg, time.Now().Add(time.Second))
	return conn.Close()
}

// sessionIndex maps each user to its sockets on this node, so a notification
// touches only its user's sessions instead of scanning all of them.
type sessionIndex struct {
	mu     sync.RWMutex
	byUser map[string]map[*Session]struct{}
	// reserved counts sockets being upgraded, so the per-user cap holds
	// while several upgrades of one user race.
	reserved map[string]int
}

func newSessionIndex() *sessionIndex {
	return &sessionIndex{
		byUser:   make(map[string]map[*Session]struct{}),
		reserved: make(map[string]int),
	}
}

// reserve claims a slot for an upgrade of user; false when the cap is reached.
func (x *sessionIndex) reserve(user string, limit int) bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	if limit > 0 && len(x.byUser[user])+x.reserved[user] >= limit {
		return false
	}
	x.reserved[user]++
	return true
}

func (x *sessionIndex) unreserve(user string) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.reserved[user]--; x.reserved[user] <= 0 {
		delete(x.reserved, user)
	}
}

// add turns a reservation into a live session.
func (x *sessionIndex) add(s *Session) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.reserved[s.user]--; x.reserved[s.user] <= 0 {
		delete(x.reserved, s.user)
	}
	set := x.byUser[s.user]
	if set == nil {
		set = make(map[*Session]struct{})
		x.byUser[s.user] = set
	}
	set[s] = struct{}{}
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
// released, so a slow-consumer close never runs under it.
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

// count returns the number of live sessions and of users holding them.
func (x *sessionIndex) count() (sessions, users int) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	for _, set := range x.byUser {
		sessions += len(set)
	}
	return sessions, len(x.byUser)
}
