package replmap

// The fault-injection suite. Each run starts a primary and three replicas,
// each replica reaching the primary through its own faultProxy, and drives
// writers, waiters and readers while a schedule drawn from the run's seed
// cuts links, refuses dials, stalls or delays one direction, flips bits,
// truncates connections mid-frame, restarts replicas and pauses the
// primary's sends. Then it heals every fault and checks the recorded
// history mechanically. Writers issue Sets, Deletes, SetTTLs (with TTLs
// far longer than a run: see chaosTTL) and Updates of several keys, sets
// with and without a TTL and deletes mixed; the write hook decodes every
// record, a TX as several writes at its one offset (decodeRecord), so the
// checks below see an Update as the primary applied it:
//
//   - the primary's Set/Delete/Get history is linearizable (porcupine; an
//     Update's writes are checked per key, each between its call and
//     return);
//   - every replica read shows the primary's state at some offset, and that
//     offset never goes back for one replica and never runs ahead of the
//     primary;
//   - whenever Wait returned k, at least k replicas had applied every write
//     made before it;
//   - every Set that returned nil is in the primary's stream;
//   - every replica converges to the primary exactly.
//
// TestChaosDurable (chaos_durable_test.go) runs the same with data
// directories, restarting and crashing the primary as well.
//
// CI runs a few fixed seeds. More, from the environment:
//
//	REPLMAP_CHAOS_SEEDS=2000 go test -run 'TestChaos$' .     # seeds 1..2000
//	REPLMAP_CHAOS_SEED=1234 go test -run 'TestChaos$' -v .   # replay one seed
//
// and REPLMAP_CHAOS_TCP_SEEDS for TestChaosTCP.

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	"github.com/stretchr/testify/require"

	"github.com/replmap/replmap/transport"
)

func TestChaos(t *testing.T) {
	for _, seed := range chaosSeeds(t, "REPLMAP_CHAOS_SEEDS", 6) {
		t.Run("seed="+strconv.FormatUint(seed, 10), func(t *testing.T) {
			runChaos(t, seed, transport.NewInmem(), func(i int) string { return "proxy" + strconv.Itoa(i) }, "p",
				chaosOptions{seedVar: "REPLMAP_CHAOS_SEED"})
		})
	}
}

// TestChaosTCP runs the same suite over TCP loopback.
func TestChaosTCP(t *testing.T) {
	for _, seed := range chaosSeeds(t, "REPLMAP_CHAOS_TCP_SEEDS", 2) {
		t.Run("seed="+strconv.FormatUint(seed, 10), func(t *testing.T) {
			runChaos(t, seed, transport.NewTCP(), func(int) string { return "127.0.0.1:0" }, "127.0.0.1:0",
				chaosOptions{seedVar: "REPLMAP_CHAOS_SEED"})
		})
	}
}

// chaosSeeds returns the seeds to run: REPLMAP_CHAOS_SEED alone if set,
// else 1..n with n from the named variable, else 1..def.
func chaosSeeds(t *testing.T, countVar string, def int) []uint64 {
	return envSeeds(t, "REPLMAP_CHAOS_SEED", countVar, def)
}

// envSeeds returns the seeds a seeded suite runs: the one in seedVar alone
// if set, else 1..n with n from countVar, else 1..def.
func envSeeds(t *testing.T, seedVar, countVar string, def int) []uint64 {
	if s := os.Getenv(seedVar); s != "" {
		seed, err := strconv.ParseUint(s, 10, 64)
		require.NoError(t, err, seedVar)
		return []uint64{seed}
	}
	seeds := make([]uint64, envInt(t, countVar, def))
	for i := range seeds {
		seeds[i] = uint64(i + 1)
	}
	return seeds
}

// envInt returns the positive integer in the environment variable name,
// or def if it is not set.
func envInt(t *testing.T, name string, def int) int {
	s := os.Getenv(name)
	if s == "" {
		return def
	}
	n, err := strconv.Atoi(s)
	require.NoError(t, err, name)
	require.Positive(t, n, name)
	return n
}

const (
	chaosReplicas = 3
	chaosWriters  = 3
	chaosKeys     = 8
	chaosFaultFor = 300 * time.Millisecond
)

// chaosOptions selects a variant of the suite.
type chaosOptions struct {
	// seedVar is the variable that replays one seed, for the message a
	// failed run leaves.
	seedVar string
	// durable gives every node a data directory with FsyncAlways and adds
	// restarts and crashes of the primary to the schedule; replicas then
	// restart from their directories (chaos_durable_test.go).
	durable bool
}

