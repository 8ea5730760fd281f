package replmap

// The PSYNC2 suite, after Redis's tests/integration/psync2.tcl. Five nodes,
// each serving its own in-memory address ("n0".."n4") for its whole life
// whatever its role, start as a primary (n0) and four replicas of it: four
// full syncs. Then every cycle
//
//  1. draws a node to be the primary. If it is a replica it is promoted and
//     the old primary is demoted to follow it. That happens only once every
//     node holds the same data at the same offset (as psync2.tcl waits for
//     its replicas to be in sync first): an old primary that is ahead of the
//     promoted replica must full-sync, rightly, and this suite is about the
//     failovers that lose nothing;
//  2. re-points every other node into a random tree rooted at the primary,
//     chains allowed: in a random order, each node follows the primary or a
//     node placed before it (a node whose upstream is unchanged is left
//     alone, so it follows its upstream into the new history);
//  3. writes on the primary from a writer goroutine while links are cut at
//     random ([transport.Inmem.Cut] on a node's address breaks the links of
//     its downstream replicas, as psync2.tcl's "client kill type master");
//  4. stops writing and waits until all five nodes hold the same data at the
//     same offset, in the same history and epoch, with the tree in place.
//
// After every cycle, and at the end, the full syncs across all nodes must
// still be the initial four, counted both where they are done (each
// Replica handle's Info, carried across a node's role changes) and where
// they are served: every later resync was partial. A sampler checks
// throughout that no node's offset ever goes back.
//
// CI runs a few seeds of 20 cycles. More, from the environment:
//
//	REPLMAP_PSYNC2_SEEDS=50 go test -run 'TestPSYNC2$' .      # seeds 1..50
//	REPLMAP_PSYNC2_CYCLES=200 go test -run 'TestPSYNC2$' .    # cycles per seed
//	REPLMAP_PSYNC2_SEED=7 go test -run 'TestPSYNC2$' -v .     # replay one seed
//
// The seed fixes every choice (primaries, trees, cut schedules, writes);
// the interleaving with the library's goroutines varies from run to run.

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/replmap/replmap/transport"
)

const (
	psync2Nodes        = 5
	psync2Keys         = 64
	psync2DefaultSeeds = 3
	psync2Cycles       = 20
	psync2MaxCuts      = 12                    // per cycle
	psync2CutGap       = 5 * time.Millisecond  // at most, between two cuts
	psync2Settle       = 30 * time.Second      // for convergence, before the run fails
	psync2LinkTimeout  = 2 * time.Second       // cuts are seen at once; this is for -race
	psync2Heartbeat    = 20 * time.Millisecond // ACKs and PINGs
)

func TestPSYNC2(t *testing.T) {
	cycles := envInt(t, "REPLMAP_PSYNC2_CYCLES", psync2Cycles)
	for _, seed := range psync2Seeds(t) {
		t.Run("seed="+strconv.FormatUint(seed, 10), func(t *testing.T) {
			runPSYNC2(t, seed, cycles)
		})
	}
}

// psync2Seeds returns the seeds to run: REPLMAP_PSYNC2_SEED alone if set,
// else 1..REPLMAP_PSYNC2_SEEDS, else 1..psync2DefaultSeeds.
func psync2Seeds(t *testing.T) []uint64 {
	return envSeeds(t, "REPLMAP_PSYNC2_SEED", "REPLMAP_PSYNC2_SEEDS", psync2DefaultSeeds)
}

// psync2Node is one of the five nodes: its address, and the handle that
// owns it now, which Promote and Demote replace.
type psync2Node struct {
	name   string        // its listen address, and its replica name
	n      *node[string] // the engine, the same under every handle
	served chan error    // what Serve returned

	mu      sync.Mutex
	p       *Primary[string] // the current handle: one of p and r is set
	r       *Replica[string]
	handles []interface{ Close() error } // every handle it had, oldest first
	full    uint64                       // full syncs done by its earlier Replica handles
	partial uint64                       // partial resyncs done by them
}

