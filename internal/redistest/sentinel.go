package redistest

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// RedisSentinel is a master, one replica and one Sentinel monitoring them,
// all redis-server processes owned by one test.
type RedisSentinel struct {
	MasterName   string // name the Sentinel monitors the master under
	SentinelAddr string
	MasterAddr   string // the master; Failover swaps it with ReplicaAddr
	ReplicaAddr  string // the replica; Failover swaps it with MasterAddr

	nodes []*node
	t     testing.TB
}

// Sentinel starts a master, a replica of it and a Sentinel monitoring the
// master as "mymaster", all on free loopback ports, and waits until the
// replica is in sync and the Sentinel knows both. The processes are killed
// when t ends. It fails t when redis-server is not on PATH and
// WSNOTIFY_REQUIRE_REDIS=1, and skips t otherwise.
func Sentinel(t testing.TB) *RedisSentinel {
	t.Helper()
	needBinaries(t, "redis-server not on PATH: sentinel tests need it", "redis-server")
	base := t.TempDir()
	s := &RedisSentinel{MasterName: "mymaster", t: t}
	t.Cleanup(s.stop) // after t.TempDir, so it runs before the directory is removed

	pick := func() int { return freePort(t) }
	dataArgs := func(extra ...string) func(int, string) ([]string, error) {
		return func(port int, dir string) ([]string, error) {
			return append([]string{
				"--bind", "127.0.0.1", "--port", strconv.Itoa(port),
				"--dir", dir, "--save", "", "--appendonly", "yes", "--appendfsync", "always",
				"--logfile", filepath.Join(dir, "redis.log"),
				// Either server may be the master: let replicas sync at
				// once instead of after the default 5 s diskless delay.
				"--repl-diskless-sync-delay", "0",
			}, extra...), nil
		}
	}

	master := startNode(t, base, pick, dataArgs())
	s.nodes = append(s.nodes, master)
	s.MasterAddr = master.addr
	replica := startNode(t, base, pick, dataArgs("--replicaof", "127.0.0.1", strconv.Itoa(master.port)))
	s.nodes = append(s.nodes, replica)
	s.ReplicaAddr = replica.addr

	// The Sentinel learns of replicas from the master's INFO, which it asks
	// for on connecting and then only every 10 s: start it once the replica
	// is attached so that it sees the replica at once.
	poll(t, 15*time.Second, "the replica to sync with the master", func() error {
		return replicaLinkUp(replica.addr)
	})

	sentinel := startNode(t, base, pick, func(port int, dir string) ([]string, error) {
		conf := filepath.Join(dir, "sentinel.conf")
		// resolve-hostnames is left at its default (no): all addresses are IPs.
		body := fmt.Sprintf("port %d\nbind 127.0.0.1\ndir %q\nlogfile %q\n"+
			"sentinel monitor %s 127.0.0.1 %d 1\n"+
			"sentinel down-after-milliseconds %[4]s 1000\n"+
			"sentinel failover-timeout %[4]s 5000\n",
			port, dir, filepath.Join(dir, "sentinel.log"), s.MasterName, master.port)
		// The Sentinel rewrites its configuration file, so it must be writable.
		return []string{conf, "--sentinel"}, os.WriteFile(conf, []byte(body), 0o644)
	})
	s.nodes = append(s.nodes, sentinel)
	s.SentinelAddr = sentinel.addr

	poll(t, 15*time.Second, "the sentinel to know the master and a healthy replica", func() error {
		return s.sentinelReady(s.MasterAddr, s.ReplicaAddr)
	})
	return s
}

