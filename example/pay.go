package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/redis/go-redis/v9"

	"github.com/wsnotify/wsnotify"
)

// Demo limits. The amount cap catches a client that sends units instead of
// cents; the length caps keep Redis keys and frames small.
const (
	startBalanceCents = 10_000
	maxAmountCents    = 1_000_000
	maxUserLen        = wsnotify.MaxUserKeyLength
	maxFieldLen       = 128
	maxPayBody        = 4 << 10
	orderTTL          = 24 * time.Hour
)

// chargeScript debits a balance and records the order in one atomic step, so
// a retried request (same order_id) can never debit twice, even when two
// copies race on different nodes.
//
// KEYS[1] balance key, KEYS[2] order key.
// ARGV[1] amount, ARGV[2] start balance, ARGV[3] TTL in seconds,
// ARGV[4] fingerprint of the request, to tell a retry from a reused order_id.
//
// Returns {"new", status, balance}, {"replay", status, balance, delivered,
// notify_error} or {"conflict"}.
//
// Both keys go to one script, so on Redis Cluster they would need a shared
// hash tag; the demo runs on a single Redis.
var chargeScript = redis.NewScript(`
local order = redis.call('HMGET', KEYS[2], 'fingerprint', 'status', 'balance_cents', 'delivered', 'notify_error')
if order[1] then
  if order[1] ~= ARGV[4] then return {'conflict'} end
  return {'replay', order[2], order[3], order[4] or '0', order[5] or ''}
end
redis.call('SET', KEYS[1], ARGV[2], 'NX')
local balance = tonumber(redis.call('GET', KEYS[1]))
local status = 'declined'
if balance >= tonumber(ARGV[1]) then
  balance = redis.call('DECRBY', KEYS[1], ARGV[1])
  status = 'paid'
end
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('HSET', KEYS[2], 'fingerprint', ARGV[4], 'status', status, 'balance_cents', tostring(balance))
redis.call('EXPIRE', KEYS[2], ARGV[3])
return {'new', status, tostring(balance)}
`)

type payRequest struct {
	User        string `json:"user"`
	AmountCents int64  `json:"amount_cents"`
	Merchant    string `json:"merchant"`
	OrderID     string `json:"order_id"`
}

func (p *payRequest) validate() error {
	p.User = strings.TrimSpace(p.User) // as middleware.FromQuery does for the socket
	switch {
	case p.User == "":
		return errors.New("user is required")
	case len(p.User) > maxUserLen:
		return fmt.Errorf("user must be at most %d bytes", maxUserLen)
	case p.Merchant == "":
		return errors.New("merchant is required")
	case len(p.Merchant) > maxFieldLen:
		return fmt.Errorf("merchant must be at most %d bytes", maxFieldLen)
	case p.OrderID == "":
		return errors.New("order_id is required")
	case len(p.OrderID) > maxFieldLen:
		return fmt.Errorf("order_id must be at most %d bytes", maxFieldLen)
	case p.AmountCents <= 0:
		return errors.New("amount_cents must be a positive integer")
	case p.AmountCents > maxAmountCents:
		return fmt.Errorf("amount_cents must be at most %d", maxAmountCents)
	}
	return nil
}

// payResponse is the answer to POST /api/pay; a replayed order gets the very
// same body as the first request.
type payResponse struct {
	Error        string `json:"error,omitempty"`
	OrderID      string `json:"order_id"`
	Status       string `json:"status"`
	BalanceCents int64  `json:"balance_cents"`
	Delivered    int64  `json:"delivered"`
	NotifyError  string `json:"notify_error,omitempty"`
}

// paymentEvent is the data of the "payment" notification the user's sockets
// receive.
type paymentEvent struct {
	OrderID      string `json:"order_id"`
	Status       string `json:"status"`
	AmountCents  int64  `json:"amount_cents"`
	Merchant     string `json:"merchant"`
	BalanceCents int64  `json:"balance_cents"`
	Node         string `json:"node"` // the node that took the payment
}

// ledger keeps the demo's balances and orders in Redis, under the prefix so
// that several demos (or tests) can share one Redis.
type ledger struct {
	rdb    redis.UniversalClient
	prefix string
}

func (l ledger) balanceKey(user string) string { return l.prefix + ":demo:balance:" + user }
func (l ledger) orderKey(id string) string     { return l.prefix + ":demo:order:" + id }

func (l ledger) balance(ctx context.Context, user string) (int64, error) {
	n, err := l.rdb.Get(ctx, l.balanceKey(user)).Int64()
	if errors.Is(err, redis.Nil) {
		return startBalanceCents, nil
	}
	return n, err
}

