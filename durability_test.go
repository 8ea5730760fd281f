package replmap

import (
	"context"
	"fmt"
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

// withFS makes the data directory write through fsys.
func withFS(fsys fileSystem) Option {
	return optionFunc(func(c *config) { c.fsys = fsys })
}

// gatedPrimary returns a Primary on a fresh directory under policy whose
// fsyncs of log segments, from now on, each wait for a receive from gate
// (close it to let them all through); fsys.gated counts them. Under
// FsyncAlways the log is first moved to its first preallocated segment,
// so that no rotation happens in the test.
func gatedPrimary(t *testing.T, policy FsyncPolicy) (*Primary[int], *faultFS, chan struct{}) {
	fsys := &faultFS{}
	p, err := NewPrimary[int](WithDataDir(t.TempDir()), WithFsync(policy), withFS(fsys))
	require.NoError(t, err)
	if policy == FsyncAlways {
		require.NoError(t, p.Set("warm", 0))
		s := p.n.disk.stream.Load()
		waitFor(t, "a spare segment", func() bool { return s.spare.ready.Load() })
		require.NoError(t, p.Set("warm", 1)) // rotates to the spare
		require.False(t, s.spare.ready.Load(), "the spare was taken")
	}
	gate := make(chan struct{})
	fsys.mu.Lock()
	fsys.syncGate = gate
	fsys.gateOnly = func(name string) bool { return strings.HasSuffix(name, segmentSuffix) }
	fsys.mu.Unlock()
	return p, fsys, gate
}

// TestWaitDurable: WaitDurable counts the replicas that hold the writes in
// their data directories, asking them to fsync at once even under a
// policy that would wait (here an interval of an hour); replicas without
// a directory never count.
func TestWaitDurable(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tr := transport.NewInmem()
		lazy := optionFunc(func(c *config) { c.fsyncInterval = time.Hour })
		p := startPrimary[int](t, tr, "p", WithDataDir(t.TempDir()), lazy)
		withDir := startReplica[int](t, tr, "p", WithDataDir(t.TempDir()), lazy)
		memOnly := startReplica[int](t, tr, "p")
		waitSynced(t, withDir)
		waitSynced(t, memOnly)
		for i := range 100 {
			require.NoError(t, p.Set(fmt.Sprint(i), i))
		}
		target := p.Offset()
		k, err := p.WaitDurable(context.Background(), 1)
		require.NoError(t, err)
		assert.Equal(t, 1, k)
		assert.GreaterOrEqual(t, p.Info().DurableOffset, target)
		assert.GreaterOrEqual(t, withDir.Info().DurableOffset, target)
		assert.Zero(t, memOnly.Info().DurableOffset)

		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		k, err = p.WaitDurable(ctx, 2)
		require.ErrorIs(t, err, context.DeadlineExceeded)
		assert.Equal(t, 1, k, "the replica without a directory is not counted")

		var durable []uint64
		for _, l := range p.Info().Replicas {
			durable = append(durable, l.DurableOffset)
		}
		assert.ElementsMatch(t, []uint64{0, target}, durable)

		require.NoError(t, p.Close())
		_, err = p.WaitDurable(context.Background(), 1)
		require.ErrorIs(t, err, ErrClosed)
	})
}

// TestEverySecondBlocksWritesOnAStalledDisk: under FsyncEverySecond a
// Set never waits for the disk while the oldest write not on disk is
// younger than the interval; once it is older (the fsync is stalled), Sets
// block until the disk catches up, so the loss window does not grow.
// FsyncNever never blocks.
func TestEverySecondBlocksWritesOnAStalledDisk(t *testing.T) {
	for _, policy := range []FsyncPolicy{FsyncEverySecond, FsyncNever} {
		t.Run(policy.String(), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				p, fsys, gate := gatedPrimary(t, policy)
				defer p.Close()

				require.NoError(t, p.Set("a", 1)) // at t=0: the oldest write not on disk
				time.Sleep(600 * time.Millisecond)
				synctest.Wait()
				if policy == FsyncEverySecond {
					assert.Equal(t, int64(1), fsys.gated.Load(), "the flusher's fsync is under way, stalled")
				}
				require.NoError(t, p.Set("b", 2), "0.6 s: within the window, no wait")

				time.Sleep(500 * time.Millisecond) // 1.1 s
				var done atomic.Bool
				go func() {
					assert.NoError(t, p.Set("c", 3))
					done.Store(true)
				}()
				synctest.Wait()
				if policy == FsyncNever {
					assert.True(t, done.Load(), "FsyncNever never waits for the disk")
					close(gate)
					return
				}
				assert.False(t, done.Load(), "a write past the window must wait for the stalled disk")
				close(gate)
				synctest.Wait()
				assert.True(t, done.Load())
				assert.Equal(t, p.Offset(), p.Info().DurableOffset, "the blocked write returned once on disk")
			})
		})
	}
}

