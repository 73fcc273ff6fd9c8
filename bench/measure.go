package main

// One measurement: start the processes, connect the clients, apply the load,
// and turn what the clients and the processes saw into a Result.

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"
)

type loadKind int

const (
	loadIdle loadKind = iota // connect only (RSS)
	loadRate                 // paced POST /notify
	loadFire                 // one /fire burst
)

// plan is one measurement of one system.
type plan struct {
	scenario string
	raw      bool // the baseline process instead of wsnotify nodes
	relay    bool // the PUBLISH/PSUBSCRIBE relay baseline instead of wsnotify nodes
	history  bool
	nodes    int
	clients  int
	// clientNode and sendNode pick, per user, the node its client connects
	// to and the node its notifications are sent through (fire uses
	// sendNode(0) for all).
	clientNode    func(user int) int
	sendNode      func(user int) int
	load          loadKind
	rate          float64
	duration      time.Duration
	notifications int
	notifiers     int
	// shareOf, on a raw plan of s4, is the node count whose one node's share
	// of the clients and of the rate this baseline carries.
	shareOf int
}

func (p plan) system() string {
	switch {
	case p.raw:
		return "raw"
	case p.relay:
		return "relay"
	}
	return "wsnotify"
}

func (p plan) historyLabel() string {
	switch {
	case p.raw, p.relay:
		return ""
	case p.history:
		return "on"
	}
	return "off"
}

// total is how many notifications the plan sends.
func (p plan) total() int {
	switch p.load {
	case loadRate:
		return int(p.rate * p.duration.Seconds())
	case loadFire:
		return p.notifications
	}
	return 0
}

// bench is the state shared by every measurement of one invocation.
type bench struct {
	cfg     config
	redis   *redisEnv
	procs   *children
	hc      *http.Client
	verbose bool
}

func newHTTPClient() *http.Client {
	return &http.Client{Transport: &http.Transport{
		DialContext:         loopbackDial,
		MaxIdleConns:        512,
		MaxIdleConnsPerHost: 128,
		IdleConnTimeout:     30 * time.Second,
	}}
}

