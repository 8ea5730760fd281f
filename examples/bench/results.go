package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// row describes one measured figure and its target.
type row struct {
	id, workload, unit string
	higherIsBetter     bool
	redis7             string // the figure the issue measured with Redis 7.0.15
	target             target
}

// target is a row's goal: at least (or at most) factor times Redis, or an
// absolute bound. A zero target has none.
type target struct {
	factor float64 // vs Redis: ≥ factor× (higher is better) or ≤ factor× (lower)
	abs    float64 // absolute: ≥ abs or ≤ abs, in the row's unit
}

func (t target) String(r row) string {
	cmp := "≤"
	if r.higherIsBetter {
		cmp = "≥"
	}
	switch {
	case t.factor == 1:
		return cmp + " Redis"
	case t.factor > 0 && r.higherIsBetter:
		return fmt.Sprintf("%s %g× Redis", cmp, t.factor)
	case t.factor > 0:
		return fmt.Sprintf("%s %s of Redis", cmp, fraction(t.factor))
	case t.abs > 0:
		return fmt.Sprintf("%s %s", cmp, formatValue(r.unit, t.abs))
	}
	return "—"
}

func fraction(f float64) string {
	switch f {
	case 0.5:
		return "½"
	case 1.0 / 3:
		return "⅓"
	}
	return fmt.Sprintf("%g×", f)
}

// met reports whether replmap's figure meets the target, and whether that
// can be told (a factor needs a Redis figure).
func (t target) met(r row, replmap, redis float64, haveRedis bool) (met, known bool) {
	switch {
	case t.factor > 0 && !haveRedis:
		return false, false
	case t.factor > 0 && r.higherIsBetter:
		return replmap >= t.factor*redis, true
	case t.factor > 0:
		return replmap <= t.factor*redis, true
	case t.abs > 0 && r.higherIsBetter:
		return replmap >= t.abs, true
	case t.abs > 0:
		return replmap <= t.abs, true
	}
	return false, false
}

var rows = []row{
	{"W1", "replicated writes, 1M over 100k keys, 1 replica, until caught up", "/s", true, "549k/s", target{factor: 5}},
	{"W2", "same with 2 replicas", "/s", true, "399k/s", target{factor: 5}},
	{"W3 p50", "Set + Wait(1, 0), sequential: p50", "µs", false, "119 µs", target{factor: 1.0 / 3}},
	{"W3 p99", "Set + Wait(1, 0), sequential: p99", "µs", false, "159 µs", target{factor: 1.0 / 3}},
	{"W3 p99.9", "Set + Wait(1, 0), sequential: p99.9", "µs", false, "321 µs", target{factor: 1.0 / 3}},
	{"W4", "acknowledged writes/s, 64 goroutines doing Set + Wait(1, 0)", "/s", true, "—", target{abs: 200_000}},
	{"W5", "full sync of 1M keys to a new replica: time to synced", "s", false, "2.6 s", target{factor: 0.5}},
	{"W6 p99.9", "primary Set latency during W5: p99.9", "µs", false, "868 µs", target{abs: 200}},
	{"W6 max", "primary Set latency during W5: max", "µs", false, "7.9 ms", target{abs: 1000}},
	{"W7 primary", "memory per key, 1M × 100 B, primary: heap after GC (Redis: used_memory)", "B", false, "200 B", target{abs: 200}},
	{"W7 replica", "memory per key, replica: heap after GC (Redis: used_memory)", "B", false, "—", target{abs: 200}},
	{"W7 primary RSS", "memory per key, primary: RSS", "B", false, "—", target{}},
	{"W7 replica RSS", "memory per key, replica: RSS", "B", false, "—", target{}},
	{"W8", "partial resync: link cut, 10k writes, time from heal to caught up", "ms", false, "37 ms", target{abs: 20}},
	{"W9", "failover, 1M keys: primary killed, one replica promoted, the other re-pointed; time to it streaming", "ms", false, "39 ms", target{abs: 10}},
	{"W9 full syncs", "full syncs the failover took", "", false, "0", target{}},
	{"W10", "planned handover (Redis: FAILOVER TO), 1M keys: time from the call to the old primary streaming from the new", "ms", false, "—", target{abs: 10}},
	{"W10 full syncs", "full syncs the handover took", "", false, "—", target{}},
	{"W11", "durable writes/s, fsync always (Redis: appendfsync always), 64 goroutines (Redis: clients) doing Set, no replica", "/s", true, "—", target{factor: 2}},
	{"W12", "W1 with a data directory, fsync every second (Redis: AOF, appendfsync everysec)", "/s", true, "—", target{}},
	{"W12 cost", "how much slower W12 is than W1 without one, in the same run (Redis: than no AOF)", "%", false, "—", target{abs: 10}},
	{"W13 serve", "restart of a primary with 1M keys on its data (Redis: SHUTDOWN SAVE, load the RDB): time until it serves", "ms", false, "—", target{factor: 1}},
	{"W13 replica", "same: time from the restart until its replica has acknowledged a new write", "ms", false, "—", target{factor: 1}},
	{"W13 full syncs", "full syncs the restart took", "", false, "—", target{}},
	{"W14 dir", "bytes on disk per key, 1M × 100 B: data directory, once its snapshot is written (Redis: AOF directory, after its rewrite)", "B", false, "—", target{}},
	{"W14 snapshot", "bytes on disk per key: one snapshot (replmap: Backup, the directory's snapshot format; Redis: RDB)", "B", false, "—", target{}},
	{"W15", "replicated keys/s, W1's writes as Updates of 100 Sets, 1 replica, until caught up (Redis: redis-benchmark -P 100, not atomic)", "/s", true, "—", target{factor: 5}},
	{"W15 multi", "same (Redis: MULTI/EXEC of 100 SETs, 50 clients)", "/s", true, "—", target{factor: 5}},
	{"W16", "W1 on a primary holding 1M keys with TTLs expiring at 50k/s (Redis: SET PXAT)", "/s", true, "—", target{}},
	{"W16 no TTL", "W1 on a primary holding 1M keys without TTLs", "/s", true, "—", target{}},
	{"W16 cost", "how much slower W16 is than W16 no TTL, in the same run", "%", false, "—", target{abs: 10}},
	{"W16 p99.9", "primary Set latency, 20k Sets/s, while the keys expire: p99.9", "µs", false, "—", target{abs: 200}},
	{"W16 p99.9 off", "same with the keys without TTLs: p99.9", "µs", false, "—", target{}},
	{"W16 expired/s", "keys the primary deleted on expiry per second during W16's measurements (deadlines pass at 50k/s)", "/s", true, "—", target{}},
	{"W17 p50", "watch delivery latency, Set on the primary to the event in a replica process, 100 watchers, 1000 Sets/s: p50", "µs", false, "—", target{}},
	{"W17 p99", "same: p99", "µs", false, "—", target{}},
	{"W17 max", "same: max", "µs", false, "—", target{}},
}

