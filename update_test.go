package replmap

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
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

// The atomicity workload: a primary runs Updates that keep invariants
// over keys spread across many shards, while readers on the primary, a
// replica and a sub-replica check that they never see part of one.
//
//   - 20 accounts, each "gen:balance": every Update moves amounts between
//     some of them and stamps all 20 with its generation, so at any instant
//     every account has the same generation and the balances sum to
//     atomTotal.
//   - groups of atomGroup keys: an Update adds one whole group or deletes
//     one whole group, so Len - atomAccounts is always a multiple of
//     atomGroup.
//   - a key set and then deleted within one Update, which no reader may
//     ever see.
//
// Reads of several keys are not one snapshot (Get after Get, or All's
// shard-by-shard walk): an Update may land between two of them. What a
// reader can check is that the generations it reads, in the order it reads
// them, never go down (a partial Update shows a newer key before an older
// one in some order, and the readers use random orders), and that when
// every account shows the same generation, the balances are that
// generation's and sum right.
const (
	atomAccounts = 20
	atomGroup    = 7
	atomTotal    = atomAccounts * 100
	atomUpdates  = 400
)

func atomAccount(i int) string { return fmt.Sprintf("acct%02d", i) }

func TestUpdateAtomicOnReplicas(t *testing.T) {
	for _, packed := range []bool{false, true} {
		t.Run(fmt.Sprint("packed=", packed), func(t *testing.T) {
			if packed {
				testUpdateAtomic(t, func(s string) []byte { return []byte(s) }, func(v []byte) string { return string(v) })
			} else {
				testUpdateAtomic(t, func(s string) string { return s }, func(v string) string { return v })
			}
		})
	}
}

// atomReader is a node's read methods.
type atomReader[V any] struct {
	name   string
	get    func(string) (V, bool)
	len    func() int
	all    func() func(func(string, V) bool)
	offset func() uint64
}

