package wsnotify

import (
	"fmt"
	"strconv"
	"strings"
)

// MaxUserKeyLength is the longest user key, in bytes, that the hub accepts.
const MaxUserKeyLength = 256

// validateUserKey accepts any bytes: keys only ever become the tail of an
// exact channel name (never a pattern), so '*', '?', '[' or ':' in a key
// cannot reach another user's channel.
func validateUserKey(user string) error {
	if user == "" {
		return fmt.Errorf("%w: empty", ErrInvalidUserKey)
	}
	if len(user) > MaxUserKeyLength {
		return fmt.Errorf("%w: %d bytes, at most %d", ErrInvalidUserKey, len(user), MaxUserKeyLength)
	}
	return nil
}

// validateType keeps event types to a charset that needs no JSON escaping,
// so the envelope can be assembled without an encoder.
func validateType(t string) error {
	if t == "" || len(t) > 64 {
		return fmt.Errorf("%w: %q must be 1 to 64 bytes", ErrInvalidType, t)
	}
	for i := 0; i < len(t); i++ {
		c := t[i]
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
			c == '.' || c == '_' || c == ':' || c == '-'
		if !ok {
			return fmt.Errorf("%w: %q has a character outside [A-Za-z0-9._:-]", ErrInvalidType, t)
		}
	}
	return nil
}

// keyspace names the Redis keys and channels of one deployment. Every name
// carries the hash tag {0}, so that one user's channel and keys share a Redis
// Cluster slot and the notify script stays cluster-safe.
//
//	<prefix>:{0}:user:<user key>              one channel per user
//	<prefix>:{0}:history:<user key>           the user's history stream
//	<prefix>:{0}:idem:<len(user)>:<user>:<k>  an idempotency key's first result
//	<prefix>:{0}:broadcast                    every node subscribes
//	<prefix>:{0}:probe:<node id>              one node's liveness probe
type keyspace struct {
	prefix     string
	userPrefix string // everything before the user key in a user channel
}

func newKeyspace(prefix string) (keyspace, error) {
	if prefix == "" || strings.ContainsAny(prefix, "{}") {
		return keyspace{}, fmt.Errorf("wsnotify: channel prefix %q must be non-empty and hold no braces", prefix)
	}
	return keyspace{prefix: prefix, userPrefix: prefix + ":{0}:user:"}, nil
}

func (k keyspace) userChannel(user string) string { return k.userPrefix + user }

func (k keyspace) historyKey(user string) string { return k.prefix + ":{0}:history:" + user }

// idempotencyKey length-prefixes the user so that no (user, key) pair can
// spell another pair's name.
func (k keyspace) idempotencyKey(user, key string) string {
	return k.prefix + ":{0}:idem:" + strconv.Itoa(len(user)) + ":" + user + ":" + key
}

func (k keyspace) broadcastChannel() string { return k.prefix + ":{0}:broadcast" }

func (k keyspace) probeChannel(node string) string { return k.prefix + ":{0}:probe:" + node }

// userOf returns the user key of a user channel, or false for any other channel.
func (k keyspace) userOf(channel string) (string, bool) {
	return strings.CutPrefix(channel, k.userPrefix)
}