func findRow(id string) row {
	for _, r := range rows {
		if r.id == id {
			return r
		}
	}
	panic("bench: no row " + id)
}

func formatValue(unit string, v float64) string {
	switch unit {
	case "/s":
		switch {
		case v >= 1e6:
			return fmt.Sprintf("%.2fM/s", v/1e6)
		case v >= 1e3:
			return fmt.Sprintf("%.0fk/s", v/1e3)
		}
		return fmt.Sprintf("%.0f/s", v)
	case "µs":
		if v >= 1000 {
			return fmt.Sprintf("%.2f ms", v/1000)
		}
		return fmt.Sprintf("%.1f µs", v)
	case "ms":
		return fmt.Sprintf("%.1f ms", v)
	case "s":
		return fmt.Sprintf("%.2f s", v)
	case "B":
		return fmt.Sprintf("%.0f B", v)
	case "%":
		return fmt.Sprintf("%.1f%%", v)
	case "":
		return fmt.Sprintf("%.0f", v)
	}
	return fmt.Sprintf("%g %s", v, unit)
}

// results collects every run's figures and summarises them.
type results struct {
	Date         string         `json:"date"`
	Machine      string         `json:"machine"`
	RedisVersion string         `json:"redis_version,omitempty"`
	Config       map[string]any `json:"config"`
	Rows         []resultRow    `json:"rows"`
}

type resultRow struct {
	ID       string    `json:"id"`
	Workload string    `json:"workload"`
	Unit     string    `json:"unit"`
	Higher   bool      `json:"higher_is_better"`
	Replmap  []float64 `json:"replmap_runs"`
	Redis    []float64 `json:"redis_runs,omitempty"`
	// Medians over the runs, the ratio (replmap's advantage: above 1 is
	// better whichever way the unit points), and the target.
	ReplmapMedian float64 `json:"replmap"`
	RedisMedian   float64 `json:"redis,omitempty"`
	Advantage     float64 `json:"advantage,omitempty"`
	Target        string  `json:"target"`
	Met           *bool   `json:"met,omitempty"`
	// Date is when the row was measured: rows kept from an earlier
	// results.json by a run of some workloads (-only) keep theirs.
	Date string `json:"date,omitempty"`
}

func newResults(cfg config, redisVersion string) *results {
	return &results{
		Date:         time.Now().UTC().Format(time.RFC3339),
		Machine:      machineDescription(),
		RedisVersion: redisVersion,
		Config: map[string]any{
			"runs": cfg.runs, "writes": cfg.writes, "keyspace": cfg.keyspace,
			"writers": cfg.writers, "latency_ops": cfg.latencyOps, "ack_workers": cfg.ackWorkers,
			"ack_time": cfg.ackTime.String(), "sync_keys": cfg.syncKeys, "w6_rate": cfg.w6Rate,
			"resync_writes": cfg.resyncWrites, "value_size": cfg.valueSize,
			"failover_keys": cfg.failoverKeys, "restart_keys": cfg.restartKeys,
			"tx_size": cfg.txSize, "ttl_keys": cfg.ttlKeys, "expire_rate": cfg.expireRate,
			"watchers": cfg.watchers, "watch_rate": cfg.watchRate,
		},
	}
}

