package middleware

import (
	"errors"
	"fmt"
	"strings"

	"github.com/gin-gonic/gin"
)

// UserKeyFunc reports which user a request belongs to. It returns a
// non-empty user key, or an error (and an empty key) when the request carries
// no acceptable identity.
//
// It is an alias rather than a defined type so that values from this package
// can be passed to the root wsnotify package, which must not be imported here,
// without any conversion.
type UserKeyFunc = func(c *gin.Context) (string, error)

// Sentinel errors. Errors returned by this package wrap exactly one of them,
// with detail added, so compare with errors.Is rather than ==.
var (
	// ErrNoIdentity means the request carried no identity at all (a missing
	// or empty header, parameter, context value or ticket) or one of the
	// wrong type.
	ErrNoIdentity = errors.New("middleware: request carries no user identity")

	// ErrTicketInvalid means a ticket was present but is not one this
	// Tickets issued: malformed, truncated, tampered with, or signed with
	// another secret.
	ErrTicketInvalid = errors.New("middleware: ticket is invalid")

	// ErrTicketExpired means the ticket is authentic but its lifetime is
	// over; the client should fetch a new one.
	ErrTicketExpired = errors.New("middleware: ticket has expired")
)

// FromHeader returns a UserKeyFunc that uses the value of the request header
// name, with surrounding whitespace removed.
//
// A missing or blank header yields an error wrapping ErrNoIdentity. Only use
// it where the header cannot be forged by the client, e.g. behind a gateway
// that authenticates the caller and overwrites the header.
func FromHeader(name string) UserKeyFunc {
	return func(c *gin.Context) (string, error) {
		user := strings.TrimSpace(c.GetHeader(name))
		if user == "" {
			return "", fmt.Errorf("%w: header %q is missing or empty", ErrNoIdentity, name)
		}
		return user, nil
	}
}

// FromQuery returns a UserKeyFunc that uses the value of the URL query
// parameter param, with surrounding whitespace removed.
//
// It is suitable for demos only: nothing proves the value, so anyone can
// connect as any user by editing the URL. For real browser clients use
// [Tickets.FromQuery]. A missing or blank parameter yields an error wrapping
// ErrNoIdentity.
func FromQuery(param string) UserKeyFunc {
	return func(c *gin.Context) (string, error) {
		user := strings.TrimSpace(c.Query(param))
		if user == "" {
			return "", fmt.Errorf("%w: query parameter %q is missing or empty", ErrNoIdentity, param)
		}
		return user, nil
	}
}

// FromContext returns a UserKeyFunc that uses the value your own
// authentication middleware stored with c.Set(key, user).
//
// The value must be a non-empty string; it is used as is, because the app
// that set it is the authority on its format. A missing key, an empty string
// or a value of another type yields an error wrapping ErrNoIdentity. The
// wrong-type case is reported separately in the message because it is a
// wiring bug in the application, not a client problem.
func FromContext(key string) UserKeyFunc {
	return func(c *gin.Context) (string, error) {
		v, ok := c.Get(key)
		if !ok {
			return "", fmt.Errorf("%w: context key %q is not set", ErrNoIdentity, key)
		}
		user, ok := v.(string)
		if !ok {
			return "", fmt.Errorf("%w: context key %q holds %T, want string", ErrNoIdentity, key, v)
		}
		if user == "" {
			return "", fmt.Errorf("%w: context key %q holds an empty string", ErrNoIdentity, key)
		}
		return user, nil
	}
}
