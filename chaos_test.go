package replmap

// The fault-injection suite. Each run starts a primary and three replicas,
// each replica reaching the primary through its own faultProxy, and drives
// writers, waiters and readers while a schedule drawn from the run's seed
// cuts links, refuses dials, stalls or delays one direction, flips bits,
// truncates connections mid-frame, restarts replicas and pauses the
// primary's sends. Then it heals every fault and checks the recorded
// history mechanically:
//
//   - the primary's Set/Delete/Get history is linearizable (porcupine);
//   - every replica read shows the primary's state at some offset, and that
//     offset never goes back for one replica and never runs ahead of the
//     primary;
//   - whenever Wait returned k, at least k replicas had applied every write
//     made before it;
//   - every replica converges to the primary exactly.
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
	"fmt"
	"log/slog"
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
			runChaos(t, seed, transport.NewInmem(), func(i int) string { return "proxy" + strconv.Itoa(i) }, "p")
		})
	}
}

// TestChaosTCP runs the same suite over TCP loopback.
func TestChaosTCP(t *testing.T) {
	for _, seed := range chaosSeeds(t, "REPLMAP_CHAOS_TCP_SEEDS", 2) {
		t.Run("seed="+strconv.FormatUint(seed, 10), func(t *testing.T) {
			runChaos(t, seed, transport.NewTCP(), func(int) string { return "127.0.0.1:0" }, "127.0.0.1:0")
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

// chaosRun is the state of one seeded run.
type chaosRun struct {
	t     *testing.T
	seed  uint64
	tr    transport.Transport
	p     *Primary[string]
	opts  []Option // for replicas
	logs  *ringLog
	slots []*replicaSlot
	clock atomic.Int64 // logical time for the history

	mu       sync.Mutex
	ops      []porcupine.Operation
	records  []streamRecord // every write, in stream order
	failures []string
	stats    map[string]int
}

// streamRecord is one write as the primary's write hook saw it.
type streamRecord struct {
	end   uint64 // offset after the record
	key   string
	value string
	ok    bool // false for a delete
}

// replicaSlot is one replica position; restarts put new instances in it.
type replicaSlot struct {
	name  string
	proxy *faultProxy
	mu    sync.Mutex
	gens  []*replicaGen // every instance, oldest first
	reads []replicaRead
}

type replicaGen struct {
	r    *Replica[string]
	born int64 // logical time of creation
}

// replicaRead is one Get on a replica, between two readings of its offset,
// followed by a reading of the primary's.
type replicaRead struct {
	gen        *replicaGen
	key, value string
	ok         bool
	before     uint64
	after      uint64
	primary    uint64
}

func (s *replicaSlot) current() *replicaGen {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.gens[len(s.gens)-1]
}

func runChaos(t *testing.T, seed uint64, tr transport.Transport, proxyAddr func(int) string, primaryAddr string) {
	c := &chaosRun{t: t, seed: seed, tr: tr, logs: newRingLog(300), stats: make(map[string]int)}
	rng := rand.New(rand.NewPCG(seed, 1))
	logger := slog.New(slog.NewTextHandler(c.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	defer func() {
		if t.Failed() {
			t.Logf("last log lines:\n%s", c.logs)
			t.Logf("replay: REPLMAP_CHAOS_SEED=%d go test -run '%s' -v .", seed, strings.Split(t.Name(), "/")[0]+"$")
		}
	}()

	timing := []Option{WithHeartbeat(20 * time.Millisecond), WithLinkTimeout(100 * time.Millisecond), WithLogger(logger)}
	popts := append([]Option{WithBacklogSize(MinBacklogSize << rng.IntN(7))}, timing...)
	if rng.IntN(2) == 0 {
		popts = append(popts, WithReplicaBufferSoftLimit(MinBacklogSize, 50*time.Millisecond))
	}
	p, err := NewPrimary[string](popts...)
	require.NoError(t, err)
	p.n.testHookWrite = c.recordWrite
	c.p = p
	l, err := tr.Listen(primaryAddr)
	require.NoError(t, err)
	served := make(chan error, 1)
	go func() { served <- p.Serve(l) }()
	defer func() {
		require.NoError(t, p.Close())
		require.ErrorIs(t, <-served, ErrClosed)
	}()

	c.opts = append([]Option{WithReconnectBackoff(time.Millisecond, 20*time.Millisecond)}, timing...)
	for i := range chaosReplicas {
		proxy, err := newFaultProxy(tr, proxyAddr(i), l.Addr().String(), seed<<8|uint64(i))
		require.NoError(t, err)
		defer proxy.Close()
		slot := &replicaSlot{name: "r" + strconv.Itoa(i), proxy: proxy}
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
	}
	c.faults(rng)
	stop()
	wg.Wait()

	c.checkLinearizable()
	c.checkReplicaReads()
	c.mu.Lock()
	for _, f := range c.failures {
		t.Error(f)
	}
	c.mu.Unlock()

	// Faults over: every replica must converge exactly.
	for _, s := range c.slots {
		s.proxy.Heal()
	}
	var rs []*Replica[string]
	for _, s := range c.slots {
		rs = append(rs, s.current().r)
	}
	requireConverged(t, p, rs...)

	info := p.Info()
	c.stats["full syncs"] = int(info.FullSyncs)
	c.stats["partial syncs"] = int(info.PartialSyncs)
	c.stats["dropped slow"] = int(info.DroppedSlow)
	for _, s := range c.slots {
		c.stats["bits flipped"] += int(s.proxy.flipped.Load())
		c.stats["truncated"] += int(s.proxy.truncated.Load())
	}
	t.Logf("seed %d: %d primary ops, %d writes, stats %v", seed, len(c.ops), len(c.records), c.stats)
}

// startReplica starts a new instance in s. It holds s's lock from before
// the instance exists until it is listed, so a waiter that checks s after
// its Wait returned sees every instance that Wait could have counted.
func (c *chaosRun) startReplica(s *replicaSlot) {
	s.mu.Lock()
	defer s.mu.Unlock()
	born := c.clock.Add(1)
	r, err := NewReplica[string](c.tr, s.proxy.Addr(), append(c.opts, WithReplicaName(s.name))...)
	require.NoError(c.t, err)
	s.gens = append(s.gens, &replicaGen{r: r, born: born})
}

func (c *chaosRun) fail(format string, args ...any) {
	c.mu.Lock()
	c.failures = append(c.failures, fmt.Sprintf(format, args...))
	c.mu.Unlock()
}

// recordWrite is the primary's write hook: it runs under the write lock,
// so records arrive in stream order.
func (c *chaosRun) recordWrite(frame []byte, end uint64) {
	rec := streamRecord{end: end}
	payload := frame[frameHeaderSize : len(frame)-frameCRCSize]
	switch frameType(frame[4]) {
	case frameSet:
		key, raw, err := parseSet(payload, DefaultMaxKeySize, DefaultMaxValueSize)
		if err == nil {
			rec.value, err = decodeValue[string](raw)
		}
		if err != nil {
			c.fail("write hook: bad SET record: %v", err)
		}
		rec.key, rec.ok = string(key), true
	case frameDel:
		rec.key = string(payload)
	}
	c.mu.Lock()
	c.records = append(c.records, rec)
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

type kvOutput struct {
	value string
	ok    bool
}

func (c *chaosRun) record(client int, in kvInput, f func() kvOutput) {
	call := c.clock.Add(1)
	out := f()
	ret := c.clock.Add(1)
	c.mu.Lock()
	c.ops = append(c.ops, porcupine.Operation{ClientId: client, Input: in, Call: call, Output: out, Return: ret})
	c.mu.Unlock()
}

func (c *chaosRun) writer(ctx context.Context, id int, rng *rand.Rand) {
	for seq := 0; ctx.Err() == nil; seq++ {
		in := kvInput{op: 's', key: "k" + strconv.Itoa(rng.IntN(chaosKeys)), value: fmt.Sprintf("w%d-%d", id, seq)}
		if rng.IntN(5) == 0 {
			in.op = 'd'
		}
		c.record(id, in, func() kvOutput {
			var err error
			if in.op == 's' {
				err = c.p.Set(in.key, in.value)
			} else {
				err = c.p.Delete(in.key)
			}
			if err != nil {
				c.fail("%c %s: %v", in.op, in.key, err)
			}
			return kvOutput{}
		})
		pause(rng)
	}
}

func (c *chaosRun) primaryReader(ctx context.Context, id int, rng *rand.Rand) {
	for ctx.Err() == nil {
		in := kvInput{op: 'g', key: "k" + strconv.Itoa(rng.IntN(chaosKeys))}
		c.record(id, in, func() kvOutput {
			v, ok := c.p.Get(in.key)
			return kvOutput{v, ok}
		})
		pause(rng)
	}
}

// waiter calls Wait and checks its count against the replicas' offsets
// right after it returns. A replica's offset only grows, so one that had
// applied the target when Wait returned still has; replicas started after
// the return are not looked at.
func (c *chaosRun) waiter(ctx context.Context, rng *rand.Rand) {
	for ctx.Err() == nil {
		n := 1 + rng.IntN(chaosReplicas)
		target := c.p.Offset()
		var k int
		var err error
		if rng.IntN(3) == 0 {
			k, err = c.p.WaitContext(ctx, n)
		} else {
			k, err = c.p.Wait(n, time.Duration(1+rng.IntN(30))*time.Millisecond)
		}
		ret := c.clock.Add(1)
		if err != nil && ctx.Err() == nil {
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
		if have < k {
			var links []string
			for _, l := range c.p.Info().Replicas {
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
		rd := replicaRead{gen: g, key: "k" + strconv.Itoa(rng.IntN(chaosKeys))}
		rd.before = g.r.Offset()
		rd.value, rd.ok = g.r.Get(rd.key)
		rd.after = g.r.Offset()
		rd.primary = c.p.Offset()
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
	count := func(kind string) {
		c.mu.Lock()
		c.stats[kind]++
		c.mu.Unlock()
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
		switch rng.IntN(9) {
		case 0, 1:
			count("cut")
			s.proxy.Cut()
		case 2:
			count("refuse")
			s.proxy.Refuse(true)
			later(func() { s.proxy.Refuse(false) })
		case 3:
			count("stall")
			s.proxy.Stall(dir, true)
			later(func() { s.proxy.Stall(dir, false) })
		case 4:
			count("delay")
			s.proxy.Delay(dir, time.Duration(100+rng.IntN(2000))*time.Microsecond)
			later(func() { s.proxy.Delay(dir, 0) })
		case 5:
			count("bit flip")
			s.proxy.Flip(dir)
		case 8:
			count("truncate")
			s.proxy.Truncate(dir)
		case 6:
			count("restart")
			s.current().r.Close()
			c.startReplica(s)
		case 7:
			count("pause primary")
			for _, s := range c.slots {
				s.proxy.Stall(down, true)
			}
			later(func() {
				for _, s := range c.slots {
					s.proxy.Stall(down, false)
				}
			})
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
// offset at which the primary's state matches it, no earlier than the
// offset chosen for the replica's previous read and no earlier than the
// replica's offset before the read. The read may also see the record
// being applied after the replica's offset after the read, and nothing
// beyond. Taking the earliest match keeps every later read's options
// open, so a failure means no valid choice of offsets exists.
func (c *chaosRun) checkReplicaReads() {
	byKey := make(map[string][]streamRecord)
	for _, rec := range c.records {
		byKey[rec.key] = append(byKey[rec.key], rec)
	}
	// stateAt is key's value at offset o, and the index of the first
	// record of key after o.
	stateAt := func(key string, o uint64) (kvOutput, int) {
		recs := byKey[key]
		i, _ := slices.BinarySearchFunc(recs, o+1, func(r streamRecord, o uint64) int { return cmp.Compare(r.end, o) })
		if i == 0 {
			return kvOutput{}, 0
		}
		return kvOutput{recs[i-1].value, recs[i-1].ok}, i
	}
	// nextEnd is the end of the record that starts at o, or o at the end.
	nextEnd := func(o uint64) uint64 {
		i, _ := slices.BinarySearchFunc(c.records, o+1, func(r streamRecord, o uint64) int { return cmp.Compare(r.end, o) })
		if i == len(c.records) {
			return o
		}
		return c.records[i].end
	}
	reads := 0
	for _, s := range c.slots {
		floor := make(map[*replicaGen]uint64)
		for _, rd := range s.reads {
			reads++
			if rd.after > rd.primary {
				c.fail("%s read %s at offset %d, ahead of the primary's %d", s.name, rd.key, rd.after, rd.primary)
				return
			}
			lo, hi := max(floor[rd.gen], rd.before), nextEnd(rd.after)
			want := kvOutput{rd.value, rd.ok}
			at, ok := lo, false
			state, i := stateAt(rd.key, lo)
			if state == want {
				ok = true
			} else {
				for recs := byKey[rd.key]; i < len(recs) && recs[i].end <= hi; i++ {
					if (kvOutput{recs[i].value, recs[i].ok}) == want {
						at, ok = recs[i].end, true
						break
					}
				}
			}
			if !ok || at > rd.primary {
				c.fail("%s read %s = %q, %v between offsets %d and %d (floor %d): the primary never had that in [%d, %d]",
					s.name, rd.key, rd.value, rd.ok, rd.before, rd.after, floor[rd.gen], lo, min(hi, rd.primary))
				return
			}
			floor[rd.gen] = at
		}
	}
	c.mu.Lock()
	c.stats["replica reads"] = reads
	c.mu.Unlock()
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
