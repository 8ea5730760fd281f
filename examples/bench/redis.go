package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
)

// How the Redis side writes in W1 and W2 without redis-benchmark:
// redisWriters connections, each sending pipelines of redisBatch SETs.
// replmap's writers call Set in chunks of the same size.
const (
	redisWriters = 8
	redisBatch   = 100
)

// redisClients is how many connections redis-benchmark opens (its
// default), and as many send MULTI/EXEC transactions in W15.
const redisClients = 50

// redisSystem runs redis-server processes on free loopback ports: one
// primary and its replicas, each with its own directory, no persistence,
// diskless sync and a 16 MiB backlog (replmap's default).
type redisSystem struct {
	cfg       config
	version   string
	benchmark string // redis-benchmark's path for W1 and W2; "" to use go-redis
	dir       string
	primary   *redisProc
	replicas  []*redisProc
	proxy     *proxy

	durability durability // for the primaries start starts

	markExpiredKeys float64 // INFO stats expired_keys at markExpired (W16)

	baseHeap, baseRSS float64 // the last added replica's memory before it synced
}

type redisProc struct {
	cmd    *exec.Cmd
	port   int
	client *redis.Client
	done   chan error
}

func newRedisSystem(cfg config) (*redisSystem, error) {
	path, err := exec.LookPath(cfg.redisServer)
	if err != nil {
		return nil, fmt.Errorf("-redis needs redis-server (Debian: apt-get install redis-server): %w", err)
	}
	out, err := exec.Command(path, "--version").Output()
	if err != nil {
		return nil, fmt.Errorf("%s --version: %w", path, err)
	}
	version := "unknown"
	if m := regexp.MustCompile(`v=(\S+)`).FindSubmatch(out); m != nil {
		version = string(m[1])
	}
	cfg.redisServer = path
	s := &redisSystem{cfg: cfg, version: version}
	if cfg.redisBenchmark != "" {
		if s.benchmark, err = exec.LookPath(cfg.redisBenchmark); err != nil {
			return nil, fmt.Errorf("-redis-benchmark %q not found (Debian: apt-get install redis-tools, or -redis-benchmark '' to write with go-redis): %w", cfg.redisBenchmark, err)
		}
	}
	return s, nil
}

func (s *redisSystem) name() string { return "redis" }

func (s *redisSystem) start(ctx context.Context, n int, viaProxy bool) (err error) {
	defer func() {
		if err != nil {
			s.stop()
		}
	}()
	if s.dir, err = os.MkdirTemp(s.cfg.dataDir, "replmap-bench-redis-"); err != nil {
		return err
	}
	if s.primary, err = s.startProc(ctx, "primary", 0, s.persistence()...); err != nil {
		return err
	}
	for i := range n {
		addr := fmt.Sprintf("127.0.0.1:%d", s.primary.port)
		if viaProxy && i == 0 {
			if s.proxy, err = newProxy(addr); err != nil {
				return err
			}
			addr = s.proxy.addr()
		}
		rp, err := s.startProc(ctx, fmt.Sprintf("replica%d", i), 0)
		if err != nil {
			return err
		}
		s.replicas = append(s.replicas, rp)
		if err := replicaOf(ctx, rp, addr); err != nil {
			return err
		}
	}
	return s.warm(ctx, n)
}

// warm returns once n replicas have acknowledged a write. A replica that
// has just synced reports its link up before the primary streams to it:
// the primary waits for its first REPLCONF ACK, which it sends from its
// once-a-second cron, so a WAIT right after start took up to a second
// more, whatever was written. The write is undone at once.
func (s *redisSystem) warm(ctx context.Context, n int) error {
	if n == 0 {
		return nil
	}
	c := s.primary.client
	if err := c.Set(ctx, "bench:warm", "1", 0).Err(); err != nil {
		return err
	}
	if err := c.Del(ctx, "bench:warm").Err(); err != nil {
		return err
	}
	return s.waitReplicas(ctx, n)
}

