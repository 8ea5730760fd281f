package replmap

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/replmap/replmap/transport"
)

// The TTL tests run in synctest bubbles where they can: the store's clock
// is time.Now, so the fake clock decides what has expired, and the expiry
// goroutine's ticker (expiryInterval) fires at known instants. Deadlines
// that fall between two ticks let a test see a key hidden by reads
// before the primary deletes it.

// deadlines returns every deadline in st.
func deadlines[V any](st *store[V]) map[string]int64 {
	out := make(map[string]int64)
	for i := range st.shards {
		sh := &st.shards[i]
		sh.mu.RLock()
		if sh.exp != nil {
			for _, it := range sh.exp.heap {
				out[it.key] = it.at
			}
		}
		sh.mu.RUnlock()
	}
	return out
}

// delLog collects the keys of the DEL records a node writes, and counts
// all its records.
type delLog struct {
	mu      sync.Mutex
	dels    []string
	records int
}

// hook installs l as n's write hook, under the write lock, as a running
// node's goroutines may be writing.
func (l *delLog) hook(n *node[string]) {
	n.writeMu.Lock()
	n.testHookWrite = func(rec []byte, _ uint64) {
		l.mu.Lock()
		defer l.mu.Unlock()
		l.records++
		if frameType(rec[4]) == frameDel {
			l.dels = append(l.dels, string(rec[frameHeaderSize:len(rec)-frameCRCSize]))
		}
	}
	n.writeMu.Unlock()
}

func (l *delLog) deleted() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.dels...)
}

// expiryGoroutines counts the running expiry goroutines.
func expiryGoroutines() int {
	buf := make([]byte, 4<<20)
	buf = buf[:runtime.Stack(buf, true)]
	return strings.Count(string(buf), ").startExpiry.func")
}

// TestTTLSemantics: what TTL returns on both roles, what clears or
// changes a deadline, and ErrInvalidTTL.
func TestTTLSemantics(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tr := transport.NewInmem()
		p := startPrimary[string](t, tr, "p")
		r := startReplica[string](t, tr, "p")
		waitSynced(t, r)
		st := p.n.data().store
		both := func(key string, left time.Duration, ok bool) {
			t.Helper()
			require.NoError(t, r.WaitOffset(context.Background(), p.Offset()))
			for name, ttl := range map[string]func(string) (time.Duration, bool){"primary": p.TTL, "replica": r.TTL} {
				l, o := ttl(key)
				assert.Equal(t, ok, o, "%s: TTL(%s) ok", name, key)
				assert.Equal(t, left, l, "%s: TTL(%s)", name, key)
			}
		}

		require.NoError(t, p.SetTTL("s", "v", 10*time.Second))
		require.NoError(t, p.Set("plain", "v"))
		both("s", 10*time.Second, true)
		both("plain", 0, true)
		both("missing", 0, false)
		time.Sleep(4 * time.Second)
		both("s", 6*time.Second, true)

		// A shorter TTL replaces a longer one, and the other way round.
		require.NoError(t, p.SetTTL("s", "v", time.Second))
		both("s", time.Second, true)
		require.NoError(t, p.SetTTL("s", "v", time.Hour))
		both("s", time.Hour, true)
		assert.EqualValues(t, 1, st.ttls.Load())

		// Set, Tx.Set and Delete clear a deadline.
		require.NoError(t, p.Set("s", "v2"))
		both("s", 0, true)
		assert.Zero(t, st.ttls.Load())
		_, err := p.Update(func(tx *Tx[string]) error {
			require.NoError(t, tx.SetTTL("tx", "v", 3*time.Second))
			require.NoError(t, tx.SetTTL("tx2", "v", 5*time.Second))
			require.NoError(t, tx.Set("tx2", "v")) // the later write wins
			return tx.SetTTL("plain", "v", 7*time.Second)
		})
		require.NoError(t, err)
		both("tx", 3*time.Second, true)
		both("tx2", 0, true)
		both("plain", 7*time.Second, true)
		assert.EqualValues(t, 2, st.ttls.Load())
		_, err = p.Update(func(tx *Tx[string]) error { return tx.Set("tx", "no deadline") })
		require.NoError(t, err)
		both("tx", 0, true)
		require.NoError(t, p.Delete("plain"))
		both("plain", 0, false)
		require.NoError(t, p.Set("plain", "back"))
		both("plain", 0, true)
		assert.Zero(t, st.ttls.Load())
		assert.Zero(t, r.n.data().store.ttls.Load())

		// A TTL that is not positive writes nothing.
		off := p.Offset()
		for _, ttl := range []time.Duration{0, -time.Nanosecond, -time.Hour} {
			assert.ErrorIs(t, p.SetTTL("bad", "v", ttl), ErrInvalidTTL)
			_, err := p.Update(func(tx *Tx[string]) error {
				require.NoError(t, tx.Set("other", "v"))
				return tx.SetTTL("bad", "v", ttl)
			})
			assert.ErrorIs(t, err, ErrInvalidTTL)
		}
		assert.Equal(t, off, p.Offset())
		both("bad", 0, false)
		both("other", 0, false)

		// A key at its deadline is gone: (0, false).
		require.NoError(t, p.SetTTL("s", "v", time.Second))
		both("s", time.Second, true)
		time.Sleep(time.Second)
		both("s", 0, false)
	})
}