// chaosRun is the state of one seeded run.
type chaosRun struct {
	t       *testing.T
	seed    uint64
	tr      transport.Transport
	durable bool
	popts   []Option // for primaries
	opts    []Option // for replicas
	paddr   string   // the primary's address, the same across its restarts
	prim    atomic.Pointer[chaosPrimary]
	logs    *ringLog
	slots   []*replicaSlot
	clock   atomic.Int64 // logical time for the history

	mu       sync.Mutex
	ops      []porcupine.Operation
	lines    map[string]*chaosLine // by replication ID
	writes   int                   // records the write hooks saw
	watches  []*chaosWatch         // every session of the replicas' watchers
	failures []string
	stats    map[string]int
}

// chaosPrimary is one primary instance: the first, or one restarted from
// the data directory.
type chaosPrimary struct {
	p      *Primary[string]
	served chan error
	line   *chaosLine
	fs     *crashFS // its data directory's file system, in durable runs
	// retired is set before the instance is closed or crashed: from then
	// on its writes may fail, and what it shows is not the primary's.
	retired atomic.Bool
}

// chaosLine is the stream of one history, as its primary's write hook saw
// it: every write, in stream order, from offset 0. A restarted primary's
// line repeats its predecessor's up to the offset it restarted at, which
// is all of it unless a crash lost the tail.
type chaosLine struct {
	id      string
	parent  *chaosLine
	fork    uint64          // the offset up to which it continues parent
	records []streamRecord  // guarded by chaosRun.mu
	events  []Event[string] // every write as a watch yields it; guarded by chaosRun.mu
}

// shared returns how far l and to hold the same stream, if to is l or
// continues it (through restarts).
func (l *chaosLine) shared(to *chaosLine) (uint64, bool) {
	s := uint64(math.MaxUint64)
	for x := to; x != nil; x = x.parent {
		if x == l {
			return s, true
		}
		s = min(s, x.fork)
	}
	return 0, false
}

// streamRecord is one write as the primary's write hook saw it. A TX
// record makes one per key it writes, all with its end.
type streamRecord struct {
	end   uint64 // offset after the record
	key   string
	value string
	ok    bool // false for a delete
	cont  bool // not the first write of its record
}

// decodeRecord returns the writes of a data record that ends at end: one
// for a SET, SETX or DEL; for a TX, one per key it writes, the key's last
// write in the TX (the state the record leaves), in the TX's order. The
// suites' TTLs are far longer than a run, so every DEL is a client's.
func decodeRecord(frame []byte, end uint64) ([]streamRecord, error) {
	t := frameType(frame[4])
	payload := frame[frameHeaderSize : len(frame)-frameCRCSize]
	if !isDataRecord(t) {
		return nil, fmt.Errorf("unexpected %s record", t)
	}
	ops, err := parseOps(nil, t, payload, DefaultMaxKeySize, DefaultMaxValueSize)
	if err != nil {
		return nil, fmt.Errorf("bad %s record: %w", t, err)
	}
	last := make(map[string]int, len(ops))
	for i, o := range ops {
		last[string(o.key)] = i
	}
	var recs []streamRecord
	for i, o := range ops {
		if last[string(o.key)] != i {
			continue
		}
		rec := streamRecord{end: end, key: string(o.key), ok: !o.del, cont: len(recs) > 0}
		if !o.del {
			if rec.value, err = decodeValue[string](o.raw); err != nil {
				return nil, fmt.Errorf("bad %s value: %w", t, err)
			}
		}
		recs = append(recs, rec)
	}
	return recs, nil
}

// replicaSlot is one replica position; restarts put new instances in it.
type replicaSlot struct {
	name  string
	dir   string // its data directory, in durable runs
	proxy *faultProxy
	mu    sync.Mutex
	gens  []*replicaGen // every instance, oldest first
	reads []replicaRead
}

type replicaGen struct {
	r         *Replica[string]
	born      int64 // logical time of creation
	restarted bool  // not the slot's first instance
}

// replicaRead is one Get on a replica, between two readings of its offset
// and history, followed by a reading of the primary's.
type replicaRead struct {
	gen        *replicaGen
	key, value string
	ok         bool
	before     uint64
	after      uint64
	id         string // the replica's history during the read
	mixed      bool   // its history changed during the read
	primary    uint64
	primaryID  string
}

func (s *replicaSlot) current() *replicaGen {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.gens[len(s.gens)-1]
}

// primary returns the primary instance the workload uses now.
func (c *chaosRun) primary() *chaosPrimary { return c.prim.Load() }

