package main

// The load generator's side: WebSocket clients that count what they receive,
// and the two ways of sending (paced HTTP POSTs, or one /fire burst).

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"

	"github.com/wsnotify/wsnotify"
)

const (
	dialConcurrency   = 64               // sockets being opened at once
	dialAttempts      = 3                // per client at the start
	maxReconnects     = 200              // per client over a measurement
	reconnectAttempts = 20               // per reconnect
	maxSeq            = 1 << 24          // seqs past this are treated as garbage
	dialTimeout       = 10 * time.Second // per attempt
)

// clientSet is every client socket of one measurement.
type clientSet struct {
	ctx      context.Context // of the measurement: ends reconnects
	history  bool            // resume with since after a close
	dialer   *websocket.Dialer
	clients  []*client
	stopping atomic.Bool
	received atomic.Int64 // distinct notifications, for progress
	wg       sync.WaitGroup
}

// client is one user's socket. Fields below mu are owned by the client's
// reader goroutine and read by others only after it has ended.
type client struct {
	set  *clientSet
	user int
	node int    // index of the node it is connected to
	url  string // ws://.../ws?user=...

	mu   sync.Mutex
	conn *websocket.Conn

	lastID      string   // last history id seen, for since
	lastStream  streamID // the same, parsed, for the order check
	seen        []uint64 // bitset of seqs received
	distinct    int64
	dups        int64
	outOfOrder  int64   // first receipts whose history id is not above the last one
	lat         []int64 // ns from Notify to receipt, first receipts only
	lastRecv    int64   // unix ns
	reconnects  int64
	noIDResumes int64 // reconnects without since: closed before any id arrived
	slowCloses  int64 // closed with 4008
	otherCloses int64 // any other close or read error
	truncated   int64
	badFrames   int64
	gaveUp      bool // could not reconnect
}

func newClientSet(history bool) *clientSet {
	return &clientSet{
		history: history,
		dialer: &websocket.Dialer{
			NetDialContext:   loopbackDial,
			HandshakeTimeout: dialTimeout,
			ReadBufferSize:   512,
			WriteBufferSize:  512,
		},
	}
}

// add registers a client for user on the node whose route is wsURL.
func (s *clientSet) add(user, node int, wsURL string) {
	s.clients = append(s.clients, &client{
		set:  s,
		user: user,
		node: node,
		url:  wsURL + "?user=" + url.QueryEscape(userName(user)),
	})
}

// connect opens every socket, dialConcurrency at a time, and starts one
// reader goroutine per socket. It fails if any client cannot connect.
func (s *clientSet) connect(ctx context.Context) error {
	s.ctx = ctx
	sem := make(chan struct{}, dialConcurrency)
	var failed atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	for _, c := range s.clients {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			wg.Wait()
			return ctx.Err()
		}
		wg.Go(func() {
			defer func() { <-sem }()
			var conn *websocket.Conn
			var err error
			for attempt := range dialAttempts {
				if attempt > 0 {
					time.Sleep(time.Duration(attempt) * 200 * time.Millisecond)
				}
				if conn, err = s.dial(ctx, c, ""); err == nil || ctx.Err() != nil {
					break
				}
			}
			if err != nil {
				failed.Add(1)
				firstErr.CompareAndSwap(nil, err)
				return
			}
			c.mu.Lock()
			c.conn = conn
			c.mu.Unlock()
			s.wg.Add(1)
			go c.read()
		})
	}
	wg.Wait()
	if n := failed.Load(); n > 0 {
		return fmt.Errorf("%d of %d clients could not connect: %w", n, len(s.clients), firstErr.Load().(error))
	}
	return nil
}

func (s *clientSet) dial(ctx context.Context, c *client, since string) (*websocket.Conn, error) {
	u := c.url
	if since != "" {
		u += "&since=" + url.QueryEscape(since)
	}
	ctx, cancel := context.WithTimeout(ctx, dialTimeout)
	defer cancel()
	conn, resp, err := s.dialer.DialContext(ctx, u, nil)
	if err != nil {
		if resp != nil {
			return nil, fmt.Errorf("dial %s: %s: %w", userName(c.user), resp.Status, err)
		}
		return nil, fmt.Errorf("dial %s: %w", userName(c.user), err)
	}
	return conn, nil
}

// stop closes every socket and waits for the readers to end.
func (s *clientSet) stop() {
	s.stopping.Store(true)
	for _, c := range s.clients {
		c.mu.Lock()
		if c.conn != nil {
			_ = c.conn.Close()
		}
		c.mu.Unlock()
	}
	s.wg.Wait()
}

// waitReceived waits until want distinct notifications arrived, nothing new
// arrived for idle, or max has passed. It returns the count received.
func (s *clientSet) waitReceived(ctx context.Context, want int64, idle, max time.Duration) int64 {
	const tick = 20 * time.Millisecond
	last, lastChange := s.received.Load(), time.Now()
	for range int(max / tick) {
		n := s.received.Load()
		if n >= want || ctx.Err() != nil {
			return n
		}
		if n != last {
			last, lastChange = n, time.Now()
		} else if time.Since(lastChange) > idle {
			return n
		}
		time.Sleep(tick)
	}
	return s.received.Load()
}

