package wsnotify

import (
	"fmt"
	"hash/crc32"
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

// keyspace names the Redis keys and channels of one deployment. Each name
// carries a hash tag, so that one user's channel and keys share a Redis
// Cluster slot and the notify script stays cluster-safe:
//
//	<prefix>:{<tag>}:user:<user key>              one channel per user
//	<prefix>:{<tag>}:history:<user key>           the user's history stream
//	<prefix>:{<tag>}:idem:<len(user)>:<user>:<k>  an idempotency key's first result
//	<prefix>:{<tag0>}:broadcast                   every node subscribes
//	<prefix>:{<tag>}:probe:<node id>              one node's liveness probe, per partition
//
// Users are spread over a fixed number of partitions, each with its own tag;
// a node keeps one pub/sub connection per partition, since go-redis
// resubscribes all sharded channels of a connection in one SSUBSCRIBE, which
// fails when they span slots. With one partition (standalone Redis and
// Sentinel) the tag is "0".
type keyspace struct {
	prefix string
	tags   []string       // tag of each partition
	index  map[string]int // partition of each tag
}

func newKeyspace(prefix string, partitions int) (keyspace, error) {
	if prefix == "" || strings.ContainsAny(prefix, "{}") {
		return keyspace{}, fmt.Errorf("wsnotify: channel prefix %q must be non-empty and hold no braces", prefix)
	}
	if partitions < 1 || partitions > clusterSlots {
		return keyspace{}, fmt.Errorf("wsnotify: partitions must be 1 to %d, got %d", clusterSlots, partitions)
	}
	k := keyspace{prefix: prefix, tags: partitionTags(partitions), index: make(map[string]int, partitions)}
	for i, t := range k.tags {
		k.index[t] = i
	}
	return k, nil
}

// partitionTags picks for partition i the first tag "<i>.<n>" whose slot
// lies in the i-th of equal slot ranges, so partitions spread evenly over the
// masters of a cluster whatever its size. Every node computes the same tags.
func partitionTags(partitions int) []string {
	if partitions == 1 {
		return []string{"0"}
	}
	tags := make([]string, partitions)
	for i := range tags {
		lo, hi := i*clusterSlots/partitions, (i+1)*clusterSlots/partitions
		for n := 0; ; n++ {
			tag := strconv.Itoa(i) + "." + strconv.Itoa(n)
			if slot := clusterSlot(tag); slot >= lo && slot < hi {
				tags[i] = tag
				break
			}
		}
	}
	return tags
}

// partition is where user's channel and keys live: CRC-32 (IEEE) of the key
// modulo the partition count.
func (k keyspace) partition(user string) int {
	if len(k.tags) == 1 {
		return 0
	}
	return int(crc32.ChecksumIEEE([]byte(user)) % uint32(len(k.tags)))
}

func (k keyspace) base(p int) string { return k.prefix + ":{" + k.tags[p] + "}:" }

func (k keyspace) userChannel(user string) string {
	return k.base(k.partition(user)) + "user:" + user
}

func (k keyspace) historyKey(user string) string {
	return k.base(k.partition(user)) + "history:" + user
}

// idempotencyKey length-prefixes the user so that no (user, key) pair can
// spell another pair's name.
func (k keyspace) idempotencyKey(user, key string) string {
	return k.base(k.partition(user)) + "idem:" + strconv.Itoa(len(user)) + ":" + user + ":" + key
}

func (k keyspace) broadcastChannel() string { return k.base(0) + "broadcast" }

func (k keyspace) probeChannel(p int, node string) string { return k.base(p) + "probe:" + node }

// partitionOf returns the partition of any name this keyspace made.
func (k keyspace) partitionOf(name string) int {
	rest, ok := strings.CutPrefix(name, k.prefix+":{")
	if !ok {
		return 0
	}
	tag, _, _ := strings.Cut(rest, "}")
	return k.index[tag]
}

// userOf returns the user key of a user channel, or false for any other name.
func (k keyspace) userOf(channel string) (string, bool) {
	rest, ok := strings.CutPrefix(channel, k.prefix+":{")
	if !ok {
		return "", false
	}
	_, user, ok := strings.Cut(rest, "}:user:")
	return user, ok
}

// clusterSlots is the number of hash slots of a Redis Cluster.
const clusterSlots = 16384

// clusterSlot is the Redis Cluster slot of key: CRC-16/XMODEM of its hash tag
// (or of the whole key when it has none) modulo 16384.
func clusterSlot(key string) int {
	if open := strings.IndexByte(key, '{'); open >= 0 {
		if end := strings.IndexByte(key[open+1:], '}'); end > 0 {
			key = key[open+1 : open+1+end]
		}
	}
	var crc uint16
	for i := 0; i < len(key); i++ {
		crc ^= uint16(key[i]) << 8
		for range 8 {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return int(crc) % clusterSlots
}
