// Command bench measures wsnotify end to end against a real Redis, with every
// node in its own process, and a plain gorilla/websocket server (no Redis)
// measured in the same run as the baseline.
//
// Full measurements, one command per scenario (from the module root; each
// runs history on and off, three runs, and prints medians):
//
//	go run ./bench -scenario s1 -out s1.json   # latency: 1,000 clients, 500 notifications/s for 10s
//	go run ./bench -scenario s2 -out s2.json   # throughput: 1,000 clients, 200,000 notifications by 64 notifiers
//	go run ./bench -scenario s3 -out s3.json   # memory: 10,000 idle clients on one node, RSS per connection
//	go run ./bench -scenario s4 -out s4.json   # scale-out: 1, 2, 4, 8 nodes under the s1 load
//	go run ./bench -scenario all -out all.json # all four in a row
//
// Common flags:
//
//	-redis 127.0.0.1:6379   Redis under test (loopback only). -redis "" tries the default and
//	                        falls back to an embedded miniredis: smoke tests only, figures meaningless.
//	-history on|off|both    history mode of the wsnotify nodes (default both)
//	-runs 3                 runs per measurement; tables show medians, -out keeps every run
//	-out file.json          write every run and the medians as JSON
//	-redis-bench-n 200000   requests for redis-benchmark's PUBLISH test (0 skips it)
//	-session-queue N        the nodes' per-socket queue (WithSessionQueue); a small one forces
//	                        4008 closes, to exercise resume with since under load
//	-v                      let the nodes log hub warnings
//
// Size overrides for smoke tests (0 keeps the scenario's size):
//
//	go run ./bench -scenario s2 -clients 50 -notifications 5000 -runs 1 -redis-bench-n 20000
//	go run ./bench -scenario s3 -clients 500 -runs 1 -redis-bench-n 0
//	go run ./bench -scenario s1 -clients 50 -duration 3s -runs 1 -redis-bench-n 0
//	go run ./bench -scenario s4 -clients 50 -duration 2s -runs 1 -redis-bench-n 0
//	(also -rate N per second, -notifiers K, -nodes 1,2,4,8)
//
// What runs: the parent is the load generator. It starts each node as a
// child process (this binary with a hidden -node argument: a gin engine and a
// hub on a loopback port, plus /notify, /fire and /rss control endpoints; see
// node.go), connects real WebSocket clients to one node and sends through
// another, so every notification crosses Redis. The baseline is a child with
// the hidden -raw argument that writes straight to its sockets. s1 also runs
// the classic design as a second baseline (hidden -relay argument, relay.go):
// plain gorilla sockets, one PUBLISH per notification and a PSUBSCRIBE to all
// of them on every node, which is what one hop through Redis costs by itself;
// its rows show the ratio to raw like wsnotify's. Every child
// is stopped by PID when a measurement ends, and killed on error or Ctrl-C;
// each measurement uses its own Redis key prefix, deleted afterwards.
//
// Each measurement prints a one-line summary on stderr as it ends; the tables
// (medians, each wsnotify row followed by its ratio to raw) go to stdout.
// Rough wall time of the full sizes: s1 ~2 min, s2 ~1 min, s3 ~1 min, s4 ~7 min.
//
// WSNOTIFY_BENCH_PROFILE_DIR=DIR makes every wsnotify node write a CPU profile
// of its life to DIR/node-PID.cpu (go tool pprof DIR/node-PID.cpu).
//
// s3 needs about clients+1024 file descriptors in the parent and in the node;
// the program raises RLIMIT_NOFILE itself and says so if it cannot.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

type config struct {
	scenario      string
	redisAddr     string
	history       string
	runs          int
	out           string
	clients       int
	notifications int
	rate          float64
	duration      time.Duration
	notifiers     int
	nodes         []int
	redisBenchN   int
	sessionQueue  int
	verbose       bool
}

func main() {
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case nodeModeArg:
			exitOn(nodeMain(os.Args[2:]))
			return
		case rawModeArg:
			exitOn(rawMain(os.Args[2:]))
			return
		case relayModeArg:
			exitOn(relayMain(os.Args[2:]))
			return
		}
	}
	cfg, err := parseFlags(os.Args[1:])
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(2)
	}
	exitOn(run(cfg))
}

func exitOn(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func warnf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "warning: "+format+"\n", args...)
}