func (res *results) add(id, system string, v float64) {
	i := slices.IndexFunc(res.Rows, func(r resultRow) bool { return r.ID == id })
	if i < 0 {
		r := findRow(id)
		res.Rows = append(res.Rows, resultRow{ID: id, Workload: r.workload, Unit: r.unit, Higher: r.higherIsBetter, Date: res.Date})
		i = len(res.Rows) - 1
	}
	if system == "redis" {
		res.Rows[i].Redis = append(res.Rows[i].Redis, v)
	} else {
		res.Rows[i].Replmap = append(res.Rows[i].Replmap, v)
	}
}

// keep adds the rows of an earlier results.json at path that this run
// did not measure, so that running some workloads (-only) updates their
// rows and keeps the others. A missing file keeps nothing.
func (res *results) keep(path string) error {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var old results
	if err := json.Unmarshal(b, &old); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	for _, rr := range old.Rows {
		known := slices.ContainsFunc(rows, func(r row) bool { return r.id == rr.ID })
		measured := slices.ContainsFunc(res.Rows, func(r resultRow) bool { return r.ID == rr.ID })
		if !known || measured {
			continue
		}
		if rr.Date == "" {
			rr.Date = old.Date
		}
		r := findRow(rr.ID)
		rr.Workload, rr.Unit, rr.Higher = r.workload, r.unit, r.higherIsBetter
		res.Rows = append(res.Rows, rr)
	}
	return nil
}

func (res *results) format(id string, v float64) string { return formatValue(findRow(id).unit, v) }

// finish orders the rows as the issue lists them and fills in medians,
// ratios and targets.
func (res *results) finish() {
	order := func(id string) int { return slices.IndexFunc(rows, func(r row) bool { return r.id == id }) }
	slices.SortFunc(res.Rows, func(a, b resultRow) int { return order(a.ID) - order(b.ID) })
	for i := range res.Rows {
		rr := &res.Rows[i]
		r := findRow(rr.ID)
		rr.ReplmapMedian = median(rr.Replmap)
		have := len(rr.Redis) > 0
		if have {
			rr.RedisMedian = median(rr.Redis)
			if rr.ReplmapMedian > 0 && rr.RedisMedian > 0 && r.unit != "%" {
				if r.higherIsBetter {
					rr.Advantage = rr.ReplmapMedian / rr.RedisMedian
				} else {
					rr.Advantage = rr.RedisMedian / rr.ReplmapMedian
				}
			}
		}
		rr.Target = r.target.String(r)
		if met, known := r.target.met(r, rr.ReplmapMedian, rr.RedisMedian, have); known {
			rr.Met = &met
		}
	}
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Sorted(slices.Values(v))
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// markdown renders the table. "advantage" is how many times better
// replmap did, whichever way the unit points: above 1 replmap wins.
func (res *results) markdown() string {
	var b strings.Builder
	runs := res.Config["runs"]
	fmt.Fprintf(&b, "replmap vs Redis, %s, median of %v run(s)\n", res.dates(), runs)
	fmt.Fprintf(&b, "Machine: %s", res.Machine)
	if res.RedisVersion != "" {
		fmt.Fprintf(&b, "; Redis %s", res.RedisVersion)
	}
	b.WriteString("\n\n| # | workload | replmap | Redis | advantage | target | met |\n|---|---|--:|--:|--:|---|---|\n")
	for _, rr := range res.Rows {
		redis, adv := "—", "—"
		if len(rr.Redis) > 0 {
			redis = formatValue(rr.Unit, rr.RedisMedian)
		}
		if rr.Advantage > 0 {
			adv = fmt.Sprintf("%.1f×", rr.Advantage)
		}
		met := "—"
		if rr.Met != nil {
			met = map[bool]string{true: "yes", false: "**no**"}[*rr.Met]
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %s |\n",
			rr.ID, rr.Workload, formatValue(rr.Unit, rr.ReplmapMedian), redis, adv, rr.Target, met)
	}
	return b.String()
}

// dates says when the rows were measured: the date, or, for rows from
// several runs, each date with the workloads measured then.
func (res *results) dates() string {
	var days []string
	ids := make(map[string][]string)
	for _, rr := range res.Rows {
		day := res.Date[:10]
		if len(rr.Date) >= 10 {
			day = rr.Date[:10]
		}
		if !slices.Contains(days, day) {
			days = append(days, day)
		}
		w, _, _ := strings.Cut(rr.ID, " ")
		if !slices.Contains(ids[day], w) {
			ids[day] = append(ids[day], w)
		}
	}
	if len(days) <= 1 {
		return res.Date[:10]
	}
	var parts []string
	for _, day := range days {
		w := ids[day]
		if len(w) > 2 {
			w = []string{w[0] + "–" + w[len(w)-1]}
		}
		parts = append(parts, strings.Join(w, ", ")+" on "+day)
	}
	return strings.Join(parts, ", ")
}

func (res *results) write(dir, md string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	js, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "results.md"), []byte(md), 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "results.json"), append(js, '\n'), 0o644)
}
