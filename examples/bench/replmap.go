package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/replmap/replmap"
	"github.com/replmap/replmap/transport"
)

// replmapSystem runs the primary in this process, as a Go service would,
// and each replica in a child process of this binary.
type replmapSystem struct {
	cfg      config
	stderr   io.Writer
	tcp      *transport.TCP
	p        *replmap.Primary[[]byte]
	addr     string
	served   chan error
	replicas []*replicaProc
	proxy    *proxy

	durability durability // for the primaries start starts
	work       string     // their directory: data/ and a backup (W14)

	markOffset uint64 // the primary's offset at markExpired (W16)
}

func newReplmapSystem(cfg config, stderr io.Writer) *replmapSystem {
	return &replmapSystem{cfg: cfg, stderr: stderr, tcp: transport.NewTCP()}
}

func (s *replmapSystem) name() string { return "replmap" }

func (s *replmapSystem) start(ctx context.Context, n int, viaProxy bool) (err error) {
	defer func() {
		if err != nil {
			s.stop()
		}
	}()
	if s.durability != inMemory {
		if s.work, err = os.MkdirTemp(s.cfg.dataDir, "replmap-bench-replmap-"); err != nil {
			return err
		}
	}
	if s.p, err = replmap.NewPrimary[[]byte](s.primaryOptions()...); err != nil {
		return err
	}
	if err := s.serve("127.0.0.1:0"); err != nil {
		return err
	}
	for i := range n {
		addr := s.addr
		if viaProxy && i == 0 {
			if s.proxy, err = newProxy(s.addr); err != nil {
				return err
			}
			addr = s.proxy.addr()
		}
		rp, err := startReplicaProc(s.cfg.verbose, s.cfg.profileDir, s.stderr)
		if err != nil {
			return err
		}
		s.replicas = append(s.replicas, rp)
		if _, err := rp.call(ctx, "connect "+addr); err != nil {
			return err
		}
	}
	return nil
}

// primaryOptions are the options of the primary, whose data directory, if
// it has one, is work/data.
func (s *replmapSystem) primaryOptions() []replmap.Option {
	opts := []replmap.Option{replmap.WithLogger(s.logger())}
	switch s.durability {
	case everySec:
		opts = append(opts, replmap.WithDataDir(s.dataDir()))
	case always:
		opts = append(opts, replmap.WithDataDir(s.dataDir()), replmap.WithFsync(replmap.FsyncAlways))
	}
	return opts
}

func (s *replmapSystem) dataDir() string { return filepath.Join(s.work, "data") }

// serve listens on addr and serves the primary there.
func (s *replmapSystem) serve(addr string) error {
	l, err := s.tcp.Listen(addr)
	if err != nil {
		return err
	}
	s.addr = l.Addr().String()
	s.served = make(chan error, 1)
	go func() { s.served <- s.p.Serve(l) }()
	return nil
}

func (s *replmapSystem) logger() *slog.Logger {
	if s.cfg.verbose {
		return slog.New(slog.NewTextHandler(s.stderr, nil))
	}
	return slog.New(slog.DiscardHandler)
}

func (s *replmapSystem) stop() error {
	var errs []error
	for _, rp := range s.replicas {
		errs = append(errs, rp.close())
	}
	s.replicas = nil
	if s.proxy != nil {
		s.proxy.close()
		s.proxy = nil
	}
	if s.p != nil {
		errs = append(errs, s.p.Close())
		if err := <-s.served; !errors.Is(err, replmap.ErrClosed) {
			errs = append(errs, err)
		}
		s.p = nil
	}
	if s.work != "" {
		errs = append(errs, os.RemoveAll(s.work))
		s.work = ""
	}
	return errors.Join(errs...)
}

func (s *replmapSystem) setDurability(d durability) { s.durability = d }