// persistence is the primary's persistence for s.durability: none, or an
// AOF fsynced every second or at every write, rewritten as Redis does by
// default (auto-aof-rewrite-percentage 100, min-size 64mb, with an RDB
// preamble); no RDB saves.
func (s *redisSystem) persistence() []string {
	switch s.durability {
	case everySec:
		return []string{"--appendonly", "yes", "--appendfsync", "everysec"}
	case always:
		return []string{"--appendonly", "yes", "--appendfsync", "always"}
	}
	return nil
}

// startProc starts a redis-server in its own directory, on port (a free
// one if 0), and returns once it answers PING (so has loaded its data).
// args come after the defaults (no persistence) and override them.
func (s *redisSystem) startProc(ctx context.Context, name string, port int, args ...string) (*redisProc, error) {
	var err error
	if port == 0 {
		if port, err = freePort(); err != nil {
			return nil, err
		}
	}
	dir := filepath.Join(s.dir, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	cmd := exec.Command(s.cfg.redisServer, append([]string{
		"--bind", "127.0.0.1", "--port", strconv.Itoa(port), "--protected-mode", "no",
		"--dir", dir, "--logfile", filepath.Join(dir, "redis.log"), "--daemonize", "no",
		"--save", "", "--appendonly", "no",
		"--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0",
		"--repl-diskless-load", "on-empty-db", "--repl-backlog-size", "16mb",
	}, args...)...)
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting redis-server: %w", err)
	}
	rp := &redisProc{cmd: cmd, port: port, done: make(chan error, 1)}
	go func() { rp.done <- cmd.Wait() }()
	rp.client = redis.NewClient(&redis.Options{
		Addr:            fmt.Sprintf("127.0.0.1:%d", port),
		PoolSize:        4 * s.cfg.ackWorkers,
		ReadTimeout:     -1, // WAIT n 0 blocks as long as it takes
		DisableIdentity: true,
		Protocol:        2,
	})
	ctx, cancel := context.WithTimeout(ctx, time.Minute) // loading a large RDB or AOF takes seconds
	defer cancel()
	err = pollUntil(ctx, time.Millisecond, func() (bool, error) {
		select {
		case err := <-rp.done:
			return false, fmt.Errorf("redis-server exited: %v (see %s)", err, filepath.Join(dir, "redis.log"))
		default:
		}
		return pong(rp.client.Options().Addr), nil
	})
	if err != nil {
		rp.stop()
		return nil, err
	}
	return rp, nil
}

func (rp *redisProc) stop() error {
	rp.client.Close()
	rp.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-rp.done:
		return nil
	case <-time.After(10 * time.Second):
		rp.cmd.Process.Kill()
		<-rp.done
		return errors.New("redis-server did not stop on SIGTERM")
	}
}

// pong reports whether the redis-server at addr answers PING, which it
// does only once it has loaded its data (until then it answers -LOADING).
// It dials for itself: go-redis retries a refused dial with a backoff that
// would add tens of milliseconds to a restart's time.
func pong(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return false
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return false
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	return err == nil && strings.HasPrefix(line, "+PONG")
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// replicaOf points rp at addr and returns once it has synced.
func replicaOf(ctx context.Context, rp *redisProc, addr string) error {
	host, port, _ := net.SplitHostPort(addr)
	if err := rp.client.Do(ctx, "REPLICAOF", host, port).Err(); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	return pollUntil(ctx, time.Millisecond, func() (bool, error) {
		info, err := infoFields(ctx, rp.client, "replication")
		return err == nil && info["master_link_status"] == "up" && info["master_sync_in_progress"] == "0", err
	})
}

func infoFields(ctx context.Context, c *redis.Client, section string) (map[string]string, error) {
	s, err := c.Info(ctx, section).Result()
	if err != nil {
		return nil, err
	}
	m := make(map[string]string)
	for line := range strings.Lines(s) {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), ":"); ok {
			m[k] = v
		}
	}
	return m, nil
}

func infoFloat(ctx context.Context, c *redis.Client, section, field string) (float64, error) {
	m, err := infoFields(ctx, c, section)
	if err != nil {
		return 0, err
	}
	v, err := strconv.ParseFloat(m[field], 64)
	if err != nil {
		return 0, fmt.Errorf("INFO %s: %s: %w", section, field, err)
	}
	return v, nil
}

