package main

// The child processes. A node process (hidden -node mode) is what an
// application node would be: a gin engine with a wsnotify hub on a loopback
// port. A raw process (hidden -raw mode) is the baseline: plain
// gorilla/websocket, no Redis, each socket written directly. Both serve the
// same control API to the load generator:
//
//	GET  /ws?user=U                     the WebSocket route
//	POST /notify?user=U&seq=N           one notification, payload {"t":<now ns>,"seq":N}
//	POST /fire?users=C&n=M&k=K          K notifiers send M notifications, i-th to
//	                                    user u<i%C> with seq i/C, as fast as possible;
//	                                    answers when all were accepted
//	GET  /rss[?gc=1]                    VmRSS, goroutines, sessions (gc=1: collect first)
//
// The send timestamp t is taken immediately before Notify (or the raw write),
// so latency runs from the Notify call to the client's receipt.

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/gorilla/websocket"
	"github.com/redis/go-redis/v9"

	"github.com/wsnotify/wsnotify"
	"github.com/wsnotify/wsnotify/middleware"
)

// Hidden first arguments that turn the binary into a child process.
const (
	nodeModeArg = "-node"
	rawModeArg  = "-raw"
)

// target is what the control API drives: a wsnotify hub or the raw server.
type target interface {
	// notify sends payload to user and returns how many receivers (nodes
	// for the hub, sockets for raw) it reached.
	notify(ctx context.Context, user string, payload []byte) (int64, error)
	status() nodeStatus
}

// nodeStatus is the answer of /rss.
type nodeStatus struct {
	RSSKiB        int64  `json:"rss_kib"`
	Goroutines    int    `json:"goroutines"`
	Sessions      int    `json:"sessions"`
	SlowConsumers uint64 `json:"slow_consumers"`
	Resyncs       uint64 `json:"resyncs"`
	Truncated     uint64 `json:"truncated"`
	HeapKiB       int64  `json:"heap_kib"`  // heap in use
	StackKiB      int64  `json:"stack_kib"` // goroutine stacks
}

// notifyResult is the answer of /notify.
type notifyResult struct {
	Receivers int64  `json:"receivers"`
	Error     string `json:"error,omitempty"`
}

// fireResult is the answer of /fire.
type fireResult struct {
	Sent       int64  `json:"sent"`
	Errors     int64  `json:"errors"`
	Offline    int64  `json:"offline"` // accepted, but no receiver held the user
	FirstError string `json:"first_error,omitempty"`
	ElapsedNS  int64  `json:"elapsed_ns"`
}

// childFlags are the flags both child modes take.
type childFlags struct {
	redisAddr  string
	prefix     string
	history    bool
	historyLen int
	nofile     uint64
	queue      int
	verbose    bool
}

func parseChildFlags(name string, args []string) (childFlags, error) {
	var f childFlags
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.StringVar(&f.redisAddr, "redis", "", "Redis address")
	fs.StringVar(&f.prefix, "prefix", "", "key prefix")
	fs.BoolVar(&f.history, "history", true, "keep history")
	fs.IntVar(&f.historyLen, "history-len", 1000, "history length per user")
	fs.Uint64Var(&f.nofile, "nofile", 4096, "file descriptors needed")
	fs.IntVar(&f.queue, "queue", 0, "session queue in messages (0: the hub's default)")
	fs.BoolVar(&f.verbose, "v", false, "log hub warnings")
	return f, fs.Parse(args)
}