func runChaos(t *testing.T, seed uint64, tr transport.Transport, proxyAddr func(int) string, primaryAddr string, o chaosOptions) map[string]int {
	root := &chaosLine{} // the history of a replica that has no data
	c := &chaosRun{t: t, seed: seed, tr: tr, durable: o.durable, logs: newRingLog(300),
		lines: map[string]*chaosLine{"": root}, stats: make(map[string]int)}
	rng := rand.New(rand.NewPCG(seed, 1))
	logger := slog.New(slog.NewTextHandler(c.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	defer func() {
		if t.Failed() {
			t.Logf("last log lines:\n%s", c.logs)
			t.Logf("replay: %s=%d go test -run '%s' -v .", o.seedVar, seed, strings.Split(t.Name(), "/")[0]+"$")
		}
	}()

	timing := []Option{WithHeartbeat(20 * time.Millisecond), WithLinkTimeout(100 * time.Millisecond), WithLogger(logger)}
	c.popts = append([]Option{WithBacklogSize(MinBacklogSize << rng.IntN(7))}, timing...)
	if rng.IntN(2) == 0 {
		c.popts = append(c.popts, WithReplicaBufferSoftLimit(MinBacklogSize, 50*time.Millisecond))
	}
	c.opts = append([]Option{WithReconnectBackoff(time.Millisecond, 20*time.Millisecond)}, timing...)
	if c.durable {
		c.durableOptions(rand.New(rand.NewPCG(seed, 2)))
	}
	c.paddr = primaryAddr
	c.serve(c.openPrimary())
	defer func() {
		cp := c.primary()
		require.NoError(t, cp.p.Close())
		require.ErrorIs(t, <-cp.served, ErrClosed)
	}()

	for i := range chaosReplicas {
		proxy, err := newFaultProxy(tr, proxyAddr(i), c.paddr, seed<<8|uint64(i))
		require.NoError(t, err)
		defer proxy.Close()
		slot := &replicaSlot{name: "r" + strconv.Itoa(i), proxy: proxy}
		if c.durable {
			slot.dir = t.TempDir()
		}
		c.slots = append(c.slots, slot)
		c.startReplica(slot)
	}
	defer func() {
		for _, s := range c.slots {
			s.current().r.Close()
		}
	}()

	// The workload runs until the faults are over.
	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for w := range chaosWriters {
		wg.Go(func() { c.writer(ctx, w, rand.New(rand.NewPCG(seed, uint64(100+w)))) })
	}
	wg.Go(func() { c.primaryReader(ctx, chaosWriters, rand.New(rand.NewPCG(seed, 200))) })
	for w := range 2 {
		wg.Go(func() { c.waiter(ctx, rand.New(rand.NewPCG(seed, uint64(300+w)))) })
	}
	for i, s := range c.slots {
		wg.Go(func() { c.replicaReader(ctx, s, rand.New(rand.NewPCG(seed, uint64(400+i)))) })
		if !c.durable { // one history: the check follows no restarts
			wg.Go(func() {
				c.replicaWatcher(ctx, s, chaosWatchPrefixes[i%len(chaosWatchPrefixes)], rand.New(rand.NewPCG(seed, uint64(500+i))))
			})
		}
	}
	c.faults(rng)
	stop()
	wg.Wait()

	c.checkLinearizable()
	c.checkReplicaReads()
	c.checkAcknowledged()
	if !c.durable {
		c.checkWatches(c.primary().line)
	}
	c.mu.Lock()
	for _, f := range c.failures {
		t.Error(f)
	}
	c.mu.Unlock()

	// Faults over: every replica must converge exactly.
	for _, s := range c.slots {
		s.proxy.Heal()
	}
	p := c.primary().p
	var rs []*Replica[string]
	for _, s := range c.slots {
		rs = append(rs, s.current().r)
	}
	requireConverged(t, p, rs...)

	c.countSyncs(p.Info())
	for _, s := range c.slots {
		c.stats["bits flipped"] += int(s.proxy.flipped.Load())
		c.stats["truncated"] += int(s.proxy.truncated.Load())
		if g := s.current(); g.restarted {
			c.countRestartedSyncs(g)
		}
	}
	c.stats["primary ops"] = len(c.ops)
	c.stats["writes"] = c.writes
	t.Logf("seed %d: stats %v", seed, c.stats)
	return c.stats
}

// openPrimary starts a primary instance: empty, or in durable runs on the
// data directory, continuing the current instance's line from the offset
// it loaded. It does not serve yet.
func (c *chaosRun) openPrimary() *chaosPrimary {
	cp := &chaosPrimary{served: make(chan error, 1)}
	opts := c.popts
	if c.durable {
		cp.fs = &crashFS{}
		opts = append(slices.Clone(opts), withFileSystem(cp.fs))
	}
	p, err := NewPrimary[string](opts...)
	require.NoError(c.t, err)
	cp.p = p
	d := p.n.data()
	line := &chaosLine{id: d.hist.replID, parent: c.lines[""], fork: d.offset()}
	if prev := c.primary(); prev != nil {
		line.parent = prev.line
	}
	c.mu.Lock()
	i := 0
	for i < len(line.parent.records) && line.parent.records[i].end <= line.fork {
		i++
	}
	line.records = slices.Clone(line.parent.records[:i])
	j := 0
	for j < len(line.parent.events) && line.parent.events[j].Offset <= line.fork {
		j++
	}
	line.events = slices.Clone(line.parent.events[:j])
	c.stats["writes lost to crashes"] += len(line.parent.records) - i
	if at := line.fork; at > 0 && (i == 0 || line.records[i-1].end != at) {
		c.failures = append(c.failures, fmt.Sprintf("primary restarted at offset %d, not at the end of a write", at))
	}
	c.lines[line.id] = line
	c.mu.Unlock()
	cp.line = line
	p.n.testHookWrite = func(frame []byte, end uint64) { c.recordWrite(line, frame, end) }
	return cp
}

// serve makes cp serve on the primary's address and the workload use it.
func (c *chaosRun) serve(cp *chaosPrimary) {
	l, err := c.tr.Listen(c.paddr)
	require.NoError(c.t, err)
	c.paddr = l.Addr().String()
	go func() { cp.served <- cp.p.Serve(l) }()
	c.prim.Store(cp)
}

// countSyncs adds a primary instance's syncs to the run's figures.
func (c *chaosRun) countSyncs(info PrimaryInfo) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.stats["full syncs"] += int(info.FullSyncs)
	c.stats["partial syncs"] += int(info.PartialSyncs)
	c.stats["dropped slow"] += int(info.DroppedSlow)
}

// startReplica starts a new instance in s. It holds s's lock from before
// the instance exists until it is listed, so a waiter that checks s after
// its Wait returned sees every instance that Wait could have counted.
func (c *chaosRun) startReplica(s *replicaSlot) {
	s.mu.Lock()
	defer s.mu.Unlock()
	born := c.clock.Add(1)
	opts := append(slices.Clone(c.opts), WithReplicaName(s.name))
	if c.durable {
		opts = append(opts, WithDataDir(s.dir), WithFsync(FsyncAlways))
	}
	r, err := NewReplica[string](c.tr, s.proxy.Addr(), opts...)
	require.NoError(c.t, err)
	s.gens = append(s.gens, &replicaGen{r: r, born: born, restarted: len(s.gens) > 0})
}

// restartReplica closes s's replica and starts another in its place: an
// empty one, or in durable runs one on the same directory.
func (c *chaosRun) restartReplica(s *replicaSlot) {
	old := s.current()
	if !c.durable {
		old.r.Close()
		c.startReplica(s)
		return
	}
	c.restartDurableReplica(s, old)
}

func (c *chaosRun) fail(format string, args ...any) {
	c.mu.Lock()
	c.failures = append(c.failures, fmt.Sprintf(format, args...))
	c.mu.Unlock()
}

func (c *chaosRun) count(kind string) {
	c.mu.Lock()
	c.stats[kind]++
	c.mu.Unlock()
}

// recordWrite is a primary's write hook: it runs under the write lock, so
// records arrive in stream order.
func (c *chaosRun) recordWrite(line *chaosLine, frame []byte, end uint64) {
	recs, err := decodeRecord(frame, end)
	var evs []Event[string]
	if err == nil {
		evs, err = watchEvents(frame, end)
	}
	if err != nil {
		c.fail("write hook: %v", err)
		return
	}
	c.mu.Lock()
	line.records = append(line.records, recs...)
	line.events = append(line.events, evs...)
	c.writes++
	switch frameType(frame[4]) {
	case frameTx:
		c.stats["TX records"]++
	case frameSetX:
		c.stats["SETX records"]++
	}
	c.mu.Unlock()
}

// pause spaces a workload's operations out, so a run records thousands of
// them rather than millions.
func pause(rng *rand.Rand) { time.Sleep(time.Duration(rng.IntN(200)) * time.Microsecond) }

type kvInput struct {
	op    byte // 's'et, 'd'elete, 'g'et
	key   string
	value string
}

// chaosTTL is the TTL of the suites' SetTTL writes: far longer than a run,
// so no key expires and every DEL in the stream is a client's. (The
// checker does not model expiry; ttl_test.go covers it.) It makes the
// writes SETX records and TX writes of kind 't', which full syncs carry as
// CHUNKX and data directories keep.
const chaosTTL = time.Hour

// chaosWrite is one write a writer makes: a Set, a SetTTL, a Delete, or
// an Update of several keys (each its own kvInput, with the Update's call
// and return times: porcupine checks each key's history apart).
type chaosWrite struct {
	kind string // "set", "setttl", "delete", "update"
	ins  []kvInput
	ttl  []bool // for an update: which sets carry a TTL
}

// newChaosWrite draws a write from rng over keys k0..k(keys-1); values
// are unique, prefixed with tag.
func newChaosWrite(rng *rand.Rand, keys int, tag string) chaosWrite {
	key := func() string { return "k" + strconv.Itoa(rng.IntN(keys)) }
	switch n := rng.IntN(10); {
	case n < 2:
		return chaosWrite{kind: "delete", ins: []kvInput{{op: 'd', key: key()}}}
	case n == 2:
		return chaosWrite{kind: "setttl", ins: []kvInput{{op: 's', key: key(), value: tag}}}
	case n == 3:
		w := chaosWrite{kind: "update"}
		perm := rng.Perm(keys)[:2+rng.IntN(3)]
		for j, k := range perm {
			in := kvInput{op: 's', key: "k" + strconv.Itoa(k), value: tag + "." + strconv.Itoa(j)}
			if rng.IntN(4) == 0 {
				in.op, in.value = 'd', ""
			}
			w.ins = append(w.ins, in)
			w.ttl = append(w.ttl, in.op == 's' && rng.IntN(3) == 0)
		}
		return w
	}
	return chaosWrite{kind: "set", ins: []kvInput{{op: 's', key: key(), value: tag}}}
}

// apply makes w on p.
func (w chaosWrite) apply(p *Primary[string]) error {
	in := w.ins[0]
	switch w.kind {
	case "set":
		return p.Set(in.key, in.value)
	case "setttl":
		return p.SetTTL(in.key, in.value, chaosTTL)
	case "delete":
		return p.Delete(in.key)
	}
	_, err := p.Update(func(tx *Tx[string]) error {
		for i, in := range w.ins {
			var err error
			switch {
			case in.op == 'd':
				err = tx.Delete(in.key)
			case w.ttl[i]:
				err = tx.SetTTL(in.key, in.value, chaosTTL)
			default:
				err = tx.Set(in.key, in.value)
			}
			if err != nil {
				return err
			}
		}
		return nil
	})
	return err
}

type kvOutput struct {
	value string
	ok    bool
}

// opOutcome is how an operation ended, for the history.
type opOutcome int

const (
	opDone    opOutcome = iota // it returned: its output stands
	opUnknown                  // it failed as its primary went down: it may or may not have taken effect
	opNone                     // it had no effect, or read a primary no longer serving: left out
)

// unknownReturn is the return time of an operation whose outcome is not
// known: after every other, so porcupine may order it anywhere after its
// call, including after every read (not taking effect).
const unknownReturn = math.MaxInt64

func (c *chaosRun) record(client int, in kvInput, f func() (kvOutput, opOutcome)) {
	call := c.clock.Add(1)
	out, how := f()
	ret := c.clock.Add(1)
	switch how {
	case opNone:
		return
	case opUnknown:
		ret = unknownReturn
	}
	c.mu.Lock()
	c.ops = append(c.ops, porcupine.Operation{ClientId: client, Input: in, Call: call, Output: out, Return: ret})
	c.mu.Unlock()
}

func (c *chaosRun) writer(ctx context.Context, id int, rng *rand.Rand) {
	for seq := 0; ctx.Err() == nil; seq++ {
		w := newChaosWrite(rng, chaosKeys, fmt.Sprintf("w%d-%d", id, seq))
		cp := c.primary()
		call := c.clock.Add(1)
		err := w.apply(cp.p)
		ret := c.clock.Add(1)
		switch {
		case err == nil:
			c.count(w.kind + "s")
		case cp.retired.Load() && errors.Is(err, ErrClosed):
			pause(rng)
			continue // refused before writing anything
		case cp.retired.Load():
			c.count("writes failed by a restart")
			ret = unknownReturn
		default:
			c.fail("%s %v: %v", w.kind, w.ins, err)
		}
		c.mu.Lock()
		for _, in := range w.ins {
			c.ops = append(c.ops, porcupine.Operation{ClientId: id, Input: in, Call: call, Output: kvOutput{}, Return: ret})
		}
		c.mu.Unlock()
		pause(rng)
	}
}

func (c *chaosRun) primaryReader(ctx context.Context, id int, rng *rand.Rand) {
	for ctx.Err() == nil {
		in := kvInput{op: 'g', key: "k" + strconv.Itoa(rng.IntN(chaosKeys))}
		cp := c.primary()
		c.record(id, in, func() (kvOutput, opOutcome) {
			v, ok := cp.p.Get(in.key)
			if c.durable {
				// Get does not wait for the disk: it may show a write a
				// crash then loses, which was never acknowledged. A read
				// counts once everything it could have seen is on disk.
				if err := cp.p.Sync(); err != nil {
					if !cp.retired.Load() {
						c.fail("Sync: %v", err)
					}
					return kvOutput{}, opNone
				}
			}
			return kvOutput{v, ok}, opDone
		})
		pause(rng)
	}
}

// waiter calls Wait and checks its count against the replicas' offsets
// right after it returns. A replica's offset only grows, so one that had
// applied the target when Wait returned still has; replicas started after
// the return are not looked at. (A crash of the primary may send a replica
// back: a Wait on a primary that restarted is not checked.)
func (c *chaosRun) waiter(ctx context.Context, rng *rand.Rand) {
	for ctx.Err() == nil {
		cp := c.primary()
		n := 1 + rng.IntN(chaosReplicas)
		target := cp.p.Offset()
		var k int
		var err error
		if rng.IntN(3) == 0 {
			k, err = cp.p.WaitContext(ctx, n)
		} else {
			k, err = cp.p.Wait(n, time.Duration(1+rng.IntN(30))*time.Millisecond)
		}
		ret := c.clock.Add(1)
		if err != nil && ctx.Err() == nil && !cp.retired.Load() {
			c.fail("Wait(%d): %v", n, err)
		}
		have := 0
		var seen []string
		for _, s := range c.slots {
			s.mu.Lock()
			var offs []uint64
			for _, g := range s.gens {
				offs = append(offs, g.r.Offset())
				if g.born < ret && g.r.Offset() >= target {
					have++
					break
				}
			}
			seen = append(seen, fmt.Sprintf("%s%v", s.name, offs))
			s.mu.Unlock()
		}
		if cp.retired.Load() {
			pause(rng)
			continue
		}
		if have < k {
			var links []string
			for _, l := range cp.p.Info().Replicas {
				links = append(links, fmt.Sprintf("%s@%s acked %d", l.ID, l.Addr, l.AckOffset))
			}
			c.fail("Wait(%d) returned %d for offset %d, but only %d replicas had applied it: replicas %v, links now %v",
				n, k, target, have, seen, links)
		}
		c.mu.Lock()
		c.stats["waits"]++
		if k > 0 {
			c.stats["waits counting replicas"]++
		}
		c.mu.Unlock()
	}
}

func (c *chaosRun) replicaReader(ctx context.Context, s *replicaSlot, rng *rand.Rand) {
	for ctx.Err() == nil {
		g := s.current()
		d := g.r.n.data()
		rd := replicaRead{gen: g, key: "k" + strconv.Itoa(rng.IntN(chaosKeys)), before: d.offset(), id: d.hist.replID}
		rd.value, rd.ok = g.r.Get(rd.key)
		d = g.r.n.data()
		rd.after, rd.mixed = d.offset(), d.hist.replID != rd.id
		pd := c.primary().p.n.data()
		rd.primary, rd.primaryID = pd.offset(), pd.hist.replID
		s.mu.Lock()
		s.reads = append(s.reads, rd)
		s.mu.Unlock()
		pause(rng)
	}
}

// faults runs the seed's fault schedule for chaosFaultFor, then heals all.
func (c *chaosRun) faults(rng *rand.Rand) {
	type heal struct {
		at time.Time
		do func()
	}
	var heals []heal
	later := func(do func()) {
		heals = append(heals, heal{time.Now().Add(time.Duration(5+rng.IntN(60)) * time.Millisecond), do})
	}
	kinds := 9
	if c.durable {
		kinds = 12
	}
	deadline := time.Now().Add(chaosFaultFor)
	for time.Now().Before(deadline) {
		time.Sleep(time.Duration(1+rng.IntN(15)) * time.Millisecond) // the gap between faults
		heals = slices.DeleteFunc(heals, func(h heal) bool {
			if time.Now().After(h.at) {
				h.do()
				return true
			}
			return false
		})
		s := c.slots[rng.IntN(len(c.slots))]
		dir := rng.IntN(2)
		switch rng.IntN(kinds) {
		case 0, 1:
			c.count("cut")
			s.proxy.Cut()
		case 2:
			c.count("refuse")
			s.proxy.Refuse(true)
			later(func() { s.proxy.Refuse(false) })
		case 3:
			c.count("stall")
			s.proxy.Stall(dir, true)
			later(func() { s.proxy.Stall(dir, false) })
		case 4:
			c.count("delay")
			s.proxy.Delay(dir, time.Duration(100+rng.IntN(2000))*time.Microsecond)
			later(func() { s.proxy.Delay(dir, 0) })
		case 5:
			c.count("bit flip")
			s.proxy.Flip(dir)
		case 8:
			c.count("truncate")
			s.proxy.Truncate(dir)
		case 6, 11: // 11: durable runs only
			c.count("replica restarts")
			c.restartReplica(s)
		case 7:
			c.count("pause primary")
			for _, s := range c.slots {
				s.proxy.Stall(down, true)
			}
			later(func() {
				for _, s := range c.slots {
					s.proxy.Stall(down, false)
				}
			})
		case 9: // durable runs only
			c.count("primary restarts")
			c.restartPrimary(false)
		case 10: // durable runs only
			c.count("primary crashes")
			c.restartPrimary(true)
		}
	}
	for _, h := range heals {
		h.do()
	}
}

// kvModel is a map, partitioned by key for porcupine.
var kvModel = porcupine.Model{
	Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
		byKey := make(map[string][]porcupine.Operation)
		for _, op := range history {
			k := op.Input.(kvInput).key
			byKey[k] = append(byKey[k], op)
		}
		parts := make([][]porcupine.Operation, 0, len(byKey))
		for _, ops := range byKey {
			parts = append(parts, ops)
		}
		return parts
	},
	Init: func() any { return kvOutput{} }, // one key's state: its value and presence
	Step: func(state, input, output any) (bool, any) {
		in := input.(kvInput)
		switch in.op {
		case 's':
			return true, kvOutput{in.value, true}
		case 'd':
			return true, kvOutput{}
		default:
			return output.(kvOutput) == state.(kvOutput), state
		}
	},
	DescribeOperation: func(input, output any) string {
		in, out := input.(kvInput), output.(kvOutput)
		switch in.op {
		case 's':
			return fmt.Sprintf("set(%s, %s)", in.key, in.value)
		case 'd':
			return fmt.Sprintf("delete(%s)", in.key)
		}
		return fmt.Sprintf("get(%s) -> %q, %v", in.key, out.value, out.ok)
	},
}