var errOrderConflict = errors.New("order_id was already used for a different payment")

// charge runs chargeScript. replayed tells that the order had been processed
// before; resp then holds the first answer.
func (l ledger) charge(ctx context.Context, req payRequest) (resp payResponse, replayed bool, err error) {
	fingerprint, _ := json.Marshal([]any{req.User, req.Merchant, req.AmountCents})
	out, err := chargeScript.Run(ctx, l.rdb,
		[]string{l.balanceKey(req.User), l.orderKey(req.OrderID)},
		req.AmountCents, startBalanceCents, int64(orderTTL/time.Second), fingerprint,
	).StringSlice()
	if err != nil {
		return resp, false, err
	}
	if out[0] == "conflict" {
		return resp, false, errOrderConflict
	}
	resp = payResponse{OrderID: req.OrderID, Status: out[1]}
	if resp.BalanceCents, err = strconv.ParseInt(out[2], 10, 64); err != nil {
		return resp, false, err
	}
	if out[0] == "new" {
		return resp, false, nil
	}
	resp.Delivered, _ = strconv.ParseInt(out[3], 10, 64)
	resp.NotifyError = out[4]
	return resp, true, nil
}

// recordDelivery completes the order record, so that a replay answers
// exactly what the first request did.
func (l ledger) recordDelivery(ctx context.Context, resp payResponse) error {
	return l.rdb.HSet(ctx, l.orderKey(resp.OrderID),
		"delivered", resp.Delivered, "notify_error", resp.NotifyError).Err()
}

// pay handles POST /api/pay: charge the user, then push the outcome to the
// user's sockets through whichever node holds them.
func (n *node) pay(c *gin.Context) {
	var req payRequest
	if err := decodeStrict(c, &req); err != nil {
		c.JSON(http.StatusBadRequest, gin.H{"error": err.Error()})
		return
	}
	if err := req.validate(); err != nil {
		c.JSON(http.StatusBadRequest, gin.H{"error": err.Error()})
		return
	}

	resp, replayed, err := n.ledger.charge(c.Request.Context(), req)
	switch {
	case errors.Is(err, errOrderConflict):
		c.JSON(http.StatusConflict, gin.H{"error": err.Error(), "order_id": req.OrderID})
		return
	case err != nil:
		c.JSON(http.StatusServiceUnavailable, gin.H{"error": "payment store unavailable: " + err.Error()})
		return
	}

	// A retried order whose first notification failed tries it again: the
	// idempotency key makes sure the user is told once, however often the
	// scanner retries.
	if !replayed || resp.NotifyError != "" {
		resp = n.notifyPayment(c, req, resp)
	}

	status := http.StatusOK
	if resp.Status != "paid" {
		status = http.StatusPaymentRequired
		resp.Error = "insufficient funds"
	}
	c.JSON(status, resp)
}

// notifyPayment tells the user the outcome and records what it reached.
func (n *node) notifyPayment(c *gin.Context, req payRequest, resp payResponse) payResponse {
	event := paymentEvent{
		OrderID:      resp.OrderID,
		Status:       resp.Status,
		AmountCents:  req.AmountCents,
		Merchant:     req.Merchant,
		BalanceCents: resp.BalanceCents,
		Node:         n.name,
	}
	// This is the whole point of wsnotify: the user's socket may live on any
	// node; Notify reaches it through Redis.
	res, err := wsnotify.Notify(c, req.User, event,
		wsnotify.WithType("payment"), wsnotify.WithIdempotencyKey(resp.OrderID))
	resp.Delivered, resp.NotifyError = res.Nodes, ""
	if err != nil {
		// The ledger has already been updated: report the outcome anyway,
		// and say that the user could not be told.
		resp.NotifyError = "payment recorded, but the user was not notified: " + err.Error()
	}
	if err := n.ledger.recordDelivery(c.Request.Context(), resp); err != nil {
		n.logger.Warn("recording delivery of a payment", "order_id", resp.OrderID, "err", err)
	}
	return resp
}

// decodeStrict reads one JSON object into v, refusing unknown fields (a typo
// like "amount" would otherwise silently charge 0) and trailing data.
func decodeStrict(c *gin.Context, v any) error {
	dec := json.NewDecoder(http.MaxBytesReader(c.Writer, c.Request.Body, maxPayBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		if errors.Is(err, io.EOF) {
			return errors.New("empty body: want a JSON object")
		}
		return fmt.Errorf("invalid JSON body: %w", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return errors.New("invalid JSON body: data after the JSON object")
	}
	return nil
}
