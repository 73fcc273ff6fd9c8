package redistest

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// RedisCluster is a Redis Cluster of redis-server processes owned by one
// test, one master per node and no replicas.
type RedisCluster struct {
	Addrs []string // loopback address of every master, in start order

	nodes []*node
	t     testing.TB
}

// Cluster starts a Redis Cluster of masters redis-server processes on free
// loopback ports, joins them with redis-cli --cluster create and waits until
// every node reports cluster_state:ok and a cluster client can write to every
// master. The processes are killed when t ends. It fails t when redis-server
// or redis-cli is not on PATH and WSNOTIFY_REQUIRE_REDIS=1, and skips t
// otherwise.
func Cluster(t testing.TB, masters int) *RedisCluster {
	t.Helper()
	needBinaries(t, "redis-server/redis-cli not on PATH: cluster tests need them", "redis-server", "redis-cli")
	if masters < 3 {
		t.Fatalf("a Redis Cluster needs at least 3 masters, not %d", masters)
	}
	base := t.TempDir()
	c := &RedisCluster{t: t}
	t.Cleanup(c.Stop) // after t.TempDir, so it runs before the directory is removed

	// Each node and its bus port (port+10000) are reserved here, so no two
	// nodes of this cluster can collide.
	reserved := map[int]bool{}
	for range masters {
		n := startNode(t, base, func() int { return clusterPort(t, reserved) }, func(port int, dir string) ([]string, error) {
			return []string{
				"--cluster-enabled", "yes",
				"--cluster-config-file", filepath.Join(dir, "nodes-"+strconv.Itoa(port)+".conf"),
				"--cluster-node-timeout", "2000",
				"--appendonly", "yes", "--appendfsync", "always", "--save", "",
				"--bind", "127.0.0.1", "--port", strconv.Itoa(port),
				"--dir", dir, "--logfile", filepath.Join(dir, "redis.log"),
			}, nil
		})
		c.nodes = append(c.nodes, n)
		c.Addrs = append(c.Addrs, n.addr)
	}

	args := append([]string{"--cluster", "create"}, c.Addrs...)
	args = append(args, "--cluster-replicas", "0", "--cluster-yes")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	out, err := exec.CommandContext(ctx, "redis-cli", args...).CombinedOutput()
	cancel()
	if err != nil {
		t.Fatalf("redis-cli --cluster create: %v\n%s", err, out)
	}

	poll(t, 20*time.Second, "every cluster node reports cluster_state:ok", func() error {
		for _, n := range c.nodes {
			if err := n.exited(); err != nil {
				return err
			}
			info, err := withClient(n.addr, func(ctx context.Context, cl *redis.Client) (string, error) {
				return cl.ClusterInfo(ctx).Result()
			})
			if err != nil {
				return fmt.Errorf("%s: %w", n.addr, err)
			}
			if !strings.Contains(info, "cluster_state:ok") {
				return fmt.Errorf("%s: cluster_state is not ok", n.addr)
			}
		}
		return nil
	})

	cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs})
	defer cc.Close()
	// With the default slot split of three masters, {b}, {c} and {a} hash to
	// the first, second and third master respectively.
	keys := []string{"redistest:{b}:ready", "redistest:{c}:ready", "redistest:{a}:ready", "redistest:ready"}
	poll(t, 20*time.Second, "a cluster client can SET/GET on every master", func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		for _, k := range keys {
			if err := cc.Set(ctx, k, k, 0).Err(); err != nil {
				return fmt.Errorf("SET %s: %w", k, err)
			}
			v, err := cc.Get(ctx, k).Result()
			if err != nil {
				return fmt.Errorf("GET %s: %w", k, err)
			}
			if v != k {
				return fmt.Errorf("GET %s = %q", k, v)
			}
		}
		return nil
	})
	for _, k := range keys {
		_ = cc.Del(context.Background(), k).Err()
	}
	return c
}

// Client returns a cluster client of c, closed when t ends.
func (c *RedisCluster) Client(t testing.TB) *redis.ClusterClient {
	t.Helper()
	cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs})
	t.Cleanup(func() { _ = cc.Close() })
	return cc
}

// Stop kills every process of the cluster (by PID) and waits for them.
func (c *RedisCluster) Stop() {
	for _, n := range c.nodes {
		n.stop()
	}
}

// MasterFor returns the address of the master owning slot, as CLUSTER SLOTS
// reports it.
func (c *RedisCluster) MasterFor(slot int) string {
	c.t.Helper()
	var lastErr error
	for _, addr := range c.Addrs {
		slots, err := withClient(addr, func(ctx context.Context, cl *redis.Client) ([]redis.ClusterSlot, error) {
			return cl.ClusterSlots(ctx).Result()
		})
		if err != nil {
			lastErr = fmt.Errorf("%s: %w", addr, err)
			continue
		}
		for _, s := range slots {
			if s.Start <= slot && slot <= s.End && len(s.Nodes) > 0 {
				return s.Nodes[0].Addr
			}
		}
		lastErr = fmt.Errorf("%s: no master owns slot %d", addr, slot)
	}
	c.t.Fatalf("master for slot %d: %v", slot, lastErr)
	return ""
}