// measure runs one plan and returns its figures.
func (b *bench) measure(ctx context.Context, p plan, run int) (Result, error) {
	res := Result{
		Scenario: p.scenario,
		System:   p.system(),
		History:  p.historyLabel(),
		Nodes:    p.nodes,
		ShareOf:  p.shareOf,
		Run:      run,
		Clients:  p.clients,
	}
	var prefix string
	if !p.raw {
		prefix = b.redis.newPrefix(p.scenario)
	}
	nodes, err := b.startNodes(ctx, p, prefix)
	defer func() {
		for _, n := range nodes {
			b.procs.stop(n)
		}
		if prefix != "" { // once no node writes under it
			if err := b.redis.cleanup(context.Background(), prefix); err != nil {
				warnf("%v", err)
			}
		}
	}()
	if err != nil {
		return res, err
	}

	before, err := b.statuses(ctx, nodes, true)
	if err != nil {
		return res, err
	}
	cs := newClientSet(p.history && !p.raw)
	perNode := make([]int, len(nodes))
	for u := range p.clients {
		n := p.clientNode(u)
		perNode[n]++
		cs.add(u, n, nodes[n].wsURL())
	}
	stopped := false
	stopClients := func() {
		if !stopped {
			stopped = true
			cs.stop()
		}
	}
	defer stopClients()
	connStart := time.Now()
	if err := cs.connect(ctx); err != nil {
		return res, err
	}
	res.ConnectPerSec = float64(p.clients) / time.Since(connStart).Seconds()
	if err := b.waitSessions(ctx, nodes, perNode); err != nil {
		return res, err
	}
	time.Sleep(500 * time.Millisecond) // let the upgrades' garbage settle
	after, err := b.statuses(ctx, nodes, true)
	if err != nil {
		return res, err
	}
	res.PerNode = make([]NodeResult, len(nodes))
	var rssDelta, heapDelta, stackDelta, gDelta int64
	for i := range nodes {
		nr := &res.PerNode[i]
		nr.Clients = perNode[i]
		if perNode[i] > 0 {
			nr.RSSPerConnKiB = float64(after[i].RSSKiB-before[i].RSSKiB) / float64(perNode[i])
			rssDelta += after[i].RSSKiB - before[i].RSSKiB
			heapDelta += after[i].HeapKiB - before[i].HeapKiB
			stackDelta += after[i].StackKiB - before[i].StackKiB
			gDelta += int64(after[i].Goroutines - before[i].Goroutines)
		}
	}
	if p.clients > 0 {
		res.RSSPerConnKiB = float64(rssDelta) / float64(p.clients)
		res.HeapPerConnKiB = float64(heapDelta) / float64(p.clients)
		res.StackPerConnKiB = float64(stackDelta) / float64(p.clients)
		res.GoroutinesPerConn = float64(gDelta) / float64(p.clients)
	}
	if p.load == loadIdle {
		return res, nil
	}

	// An idle window before a rate load gives each node's fixed CPU cost
	// (runtime, timers, probes), so the work per notification can be told
	// apart from what a node spends whether or not it delivers anything.
	idleCPU := make([]time.Duration, len(nodes))
	var idleFor time.Duration
	if p.load == loadRate {
		before, err := b.cpuTimes(nodes)
		if err != nil {
			return res, err
		}
		idleStart := time.Now()
		time.Sleep(idleWindow) // a measuring window, not a wait for a condition
		after, err := b.cpuTimes(nodes)
		if err != nil {
			return res, err
		}
		idleFor = time.Since(idleStart)
		for i := range nodes {
			idleCPU[i] = after[i] - before[i]
		}
	}

	cpu0, err := b.cpuTimes(nodes)
	if err != nil {
		return res, err
	}
	redis0 := time.Duration(-1) // raw involves no Redis
	if !p.raw {
		redis0 = b.redis.cpu(ctx)
	}
	self0 := selfCPU()
	start := time.Now()

	var expected int64
	var sent func(user int) (int64, map[int64]bool)
	switch p.load {
	case loadRate:
		sr := sendAtRate(ctx, b.hc, sendPlan{
			users:    p.clients,
			total:    p.total(),
			rate:     p.rate,
			workers:  32,
			via:      func(u int) string { return nodes[p.sendNode(u)].baseURL() },
			deadline: p.duration + 30*time.Second,
		})
		res.Sent, res.SendErrors, res.Offline, res.FirstError = sr.Accepted, sr.Errors, sr.Offline, sr.FirstError
		res.NotifyPerSec = float64(sr.Accepted) / sr.Elapsed.Seconds()
		expected, sent = sr.Accepted, sr.sent(p.clients)
	case loadFire:
		fr, err := fire(ctx, b.hc, nodes[p.sendNode(0)].baseURL(), p.clients, p.notifications, p.notifiers)
		if err != nil {
			return res, err
		}
		res.Sent, res.SendErrors, res.Offline, res.FirstError = fr.Sent, fr.Errors, fr.Offline, fr.FirstError
		res.NotifyPerSec = float64(fr.Sent) / time.Duration(fr.ElapsedNS).Seconds()
		expected = fr.Sent
		sent = (&sendResult{Attempted: int64(p.notifications)}).sent(p.clients)
	}
	maxDrain := 30*time.Second + time.Duration(expected)*time.Millisecond/2
	cs.waitReceived(ctx, expected, 5*time.Second, maxDrain)
	cpu1, err := b.cpuTimes(nodes)
	if err != nil {
		return res, err
	}
	redis1 := time.Duration(-1)
	if !p.raw {
		redis1 = b.redis.cpu(ctx)
	}
	res.LoadgenCPUSec = (selfCPU() - self0).Seconds()
	final, err := b.statuses(ctx, nodes, false)
	if err != nil {
		return res, err
	}
	stopClients()
	if err := ctx.Err(); err != nil {
		return res, err
	}

	d := cs.collect(len(nodes), sent)
	res.Delivered, res.Lost, res.Duplicates, res.OutOfOrder = d.Received, d.Lost, d.Duplicates, d.OutOfOrder
	res.Reconnects, res.SlowCloses, res.OtherCloses = d.Reconnects, d.SlowCloses, d.OtherCloses
	res.NoIDResumes = d.NoIDResumes
	res.Truncated, res.BadFrames, res.GaveUp = d.Truncated, d.BadFrames, d.GaveUp
	if d.LastRecv > 0 {
		res.ElapsedSec = time.Duration(d.LastRecv - start.UnixNano()).Seconds()
		res.DeliveredPerSec = float64(d.Received) / res.ElapsedSec
	}
	res.LatP50Ms = nsToMs(percentile(d.Latencies, 50))
	res.LatP90Ms = nsToMs(percentile(d.Latencies, 90))
	res.LatP99Ms = nsToMs(percentile(d.Latencies, 99))
	res.LatMaxMs = nsToMs(percentile(d.Latencies, 100))

	for i := range nodes {
		nr := &res.PerNode[i]
		cpu := (cpu1[i] - cpu0[i]).Seconds()
		nr.CPUSec = cpu
		nr.Delivered = d.PerNode[i]
		nr.SlowConsumers = final[i].SlowConsumers
		if res.ElapsedSec > 0 {
			nr.DeliveredPerSec = float64(nr.Delivered) / res.ElapsedSec
		}
		if nr.Delivered > 0 {
			nr.CPUPerMsgUs = cpu * 1e6 / float64(nr.Delivered)
		}
		if idleFor > 0 {
			nr.IdleCPUPerSec = idleCPU[i].Seconds() / idleFor.Seconds()
		}
		res.NodeCPUSec += cpu
	}
	if redis0 >= 0 && redis1 >= 0 {
		res.RedisCPUKnown = true
		res.RedisCPUSec = (redis1 - redis0).Seconds()
	}
	if d.Received > 0 {
		res.NodeCPUPerMsgUs = res.NodeCPUSec * 1e6 / float64(d.Received)
		res.RedisCPUPerMsgUs = res.RedisCPUSec * 1e6 / float64(d.Received)
		res.CPUPerMsgUs = res.NodeCPUPerMsgUs + res.RedisCPUPerMsgUs
	}
	return res, nil
}

