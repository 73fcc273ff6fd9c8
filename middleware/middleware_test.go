package middleware

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gin-gonic/gin"
)

func TestMain(m *testing.M) {
	// Test mode keeps gin's debug banner out of test and example output.
	gin.SetMode(gin.TestMode)
	os.Exit(m.Run())
}

var (
	testSecret  = []byte("0123456789abcdef0123456789abcdef")
	otherSecret = []byte("fedcba9876543210fedcba9876543210")
	epoch       = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
)

// fakeClock is read by Tickets.Now; tests move it by assigning to now.
type fakeClock struct{ now time.Time }

func (f *fakeClock) Now() time.Time { return f.now }

func newTestTickets(t *testing.T, secret []byte) (*Tickets, *fakeClock) {
	t.Helper()
	tk, err := NewTickets(secret, 30*time.Second)
	if err != nil {
		t.Fatalf("NewTickets: %v", err)
	}
	clock := &fakeClock{now: epoch}
	tk.Now = clock.Now
	return tk, clock
}

func issue(t *testing.T, tk *Tickets, user string) string {
	t.Helper()
	ticket, err := tk.Issue(user)
	if err != nil {
		t.Fatalf("Issue(%q): %v", user, err)
	}
	return ticket
}

// contextFor builds a gin context around req without running a router, which
// is all a UserKeyFunc needs.
func contextFor(req *http.Request) *gin.Context {
	c, _ := gin.CreateTestContext(httptest.NewRecorder())
	c.Request = req
	return c
}

// checkResult asserts either the exact user or an error matching wantErr.
func checkResult(t *testing.T, gotUser string, gotErr error, wantUser string, wantErr error) {
	t.Helper()
	if wantErr != nil {
		if !errors.Is(gotErr, wantErr) {
			t.Fatalf("err = %v, want errors.Is(err, %v)", gotErr, wantErr)
		}
		if gotUser != "" {
			t.Fatalf("user = %q alongside error, want empty", gotUser)
		}
		return
	}
	if gotErr != nil {
		t.Fatalf("unexpected error: %v", gotErr)
	}
	if gotUser != wantUser {
		t.Fatalf("user = %q, want %q", gotUser, wantUser)
	}
}

func TestFromHeader(t *testing.T) {
	tests := []struct {
		name     string
		header   map[string]string
		wantUser string
		wantErr  error
	}{
		{"present", map[string]string{"X-User": "alice"}, "alice", nil},
		{"trimmed", map[string]string{"X-User": "  alice \t"}, "alice", nil},
		{"canonicalised name", map[string]string{"x-user": "bob"}, "bob", nil},
		{"missing", nil, "", ErrNoIdentity},
		{"empty", map[string]string{"X-User": ""}, "", ErrNoIdentity},
		{"blank", map[string]string{"X-User": "   "}, "", ErrNoIdentity},
		{"other header", map[string]string{"X-Other": "alice"}, "", ErrNoIdentity},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := httptest.NewRequest(http.MethodGet, "/ws", nil)
			for k, v := range tt.header {
				req.Header.Set(k, v)
			}
			user, err := FromHeader("X-User")(contextFor(req))
			checkResult(t, user, err, tt.wantUser, tt.wantErr)
		})
	}
}

func TestFromQuery(t *testing.T) {
	tests := []struct {
		name     string
		target   string
		wantUser string
		wantErr  error
	}{
		{"present", "/ws?user=alice", "alice", nil},
		{"escaped", "/ws?user=a%20b%C3%BC", "a bü", nil},
		{"trimmed", "/ws?user=%20alice%20", "alice", nil},
		{"missing", "/ws", "", ErrNoIdentity},
		{"empty", "/ws?user=", "", ErrNoIdentity},
		{"other param", "/ws?name=alice", "", ErrNoIdentity},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := httptest.NewRequest(http.MethodGet, tt.target, nil)
			user, err := FromQuery("user")(contextFor(req))
			checkResult(t, user, err, tt.wantUser, tt.wantErr)
		})
	}
}