// Client returns a Sentinel-backed failover client of the master, closed when
// t ends.
func (s *RedisSentinel) Client(t testing.TB) *redis.Client {
	t.Helper()
	c := redis.NewFailoverClient(&redis.FailoverOptions{
		MasterName:    s.MasterName,
		SentinelAddrs: []string{s.SentinelAddr},
	})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// CurrentMaster returns the master address the Sentinel reports now.
func (s *RedisSentinel) CurrentMaster() string {
	s.t.Helper()
	addr, err := s.currentMaster()
	if err != nil {
		s.t.Fatalf("sentinel get-master-addr-by-name %s: %v", s.MasterName, err)
	}
	return addr
}

// Failover makes the Sentinel promote the replica (SENTINEL FAILOVER) and
// waits until the Sentinel reports it as the master and it reports
// role:master; MasterAddr and ReplicaAddr are then swapped. The former master
// may keep reporting role:master for a few seconds more, until the Sentinel
// turns it into a replica of the new master.
func (s *RedisSentinel) Failover(t testing.TB) {
	t.Helper()
	sc := redis.NewSentinelClient(&redis.Options{Addr: s.SentinelAddr, MaxRetries: -1})
	defer sc.Close()
	// The Sentinel refuses (NOGOODSLAVE) while it sees no healthy replica,
	// as right after an earlier failover.
	poll(t, 20*time.Second, "the sentinel to start a failover", func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		return sc.Failover(ctx, s.MasterName).Err()
	})
	target := s.ReplicaAddr
	poll(t, 20*time.Second, "the sentinel to promote "+target, func() error {
		addr, err := s.currentMaster()
		if err != nil {
			return err
		}
		if addr != target {
			return fmt.Errorf("sentinel reports master %s", addr)
		}
		info, err := withClient(target, func(ctx context.Context, c *redis.Client) (string, error) {
			return c.Info(ctx, "replication").Result()
		})
		if err != nil {
			return err
		}
		if !strings.Contains(info, "role:master") {
			return fmt.Errorf("%s does not report role:master yet", target)
		}
		return nil
	})
	s.MasterAddr, s.ReplicaAddr = s.ReplicaAddr, s.MasterAddr
}

func (s *RedisSentinel) currentMaster() (string, error) {
	sc := redis.NewSentinelClient(&redis.Options{Addr: s.SentinelAddr, MaxRetries: -1, DialTimeout: time.Second})
	defer sc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	hp, err := sc.GetMasterAddrByName(ctx, s.MasterName).Result()
	if err != nil {
		return "", err
	}
	if len(hp) != 2 {
		return "", fmt.Errorf("unexpected reply %q", hp)
	}
	return net.JoinHostPort(hp[0], hp[1]), nil
}

// sentinelReady checks that the Sentinel reports master as the master and
// replica as a healthy, connected replica of it.
func (s *RedisSentinel) sentinelReady(master, replica string) error {
	for _, n := range s.nodes {
		if err := n.exited(); err != nil {
			return err
		}
	}
	addr, err := s.currentMaster()
	if err != nil {
		return err
	}
	if addr != master {
		return fmt.Errorf("sentinel reports master %s, want %s", addr, master)
	}
	sc := redis.NewSentinelClient(&redis.Options{Addr: s.SentinelAddr, MaxRetries: -1})
	defer sc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	replicas, err := sc.Replicas(ctx, s.MasterName).Result()
	if err != nil {
		return err
	}
	for _, r := range replicas {
		if net.JoinHostPort(r["ip"], r["port"]) == replica && r["flags"] == "slave" && r["master-link-status"] == "ok" {
			return nil
		}
	}
	return fmt.Errorf("sentinel does not see %s as a healthy replica: %v", replica, replicas)
}

func (s *RedisSentinel) stop() {
	for _, n := range s.nodes {
		n.stop()
	}
}

func replicaLinkUp(addr string) error {
	info, err := withClient(addr, func(ctx context.Context, c *redis.Client) (string, error) {
		return c.Info(ctx, "replication").Result()
	})
	if err != nil {
		return err
	}
	if !strings.Contains(info, "master_link_status:up") {
		return fmt.Errorf("%s: replication link is not up", addr)
	}
	return nil
}