func (s *redisSystem) stop() error {
	var errs []error
	for _, rp := range s.replicas {
		errs = append(errs, rp.stop())
	}
	s.replicas = nil
	if s.primary != nil {
		errs = append(errs, s.primary.stop())
		s.primary = nil
	}
	if s.proxy != nil {
		s.proxy.close()
		s.proxy = nil
	}
	if s.dir != "" {
		errs = append(errs, os.RemoveAll(s.dir))
		s.dir = ""
	}
	return errors.Join(errs...)
}

func (s *redisSystem) setBatch(ctx context.Context, keys []string, vals [][]byte) error {
	_, err := s.primary.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, k := range keys {
			p.Set(ctx, k, vals[i], 0)
		}
		return nil
	})
	return err
}

// writeAll uses redis-benchmark, Redis's own load generator (C, 50
// connections, pipelines of 32): the figure the Redis numbers were
// measured with, and well above what one go-redis process reaches here.
// It writes len(keys) SETs over the configured keyspace; its keys are
// key:NNNNNNNNNNNN (zero-padded to 12 digits) and its values fixed bytes of
// the configured size, which is the same work for Redis. Without
// redis-benchmark it writes keys and vals over redisWriters go-redis
// connections.
func (s *redisSystem) writeAll(ctx context.Context, keys []string, vals [][]byte) error {
	if s.benchmark == "" {
		return writeConcurrently(ctx, redisWriters, keys, vals, s.setBatch)
	}
	cmd := exec.CommandContext(ctx, s.benchmark, "-h", "127.0.0.1", "-p", strconv.Itoa(s.primary.port),
		"-t", "set", "-n", strconv.Itoa(len(keys)), "-r", strconv.Itoa(s.cfg.keyspace),
		"-d", strconv.Itoa(s.cfg.valueSize), "-P", "32", "-c", "50", "-q")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("redis-benchmark: %w: %s", err, out)
	}
	return nil
}

func (s *redisSystem) set(ctx context.Context, key string, val []byte) error {
	return s.primary.client.Set(ctx, key, val, 0).Err()
}

func (s *redisSystem) setWait(ctx context.Context, key string, val []byte) error {
	var wait *redis.Cmd
	_, err := s.primary.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.Set(ctx, key, val, 0)
		wait = p.Do(ctx, "WAIT", 1, 0)
		return nil
	})
	if err == nil {
		if n, _ := wait.Int(); n < 1 {
			err = fmt.Errorf("WAIT 1 0 returned %v", wait.Val())
		}
	}
	return err
}

func (s *redisSystem) waitReplicas(ctx context.Context, n int) error {
	got, err := s.primary.client.Wait(ctx, n, 0).Result()
	if err == nil && got < int64(n) {
		err = fmt.Errorf("WAIT %d 0 returned %d", n, got)
	}
	return err
}

func (s *redisSystem) memory(ctx context.Context, c *redis.Client) (heap, rss float64, err error) {
	if heap, err = infoFloat(ctx, c, "memory", "used_memory"); err != nil {
		return 0, 0, err
	}
	rss, err = infoFloat(ctx, c, "memory", "used_memory_rss")
	return heap, rss, err
}

func (s *redisSystem) fill(ctx context.Context, n, valueSize int) (heap, rss float64, err error) {
	c := s.primary.client
	h0, r0, err := s.memory(ctx, c)
	if err != nil {
		return 0, 0, err
	}
	r := newRand()
	keys := make([]string, 0, 1000)
	vals := make([][]byte, 0, 1000)
	for i := range n {
		keys = append(keys, "key:"+strconv.Itoa(i))
		vals = append(vals, randomValue(r, valueSize))
		if len(keys) == cap(keys) || i == n-1 {
			if err := s.setBatch(ctx, keys, vals); err != nil {
				return 0, 0, err
			}
			keys, vals = keys[:0], vals[:0]
		}
	}
	h1, r1, err := s.memory(ctx, c)
	return h1 - h0, r1 - r0, err
}

