package main

// The Redis under test: connecting (or starting an embedded one for smoke
// tests), its CPU time, key cleanup, and redis-benchmark.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
)

const defaultRedis = "127.0.0.1:6379"

type redisEnv struct {
	addr     string
	rdb      *redis.Client
	mini     *miniredis.Miniredis // embedded fallback, figures not meaningful
	version  string
	pid      int    // server pid, 0 when unknown
	cpuFrom  string // "proc", "info" or "" (unknown)
	prefixes map[string]bool
}

// openRedis connects to addr. With addr empty it tries the default address
// and falls back to an embedded miniredis.
func openRedis(ctx context.Context, addr string) (*redisEnv, error) {
	env := &redisEnv{prefixes: make(map[string]bool)}
	try := addr
	if try == "" {
		try = defaultRedis
	}
	host, _, err := net.SplitHostPort(try)
	if err != nil {
		return nil, fmt.Errorf("-redis %q: %w", try, err)
	}
	if !isLoopbackHost(host) {
		return nil, fmt.Errorf("-redis %q: only a Redis on a loopback address is supported (CPU is read from its process)", try)
	}
	rdb := redis.NewClient(&redis.Options{Addr: try, Dialer: loopbackDial, ContextTimeoutEnabled: true})
	pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	err = rdb.Ping(pctx).Err()
	cancel()
	if err != nil {
		_ = rdb.Close()
		if addr != "" {
			return nil, fmt.Errorf("redis at %s does not answer: %w", addr, err)
		}
		m, merr := miniredis.Run()
		if merr != nil {
			return nil, fmt.Errorf("no redis at %s (%v), and miniredis failed: %w", try, err, merr)
		}
		fmt.Fprintf(os.Stderr, "WARNING: no Redis answers at %s; using an embedded miniredis at %s.\n"+
			"WARNING: figures are NOT meaningful (smoke test only).\n", try, m.Addr())
		env.mini = m
		try = m.Addr()
		rdb = redis.NewClient(&redis.Options{Addr: try, Dialer: loopbackDial, ContextTimeoutEnabled: true})
	}
	env.addr, env.rdb = try, rdb
	if env.mini == nil {
		env.inspect(ctx)
	} else {
		env.version = "miniredis"
	}
	return env, nil
}

// inspect finds the server's version and pid, and how its CPU can be read.
func (e *redisEnv) inspect(ctx context.Context) {
	info, err := e.rdb.Info(ctx, "server").Result()
	if err != nil {
		return
	}
	e.version = infoField(info, "redis_version")
	e.pid, _ = strconv.Atoi(infoField(info, "process_id"))
	switch {
	case e.pid > 0 && strings.HasPrefix(processName(e.pid), "redis"):
		e.cpuFrom = "proc"
	case e.infoCPU(ctx) >= 0:
		// Another pid namespace (a container): Redis reports its own usage.
		e.cpuFrom = "info"
	}
}

func infoField(info, name string) string {
	for line := range strings.Lines(info) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), name+":"); ok {
			return v
		}
	}
	return ""
}

// cpu returns the Redis server's CPU time so far, or -1 when unknown.
func (e *redisEnv) cpu(ctx context.Context) time.Duration {
	switch e.cpuFrom {
	case "proc":
		d, err := processCPU(e.pid)
		if err != nil {
			return -1
		}
		return d
	case "info":
		return e.infoCPU(ctx)
	}
	return -1
}

func (e *redisEnv) infoCPU(ctx context.Context) time.Duration {
	info, err := e.rdb.Info(ctx, "cpu").Result()
	if err != nil {
		return -1
	}
	sys, err1 := strconv.ParseFloat(infoField(info, "used_cpu_sys"), 64)
	usr, err2 := strconv.ParseFloat(infoField(info, "used_cpu_user"), 64)
	if err1 != nil || err2 != nil {
		return -1
	}
	return time.Duration((sys + usr) * float64(time.Second))
}

// newPrefix returns a key prefix no other run uses, and remembers it for
// cleanup.
func (e *redisEnv) newPrefix(label string) string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	p := "wsbench-" + hex.EncodeToString(b[:]) + "-" + label
	e.prefixes[p] = true
	return p
}