func (nd *psync2Node) primary() *Primary[string] {
	nd.mu.Lock()
	defer nd.mu.Unlock()
	return nd.p
}

func (nd *psync2Node) replica() *Replica[string] {
	nd.mu.Lock()
	defer nd.mu.Unlock()
	return nd.r
}

func (nd *psync2Node) offset() uint64 {
	nd.mu.Lock()
	p, r := nd.p, nd.r
	nd.mu.Unlock()
	if p != nil {
		return p.Offset()
	}
	return r.Offset()
}

// promoted records that the node's Replica handle was promoted to p: the
// syncs that handle did are carried, since the next Replica handle of the
// node counts from zero.
func (nd *psync2Node) promoted(p *Primary[string]) {
	nd.mu.Lock()
	defer nd.mu.Unlock()
	info := nd.r.Info()
	nd.full += info.FullSyncs
	nd.partial += info.PartialSyncs
	nd.p, nd.r = p, nil
	nd.handles = append(nd.handles, p)
}

func (nd *psync2Node) demoted(r *Replica[string]) {
	nd.mu.Lock()
	defer nd.mu.Unlock()
	nd.p, nd.r = nil, r
	nd.handles = append(nd.handles, r)
}

// syncs returns the full and partial syncs the node has done as a replica,
// under every handle it had.
func (nd *psync2Node) syncs() (full, partial uint64) {
	nd.mu.Lock()
	defer nd.mu.Unlock()
	full, partial = nd.full, nd.partial
	if nd.r != nil {
		info := nd.r.Info()
		full += info.FullSyncs
		partial += info.PartialSyncs
	}
	return full, partial
}

// psync2Run is the state of one seeded run.
type psync2Run struct {
	t       *testing.T
	seed    uint64
	tr      *transport.Inmem
	logs    *ringLog
	nodes   []*psync2Node
	primary int   // the current primary's index
	parent  []int // each node's upstream in the current tree; -1 for the primary
	cycle   atomic.Int64
	full    []uint64 // each node's full syncs at the last check

	mu       sync.Mutex
	failures []string
	stats    map[string]int
	settle   time.Duration // the longest convergence
}

func (s *psync2Run) fail(format string, args ...any) {
	s.mu.Lock()
	s.failures = append(s.failures, fmt.Sprintf("cycle %d: ", s.cycle.Load())+fmt.Sprintf(format, args...))
	s.mu.Unlock()
}

func (s *psync2Run) count(what string, n int) {
	s.mu.Lock()
	s.stats[what] += n
	s.mu.Unlock()
}

