package replmap

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/replmap/replmap/transport"
)

// A replica's data directory under the file-system faults of
// datadir_fault_test.go: its full sync's snapshot (the frames it tees
// into the next generation, committed with a new log and history record),
// the log its stream appends to, a snapshot it takes, and the history
// record it rewrites when it follows its primary into a new history (the
// primary restarts from its own directory: same data, new ReplID). At
// each fault point the replica stops applying, its link fails with the
// disk's error, and what it serves is always exactly its primary's state
// at its offset; reopened on the OS's file system, the directory serves
// at once exactly the primary's state at its offset, at least as far as
// the replica reported durable, and the replica converges by a partial
// resync (a full sync only if the directory holds no data).

const (
	repFaultBefore  = 20 // writes before the replica starts: it full-syncs
	repFaultCompact = 32 // the replica takes a snapshot after this write
	repFaultRestart = 45 // the primary restarts after this write
	repFaultWrites  = 60
)

// repFaultRun is one run of the replica's scripted workload.
type repFaultRun struct {
	t    *testing.T
	tr   transport.Transport
	pdir string // the primary's directory, on the OS's file system
	dir  string // the replica's
	fs   *diskFS
	logs *logBuffer
	hist *writeStates

	p       *Primary[string]
	served  chan error
	r       *Replica[string]
	durable uint64 // the highest DurableOffset the replica reported
	failed  bool   // the replica's directory failed
}