func TestFromContext(t *testing.T) {
	tests := []struct {
		name     string
		set      bool
		value    any
		wantUser string
		wantErr  error
		wantMsg  string // substring of the error message, if any
	}{
		{name: "string", set: true, value: "alice", wantUser: "alice"},
		{name: "kept verbatim", set: true, value: " alice ", wantUser: " alice "},
		{name: "missing", wantErr: ErrNoIdentity, wantMsg: "not set"},
		{name: "empty string", set: true, value: "", wantErr: ErrNoIdentity, wantMsg: "empty"},
		{name: "int", set: true, value: 42, wantErr: ErrNoIdentity, wantMsg: "holds int"},
		{name: "nil", set: true, value: nil, wantErr: ErrNoIdentity, wantMsg: "holds <nil>"},
		{name: "byte slice", set: true, value: []byte("alice"), wantErr: ErrNoIdentity, wantMsg: "holds []uint8"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := contextFor(httptest.NewRequest(http.MethodGet, "/ws", nil))
			if tt.set {
				c.Set("user", tt.value)
			}
			user, err := FromContext("user")(c)
			checkResult(t, user, err, tt.wantUser, tt.wantErr)
			if tt.wantMsg != "" && !strings.Contains(err.Error(), tt.wantMsg) {
				t.Fatalf("err = %q, want it to mention %q", err, tt.wantMsg)
			}
		})
	}
}

func TestNewTickets(t *testing.T) {
	tests := []struct {
		name    string
		secret  []byte
		ttl     time.Duration
		wantErr bool
	}{
		{"valid", testSecret, 30 * time.Second, false},
		{"long secret", bytes.Repeat([]byte{7}, 64), time.Millisecond, false},
		{"secret one byte short", testSecret[:31], 30 * time.Second, true},
		{"nil secret", nil, 30 * time.Second, true},
		{"zero ttl", testSecret, 0, true},
		{"negative ttl", testSecret, -time.Second, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tk, err := NewTickets(tt.secret, tt.ttl)
			if tt.wantErr {
				if err == nil || tk != nil {
					t.Fatalf("NewTickets = (%v, %v), want (nil, error)", tk, err)
				}
				return
			}
			if err != nil || tk == nil || tk.Now == nil {
				t.Fatalf("NewTickets = (%v, %v), want usable Tickets", tk, err)
			}
		})
	}
}

func TestNewTicketsCopiesSecret(t *testing.T) {
	secret := append([]byte(nil), testSecret...)
	tk, _ := newTestTickets(t, secret)
	ticket := issue(t, tk, "alice")
	secret[0] ^= 0xff // the caller scribbling over its buffer must not matter
	user, err := tk.Verify(ticket)
	checkResult(t, user, err, "alice", nil)
}

func TestTicketRoundTrip(t *testing.T) {
	users := []struct{ name, user string }{
		{"plain", "alice"},
		{"dot", "a.b"},
		{"colon and space", "a:b c"},
		{"unicode", "ü"},
		{"300 bytes", strings.Repeat("x", 300)},
		{"max length", strings.Repeat("é", MaxTicketUserLen/2)},
		{"looks like a ticket", "AAAA.BBBB"},
		{"padding chars", "a=b=="},
		{"surrounding spaces kept", "  alice  "},
		{"NUL and newline", "a\x00b\nc"},
		{"invalid utf-8", "\xff\xfe"},
	}
	tk, _ := newTestTickets(t, testSecret)
	for _, tt := range users {
		t.Run(tt.name, func(t *testing.T) {
			ticket := issue(t, tk, tt.user)
			if esc := url.QueryEscape(ticket); esc != ticket {
				t.Fatalf("ticket %q is not URL-safe (escapes to %q)", ticket, esc)
			}
			if strings.Contains(ticket, "=") {
				t.Fatalf("ticket %q contains padding", ticket)
			}
			user, err := tk.Verify(ticket)
			checkResult(t, user, err, tt.user, nil)
		})
	}
}