// diskUsage syncs the primary's data directory, waits until no snapshot is
// being written into it (its listing holds no temporary file and stays the
// same for 200 ms: a snapshot in progress grows its file), and adds up its
// files; then it writes a Backup beside it.
func (s *replmapSystem) diskUsage(ctx context.Context) (dir, snapshot float64, err error) {
	if err := s.p.Sync(); err != nil {
		return 0, 0, err
	}
	var last string
	stable := 0
	err = pollUntil(ctx, 20*time.Millisecond, func() (bool, error) {
		listing, size, err := dirListing(s.dataDir())
		if err != nil {
			return false, err
		}
		if listing == last && !strings.Contains(listing, ".tmp ") {
			stable++
		} else {
			stable = 0
		}
		last, dir = listing, size
		return stable >= 10, nil
	})
	if err != nil {
		return 0, 0, err
	}
	f, err := os.Create(filepath.Join(s.work, "backup"))
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	w := bufio.NewWriterSize(f, 256<<10)
	if _, err := s.p.Backup(ctx, w); err != nil {
		return 0, 0, err
	}
	if err := w.Flush(); err != nil {
		return 0, 0, err
	}
	n, err := f.Seek(0, io.SeekCurrent)
	return dir, float64(n), err
}

// dirListing returns every file under dir with its size, one per line, and
// their total size.
func dirListing(dir string) (string, float64, error) {
	var b strings.Builder
	var total int64
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		total += info.Size()
		fmt.Fprintf(&b, "%s %d\n", path, info.Size())
		return nil
	})
	return b.String(), float64(total), err
}

// restart closes the primary (which makes its writes durable) and times
// NewPrimary on its directory, then serves it on the same address.
func (s *replmapSystem) restart(context.Context) (time.Time, time.Duration, error) {
	if err := s.p.Close(); err != nil {
		return time.Time{}, 0, err
	}
	if err := <-s.served; !errors.Is(err, replmap.ErrClosed) {
		return time.Time{}, 0, err
	}
	s.p = nil
	start := time.Now()
	p, err := replmap.NewPrimary[[]byte](s.primaryOptions()...)
	if err != nil {
		return time.Time{}, 0, err
	}
	took := time.Since(start)
	s.p = p
	return start, took, s.serve(s.addr)
}

func (s *replmapSystem) primaryFullSyncs(context.Context) (int, error) {
	return int(s.p.Info().FullSyncs), nil
}

func (s *replmapSystem) setBatch(_ context.Context, keys []string, vals [][]byte) error {
	for i, k := range keys {
		if err := s.p.Set(k, vals[i]); err != nil {
			return err
		}
	}
	return nil
}

// writeAll writes from cfg.writers goroutines calling Set, as a service's
// request handlers would.
func (s *replmapSystem) writeAll(ctx context.Context, keys []string, vals [][]byte) error {
	return writeConcurrently(ctx, s.cfg.writers, keys, vals, s.setBatch)
}

func (s *replmapSystem) set(_ context.Context, key string, val []byte) error {
	return s.p.Set(key, val)
}

func (s *replmapSystem) setWait(_ context.Context, key string, val []byte) error {
	if err := s.p.Set(key, val); err != nil {
		return err
	}
	if k, err := s.p.Wait(1, 0); err != nil || k < 1 {
		return fmt.Errorf("Wait(1, 0) returned %d, %v", k, err)
	}
	return nil
}

func (s *replmapSystem) waitReplicas(ctx context.Context, n int) error {
	_, err := s.p.WaitContext(ctx, n)
	return err
}

func (s *replmapSystem) fill(_ context.Context, n, valueSize int) (heap, rss float64, err error) {
	h0, r0 := memoryNow()
	r := newRand()
	for i := range n {
		// A fresh key string and value per Set, as a service decoding
		// requests would have, so the store owns every byte it holds.
		if err := s.p.Set("key:"+strconv.Itoa(i), randomValue(r, valueSize)); err != nil {
			return 0, 0, err
		}
	}
	h1, r1 := memoryNow()
	return h1 - h0, r1 - r0, nil
}

func (s *replmapSystem) addReplica(ctx context.Context) (time.Duration, error) {
	rp, err := startReplicaProc(s.cfg.verbose, s.cfg.profileDir, s.stderr)
	if err != nil {
		return 0, err
	}
	s.replicas = append(s.replicas, rp)
	if _, err := rp.call(ctx, "mem"); err != nil { // baseline before the sync
		return 0, err
	}
	start := time.Now()
	if _, err := rp.call(ctx, "connect "+s.addr); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}

func (s *replmapSystem) replicaMemory(ctx context.Context) (heap, rss float64, err error) {
	rp := s.replicas[len(s.replicas)-1]
	reply, err := rp.call(ctx, "mem")
	if err != nil {
		return 0, 0, err
	}
	_, err = fmt.Sscanf(reply, "%g %g", &heap, &rss)
	return heap, rss, err
}

func (s *replmapSystem) cut(context.Context) error {
	s.proxy.cut()
	return nil
}

