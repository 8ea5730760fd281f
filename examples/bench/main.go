// Command bench measures replmap against Redis at Redis's own game:
// replicated writes, Wait, full and partial resync, memory per key. Every
// replica runs in its own process and every link is TCP over loopback.
//
//	cd examples/bench
//	go run . -redis -runs 3       # side by side with a local redis-server
//	go run .                      # replmap only
//	go run . -only W3,W8 -v       # a subset, with the replicas' logs
//
// The replmap primary runs inside this process, as it would inside a Go
// service; each replica is this same binary started in a replica role and
// driven over its stdin and stdout. With -redis, the same workloads run
// against a redis-server primary and replicas started on free loopback
// ports, driven by go-redis. The results go to stdout as a Markdown table
// and to -out as results.md and results.json; progress goes to stderr.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
)

// roleEnv starts the binary as a replica process (see replicaMain). The
// driver sets it for the processes it starts; a user never needs to.
const roleEnv = "REPLMAP_BENCH_ROLE"

func main() {
	if os.Getenv(roleEnv) == "replica" {
		os.Exit(replicaMain(os.Stdin, os.Stdout, os.Stderr))
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// config is what the flags set.
type config struct {
	redis          bool
	redisServer    string
	redisBenchmark string
	runs           int
	only           map[string]bool
	out            string
	verbose        bool
	profileDir     string        // CPU profiles of the driver and each replica process
	writes         int           // W1, W2: writes per run
	keyspace       int           // W1, W2: distinct keys written
	writers        int           // W1, W2: replmap goroutines calling Set
	latencyOps     int           // W3: sequential Set+Wait calls
	ackWorkers     int           // W4: goroutines doing Set+Wait
	ackTime        time.Duration // W4: how long they run
	syncKeys       int           // W5–W7: keys in the primary
	w6Rate         int           // W6: Sets per second during the sync
	resyncWrites   int           // W8: writes while the link is cut
	failoverKeys   int           // W9, W10: keys in the primary
	restartKeys    int           // W13, W14: keys in the primary
	dataDir        string        // parent of both systems' data directories (W11–W14)
	txSize         int           // W15: Sets per Update (Redis: per pipeline, per MULTI/EXEC)
	ttlKeys        int           // W16: keys with a deadline
	expireRate     int           // W16: deadlines passing per second
	watchers       int           // W17: watchers in the replica process
	watchRate      int           // W17: Sets per second
	valueSize      int
}

var workloadIDs = []string{"W1", "W2", "W3", "W4", "W5", "W6", "W7", "W8", "W9", "W10", "W11", "W12", "W13", "W14", "W15", "W16", "W17"}

func parseFlags(args []string, out io.Writer) (config, error) {
	var c config
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.BoolVar(&c.redis, "redis", false, "also run every workload against a local redis-server")
	fs.StringVar(&c.redisServer, "redis-server", "redis-server", "redis-server binary for -redis")
	fs.StringVar(&c.redisBenchmark, "redis-benchmark", "redis-benchmark", "redis-benchmark binary for Redis's writes in W1 and W2 (\"\" to write with go-redis)")
	fs.IntVar(&c.runs, "runs", 1, "runs of each workload; the table shows medians")
	only := fs.String("only", "", "comma-separated workloads to run (default all: W1,...,W17); results.md and .json keep the rows of the others")
	fs.StringVar(&c.out, "out", ".", "directory for results.md and results.json (\"\" for none)")
	fs.BoolVar(&c.verbose, "v", false, "show the replica processes' logs")
	fs.StringVar(&c.profileDir, "cpuprofile", "", "write CPU profiles of this process and every replica process to this directory")
	fs.IntVar(&c.writes, "writes", 1_000_000, "W1, W2: writes per run")
	fs.IntVar(&c.keyspace, "keyspace", 100_000, "W1, W2: distinct keys")
	fs.IntVar(&c.writers, "writers", runtime.GOMAXPROCS(0), "W1, W2: goroutines calling replmap's Set")
	fs.IntVar(&c.latencyOps, "latency-ops", 20_000, "W3: sequential Set+Wait calls")
	fs.IntVar(&c.ackWorkers, "ack-workers", 64, "W4: goroutines doing Set+Wait; W11: goroutines doing durable Sets (Redis: clients)")
	fs.DurationVar(&c.ackTime, "ack-time", 3*time.Second, "W4, W11: how long they run")
	fs.IntVar(&c.syncKeys, "sync-keys", 1_000_000, "W5-W7: keys in the primary")
	fs.IntVar(&c.w6Rate, "w6-rate", 20_000, "W6: Sets per second during the full sync")
	fs.IntVar(&c.resyncWrites, "resync-writes", 10_000, "W8: writes while the link is cut")
	fs.IntVar(&c.failoverKeys, "failover-keys", 1_000_000, "W9, W10: keys in the primary")
	fs.IntVar(&c.restartKeys, "restart-keys", 1_000_000, "W13, W14: keys in the primary")
	fs.StringVar(&c.dataDir, "data-dir", os.TempDir(), "W11-W14: where both systems' data directories go (one disk for both)")
	fs.IntVar(&c.txSize, "tx-size", 100, "W15: Sets per Update (Redis: SETs per pipeline and per MULTI/EXEC)")
	fs.IntVar(&c.ttlKeys, "ttl-keys", 1_000_000, "W16: keys with a deadline")
	fs.IntVar(&c.expireRate, "expire-rate", 50_000, "W16: deadlines passing per second")
	fs.IntVar(&c.watchers, "watchers", 100, "W17: watchers in the replica process")
	fs.IntVar(&c.watchRate, "watch-rate", 1000, "W17: Sets per second, each an event for every watcher (for -ack-time)")
	fs.IntVar(&c.valueSize, "value-size", 100, "bytes per value")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	c.only = make(map[string]bool)
	for _, id := range strings.Split(*only, ",") {
		id = strings.ToUpper(strings.TrimSpace(id))
		if id == "" {
			continue
		}
		if !slices.Contains(workloadIDs, id) {
			return c, fmt.Errorf("-only: unknown workload %q (have %s)", id, strings.Join(workloadIDs, ","))
		}
		c.only[id] = true
	}
	for name, v := range map[string]int{
		"-runs": c.runs, "-writes": c.writes, "-keyspace": c.keyspace, "-writers": c.writers,
		"-latency-ops": c.latencyOps, "-ack-workers": c.ackWorkers, "-sync-keys": c.syncKeys,
		"-w6-rate": c.w6Rate, "-resync-writes": c.resyncWrites, "-value-size": c.valueSize,
		"-failover-keys": c.failoverKeys, "-restart-keys": c.restartKeys,
		"-tx-size": c.txSize, "-ttl-keys": c.ttlKeys, "-expire-rate": c.expireRate,
		"-watchers": c.watchers, "-watch-rate": c.watchRate,
	} {
		if v <= 0 {
			return c, fmt.Errorf("%s must be positive, got %d", name, v)
		}
	}
	if c.ackTime <= 0 {
		return c, fmt.Errorf("-ack-time must be positive, got %v", c.ackTime)
	}
	return c, nil
}

func (c config) wants(id string) bool { return len(c.only) == 0 || c.only[id] }

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	// The replica processes' stderr is copied into stderr too.
	stderr = &lockedWriter{w: stderr}
	systems := []system{newReplmapSystem(cfg, stderr)}
	redisVersion := ""
	if cfg.redis {
		rs, err := newRedisSystem(cfg)
		if err != nil {
			return err
		}
		redisVersion = rs.version
		systems = append(systems, rs)
	}
	if cfg.profileDir != "" {
		stop, err := startProfile(cfg.profileDir, "driver")
		if err != nil {
			return err
		}
		defer stop()
	}
	res := newResults(cfg, redisVersion)
	progress := func(format string, a ...any) {
		fmt.Fprintf(stderr, "%s  %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, a...))
	}
	progress("machine: %s", res.Machine)
	for run := 1; run <= cfg.runs; run++ {
		for _, s := range systems {
			for _, w := range workloads {
				if !w.selected(cfg) {
					continue
				}
				if err := ctx.Err(); err != nil {
					return err
				}
				progress("run %d/%d  %-7s %s", run, cfg.runs, s.name(), w.title)
				got, err := w.run(ctx, s, cfg)
				if err != nil {
					return fmt.Errorf("%s on %s: %w", w.title, s.name(), err)
				}
				for id, v := range got {
					res.add(id, s.name(), v)
					progress("    %-6s %s", id, res.format(id, v))
				}
			}
		}
	}
	if cfg.out != "" && len(cfg.only) > 0 {
		if err := res.keep(filepath.Join(cfg.out, "results.json")); err != nil {
			return err
		}
	}
	res.finish()
	md := res.markdown()
	fmt.Fprint(stdout, md)
	if cfg.out != "" {
		if err := res.write(cfg.out, md); err != nil {
			return err
		}
		progress("wrote %s/results.md and %s/results.json", cfg.out, cfg.out)
	}
	return nil
}

// system is one replicated store under test: replmap or Redis. A system
// runs one setup at a time, from start to stop.
type system interface {
	name() string
	// start runs a fresh, empty primary with n replicas and returns once
	// every replica is synced. With viaProxy the first replica reaches the
	// primary through a proxy that cut and heal control.
	start(ctx context.Context, n int, viaProxy bool) error
	stop() error
	// setBatch writes keys[i] = vals[i] from one goroutine, as fast as the
	// system's client allows (pipelined for Redis).
	setBatch(ctx context.Context, keys []string, vals [][]byte) error
	// writeAll writes keys[i] = vals[i] as fast as the system can take
	// them, with as many clients as suit it (W1, W2).
	writeAll(ctx context.Context, keys []string, vals [][]byte) error
	// set writes one key; safe for concurrent use.
	set(ctx context.Context, key string, val []byte) error
	// setWait writes one key and waits for one replica to acknowledge it
	// (Redis: SET then WAIT 1 0, pipelined); safe for concurrent use.
	setWait(ctx context.Context, key string, val []byte) error
	// waitReplicas returns once n replicas acknowledged every write.
	waitReplicas(ctx context.Context, n int) error
	// fill writes n keys with fresh values and returns the primary's
	// memory growth in bytes, heap (or used_memory) and RSS.
	fill(ctx context.Context, n, valueSize int) (heap, rss float64, err error)
	// addReplica starts a new replica process and returns the time from
	// telling it to sync until it is synced.
	addReplica(ctx context.Context) (time.Duration, error)
	// replicaMemory reports the last added replica's memory growth since
	// before it synced.
	replicaMemory(ctx context.Context) (heap, rss float64, err error)
	// cut drops the proxied replica's link and holds its reconnection;
	// heal lets it through once it has redialled, and says when.
	cut(ctx context.Context) error
	heal(ctx context.Context) (time.Time, error)
	// redialled returns once the proxied replica has redialled after a cut
	// (its dial is held).
	redialled(ctx context.Context) error
	// caughtUp returns once the proxied replica has applied every write.
	// Both systems poll the replica's offset every millisecond, so the
	// figure's resolution is 1 ms: polling faster slowed both replicas
	// down measurably.
	caughtUp(ctx context.Context) error
	// partialSyncs counts the partial resyncs the primary has served.
	partialSyncs(ctx context.Context) (int, error)
	// failover kills the primary, promotes the first replica and
	// re-points the others at it. It returns the time from the kill until
	// every other replica streams from the new primary, and the full
	// syncs that took (W9).
	failover(ctx context.Context) (time.Duration, int, error)
	// handover hands the primary role to the first replica and returns
	// the time from the call until the old primary streams from the new
	// one, and the full syncs that took (W10); ok is false for a system
	// that has no handover to measure.
	handover(ctx context.Context) (d time.Duration, fulls int, ok bool, err error)
	// setDurability sets how the primaries that later starts start keep
	// their writes on disk (W11–W14), in a fresh directory under
	// cfg.dataDir that stop removes.
	setDurability(d durability)
	// diskUsage waits until the primary's background compaction (replmap:
	// its snapshot; Redis: an AOF rewrite) is done and returns the bytes its
	// data directory holds (Redis: the AOF directory), then the size of a
	// snapshot of its data (replmap: Backup, the format of the directory's
	// snapshots; Redis: SAVE's RDB) (W14).
	diskUsage(ctx context.Context) (dir, snapshot float64, err error)
	// restart shuts the primary down cleanly and starts it again on its
	// data, at the same address (Redis: SHUTDOWN SAVE, then a redis-server
	// that loads the RDB). It returns when it started the new one, and the
	// time from then until it serves with its data loaded (W13).
	restart(ctx context.Context) (began time.Time, served time.Duration, err error)
	// primaryFullSyncs counts the full syncs the primary has served since it
	// started.
	primaryFullSyncs(ctx context.Context) (int, error)
	// writeBatches writes keys[i] = vals[i] in batches of size, each
	// applied as one (replmap: an Update), from as many clients as suit
	// the system (W15). Redis pipelines the batches with redis-benchmark
	// (not atomic), or with multi sends each as a MULTI/EXEC transaction.
	writeBatches(ctx context.Context, keys []string, vals [][]byte, size int, multi bool) error
	// fillTTL writes n keys named by ttlKey with values of valueSize
	// bytes, the i-th to expire at first + i×every, or with a zero first
	// without deadlines (W16).
	fillTTL(ctx context.Context, n, valueSize int, first time.Time, every time.Duration) error
	// markExpired notes how many keys the primary has deleted on expiry,
	// and expiredSinceMark returns how many it has deleted since, given
	// every key Set since (replmap counts deletions from its offset, and
	// subtracts those Sets' records).
	markExpired(ctx context.Context) error
	expiredSinceMark(ctx context.Context, setKeys []string) (float64, error)
	// watchLatency starts cfg.watchers watchers of a prefix on the first
	// replica, writes n keys under it and returns the latencies from each
	// Set on the primary to the event reaching a watcher (W17); ok is false
	// for a system that has no watch to measure.
	watchLatency(ctx context.Context, n int) (p50, p99, max time.Duration, ok bool, err error)
}

// durability is how a primary keeps its writes on disk.
type durability int

const (
	inMemory durability = iota // no persistence (W1–W10)
	everySec                   // replmap: WithDataDir, FsyncEverySecond; Redis: appendonly yes, appendfsync everysec
	always                     // replmap: WithFsync(FsyncAlways); Redis: appendfsync always
)

func machineDescription() string {
	model := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.Lines(string(b)) {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
				break
			}
		}
	}
	mem := ""
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		var kb int64
		if _, err := fmt.Sscanf(string(b), "MemTotal: %d kB", &kb); err == nil {
			mem = fmt.Sprintf(", %.0f GiB", float64(kb)/(1<<20))
		}
	}
	return fmt.Sprintf("%d CPUs (%s)%s, %s/%s, %s", runtime.NumCPU(), model, mem, runtime.GOOS, runtime.GOARCH, runtime.Version())
}

// lockedWriter serialises writes from several goroutines.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// startProfile writes a CPU profile to dir/name.cpu.pprof until stop.
func startProfile(dir, name string) (stop func(), err error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	f, err := os.Create(filepath.Join(dir, name+".cpu.pprof"))
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}, nil
}