func TestIssueRejects(t *testing.T) {
	tk, _ := newTestTickets(t, testSecret)
	if _, err := tk.Issue(""); !errors.Is(err, ErrNoIdentity) {
		t.Fatalf("Issue(\"\") err = %v, want ErrNoIdentity", err)
	}
	if ticket, err := tk.Issue(strings.Repeat("x", MaxTicketUserLen+1)); err == nil || ticket != "" {
		t.Fatalf("Issue(too long) = (%q, %v), want (\"\", error)", ticket, err)
	}
}

func TestIssueUsesFreshNonce(t *testing.T) {
	tk, _ := newTestTickets(t, testSecret)
	a, b := issue(t, tk, "alice"), issue(t, tk, "alice")
	if a == b {
		t.Fatalf("two tickets for the same user at the same instant are identical: %q", a)
	}
}

// splitTicket returns the decoded payload of ticket and its signature text.
func splitTicket(t *testing.T, ticket string) (payload []byte, macText string) {
	t.Helper()
	enc, macText, ok := strings.Cut(ticket, ".")
	if !ok {
		t.Fatalf("ticket %q has no separator", ticket)
	}
	payload, err := b64.DecodeString(enc)
	if err != nil {
		t.Fatalf("decoding payload of %q: %v", ticket, err)
	}
	return payload, macText
}

// withUser rebuilds payload with a different user and a matching length
// prefix, i.e. the best forgery an attacker without the secret can make.
func withUser(payload []byte, user string) []byte {
	out := append([]byte(nil), payload[:payloadHeaderLen]...)
	binary.BigEndian.PutUint32(out[9+nonceLen:], uint32(len(user)))
	return append(out, user...)
}

// flipChar replaces the character at i with a different base64url character.
func flipChar(s string, i int) string {
	repl := byte('A')
	if s[i] == 'A' {
		repl = 'B'
	}
	return s[:i] + string(repl) + s[i+1:]
}

func TestTicketTampered(t *testing.T) {
	tk, _ := newTestTickets(t, testSecret)
	attacker, _ := newTestTickets(t, otherSecret)
	ticket := issue(t, tk, "alice")
	enc, macText, _ := strings.Cut(ticket, ".")
	payload, _ := splitTicket(t, ticket)

	tests := []struct {
		name   string
		ticket string
	}{
		{"signed with another secret", issue(t, attacker, "alice")},
		{"user changed, same length", b64.EncodeToString(withUser(payload, "bobby")) + "." + macText},
		{"user changed, other length", b64.EncodeToString(withUser(payload, "root")) + "." + macText},
		{"user changed and re-signed with another secret", func() string {
			e := b64.EncodeToString(withUser(payload, "bob"))
			return e + "." + b64.EncodeToString(attacker.sign(e))
		}()},
		{"payload first char", flipChar(enc, 0) + "." + macText},
		{"payload expiry char", flipChar(enc, 3) + "." + macText},
		{"payload nonce char", flipChar(enc, 20) + "." + macText},
		{"payload last char", flipChar(enc, len(enc)-1) + "." + macText},
		{"signature first char", enc + "." + flipChar(macText, 0)},
		{"signature middle char", enc + "." + flipChar(macText, len(macText)/2)},
		{"signature last char", enc + "." + flipChar(macText, len(macText)-1)},
		{"parts swapped", macText + "." + enc},
		{"extra part", ticket + ".AAAA"},
		{"padding added", ticket + "="},
		{"leading space", " " + ticket},
		{"trailing newline", ticket + "\n"},
		{"CRLF inside signature", enc + "." + macText[:10] + "\r\n" + macText[10:]},
		{"newline inside payload", enc[:10] + "\n" + enc[10:] + "." + macText},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.ticket == ticket {
				t.Fatalf("case %d did not alter the ticket", i)
			}
			user, err := tk.Verify(tt.ticket)
			checkResult(t, user, err, "", ErrTicketInvalid)
		})
	}
}