// nodeMain runs a node process until its stdin closes or it is signalled.
func nodeMain(args []string) error {
	f, err := childFlagsWithFiles("node", args)
	if err != nil {
		return err
	}
	if dir := os.Getenv("WSNOTIFY_BENCH_PROFILE_DIR"); dir != "" {
		// A CPU profile of the node's whole life, for finding where a
		// scenario's time goes: go tool pprof DIR/node-PID.cpu
		out, err := os.Create(filepath.Join(dir, fmt.Sprintf("node-%d.cpu", os.Getpid())))
		if err != nil {
			return err
		}
		defer out.Close()
		if err := pprof.StartCPUProfile(out); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	level := slog.LevelError
	if f.verbose {
		level = slog.LevelWarn
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	rdb := redis.NewClient(&redis.Options{
		Addr:   f.redisAddr,
		Dialer: loopbackDial,
		// go-redis's default pool: Notify calls share pipelines, so the
		// notifiers need no connection each.
		ContextTimeoutEnabled: true,
	})
	defer rdb.Close()
	opts := []wsnotify.Option{
		wsnotify.WithUserKey(middleware.FromQuery("user")),
		wsnotify.WithPrefix(f.prefix),
		wsnotify.WithLogger(logger),
	}
	if f.queue > 0 {
		opts = append(opts, wsnotify.WithSessionQueue(f.queue, 1<<20))
	}
	if f.history {
		opts = append(opts, wsnotify.WithHistory(f.historyLen, time.Hour))
	} else {
		opts = append(opts, wsnotify.WithoutHistory())
	}
	hub, err := wsnotify.New(rdb, opts...)
	if err != nil {
		return err
	}
	if err := waitReady(hub); err != nil {
		_ = hub.Close(context.Background())
		return err
	}

	gin.SetMode(gin.ReleaseMode)
	r := gin.New()
	hub.Mount(r, "/ws")
	t := hubTarget{hub}
	r.POST("/notify", gin.WrapF(notifyHandler(t)))
	r.POST("/fire", gin.WrapF(fireHandler(t)))
	r.GET("/rss", gin.WrapF(statusHandler(t)))

	return serveChild(r, func(ctx context.Context) error { return hub.Close(ctx) })
}

func waitReady(hub *wsnotify.Hub) error {
	var err error
	for range 100 {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err = hub.Ready(ctx)
		cancel()
		if err == nil {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("hub not ready after 10s: %w", err)
}

type hubTarget struct{ hub *wsnotify.Hub }

func (t hubTarget) notify(ctx context.Context, user string, payload []byte) (int64, error) {
	res, err := t.hub.Notify(ctx, user, json.RawMessage(payload))
	return res.Nodes, err
}

func (t hubTarget) status() nodeStatus {
	st := t.hub.Stats()
	return nodeStatus{
		Sessions:      st.Sessions,
		SlowConsumers: st.SlowConsumers,
		Resyncs:       st.Resyncs,
		Truncated:     st.Truncated,
	}
}

// serveChild listens on a free loopback port, tells the parent where on
// stdout, and serves until stdin reaches EOF (the parent closed it or died)
// or a signal arrives; then it runs shutdown.
func serveChild(h http.Handler, shutdown func(context.Context) error) error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	fmt.Printf("READY %s\n", ln.Addr())

	stdinClosed := make(chan struct{})
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		close(stdinClosed)
	}()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	select {
	case <-stdinClosed:
	case <-sig:
	case err = <-served:
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	_ = srv.Close() // open WebSockets are hijacked: shutdown closes them
	return errors.Join(err, shutdown(ctx))
}

// rawMain runs the baseline process.
func rawMain(args []string) error {
	if _, err := childFlagsWithFiles("raw", args); err != nil {
		return err
	}
	s := newRawServer()
	return serveBaseline(s, s)
}

// childFlagsWithFiles parses a child's flags and raises its file limit.
func childFlagsWithFiles(name string, args []string) (childFlags, error) {
	f, err := parseChildFlags(name, args)
	if err != nil {
		return f, err
	}
	return f, raiseNoFile(f.nofile)
}

// serveBaseline serves the sockets of s and the control API, notifying
// through t, until the process is told to stop.
func serveBaseline(s *rawServer, t target) error {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /ws", s.serveWS)
	mux.HandleFunc("POST /notify", notifyHandler(t))
	mux.HandleFunc("POST /fire", fireHandler(t))
	mux.HandleFunc("GET /rss", statusHandler(t))
	return serveChild(mux, func(context.Context) error { s.closeAll(); return nil })
}

// rawServer holds sockets keyed by user and writes to them directly, one
// writer at a time per socket.
type rawServer struct {
	upgrader websocket.Upgrader
	seq      atomic.Uint64
	mu       sync.RWMutex
	byUser   map[string]map[*rawConn]struct{}
}

type rawConn struct {
	mu sync.Mutex // serializes writes
	ws *websocket.Conn
}

func newRawServer() *rawServer {
	return &rawServer{
		// Plain gorilla: the zero Upgrader reuses the HTTP server's 4 KiB
		// read and write buffers of the hijacked connection.
		upgrader: websocket.Upgrader{},
		byUser:   make(map[string]map[*rawConn]struct{}),
	}
}

func (s *rawServer) serveWS(w http.ResponseWriter, r *http.Request) {
	user := r.URL.Query().Get("user")
	if user == "" {
		http.Error(w, "user required", http.StatusUnauthorized)
		return
	}
	ws, err := s.upgrader.Upgrade(w, r, nil)
	if err != nil {
		return
	}
	c := &rawConn{ws: ws}
	s.mu.Lock()
	set := s.byUser[user]
	if set == nil {
		set = make(map[*rawConn]struct{})
		s.byUser[user] = set
	}
	set[c] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(set, c)
		if len(set) == 0 {
			delete(s.byUser, user)
		}
		s.mu.Unlock()
		_ = ws.Close()
	}()
	for { // read until the client goes; this also answers pings and closes
		if _, _, err := ws.ReadMessage(); err != nil {
			return
		}
	}
}

func (s *rawServer) notify(_ context.Context, user string, payload []byte) (int64, error) {
	return s.write(user, s.frame(payload)), nil
}

// frame wraps payload in an envelope like the hub's.
func (s *rawServer) frame(payload []byte) []byte {
	id := "r" + strconv.FormatUint(s.seq.Add(1), 10)
	frame := make([]byte, 0, len(payload)+len(id)+48)
	frame = append(frame, `{"id":"`...)
	frame = append(frame, id...)
	frame = append(frame, `","type":"notification","data":`...)
	frame = append(frame, payload...)
	return append(frame, '}')
}

// write sends frame to each socket of user and returns how many took it.
func (s *rawServer) write(user string, frame []byte) int64 {
	s.mu.RLock()
	conns := make([]*rawConn, 0, len(s.byUser[user]))
	for c := range s.byUser[user] {
		conns = append(conns, c)
	}
	s.mu.RUnlock()
	var n int64
	for _, c := range conns {
		c.mu.Lock()
		_ = c.ws.SetWriteDeadline(time.Now().Add(10 * time.Second))
		err := c.ws.WriteMessage(websocket.TextMessage, frame)
		c.mu.Unlock()
		if err != nil {
			_ = c.ws.Close()
			continue
		}
		n++
	}
	return n
}

func (s *rawServer) status() nodeStatus {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var st nodeStatus
	for _, set := range s.byUser {
		st.Sessions += len(set)
	}
	return st
}

func (s *rawServer) closeAll() {
	s.mu.RLock()
	defer s.mu.RUnlock()
	for _, set := range s.byUser {
		for c := range set {
			_ = c.ws.Close()
		}
	}
}

// appendPayload writes {"t":<t>,"seq":<seq>}.
func appendPayload(dst []byte, t, seq int64) []byte {
	dst = append(dst, `{"t":`...)
	dst = strconv.AppendInt(dst, t, 10)
	dst = append(dst, `,"seq":`...)
	dst = strconv.AppendInt(dst, seq, 10)
	return append(dst, '}')
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func notifyHandler(t target) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		user := q.Get("user")
		seq, err := strconv.ParseInt(q.Get("seq"), 10, 64)
		if user == "" || err != nil {
			writeJSON(w, http.StatusBadRequest, notifyResult{Error: "user and seq required"})
			return
		}
		payload := appendPayload(make([]byte, 0, 48), time.Now().UnixNano(), seq)
		n, err := t.notify(r.Context(), user, payload)
		if err != nil {
			writeJSON(w, http.StatusServiceUnavailable, notifyResult{Error: err.Error()})
			return
		}
		writeJSON(w, http.StatusOK, notifyResult{Receivers: n})
	}
}

func fireHandler(t target) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		users, err1 := strconv.Atoi(q.Get("users"))
		total, err2 := strconv.ParseInt(q.Get("n"), 10, 64)
		workers, err3 := strconv.Atoi(q.Get("k"))
		if errors.Join(err1, err2, err3) != nil || users < 1 || total < 0 || workers < 1 {
			writeJSON(w, http.StatusBadRequest, fireResult{FirstError: "users, n and k required"})
			return
		}
		names := make([]string, users)
		for i := range names {
			names[i] = userName(i)
		}
		ctx, cancel := context.WithTimeout(r.Context(), 10*time.Minute)
		defer cancel()

		var next, errs, offline atomic.Int64
		var firstErr atomic.Value
		start := time.Now()
		var wg sync.WaitGroup
		for range workers {
			wg.Go(func() {
				buf := make([]byte, 0, 48)
				for {
					i := next.Add(1) - 1
					if i >= total || ctx.Err() != nil {
						return
					}
					buf = appendPayload(buf[:0], time.Now().UnixNano(), i/int64(users))
					n, err := t.notify(ctx, names[i%int64(users)], buf)
					switch {
					case err != nil:
						errs.Add(1)
						firstErr.CompareAndSwap(nil, err.Error())
					case n == 0:
						offline.Add(1)
					}
				}
			})
		}
		wg.Wait()
		res := fireResult{
			Sent:      min(next.Load(), total) - errs.Load(),
			Errors:    errs.Load(),
			Offline:   offline.Load(),
			ElapsedNS: time.Since(start).Nanoseconds(),
		}
		if v, ok := firstErr.Load().(string); ok {
			res.FirstError = v
		}
		writeJSON(w, http.StatusOK, res)
	}
}

