package middleware

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/gin-gonic/gin"
)

// MinSecretLen is the shortest secret NewTickets accepts. 32 bytes matches
// the HMAC-SHA256 output size, below which the key is the weakest link.
const MinSecretLen = 32

// MaxTicketUserLen is the longest user key, in bytes, that Issue accepts. It
// keeps tickets small enough to travel in a URL.
const MaxTicketUserLen = 1024

// Ticket layout, before base64url encoding:
//
//	version (1) | expiry, unix ms, big endian (8) | nonce (16) | user length, big endian (4) | user
//
// Every field is fixed-size or length-prefixed, so any user bytes (dots,
// colons, spaces, unicode, NULs) decode unambiguously.
const (
	ticketVersion    byte = 1
	nonceLen              = 16
	payloadHeaderLen      = 1 + 8 + nonceLen + 4
	macLen                = sha256.Size
	ticketSep             = "."
)

// maxTicketLen bounds the input Verify will even look at, so a huge query
// string costs nothing to reject.
var maxTicketLen = b64.EncodedLen(payloadHeaderLen+MaxTicketUserLen) + len(ticketSep) + b64.EncodedLen(macLen)

// b64 is strict so that the unused trailing bits of a part cannot be
// altered; decodeCanonical closes the remaining gap.
var b64 = base64.RawURLEncoding.Strict()

// decodeCanonical decodes s and insists it is the one spelling Issue would
// produce. The standard decoder skips '\r' and '\n' even in strict mode, so
// without the round-trip check a ticket with line breaks inserted into its
// signature would still verify.
func decodeCanonical(s string) ([]byte, bool) {
	b, err := b64.DecodeString(s)
	if err != nil || b64.EncodedLen(len(b)) != len(s) {
		return nil, false
	}
	return b, true
}

// Tickets issues and verifies short-lived signed tickets that carry a user
// key. They exist because browsers cannot set headers on a WebSocket
// handshake: an HTTP endpoint that is already behind the application's auth
// hands the page a ticket, and the page opens the socket with ?ticket=....
//
// A ticket is a bearer token: whoever holds it can connect as its user until
// it expires. It is bound to that user (altering the user breaks the
// signature) but it is not single-use, so keep the TTL short; 30 seconds is a
// sensible default, as the page uses the ticket right after fetching it.
// Tickets never appear in logs written by this package, but they do appear in
// URLs, so keep them out of access logs where you can.
//
// A *Tickets is safe for concurrent use by multiple goroutines, provided Now
// is not changed after it is shared.
type Tickets struct {
	secret []byte
	ttl    time.Duration

	// Now is the clock used for issuing and expiry checks. NewTickets sets
	// it to time.Now; tests may replace it before the Tickets is used, to
	// move time without sleeping.
	Now func() time.Time
}

// NewTickets returns a Tickets that signs with secret and issues tickets
// valid for ttl. It returns an error if secret is shorter than MinSecretLen
// bytes or ttl is not positive. The secret is copied, so the caller may
// reuse its slice. All instances sharing a secret accept each other's
// tickets, which is what lets several servers sit behind one load balancer.
func NewTickets(secret []byte, ttl time.Duration) (*Tickets, error) {
	if len(secret) < MinSecretLen {
		return nil, fmt.Errorf("middleware: ticket secret is %d bytes, need at least %d", len(secret), MinSecretLen)
	}
	if ttl <= 0 {
		return nil, fmt.Errorf("middleware: ticket ttl must be positive, got %v", ttl)
	}
	return &Tickets{
		secret: append([]byte(nil), secret...),
		ttl:    ttl,
		Now:    time.Now,
	}, nil
}

// Issue returns a new ticket for user, valid until the current time plus the
// TTL. The ticket is URL-safe (base64url without padding, plus one '.'), so
// it can go into a query string without escaping.
//
// It returns an error wrapping ErrNoIdentity if user is empty, and a plain
// error if user is longer than MaxTicketUserLen bytes or the system random
// source fails.
func (t *Tickets) Issue(user string) (string, error) {
	ticket, _, err := t.issue(user)
	return ticket, err
}

// issue also returns the expiry so IssueHandler can report exactly what was
// signed rather than recomputing it.
func (t *Tickets) issue(user string) (string, time.Time, error) {
	if user == "" {
		return "", time.Time{}, fmt.Errorf("%w: cannot issue a ticket for an empty user", ErrNoIdentity)
	}
	if len(user) > MaxTicketUserLen {
		return "", time.Time{}, fmt.Errorf("middleware: user is %d bytes, tickets allow at most %d", len(user), MaxTicketUserLen)
	}
	// Millisecond precision: second granularity would shave up to a second
	// off a 30s TTL.
	expires := time.UnixMilli(t.Now().Add(t.ttl).UnixMilli())

	payload := make([]byte, payloadHeaderLen, payloadHeaderLen+len(user))
	payload[0] = ticketVersion
	binary.BigEndian.PutUint64(payload[1:9], uint64(expires.UnixMilli()))
	// The nonce makes two tickets for the same user in the same millisecond
	// differ, so a ticket never reveals whether another was issued.
	if _, err := rand.Read(payload[9 : 9+nonceLen]); err != nil {
		return "", time.Time{}, fmt.Errorf("middleware: reading ticket nonce: %w", err)
	}
	binary.BigEndian.PutUint32(payload[9+nonceLen:payloadHeaderLen], uint32(len(user)))
	payload = append(payload, user...)

	encoded := b64.EncodeToString(payload)
	return encoded + ticketSep + b64.EncodeToString(t.sign(encoded)), expires, nil
}