func TestTicketEveryByteMatters(t *testing.T) {
	// Exhaustive version of the flip cases above: no single character of a
	// ticket may change without invalidating it.
	tk, _ := newTestTickets(t, testSecret)
	ticket := issue(t, tk, "a:b c")
	for i := range ticket {
		if ticket[i] == '.' {
			continue
		}
		if _, err := tk.Verify(flipChar(ticket, i)); !errors.Is(err, ErrTicketInvalid) {
			t.Fatalf("flipping char %d: err = %v, want ErrTicketInvalid", i, err)
		}
	}
}

func TestTicketMalformed(t *testing.T) {
	tk, _ := newTestTickets(t, testSecret)
	ticket := issue(t, tk, "alice")
	enc, macText, _ := strings.Cut(ticket, ".")
	payload, _ := splitTicket(t, ticket)

	// Correctly signed but structurally wrong payloads: only reachable by
	// someone holding the secret (e.g. a future format), and still rejected.
	signed := func(p []byte) string {
		e := b64.EncodeToString(p)
		return e + "." + b64.EncodeToString(tk.sign(e))
	}
	wrongVersion := append([]byte(nil), payload...)
	wrongVersion[0] = 2
	longerLen := append([]byte(nil), payload...)
	binary.BigEndian.PutUint32(longerLen[9+nonceLen:], uint32(len("alice")+1))

	tests := []struct {
		name   string
		ticket string
	}{
		{"empty", ""},
		{"garbage", "not-a-ticket"},
		{"only separator", "."},
		{"only payload", enc},
		{"payload and separator", enc + "."},
		{"only signature", "." + macText},
		{"truncated by one", ticket[:len(ticket)-1]},
		{"truncated in half", ticket[:len(ticket)/2]},
		{"signature truncated to 31 bytes", enc + "." + b64.EncodeToString(make([]byte, 31))},
		{"non-base64 chars", "!!!!.????"},
		{"standard base64 alphabet", strings.NewReplacer("-", "+", "_", "/").Replace(ticket) + "+/"},
		{"huge", strings.Repeat("A", maxTicketLen+1)},
		{"signed, wrong version", signed(wrongVersion)},
		{"signed, header only", signed(payload[:payloadHeaderLen])},
		{"signed, short header", signed(payload[:payloadHeaderLen-1])},
		{"signed, length prefix too big", signed(longerLen)},
		{"signed, trailing byte", signed(append(append([]byte(nil), payload...), 'x'))},
		{"signed, empty payload", signed(nil)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			user, err := tk.Verify(tt.ticket)
			checkResult(t, user, err, "", ErrTicketInvalid)
		})
	}
}

func TestTicketExpiry(t *testing.T) {
	tests := []struct {
		name    string
		advance time.Duration
		wantErr error
	}{
		{"at issue", 0, nil},
		{"one ms before expiry", 30*time.Second - time.Millisecond, nil},
		{"at expiry", 30 * time.Second, ErrTicketExpired},
		{"an hour later", time.Hour, ErrTicketExpired},
		{"clock went backwards", -time.Hour, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tk, clock := newTestTickets(t, testSecret)
			ticket := issue(t, tk, "alice")
			clock.now = epoch.Add(tt.advance)
			user, err := tk.Verify(ticket)
			checkResult(t, user, err, "alice", tt.wantErr)
		})
	}
}