// TestTTLExpiryOnPrimary: at its deadline a key disappears from Get, Len,
// All and TTL at once; the primary then deletes it with one DEL record,
// at once when a read met it, else at the expiry goroutine's next round.
func TestTTLExpiryOnPrimary(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		start := time.Now()
		at := func(d time.Duration) { time.Sleep(time.Until(start.Add(d))) }
		tr := transport.NewInmem()
		p := startPrimary[string](t, tr, "p")
		var log delLog
		log.hook(p.n)
		st := p.n.data().store
		// Rounds come every 100 ms from now: these deadlines fall between.
		require.NoError(t, p.SetTTL("read", "v", 1050*time.Millisecond))
		require.NoError(t, p.SetTTL("unread", "v", 1250*time.Millisecond))
		require.NoError(t, p.Set("keep", "v"))
		r := startReplica[string](t, tr, "p")
		waitSynced(t, r)

		at(1000 * time.Millisecond)
		left, ok := p.TTL("read")
		assert.True(t, ok)
		assert.Equal(t, 50*time.Millisecond, left)
		at(1050 * time.Millisecond) // "read" is due
		synctest.Wait()
		assert.Equal(t, 2, p.Len())
		assert.Equal(t, map[string]string{"unread": "v", "keep": "v"}, snapshotOf(p.All()))
		assert.EqualValues(t, 3, st.n.Load(), "not deleted yet: Len and All do not kick the expiry")
		assert.Empty(t, log.deleted())
		_, ok = p.Get("read") // a read that meets it: deleted at once
		assert.False(t, ok)
		synctest.Wait()
		assert.Equal(t, []string{"read"}, log.deleted())
		assert.EqualValues(t, 2, st.n.Load())
		_, ok = p.TTL("read")
		assert.False(t, ok)

		at(1250 * time.Millisecond) // "unread" is due
		synctest.Wait()
		assert.Equal(t, 1, p.Len())
		assert.EqualValues(t, 2, st.n.Load(), "the next round is at 1300 ms")
		at(1300 * time.Millisecond)
		synctest.Wait()
		assert.Equal(t, []string{"read", "unread"}, log.deleted())
		assert.EqualValues(t, 1, st.n.Load())
		assert.Zero(t, st.ttls.Load())
		assert.Equal(t, 5, log.records, "3 writes, 2 DELs")
		requireConverged(t, p, r)
		assert.EqualValues(t, 1, r.n.data().store.n.Load())
	})
}

