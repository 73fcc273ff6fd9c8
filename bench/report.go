package main

// Results: the per-run record, medians over runs, the tables, the JSON file.

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// Result is one measurement of one system in one run.
type Result struct {
	Scenario string `json:"scenario"`
	System   string `json:"system"` // "wsnotify" or "raw"
	History  string `json:"history,omitempty"`
	Nodes    int    `json:"nodes"`
	ShareOf  int    `json:"share_of_nodes,omitempty"` // raw s4 rows: one node's share of this many`
	Run      int    `json:"run"`
	Clients  int    `json:"clients"`

	Sent         int64   `json:"sent"` // notifications accepted (by Redis, or written by raw)
	SendErrors   int64   `json:"send_errors"`
	FirstError   string  `json:"first_error,omitempty"`
	Offline      int64   `json:"offline"` // accepted with no receiver
	NotifyPerSec float64 `json:"notify_per_sec"`

	Delivered       int64   `json:"delivered"` // distinct notifications received
	ElapsedSec      float64 `json:"elapsed_sec"`
	DeliveredPerSec float64 `json:"delivered_per_sec"`
	Lost            int64   `json:"lost"`
	Duplicates      int64   `json:"duplicates"`
	OutOfOrder      int64   `json:"out_of_order"` // history on: ids not increasing per user
	Reconnects      int64   `json:"reconnects"`
	NoIDResumes     int64   `json:"no_id_resumes"` // history on: reconnects with no id to resume from
	SlowCloses      int64   `json:"slow_closes"`   // 4008
	OtherCloses     int64   `json:"other_closes"`
	Truncated       int64   `json:"truncated"`
	BadFrames       int64   `json:"bad_frames"`
	GaveUp          int64   `json:"gave_up"` // clients that could not reconnect

	LatP50Ms float64 `json:"latency_p50_ms"`
	LatP90Ms float64 `json:"latency_p90_ms"`
	LatP99Ms float64 `json:"latency_p99_ms"`
	LatMaxMs float64 `json:"latency_max_ms"`

	ConnectPerSec     float64 `json:"connect_per_sec"`
	RSSPerConnKiB     float64 `json:"rss_per_conn_kib"`
	HeapPerConnKiB    float64 `json:"heap_per_conn_kib"`
	StackPerConnKiB   float64 `json:"stack_per_conn_kib"`
	GoroutinesPerConn float64 `json:"goroutines_per_conn"`

	NodeCPUSec       float64 `json:"node_cpu_sec"`
	RedisCPUSec      float64 `json:"redis_cpu_sec"`
	RedisCPUKnown    bool    `json:"redis_cpu_known"`
	LoadgenCPUSec    float64 `json:"loadgen_cpu_sec"`
	NodeCPUPerMsgUs  float64 `json:"node_cpu_per_msg_us"`
	RedisCPUPerMsgUs float64 `json:"redis_cpu_per_msg_us"`
	CPUPerMsgUs      float64 `json:"cpu_per_msg_us"` // nodes + Redis

	PerNode []NodeResult `json:"per_node"`
}

// NodeResult is one process's share of a Result.
type NodeResult struct {
	Clients         int     `json:"clients"`
	Delivered       int64   `json:"delivered"`
	DeliveredPerSec float64 `json:"delivered_per_sec"`
	CPUSec          float64 `json:"cpu_sec"`
	CPUPerMsgUs     float64 `json:"cpu_per_msg_us"`   // per message delivered on this node
	IdleCPUPerSec   float64 `json:"idle_cpu_per_sec"` // before a rate load, nothing sent
	RSSPerConnKiB   float64 `json:"rss_per_conn_kib"`
	SlowConsumers   uint64  `json:"slow_consumers"`
}

func (r Result) key() string {
	return fmt.Sprintf("%s/%s/%s/%d/%d", r.Scenario, r.System, r.History, r.Nodes, r.ShareOf)
}

func (r Result) label() string {
	switch r.System {
	case "raw":
		return "raw"
	case "relay":
		return "relay (bare PUBLISH)"
	}
	return "wsnotify history=" + r.History
}