func TestTicketExpiredAndTamperedIsInvalid(t *testing.T) {
	// The signature is checked first, so a forged ticket never learns that
	// its (fake) expiry passed.
	tk, clock := newTestTickets(t, testSecret)
	ticket := issue(t, tk, "alice")
	clock.now = epoch.Add(time.Hour)
	if _, err := tk.Verify(flipChar(ticket, len(ticket)-1)); !errors.Is(err, ErrTicketInvalid) || errors.Is(err, ErrTicketExpired) {
		t.Fatalf("err = %v, want ErrTicketInvalid only", err)
	}
}

func TestTicketsFromQuery(t *testing.T) {
	tk, _ := newTestTickets(t, testSecret)
	valid := issue(t, tk, "a:b c")
	// Same secret, but its clock is an hour behind, so its ticket has
	// already expired by tk's clock.
	pastTk, pastClock := newTestTickets(t, testSecret)
	pastClock.now = epoch.Add(-time.Hour)
	expired := issue(t, pastTk, "alice")
	forger, _ := newTestTickets(t, otherSecret)
	forged := issue(t, forger, "alice")

	tests := []struct {
		name     string
		query    url.Values
		wantUser string
		wantErr  error
	}{
		{"valid", url.Values{"ticket": {valid}}, "a:b c", nil},
		{"missing", nil, "", ErrNoIdentity},
		{"empty", url.Values{"ticket": {""}}, "", ErrNoIdentity},
		{"garbage", url.Values{"ticket": {"garbage"}}, "", ErrTicketInvalid},
		{"tampered", url.Values{"ticket": {flipChar(valid, 5)}}, "", ErrTicketInvalid},
		{"other secret", url.Values{"ticket": {forged}}, "", ErrTicketInvalid},
		{"expired", url.Values{"ticket": {expired}}, "", ErrTicketExpired},
		{"wrong parameter", url.Values{"t": {valid}}, "", ErrNoIdentity},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := httptest.NewRequest(http.MethodGet, "/ws?"+tt.query.Encode(), nil)
			user, err := tk.FromQuery("ticket")(contextFor(req))
			checkResult(t, user, err, tt.wantUser, tt.wantErr)
		})
	}
}

func TestIssueHandler(t *testing.T) {
	tests := []struct {
		name       string
		userFunc   UserKeyFunc
		wantStatus int
		wantBody   string // exact body for failures; ignored on success
		wantUser   string
	}{
		{
			name:       "authenticated",
			userFunc:   func(*gin.Context) (string, error) { return "alice", nil },
			wantStatus: http.StatusOK,
			wantUser:   "alice",
		},
		{
			name:       "odd user",
			userFunc:   func(*gin.Context) (string, error) { return "ü.a:b c", nil },
			wantStatus: http.StatusOK,
			wantUser:   "ü.a:b c",
		},
		{
			name:       "user func fails",
			userFunc:   func(*gin.Context) (string, error) { return "", errors.New("session db down") },
			wantStatus: http.StatusUnauthorized,
			wantBody:   `{"error":"unauthorized"}`,
		},
		{
			name:       "user func returns empty key without error",
			userFunc:   func(*gin.Context) (string, error) { return "", nil },
			wantStatus: http.StatusUnauthorized,
			wantBody:   `{"error":"unauthorized"}`,
		},
		{
			name:       "user too long to ticket",
			userFunc:   func(*gin.Context) (string, error) { return strings.Repeat("x", MaxTicketUserLen+1), nil },
			wantStatus: http.StatusInternalServerError,
			wantBody:   `{"error":"could not issue ticket"}`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tk, _ := newTestTickets(t, testSecret)
			r := gin.New()
			r.GET("/ws-ticket", tk.IssueHandler(tt.userFunc))
			rec := httptest.NewRecorder()
			r.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/ws-ticket", nil))

			if rec.Code != tt.wantStatus {
				t.Fatalf("status = %d, want %d (body %s)", rec.Code, tt.wantStatus, rec.Body)
			}
			if got := rec.Header().Get("Cache-Control"); got != "no-store" {
				t.Fatalf("Cache-Control = %q, want no-store", got)
			}
			if got := rec.Header().Get("Content-Type"); got != "application/json; charset=utf-8" {
				t.Fatalf("Content-Type = %q", got)
			}
			if tt.wantStatus != http.StatusOK {
				if rec.Body.String() != tt.wantBody {
					t.Fatalf("body = %s, want %s", rec.Body, tt.wantBody)
				}
				return
			}
			var body map[string]string
			if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
				t.Fatalf("decoding %s: %v", rec.Body, err)
			}
			if len(body) != 2 {
				t.Fatalf("body has keys %v, want exactly ticket and expires_at", body)
			}
			if got, want := body["expires_at"], "2030-01-02T03:04:35Z"; got != want {
				t.Fatalf("expires_at = %q, want %q", got, want)
			}
			user, err := tk.Verify(body["ticket"])
			checkResult(t, user, err, tt.wantUser, nil)
		})
	}
}