func (f *repFaultRun) log() Option {
	return WithLogger(slog.New(slog.NewTextHandler(f.logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
}

func (f *repFaultRun) replicaOpts(fsys fileSystem) []Option {
	return []Option{
		f.log(), WithDataDir(f.dir), WithFsync(FsyncAlways),
		WithReconnectBackoff(time.Millisecond, 5*time.Millisecond),
		optionFunc(func(c *config) {
			if fsys != nil {
				c.fsys = fsys
			}
			c.segmentSize = faultSegment
			c.snapshotMin = 1 << 50 // snapshots only where the script takes them
			c.spareInline = true
		}),
	}
}

// startPrimary opens the primary on its directory and serves it.
func (f *repFaultRun) startPrimary() {
	p, err := NewPrimary[string](f.log(), WithDataDir(f.pdir), WithFsync(FsyncNever))
	require.NoError(f.t, err)
	l, err := f.tr.Listen("primary")
	require.NoError(f.t, err)
	f.p, f.served = p, make(chan error, 1)
	go func() { f.served <- p.Serve(l) }()
}

func (f *repFaultRun) stopPrimary() {
	require.NoError(f.t, f.p.Close())
	require.ErrorIs(f.t, <-f.served, ErrClosed)
}

func (f *repFaultRun) write(i int) {
	key, value := fmt.Sprintf("k%d", i%9), fmt.Sprintf("v%d.%s", i, strings.Repeat("x", i%23))
	del := i%5 == 3
	if del {
		require.NoError(f.t, f.p.Delete(key))
	} else {
		require.NoError(f.t, f.p.Set(key, value))
	}
	f.hist.note(del, key, value, f.p.Offset())
}

// served returns the replica's offset and data, read together.
func servedState[V any](r *Replica[V]) (uint64, map[string]V) {
	r.n.writeMu.Lock()
	defer r.n.writeMu.Unlock()
	d := r.n.data()
	return d.offset(), snapshotOf(d.store.all())
}

// settle waits until the replica holds the primary's data, durably and in
// its history, or its directory has failed; and checks what it serves.
func (f *repFaultRun) settle() {
	t := f.t
	waitFor(t, "the replica to catch up or fail", func() bool {
		if f.r.n.disk.failed() != nil {
			f.failed = true
			return true
		}
		info := f.r.Info()
		return info.Offset == f.p.Offset() && info.DurableOffset == info.Offset && info.ReplID == f.p.Info().ReplID
	})
	f.durable = max(f.durable, f.r.Info().DurableOffset)
	off, data := servedState(f.r)
	require.NoError(t, f.hist.check(off, data), "the replica serves")
}

// workload runs the script against the replica on f.fs.
func (f *repFaultRun) workload() {
	t := f.t
	f.startPrimary()
	for i := range repFaultBefore {
		f.write(i)
	}
	r, err := NewReplica[string](f.tr, "primary", f.replicaOpts(f.fs)...)
	require.NoError(t, err)
	f.r = r
	f.settle()
	for i := repFaultBefore; i < repFaultWrites; i++ {
		f.write(i)
		if !f.failed {
			f.settle()
		}
		if i == repFaultCompact && !f.failed {
			compact(r.n.disk, r.n)
			f.settle()
		}
		if i == repFaultRestart {
			f.stopPrimary()
			f.startPrimary()
			if !f.failed {
				f.settle()
			}
		}
	}
}

// checkStopped checks that a replica whose directory failed says why and
// applies nothing more, over two more connections to its primary.
func (f *repFaultRun) checkStopped() {
	t := f.t
	var err error // LastError changes with every attempt: keep the one that says
	waitFor(t, "the disk's failure in LastError", func() bool {
		err = f.r.Info().LastError
		return err != nil && strings.Contains(err.Error(), "data directory")
	})
	assert.True(t, errors.Is(err, errInjected) || errors.Is(err, errCrashed), "%v", err)
	off, data := servedState(f.r)
	require.NoError(t, f.hist.check(off, data), "the replica serves")
	connects := f.r.Info().Connects
	waitFor(t, "two more connections", func() bool { return f.r.Info().Connects >= connects+2 })
	off2, data2 := servedState(f.r)
	assert.Equal(t, off, off2, "the replica applied records after its directory failed")
	require.NoError(t, f.hist.check(off2, data2), "the replica serves")
	assert.LessOrEqual(t, f.r.Info().DurableOffset, off2)
}

// reopen closes the replica, and reopens its directory on the OS's file
// system: it serves exactly the primary's state at its offset, at least
// what was reported durable, and converges, partially if it has data.
func (f *repFaultRun) reopen(mode faultMode) {
	t := f.t
	_ = f.r.Close() // may report the failure again
	if mode == modePower {
		f.fs.powerLoss(t)
	}
	r, err := NewReplica[string](f.tr, "primary", f.replicaOpts(nil)...)
	require.NoError(t, err, "reopening the replica's directory")
	defer func() { require.NoError(t, r.Close()) }()
	off, data := servedState(r)
	require.NoError(t, f.hist.check(off, data), "the reopened replica serves")
	require.GreaterOrEqual(t, off, f.durable, "the reopened replica lost what it reported durable")
	requireConverged(t, f.p, r)
	info := r.Info()
	if off > 0 {
		assert.Zero(t, info.FullSyncs, "a replica with data resumes partially")
	}
	require.NoError(t, r.n.disk.failed())
}

// TestReplicaDataDirFaults: the replica's workload with a fault at every
// point (a stride of them, and of the modes, unless REPLMAP_DAMAGE_FULL).
func TestReplicaDataDirFaults(t *testing.T) {
	newRun := func(t *testing.T, dfs *diskFS) *repFaultRun {
		return &repFaultRun{t: t, tr: transport.NewInmem(), pdir: t.TempDir(), dir: t.TempDir(), fs: dfs,
			logs: &logBuffer{}, hist: newWriteStates(0)}
	}
	clean := newRun(t, newDiskFS())
	clean.workload()
	require.False(t, clean.failed, "%s", clean.logs)
	require.Equal(t, clean.p.Offset(), clean.r.Offset())
	require.NoError(t, clean.r.Close())
	clean.stopPrimary()
	points := clean.fs.points()
	for _, want := range []faultPoint{{kindSnapshot, opWrite, 2}, {kindHistory, opRename, 2}, {kindSegment, opWrite, 1}} {
		require.Contains(t, points, want, "the full sync, the snapshot, the new history, the log")
	}
	// Without REPLMAP_DAMAGE_FULL, a stride of each kind's points, the
	// modes taking turns: the segments' many appends are much alike.
	stride := map[fileKind]int{kindSegment: 29, kindSnapshot: 3, kindHistory: 3, kindDir: 6, kindSpare: 10}
	if damageFull() {
		stride = nil
	}
	runs := 0
	byMode := map[faultMode]int{}
	seen := map[fileKind]int{}
	for _, pt := range points {
		j := seen[pt.kind]
		seen[pt.kind]++
		for mode := range numModes {
			if s := stride[pt.kind]; s > 1 && (j+int(mode))%s != 0 {
				continue
			}
			runs++
			byMode[mode]++
			dfs := newDiskFS()
			dfs.arm(pt, mode)
			f := newRun(t, dfs)
			if !t.Run(fmt.Sprintf("%s/%s", pt, mode), func(t *testing.T) {
				f.t = t
				defer func() {
					if f.r != nil {
						_ = f.r.Close() // a second Close is nil; a failed one may report the disk
					}
					if f.p != nil {
						f.stopPrimary()
					}
				}()
				f.workload()
				require.True(t, dfs.hit, "the fault point was not reached")
				if f.failed {
					f.checkStopped()
				} else {
					require.True(t, pt.kind == kindSpare && !mode.crash(), "the fault was ignored")
				}
				f.reopen(mode)
			}) {
				t.Logf("logs of the failed run:\n%s", f.logs)
				return
			}
		}
	}
	t.Logf("%d fault points, %d runs (%v)", len(points), runs, byMode)
}