func (s *redisSystem) addReplica(ctx context.Context) (time.Duration, error) {
	rp, err := s.startProc(ctx, fmt.Sprintf("replica%d", len(s.replicas)), 0)
	if err != nil {
		return 0, err
	}
	s.replicas = append(s.replicas, rp)
	if s.baseHeap, s.baseRSS, err = s.memory(ctx, rp.client); err != nil {
		return 0, err
	}
	start := time.Now()
	if err := replicaOf(ctx, rp, fmt.Sprintf("127.0.0.1:%d", s.primary.port)); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}

// replicaMemory reports the last added replica's memory growth since
// before it synced.
func (s *redisSystem) replicaMemory(ctx context.Context) (heap, rss float64, err error) {
	h, r, err := s.memory(ctx, s.replicas[len(s.replicas)-1].client)
	return h - s.baseHeap, r - s.baseRSS, err
}

func (s *redisSystem) cut(context.Context) error {
	s.proxy.cut()
	return nil
}

func (s *redisSystem) heal(ctx context.Context) (time.Time, error) { return s.proxy.heal(ctx) }

func (s *redisSystem) redialled(ctx context.Context) error { return s.proxy.waitHeld(ctx) }

func (s *redisSystem) caughtUp(ctx context.Context) error {
	want, err := infoFloat(ctx, s.primary.client, "replication", "master_repl_offset")
	if err != nil {
		return err
	}
	rp := s.replicas[0]
	return pollUntil(ctx, time.Millisecond, func() (bool, error) {
		off, err := infoFloat(ctx, rp.client, "replication", "slave_repl_offset")
		return off >= want, err
	})
}

func (s *redisSystem) partialSyncs(ctx context.Context) (int, error) {
	v, err := infoFloat(ctx, s.primary.client, "stats", "sync_partial_ok")
	return int(v), err
}

// failover kills the primary (SIGKILL, as a crash), makes the first
// replica a primary with REPLICAOF NO ONE and points the second at it,
// then polls until the second streams from it (PSYNC2 since Redis 4.0).
func (s *redisSystem) failover(ctx context.Context) (time.Duration, int, error) {
	before, err := s.fullSyncsServed(ctx)
	if err != nil {
		return 0, 0, err
	}
	start := time.Now()
	s.primary.cmd.Process.Kill()
	<-s.primary.done
	s.primary.client.Close()
	s.primary = nil
	np := s.replicas[0]
	if err := np.client.Do(ctx, "REPLICAOF", "NO", "ONE").Err(); err != nil {
		return 0, 0, err
	}
	if err := replicaOf(ctx, s.replicas[1], fmt.Sprintf("127.0.0.1:%d", np.port)); err != nil {
		return 0, 0, err
	}
	took := time.Since(start)
	after, err := infoFloat(ctx, np.client, "stats", "sync_full")
	return took, int(after) - before, err
}

// fullSyncsServed counts the full syncs the replicas have served (none,
// before a failover), as the baseline for the one the failover may take.
func (s *redisSystem) fullSyncsServed(ctx context.Context) (int, error) {
	n := 0
	for _, rp := range s.replicas {
		v, err := infoFloat(ctx, rp.client, "stats", "sync_full")
		if err != nil {
			return 0, err
		}
		n += int(v)
	}
	return n, nil
}

// handover runs Redis's FAILOVER TO the first replica (Redis 6.2+): the
// primary pauses writes, lets the replica catch up, and becomes its
// replica; the time until it streams from it, polled every millisecond.
func (s *redisSystem) handover(ctx context.Context) (time.Duration, int, bool, error) {
	before, err := s.fullSyncsServed(ctx)
	if err != nil {
		return 0, 0, false, err
	}
	target := s.replicas[0]
	start := time.Now()
	if err := s.primary.client.Do(ctx, "FAILOVER", "TO", "127.0.0.1", target.port, "TIMEOUT", 10000).Err(); err != nil {
		return 0, 0, false, fmt.Errorf("FAILOVER: %w", err)
	}
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	err = pollUntil(wctx, time.Millisecond, func() (bool, error) {
		info, err := infoFields(wctx, s.primary.client, "replication")
		return err == nil && info["role"] == "slave" && info["master_port"] == strconv.Itoa(target.port) &&
			info["master_link_status"] == "up" && info["master_sync_in_progress"] == "0", err
	})
	if err != nil {
		return 0, 0, false, err
	}
	took := time.Since(start)
	after, err := s.fullSyncsServed(ctx)
	return took, after - before, true, err
}