func TestIssueHandlerBehindAuthEndToEnd(t *testing.T) {
	// The intended wiring: app auth sets the user, IssueHandler reads it via
	// FromContext, the socket route accepts the ticket via FromQuery.
	tk, clock := newTestTickets(t, testSecret)
	r := gin.New()
	auth := func(c *gin.Context) {
		if c.GetHeader("Authorization") == "Bearer good" {
			c.Set("user", "alice")
		}
	}
	r.GET("/ws-ticket", auth, tk.IssueHandler(FromContext("user")))
	r.GET("/ws", func(c *gin.Context) {
		user, err := tk.FromQuery("ticket")(c)
		if err != nil {
			c.String(http.StatusUnauthorized, "denied")
			return
		}
		c.String(http.StatusOK, "hello "+user)
	})

	get := func(target, authz string) *httptest.ResponseRecorder {
		req := httptest.NewRequest(http.MethodGet, target, nil)
		if authz != "" {
			req.Header.Set("Authorization", authz)
		}
		rec := httptest.NewRecorder()
		r.ServeHTTP(rec, req)
		return rec
	}

	if rec := get("/ws-ticket", "Bearer bad"); rec.Code != http.StatusUnauthorized {
		t.Fatalf("unauthenticated ticket request: status %d", rec.Code)
	}
	rec := get("/ws-ticket", "Bearer good")
	var resp TicketResponse
	if err := json.Unmarshal(rec.Body.Bytes(), &resp); err != nil || rec.Code != http.StatusOK {
		t.Fatalf("ticket request: status %d body %s err %v", rec.Code, rec.Body, err)
	}
	if rec := get("/ws?ticket="+resp.Ticket, ""); rec.Code != http.StatusOK || rec.Body.String() != "hello alice" {
		t.Fatalf("connect with ticket: %d %q", rec.Code, rec.Body)
	}
	clock.now = epoch.Add(31 * time.Second)
	if rec := get("/ws?ticket="+resp.Ticket, ""); rec.Code != http.StatusUnauthorized {
		t.Fatalf("connect with expired ticket: %d %q", rec.Code, rec.Body)
	}
}

func TestTicketsConcurrentUse(t *testing.T) {
	// Run under -race: a shared Tickets must not need external locking.
	tk, _ := newTestTickets(t, testSecret)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			want := fmt.Sprintf("user-%d", g)
			for range 100 {
				ticket, err := tk.Issue(want)
				if err == nil {
					var got string
					got, err = tk.Verify(ticket)
					if err == nil && got != want {
						err = fmt.Errorf("got %q, want %q", got, want)
					}
				}
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestErrorsAreDistinct(t *testing.T) {
	sentinels := []error{ErrNoIdentity, ErrTicketInvalid, ErrTicketExpired}
	for i, a := range sentinels {
		for j, b := range sentinels {
			if (i == j) != errors.Is(a, b) {
				t.Fatalf("errors.Is(%v, %v) = %v", a, b, errors.Is(a, b))
			}
		}
	}
}
