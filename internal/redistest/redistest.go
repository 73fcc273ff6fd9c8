// Package redistest gives each test a Redis to talk to: the one named by
// REDIS_ADDR, else a redis-server from PATH started for the test, else an
// embedded miniredis (WSNOTIFY_EMBEDDED_REDIS=1 picks it even when
// redis-server is there, to test that fallback). With WSNOTIFY_REQUIRE_REDIS=1 the embedded fallback is
// refused and the test fails, so CI cannot pass without a real Redis.
package redistest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
)

// Addr returns the address of a Redis for t, following the order in the
// package comment.
func Addr(t testing.TB) string {
	t.Helper()
	if addr := os.Getenv("REDIS_ADDR"); addr != "" {
		waitPing(t, addr)
		return addr
	}
	if !Embedded() {
		return Server(t).Addr
	}
	if os.Getenv("WSNOTIFY_REQUIRE_REDIS") == "1" {
		t.Fatal("WSNOTIFY_REQUIRE_REDIS=1 but neither REDIS_ADDR nor redis-server on PATH is available")
	}
	t.Log("no real Redis: using embedded miniredis")
	return miniredis.RunT(t).Addr()
}

// Embedded reports whether Addr falls back to the embedded miniredis.
func Embedded() bool {
	if os.Getenv("REDIS_ADDR") != "" {
		return false
	}
	_, err := exec.LookPath("redis-server")
	return err != nil || os.Getenv("WSNOTIFY_EMBEDDED_REDIS") == "1"
}

// Client returns a client of Addr(t), closed when t ends.
func Client(t testing.TB) *redis.Client {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: Addr(t)})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// Prefix returns a channel prefix no other test uses.
func Prefix(t testing.TB) string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return "wsntest-" + hex.EncodeToString(b[:])
}

// RedisServer is a redis-server process owned by one test.
type RedisServer struct {
	Addr string
	dir  string
	port int
	cmd  *exec.Cmd
	t    testing.TB
}

// Server starts a redis-server on a free loopback port, for tests that stop,
// restart or otherwise hurt their Redis. It fails t when redis-server is not
// on PATH and WSNOTIFY_REQUIRE_REDIS=1, and skips t otherwise.
func Server(t testing.TB) *RedisServer {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		if os.Getenv("WSNOTIFY_REQUIRE_REDIS") == "1" {
			t.Fatal("WSNOTIFY_REQUIRE_REDIS=1 but redis-server is not on PATH")
		}
		t.Skip("redis-server is not on PATH")
	}
	s := &RedisServer{dir: t.TempDir(), port: freePort(t), t: t}
	s.Addr = "127.0.0.1:" + strconv.Itoa(s.port)
	s.Start()
	t.Cleanup(s.Stop)
	return s
}

// Start starts (or restarts) the server on its port and waits until it
// answers. Data survives a Stop/Start through an append-only file.
func (s *RedisServer) Start() {
	s.t.Helper()
	s.cmd = exec.Command("redis-server",
		"--bind", "127.0.0.1", "--port", strconv.Itoa(s.port),
		"--dir", s.dir, "--save", "", "--appendonly", "yes", "--appendfsync", "always",
		"--logfile", filepath.Join(s.dir, "redis.log"))
	if err := s.cmd.Start(); err != nil {
		s.t.Fatalf("start redis-server: %v", err)
	}
	waitPing(s.t, s.Addr)
}

// Stop kills the server process it started (by PID) and waits for it.
func (s *RedisServer) Stop() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	_ = s.cmd.Wait()
	s.cmd = nil
}

func waitPing(t testing.TB, addr string) {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1})
	defer c.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		err := c.Ping(ctx).Err()
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("redis at %s does not answer: %v", addr, err)
		}
		time.Sleep(20 * time.Millisecond) // poll interval while the server boots
	}
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Eventually polls cond until it holds or timeout passes; it fails t with msg
// otherwise. Tests use it to wait for a condition instead of sleeping.
func Eventually(t testing.TB, timeout time.Duration, cond func() bool, format string, args ...any) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %v: %s", timeout, fmt.Sprintf(format, args...))
		}
		time.Sleep(5 * time.Millisecond)
	}
}
