package redistest

import (
	"context"
	"errors"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

func TestCluster(t *testing.T) {
	t.Parallel()
	c := Cluster(t, 3)
	if len(c.Addrs) != 3 {
		t.Fatalf("Addrs = %v, want 3 addresses", c.Addrs)
	}
	cc := c.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()

	t.Run("keys across slots", func(t *testing.T) {
		masters := map[string]bool{}
		for _, k := range []string{"{a}:k", "{b}:k", "{c}:k", "k1", "k2", "k3"} {
			if err := cc.Set(ctx, k, "v-"+k, 0).Err(); err != nil {
				t.Fatalf("SET %s: %v", k, err)
			}
			if v, err := cc.Get(ctx, k).Result(); err != nil || v != "v-"+k {
				t.Fatalf("GET %s = %q, %v", k, v, err)
			}
			slot, err := cc.ClusterKeySlot(ctx, k).Result()
			if err != nil {
				t.Fatal(err)
			}
			m := c.MasterFor(int(slot))
			// The key is on the master MasterFor names.
			direct := redis.NewClient(&redis.Options{Addr: m})
			v, err := direct.Get(ctx, k).Result()
			_ = direct.Close()
			if err != nil || v != "v-"+k {
				t.Fatalf("GET %s on %s = %q, %v", k, m, v, err)
			}
			masters[m] = true
		}
		if len(masters) != 3 {
			t.Fatalf("keys landed on %d masters, want 3: %v", len(masters), masters)
		}
	})

	t.Run("sharded pubsub and KillPubSub", func(t *testing.T) {
		const ch = "{x}:c"
		ps := cc.SSubscribe(ctx, ch)
		defer ps.Close()
		if _, err := ps.Receive(ctx); err != nil {
			t.Fatalf("ssubscribe confirmation: %v", err)
		}
		if n, err := cc.SPublish(ctx, ch, "hello").Result(); err != nil || n != 1 {
			t.Fatalf("SPUBLISH = %d, %v; want 1 receiver", n, err)
		}
		msg, err := ps.ReceiveMessage(ctx)
		if err != nil || msg.Channel != ch || msg.Payload != "hello" {
			t.Fatalf("ReceiveMessage = %+v, %v", msg, err)
		}

		slot, err := cc.ClusterKeySlot(ctx, ch).Result()
		if err != nil {
			t.Fatal(err)
		}
		owner := c.MasterFor(int(slot))
		for _, addr := range c.Addrs {
			if addr == owner {
				continue
			}
			if n, err := c.KillPubSub(addr); err != nil || n != 0 {
				t.Fatalf("KillPubSub(%s), not the owner = %d, %v; want 0", addr, n, err)
			}
		}
		if n, err := c.KillPubSub(owner); err != nil || n != 1 {
			t.Fatalf("KillPubSub(%s) = %d, %v; want 1", owner, n, err)
		}
		_, err = ps.ReceiveTimeout(ctx, 5*time.Second)
		var ne net.Error
		if err == nil || (errors.As(err, &ne) && ne.Timeout()) {
			t.Fatalf("receive after KillPubSub = %v, want a connection error", err)
		}

		// The next receive reconnects and subscribes again.
		type result struct {
			msg *redis.Message
			err error
		}
		got := make(chan result, 1)
		go func() {
			m, err := ps.ReceiveMessage(ctx)
			got <- result{m, err}
		}()
		Eventually(t, 10*time.Second, func() bool {
			n, err := cc.SPublish(ctx, ch, "again").Result()
			return err == nil && n == 1
		}, "the subscriber to resubscribe to %s", ch)
		if r := <-got; r.err != nil || r.msg.Payload != "again" {
			t.Fatalf("message after reconnect = %+v, %v", r.msg, r.err)
		}

		if _, err := c.KillPubSub("127.0.0.1:1"); err == nil {
			t.Fatal("KillPubSub accepted an address outside the cluster")
		}
	})

	c.Stop()
	for _, addr := range c.Addrs {
		if !portFree(mustPort(t, addr)) {
			t.Errorf("%s still listening after Stop", addr)
		}
	}
}

func TestSentinel(t *testing.T) {
	t.Parallel()
	s := Sentinel(t)
	if s.MasterName != "mymaster" || s.CurrentMaster() != s.MasterAddr {
		t.Fatalf("sentinel reports %s as %s, want %s", s.CurrentMaster(), s.MasterName, s.MasterAddr)
	}
	c := s.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()

	if err := c.Set(ctx, "before", "1", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if n, err := c.Wait(ctx, 1, 5*time.Second).Result(); err != nil || n != 1 {
		t.Fatalf("WAIT 1 = %d, %v; want the replica to acknowledge", n, err)
	}

	oldMaster, oldReplica := s.MasterAddr, s.ReplicaAddr
	s.Failover(t)
	if s.MasterAddr != oldReplica || s.ReplicaAddr != oldMaster {
		t.Fatalf("after Failover MasterAddr=%s ReplicaAddr=%s, want %s and %s", s.MasterAddr, s.ReplicaAddr, oldReplica, oldMaster)
	}
	if got := s.CurrentMaster(); got != oldReplica {
		t.Fatalf("CurrentMaster() = %s, want %s", got, oldReplica)
	}

	// The failover client follows the new master: a write through it shows
	// up on the promoted server.
	newMaster := redis.NewClient(&redis.Options{Addr: s.MasterAddr})
	defer newMaster.Close()
	i := 0
	Eventually(t, 15*time.Second, func() bool {
		i++
		v := strconv.Itoa(i)
		if c.Set(ctx, "after", v, 0).Err() != nil {
			return false
		}
		got, err := newMaster.Get(ctx, "after").Result()
		return err == nil && got == v
	}, "a write through the failover client to reach %s", s.MasterAddr)
	if v, err := c.Get(ctx, "before").Result(); err != nil || v != "1" {
		t.Fatalf("GET before = %q, %v after failover", v, err)
	}
}

func mustPort(t *testing.T, addr string) int {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.Atoi(p)
	if err != nil {
		t.Fatal(err)
	}
	return n
}