// TestFsyncAlwaysGroupCommit: under FsyncAlways, writers that arrive
// while an fsync is under way share the next one.
func TestFsyncAlwaysGroupCommit(t *testing.T) {
	p, fsys, gate := gatedPrimary(t, FsyncAlways)
	defer p.Close()

	// The first writer's fsync is held at the gate; 15 more arrive and
	// append meanwhile.
	const writers = 16
	var wg sync.WaitGroup
	wg.Go(func() { assert.NoError(t, p.Set("w0", 0)) })
	waitFor(t, "the first fsync", func() bool { return fsys.gated.Load() == 1 })
	for i := 1; i < writers; i++ {
		wg.Go(func() { assert.NoError(t, p.Set(fmt.Sprintf("w%d", i), i)) })
	}
	s := p.n.disk.stream.Load()
	waitFor(t, "every write appended", func() bool { return p.Len() == writers+1 && s.offset() == p.Offset() }) // +1: "warm"
	close(gate)
	wg.Wait()
	assert.LessOrEqual(t, fsys.gated.Load(), int64(2), "16 writers: their fsync, and one shared by the other 15")
	assert.Equal(t, p.Offset(), p.Info().DurableOffset)
}

// TestDataDirThroughRoleChanges: the directory stays with the node. A
// promoted replica's directory restarts as a primary continuing its
// history; a demoted primary's directory restarts as a replica that
// resumes partially.
func TestDataDirThroughRoleChanges(t *testing.T) {
	tr := transport.NewInmem()
	pdir, rdir := t.TempDir(), t.TempDir()
	p, err := NewPrimary[int](append(fastOpts(t), WithDataDir(pdir), WithFsync(FsyncAlways))...)
	require.NoError(t, err)
	l, err := tr.Listen("p")
	require.NoError(t, err)
	go p.Serve(l)
	r, err := NewReplica[int](tr, "p", append(fastOpts(t), WithDataDir(rdir), WithFsync(FsyncAlways))...)
	require.NoError(t, err)
	for i := range 100 {
		require.NoError(t, p.Set(fmt.Sprint(i), i))
	}
	requireConverged(t, p, r)

	// Fail over: r is promoted and serves on "r"; p is demoted under it.
	np, err := r.Promote()
	require.NoError(t, err)
	nl, err := tr.Listen("r")
	require.NoError(t, err)
	go np.Serve(nl)
	old, err := p.Demote(tr, "r")
	require.NoError(t, err)
	for i := range 50 {
		require.NoError(t, np.Set(fmt.Sprint(i), -i))
	}
	require.Eventually(t, func() bool { return old.Offset() == np.Offset() }, 30*time.Second, time.Millisecond)
	id, off := np.ReplID(), np.Offset()

	// Restart both from their directories.
	require.NoError(t, old.Close())
	require.NoError(t, np.Close())
	np, err = NewPrimary[int](append(fastOpts(t), WithDataDir(rdir))...)
	require.NoError(t, err)
	defer np.Close()
	assert.Equal(t, off, np.Offset())
	assert.Equal(t, id, np.Info().ReplID2, "the promoted node's history is the one its directory continues")
	assert.Equal(t, np.Info().Epoch, uint64(1))
	nl, err = tr.Listen("r")
	require.NoError(t, err)
	go np.Serve(nl)
	old, err = NewReplica[int](tr, "r", append(fastOpts(t), WithDataDir(pdir))...)
	require.NoError(t, err)
	defer old.Close()
	assert.Equal(t, off, old.Offset(), "the demoted node's directory holds the new primary's stream")
	require.NoError(t, np.Set("after", 1))
	requireConverged(t, np, old)
	assert.Equal(t, uint64(1), old.Info().PartialSyncs)
	assert.Zero(t, old.Info().FullSyncs)
}
