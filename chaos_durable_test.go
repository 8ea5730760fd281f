package replmap

// The fault-injection suite with data directories (TestChaosDurable): the
// runs of chaos_test.go where every node keeps its data in a directory of
// its own with FsyncAlways (and small log segments and snapshots, so that
// restarts load a snapshot and replay a log), and the schedule also
//
//   - restarts replicas from their directories (Close, then NewReplica on
//     the same directory and name): the new instance must serve at once
//     exactly what the old one held when it closed (same history, same
//     offset, same data), and no later read of the slot may show an older
//     state than one it showed before;
//   - restarts the primary from its directory (Close, then NewPrimary on
//     the same directory, serving on the same address): the offset
//     continues exactly, ReplID2 is the old ReplID at that offset, and the
//     data is exactly the stream's state there;
//   - crashes the primary: its file system refuses every call from one
//     moment on (a write in progress is torn), as if the process died
//     then, and it is reopened. Writes that were not on disk are lost, but
//     never one whose Set returned: the restarted primary's offset is at
//     least the durable offset the old one reached.
//
// The history checks of chaos_test.go then treat a restart as continuing
// the same register history: a write that failed because its primary went
// down has an unknown outcome (it may or may not have survived), and every
// Set that returned nil must be in the final stream. A read on the primary
// counts once Sync returns after it (Get does not wait for the disk, so it
// may show a write the crash then loses). A replica that held writes a
// crash lost is the one replica allowed back in time, to where the
// restarted primary's history parts from the one it held.
//
// CI runs a few seeds. More, from the environment:
//
//	REPLMAP_CHAOS_DURABLE_SEEDS=200 go test -run 'TestChaosDurable$' .    # seeds 1..200
//	REPLMAP_CHAOS_DURABLE_SEED=17 go test -run 'TestChaosDurable$' -v .   # replay one seed
//
// The parent test logs the totals of every figure.

import (
	"errors"
	"math/rand/v2"
	"os"
	"reflect"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/replmap/replmap/transport"
)

func TestChaosDurable(t *testing.T) {
	start := time.Now()
	totals := make(map[string]int)
	seeds := envSeeds(t, "REPLMAP_CHAOS_DURABLE_SEED", "REPLMAP_CHAOS_DURABLE_SEEDS", 3)
	for _, seed := range seeds {
		t.Run("seed="+strconv.FormatUint(seed, 10), func(t *testing.T) {
			stats := runChaos(t, seed, transport.NewInmem(), func(i int) string { return "proxy" + strconv.Itoa(i) }, "p",
				chaosOptions{seedVar: "REPLMAP_CHAOS_DURABLE_SEED", durable: true})
			for k, v := range stats {
				totals[k] += v
			}
		})
	}
	t.Logf("%d seeds in %v: totals %v", len(seeds), time.Since(start).Round(time.Millisecond), totals)
}

// durableOptions gives the run's nodes data directories with FsyncAlways,
// and the primary one of its own.
func (c *chaosRun) durableOptions(rng *rand.Rand) {
	small := withSmallLog(4<<10<<rng.IntN(3), 8<<10<<rng.IntN(4))
	c.popts = append(c.popts, WithDataDir(c.t.TempDir()), WithFsync(FsyncAlways), small)
	c.opts = append(c.opts, small)
}

// withFileSystem makes a node's data directory use fsys.
func withFileSystem(fsys fileSystem) Option {
	return optionFunc(func(c *config) { c.fsys = fsys })
}

// restartPrimary closes the primary, or crashes it, and starts another on
// its data directory and address, which the workload moves to.
func (c *chaosRun) restartPrimary(crash bool) {
	t := c.t
	old := c.primary()
	old.retired.Store(true)
	if crash {
		old.fs.crash()
	}
	err := old.p.Close()
	if !crash {
		require.NoError(t, err, "a clean Close")
	}
	require.ErrorIs(t, <-old.served, ErrClosed)
	was := old.p.Info()
	c.countSyncs(was)
	if crash && old.fs.torn.Load() {
		c.count("crashes that tore a write")
	}

	np := c.openPrimary()
	info := np.p.Info()
	switch {
	case !crash && info.Offset != was.Offset:
		c.fail("primary restarted at offset %d, but closed at %d", info.Offset, was.Offset)
	case crash && (info.Offset < was.DurableOffset || info.Offset > was.Offset):
		c.fail("primary crashed at offset %d with %d on disk, but restarted at %d: it lost acknowledged writes",
			was.Offset, was.DurableOffset, info.Offset)
	}
	if info.ReplID2 != was.ReplID || info.ReplID2Offset != info.Offset || info.Epoch != was.Epoch {
		c.fail("restarted primary's history: ReplID2 %s at %d, epoch %d; want %s at %d, epoch %d",
			info.ReplID2, info.ReplID2Offset, info.Epoch, was.ReplID, info.Offset, was.Epoch)
	}
	c.mu.Lock()
	want := lineState(np.line.records)
	c.mu.Unlock()
	if got := snapshotOf(np.p.All()); !reflect.DeepEqual(got, want) {
		c.fail("primary restarted at offset %d with data %v, but the stream there holds %v", info.Offset, got, want)
	}
	for _, s := range c.slots {
		// A replica still in the history before the old primary's
		// cannot resume: the new primary's ReplID2 is only the old one's.
		if id := s.current().r.n.data().hist.replID; id != "" && id != was.ReplID {
			c.count("replicas two histories behind a restart")
		}
	}
	if crash {
		c.mu.Lock()
		c.stats["bytes lost to crashes"] += int(was.Offset - info.Offset)
		c.mu.Unlock()
		// The replicas are cut off now: those holding writes the crash
		// lost must throw them away.
		for _, s := range c.slots {
			if d := s.current().r.n.data(); d.hist.replID == was.ReplID && d.offset() > info.Offset {
				c.count("replicas ahead of a crash")
			}
		}
	}
	c.serve(np)
}

