package wsnotify_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/wsnotify/wsnotify"
	"github.com/wsnotify/wsnotify/internal/redistest"
)

// These tests run the delivery and no-loss suites on Redis as it is deployed
// in production: a 3-master Cluster with sharded pub/sub, and Sentinel.

func clusterOf(t *testing.T, rc *redistest.RedisCluster) *cluster {
	return &cluster{
		t:       t,
		prefix:  redistest.Prefix(t),
		sharded: true,
		connect: func() redis.UniversalClient { return redis.NewClusterClient(&redis.ClusterOptions{Addrs: rc.Addrs}) },
	}
}

func TestRedisCluster(t *testing.T) {
	rc := redistest.Cluster(t, 3)
	suites := map[string]func(*testing.T, *cluster){
		"NotifyCrossesNodes":            testNotifyCrossesNodes,
		"NotifyReachesOnlyItsUser":      testNotifyReachesOnlyItsUser,
		"DeliveredCountFollowsSessions": testDeliveredCountFollowsSessions,
		"Online":                        testOnline,
		"Broadcast":                     testBroadcastReachesEveryNode,
		"OddUserKeysStayApart":          testOddUserKeysStayApart,
		"ResumeOnTheOtherNode":          testResumeOnTheOtherNodeMidStream,
		"NodeClosedMidStream":           testNodeClosedMidStreamLosesNothing,
		"IdempotencyKey":                testIdempotencyKeyPublishesOnce,
		"Truncated":                     testResumeFromTrimmedHistoryIsTruncated,
		"FCALL":                         testOtherLanguagesNotifyWithHistoryThroughFCALL,
		"ConcurrentUsersKeepOrder":      testConcurrentUsersKeepTheirOrder,
		"ConcurrentNotifyOwnResult":     testConcurrentNotifyGetsItsOwnResult,
	}
	for name, run := range suites {
		t.Run(name, func(t *testing.T) { run(t, clusterOf(t, rc)) })
	}

	t.Run("UsersSpreadOverEveryMaster", func(t *testing.T) {
		cl := clusterOf(t, rc)
		a := cl.node()
		masters := map[string]bool{}
		for i := range 64 {
			user := "spread-" + string(rune('a'+i%26)) + string(rune('a'+i/26))
			masters[rc.MasterFor(clusterSlotOf(t, cl, a.hub.ChannelOf(user)))] = true
		}
		if len(masters) != 3 {
			t.Fatalf("64 users landed on %d masters, want all 3", len(masters))
		}
	})

	t.Run("MasterPubSubKilledMidStream", func(t *testing.T) {
		cl := clusterOf(t, rc)
		a, b := cl.node(), cl.node()
		r := &receiver{t: t, user: "carol"}
		conn := r.dial(a)
		const total = 600
		var sent atomic.Int64
		done := stream(t, b, "carol", total, time.Millisecond, &sent)
		master := rc.MasterFor(clusterSlotOf(t, cl, a.hub.ChannelOf("carol")))
		for _, at := range []int64{150, 300, 450} {
			redistest.Eventually(t, 20*time.Second, func() bool { return sent.Load() >= at }, "stream stalled before %d", at)
			if killed, err := rc.KillPubSub(master); err != nil || killed == 0 {
				t.Fatalf("CLIENT KILL TYPE pubsub on %s = %d, %v", master, killed, err)
			}
		}
		if code := r.take(conn, total); code != 0 {
			t.Fatalf("closed with %d", code)
		}
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if a.hub.Stats().Resyncs == 0 {
			t.Fatal("node A never resynced")
		}
	})
}

// clusterSlotOf asks Redis for the slot of key.
func clusterSlotOf(t *testing.T, cl *cluster, key string) int {
	slot, err := cl.admin().(*redis.ClusterClient).ClusterKeySlot(context.Background(), key).Result()
	if err != nil {
		t.Fatal(err)
	}
	return int(slot)
}

func TestRedisSentinel(t *testing.T) {
	rs := redistest.Sentinel(t)
	sentinelOf := func(t *testing.T) *cluster {
		return &cluster{t: t, prefix: redistest.Prefix(t), connect: func() redis.UniversalClient {
			return redis.NewFailoverClient(&redis.FailoverOptions{MasterName: rs.MasterName, SentinelAddrs: []string{rs.SentinelAddr}})
		}}
	}
	t.Run("NotifyCrossesNodes", func(t *testing.T) { testNotifyCrossesNodes(t, sentinelOf(t)) })
	t.Run("DeliveredCountFollowsSessions", func(t *testing.T) { testDeliveredCountFollowsSessions(t, sentinelOf(t)) })

	// A failover is over when Sentinel has demoted the old master, which
	// drops its pub/sub clients. Until then the other nodes may still write
	// to the old master, or already to the new one while node A listens on
	// the old: A's probe notices the silence and moves its link. Either way
	// A's client must lose nothing, and A must have resynced from history.
	t.Run("FailoverMidStream", func(t *testing.T) {
		cl := sentinelOf(t)
		a, b := cl.node(wsnotify.WithProbeInterval(200*time.Millisecond)), cl.node()
		r := &receiver{t: t, user: "dora"}
		conn := r.dial(a)
		var sent atomic.Int64
		var stopped, finished atomic.Bool
		done := make(chan error, 1)
		go func() {
			defer finished.Store(true)
			tick := time.NewTicker(5 * time.Millisecond)
			defer tick.Stop()
			for i := 0; !stopped.Load() && i < 20000; i++ {
				<-tick.C
				if err := notifyRetrying(b, "dora", i); err != nil {
					done <- err
					return
				}
				sent.Add(1)
			}
			done <- nil
		}()
		read := make(chan int, 1)
		go func() { read <- r.takeUntil(conn, &finished, &sent) }()

		redistest.Eventually(t, 20*time.Second, func() bool { return sent.Load() >= 150 }, "stream stalled")
		oldMaster := rs.MasterAddr
		rs.Failover(t)
		old := redis.NewClient(&redis.Options{Addr: oldMaster})
		defer old.Close()
		redistest.Eventually(t, 60*time.Second, func() bool {
			info, err := old.Info(context.Background(), "replication").Result()
			return err == nil && strings.Contains(info, "role:slave")
		}, "Sentinel never demoted the old master")
		at := sent.Load()
		redistest.Eventually(t, 20*time.Second, func() bool { return sent.Load() >= at+100 }, "stream stalled after the failover")
		stopped.Store(true)
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if code := <-read; code != 0 {
			t.Fatalf("closed with %d", code)
		}
		if st := a.hub.Stats(); st.Resyncs == 0 {
			t.Fatalf("node A never resynced across the failover: %+v", st)
		}
	})
}

// notifyRetrying retries a Notify that Redis refused (a failover in
// progress) under an idempotency key, as a payment service would.
func notifyRetrying(n *node, user string, i int) error {
	key := fmt.Sprintf("%s-%d", user, i)
	for range 2000 {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := n.hub.Notify(ctx, user, numbered{i}, wsnotify.WithIdempotencyKey(key))
		cancel()
		if err == nil || !errors.Is(err, wsnotify.ErrUnavailable) {
			return err
		}
		time.Sleep(10 * time.Millisecond) // retry pace while Redis changes masters
	}
	return fmt.Errorf("notify %s: Redis refused for 20s", key)
}