func runPSYNC2(t *testing.T, seed uint64, cycles int) {
	s := &psync2Run{t: t, seed: seed, tr: transport.NewInmem(), logs: newRingLog(2000), stats: make(map[string]int)}
	rng := rand.New(rand.NewPCG(seed, 2))
	defer func() {
		if t.Failed() {
			t.Logf("last log lines:\n%s", s.logs)
			t.Logf("replay: REPLMAP_PSYNC2_SEED=%d REPLMAP_PSYNC2_CYCLES=%d go test -run 'TestPSYNC2$' -v .", seed, cycles)
		}
	}()
	logger := slog.New(slog.NewTextHandler(s.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	began := time.Now()

	// n0 is the primary, n1..n4 its replicas.
	defer s.closeAll()
	s.parent = make([]int, psync2Nodes)
	for i := range psync2Nodes {
		name := "n" + strconv.Itoa(i)
		opts := []Option{
			WithLogger(logger.With("node", name)),
			WithReplicaName(name), // kept by Promote and Demote
			WithReconnectBackoff(time.Millisecond, 20*time.Millisecond),
			WithHeartbeat(psync2Heartbeat),
			WithLinkTimeout(psync2LinkTimeout),
		}
		nd := &psync2Node{name: name, served: make(chan error, 1)}
		l, err := s.tr.Listen(name)
		require.NoError(t, err)
		if i == 0 {
			p, err := NewPrimary[string](opts...)
			require.NoError(t, err)
			nd.n, nd.p = p.n, p
			nd.handles = append(nd.handles, p)
			go func() { nd.served <- p.Serve(l) }()
			s.parent[i] = -1
		} else {
			r, err := NewReplica[string](s.tr, "n0", opts...)
			require.NoError(t, err)
			nd.n, nd.r = r.n, r
			nd.handles = append(nd.handles, r)
			go func() { nd.served <- r.Serve(l) }()
		}
		s.nodes = append(s.nodes, nd)
	}
	s.full = make([]uint64, psync2Nodes)

	ctx, cancel := context.WithCancel(context.Background())
	var sampler sync.WaitGroup
	sampler.Go(func() { s.sampleOffsets(ctx) })
	stopSampler := func() {
		cancel()
		sampler.Wait()
	}
	defer func() { // also when the run stops early
		stopSampler()
		s.mu.Lock()
		for _, f := range s.failures {
			t.Error(f)
		}
		s.mu.Unlock()
	}()

	s.awaitConverged("the initial sync")
	full, _ := s.syncs()
	require.EqualValues(t, psync2Nodes-1, full, "full syncs of the initial sync")
	s.checkFullSyncs()

	for c := 1; c <= cycles; c++ {
		s.cycle.Store(int64(c))
		np := rng.IntN(psync2Nodes)
		if np != s.primary {
			s.failover(np)
		}
		tree := s.retree(rng)
		writes := s.load(rng)
		s.awaitConverged(fmt.Sprintf("cycle %d", c))
		s.checkFullSyncs()
		t.Logf("cycle %d: primary %s, tree %s, %d writes, offset %d", c, s.nodes[np].name, tree, writes, s.nodes[np].offset())
	}

	stopSampler()
	full, partial := s.syncs()
	var served, servedPartial uint64
	for _, nd := range s.nodes {
		served += nd.n.fullSyncs.Load()
		servedPartial += nd.n.partialSyncs.Load()
	}
	assert.EqualValues(t, psync2Nodes-1, full, "full syncs done by replicas: every resync after the initial sync should be partial")
	assert.EqualValues(t, psync2Nodes-1, served, "full syncs served: every resync after the initial sync should be partial")
	s.mu.Lock()
	s.stats["full syncs"] = int(full)
	s.stats["partial syncs"] = int(partial)
	s.stats["partial syncs served"] = int(servedPartial)
	t.Logf("seed %d: %d cycles in %v, longest convergence %v, stats %v",
		seed, cycles, time.Since(began).Round(time.Millisecond), s.settle.Round(time.Microsecond), s.stats)
	s.mu.Unlock()
}

// syncs returns the full and partial syncs done by replicas on every node.
func (s *psync2Run) syncs() (full, partial uint64) {
	for _, nd := range s.nodes {
		f, p := nd.syncs()
		full += f
		partial += p
	}
	return full, partial
}

// failover makes node np the primary: it promotes np's replica, then
// demotes the old primary to follow it. The nodes have converged, so the
// old primary is not ahead of np and resumes partially.
func (s *psync2Run) failover(np int) {
	t := s.t
	old, nn := s.nodes[s.primary], s.nodes[np]
	r := nn.replica()
	before := r.Info()
	p, err := r.Promote()
	require.NoError(t, err, "promote %s", nn.name)
	nn.promoted(p)
	info := p.Info()
	assert.Equal(t, before.Offset, info.Offset, "promoted %s: offset", nn.name)
	assert.Equal(t, before.ReplID, info.ReplID2, "promoted %s: ReplID2", nn.name)
	assert.Equal(t, before.Offset, info.ReplID2Offset, "promoted %s: ReplID2Offset", nn.name)
	assert.Equal(t, before.Epoch+1, info.Epoch, "promoted %s: epoch", nn.name)
	assert.NotEqual(t, before.ReplID, info.ReplID, "promoted %s: ReplID", nn.name)
	assert.Equal(t, StateClosed, r.Info().State, "promoted %s: the Replica handle", nn.name)
	assert.ErrorIs(t, r.Follow(old.name), ErrClosed, "Follow on the promoted Replica handle")

	op := old.primary()
	dr, err := op.Demote(s.tr, nn.name)
	require.NoError(t, err, "demote %s", old.name)
	old.demoted(dr)
	assert.ErrorIs(t, op.Set("k0", "lost"), ErrClosed, "Set on the demoted Primary handle")

	s.parent[s.primary], s.parent[np] = np, -1
	s.primary = np
	s.count("promotions", 1)
}

// retree re-points the replicas into a random tree rooted at the primary:
// in a random order, each follows the primary or a node placed before it.
// It returns the tree, as "n2<-n0,n0<-n4,...".
func (s *psync2Run) retree(rng *rand.Rand) string {
	placed := []int{s.primary}
	var edges []string
	for _, i := range rng.Perm(psync2Nodes) {
		if i == s.primary {
			continue
		}
		up := placed[rng.IntN(len(placed))]
		if s.parent[i] != up {
			require.NoError(s.t, s.nodes[i].replica().Follow(s.nodes[up].name), "%s follows %s", s.nodes[i].name, s.nodes[up].name)
			s.parent[i] = up
			s.count("follows", 1)
		}
		placed = append(placed, i)
		edges = append(edges, s.nodes[up].name+"<-"+s.nodes[i].name)
	}
	return strings.Join(edges, ",")
}

// load writes on the primary while a schedule drawn from rng cuts links,
// then stops the writer. It returns how many writes were made.
func (s *psync2Run) load(rng *rand.Rand) int {
	type cut struct {
		after time.Duration
		node  int
	}
	cuts := make([]cut, rng.IntN(psync2MaxCuts+1))
	for i := range cuts {
		cuts[i] = cut{time.Duration(rng.IntN(int(psync2CutGap))), rng.IntN(psync2Nodes)}
	}
	wrng := rand.New(rand.NewPCG(s.seed, uint64(1000+s.cycle.Load())))

	p := s.nodes[s.primary].primary()
	ctx, stop := context.WithCancel(context.Background())
	var writes int
	var wg sync.WaitGroup
	wg.Go(func() { writes = s.write(ctx, p, wrng) })
	for _, c := range cuts {
		time.Sleep(c.after)
		s.count("cuts", 1)
		s.count("links cut", s.tr.Cut(s.nodes[c.node].name))
	}
	time.Sleep(psync2CutGap) // writes after the last cut too
	stop()
	wg.Wait()
	s.count("writes", writes)
	return writes
}

// write sets and deletes keys on p in bursts until ctx ends.
func (s *psync2Run) write(ctx context.Context, p *Primary[string], rng *rand.Rand) int {
	cycle := s.cycle.Load()
	seq := 0
	for ctx.Err() == nil {
		for range 1 + rng.IntN(32) {
			key := "k" + strconv.Itoa(rng.IntN(psync2Keys))
			var err error
			if rng.IntN(8) == 0 {
				err = p.Delete(key)
			} else {
				err = p.Set(key, fmt.Sprintf("c%d-%d", cycle, seq))
			}
			if err != nil {
				s.fail("write %s: %v", key, err)
				return seq
			}
			seq++
		}
		time.Sleep(time.Duration(rng.IntN(200)) * time.Microsecond)
	}
	return seq
}

// sampleOffsets checks, until ctx ends, that no node's offset goes back.
func (s *psync2Run) sampleOffsets(ctx context.Context) {
	last := make([]uint64, len(s.nodes))
	samples := 0
	for ctx.Err() == nil {
		for i, nd := range s.nodes {
			o := nd.offset()
			if o < last[i] {
				s.fail("%s's offset went back from %d to %d", nd.name, last[i], o)
			}
			last[i] = o
		}
		samples++
		time.Sleep(100 * time.Microsecond)
	}
	s.count("offset samples", samples)
}

// awaitConverged waits until every replica follows its upstream in the
// tree and holds the primary's data at the primary's offset, in its
// history and epoch; then checks that the primary's Wait counts its
// direct replicas.
func (s *psync2Run) awaitConverged(what string) {
	t := s.t
	t.Helper()
	start := time.Now()
	p := s.nodes[s.primary].primary()
	ctx, cancel := context.WithTimeout(context.Background(), psync2Settle)
	defer cancel()
	target := p.Offset()
	for i, nd := range s.nodes {
		if i != s.primary {
			if err := nd.replica().WaitOffset(ctx, target); err != nil {
				t.Fatalf("%s: %s did not reach offset %d: %v\n%s", what, nd.name, target, err, s.describe())
			}
		}
	}
	var last error
	for {
		if last = s.converged(); last == nil {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("%s: no convergence in %v: %v\n%s", what, psync2Settle, last, s.describe())
		}
		time.Sleep(time.Millisecond)
	}
	took := time.Since(start)
	s.mu.Lock()
	s.settle = max(s.settle, took)
	s.mu.Unlock()

	direct := 0
	for _, up := range s.parent {
		if up == s.primary {
			direct++
		}
	}
	k, err := p.Wait(direct, psync2Settle)
	assert.NoError(t, err, "%s: Wait", what)
	assert.Equal(t, direct, k, "%s: Wait(%d) after convergence", what, direct)
}

// converged reports nil once the nodes are in the state awaitConverged
// waits for, or what is still missing.
func (s *psync2Run) converged() error {
	p := s.nodes[s.primary].primary()
	pi := p.Info()
	children := make([]int, len(s.nodes))
	for _, up := range s.parent {
		if up >= 0 {
			children[up]++
		}
	}
	links := func(name string, ls []ReplicaLink, want int) error {
		if len(ls) != want {
			return fmt.Errorf("%s serves %d links, the tree gives it %d replicas", name, len(ls), want)
		}
		for _, l := range ls {
			if l.State != LinkStreaming {
				return fmt.Errorf("%s's link to %s is %s", name, l.ID, l.State)
			}
		}
		return nil
	}
	if err := links(s.nodes[s.primary].name, pi.Replicas, children[s.primary]); err != nil {
		return err
	}
	for i, nd := range s.nodes {
		if i == s.primary {
			continue
		}
		ri := nd.replica().Info()
		switch up := s.nodes[s.parent[i]].name; {
		case ri.Primary != up:
			return fmt.Errorf("%s follows %s, not %s", nd.name, ri.Primary, up)
		case ri.State != StateStreaming:
			return fmt.Errorf("%s is %s (last error: %v)", nd.name, ri.State, ri.LastError)
		case ri.ReplID != pi.ReplID:
			return fmt.Errorf("%s is in history %.8s, the primary in %.8s", nd.name, ri.ReplID, pi.ReplID)
		case ri.Offset != pi.Offset:
			return fmt.Errorf("%s is at offset %d, the primary at %d", nd.name, ri.Offset, pi.Offset)
		case ri.Epoch != pi.Epoch:
			return fmt.Errorf("%s has seen epoch %d, the primary is at %d", nd.name, ri.Epoch, pi.Epoch)
		case ri.DiscardedBytes != 0:
			return fmt.Errorf("%s discarded %d bytes", nd.name, ri.DiscardedBytes) // never ahead: see failover
		}
		if err := links(nd.name, ri.Replicas, children[i]); err != nil {
			return err
		}
	}
	want := snapshotOf(p.All())
	for i, nd := range s.nodes {
		if i == s.primary {
			continue
		}
		if got := snapshotOf(nd.replica().All()); !reflect.DeepEqual(want, got) {
			return fmt.Errorf("%s's data differs from the primary's at offset %d: %d keys, the primary %d",
				nd.name, pi.Offset, len(got), len(want))
		}
	}
	if o := p.Offset(); o != pi.Offset {
		return fmt.Errorf("the primary's offset moved from %d to %d with no writer", pi.Offset, o)
	}
	return nil
}

// checkFullSyncs reports every full sync since the last check: after the
// initial sync, every resync should be partial. It checks both what the
// replicas did and what their upstreams served (a full sync cut short
// counts there only).
func (s *psync2Run) checkFullSyncs() {
	var served uint64
	for _, nd := range s.nodes {
		served += nd.n.fullSyncs.Load()
	}
	for i, nd := range s.nodes {
		full, _ := nd.syncs()
		if full != s.full[i] {
			if s.cycle.Load() > 0 {
				var lastErr error
				if r := nd.replica(); r != nil {
					lastErr = r.Info().LastError
				}
				s.t.Errorf("cycle %d: %s did %d full syncs, %d at the last check (last error: %v)", s.cycle.Load(), nd.name, full, s.full[i], lastErr)
			}
			s.full[i] = full
		}
	}
	if want := uint64(psync2Nodes - 1); served != want && !s.t.Failed() {
		s.t.Errorf("cycle %d: %d full syncs served, want the initial %d", s.cycle.Load(), served, want)
	}
}

// describe returns every node's state, for a failure message.
func (s *psync2Run) describe() string {
	var b strings.Builder
	link := func(ls []ReplicaLink) string {
		var out []string
		for _, l := range ls {
			out = append(out, fmt.Sprintf("%s:%s sent %d acked %d", l.ID, l.State, l.SentOffset, l.AckOffset))
		}
		return "[" + strings.Join(out, ", ") + "]"
	}
	for i, nd := range s.nodes {
		served := fmt.Sprintf("served full %d partial %d", nd.n.fullSyncs.Load(), nd.n.partialSyncs.Load())
		if p := nd.primary(); p != nil {
			pi := p.Info()
			fmt.Fprintf(&b, "  %s primary: history %.8s (continues %.8s to %d) epoch %d offset %d backlog from %d, %s, links %s\n",
				nd.name, pi.ReplID, pi.ReplID2, pi.ReplID2Offset, pi.Epoch, pi.Offset, pi.BacklogFirst, served, link(pi.Replicas))
			continue
		}
		ri := nd.replica().Info()
		full, partial := nd.syncs()
		fmt.Fprintf(&b, "  %s replica of %s (tree: %s): %s, link up %v, history %.8s (continues %.8s to %d) epoch %d offset %d, did full %d partial %d, %s, discarded %d, last error %v, links %s\n",
			nd.name, ri.Primary, s.nodes[s.parent[i]].name, ri.State, ri.LinkUp, ri.ReplID, ri.ReplID2, ri.ReplID2Offset, ri.Epoch, ri.Offset,
			full, partial, served, ri.DiscardedBytes, ri.LastError, link(ri.Replicas))
	}
	return b.String()
}

// closeAll closes every handle each node had, oldest first: those handed
// over by Promote or Demote return nil and change nothing; the last one
// closes the node, and its Serve returns ErrClosed.
func (s *psync2Run) closeAll() {
	for _, nd := range s.nodes {
		nd.mu.Lock()
		handles := slices.Clone(nd.handles)
		nd.mu.Unlock()
		for _, h := range handles {
			assert.NoError(s.t, h.Close(), "%s: Close", nd.name)
		}
	}
	for _, nd := range s.nodes {
		select {
		case err := <-nd.served:
			assert.ErrorIs(s.t, err, ErrClosed, "%s: Serve", nd.name)
		case <-time.After(10 * time.Second):
			s.t.Errorf("%s: Serve did not return after Close", nd.name)
		}
	}
}

// TestPSYNC2HandoverUnderReconnects swaps the roles of two nodes, a and b,
// back and forth while b's two sub-replicas, c and d, reconnect to b
// without pause (their links are cut in a loop): every role change of b
// then meets handshakes under way on b. No write is made, so every resync
// is partial, and at the end all four nodes converge. Under -race it
// caught the node's logger being replaced unsynchronised by role changes.
func TestPSYNC2HandoverUnderReconnects(t *testing.T) {
	const swaps = 100
	tr := transport.NewInmem()
	logs := newRingLog(500)
	defer func() {
		if t.Failed() {
			t.Logf("last log lines:\n%s", logs)
		}
	}()
	opts := func(name string) []Option {
		return []Option{
			WithLogger(slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})).With("node", name)),
			WithReplicaName(name),
			WithReconnectBackoff(time.Millisecond, 5*time.Millisecond),
		}
	}
	var handles []interface{ Close() error }
	var served []chan error
	defer func() {
		for _, h := range handles {
			assert.NoError(t, h.Close())
		}
		for _, ch := range served {
			assert.ErrorIs(t, <-ch, ErrClosed)
		}
	}()
	serve := func(name string, s func(l net.Listener) error) {
		l, err := tr.Listen(name)
		require.NoError(t, err)
		ch := make(chan error, 1)
		served = append(served, ch)
		go func() { ch <- s(l) }()
	}

	a, err := NewPrimary[string](opts("a")...)
	require.NoError(t, err)
	handles = append(handles, a)
	serve("a", a.Serve)
	require.NoError(t, a.Set("k", "v"))
	b, err := NewReplica[string](tr, "a", opts("b")...)
	require.NoError(t, err)
	handles = append(handles, b)
	serve("b", b.Serve)
	waitSynced(t, b)
	var subs []*Replica[string]
	for _, name := range []string{"c", "d", "e", "f", "g", "h"} {
		r, err := NewReplica[string](tr, "b", opts(name)...)
		require.NoError(t, err)
		handles = append(handles, r)
		subs = append(subs, r)
	}
	for _, r := range subs {
		waitSynced(t, r)
	}
	full := func() uint64 { return a.n.fullSyncs.Load() + b.n.fullSyncs.Load() }
	require.EqualValues(t, 1+len(subs), full(), "the initial syncs")

	ctx, stop := context.WithCancel(context.Background())
	var cutter sync.WaitGroup
	cutter.Go(func() {
		for ctx.Err() == nil {
			tr.Cut("b")
			time.Sleep(50 * time.Microsecond)
		}
	})
	defer func() {
		stop()
		cutter.Wait()
	}()

	// p is the primary and r its replica; each swap promotes r and
	// demotes p to follow it, once r, c and d have all caught up with p's
	// history: a replica left two histories behind would rightly
	// full-sync (a node remembers only the history its own continues).
	pName, rName := "a", "b"
	p, r := a, b
	for range swaps {
		waitFor(t, "every replica in "+pName+"'s history", func() bool {
			for _, x := range append([]*Replica[string]{r}, subs...) {
				if info := x.Info(); info.ReplID != p.ReplID() || info.Offset != p.Offset() {
					return false
				}
			}
			return true
		})
		np, err := r.Promote()
		require.NoError(t, err)
		handles = append(handles, np)
		nr, err := p.Demote(tr, rName)
		require.NoError(t, err)
		handles = append(handles, nr)
		p, r = np, nr
		pName, rName = rName, pName
	}
	stop()
	cutter.Wait()

	waitFor(t, "convergence", func() bool {
		for _, x := range append([]*Replica[string]{r}, subs...) {
			if x.Info().ReplID != p.ReplID() || converged(p, x) != nil {
				return false
			}
		}
		return true
	})
	assert.EqualValues(t, 1+len(subs), full(), "full syncs served: every resync after the initial ones should be partial")
}