func statusHandler(t target) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("gc") != "" {
			runtime.GC()
			debug.FreeOSMemory()
			if err := writeHeapProfile(); err != nil {
				writeJSON(w, http.StatusInternalServerError, map[string]string{"error": err.Error()})
				return
			}
		}
		st := t.status()
		rss, err := selfRSSKiB()
		if err != nil {
			writeJSON(w, http.StatusInternalServerError, map[string]string{"error": err.Error()})
			return
		}
		st.RSSKiB = rss
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		st.HeapKiB, st.StackKiB = int64(ms.HeapInuse>>10), int64(ms.StackInuse>>10)
		st.Goroutines = runtime.NumGoroutine()
		writeJSON(w, http.StatusOK, st)
	}
}

// writeHeapProfile writes what the heap holds to
// WSNOTIFY_BENCH_PROFILE_DIR/node-PID-N.heap when that is set, for finding
// what an idle socket keeps: go tool pprof -sample_index=inuse_space FILE
func writeHeapProfile() error {
	dir := os.Getenv("WSNOTIFY_BENCH_PROFILE_DIR")
	if dir == "" {
		return nil
	}
	n := heapProfiles.Add(1)
	out, err := os.Create(filepath.Join(dir, fmt.Sprintf("node-%d-%d.heap", os.Getpid(), n)))
	if err != nil {
		return err
	}
	defer out.Close()
	return pprof.Lookup("heap").WriteTo(out, 0)
}