// idleWindow is how long each node's idle CPU is measured before a rate load.
const idleWindow = 3 * time.Second

// startNodes starts the plan's processes: p.nodes wsnotify nodes on the key
// prefix, or one raw process. On error the ones started are returned too, for
// the caller to stop.
func (b *bench) startNodes(ctx context.Context, p plan, prefix string) ([]*child, error) {
	nofile := strconv.Itoa(p.clients + 1024)
	if p.raw {
		c, err := b.procs.start(ctx, "raw", rawModeArg, []string{"-nofile", nofile})
		if err != nil {
			return nil, err
		}
		return []*child{c}, nil
	}
	if p.relay {
		var nodes []*child
		for i := range p.nodes {
			c, err := b.procs.start(ctx, fmt.Sprintf("relay%d", i+1), relayModeArg,
				[]string{"-redis", b.redis.addr, "-prefix", prefix, "-nofile", nofile})
			if err != nil {
				return nodes, err
			}
			nodes = append(nodes, c)
		}
		return nodes, nil
	}
	perUser := (p.total() + p.clients - 1) / max(p.clients, 1)
	args := []string{
		"-redis", b.redis.addr,
		"-prefix", prefix,
		"-history=" + strconv.FormatBool(p.history),
		// Long enough that a client resuming after a 4008 finds everything.
		"-history-len", strconv.Itoa(max(1000, 2*perUser)),
		"-nofile", nofile,
	}
	if b.cfg.sessionQueue > 0 {
		args = append(args, "-queue", strconv.Itoa(b.cfg.sessionQueue))
	}
	if b.verbose {
		args = append(args, "-v")
	}
	var nodes []*child
	for i := range p.nodes {
		c, err := b.procs.start(ctx, fmt.Sprintf("node%d", i+1), nodeModeArg, args)
		if err != nil {
			return nodes, err
		}
		nodes = append(nodes, c)
	}
	return nodes, nil
}

func (b *bench) statuses(ctx context.Context, nodes []*child, gc bool) ([]nodeStatus, error) {
	out := make([]nodeStatus, len(nodes))
	for i, n := range nodes {
		st, err := getStatus(ctx, b.hc, n, gc)
		if err != nil {
			return nil, err
		}
		out[i] = st
	}
	return out, nil
}

// waitSessions waits until every node reports the sockets it should hold.
func (b *bench) waitSessions(ctx context.Context, nodes []*child, want []int) error {
	var got []nodeStatus
	var err error
	for range 100 {
		if got, err = b.statuses(ctx, nodes, false); err != nil {
			return err
		}
		ok := true
		for i := range nodes {
			ok = ok && got[i].Sessions == want[i]
		}
		if ok {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return errors.New("the nodes did not report the expected number of sessions within 10s")
}

func (b *bench) cpuTimes(nodes []*child) ([]time.Duration, error) {
	out := make([]time.Duration, len(nodes))
	for i, n := range nodes {
		d, err := processCPU(n.pid())
		if err != nil {
			return nil, err
		}
		out[i] = d
	}
	return out, nil
}

func nsToMs(ns int64) float64 { return float64(ns) / 1e6 }