// sign MACs the encoded text, not the decoded bytes, so Verify authenticates
// exactly what it received before parsing any of it.
func (t *Tickets) sign(encodedPayload string) []byte {
	m := hmac.New(sha256.New, t.secret)
	m.Write([]byte(encodedPayload))
	return m.Sum(nil)
}

// Verify checks ticket and returns the user it was issued for.
//
// It returns an error wrapping ErrTicketInvalid if the ticket is empty,
// malformed, truncated, altered in any way or signed with a different
// secret, and one wrapping ErrTicketExpired if it is authentic but the clock
// has reached its expiry. The signature is checked before anything else, so
// ErrTicketExpired is only ever reported for tickets this secret issued.
func (t *Tickets) Verify(ticket string) (string, error) {
	if ticket == "" {
		return "", fmt.Errorf("%w: empty", ErrTicketInvalid)
	}
	if len(ticket) > maxTicketLen {
		return "", fmt.Errorf("%w: too long", ErrTicketInvalid)
	}
	encoded, macText, ok := strings.Cut(ticket, ticketSep)
	if !ok {
		return "", fmt.Errorf("%w: missing separator", ErrTicketInvalid)
	}
	mac, ok := decodeCanonical(macText)
	if !ok || len(mac) != macLen {
		return "", fmt.Errorf("%w: malformed signature", ErrTicketInvalid)
	}
	if !hmac.Equal(mac, t.sign(encoded)) {
		return "", fmt.Errorf("%w: bad signature", ErrTicketInvalid)
	}

	user, expires, err := parsePayload(encoded)
	if err != nil {
		return "", err
	}
	if !t.Now().Before(expires) {
		return "", fmt.Errorf("%w: expired at %s", ErrTicketExpired, expires.UTC().Format(time.RFC3339))
	}
	return user, nil
}

// parsePayload decodes an already authenticated payload. Failures here mean
// a ticket from an incompatible version signed with the same secret, which
// is still invalid rather than a crash.
func parsePayload(encoded string) (user string, expires time.Time, err error) {
	payload, ok := decodeCanonical(encoded)
	if !ok {
		return "", time.Time{}, fmt.Errorf("%w: malformed payload", ErrTicketInvalid)
	}
	if len(payload) < payloadHeaderLen || payload[0] != ticketVersion {
		return "", time.Time{}, fmt.Errorf("%w: unknown format", ErrTicketInvalid)
	}
	userLen := binary.BigEndian.Uint32(payload[9+nonceLen : payloadHeaderLen])
	if uint64(len(payload)-payloadHeaderLen) != uint64(userLen) || userLen == 0 {
		return "", time.Time{}, fmt.Errorf("%w: bad user length", ErrTicketInvalid)
	}
	expires = time.UnixMilli(int64(binary.BigEndian.Uint64(payload[1:9])))
	return string(payload[payloadHeaderLen:]), expires, nil
}

// FromQuery returns a UserKeyFunc that reads a ticket from the URL query
// parameter param (conventionally "ticket"), verifies it and returns its
// user.
//
// A missing or empty parameter yields an error wrapping ErrNoIdentity; a
// present ticket that fails Verify yields Verify's error (wrapping
// ErrTicketInvalid or ErrTicketExpired).
func (t *Tickets) FromQuery(param string) UserKeyFunc {
	return func(c *gin.Context) (string, error) {
		ticket := c.Query(param)
		if ticket == "" {
			return "", fmt.Errorf("%w: query parameter %q is missing or empty", ErrNoIdentity, param)
		}
		return t.Verify(ticket)
	}
}

// TicketResponse is the JSON body IssueHandler answers with on success.
type TicketResponse struct {
	Ticket string `json:"ticket"`
	// ExpiresAt is the expiry in RFC 3339, UTC, truncated to the second;
	// the ticket itself is valid up to the millisecond after that.
	ExpiresAt string `json:"expires_at"`
}

// IssueHandler returns a handler that issues a ticket for the user reported
// by user. Mount it behind the application's own authentication, e.g. with
// user = FromContext("user"); the handler trusts whatever user returns.
//
// On success it answers 200 with a TicketResponse. If user fails it answers
// 401 with {"error":"unauthorized"}; the underlying error is attached to the
// gin context (c.Errors) for logging, not sent, as it may describe the
// application's auth internals. If issuing fails (e.g. the user key is too
// long) it answers 500 with {"error":"could not issue ticket"}. Responses
// carry Cache-Control: no-store because the ticket is a credential.
func (t *Tickets) IssueHandler(user UserKeyFunc) gin.HandlerFunc {
	return func(c *gin.Context) {
		c.Header("Cache-Control", "no-store")
		key, err := user(c)
		if err == nil && key == "" {
			err = fmt.Errorf("%w: user key function returned an empty key", ErrNoIdentity)
		}
		if err != nil {
			_ = c.Error(err)
			c.AbortWithStatusJSON(http.StatusUnauthorized, gin.H{"error": "unauthorized"})
			return
		}
		ticket, expires, err := t.issue(key)
		if err != nil {
			_ = c.Error(err)
			c.AbortWithStatusJSON(http.StatusInternalServerError, gin.H{"error": "could not issue ticket"})
			return
		}
		c.JSON(http.StatusOK, TicketResponse{
			Ticket:    ticket,
			ExpiresAt: expires.UTC().Format(time.RFC3339),
		})
	}
}