// TestTTLReplicaCutOff: a replica that no deletion reaches hides a key
// from its deadline on, by its own clock, and deletes it only when the
// primary's DEL arrives.
func TestTTLReplicaCutOff(t *testing.T) {
	for _, how := range []string{"cut", "primary closed"} {
		t.Run(how, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				tr := transport.NewInmem()
				p, err := NewPrimary[string](fastOpts(t)...)
				require.NoError(t, err)
				l, err := tr.Listen("p")
				require.NoError(t, err)
				served := make(chan error, 1)
				go func() { served <- p.Serve(l) }()
				r := startReplica[string](t, tr, "p")
				require.NoError(t, p.SetTTL("k", "v", time.Second))
				_, err = p.Update(func(tx *Tx[string]) error {
					require.NoError(t, tx.SetTTL("tx", "v", 2*time.Second))
					return tx.Set("keep", "v")
				})
				require.NoError(t, err)
				require.NoError(t, r.WaitOffset(context.Background(), p.Offset()))
				off := r.Offset()
				if how == "cut" {
					tr.Refuse("p", true)
					tr.Cut("p")
				} else {
					require.NoError(t, p.Close())
					require.ErrorIs(t, <-served, ErrClosed)
				}

				rs := r.n.data().store
				time.Sleep(time.Second)
				_, ok := r.Get("k")
				assert.False(t, ok)
				_, ok = r.TTL("k")
				assert.False(t, ok)
				left, ok := r.TTL("tx")
				assert.True(t, ok)
				assert.Equal(t, time.Second, left)
				assert.Equal(t, 2, r.Len())
				time.Sleep(time.Second)
				assert.Equal(t, 1, r.Len())
				assert.Equal(t, map[string]string{"keep": "v"}, snapshotOf(r.All()))
				_, ok = r.Get("tx")
				assert.False(t, ok)
				time.Sleep(time.Second)
				synctest.Wait()
				assert.Equal(t, off, r.Offset(), "no DEL arrived")
				assert.EqualValues(t, 3, rs.n.Load(), "a replica deletes nothing by itself")

				if how == "cut" {
					// The link is back: the primary's DELs arrive.
					assert.EqualValues(t, 1, p.n.data().store.n.Load(), "the primary deleted both")
					tr.Refuse("p", false)
					requireConverged(t, p, r)
					assert.EqualValues(t, 1, r.n.data().store.n.Load())
					assert.Zero(t, r.n.data().store.ttls.Load())
					require.NoError(t, p.Close())
					require.ErrorIs(t, <-served, ErrClosed)
				}
			})
		})
	}
}

// TestTTLFullSync: a replica that full-syncs gets every deadline exactly
// (CHUNKX), so its TTLs are the primary's; a key already due but not yet
// deleted when the snapshot is taken travels with its past deadline, is
// hidden on arrival, and goes when the primary's DEL follows.
func TestTTLFullSync(t *testing.T) {
	t.Run("string", func(t *testing.T) { testTTLFullSync(t, func(s string) string { return s }) })
	t.Run("packed", func(t *testing.T) { testTTLFullSync(t, func(s string) []byte { return []byte(s) }) })
}

func testTTLFullSync[V any](t *testing.T, val func(string) V) {
	synctest.Test(t, func(t *testing.T) {
		start := time.Now()
		at := func(d time.Duration) { time.Sleep(time.Until(start.Add(d))) }
		tr := transport.NewInmem()
		p := startPrimary[V](t, tr, "p")
		const keys = 3000 // several chunks of each kind
		for i := range keys {
			k := fmt.Sprintf("k%04d", i)
			var err error
			switch i % 3 {
			case 0:
				err = p.Set(k, val(k))
			case 1:
				err = p.SetTTL(k, val(k), 10*time.Second+time.Duration(i)*time.Millisecond)
			default:
				_, err = p.Update(func(tx *Tx[V]) error {
					return tx.SetTTL(k, val(k), 20*time.Second+time.Duration(i)*time.Millisecond)
				})
			}
			require.NoError(t, err)
		}
		require.NoError(t, p.SetTTL("due", val("x"), 1050*time.Millisecond))
		at(1050 * time.Millisecond) // due, and the next round is at 1100 ms
		synctest.Wait()
		require.True(t, p.n.data().store.contains("due"))

		want := deadlines(p.n.data().store)
		assert.Len(t, want, 2*keys/3+1)

		r := startReplica[V](t, tr, "p")
		waitSynced(t, r)
		assert.EqualValues(t, 1, r.Info().FullSyncs)
		rs := r.n.data().store
		if !rs.contains("due") { // the DEL came before the snapshot took it
			delete(want, "due")
		}
		assert.Equal(t, want, deadlines(rs), "the replica's deadlines are the primary's")
		for i := 0; i < keys; i += 7 {
			k := fmt.Sprintf("k%04d", i)
			pl, pok := p.TTL(k)
			rl, rok := r.TTL(k)
			assert.Equal(t, pok, rok)
			assert.Equal(t, pl, rl, k)
		}
		_, ok := r.Get("due")
		assert.False(t, ok)
		assert.Equal(t, keys, r.Len())

		at(1100 * time.Millisecond)
		synctest.Wait()
		require.False(t, p.n.data().store.contains("due"), "the primary deleted it")
		requireConverged(t, p, r)
		assert.False(t, rs.contains("due"), "the primary's DEL arrived")
		at(25 * time.Second)
		synctest.Wait()
		assert.Equal(t, keys/3, p.Len())
		assert.Equal(t, keys/3, r.Len())
		requireConverged(t, p, r)
		assert.Zero(t, rs.ttls.Load())
	})
}

