package wsnotify

import "errors"

// Errors returned by the hub. Test for them with errors.Is: a returned error
// may wrap one of these together with the underlying cause.
var (
	// ErrClosed is returned by every call on a hub after Close has begun.
	ErrClosed = errors.New("wsnotify: hub closed")

	// ErrInvalidUserKey is returned for an empty user key or one longer than
	// MaxUserKeyLength bytes.
	ErrInvalidUserKey = errors.New("wsnotify: invalid user key")

	// ErrInvalidType is returned for an event type that is empty, longer than
	// 64 bytes, or holds characters outside [A-Za-z0-9._:-].
	ErrInvalidType = errors.New("wsnotify: invalid event type")

	// ErrInvalidPayload is returned when the payload cannot be encoded as JSON,
	// or a json.RawMessage payload is not valid JSON.
	ErrInvalidPayload = errors.New("wsnotify: invalid payload")

	// ErrNoHub is returned by the package-level Notify when the gin context
	// carries no hub: the route is not under hub.Middleware().
	ErrNoHub = errors.New("wsnotify: no hub in the gin context; add r.Use(hub.Middleware())")

	// ErrUnavailable wraps a failure to reach Redis (refused, timed out,
	// deadline exceeded). Redis did not confirm the call: a notification cut
	// off by a timeout may or may not have been stored. Retry it with
	// WithIdempotencyKey, or fall back.
	ErrUnavailable = errors.New("wsnotify: redis unavailable")
)