// lineState is the data a stream's records leave.
func lineState(recs []streamRecord) map[string]string {
	m := make(map[string]string)
	for _, rec := range recs {
		if rec.ok {
			m[rec.key] = rec.value
		} else {
			delete(m, rec.key)
		}
	}
	return m
}

// restartDurableReplica closes old, s's replica, and starts another on
// its directory, which must serve at once exactly what old held.
func (c *chaosRun) restartDurableReplica(s *replicaSlot, old *replicaGen) {
	require.NoError(c.t, old.r.Close())
	if old.restarted {
		c.countRestartedSyncs(old)
	}
	was := old.r.n.data()
	want := snapshotOf(was.store.all())
	c.startReplica(s)
	r := s.current().r
	d := r.n.data()
	if d.offset() < was.offset() && d.hist.replID == "" {
		c.fail("%s reopened empty, but closed at offset %d of %s", s.name, was.offset(), was.hist.replID)
		return
	}
	if d.hist.replID != was.hist.replID {
		// It has synced already: the reads check where it went.
		c.count("replicas synced before the reopen was checked")
		return
	}
	got := snapshotOf(d.store.all())
	if r.n.data() != d || d.offset() != was.offset() {
		if d.offset() < was.offset() {
			c.fail("%s reopened at offset %d of %s, but closed at %d", s.name, d.offset(), d.hist.replID, was.offset())
		}
		c.count("replicas synced before the reopen was checked")
		return
	}
	if !reflect.DeepEqual(got, want) {
		c.fail("%s reopened at offset %d with %v, but closed with %v", s.name, d.offset(), got, want)
	}
	c.count("replica reopens checked")
}

// countRestartedSyncs adds the syncs of a replica instance started on a
// directory another instance used.
func (c *chaosRun) countRestartedSyncs(g *replicaGen) {
	info := g.r.Info()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.stats["restarted replicas: partial syncs"] += int(info.PartialSyncs)
	c.stats["restarted replicas: full syncs"] += int(info.FullSyncs)
	if info.FullSyncs == 0 {
		c.stats["restarted replicas that never full-synced"]++
	}
}

// crashFS is the OS's file system until crash is called; from then on
// every call fails, as if the process had died at that moment, and a
// write under way or started later leaves half its bytes (the kernel took
// them before the death).
type crashFS struct {
	osFS
	dead atomic.Bool
	torn atomic.Bool // a write was torn
}

var errChaosCrashed = errors.New("the process crashed (test)")

func (fs *crashFS) crash() { fs.dead.Store(true) }

func (fs *crashFS) alive() error {
	if fs.dead.Load() {
		return errChaosCrashed
	}
	return nil
}

func (fs *crashFS) MkdirAll(dir string) error {
	if err := fs.alive(); err != nil {
		return err
	}
	return fs.osFS.MkdirAll(dir)
}

func (fs *crashFS) OpenFile(name string, flag int, perm os.FileMode) (file, error) {
	if err := fs.alive(); err != nil {
		return nil, err
	}
	f, err := fs.osFS.OpenFile(name, flag, perm)
	if err != nil {
		return nil, err
	}
	return &crashFile{file: f, fs: fs}, nil
}

func (fs *crashFS) Rename(oldpath, newpath string) error {
	if err := fs.alive(); err != nil {
		return err
	}
	return fs.osFS.Rename(oldpath, newpath)
}

func (fs *crashFS) Remove(name string) error {
	if err := fs.alive(); err != nil {
		return err
	}
	return fs.osFS.Remove(name)
}

func (fs *crashFS) RemoveAll(path string) error {
	if err := fs.alive(); err != nil {
		return err
	}
	return fs.osFS.RemoveAll(path)
}

func (fs *crashFS) ReadDir(dir string) ([]string, error) {
	if err := fs.alive(); err != nil {
		return nil, err
	}
	return fs.osFS.ReadDir(dir)
}

func (fs *crashFS) SyncDir(dir string) error {
	if err := fs.alive(); err != nil {
		return err
	}
	return fs.osFS.SyncDir(dir)
}

type crashFile struct {
	file
	fs *crashFS
}

func (f *crashFile) Write(p []byte) (int, error) {
	if f.fs.dead.Load() {
		n, _ := f.file.Write(p[:len(p)/2])
		if n > 0 {
			f.fs.torn.Store(true)
		}
		return n, errChaosCrashed
	}
	return f.file.Write(p)
}

func (f *crashFile) Sync() error {
	if err := f.fs.alive(); err != nil {
		return err
	}
	return f.file.Sync()
}

func (f *crashFile) Truncate(size int64) error {
	if err := f.fs.alive(); err != nil {
		return err
	}
	return f.file.Truncate(size)
}