func (c *chaosRun) checkLinearizable() {
	res, info := porcupine.CheckOperationsVerbose(kvModel, c.ops, time.Minute)
	if res == porcupine.Ok {
		return
	}
	path := fmt.Sprintf("%s/chaos-seed-%d.html", os.TempDir(), c.seed)
	if err := porcupine.VisualizePath(kvModel, info, path); err == nil {
		c.fail("primary history is not linearizable (%s); see %s", res, path)
	} else {
		c.fail("primary history is not linearizable (%s)", res)
	}
}

// checkReplicaReads finds, for each replica read in order, the earliest
// offset at which the state of the history it read (the primary's, or a
// restarted primary's) matches it, no earlier than the offset chosen for
// the replica's previous read and no earlier than the replica's offset
// before the read. The read may also see the record being applied after
// the replica's offset after the read, and nothing beyond. Taking the
// earliest match keeps every later read's options open, so a failure
// means no valid choice of offsets exists.
//
// The previous read is the same instance's; in durable runs the slot's,
// across restarts, so a replica restarted from its directory must never
// show an older state than it showed before. A replica may move only to a
// history that continues the one it read before, and back only to where
// the two part: below the offset a crashed primary restarted at, when it
// held writes the crash lost.
func (c *chaosRun) checkReplicaReads() {
	type index struct {
		byKey map[string][]streamRecord
		recs  []streamRecord
	}
	indexes := make(map[*chaosLine]*index)
	indexOf := func(l *chaosLine) *index {
		if x, ok := indexes[l]; ok {
			return x
		}
		x := &index{byKey: make(map[string][]streamRecord), recs: l.records}
		for _, rec := range l.records {
			x.byKey[rec.key] = append(x.byKey[rec.key], rec)
		}
		indexes[l] = x
		return x
	}
	// stateAt is key's value at offset o, and the index of the first
	// record of key after o.
	stateAt := func(x *index, key string, o uint64) (kvOutput, int) {
		recs := x.byKey[key]
		i, _ := slices.BinarySearchFunc(recs, o+1, func(r streamRecord, o uint64) int { return cmp.Compare(r.end, o) })
		if i == 0 {
			return kvOutput{}, 0
		}
		return kvOutput{recs[i-1].value, recs[i-1].ok}, i
	}
	// nextEnd is the end of the record that starts at o, or o at the end.
	nextEnd := func(x *index, o uint64) uint64 {
		i, _ := slices.BinarySearchFunc(x.recs, o+1, func(r streamRecord, o uint64) int { return cmp.Compare(r.end, o) })
		if i == len(x.recs) {
			return o
		}
		return x.recs[i].end
	}
	type position struct {
		line *chaosLine
		at   uint64
	}
	reads := 0
	for _, s := range c.slots {
		floors := make(map[any]position)
		for _, rd := range s.reads {
			if rd.mixed {
				c.stats["replica reads across a change of history"]++
				continue
			}
			reads++
			line := c.lines[rd.id]
			if line == nil {
				c.fail("%s read %s in history %q, which no primary had", s.name, rd.key, rd.id)
				return
			}
			var floorKey any = rd.gen
			if c.durable {
				floorKey = s
			}
			var floor uint64
			if prev, ok := floors[floorKey]; ok {
				shared, ok := prev.line.shared(line)
				if !ok {
					c.fail("%s read %s in history %s after reading history %s at offset %d: it does not continue it",
						s.name, rd.key, line.id, prev.line.id, prev.at)
					return
				}
				if prev.at > shared {
					c.stats["replicas sent back by a crash"]++
				}
				floor = min(prev.at, shared)
			}
			same := rd.id == rd.primaryID // the primary's offset read after is in the same history
			if same && rd.after > rd.primary {
				c.fail("%s read %s at offset %d, ahead of the primary's %d", s.name, rd.key, rd.after, rd.primary)
				return
			}
			x := indexOf(line)
			lo, hi := max(floor, rd.before), nextEnd(x, rd.after)
			want := kvOutput{rd.value, rd.ok}
			at, ok := lo, false
			state, i := stateAt(x, rd.key, lo)
			if state == want {
				ok = true
			} else {
				for recs := x.byKey[rd.key]; i < len(recs) && recs[i].end <= hi; i++ {
					if (kvOutput{recs[i].value, recs[i].ok}) == want {
						at, ok = recs[i].end, true
						break
					}
				}
			}
			if !ok || (same && at > rd.primary) {
				c.fail("%s read %s = %q, %v between offsets %d and %d (floor %d) of history %s: the primary never had that in [%d, %d]",
					s.name, rd.key, rd.value, rd.ok, rd.before, rd.after, floor, rd.id, lo, hi)
				return
			}
			floors[floorKey] = position{line, at}
		}
	}
	c.stats["replica reads"] = reads
}