// KillPubSub runs CLIENT KILL TYPE pubsub on the node at addr, which must be
// one of c.Addrs, and returns the number of connections killed. Sharded
// (SSUBSCRIBE) subscribers count as pubsub clients.
func (c *RedisCluster) KillPubSub(addr string) (int64, error) {
	if !slices.Contains(c.Addrs, addr) {
		return 0, fmt.Errorf("%s is not a node of this cluster", addr)
	}
	return withClient(addr, func(ctx context.Context, cl *redis.Client) (int64, error) {
		return cl.ClientKillByFilter(ctx, "TYPE", "pubsub").Result()
	})
}

// node is one redis-server process started by Cluster or Sentinel.
type node struct {
	addr    string
	port    int
	dir     string
	cmd     *exec.Cmd
	done    chan struct{} // closed once the process has exited
	waitErr error         // valid after done is closed
}

// startNode starts a redis-server with the arguments args gives for a port
// from pick and a fresh directory under base, and waits until it answers
// PING. Should the process exit first (another process may have taken the
// port in the meantime), it tries again on another port.
func startNode(t testing.TB, base string, pick func() int, args func(port int, dir string) ([]string, error)) *node {
	t.Helper()
	var lastErr error
	for range 5 {
		port := pick()
		dir := filepath.Join(base, strconv.Itoa(port))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		a, err := args(port, dir)
		if err != nil {
			t.Fatal(err)
		}
		out, err := os.Create(filepath.Join(dir, "output.log"))
		if err != nil {
			t.Fatal(err)
		}
		n := &node{addr: "127.0.0.1:" + strconv.Itoa(port), port: port, dir: dir, done: make(chan struct{})}
		n.cmd = exec.Command("redis-server", a...)
		n.cmd.Stdout, n.cmd.Stderr = out, out
		if err := n.cmd.Start(); err != nil {
			_ = out.Close()
			t.Fatalf("start redis-server: %v", err)
		}
		go func() {
			n.waitErr = n.cmd.Wait()
			_ = out.Close()
			close(n.done)
		}()
		if lastErr = n.waitReady(10 * time.Second); lastErr == nil {
			return n
		}
		n.stop()
		lastErr = fmt.Errorf("%w\n%s", lastErr, n.logTail())
	}
	t.Fatalf("redis-server did not start: %v", lastErr)
	return nil
}

func (n *node) waitReady(timeout time.Duration) error {
	c := redis.NewClient(&redis.Options{Addr: n.addr, MaxRetries: -1, DialTimeout: 200 * time.Millisecond})
	defer c.Close()
	deadline := time.Now().Add(timeout)
	for {
		if err := n.exited(); err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		err := c.Ping(ctx).Err()
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("redis-server at %s does not answer: %w", n.addr, err)
		}
		time.Sleep(20 * time.Millisecond) // poll interval while the server boots
	}
}

// exited returns an error if the process has exited, nil while it runs.
func (n *node) exited() error {
	select {
	case <-n.done:
		return fmt.Errorf("redis-server at %s exited: %v", n.addr, n.waitErr)
	default:
		return nil
	}
}

// stop kills the process (by PID) and waits for it; it may be called again.
func (n *node) stop() {
	if n.cmd == nil || n.cmd.Process == nil {
		return
	}
	_ = n.cmd.Process.Kill()
	<-n.done
}

// logTail returns the end of the node's output and log files, for failure
// messages.
func (n *node) logTail() string {
	var b strings.Builder
	for _, name := range []string{"output.log", "redis.log", "sentinel.log"} {
		data, err := os.ReadFile(filepath.Join(n.dir, name))
		if err != nil || len(data) == 0 {
			continue
		}
		if len(data) > 2000 {
			data = data[len(data)-2000:]
		}
		fmt.Fprintf(&b, "--- %s:\n%s\n", name, data)
	}
	return b.String()
}

// clusterPort returns a free loopback port below 55000 whose cluster bus port
// (port+10000) is free as well, and reserves both in reserved.
func clusterPort(t testing.TB, reserved map[int]bool) int {
	t.Helper()
	for range 200 {
		p := freePort(t)
		if p >= 55000 || reserved[p] || reserved[p+10000] || !portFree(p+10000) {
			continue
		}
		reserved[p], reserved[p+10000] = true, true
		return p
	}
	t.Fatal("no free loopback port below 55000 with a free cluster bus port")
	return 0
}

func portFree(port int) bool {
	l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port))
	if err != nil {
		return false
	}
	_ = l.Close()
	return true
}

// needBinaries fails t when one of bins is not on PATH and
// WSNOTIFY_REQUIRE_REDIS=1, and skips t with skipMsg otherwise.
func needBinaries(t testing.TB, skipMsg string, bins ...string) {
	t.Helper()
	for _, b := range bins {
		if _, err := exec.LookPath(b); err != nil {
			if os.Getenv("WSNOTIFY_REQUIRE_REDIS") == "1" {
				t.Fatalf("WSNOTIFY_REQUIRE_REDIS=1 but %s is not on PATH", b)
			}
			t.Skip(skipMsg)
		}
	}
}

// withClient runs f with a short-lived client of the server at addr.
func withClient[T any](addr string, f func(context.Context, *redis.Client) (T, error)) (T, error) {
	c := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, DialTimeout: time.Second})
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	return f(ctx, c)
}

// poll calls check until it returns nil, and fails t with what and the last
// error if that does not happen within timeout.
func poll(t testing.TB, timeout time.Duration, what string, check func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiting %v for %s: %v", timeout, what, err)
		}
		time.Sleep(20 * time.Millisecond) // poll interval
	}
}
