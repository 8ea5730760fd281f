package replmap

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/replmap/replmap/transport"
)

// withSmallLog makes snapshots and segment rotations frequent.
func withSmallLog(segment, snapshotAfter int64) Option {
	return optionFunc(func(c *config) { c.segmentSize, c.snapshotMin = segment, snapshotAfter })
}

// TestPrimaryRestartKeepsDataAndHistory: D2 on one process.
func TestPrimaryRestartKeepsDataAndHistory(t *testing.T) {
	dir := t.TempDir()
	for _, policy := range []FsyncPolicy{FsyncAlways, FsyncEverySecond, FsyncNever} {
		t.Run(policy.String(), func(t *testing.T) {
			dir := filepath.Join(dir, policy.String())
			opts := append(fastOpts(t), WithDataDir(dir), WithFsync(policy), WithEpoch(3), withSmallLog(4<<10, 16<<10))
			p, err := NewPrimary[string](opts...)
			require.NoError(t, err)
			want := map[string]string{}
			for i := range 2000 {
				k := fmt.Sprintf("k%04d", i%700)
				if i%5 == 4 {
					require.NoError(t, p.Delete(k))
					delete(want, k)
					continue
				}
				v := fmt.Sprintf("v%d", i)
				require.NoError(t, p.Set(k, v))
				want[k] = v
			}
			off, id := p.Offset(), p.ReplID()
			require.NoError(t, p.Close())
			assert.ErrorIs(t, p.Sync(), ErrClosed)

			for round := range 3 {
				p, err = NewPrimary[string](append(opts, WithEpoch(1))...)
				require.NoError(t, err, "round %d", round)
				assert.Equal(t, want, snapshotOf(p.All()))
				info := p.Info()
				assert.Equal(t, off, info.Offset)
				assert.Equal(t, id, info.ReplID2)
				assert.Equal(t, off, info.ReplID2Offset)
				assert.Equal(t, uint64(3), info.Epoch, "the higher epoch is kept")
				assert.Equal(t, off, info.DurableOffset)
				assert.Less(t, info.BacklogFirst, info.Offset, "backlog refilled from the log")
				require.NoError(t, p.Set("round", fmt.Sprint(round)))
				want["round"] = fmt.Sprint(round)
				off, id = p.Offset(), p.ReplID()
				require.NoError(t, p.Close())
			}
		})
	}
}

// TestDataDirLayout: snapshots are taken as the log grows and old
// segments and snapshots go, so the directory stays bounded.
func TestDataDirLayout(t *testing.T) {
	dir := t.TempDir()
	p, err := NewPrimary[string](append(fastOpts(t), WithDataDir(dir), WithBacklogSize(MinBacklogSize), withSmallLog(4<<10, 32<<10))...)
	require.NoError(t, err)
	for i := range 20000 {
		require.NoError(t, p.Set(fmt.Sprintf("k%03d", i%500), fmt.Sprintf("value %d", i)))
	}
	require.Eventually(t, func() bool { return p.n.disk.snapshots.Load() > 0 && !p.n.disk.compacting.Load() }, 30*time.Second, time.Millisecond)
	require.NoError(t, p.Close())
	var total int64
	gens, err := os.ReadDir(dir)
	require.NoError(t, err)
	var names []string
	for _, g := range gens {
		names = append(names, g.Name())
	}
	assert.Equal(t, []string{"LOCK", "gen-0000000000000001", "history"}, names)
	files, err := os.ReadDir(filepath.Join(dir, "gen-0000000000000001"))
	require.NoError(t, err)
	snaps := 0
	for _, f := range files {
		info, err := f.Info()
		require.NoError(t, err)
		total += info.Size()
		if _, ok := parseSnapshotName(f.Name()); ok {
			snaps++
		}
	}
	assert.Equal(t, 1, snaps, "one snapshot kept")
	t.Logf("%d files, %d bytes for %d stream bytes", len(files), total, p.Offset())
	assert.Less(t, total, int64(200<<10), "the directory is bounded by a snapshot and the log since")
}