func (s *replmapSystem) heal(ctx context.Context) (time.Time, error) { return s.proxy.heal(ctx) }

func (s *replmapSystem) redialled(ctx context.Context) error { return s.proxy.waitHeld(ctx) }

func (s *replmapSystem) caughtUp(ctx context.Context) error {
	want := s.p.Offset()
	rp := s.replicas[0]
	return pollUntil(ctx, time.Millisecond, func() (bool, error) {
		reply, err := rp.call(ctx, "offset")
		if err != nil {
			return false, err
		}
		off, err := strconv.ParseUint(reply, 10, 64)
		return off >= want, err
	})
}

func (s *replmapSystem) partialSyncs(context.Context) (int, error) {
	return int(s.p.Info().PartialSyncs), nil
}

// failover closes the primary (its replicas see their links drop, as at
// a crash), promotes the first replica process and re-points the second.
func (s *replmapSystem) failover(ctx context.Context) (time.Duration, int, error) {
	before, err := s.fullSyncs(ctx)
	if err != nil {
		return 0, 0, err
	}
	start := time.Now()
	s.p.Close()
	<-s.served
	s.p = nil
	addr, err := s.replicas[0].call(ctx, "promote")
	if err != nil {
		return 0, 0, err
	}
	if _, err := s.replicas[1].call(ctx, "follow "+addr); err != nil {
		return 0, 0, err
	}
	took := time.Since(start)
	after, err := s.fullSyncs(ctx)
	return took, after - before, err
}

// handover hands the primary role to the first replica process; the
// primary becomes a replica of it, and the second replica follows the
// demoted primary (a chain, as Redis's FAILOVER leaves it).
func (s *replmapSystem) handover(ctx context.Context) (time.Duration, int, bool, error) {
	before, err := s.fullSyncs(ctx)
	if err != nil {
		return 0, 0, false, err
	}
	start := time.Now()
	hctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	d, err := s.p.Handover(hctx, s.tcp, "")
	if err != nil {
		return 0, 0, false, err
	}
	defer d.Close()
	if err := d.WaitSynced(hctx); err != nil {
		return 0, 0, false, err
	}
	took := time.Since(start)
	after, err := s.fullSyncs(ctx)
	after += int(d.Info().FullSyncs)
	if _, err := s.replicas[0].call(ctx, "waitpromoted"); err != nil {
		return 0, 0, false, err
	}
	return took, after - before, true, err
}

// fullSyncs adds up the full syncs the replica processes have done.
func (s *replmapSystem) fullSyncs(ctx context.Context) (int, error) {
	n := 0
	for _, rp := range s.replicas {
		reply, err := rp.call(ctx, "fullsyncs")
		if err != nil {
			return 0, err
		}
		k, err := strconv.Atoi(reply)
		if err != nil {
			return 0, err
		}
		n += k
	}
	return n, nil
}

// memoryNow returns the heap in use after a full collection, and the
// resident set size after returning freed memory to the OS.
func memoryNow() (heap, rss float64) {
	runtime.GC()
	debug.FreeOSMemory()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return float64(ms.HeapAlloc), residentBytes()
}

func residentBytes() float64 {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) < 2 {
		return 0
	}
	pages, _ := strconv.ParseFloat(f[1], 64)
	return pages * float64(os.Getpagesize())
}

// replicaProc is a replica process: this binary with roleEnv set, driven
// by one command per line on its stdin, answering "ok ..." or "err ..."
// on its stdout (see replicaMain).
type replicaProc struct {
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Scanner
	mu  sync.Mutex
}

func startReplicaProc(verbose bool, profileDir string, stderr io.Writer) (*replicaProc, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), roleEnv+"=replica")
	if verbose {
		cmd.Env = append(cmd.Env, roleEnv+"_VERBOSE=1")
	}
	if profileDir != "" {
		cmd.Env = append(cmd.Env, roleEnv+"_PROFILE="+profileDir)
	}
	cmd.Stderr = stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting a replica process: %w", err)
	}
	return &replicaProc{cmd: cmd, in: in, out: bufio.NewScanner(out)}, nil
}