func (c *client) current() *websocket.Conn {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.conn
}

// read receives until the set stops, reconnecting after any close.
func (c *client) read() {
	defer c.set.wg.Done()
	for c.reconnects <= maxReconnects {
		conn := c.current()
		if conn == nil {
			return
		}
		_, msg, err := conn.ReadMessage()
		if err == nil {
			c.handle(msg, time.Now().UnixNano())
			continue
		}
		if c.set.stopping.Load() {
			return
		}
		if ce := (*websocket.CloseError)(nil); errors.As(err, &ce) && ce.Code == wsnotify.CloseSlowConsumer {
			c.slowCloses++
		} else {
			c.otherCloses++
		}
		if !c.reconnect() {
			c.gaveUp = true
			return
		}
	}
	c.gaveUp = true
}

// reconnect opens a new socket, resuming from the last id seen when history
// is on, as a real client does after a close.
func (c *client) reconnect() bool {
	for attempt := range reconnectAttempts {
		time.Sleep(min(50*time.Millisecond<<attempt, time.Second))
		if c.set.stopping.Load() || c.set.ctx.Err() != nil {
			return false
		}
		since := ""
		if c.set.history {
			// With no id yet there is nothing to resume from: the new
			// socket starts at its own upgrade, as the hub defines it.
			since = c.lastID
		}
		conn, err := c.set.dial(c.set.ctx, c, since)
		if err != nil {
			continue
		}
		c.mu.Lock()
		if c.set.stopping.Load() {
			c.mu.Unlock()
			_ = conn.Close()
			return false
		}
		_ = c.conn.Close()
		c.conn = conn
		c.mu.Unlock()
		c.reconnects++
		if c.set.history && since == "" {
			c.noIDResumes++
		}
		return true
	}
	return false
}

// wireFrame is the part of an envelope the clients look at; data is the
// benchmark's payload {"t": <unix ns>, "seq": <n>}.
type wireFrame struct {
	ID   string `json:"id"`
	Type string `json:"type"`
	Data struct {
		T   int64 `json:"t"`
		Seq int64 `json:"seq"`
	} `json:"data"`
}

func (c *client) handle(msg []byte, now int64) {
	var f wireFrame
	if err := json.Unmarshal(msg, &f); err != nil {
		c.badFrames++
		return
	}
	if strings.HasPrefix(f.Type, "wsnotify.") {
		if f.Type == wsnotify.TruncatedType {
			c.truncated++
		}
		return
	}
	seq := f.Data.Seq
	if seq < 0 || seq >= maxSeq {
		c.badFrames++
		return
	}
	word, bit := seq/64, uint64(1)<<(seq%64)
	if int(word) >= len(c.seen) {
		c.seen = slices.Grow(c.seen, int(word)+1-len(c.seen))[:word+1]
	}
	if c.seen[word]&bit != 0 {
		c.dups++
		return
	}
	c.seen[word] |= bit
	c.distinct++
	if c.set.history {
		// History ids grow per user: the order the hub promises.
		if id, ok := parseStreamID(f.ID); ok {
			if !c.lastStream.less(id) {
				c.outOfOrder++
			}
			c.lastID, c.lastStream = f.ID, id
		}
	}
	c.lat = append(c.lat, now-f.Data.T)
	c.lastRecv = now
	c.set.received.Add(1)
}

// streamID is a Redis stream id, ms-seq.
type streamID struct{ ms, seq uint64 }

func (a streamID) less(b streamID) bool { return a.ms < b.ms || a.ms == b.ms && a.seq < b.seq }

func parseStreamID(s string) (streamID, bool) {
	ms, seq, ok := strings.Cut(s, "-")
	if !ok {
		return streamID{}, false
	}
	a, err1 := strconv.ParseUint(ms, 10, 64)
	b, err2 := strconv.ParseUint(seq, 10, 64)
	return streamID{a, b}, err1 == nil && err2 == nil
}

func (c *client) has(seq int64) bool {
	word := seq / 64
	return int(word) < len(c.seen) && c.seen[word]&(1<<(seq%64)) != 0
}

// delivery is what the clients saw, summed.
type delivery struct {
	Received    int64 // distinct notifications
	Lost        int64
	Duplicates  int64
	OutOfOrder  int64
	Reconnects  int64
	NoIDResumes int64
	SlowCloses  int64
	OtherCloses int64
	Truncated   int64
	BadFrames   int64
	GaveUp      int64
	LastRecv    int64   // unix ns of the last first-receipt
	PerNode     []int64 // distinct notifications per node
	Latencies   []int64 // ns, sorted
}