func testUpdateAtomic[V any](t *testing.T, val func(string) V, str func(V) string) {
	net := transport.NewInmem()
	p := startPrimary[V](t, net, "p")
	var endsMu sync.Mutex
	ends := map[uint64]bool{0: true} // every record boundary of the primary's stream
	p.n.testHookWrite = func(_ []byte, end uint64) {
		endsMu.Lock()
		ends[end] = true
		endsMu.Unlock()
	}
	r, err := NewReplica[V](net, "p", append(fastOpts(t), WithReplicaName("r"))...)
	require.NoError(t, err)
	l, err := net.Listen("r")
	require.NoError(t, err)
	served := make(chan error, 1)
	go func() { served <- r.Serve(l) }()
	t.Cleanup(func() {
		assert.NoError(t, r.Close())
		assert.ErrorIs(t, <-served, ErrClosed)
	})
	sub := startReplica[V](t, net, "r", WithReplicaName("sub"))
	shards := make(map[uint16]bool)
	for i := range atomAccounts {
		shards[p.n.data().store.shardIndex(atomAccount(i))] = true
	}
	require.Greater(t, len(shards), atomAccounts/2, "the accounts should spread over many shards")

	// The model the writer keeps: balances and the groups present.
	bal := make([]int, atomAccounts)
	for i := range bal {
		bal[i] = atomTotal / atomAccounts
	}
	var groups []int
	gen := 0
	rng := rand.New(rand.NewPCG(1, 2))
	update := func() uint64 {
		gen++
		for range 3 {
			from, to := rng.IntN(atomAccounts), rng.IntN(atomAccounts)
			amount := rng.IntN(50)
			bal[from] -= amount
			bal[to] += amount
		}
		grow := len(groups) == 0 || rng.IntN(2) == 0
		off, err := p.Update(func(tx *Tx[V]) error {
			require.NoError(t, tx.Set("transient", val("never seen")))
			for i := range atomAccounts {
				if err := tx.Set(atomAccount(i), val(fmt.Sprintf("%d:%d", gen, bal[i]))); err != nil {
					return err
				}
			}
			for i := range atomGroup {
				var err error
				if grow {
					err = tx.Set(fmt.Sprintf("grp%d-%d", gen, i), val("member"))
				} else {
					err = tx.Delete(fmt.Sprintf("grp%d-%d", groups[0], i))
				}
				if err != nil {
					return err
				}
			}
			return tx.Delete("transient")
		})
		require.NoError(t, err)
		if grow {
			groups = append(groups, gen)
		} else {
			groups = groups[1:]
		}
		return off
	}
	off := update()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	require.NoError(t, r.WaitOffset(ctx, off))
	require.NoError(t, sub.WaitOffset(ctx, off))

	var failures atomic.Int64
	var failMu sync.Mutex
	var firstFailures []string
	failf := func(format string, args ...any) {
		if failures.Add(1) <= 10 {
			failMu.Lock()
			firstFailures = append(firstFailures, fmt.Sprintf(format, args...))
			failMu.Unlock()
		}
	}
	// parse returns an account's generation and balance.
	parse := func(v V) (int, int) {
		g, b, ok := strings.Cut(str(v), ":")
		gi, err1 := strconv.Atoi(g)
		bi, err2 := strconv.Atoi(b)
		if !ok || err1 != nil || err2 != nil {
			failf("bad account value %q", str(v))
		}
		return gi, bi
	}
	var whole atomic.Int64 // account reads that all showed one generation
	// checkAccounts checks a sequence of account reads, in read order.
	checkAccounts := func(node, how string, keys []string, vals []V) {
		if len(vals) != atomAccounts {
			failf("%s %s: %d accounts, want %d", node, how, len(vals), atomAccounts)
			return
		}
		first, _ := parse(vals[0])
		last, sum, same := 0, 0, true
		for i, v := range vals {
			g, b := parse(v)
			if g < last {
				failf("%s %s: generations went down in read order: %s has %d after %d (keys %v)", node, how, keys[i], g, last, keys)
			}
			last, sum, same = g, sum+b, same && g == first
		}
		if same {
			whole.Add(1)
		}
		if same && sum != atomTotal {
			failf("%s %s: every account at generation %d, but the balances sum to %d, not %d", node, how, first, sum, atomTotal)
		}
	}
	readers := []atomReader[V]{
		{"primary", p.Get, p.Len, func() func(func(string, V) bool) { return p.All() }, p.Offset},
		{"replica", r.Get, r.Len, func() func(func(string, V) bool) { return r.All() }, r.Offset},
		{"sub-replica", sub.Get, sub.Len, func() func(func(string, V) bool) { return sub.All() }, sub.Offset},
	}
	var observedMu sync.Mutex
	observed := make(map[uint64]string) // offsets the nodes reported
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var rounds atomic.Int64
	for i, rd := range readers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(i), 3))
			seen := make(map[uint64]bool)
			keys := make([]string, atomAccounts)
			for j := range keys {
				keys[j] = atomAccount(j)
			}
			var vals []V
			for {
				select {
				case <-stop:
					observedMu.Lock()
					for o := range seen {
						observed[o] = rd.name
					}
					observedMu.Unlock()
					return
				default:
				}
				rounds.Add(1)
				seen[rd.offset()] = true
				// Get of every account, in a random order.
				rng.Shuffle(len(keys), func(a, b int) { keys[a], keys[b] = keys[b], keys[a] })
				vals = vals[:0]
				for _, k := range keys {
					v, ok := rd.get(k)
					if !ok {
						failf("%s: account %s missing", rd.name, k)
					}
					vals = append(vals, v)
				}
				checkAccounts(rd.name, "Get", keys, vals)
				if n := rd.len() - atomAccounts; n < 0 || n%atomGroup != 0 {
					failf("%s: Len is %d: part of a group was added or deleted", rd.name, n+atomAccounts)
				}
				if _, ok := rd.get("transient"); ok {
					failf("%s: read the key an Update set and deleted", rd.name)
				}
				// All, in the order it yields.
				var allKeys []string
				vals = vals[:0]
				for k, v := range rd.all() {
					switch {
					case strings.HasPrefix(k, "acct"):
						allKeys = append(allKeys, k)
						vals = append(vals, v)
					case k == "transient":
						failf("%s: All yielded the key an Update set and deleted", rd.name)
					}
				}
				checkAccounts(rd.name, "All", allKeys, vals)
				seen[rd.offset()] = true
			}
		})
	}

	// The writer, waiting now and then for its Update on both replicas,
	// which must then hold all of it: this goroutine is the only writer.
	states := 0
	for i := range atomUpdates {
		off := update()
		if i%100 != 0 {
			continue
		}
		for _, rep := range []*Replica[V]{r, sub} {
			require.NoError(t, rep.WaitOffset(ctx, off))
			got := make(map[string]string)
			for k, v := range rep.All() {
				got[k] = str(v)
			}
			want := make(map[string]string)
			for j := range atomAccounts {
				want[atomAccount(j)] = fmt.Sprintf("%d:%d", gen, bal[j])
			}
			for _, g := range groups {
				for j := range atomGroup {
					want[fmt.Sprintf("grp%d-%d", g, j)] = "member"
				}
			}
			require.Equal(t, off, rep.Offset(), "nothing was written after it")
			assert.Equal(t, want, got, "after WaitOffset(%d)", off)
			states++
		}
	}
	close(stop)
	wg.Wait()
	for _, f := range firstFailures {
		t.Error(f)
	}
	assert.Zero(t, failures.Load(), "failed checks")
	requireConverged(t, p, r)
	requireConverged(t, p, sub)
	assert.Positive(t, states, "no WaitOffset was checked against its exact state")

	endsMu.Lock()
	defer endsMu.Unlock()
	for o, who := range observed {
		if !ends[o] {
			t.Errorf("the %s reported offset %d, which is not a record boundary of the primary's stream", who, o)
		}
	}
	t.Logf("%d Updates, %d reader rounds (%d reads of every account at one generation), %d distinct offsets observed, %d exact states after WaitOffset",
		atomUpdates+1, rounds.Load(), whole.Load(), len(observed), states)
	assert.Positive(t, whole.Load(), "no read saw every account at one generation")
}