// summary is the one line printed after each measurement.
func (r Result) summary() string {
	s := fmt.Sprintf("%s run %d %s", r.Scenario, r.Run, r.label())
	if r.Scenario == "s4" {
		s += fmt.Sprintf(" nodes=%d", r.Nodes)
		if r.ShareOf > 0 {
			s += fmt.Sprintf(" (1/%d of the load)", r.ShareOf)
		}
	}
	s += fmt.Sprintf(": %d clients, RSS/conn %.1f KiB", r.Clients, r.RSSPerConnKiB)
	if r.Sent == 0 && r.Delivered == 0 {
		return s
	}
	s += fmt.Sprintf("; delivered %d/%d (%s/s), lost %d, dup %d, reconnects %d; latency p50 %.2f p99 %.2f max %.2f ms; CPU %.1f µs/msg",
		r.Delivered, r.Sent, group(r.DeliveredPerSec), r.Lost, r.Duplicates, r.Reconnects,
		r.LatP50Ms, r.LatP99Ms, r.LatMaxMs, r.CPUPerMsgUs)
	if r.NoIDResumes > 0 {
		s += fmt.Sprintf("; %d reconnects had no id to resume from", r.NoIDResumes)
	}
	if r.Offline > 0 {
		s += fmt.Sprintf("; %d notifications reached no receiver", r.Offline)
	}
	if r.SendErrors > 0 {
		s += fmt.Sprintf("; %d send errors (first: %s)", r.SendErrors, r.FirstError)
	}
	return s
}

// medians groups results by scenario, system, history and node count, in
// first-seen order, and returns the per-field median of each group.
func medians(results []Result) []Result {
	var order []string
	groups := map[string][]Result{}
	for _, r := range results {
		k := r.key()
		if _, ok := groups[k]; !ok {
			order = append(order, k)
		}
		groups[k] = append(groups[k], r)
	}
	out := make([]Result, 0, len(order))
	for _, k := range order {
		out = append(out, medianOf(groups[k]))
	}
	return out
}

// medianOf takes the median of every numeric field independently (so a
// median row need not be one of the runs), per node too.
func medianOf(rs []Result) Result {
	m := rs[0]
	m.Run = 0
	medianFields(reflect.ValueOf(&m).Elem(), func(i int) reflect.Value { return reflect.ValueOf(rs[i]) }, len(rs))
	for n := range m.PerNode {
		if !slices.ContainsFunc(rs, func(r Result) bool { return len(r.PerNode) <= n }) {
			medianFields(reflect.ValueOf(&m.PerNode[n]).Elem(),
				func(i int) reflect.Value { return reflect.ValueOf(rs[i].PerNode[n]) }, len(rs))
		}
	}
	m.PerNode = slices.Clone(m.PerNode)
	return m
}