// collect sums the clients after stop. sent tells, per user, how many seqs
// were sent (0..n-1) and which of them failed to send (not counted lost).
func (s *clientSet) collect(nodes int, sent func(user int) (n int64, failed map[int64]bool)) delivery {
	d := delivery{PerNode: make([]int64, nodes)}
	for _, c := range s.clients {
		n, failed := sent(c.user)
		for seq := range n {
			if !c.has(seq) && !failed[seq] {
				d.Lost++
			}
		}
		d.Received += c.distinct
		d.Duplicates += c.dups
		d.OutOfOrder += c.outOfOrder
		d.Reconnects += c.reconnects
		d.NoIDResumes += c.noIDResumes
		d.SlowCloses += c.slowCloses
		d.OtherCloses += c.otherCloses
		d.Truncated += c.truncated
		d.BadFrames += c.badFrames
		if c.gaveUp {
			d.GaveUp++
		}
		d.LastRecv = max(d.LastRecv, c.lastRecv)
		d.PerNode[c.node] += c.distinct
		d.Latencies = append(d.Latencies, c.lat...)
	}
	slices.Sort(d.Latencies)
	return d
}

// sendPlan is what a paced load sends: notification i goes to user i%users
// with seq i/users, through the node chosen by via.
type sendPlan struct {
	users    int
	total    int
	rate     float64 // per second
	workers  int
	via      func(user int) string // base URL of the sending node
	deadline time.Duration         // stop sending after this, whatever is left
}

// sendResult counts what the senders got through.
type sendResult struct {
	Attempted  int64
	Accepted   int64
	Errors     int64
	Offline    int64 // accepted, but no receiver held the user
	FirstError string
	Elapsed    time.Duration
	failed     map[int]map[int64]bool // user -> seqs that failed
}

// sent reports, for collect, how many seqs user was sent and which failed.
func (r *sendResult) sent(users int) func(user int) (int64, map[int64]bool) {
	return func(user int) (int64, map[int64]bool) {
		n := r.Attempted / int64(users)
		if int64(user) < r.Attempted%int64(users) {
			n++
		}
		return n, r.failed[user]
	}
}

// sendAtRate POSTs /notify at a fixed rate from a pool of workers.
func sendAtRate(ctx context.Context, hc *http.Client, p sendPlan) *sendResult {
	res := &sendResult{failed: make(map[int]map[int64]bool)}
	var mu sync.Mutex
	jobs := make(chan int, p.workers)
	var wg sync.WaitGroup
	for range p.workers {
		wg.Go(func() {
			for i := range jobs {
				user, seq := i%p.users, int64(i/p.users)
				nr, err := postNotify(ctx, hc, p.via(user), user, seq)
				mu.Lock()
				switch {
				case err != nil:
					res.Errors++
					if res.FirstError == "" {
						res.FirstError = err.Error()
					}
					if res.failed[user] == nil {
						res.failed[user] = make(map[int64]bool)
					}
					res.failed[user][seq] = true
				case nr.Receivers == 0:
					res.Accepted++
					res.Offline++
				default:
					res.Accepted++
				}
				mu.Unlock()
			}
		})
	}
	interval := time.Duration(float64(time.Second) / p.rate)
	start := time.Now()
	for i := range p.total {
		due := start.Add(time.Duration(i) * interval)
		if time.Since(start) > p.deadline || ctx.Err() != nil {
			break
		}
		if wait := time.Until(due); wait > 0 {
			time.Sleep(wait)
		}
		jobs <- i
		res.Attempted++
	}
	close(jobs)
	wg.Wait()
	res.Elapsed = time.Since(start)
	return res
}

func postNotify(ctx context.Context, hc *http.Client, base string, user int, seq int64) (notifyResult, error) {
	var nr notifyResult
	u := base + "/notify?user=" + url.QueryEscape(userName(user)) + "&seq=" + strconv.FormatInt(seq, 10)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, nil)
	if err != nil {
		return nr, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nr, err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(&nr); err != nil {
		return nr, fmt.Errorf("notify: %s: %w", resp.Status, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nr, fmt.Errorf("notify: %s: %s", resp.Status, nr.Error)
	}
	return nr, nil
}

// fire asks the node at base to send total notifications to users with
// workers concurrent notifiers, and waits for its answer.
func fire(ctx context.Context, hc *http.Client, base string, users, total, workers int) (fireResult, error) {
	var fr fireResult
	u := fmt.Sprintf("%s/fire?users=%d&n=%d&k=%d", base, users, total, workers)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, nil)
	if err != nil {
		return fr, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return fr, err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(&fr); err != nil {
		return fr, fmt.Errorf("fire: %s: %w", resp.Status, err)
	}
	if resp.StatusCode != http.StatusOK {
		return fr, fmt.Errorf("fire: %s: %s", resp.Status, fr.FirstError)
	}
	return fr, nil
}

// getStatus reads a child's /rss; gc asks it to collect garbage first, so
// that RSS reflects what is live.
func getStatus(ctx context.Context, hc *http.Client, c *child, gc bool) (nodeStatus, error) {
	var st nodeStatus
	u := c.baseURL() + "/rss"
	if gc {
		u += "?gc=1"
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return st, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return st, fmt.Errorf("%s /rss: %s", c.name, resp.Status)
	}
	return st, json.NewDecoder(resp.Body).Decode(&st)
}

// percentile returns the nearest-rank p-th percentile of sorted values.
func percentile(sorted []int64, p float64) int64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(p/100*float64(len(sorted))+0.999999) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}