func (s *redisSystem) setDurability(d durability) { s.durability = d }

// diskUsage waits until no AOF rewrite or RDB save is under way and adds
// up the AOF directory (base, incremental files and manifest), then SAVEs
// an RDB and reads its size.
func (s *redisSystem) diskUsage(ctx context.Context) (dir, snapshot float64, err error) {
	c := s.primary.client
	err = pollUntil(ctx, 10*time.Millisecond, func() (bool, error) {
		m, err := infoFields(ctx, c, "persistence")
		return err == nil && m["aof_rewrite_in_progress"] == "0" && m["aof_rewrite_scheduled"] == "0" &&
			m["rdb_bgsave_in_progress"] == "0", err
	})
	if err != nil {
		return 0, 0, err
	}
	pdir := filepath.Join(s.dir, "primary")
	if _, dir, err = dirListing(filepath.Join(pdir, "appendonlydir")); err != nil {
		return 0, 0, err
	}
	if err := c.Save(ctx).Err(); err != nil {
		return 0, 0, err
	}
	fi, err := os.Stat(filepath.Join(pdir, "dump.rdb"))
	if err != nil {
		return 0, 0, err
	}
	return dir, float64(fi.Size()), nil
}

// restart shuts the primary down with SHUTDOWN SAVE (an RDB holding its
// replication ID and offset) and starts a redis-server on the same
// directory and port without AOF, so that it loads the RDB; the time from
// starting it until it answers PING, which it does only once loaded.
func (s *redisSystem) restart(ctx context.Context) (time.Time, time.Duration, error) {
	old := s.primary
	s.primary = nil
	old.client.Close()
	// A client of its own that does not retry: the connection closes as
	// the server exits.
	c := redis.NewClient(&redis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", old.port), MaxRetries: -1, DisableIdentity: true, Protocol: 2})
	_ = c.ShutdownSave(ctx).Err()
	c.Close()
	select {
	case <-old.done:
	case <-time.After(time.Minute):
		old.cmd.Process.Kill()
		<-old.done
		return time.Time{}, 0, errors.New("redis-server did not exit on SHUTDOWN SAVE")
	}
	start := time.Now()
	rp, err := s.startProc(ctx, "primary", old.port)
	if err != nil {
		return time.Time{}, 0, err
	}
	took := time.Since(start)
	s.primary = rp
	return start, took, nil
}

func (s *redisSystem) primaryFullSyncs(ctx context.Context) (int, error) {
	v, err := infoFloat(ctx, s.primary.client, "stats", "sync_full")
	return int(v), err
}

// writeBatches pipelines the SETs size at a time with redis-benchmark over
// the configured keyspace, as writeAll does (without redis-benchmark, with
// go-redis pipelines of size), or with multi sends them as MULTI/EXEC
// transactions of size SETs (see multiExec).
func (s *redisSystem) writeBatches(ctx context.Context, keys []string, vals [][]byte, size int, multi bool) error {
	if multi {
		return s.multiExec(ctx, keys, vals, size)
	}
	if s.benchmark == "" {
		return writeInBatches(ctx, redisWriters, size, keys, vals, s.setBatch)
	}
	cmd := exec.CommandContext(ctx, s.benchmark, "-h", "127.0.0.1", "-p", strconv.Itoa(s.primary.port),
		"-t", "set", "-n", strconv.Itoa(len(keys)), "-r", strconv.Itoa(s.cfg.keyspace),
		"-d", strconv.Itoa(s.cfg.valueSize), "-P", strconv.Itoa(size), "-c", strconv.Itoa(redisClients), "-q")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("redis-benchmark: %w: %s", err, out)
	}
	return nil
}