// TestTTLRestart: deadlines survive a restart from a data directory,
// from its snapshot and from its log alike; a key whose deadline passed
// while the node was down is hidden at once and deleted by the restarted
// primary.
func TestTTLRestart(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		dir := t.TempDir()
		opts := append(fastOpts(t), WithDataDir(dir), WithFsync(FsyncAlways), withSmallLog(4<<10, 16<<10))
		p, err := NewPrimary[string](opts...)
		require.NoError(t, err)

		// Into the snapshot.
		for i := range 30 {
			require.NoError(t, p.SetTTL(fmt.Sprintf("snap-long%d", i), "v", time.Hour+time.Duration(i)*time.Second))
		}
		require.NoError(t, p.SetTTL("snap-short", "v", 10*time.Second))
		require.NoError(t, p.SetTTL("snap-cleared", "v", 10*time.Second))
		snapKeys := p.Offset()
		before := p.n.disk.snapshots.Load()
		for i := 0; p.n.disk.snapshots.Load() == before || p.n.disk.compacting.Load(); i++ {
			require.NoError(t, p.Set(fmt.Sprintf("fill%d", i%50), strings.Repeat("x", 100)))
			if i > 10000 {
				require.FailNow(t, "no snapshot")
			}
		}
		// Into the log after it.
		logKeys := p.Offset()
		require.NoError(t, p.SetTTL("log-long", "v", time.Hour))
		require.NoError(t, p.SetTTL("log-short", "v", 10*time.Second))
		require.NoError(t, p.Set("snap-cleared", "no deadline"))
		_, err = p.Update(func(tx *Tx[string]) error {
			require.NoError(t, tx.SetTTL("tx-long", "v", 2*time.Hour))
			return tx.SetTTL("tx-short", "v", 10*time.Second)
		})
		require.NoError(t, err)
		want := snapshotOf(p.All())
		wantAt := deadlines(p.n.data().store)
		off := p.Offset()
		require.NoError(t, p.Close())
		var snaps []uint64
		gens, err := filepath.Glob(filepath.Join(dir, "gen-*"))
		require.NoError(t, err)
		for _, g := range gens {
			files, err := os.ReadDir(g)
			require.NoError(t, err)
			for _, f := range files {
				if o, ok := parseSnapshotName(f.Name()); ok {
					snaps = append(snaps, o)
				}
			}
		}
		require.NotEmpty(t, snaps)
		assert.GreaterOrEqual(t, slices.Max(snaps), snapKeys, "the first keys are in a snapshot")
		for _, o := range snaps {
			assert.LessOrEqual(t, o, logKeys, "the last keys are only in the log")
		}

		// Restarted before any deadline: every one is kept exactly.
		p, err = NewPrimary[string](opts...)
		require.NoError(t, err)
		assert.Equal(t, off, p.Offset())
		assert.Equal(t, want, snapshotOf(p.All()))
		assert.Equal(t, wantAt, deadlines(p.n.data().store))
		left, ok := p.TTL("tx-long")
		assert.True(t, ok)
		assert.Equal(t, 2*time.Hour, left)
		require.NoError(t, p.Close())

		// Restarted after the short deadlines passed while it was down.
		time.Sleep(time.Minute)
		p, err = NewPrimary[string](opts...)
		require.NoError(t, err)
		var log delLog
		log.hook(p.n)
		st := p.n.data().store
		short := []string{"snap-short", "log-short", "tx-short"}
		assert.EqualValues(t, len(want), st.n.Load(), "not deleted yet")
		assert.Equal(t, len(want)-len(short), p.Len(), "hidden at once")
		for _, k := range short {
			delete(want, k)
			delete(wantAt, k)
		}
		assert.Equal(t, want, snapshotOf(p.All()))
		for _, k := range short {
			_, ok := p.Get(k)
			assert.False(t, ok, k)
		}
		synctest.Wait() // the reads kicked the expiry goroutine
		assert.ElementsMatch(t, short, log.deleted())
		assert.EqualValues(t, len(want), st.n.Load())
		assert.Equal(t, wantAt, deadlines(st))
		off = p.Offset()
		require.NoError(t, p.Close())

		// And the deletions are in the directory.
		p, err = NewPrimary[string](opts...)
		require.NoError(t, err)
		assert.Equal(t, off, p.Offset())
		assert.EqualValues(t, len(want), p.n.data().store.n.Load())
		assert.Equal(t, want, snapshotOf(p.All()))
		assert.Equal(t, wantAt, deadlines(p.n.data().store))
		require.NoError(t, p.Close())
	})
}