func medianFields(dst reflect.Value, src func(int) reflect.Value, n int) {
	for f := range dst.NumField() {
		vals := make([]float64, n)
		switch dst.Field(f).Kind() {
		case reflect.Float64:
			for i := range n {
				vals[i] = src(i).Field(f).Float()
			}
			dst.Field(f).SetFloat(median(vals))
		case reflect.Int64, reflect.Int:
			for i := range n {
				vals[i] = float64(src(i).Field(f).Int())
			}
			dst.Field(f).SetInt(int64(math.Round(median(vals))))
		case reflect.Uint64:
			for i := range n {
				vals[i] = float64(src(i).Field(f).Uint())
			}
			dst.Field(f).SetUint(uint64(math.Round(median(vals))))
		}
	}
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// printTables writes one table per scenario, medians over runs, each
// wsnotify row followed by its ratio to the raw baseline.
func printTables(w io.Writer, meta reportMeta, results []Result) {
	med := medians(results)
	for _, sc := range []string{"s1", "s2", "s3", "s4"} {
		var rows, shares []Result
		var raw *Result
		for i, r := range med {
			switch {
			case r.Scenario != sc:
			case r.System == "raw" && r.ShareOf > 0:
				shares = append(shares, r)
			case r.System == "raw":
				raw = &med[i]
			default:
				rows = append(rows, r)
			}
		}
		if len(rows) == 0 && raw == nil {
			continue
		}
		fmt.Fprintf(w, "\n== %s (median of %d run(s)) ==\n", scenarioTitle(sc, meta), meta.RunCount)
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		switch sc {
		case "s1":
			latencyTable(tw, rows, raw)
		case "s2":
			throughputTable(tw, rows, raw, meta)
		case "s3":
			memoryTable(tw, rows, raw)
		case "s4":
			scaleTable(tw, rows, raw, shares)
		}
		_ = tw.Flush()
		noIDNotes(w, sc, results)
	}
	if len(meta.RedisBenchmark) > 0 || meta.RedisBenchmarkNote != "" {
		fmt.Fprintf(w, "\n== redis-benchmark on the same Redis ==\n")
		for _, b := range meta.RedisBenchmark {
			fmt.Fprintf(w, "%-14s %s/s  (%s)\n", b.Label, group(b.RequestsSec), b.Command)
		}
		if meta.RedisBenchmarkNote != "" {
			fmt.Fprintln(w, meta.RedisBenchmarkNote)
		}
	}
	if slices.ContainsFunc(results, func(r Result) bool { return r.Sent > 0 }) {
		fmt.Fprintln(w, "\nCPU µs/msg: (user+system time of the node processes [and of redis-server]) / notifications delivered;")
		fmt.Fprintln(w, "  /proc counts in 10 ms ticks, so small runs are coarse. Lost with history off is expected (at most once).")
	}
	fmt.Fprintln(w, "RSS/conn: (VmRSS with C idle sockets - VmRSS before) / C, both after a GC, on the nodes holding sockets.")
	if meta.Embedded {
		fmt.Fprintln(w, "WARNING: embedded miniredis: these figures are NOT meaningful.")
	}
}

// noIDNotes explains losses with history on that come from clients closed
// before their first notification: they have no id to resume from, so the
// new socket starts at its own upgrade and what was published in between is
// never replayed.
func noIDNotes(w io.Writer, sc string, results []Result) {
	total := map[string]int64{}
	var order []string
	for _, r := range results {
		if r.Scenario == sc && r.NoIDResumes > 0 {
			k := r.label()
			if sc == "s4" {
				k += fmt.Sprintf(" nodes=%d", r.Nodes)
			}
			if total[k] == 0 {
				order = append(order, k)
			}
			total[k] += r.NoIDResumes
		}
	}
	for _, k := range order {
		fmt.Fprintf(w, "note: %s: %d reconnect(s) over all runs had no id to resume from (closed before the first "+
			"notification arrived), so what was published until the new upgrade is not replayed\n", k, total[k])
	}
}

func scenarioTitle(sc string, m reportMeta) string {
	switch sc {
	case "s1":
		return fmt.Sprintf("s1 latency: %d clients on node 1, %g notifications/s for %s via POST /notify on node 2",
			m.Sizes[sc].Clients, m.Sizes[sc].Rate, m.Sizes[sc].Duration)
	case "s2":
		return fmt.Sprintf("s2 throughput: %d clients on node 1, %d notifications fired on node 2 by %d notifiers",
			m.Sizes[sc].Clients, m.Sizes[sc].Notifications, m.Sizes[sc].Notifiers)
	case "s3":
		return fmt.Sprintf("s3 memory: %d idle clients on one node", m.Sizes[sc].Clients)
	case "s4":
		return fmt.Sprintf("s4 scale-out: %d clients spread over the nodes, %g notifications/s for %s, each sent through another node",
			m.Sizes[sc].Clients, m.Sizes[sc].Rate, m.Sizes[sc].Duration)
	}
	return sc
}

// cells writes one tab-separated row.
func cells(w io.Writer, c ...string) { fmt.Fprintln(w, strings.Join(c, "\t")) }

func ratio(v, raw float64) string {
	if raw == 0 || math.IsNaN(v) {
		return "-"
	}
	return fmt.Sprintf("%.2fx", v/raw)
}

func f1(v float64) string { return strconv.FormatFloat(v, 'f', 1, 64) }
func f2(v float64) string { return strconv.FormatFloat(v, 'f', 2, 64) }
func i64(v int64) string  { return strconv.FormatInt(v, 10) }

func redisCPU(r Result) string {
	switch {
	case r.System == "raw":
		return "-"
	case !r.RedisCPUKnown:
		return "?"
	}
	return f1(r.RedisCPUPerMsgUs)
}

// order is the count of out-of-order receipts, where the order is defined:
// per user with history on.
func order(r Result) string {
	if r.History != "on" {
		return "-"
	}
	return i64(r.OutOfOrder)
}

func latencyTable(w io.Writer, rows []Result, raw *Result) {
	cells(w, "system", "deliv/s", "p50 ms", "p90 ms", "p99 ms", "max ms", "lost", "dup", "reconn",
		"RSS/conn KiB", "node µs/msg", "redis µs/msg", "total µs/msg")
	line := func(r Result) {
		cells(w, r.label(), group(r.DeliveredPerSec), f2(r.LatP50Ms), f2(r.LatP90Ms), f2(r.LatP99Ms), f2(r.LatMaxMs),
			i64(r.Lost), i64(r.Duplicates), i64(r.Reconnects), f1(r.RSSPerConnKiB),
			f1(r.NodeCPUPerMsgUs), redisCPU(r), f1(r.CPUPerMsgUs))
	}
	if raw != nil {
		line(*raw)
	}
	for _, r := range rows {
		line(r)
		if raw != nil {
			cells(w, "  ÷ raw", ratio(r.DeliveredPerSec, raw.DeliveredPerSec),
				ratio(r.LatP50Ms, raw.LatP50Ms), ratio(r.LatP90Ms, raw.LatP90Ms), ratio(r.LatP99Ms, raw.LatP99Ms),
				ratio(r.LatMaxMs, raw.LatMaxMs), "", "", "", ratio(r.RSSPerConnKiB, raw.RSSPerConnKiB),
				ratio(r.NodeCPUPerMsgUs, raw.NodeCPUPerMsgUs), "", ratio(r.CPUPerMsgUs, raw.CPUPerMsgUs))
		}
	}
}

func throughputTable(w io.Writer, rows []Result, raw *Result, meta reportMeta) {
	cells(w, "system", "notify/s", "deliv/s", "lost", "dup", "order", "reconn", "4008",
		"p50 ms", "p99 ms", "max ms", "node µs/msg", "redis µs/msg", "total µs/msg")
	line := func(r Result) {
		cells(w, r.label(), group(r.NotifyPerSec), group(r.DeliveredPerSec), i64(r.Lost), i64(r.Duplicates),
			order(r), i64(r.Reconnects), i64(r.SlowCloses), f2(r.LatP50Ms), f2(r.LatP99Ms), f2(r.LatMaxMs),
			f1(r.NodeCPUPerMsgUs), redisCPU(r), f1(r.CPUPerMsgUs))
	}
	if raw != nil {
		line(*raw)
	}
	for _, r := range rows {
		line(r)
		if raw != nil {
			cells(w, "  ÷ raw", ratio(r.NotifyPerSec, raw.NotifyPerSec), ratio(r.DeliveredPerSec, raw.DeliveredPerSec),
				"", "", "", "", "", ratio(r.LatP50Ms, raw.LatP50Ms), ratio(r.LatP99Ms, raw.LatP99Ms),
				ratio(r.LatMaxMs, raw.LatMaxMs), ratio(r.NodeCPUPerMsgUs, raw.NodeCPUPerMsgUs), "",
				ratio(r.CPUPerMsgUs, raw.CPUPerMsgUs))
		}
	}
	for _, r := range rows {
		if len(meta.RedisBenchmark) == 0 {
			break
		}
		parts := make([]string, len(meta.RedisBenchmark))
		for i, b := range meta.RedisBenchmark {
			parts[i] = fmt.Sprintf("%.0f%% of redis-benchmark %s (%s/s)",
				100*r.DeliveredPerSec/b.RequestsSec, b.Label, group(b.RequestsSec))
		}
		fmt.Fprintf(w, "%s deliv/s = %s\n", r.label(), strings.Join(parts, ", "))
	}
}

func memoryTable(w io.Writer, rows []Result, raw *Result) {
	cells(w, "system", "clients", "connect/s", "RSS/conn KiB", "heap KiB", "stacks KiB", "goroutines/conn")
	line := func(r Result) {
		cells(w, r.label(), strconv.Itoa(r.Clients), group(r.ConnectPerSec), f1(r.RSSPerConnKiB),
			f1(r.HeapPerConnKiB), f1(r.StackPerConnKiB), f2(r.GoroutinesPerConn))
	}
	if raw != nil {
		line(*raw)
	}
	for _, r := range rows {
		line(r)
		if raw != nil {
			cells(w, "  ÷ raw", "", ratio(r.ConnectPerSec, raw.ConnectPerSec),
				ratio(r.RSSPerConnKiB, raw.RSSPerConnKiB), ratio(r.HeapPerConnKiB, raw.HeapPerConnKiB),
				ratio(r.StackPerConnKiB, raw.StackPerConnKiB), ratio(r.GoroutinesPerConn, raw.GoroutinesPerConn))
		}
	}
}

// scaleTable compares each node count with the raw baseline run at one
// node's share of the load (its clients and its rate): at a few hundred
// messages a second a process's CPU per message depends on the rate itself
// (waking an idle process costs more than the message), so that is the
// baseline a node of an n-node cluster is to be measured against.
func scaleTable(w io.Writer, rows []Result, raw *Result, shares []Result) {
	cells(w, "system", "nodes", "deliv/s", "deliv/s/node", "node µs/msg mean", "node µs/msg max",
		"idle ms/s/node", "redis µs/msg", "total µs/msg", "p50 ms", "p99 ms", "lost", "RSS/conn KiB")
	line := func(label string, r Result) {
		s := perNodeCPU(r)
		cells(w, label, strconv.Itoa(r.Nodes), group(r.DeliveredPerSec), group(r.DeliveredPerSec/float64(max(r.Nodes, 1))),
			f1(s.mean), f1(s.worst), f1(s.idleMsPerSec), redisCPU(r), f1(r.CPUPerMsgUs),
			f2(r.LatP50Ms), f2(r.LatP99Ms), i64(r.Lost), f1(r.RSSPerConnKiB))
	}
	if raw != nil {
		line(raw.label(), *raw)
	}
	for _, r := range shares {
		line(fmt.Sprintf("raw, 1/%d of the load", r.ShareOf), r)
	}
	for _, r := range rows {
		line(r.label(), r)
		base := raw
		for i := range shares {
			if shares[i].ShareOf == r.Nodes {
				base = &shares[i]
			}
		}
		if base == nil {
			continue
		}
		bs, s := perNodeCPU(*base), perNodeCPU(r)
		label := "  ÷ raw"
		if base.ShareOf > 0 {
			label = fmt.Sprintf("  ÷ raw 1/%d", base.ShareOf)
		}
		cells(w, label, "", "", ratio(r.DeliveredPerSec/float64(max(r.Nodes, 1)), base.DeliveredPerSec),
			ratio(s.mean, bs.mean), ratio(s.worst, bs.mean), "", "", ratio(r.CPUPerMsgUs, base.CPUPerMsgUs),
			ratio(r.LatP50Ms, base.LatP50Ms), ratio(r.LatP99Ms, base.LatP99Ms), "", ratio(r.RSSPerConnKiB, base.RSSPerConnKiB))
	}
	fmt.Fprintln(w, "idle ms/s/node: a node's CPU while its clients are connected and nothing is sent (mean over nodes).")
	fmt.Fprintln(w, "÷ raw 1/n: against plain gorilla carrying one node's share (clients/n at rate/n) in the same run.")
}

type nodeCPU struct {
	mean, worst  float64 // CPU per message delivered to the node's own clients
	idleMsPerSec float64
}

// perNodeCPU averages, over the nodes that delivered, a node's CPU per
// message delivered to its own clients (it also publishes its share).
func perNodeCPU(r Result) nodeCPU {
	var s nodeCPU
	n := 0
	for _, nr := range r.PerNode {
		if nr.Delivered == 0 {
			continue
		}
		s.mean += nr.CPUPerMsgUs
		s.worst = max(s.worst, nr.CPUPerMsgUs)
		s.idleMsPerSec += nr.IdleCPUPerSec * 1e3
		n++
	}
	if n == 0 {
		return nodeCPU{}
	}
	s.mean /= float64(n)
	s.idleMsPerSec /= float64(n)
	return s
}

// group formats v rounded, with thousands separators.
func group(v float64) string {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return "-"
	}
	s := strconv.FormatInt(int64(math.Round(v)), 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

// sizes are the effective sizes of one scenario.
type sizes struct {
	Clients       int           `json:"clients"`
	Rate          float64       `json:"rate,omitempty"`
	Duration      time.Duration `json:"duration_ns,omitempty"`
	Notifications int           `json:"notifications,omitempty"`
	Notifiers     int           `json:"notifiers,omitempty"`
	Nodes         []int         `json:"nodes,omitempty"`
}

// reportMeta describes the invocation.
type reportMeta struct {
	Started            time.Time        `json:"started"`
	Args               []string         `json:"args"`
	GoVersion          string           `json:"go_version"`
	NumCPU             int              `json:"num_cpu"`
	RunCount           int              `json:"run_count"`
	RedisAddr          string           `json:"redis_addr"`
	RedisVersion       string           `json:"redis_version"`
	RedisPID           int              `json:"redis_pid"`
	RedisCPUFrom       string           `json:"redis_cpu_from"` // proc, info, or "" (unknown)
	Embedded           bool             `json:"embedded_miniredis"`
	Sizes              map[string]sizes `json:"sizes"`
	RedisBenchmark     []redisBench     `json:"redis_benchmark,omitempty"`
	RedisBenchmarkNote string           `json:"redis_benchmark_note,omitempty"`
}

func writeReportJSON(path string, meta reportMeta, results []Result) error {
	doc := struct {
		reportMeta
		Runs    []Result `json:"runs"`
		Medians []Result `json:"medians"`
	}{meta, results, medians(results)}
	b, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}