// multiExec sends the SETs as MULTI, size SETs, EXEC, one transaction in
// flight on each of redisClients connections, as redis-benchmark keeps
// one pipeline in flight on each of its. go-redis would spend more CPU
// than Redis on two cores, so the transactions are encoded before the
// clock starts and sent and read as raw RESP: the client's cost is a
// write and a scan of the replies.
func (s *redisSystem) multiExec(ctx context.Context, keys []string, vals [][]byte, size int) error {
	var txs [][]byte
	for i := 0; i < len(keys); i += size {
		b := appendRESP(nil, []byte("MULTI"))
		for j := i; j < min(i+size, len(keys)); j++ {
			b = appendRESP(b, []byte("SET"), []byte(keys[j]), vals[j])
		}
		txs = append(txs, appendRESP(b, []byte("EXEC")))
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make([]error, redisClients)
	addr := fmt.Sprintf("127.0.0.1:%d", s.primary.port)
	for c := range redisClients {
		wg.Go(func() {
			var d net.Dialer
			conn, err := d.DialContext(ctx, "tcp", addr)
			if err != nil {
				errs[c] = err
				return
			}
			defer conn.Close()
			stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Now()) })
			defer stop()
			r := bufio.NewReaderSize(conn, 64<<10)
			for {
				i := int(next.Add(1) - 1)
				if i >= len(txs) {
					return
				}
				if _, err := conn.Write(txs[i]); err != nil {
					errs[c] = err
					return
				}
				// +OK, a +QUEUED per SET, *n, then n +OK.
				n := min(size, len(keys)-i*size)
				for line := range 2*n + 2 {
					b, err := r.ReadSlice('\n')
					if err != nil {
						errs[c] = err
						return
					}
					if b[0] == '-' || line == n+1 && b[0] != '*' {
						errs[c] = fmt.Errorf("MULTI/EXEC: %s", strings.TrimSpace(string(b)))
						return
					}
				}
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// appendRESP appends a command in RESP, an array of bulk strings.
func appendRESP(b []byte, args ...[]byte) []byte {
	b = fmt.Appendf(b, "*%d\r\n", len(args))
	for _, a := range args {
		b = fmt.Appendf(b, "$%d\r\n", len(a))
		b = append(append(b, a...), "\r\n"...)
	}
	return b
}

// fillTTL writes the keys with SET ... PXAT (an absolute deadline in
// milliseconds, Redis 6.2+), or plain SETs for a zero first, in pipelines
// of 1000.
func (s *redisSystem) fillTTL(ctx context.Context, n, valueSize int, first time.Time, every time.Duration) error {
	r := newRand()
	vals := make([][]byte, 64)
	for i := range vals {
		vals[i] = randomValue(r, valueSize)
	}
	for lo := 0; lo < n; lo += 1000 {
		_, err := s.primary.client.Pipelined(ctx, func(p redis.Pipeliner) error {
			for i := lo; i < min(lo+1000, n); i++ {
				if first.IsZero() {
					p.Set(ctx, ttlKey(i), vals[i%len(vals)], 0)
					continue
				}
				at := first.Add(time.Duration(i) * every).UnixMilli()
				p.Do(ctx, "SET", ttlKey(i), vals[i%len(vals)], "PXAT", at)
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}

func (s *redisSystem) markExpired(ctx context.Context) (err error) {
	s.markExpiredKeys, err = infoFloat(ctx, s.primary.client, "stats", "expired_keys")
	return err
}

func (s *redisSystem) expiredSinceMark(ctx context.Context, _ []string) (float64, error) {
	v, err := infoFloat(ctx, s.primary.client, "stats", "expired_keys")
	return v - s.markExpiredKeys, err
}

// watchLatency has no Redis counterpart measured here (keyspace
// notifications are fire-and-forget pub/sub with no resume, not a
// watch): ok is false.
func (s *redisSystem) watchLatency(context.Context, int) (p50, p99, max time.Duration, ok bool, err error) {
	return 0, 0, 0, false, nil
}