// TestTTLExpiresManyInBatches: 10,000 keys due at once are deleted by the
// expiry goroutine's next round, each with its DEL record, and replicated;
// then, for 2,000 more, the size of each batch (one hold of the write
// lock) is measured: the write hook marks the primary stale at every DEL,
// which refuses the next write, so each round ends after one batch. Close
// stops the expiry goroutine.
func TestTTLExpiresManyInBatches(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tr := transport.NewInmem()
		p, err := NewPrimary[string](fastOpts(t)...)
		require.NoError(t, err)
		l, err := tr.Listen("p")
		require.NoError(t, err)
		served := make(chan error, 1)
		go func() { served <- p.Serve(l) }()
		r := startReplica[string](t, tr, "p")
		waitSynced(t, r)
		st := p.n.data().store

		var dels atomic.Int64
		var oneBatch atomic.Bool
		p.n.writeMu.Lock()
		p.n.testHookWrite = func(rec []byte, _ uint64) {
			if frameType(rec[4]) == frameDel {
				dels.Add(1)
				if oneBatch.Load() {
					p.n.stale.Store(true) // the next lockForWrite fails
				}
			}
		}
		p.n.writeMu.Unlock()
		setMany := func(prefix string, keys int) {
			for b := range keys / 1000 {
				_, err := p.Update(func(tx *Tx[string]) error {
					for i := range 1000 {
						if err := tx.SetTTL(fmt.Sprintf("%s%d", prefix, b*1000+i), "v", time.Second); err != nil {
							return err
						}
					}
					return tx.Set(fmt.Sprintf("%s-keep%d", prefix, b), "v")
				})
				require.NoError(t, err)
			}
			ats := make(map[int64]bool)
			for _, at := range deadlines(st) {
				ats[at] = true
			}
			require.Len(t, ats, 1, "one deadline for all")
		}

		// One round deletes them all.
		setMany("a", 10000)
		time.Sleep(time.Second + expiryInterval)
		synctest.Wait()
		assert.EqualValues(t, 10000, dels.Load())
		assert.EqualValues(t, 10000, p.Info().Expired)
		assert.EqualValues(t, 10, st.n.Load())
		assert.Zero(t, st.ttls.Load())
		for i := range st.shards {
			assert.Nil(t, st.shards[i].exp, "an emptied shard keeps its deadline index")
		}
		requireConverged(t, p, r)
		assert.EqualValues(t, 10, r.n.data().store.n.Load())

		// One batch per round.
		setMany("b", 2000)
		dels.Store(0)
		oneBatch.Store(true)
		time.Sleep(time.Second + expiryInterval/2) // due, and a round may have run
		synctest.Wait()
		var batches []int64
		prev := dels.Load()
		if prev > 0 {
			batches = append(batches, prev)
			require.LessOrEqual(t, prev, int64(expiryBatch), "a batch of more than expiryBatch keys")
		}
		for prev < 2000 {
			p.n.stale.Store(false)
			st.expiredRead()
			synctest.Wait()
			d := dels.Load()
			batches = append(batches, d-prev)
			require.Positive(t, d-prev, "a round deleted nothing after %v", batches)
			require.LessOrEqual(t, d-prev, int64(expiryBatch), "a batch of more than expiryBatch keys")
			prev = d
		}
		p.n.stale.Store(false)
		t.Logf("2000 keys deleted in %d batches", len(batches))
		assert.GreaterOrEqual(t, len(batches), 2000/expiryBatch)
		assert.EqualValues(t, 12, st.n.Load())
		requireConverged(t, p, r)

		assert.Equal(t, 1, expiryGoroutines())
		require.NoError(t, p.Close())
		require.ErrorIs(t, <-served, ErrClosed)
		assert.Zero(t, expiryGoroutines(), "Close stops the expiry goroutine")
	})
}