// call sends one command and returns the reply after "ok ".
func (rp *replicaProc) call(ctx context.Context, command string) (string, error) {
	rp.mu.Lock()
	defer rp.mu.Unlock()
	if _, err := fmt.Fprintln(rp.in, command); err != nil {
		return "", fmt.Errorf("replica process: %w", err)
	}
	got := make(chan bool, 1)
	go func() { got <- rp.out.Scan() }()
	select {
	case ok := <-got:
		if !ok {
			return "", fmt.Errorf("replica process exited during %q", command)
		}
	case <-ctx.Done():
		rp.cmd.Process.Kill()
		<-got
		return "", context.Cause(ctx)
	}
	line := rp.out.Text()
	if msg, ok := strings.CutPrefix(line, "err "); ok {
		return "", fmt.Errorf("replica process: %s: %s", command, msg)
	}
	reply, ok := strings.CutPrefix(line, "ok")
	if !ok {
		return "", fmt.Errorf("replica process: unexpected reply %q", line)
	}
	return strings.TrimSpace(reply), nil
}

func (rp *replicaProc) close() error {
	rp.in.Close() // the process closes its replica and exits on EOF
	done := make(chan error, 1)
	go func() { done <- rp.cmd.Wait() }()
	select {
	case err := <-done:
		return err
	case <-time.After(10 * time.Second):
		rp.cmd.Process.Kill()
		return fmt.Errorf("replica process did not exit: %w", <-done)
	}
}

// replicaMain is a replica process's main. Commands, one per line:
//
//	connect ADDR   start a replica of ADDR, serving on a loopback port of
//	               its own (for sub-replicas, and as a primary once
//	               promoted); answer once it has synced
//	offset         the replica's offset
//	mem            heap and RSS growth since the first mem, in bytes
//	fullsyncs      the full syncs the replica has done
//	promote        promote the replica; answer with its address
//	follow ADDR    re-point the replica; answer once it streams from ADDR
//	waitpromoted   answer once a handover has promoted the replica
//	watch N        start N watchers of the keys under watchPrefix, from
//	               the replica's offset (W17)
//	watchwait K    answer once every watcher has had K events, with the
//	               p50, p99 and max of their delivery latencies in ns,
//	               and stop them
//
// It exits, closing the replica, when stdin ends.
func replicaMain(in io.Reader, out io.Writer, stderr io.Writer) int {
	log := slog.New(slog.DiscardHandler)
	if os.Getenv(roleEnv+"_VERBOSE") != "" {
		log = slog.New(slog.NewTextHandler(stderr, nil)).With("process", os.Getpid())
	}
	if dir := os.Getenv(roleEnv + "_PROFILE"); dir != "" {
		stop, err := startProfile(dir, fmt.Sprintf("replica-%d", os.Getpid()))
		if err != nil {
			fmt.Fprintln(stderr, "replica:", err)
			return 1
		}
		defer stop()
	}
	var r *replmap.Replica[[]byte]
	var p *replmap.Primary[[]byte]
	var addr string
	var heap0, rss0 float64
	baseline := false
	var w *watchers
	sc := bufio.NewScanner(in)
	for sc.Scan() {
		cmd, arg, _ := strings.Cut(sc.Text(), " ")
		switch {
		case cmd == "connect" && r == nil:
			var err error
			tcp := transport.NewTCP()
			r, err = replmap.NewReplica[[]byte](tcp, arg, replmap.WithLogger(log))
			if err == nil {
				var l net.Listener
				if l, err = tcp.Listen("127.0.0.1:0"); err == nil {
					addr = l.Addr().String()
					go r.Serve(l) // returns when the node is closed
				}
			}
			if err == nil {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
				err = r.WaitSynced(ctx)
				cancel()
			}
			if err != nil {
				fmt.Fprintf(out, "err %v\n", err)
				continue
			}
			fmt.Fprintln(out, "ok")
		case cmd == "offset" && r != nil:
			fmt.Fprintf(out, "ok %d\n", r.Offset())
		case cmd == "fullsyncs" && r != nil:
			fmt.Fprintf(out, "ok %d\n", r.Info().FullSyncs)
		case cmd == "promote" && r != nil && p == nil:
			var err error
			if p, err = r.Promote(); err != nil {
				fmt.Fprintf(out, "err %v\n", err)
				continue
			}
			fmt.Fprintf(out, "ok %s\n", addr)
		case cmd == "follow" && r != nil && p == nil:
			err := r.Follow(arg)
			if err == nil {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
				err = r.WaitSynced(ctx)
				cancel()
			}
			if err != nil {
				fmt.Fprintf(out, "err %v\n", err)
				continue
			}
			fmt.Fprintln(out, "ok")
		case cmd == "waitpromoted" && r != nil && p == nil:
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			var err error
			p, err = r.WaitPromoted(ctx)
			cancel()
			if err != nil {
				fmt.Fprintf(out, "err %v\n", err)
				continue
			}
			fmt.Fprintln(out, "ok")
		case cmd == "watch" && r != nil && w == nil:
			n, err := strconv.Atoi(arg)
			if err != nil {
				fmt.Fprintf(out, "err %v\n", err)
				continue
			}
			w = startWatchers(r, n, watchPrefix)
			fmt.Fprintln(out, "ok")
		case cmd == "watchwait" && w != nil:
			n, err := strconv.Atoi(arg)
			if err == nil {
				err = w.wait(n)
			}
			if err != nil {
				fmt.Fprintf(out, "err %v\n", err)
				continue
			}
			p50, p99, max := w.stats()
			fmt.Fprintf(out, "ok %d %d %d\n", p50, p99, max)
			w = nil
		case cmd == "mem":
			heap, rss := memoryNow()
			if !baseline {
				heap0, rss0, baseline = heap, rss, true
			}
			fmt.Fprintf(out, "ok %.0f %.0f\n", heap-heap0, rss-rss0)
		default:
			fmt.Fprintf(out, "err unknown command %q\n", sc.Text())
		}
	}
	if p != nil {
		if err := p.Close(); err != nil {
			fmt.Fprintln(stderr, "replica:", err)
			return 1
		}
	}
	if r != nil {
		if err := r.Close(); err != nil {
			fmt.Fprintln(stderr, "replica:", err)
			return 1
		}
	}
	return 0
}