// TestUpdateFailedWritesNothing: an Update that fails writes nothing
// anywhere: not to the primary's data or offset, not to its stream (no
// record reaches the write hook, so none reaches a replica), not to its
// data directory.
func TestUpdateFailedWritesNothing(t *testing.T) {
	dir := t.TempDir()
	net := transport.NewInmem()
	const maxFrame = 4 << 10
	opts := append(fastOpts(t), WithDataDir(dir), WithFsync(FsyncAlways),
		WithMaxKeySize(256), WithMaxValueSize(1<<10), WithMaxFrameSize(maxFrame))
	open := func() (*Primary[any], chan error) {
		p, err := NewPrimary[any](opts...)
		require.NoError(t, err)
		l, err := net.Listen("p")
		require.NoError(t, err)
		served := make(chan error, 1)
		go func() { served <- p.Serve(l) }()
		return p, served
	}
	p, served := open()
	var records atomic.Int64
	p.n.testHookWrite = func([]byte, uint64) { records.Add(1) }
	r := startReplica[any](t, net, "p")

	want := map[string]any{}
	for i := range 20 {
		k := "k" + strconv.Itoa(i)
		require.NoError(t, p.Set(k, "v"+strconv.Itoa(i)))
		want[k] = "v" + strconv.Itoa(i)
	}
	require.NoError(t, p.SetTTL("ttl", "kept", time.Hour))
	want["ttl"] = "kept"
	ttlBefore := p.n.data().store.shard("ttl").exp.heap[0].at

	// Every way an Update can fail, each after making writes.
	boom := errors.New("boom")
	writeSome := func(tx *Tx[any]) {
		require.NoError(t, tx.Set("k0", "changed"))
		require.NoError(t, tx.Set("new", "new"))
		require.NoError(t, tx.Delete("k1"))
		require.NoError(t, tx.SetTTL("k2", "expiring", time.Minute))
		require.NoError(t, tx.Set("ttl", "no deadline"))
	}
	cases := []struct {
		name string
		fn   func(tx *Tx[any]) error
		want error
	}{
		{"fn error", func(tx *Tx[any]) error { writeSome(tx); return boom }, boom},
		{"record over the frame limit", func(tx *Tx[any]) error {
			writeSome(tx)
			for i := range 2 * maxFrame / 100 {
				if err := tx.Set(fmt.Sprintf("big%d", i), strings.Repeat("x", 90)); err != nil {
					return err
				}
			}
			return nil
		}, ErrTooLarge},
		{"value that does not encode", func(tx *Tx[any]) error {
			writeSome(tx)
			return tx.Set("bad", complex(1, 2))
		}, nil}, // the encoder's error
		{"value over the limit", func(tx *Tx[any]) error {
			writeSome(tx)
			return tx.Set("huge", strings.Repeat("x", 2<<10))
		}, ErrTooLarge},
		{"key over the limit", func(tx *Tx[any]) error {
			writeSome(tx)
			return tx.Delete(strings.Repeat("k", 300))
		}, ErrTooLarge},
	}

	before := p.Offset()
	files := dirDigest(t, dir)
	check := func(t *testing.T) {
		t.Helper()
		assert.Equal(t, before, p.Offset(), "offset moved")
		assert.Zero(t, records.Load(), "a record was written")
		assert.Equal(t, want, snapshotOf(p.All()))
		assert.Equal(t, len(want), p.Len())
		assert.Equal(t, ttlBefore, p.n.data().store.shard("ttl").exp.heap[0].at, "deadline changed")
		left, ok := p.TTL("k2")
		assert.True(t, ok)
		assert.Zero(t, left, "k2 got a deadline")
		assert.Equal(t, files, dirDigest(t, dir), "the data directory changed")
	}
	records.Store(0)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			off, err := p.Update(c.fn)
			require.Error(t, err)
			if c.want != nil {
				assert.ErrorIs(t, err, c.want)
			}
			assert.Zero(t, off)
			check(t)
		})
	}
	t.Run("panic in fn", func(t *testing.T) {
		assert.PanicsWithValue(t, "in fn", func() {
			_, _ = p.Update(func(tx *Tx[any]) error { writeSome(tx); panic("in fn") })
		})
		check(t)
	})
	t.Run("bad write ignored, no other", func(t *testing.T) {
		// fn may go on after a failed write: it is left out, and an
		// Update left with no writes writes nothing.
		off, err := p.Update(func(tx *Tx[any]) error {
			assert.Error(t, tx.Set("bad", complex(1, 2)))
			assert.ErrorIs(t, tx.Set("huge", strings.Repeat("x", 2<<10)), ErrTooLarge)
			return nil
		})
		require.NoError(t, err)
		assert.Equal(t, before, off)
		check(t)
	})

	// The replica: a marker written after the failures is the only thing
	// it gets beyond what it had.
	require.NoError(t, p.Set("marker", "m"))
	want["marker"] = "m"
	assert.EqualValues(t, 1, records.Load())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	require.NoError(t, r.WaitOffset(ctx, p.Offset()))
	assert.Equal(t, p.Offset(), r.Offset())
	assert.Equal(t, want, snapshotOf(r.All()))

	// The data directory holds exactly that too.
	off := p.Offset()
	require.NoError(t, p.Close())
	require.ErrorIs(t, <-served, ErrClosed)
	p, served = open()
	assert.Equal(t, off, p.Offset())
	assert.Equal(t, want, snapshotOf(p.All()))
	assert.Equal(t, ttlBefore, p.n.data().store.shard("ttl").exp.heap[0].at, "deadline changed")
	require.NoError(t, p.Close())
	require.ErrorIs(t, <-served, ErrClosed)
}

// dirDigest returns the SHA-256 of every file under dir, by path, less
// the spare log segment the directory prepares in the background.
func dirDigest(t *testing.T, dir string) map[string][32]byte {
	t.Helper()
	out := make(map[string][32]byte)
	require.NoError(t, filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || strings.Contains(d.Name(), "spare") {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, path)
		out[rel] = sha256.Sum256(b)
		return nil
	}))
	require.NotEmpty(t, out)
	return out
}