// TestRestartsResumePartially: D2 and D3. A replica restarted on its
// directory serves its data at once and resumes partially; a primary
// restarted on its directory resumes both a replica that stayed connected
// and one that was behind (its backlog is refilled from the log).
func TestRestartsResumePartially(t *testing.T) {
	tr := transport.NewInmem()
	pdir, rdir := t.TempDir(), t.TempDir()
	popts := append(fastOpts(t), WithDataDir(pdir), WithFsync(FsyncAlways))
	p, err := NewPrimary[string](popts...)
	require.NoError(t, err)
	serve := func(p *Primary[string]) chan error {
		l, err := tr.Listen("primary")
		require.NoError(t, err)
		served := make(chan error, 1)
		go func() { served <- p.Serve(l) }()
		return served
	}
	served := serve(p)
	for i := range 300 {
		require.NoError(t, p.Set(fmt.Sprintf("k%d", i), "a"))
	}
	ropts := append(fastOpts(t), WithDataDir(rdir), WithReplicaName("behind"))
	r, err := NewReplica[string](tr, "primary", ropts...)
	require.NoError(t, err)
	live := startReplica[string](t, tr, "primary", WithReplicaName("live"))
	requireConverged(t, p, r, live)
	assert.Equal(t, uint64(1), r.Info().FullSyncs)

	// The replica restarts while the primary writes on.
	require.NoError(t, r.Close())
	for i := range 300 {
		require.NoError(t, p.Set(fmt.Sprintf("k%d", i), "b"))
	}
	r, err = NewReplica[string](tr, "primary", ropts...)
	require.NoError(t, err)
	assert.GreaterOrEqual(t, r.Len(), 300, "served from the directory at once")
	requireConverged(t, p, r, live)
	info := r.Info()
	assert.Equal(t, uint64(0), info.FullSyncs)
	assert.Equal(t, uint64(1), info.PartialSyncs)

	// Now it falls behind, and the primary restarts.
	require.NoError(t, r.Close())
	for i := range 300 {
		require.NoError(t, p.Set(fmt.Sprintf("k%d", i), "c"))
	}
	behind := r.Offset()
	require.NoError(t, p.Close())
	require.ErrorIs(t, <-served, ErrClosed)
	p, err = NewPrimary[string](popts...)
	require.NoError(t, err)
	served = serve(p)
	defer func() {
		require.NoError(t, p.Close())
		require.ErrorIs(t, <-served, ErrClosed)
	}()
	r, err = NewReplica[string](tr, "primary", ropts...)
	require.NoError(t, err)
	defer r.Close()
	assert.Equal(t, behind, r.Offset())
	require.NoError(t, p.Set("after", "restart"))
	requireConverged(t, p, r, live)
	assert.Equal(t, uint64(0), r.Info().FullSyncs, "the replica that was behind resumed partially")
	assert.Equal(t, uint64(1), r.Info().PartialSyncs)
	assert.Equal(t, uint64(1), live.Info().FullSyncs, "the live replica did not full-sync again")
	assert.Equal(t, uint64(0), p.Info().FullSyncs)
}

// TestDataDirIsLocked: two nodes never share a directory; the lock goes
// with Close.
func TestDataDirIsLocked(t *testing.T) {
	dir := t.TempDir()
	p, err := NewPrimary[int](WithDataDir(dir))
	require.NoError(t, err)
	_, err = NewPrimary[int](WithDataDir(dir))
	require.ErrorIs(t, err, ErrInvalidOption)
	assert.Contains(t, err.Error(), "in use")
	_, err = NewReplica[int](transport.NewInmem(), "p", WithDataDir(dir))
	require.ErrorIs(t, err, ErrInvalidOption)
	require.NoError(t, p.Close())
	p, err = NewPrimary[int](WithDataDir(dir))
	require.NoError(t, err)
	require.NoError(t, p.Close())
}

// TestDataDirHistoryRecordLost: a directory whose history record is gone
// but whose data is not is not taken for a new one (that would wipe the
// data and the epoch); an interrupted first start (an empty generation,
// no record) is.
func TestDataDirHistoryRecordLost(t *testing.T) {
	dir := t.TempDir()
	p, err := NewPrimary[int](WithDataDir(dir), WithEpoch(5))
	require.NoError(t, err)
	require.NoError(t, p.Close())
	require.NoError(t, os.Remove(filepath.Join(dir, historyFileName)))
	p, err = NewPrimary[int](WithDataDir(dir))
	require.NoError(t, err, "nothing was written: a first start cut short")
	require.NoError(t, p.Set("a", 1))
	require.NoError(t, p.Close())

	require.NoError(t, os.Remove(filepath.Join(dir, historyFileName)))
	_, err = NewPrimary[int](WithDataDir(dir))
	require.ErrorIs(t, err, ErrLostState)
	logs := &countingHandler{}
	p, err = NewPrimary[int](WithDataDir(dir), WithAllowDataLoss(), WithLogger(slog.New(logs)))
	require.NoError(t, err)
	assert.Zero(t, p.Len())
	assert.Equal(t, int64(1), logs.count("starting empty: the data directory lost its history record"), "the data dropped is logged")
	require.NoError(t, p.Close())
}
