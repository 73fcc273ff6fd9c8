package wsnotify

import (
	"strings"
	"testing"
)

func TestClusterSlotMatchesRedis(t *testing.T) {
	// Values from CLUSTER KEYSLOT on Redis 7.
	for key, want := range map[string]int{"foo": 12182, "bar": 5061, "{user1000}.following": 3443, "{}x": 10595, "a{b}c": 3300} {
		if got := clusterSlot(key); got != want {
			t.Errorf("clusterSlot(%q) = %d, want %d", key, got, want)
		}
	}
}

func TestPartitionTagsSpreadEvenly(t *testing.T) {
	for _, n := range []int{2, 3, 16, 64} {
		tags := partitionTags(n)
		for i, tag := range tags {
			slot := clusterSlot("{" + tag + "}")
			if slot < i*clusterSlots/n || slot >= (i+1)*clusterSlots/n {
				t.Fatalf("n=%d: tag %q of partition %d has slot %d, outside its range", n, tag, i, slot)
			}
		}
	}
}

func TestKeyspaceRoundTrips(t *testing.T) {
	k, err := newKeyspace("app", 16)
	if err != nil {
		t.Fatal(err)
	}
	for _, user := range []string{"alice", "a}:user:b", "{x}", "ü", strings.Repeat("z", 256)} {
		ch := k.userChannel(user)
		if got, ok := k.userOf(ch); !ok || got != user {
			t.Errorf("userOf(%q) = %q, %v", ch, got, ok)
		}
		p := k.partition(user)
		if k.partitionOf(ch) != p || k.partitionOf(k.historyKey(user)) != p {
			t.Errorf("%q: channel and history not in partition %d", user, p)
		}
		if clusterSlot(ch) != clusterSlot(k.historyKey(user)) || clusterSlot(ch) != clusterSlot(k.idempotencyKey(user, "o-1")) {
			t.Errorf("%q: channel, history and idempotency key span slots", user)
		}
	}
	if _, ok := k.userOf(k.broadcastChannel()); ok {
		t.Error("the broadcast channel parsed as a user channel")
	}
}