// cleanup deletes every key under prefix.
func (e *redisEnv) cleanup(ctx context.Context, prefix string) error {
	delete(e.prefixes, prefix)
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	var cursor uint64
	for range 1_000_000 { // bounded: each pass moves the cursor
		keys, next, err := e.rdb.Scan(ctx, cursor, prefix+":*", 1000).Result()
		if err != nil {
			return fmt.Errorf("cleanup %s: %w", prefix, err)
		}
		if len(keys) > 0 {
			if err := e.rdb.Unlink(ctx, keys...).Err(); err != nil {
				return fmt.Errorf("cleanup %s: %w", prefix, err)
			}
		}
		if cursor = next; cursor == 0 {
			return nil
		}
	}
	return fmt.Errorf("cleanup %s: scan did not finish", prefix)
}

// close deletes the keys of any prefix not cleaned yet and closes the client.
func (e *redisEnv) close() {
	ctx := context.Background()
	for p := range e.prefixes {
		if err := e.cleanup(ctx, p); err != nil {
			fmt.Fprintln(os.Stderr, "warning:", err)
		}
	}
	_ = e.rdb.Close()
	if e.mini != nil {
		e.mini.Close()
	}
}

// redisBench is one redis-benchmark figure.
type redisBench struct {
	Label       string  `json:"label"` // PUBLISH, or PUBLISH -P 16
	Command     string  `json:"command"`
	RequestsSec float64 `json:"requests_per_sec"`
}

var benchLine = regexp.MustCompile(`: ([0-9.]+) requests per second`)

// runRedisBenchmark runs redis-benchmark's PUBLISH test, plain and with
// 16-command pipelines, against the Redis under test. Versions without a
// built-in publish test (before 7.2) get the command spelled out, with a
// payload the size of a benchmark envelope, on a channel nobody subscribes to.
func runRedisBenchmark(ctx context.Context, e *redisEnv, n int) ([]redisBench, error) {
	if n <= 0 {
		return nil, nil
	}
	if e.mini != nil {
		return nil, fmt.Errorf("skipped: embedded miniredis")
	}
	bin, err := exec.LookPath("redis-benchmark")
	if err != nil {
		return nil, fmt.Errorf("skipped: redis-benchmark not on PATH")
	}
	host, port, _ := net.SplitHostPort(e.addr)
	explicit := []string{"PUBLISH", e.newPrefix("rb") + ":chan",
		`{"id":"1700000000000-0","type":"notification","data":{"t":1700000000000000000,"seq":123}}`}
	var out []redisBench
	for i, extra := range [][]string{nil, {"-P", "16"}} {
		args := append([]string{"-h", host, "-p", port, "-n", strconv.Itoa(n), "-q"}, extra...)
		rps, cmd, err := redisBenchmark(ctx, bin, append(args, "-t", "publish"))
		if err == nil && rps == 0 {
			rps, cmd, err = redisBenchmark(ctx, bin, append(args, explicit...))
		}
		if err != nil {
			return out, err
		}
		label := "PUBLISH"
		if i > 0 {
			label += " -P 16"
		}
		out = append(out, redisBench{Label: label, Command: cmd, RequestsSec: rps})
	}
	return out, nil
}

// redisBenchmark runs one redis-benchmark and returns its requests per
// second, 0 when it printed none (an unknown -t test).
func redisBenchmark(ctx context.Context, bin string, args []string) (float64, string, error) {
	quoted := make([]string, len(args))
	for i, a := range args {
		quoted[i] = a
		if strings.ContainsAny(a, ` "{}'`) {
			quoted[i] = "'" + a + "'"
		}
	}
	cmd := "redis-benchmark " + strings.Join(quoted, " ")
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	b, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
	if err != nil {
		return 0, cmd, fmt.Errorf("%s: %w: %s", cmd, err, b)
	}
	m := benchLine.FindAllSubmatch(b, -1)
	if len(m) == 0 {
		return 0, cmd, nil
	}
	rps, err := strconv.ParseFloat(string(m[len(m)-1][1]), 64)
	return rps, cmd, err
}