var heapProfiles atomic.Int64

// userName is the user key of client i.
func userName(i int) string { return "u" + strconv.Itoa(i) }

// child is a node or raw process seen from the parent.
type child struct {
	name  string
	cmd   *exec.Cmd
	stdin io.WriteCloser
	addr  string // 127.0.0.1:port
	done  chan struct{}
}

func (c *child) pid() int        { return c.cmd.Process.Pid }
func (c *child) baseURL() string { return "http://" + c.addr }
func (c *child) wsURL() string   { return "ws://" + c.addr + "/ws" }

// children keeps every process the parent started, so that every exit path
// can kill them by PID.
type children struct {
	mu    sync.Mutex
	procs map[int]*child
}

func newChildren() *children { return &children{procs: make(map[int]*child)} }

// start runs this binary in mode with args and waits for its READY line.
func (cs *children) start(ctx context.Context, name, mode string, args []string) (*child, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(exe, append([]string{mode}, args...)...)
	// Own process group: a Ctrl-C in the terminal reaches the parent only,
	// which then stops the children itself.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	c := &child{name: name, cmd: cmd, stdin: stdin, done: make(chan struct{})}
	cs.mu.Lock()
	cs.procs[c.pid()] = c
	cs.mu.Unlock()

	ready := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if addr, ok := cutReady(sc.Text()); ok {
				ready <- addr
				break
			}
		}
		_, _ = io.Copy(io.Discard, stdout)
	}()
	go func() {
		_ = cmd.Wait()
		close(c.done)
	}()
	timer := time.NewTimer(30 * time.Second)
	defer timer.Stop()
	select {
	case c.addr = <-ready:
		return c, nil
	case <-c.done:
		cs.stop(c)
		return nil, fmt.Errorf("%s exited before it was ready: %v", name, cmd.ProcessState)
	case <-timer.C:
		cs.stop(c)
		return nil, fmt.Errorf("%s not ready after 30s", name)
	case <-ctx.Done():
		cs.stop(c)
		return nil, ctx.Err()
	}
}

func cutReady(line string) (string, bool) {
	var addr string
	if _, err := fmt.Sscanf(line, "READY %s", &addr); err != nil {
		return "", false
	}
	return addr, true
}

// stop asks c to shut down (closing its stdin), and kills it by PID if it
// has not exited within 5s.
func (cs *children) stop(c *child) {
	_ = c.stdin.Close()
	select {
	case <-c.done:
	case <-time.After(5 * time.Second):
		_ = c.cmd.Process.Kill()
		<-c.done
	}
	cs.mu.Lock()
	delete(cs.procs, c.pid())
	cs.mu.Unlock()
}

// killAll kills every child still running, by PID, without waiting for a
// graceful shutdown: the emergency path on a signal or error.
func (cs *children) killAll() {
	cs.mu.Lock()
	procs := make([]*child, 0, len(cs.procs))
	for _, c := range cs.procs {
		procs = append(procs, c)
	}
	cs.procs = make(map[int]*child)
	cs.mu.Unlock()
	for _, c := range procs {
		_ = c.cmd.Process.Kill()
		select {
		case <-c.done:
		case <-time.After(2 * time.Second):
		}
	}
}