// checkAcknowledged checks that every Set that returned nil is in the
// final history (values are unique), and counts what became of those
// whose outcome is unknown. Deletes are left to the linearizability
// check.
func (c *chaosRun) checkAcknowledged() {
	final := c.primary().line
	have := make(map[string]bool)
	for _, rec := range final.records {
		if rec.ok {
			have[rec.value] = true
		}
	}
	for _, op := range c.ops {
		in := op.Input.(kvInput)
		switch {
		case in.op != 's':
		case op.Return == unknownReturn && have[in.value]:
			c.stats["unknown writes kept"]++
		case op.Return == unknownReturn:
			c.stats["unknown writes lost"]++
		case !have[in.value]:
			c.fail("set(%s, %s) returned nil, but the final history lacks it", in.key, in.value)
		default:
			c.stats["acknowledged sets checked"]++
		}
	}
}

// ringLog keeps the last lines written to it, to show when a run fails.
type ringLog struct {
	mu    sync.Mutex
	lines []string
	next  int
}

func newRingLog(n int) *ringLog { return &ringLog{lines: make([]string, 0, n)} }

func (r *ringLog) Write(b []byte) (int, error) {
	line := string(bytes.TrimSuffix(b, []byte("\n")))
	r.mu.Lock()
	if len(r.lines) < cap(r.lines) {
		r.lines = append(r.lines, line)
	} else {
		r.lines[r.next] = line
		r.next = (r.next + 1) % len(r.lines)
	}
	r.mu.Unlock()
	return len(b), nil
}

func (r *ringLog) String() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return strings.Join(append(slices.Clone(r.lines[r.next:]), r.lines[:r.next]...), "\n")
}