// TestTTLExpiryFollowsRole: Demote stops a node's expiry (a replica
// deletes nothing by itself: its keys stay, hidden, until its primary's
// DELs arrive), and Promote starts it.
func TestTTLExpiryFollowsRole(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tr := transport.NewInmem()
		p, err := NewPrimary[string](fastOpts(t)...)
		require.NoError(t, err)
		l, err := tr.Listen("p")
		require.NoError(t, err)
		served := make(chan error, 1)
		go func() { served <- p.Serve(l) }()
		r, err := NewReplica[string](tr, "p", fastOpts(t)...)
		require.NoError(t, err)
		require.NoError(t, p.SetTTL("a", "v", time.Second))
		require.NoError(t, p.SetTTL("b", "v", time.Second))
		require.NoError(t, p.Set("keep", "v"))
		require.NoError(t, r.WaitOffset(context.Background(), p.Offset()))
		assert.Equal(t, 1, expiryGoroutines())

		var promotedLog delLog
		promotedLog.hook(r.n)
		np, err := r.Promote()
		require.NoError(t, err)
		synctest.Wait()
		assert.Equal(t, 2, expiryGoroutines(), "Promote started one")
		nl, err := tr.Listen("np")
		require.NoError(t, err)
		npServed := make(chan error, 1)
		go func() { npServed <- np.Serve(nl) }()

		tr.Refuse("np", true) // the demoted node hears nothing from np for now
		dp, err := p.Demote(tr, "np")
		require.NoError(t, err)
		synctest.Wait()
		assert.Equal(t, 1, expiryGoroutines(), "Demote stopped one")
		dOff := dp.Offset()

		time.Sleep(2 * time.Second)
		synctest.Wait()
		_, ok := dp.Get("a")
		assert.False(t, ok, "hidden on the demoted node")
		synctest.Wait()
		assert.EqualValues(t, 3, dp.n.data().store.n.Load(), "the demoted node deleted nothing")
		assert.Equal(t, dOff, dp.Offset())
		assert.ElementsMatch(t, []string{"a", "b"}, promotedLog.deleted(), "the promoted node deleted them")
		assert.EqualValues(t, 1, np.n.data().store.n.Load())

		tr.Refuse("np", false)
		requireConverged(t, np, dp)
		assert.EqualValues(t, 1, dp.n.data().store.n.Load())

		require.NoError(t, dp.Close())
		require.NoError(t, np.Close())
		require.ErrorIs(t, <-served, ErrClosed)
		require.ErrorIs(t, <-npServed, ErrClosed)
		synctest.Wait()
		assert.Zero(t, expiryGoroutines())
	})
}