// writeBatches writes from cfg.writers goroutines, each calling Update
// with size Sets (multi changes nothing: every Update is atomic).
func (s *replmapSystem) writeBatches(ctx context.Context, keys []string, vals [][]byte, size int, _ bool) error {
	return writeInBatches(ctx, s.cfg.writers, size, keys, vals, func(_ context.Context, keys []string, vals [][]byte) error {
		_, err := s.p.Update(func(tx *replmap.Tx[[]byte]) error {
			for i, k := range keys {
				if err := tx.Set(k, vals[i]); err != nil {
					return err
				}
			}
			return nil
		})
		return err
	})
}

// fillTTL writes the keys in Updates of 1000 SetTTLs (Sets for a zero
// first), each key's TTL taken from the clock as it is written so that
// its deadline is the one asked for. A key whose deadline has already
// passed is left out.
func (s *replmapSystem) fillTTL(_ context.Context, n, valueSize int, first time.Time, every time.Duration) error {
	r := newRand()
	vals := make([][]byte, 64)
	for i := range vals {
		vals[i] = randomValue(r, valueSize)
	}
	for lo := 0; lo < n; lo += 1000 {
		_, err := s.p.Update(func(tx *replmap.Tx[[]byte]) error {
			for i := lo; i < min(lo+1000, n); i++ {
				if first.IsZero() {
					if err := tx.Set(ttlKey(i), vals[i%len(vals)]); err != nil {
						return err
					}
					continue
				}
				ttl := time.Until(first.Add(time.Duration(i) * every))
				if ttl <= 0 {
					continue
				}
				if err := tx.SetTTL(ttlKey(i), vals[i%len(vals)], ttl); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}

func (s *replmapSystem) markExpired(context.Context) error {
	s.markOffset = s.p.Offset()
	return nil
}

// expiredSinceMark counts the primary's deletions on expiry from its
// offset: the stream grew by the records of the Sets of setKeys (each
// with a value of cfg.valueSize bytes) and by one DEL record per key
// expired. The sizes of both records are read off a scratch primary.
func (s *replmapSystem) expiredSinceMark(_ context.Context, setKeys []string) (float64, error) {
	grown := s.p.Offset() - s.markOffset
	set, del, err := recordSizes(s.cfg.valueSize)
	if err != nil {
		return 0, err
	}
	for _, k := range setKeys {
		grown -= set + uint64(len(k))
	}
	return float64(grown) / float64(del+uint64(len(ttlKey(0)))), nil
}

// recordSizes returns the bytes a Set of a value of valueSize bytes and a
// Delete add to a primary's offset, beyond their key's length.
func recordSizes(valueSize int) (set, del uint64, err error) {
	p, err := replmap.NewPrimary[[]byte]()
	if err != nil {
		return 0, 0, err
	}
	defer p.Close()
	o0 := p.Offset()
	if err := p.Set("k", make([]byte, valueSize)); err != nil {
		return 0, 0, err
	}
	o1 := p.Offset()
	if err := p.Delete("k"); err != nil {
		return 0, 0, err
	}
	return o1 - o0 - 1, p.Offset() - o1 - 1, nil
}

// watchPrefix is the prefix of the keys W17 writes and watches. Their
// values begin with the Unix time in nanoseconds just before the Set.
const watchPrefix = "watch:"

// watchers is a replica process's W17 watchers: each ranges over Watch
// and records, for every event, the time from the Set on the primary
// (in the value) until the event reached it. The two processes share the
// machine's clock. Each watcher keeps its latencies to itself (no lock
// between watchers), publishing only a count.
type watchers struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
	lat    [][]time.Duration // per watcher; read once they have stopped
	errs   []error           // likewise
	seen   []atomic.Int64    // events each watcher has had
	exited atomic.Int32      // watchers that returned early
	more   chan struct{}     // signalled after events
}

func startWatchers(r *replmap.Replica[[]byte], n int, prefix string) *watchers {
	ctx, cancel := context.WithCancel(context.Background())
	w := &watchers{cancel: cancel, lat: make([][]time.Duration, n), errs: make([]error, n),
		seen: make([]atomic.Int64, n), more: make(chan struct{}, 1)}
	from := r.Offset()
	for i := range n {
		w.wg.Go(func() {
			for ev, err := range r.Watch(ctx, prefix, from) {
				if err != nil {
					w.errs[i] = err
					w.exited.Add(1)
					w.signal()
					return
				}
				w.lat[i] = append(w.lat[i], time.Duration(time.Now().UnixNano()-int64(binary.BigEndian.Uint64(ev.Value))))
				w.seen[i].Add(1)
				w.signal()
			}
		})
	}
	return w
}

func (w *watchers) signal() {
	select {
	case w.more <- struct{}{}:
	default:
	}
}

// wait returns once every watcher has had n events, or one has failed,
// or a minute has passed; then it stops them.
func (w *watchers) wait(n int) error {
	timeout := time.After(time.Minute)
	var err error
	for err == nil && w.exited.Load() == 0 && !w.allSeen(n) {
		select {
		case <-w.more:
		case <-timeout:
			err = fmt.Errorf("watchers did not all get %d events in a minute", n)
		}
	}
	w.cancel()
	w.wg.Wait()
	for _, e := range w.errs {
		if err == nil && e != nil && !errors.Is(e, context.Canceled) {
			err = e
		}
	}
	return err
}

func (w *watchers) allSeen(n int) bool {
	for i := range w.seen {
		if w.seen[i].Load() < int64(n) {
			return false
		}
	}
	return true
}

// stats returns the p50, p99 and max of every watcher's latencies, once
// wait has stopped them.
func (w *watchers) stats() (p50, p99, max time.Duration) {
	all := slices.Concat(w.lat...)
	slices.Sort(all)
	return percentile(all, 0.5), percentile(all, 0.99), percentile(all, 1)
}

// watchLatency starts cfg.watchers watchers in the replica process, writes
// n keys under watchPrefix at cfg.watchRate a second, each value the time
// of its Set, and returns the watchers' delivery latencies (W17).
func (s *replmapSystem) watchLatency(ctx context.Context, n int) (p50, p99, max time.Duration, ok bool, err error) {
	rp := s.replicas[0]
	if _, err := rp.call(ctx, "watch "+strconv.Itoa(s.cfg.watchers)); err != nil {
		return 0, 0, 0, false, err
	}
	val := make([]byte, s.cfg.valueSize)
	every := time.Second / time.Duration(s.cfg.watchRate)
	next := time.Now()
	for i := range n {
		if d := time.Until(next); d > 0 {
			time.Sleep(d)
		}
		next = next.Add(every)
		binary.BigEndian.PutUint64(val, uint64(time.Now().UnixNano()))
		if err := s.p.Set(watchPrefix+strconv.Itoa(i), val); err != nil {
			return 0, 0, 0, false, err
		}
	}
	reply, err := rp.call(ctx, "watchwait "+strconv.Itoa(n))
	if err != nil {
		return 0, 0, 0, false, err
	}
	_, err = fmt.Sscanf(reply, "%d %d %d", &p50, &p99, &max)
	return p50, p99, max, true, err
}