func parseFlags(args []string) (config, error) {
	var cfg config
	var nodes string
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.StringVar(&cfg.scenario, "scenario", "", "s1 | s2 | s3 | s4 | all")
	fs.StringVar(&cfg.redisAddr, "redis", defaultRedis, `Redis address (loopback); "" falls back to an embedded miniredis`)
	fs.StringVar(&cfg.history, "history", "both", "wsnotify history: on | off | both")
	fs.IntVar(&cfg.runs, "runs", 3, "runs per measurement")
	fs.StringVar(&cfg.out, "out", "", "write all runs and medians as JSON to this file")
	fs.IntVar(&cfg.clients, "clients", 0, "override the number of clients")
	fs.IntVar(&cfg.notifications, "notifications", 0, "override s2's number of notifications")
	fs.Float64Var(&cfg.rate, "rate", 0, "override s1/s4's notifications per second")
	fs.DurationVar(&cfg.duration, "duration", 0, "override s1/s4's sending time")
	fs.IntVar(&cfg.notifiers, "notifiers", 0, "override s2's concurrent notifiers")
	fs.StringVar(&nodes, "nodes", "1,2,4,8", "s4's node counts")
	fs.IntVar(&cfg.redisBenchN, "redis-bench-n", 200000, "redis-benchmark PUBLISH requests (0 skips)")
	fs.IntVar(&cfg.sessionQueue, "session-queue", 0, "nodes' per-socket queue in messages (0: the hub's default, 256)")
	fs.BoolVar(&cfg.verbose, "v", false, "nodes log hub warnings to stderr")
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	if fs.NArg() > 0 {
		return cfg, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	switch cfg.scenario {
	case "s1", "s2", "s3", "s4", "all":
	default:
		fs.Usage()
		return cfg, errors.New("-scenario must be s1, s2, s3, s4 or all")
	}
	switch cfg.history {
	case "on", "off", "both":
	default:
		return cfg, errors.New("-history must be on, off or both")
	}
	if cfg.runs < 1 || cfg.runs > 100 {
		return cfg, errors.New("-runs must be between 1 and 100")
	}
	if cfg.clients < 0 || cfg.notifications < 0 || cfg.rate < 0 || cfg.duration < 0 || cfg.notifiers < 0 ||
		cfg.sessionQueue < 0 || cfg.sessionQueue == 1 {
		return cfg, errors.New("size overrides must not be negative (and -session-queue at least 2)")
	}
	for _, s := range strings.Split(nodes, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 || n > 64 {
			return cfg, fmt.Errorf("-nodes: %q is not a node count between 1 and 64", s)
		}
		cfg.nodes = append(cfg.nodes, n)
	}
	return cfg, nil
}

// scenarioSizes returns a scenario's sizes with the overrides applied.
func (cfg config) scenarioSizes(sc string) sizes {
	s := map[string]sizes{
		"s1": {Clients: 1000, Rate: 500, Duration: 10 * time.Second},
		"s2": {Clients: 1000, Notifications: 200_000, Notifiers: 64},
		"s3": {Clients: 10_000},
		"s4": {Clients: 1000, Rate: 500, Duration: 10 * time.Second, Nodes: cfg.nodes},
	}[sc]
	if cfg.clients > 0 {
		s.Clients = cfg.clients
	}
	if cfg.notifications > 0 && s.Notifications > 0 {
		s.Notifications = cfg.notifications
	}
	if cfg.notifiers > 0 && s.Notifiers > 0 {
		s.Notifiers = cfg.notifiers
	}
	if cfg.rate > 0 && s.Rate > 0 {
		s.Rate = cfg.rate
	}
	if cfg.duration > 0 && s.Duration > 0 {
		s.Duration = cfg.duration
	}
	return s
}

func (cfg config) scenarios() []string {
	if cfg.scenario == "all" {
		return []string{"s1", "s2", "s3", "s4"}
	}
	return []string{cfg.scenario}
}

func (cfg config) historyModes() []bool {
	switch cfg.history {
	case "on":
		return []bool{true}
	case "off":
		return []bool{false}
	}
	return []bool{true, false}
}

// plans lists one run's measurements of a scenario: wsnotify in each history
// mode (and, for s4, node count), then the raw baseline.
func (cfg config) plans(sc string) []plan {
	sz := cfg.scenarioSizes(sc)
	base := plan{
		scenario:      sc,
		clients:       sz.Clients,
		rate:          sz.Rate,
		duration:      sz.Duration,
		notifications: sz.Notifications,
		notifiers:     sz.Notifiers,
	}
	first := func(int) int { return 0 }
	second := func(int) int { return 1 }
	switch sc {
	case "s1", "s2":
		base.load = loadRate
		if sc == "s2" {
			base.load = loadFire
		}
		base.nodes, base.clientNode, base.sendNode = 2, first, second
	case "s3":
		base.load, base.nodes, base.clientNode, base.sendNode = loadIdle, 1, first, first
	case "s4":
		base.load = loadRate
	}
	var out []plan
	counts := []int{base.nodes}
	if sc == "s4" {
		counts = sz.Nodes
	}
	for _, n := range counts {
		for _, h := range cfg.historyModes() {
			p := base
			p.history = h
			if sc == "s4" {
				p.nodes = n
				p.clientNode = func(u int) int { return u % n }
				// Through the next node: never the one holding the user
				// (unless there is only one).
				p.sendNode = func(u int) int { return (u%n + 1) % n }
			}
			out = append(out, p)
		}
	}
	if sc == "s1" {
		relay := base
		relay.relay = true
		out = append(out, relay)
	}
	raw := base
	raw.raw, raw.nodes, raw.clientNode, raw.sendNode = true, 1, first, first
	out = append(out, raw)
	if sc == "s4" {
		for _, n := range counts {
			if n > 1 {
				share := raw
				share.shareOf, share.clients, share.rate = n, raw.clients/n, raw.rate/float64(n)
				out = append(out, share)
			}
		}
	}
	return out
}

func run(cfg config) error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	b := &bench{cfg: cfg, procs: newChildren(), hc: newHTTPClient(), verbose: cfg.verbose}
	defer b.procs.killAll()

	// Ctrl-C or SIGTERM: cancel, kill the children by PID at once, and let
	// the deferred cleanup delete the keys. A second signal exits at once.
	sig := make(chan os.Signal, 2)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sig)
	done := make(chan struct{})
	defer close(done)
	go func() {
		select {
		case s := <-sig:
			fmt.Fprintf(os.Stderr, "\n%v: stopping, killing the child processes\n", s)
			cancel()
			b.procs.killAll()
		case <-done:
			return
		}
		select {
		case <-sig:
			fmt.Fprintln(os.Stderr, "second signal: exiting now")
			b.procs.killAll()
			os.Exit(130)
		case <-done:
		}
	}()

	maxClients := 0
	for _, sc := range cfg.scenarios() {
		maxClients = max(maxClients, cfg.scenarioSizes(sc).Clients)
	}
	if err := raiseNoFile(uint64(maxClients) + 1024); err != nil {
		return err
	}

	env, err := openRedis(ctx, cfg.redisAddr)
	if err != nil {
		return err
	}
	defer env.close()
	b.redis = env

	meta := reportMeta{
		Started:      time.Now(),
		Args:         os.Args[1:],
		GoVersion:    runtime.Version(),
		NumCPU:       runtime.NumCPU(),
		RunCount:     cfg.runs,
		RedisAddr:    env.addr,
		RedisVersion: env.version,
		RedisPID:     env.pid,
		RedisCPUFrom: env.cpuFrom,
		Embedded:     env.mini != nil,
		Sizes:        map[string]sizes{},
	}
	for _, sc := range cfg.scenarios() {
		meta.Sizes[sc] = cfg.scenarioSizes(sc)
	}
	fmt.Fprintf(os.Stderr, "redis %s at %s (pid %d, CPU from %q); %s, %d CPUs\n",
		env.version, env.addr, env.pid, env.cpuFrom, meta.GoVersion, meta.NumCPU)
	if env.cpuFrom == "" {
		warnf("the Redis server's CPU time is unknown: CPU per message covers the nodes only")
	}

	if cfg.redisBenchN > 0 {
		fmt.Fprintln(os.Stderr, "running redis-benchmark ...")
		rb, err := runRedisBenchmark(ctx, env, cfg.redisBenchN)
		meta.RedisBenchmark = rb
		if err != nil {
			meta.RedisBenchmarkNote = "redis-benchmark: " + err.Error()
			warnf("%v", err)
		}
		for _, r := range rb {
			fmt.Fprintf(os.Stderr, "  %s: %s/s\n", r.Label, group(r.RequestsSec))
		}
	}

	var results []Result
	var failures []error
	for _, sc := range cfg.scenarios() {
		for r := 1; r <= cfg.runs; r++ {
			for _, p := range cfg.plans(sc) {
				if ctx.Err() != nil {
					break
				}
				res, err := b.measure(ctx, p, r)
				if err != nil {
					err = fmt.Errorf("%s run %d %s: %w", sc, r, res.label(), err)
					fmt.Fprintln(os.Stderr, "error:", err)
					failures = append(failures, err)
					continue
				}
				fmt.Fprintln(os.Stderr, res.summary())
				results = append(results, res)
			}
		}
	}

	printTables(os.Stdout, meta, results)
	if cfg.out != "" {
		if err := writeReportJSON(cfg.out, meta, results); err != nil {
			failures = append(failures, err)
		} else {
			fmt.Fprintf(os.Stderr, "wrote %s\n", cfg.out)
		}
	}
	if ctx.Err() != nil {
		failures = append(failures, errors.New("interrupted"))
	}
	return errors.Join(failures...)
}
