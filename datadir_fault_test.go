package replmap

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/replmap/replmap/transport"
)

// The data directory under file-system faults (D4): a write, fsync,
// rename or directory fsync that fails, is torn, or is where the process
// or the machine dies, at every such point of a scripted workload; and
// every file of a directory damaged by bit flips, truncations and
// deletions. Whatever happens, a reopened directory holds exactly the
// data of some prefix of the writes, including every write that was
// acknowledged as durable, or the open fails with an error that says
// why: nothing damaged is ever served.

// fileKind is what a file of a data directory is. A temporary file is of
// the kind it becomes (a snapshot's, the history record's).
type fileKind int

const (
	kindSegment fileKind = iota
	kindSnapshot
	kindHistory
	kindDir   // a directory fsync
	kindSpare // FsyncAlways's next segment, zeros made ahead
	kindOther
	numKinds
)

func (k fileKind) String() string {
	return [...]string{"segment", "snapshot", "history", "dir", "spare", "other"}[k]
}

// checkFaultErrors checks that a fault at pt in mode was reported, if it
// must be: a spare segment that could not be made is not an error (the
// log appends to a new file instead). If the process died making one,
// what comes after may fail, or there may be nothing after it.
func checkFaultErrors(t *testing.T, pt faultPoint, mode faultMode, errors int) {
	if pt.kind == kindSpare {
		if !mode.crash() {
			require.Zero(t, errors, "a spare segment that could not be made is not an error")
		}
		return
	}
	require.Positive(t, errors, "the fault was ignored: no error from an open, write, Sync or Close")
}

func kindOf(name string) fileKind {
	base := filepath.Base(name)
	switch {
	case base == spareName || base == spareNewName:
		return kindSpare
	case strings.HasSuffix(base, segmentSuffix):
		return kindSegment
	case strings.HasPrefix(base, historyFileName):
		return kindHistory
	case strings.HasPrefix(base, "snap"):
		return kindSnapshot
	}
	return kindOther
}

// fsOp is an operation a fault can hit.
type fsOp int

const (
	opWrite fsOp = iota
	opSync
	opTruncate
	opRename
	numOps
)

func (o fsOp) String() string { return [...]string{"write", "fsync", "truncate", "rename"}[o] }

// faultMode is what happens at the fault point.
type faultMode int

const (
	// modeError: the operation fails having done nothing; the file
	// system works again afterwards.
	modeError faultMode = iota
	// modeTear: a write writes half its bytes, then fails (an fsync
	// fails, a rename fails); the file system works again afterwards.
	modeTear
	// modeKill: the process dies there, in the middle of a write (half
	// its bytes written): every operation after it fails, and what
	// reached the kernel stays.
	modeKill
	// modePower: the machine dies there: as modeKill, and then every
	// file loses what was not fsynced.
	modePower
	numModes
)

func (m faultMode) String() string { return [...]string{"error", "tear", "kill", "power"}[m] }

func (m faultMode) crash() bool { return m == modeKill || m == modePower }

type faultPoint struct {
	kind fileKind
	op   fsOp
	n    int // the nth operation of its kind, from 1
}

func (p faultPoint) String() string { return fmt.Sprintf("%s %s #%d", p.kind, p.op, p.n) }

var (
	errInjected = errors.New("injected disk fault")
	errCrashed  = errors.New("the process has crashed")
)

// diskFS is the OS's file system with fault points counted per kind of
// file and operation, that fails, tears or crashes at one of them. It
// keeps, for every file written, how much of it an fsync made durable,
// to model a power loss; fsyncs themselves are not passed to the OS
// (what they make durable is modelled), which keeps the tests fast.
type diskFS struct {
	mu      sync.Mutex
	counts  [numKinds][numOps]int
	point   faultPoint
	mode    faultMode
	armed   bool
	hit     bool
	crashed bool
	synced  map[string]int64 // bytes an fsync made durable, by path
}

func newDiskFS() *diskFS { return &diskFS{synced: map[string]int64{}} }

// arm makes the file system fault at p, as m says.
func (d *diskFS) arm(p faultPoint, m faultMode) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.point, d.mode, d.armed = p, m, true
}

// at counts an operation and reports whether it is the fault point; err
// is errCrashed once the process has crashed.
func (d *diskFS) at(k fileKind, op fsOp) (fault bool, mode faultMode, err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.crashed {
		return false, 0, errCrashed
	}
	d.counts[k][op]++
	if d.armed && d.point == (faultPoint{k, op, d.counts[k][op]}) {
		d.hit = true
		d.crashed = d.mode.crash()
		return true, d.mode, nil
	}
	return false, 0, nil
}

func (d *diskFS) alive() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.crashed {
		return errCrashed
	}
	return nil
}

// points returns every fault point counted so far.
func (d *diskFS) points() []faultPoint {
	d.mu.Lock()
	defer d.mu.Unlock()
	var ps []faultPoint
	for k := range numKinds {
		for op := range numOps {
			for n := 1; n <= d.counts[k][op]; n++ {
				ps = append(ps, faultPoint{k, op, n})
			}
		}
	}
	return ps
}

// powerLoss cuts every file written back to what an fsync made durable.
func (d *diskFS) powerLoss(t *testing.T) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for name, size := range d.synced {
		st, err := os.Stat(name)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		require.NoError(t, err)
		if st.Size() > size {
			require.NoError(t, os.Truncate(name, size))
		}
	}
}

func (d *diskFS) MkdirAll(dir string) error {
	if err := d.alive(); err != nil {
		return err
	}
	return osFS{}.MkdirAll(dir)
}

func (d *diskFS) OpenFile(name string, flag int, perm os.FileMode) (file, error) {
	if err := d.alive(); err != nil {
		return nil, err
	}
	f, err := osFS{}.OpenFile(name, flag, perm)
	if err != nil {
		return nil, err
	}
	if flag&(os.O_WRONLY|os.O_RDWR) != 0 {
		size, err := f.Seek(0, 2)
		if err == nil {
			_, err = f.Seek(0, 0)
		}
		if err != nil {
			f.Close()
			return nil, err
		}
		d.mu.Lock()
		if _, ok := d.synced[name]; !ok || flag&os.O_TRUNC != 0 {
			// A file this run has not written is as durable as it
			// is (a clean Close left it); a truncation counts as
			// durable at once.
			d.synced[name] = size
		}
		d.mu.Unlock()
	}
	return &diskFile{file: f, fs: d, name: name, kind: kindOf(name)}, nil
}

func (d *diskFS) Rename(oldpath, newpath string) error {
	fault, mode, err := d.at(kindOf(newpath), opRename)
	if err != nil {
		return err
	}
	if fault && mode != modeTear {
		return errInjected // not renamed (the crash comes before it)
	}
	if err := os.Rename(oldpath, newpath); err != nil {
		return err
	}
	d.mu.Lock()
	if n, ok := d.synced[oldpath]; ok {
		d.synced[newpath] = n
		delete(d.synced, oldpath)
	}
	d.mu.Unlock()
	if fault {
		return errInjected // renamed, but reported failed
	}
	return nil
}

func (d *diskFS) Remove(name string) error {
	if err := d.alive(); err != nil {
		return err
	}
	d.forget(name)
	return os.Remove(name)
}

func (d *diskFS) RemoveAll(path string) error {
	if err := d.alive(); err != nil {
		return err
	}
	d.forget(path)
	return os.RemoveAll(path)
}

func (d *diskFS) forget(path string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for name := range d.synced {
		if name == path || strings.HasPrefix(name, path+string(filepath.Separator)) {
			delete(d.synced, name)
		}
	}
}

func (d *diskFS) ReadDir(dir string) ([]string, error) {
	if err := d.alive(); err != nil {
		return nil, err
	}
	return osFS{}.ReadDir(dir)
}

func (d *diskFS) SyncDir(dir string) error {
	fault, _, err := d.at(kindDir, opSync)
	if err != nil {
		return err
	}
	if fault {
		return errInjected
	}
	return nil
}

type diskFile struct {
	file
	fs   *diskFS
	name string
	kind fileKind
}

func (f *diskFile) Write(p []byte) (int, error) {
	fault, mode, err := f.fs.at(f.kind, opWrite)
	if err != nil {
		return 0, err
	}
	if !fault {
		return f.file.Write(p)
	}
	if mode == modeError {
		return 0, errInjected
	}
	n, err := f.file.Write(p[:len(p)/2])
	if err == nil {
		err = errInjected
	}
	return n, err
}

func (f *diskFile) Sync() error {
	fault, _, err := f.fs.at(f.kind, opSync)
	if err != nil {
		return err
	}
	if fault {
		return errInjected
	}
	st, err := f.file.(interface{ Stat() (os.FileInfo, error) }).Stat()
	if err != nil {
		return err
	}
	size := st.Size()
	f.fs.mu.Lock()
	f.fs.synced[f.name] = size
	f.fs.mu.Unlock()
	return nil
}

func (f *diskFile) Truncate(size int64) error {
	fault, mode, err := f.fs.at(f.kind, opTruncate)
	if err != nil {
		return err
	}
	if fault && mode == modeError {
		return errInjected
	}
	if err := f.file.Truncate(size); err != nil {
		return err
	}
	if fault {
		return errInjected
	}
	return nil
}

func (f *diskFile) Read(p []byte) (int, error) {
	if err := f.fs.alive(); err != nil {
		return 0, err
	}
	return f.file.Read(p)
}

func (f *diskFile) Seek(offset int64, whence int) (int64, error) {
	if err := f.fs.alive(); err != nil {
		return 0, err
	}
	return f.file.Seek(offset, whence)
}

// writeStates are the writes of a workload, as the states they produce: the
// data at every offset the stream went through.
type writeStates struct {
	model  map[string]string
	states map[uint64]map[string]string
}

func newWriteStates(start uint64) *writeStates {
	h := &writeStates{model: map[string]string{}, states: map[uint64]map[string]string{}}
	h.states[start] = map[string]string{}
	return h
}

// note records a write made at whatever offset it took the stream to;
// applied says whether it was (the offset moved).
func (h *writeStates) note(del bool, key, value string, off uint64) {
	if del {
		delete(h.model, key)
	} else {
		h.model[key] = value
	}
	h.states[off] = maps.Clone(h.model)
}

// upTo returns the states up to offset end, continuing from there.
func (h *writeStates) upTo(end uint64) *writeStates {
	c := &writeStates{model: maps.Clone(h.states[end]), states: map[uint64]map[string]string{}}
	for off, st := range h.states {
		if off <= end {
			c.states[off] = st
		}
	}
	return c
}

// check reports why data at offset off is not exactly the state of a
// prefix of the writes, or nil.
func (h *writeStates) check(off uint64, data map[string]string) error {
	want, ok := h.states[off]
	if !ok {
		return fmt.Errorf("offset %d is not the end of any write", off)
	}
	if !maps.Equal(want, data) {
		return fmt.Errorf("data at offset %d differs from the writes up to there: want %v, got %v", off, want, data)
	}
	return nil
}

// logBuffer keeps a node's logs, to show when a run fails.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) Reset() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.b.Reset()
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// faultRun is one run of the scripted workload.
type faultRun struct {
	t      *testing.T
	dir    string
	fs     *diskFS
	policy FsyncPolicy
	logs   *logBuffer
	hist   *writeStates

	acked    uint64 // every write below this offset was acknowledged as durable
	failed   error  // the first error a write or Sync returned
	failedAt uint64 // the offset then
	errors   int    // every error seen, opens and closes included
}

const (
	faultWrites    = 60 // writes in the workload, across one restart
	faultSegment   = 256
	faultSnapEvery = 17 // a snapshot after every this many writes
	faultSyncEvery = 7  // a Sync after every this many writes
)

func (r *faultRun) opts() []Option {
	log := slog.New(slog.NewTextHandler(r.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	return []Option{
		WithLogger(log), WithDataDir(r.dir), WithFsync(r.policy), WithEpoch(4),
		optionFunc(func(c *config) {
			c.fsys = r.fs
			c.segmentSize = faultSegment
			c.snapshotMin = 1 << 50 // snapshots only where the script takes them
			c.spareInline = true    // FsyncAlways's spare segments: at the same points in every run
		}),
	}
}

// workload writes through r.fs: NewPrimary on an empty directory, writes
// with rotations, snapshots and Syncs, a restart, more of the same. It
// stops at the first error.
func (r *faultRun) workload() {
	for phase := range 2 {
		if !r.phase(phase*faultWrites/2, (phase+1)*faultWrites/2) {
			return
		}
	}
}

// phase opens a Primary on the directory, makes writes from to to, and
// closes it. It reports whether all went well.
func (r *faultRun) phase(from, to int) bool {
	p, err := NewPrimary[string](r.opts()...)
	if err != nil {
		r.errors++
		return false
	}
	r.acked = max(r.acked, p.Offset()) // the open made what it loaded durable
	if r.writes(p, from, to) {
		// A crash abandons p, but its goroutines must end: Close can
		// no longer write anything once the file system refuses
		// everything.
		if err := p.Close(); err != nil {
			r.errors++
		}
		return false
	}
	off := p.Offset()
	if err := p.Close(); err != nil {
		r.errors++
		return false
	}
	r.acked = off
	require.ErrorIs(r.t, p.Sync(), ErrClosed)
	return true
}

// writes makes writes from to to on p, checking fail-stop: after the
// first error, every write and Sync fails and nothing is applied. It
// reports whether it stopped.
func (r *faultRun) writes(p *Primary[string], from, to int) (stopped bool) {
	t := r.t
	for i := from; i < to; i++ {
		key := fmt.Sprintf("k%d", i%9)
		value := fmt.Sprintf("v%d.%s", i, strings.Repeat("x", i%23))
		del := i%5 == 3
		before := p.Offset()
		var err error
		if del {
			err = p.Delete(key)
		} else {
			err = p.Set(key, value)
		}
		after := p.Offset()
		if after != before {
			r.hist.note(del, key, value, after)
		}
		if r.failed != nil {
			require.Error(t, err, "write %d after the directory failed (%v)", i, r.failed)
			require.Equal(t, r.failedAt, after, "write %d applied after the directory failed", i)
			continue
		}
		if err != nil {
			r.failed, r.failedAt = err, after
			r.errors++
			continue
		}
		if r.policy == FsyncAlways {
			r.acked = after
		}
		if i%faultSyncEvery == faultSyncEvery-1 {
			if err := p.Sync(); err != nil {
				r.failed, r.failedAt = err, p.Offset()
				r.errors++
				continue
			}
			r.acked = after
		}
		if i%faultSnapEvery == faultSnapEvery-1 {
			compact(p.n.disk, p.n)
		}
	}
	if r.failed != nil {
		require.Error(t, p.Sync(), "Sync after the directory failed")
		require.Error(t, p.Set("after", "x"), "a write after the directory failed")
		require.Equal(t, r.failedAt, p.Offset())
		return true
	}
	return r.fs.alive() != nil
}

// reopen opens the directory, as after a restart, and checks it holds a
// prefix of the writes with every acknowledged one. It opens it on the
// OS's file system with REPLMAP_DAMAGE_FULL, else on a diskFS without
// faults: the same but for fsyncs, which take most of the time.
func (r *faultRun) reopen() {
	t := r.t
	if r.fs.mode == modePower {
		r.fs.powerLoss(t)
	}
	var fsys fileSystem = newDiskFS()
	if damageFull() {
		fsys = osFS{}
	}
	p, err := NewPrimary[string](WithLogger(slog.New(slog.NewTextHandler(r.logs, nil))), WithDataDir(r.dir),
		optionFunc(func(c *config) { c.fsys = fsys }))
	require.NoError(t, err, "reopening after the fault")
	defer func() { require.NoError(t, p.Close()) }()
	off := p.Offset()
	require.GreaterOrEqual(t, off, r.acked, "a write acknowledged as durable was lost")
	require.NoError(t, r.hist.check(off, snapshotOf(p.All())))
	if off > 0 {
		require.Equal(t, uint64(4), p.Info().Epoch, "epoch kept")
	}
}

// TestDataDirFaults: at every write, fsync, truncate and rename of a
// scripted workload (rotations, snapshots, history records, a restart),
// under FsyncAlways and FsyncNever, a fault that fails the operation,
// tears it, kills the process there, or cuts the power there: writes stop
// with an error and are never applied after it, and the directory,
// reopened, holds exactly the data of a prefix of the writes that
// includes every one acknowledged as durable (a Set under FsyncAlways,
// the writes before a Sync or a Close that returned nil).
func TestDataDirFaults(t *testing.T) {
	stride := 1
	if !damageFull() {
		stride = 4 // a quarter of the runs; REPLMAP_DAMAGE_FULL=1 runs them all
	}
	total := 0
	for _, policy := range []FsyncPolicy{FsyncAlways, FsyncNever} {
		t.Run(policy.String(), func(t *testing.T) {
			// A clean run counts the points.
			clean := &faultRun{t: t, dir: t.TempDir(), fs: newDiskFS(), policy: policy, logs: &logBuffer{}, hist: newWriteStates(0)}
			clean.workload()
			require.Zero(t, clean.errors, "the clean run failed:\n%s", clean.logs)
			clean.reopen()
			points := clean.fs.points()
			var kinds [numKinds]int
			for _, pt := range points {
				kinds[pt.kind]++
			}
			t.Logf("%d fault points: %d segment, %d snapshot, %d history, %d directory fsyncs, %d spare segment", len(points),
				kinds[kindSegment], kinds[kindSnapshot], kinds[kindHistory], kinds[kindDir], kinds[kindSpare])
			require.Positive(t, kinds[kindSegment])
			require.Positive(t, kinds[kindSnapshot])
			require.Positive(t, kinds[kindHistory])

			runs := 0
			for i, pt := range points {
				for mode := range numModes {
					if (i+int(mode))%stride != 0 {
						continue
					}
					runs++
					r := &faultRun{t: t, dir: t.TempDir(), fs: newDiskFS(), policy: policy, logs: &logBuffer{}, hist: newWriteStates(0)}
					r.fs.arm(pt, mode)
					ok := t.Run(fmt.Sprintf("%s/%s", pt, mode), func(t *testing.T) {
						r.t = t
						r.workload()
						require.True(t, r.fs.hit, "the fault point was not reached")
						checkFaultErrors(t, pt, mode, r.errors)
						r.reopen()
					})
					if !ok {
						t.Logf("logs of the failed run:\n%s", r.logs)
						return
					}
				}
			}
			total += runs
			t.Logf("%d runs", runs)
		})
	}
	t.Logf("%d fault runs in all", total)
}

// TestDataDirFaultsInRecovery: the same faults at every point of a
// restart that finds a torn tail (its truncation and fsync, the new
// history record) and of the writes after it.
func TestDataDirFaultsInRecovery(t *testing.T) {
	dir, hist, logs := damagedPrimaryDir(t)
	files := readTree(t, dir)
	d := describeDir(t, files)
	files[d.lastSegment] = files[d.lastSegment][:len(files[d.lastSegment])-3]
	tornAt := d.lastStart + uint64(d.lastFrame-segmentHeaderSize)
	run := func(t *testing.T, dfs *diskFS) *faultRun {
		writeTree(t, dir, files)
		logs.Reset()
		r := &faultRun{t: t, dir: dir, fs: dfs, policy: FsyncAlways, logs: logs, hist: hist.upTo(tornAt), acked: tornAt}
		r.phase(faultWrites, faultWrites+10)
		return r
	}
	clean := run(t, newDiskFS())
	require.Zero(t, clean.errors, "%s", logs)
	clean.reopen()
	points := clean.fs.points()
	require.Contains(t, points, faultPoint{kindSegment, opTruncate, 1}, "the torn tail is cut off")
	stride := 1
	if !damageFull() {
		stride = 2
	}
	runs := 0
	for i, pt := range points {
		for mode := range numModes {
			if (i+int(mode))%stride != 0 {
				continue
			}
			runs++
			dfs := newDiskFS()
			dfs.arm(pt, mode)
			if !t.Run(fmt.Sprintf("%s/%s", pt, mode), func(t *testing.T) {
				r := run(t, dfs)
				require.True(t, r.fs.hit, "the fault point was not reached")
				checkFaultErrors(t, pt, mode, r.errors)
				r.reopen()
			}) {
				t.Logf("logs of the failed run:\n%s", logs)
				return
			}
		}
	}
	t.Logf("%d fault points, %d runs", len(points), runs)
}

func damageFull() bool { return os.Getenv("REPLMAP_DAMAGE_FULL") != "" }

// readTree returns every file under dir, by path relative to it.
func readTree(t *testing.T, dir string) map[string][]byte {
	files := map[string][]byte{}
	require.NoError(t, filepath.WalkDir(dir, func(path string, e fs.DirEntry, err error) error {
		if err != nil || e.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		rel, _ := filepath.Rel(dir, path)
		files[rel] = b
		return err
	}))
	return files
}

// writeTree makes dir hold exactly files, rewriting only what differs.
func writeTree(t *testing.T, dir string, files map[string][]byte) {
	have := map[string]bool{}
	require.NoError(t, os.MkdirAll(dir, 0o755))
	require.NoError(t, filepath.WalkDir(dir, func(path string, e fs.DirEntry, err error) error {
		if err != nil || path == dir {
			return err
		}
		rel, _ := filepath.Rel(dir, path)
		if e.IsDir() {
			if !slices.ContainsFunc(slices.Collect(maps.Keys(files)), func(f string) bool { return strings.HasPrefix(f, rel+string(filepath.Separator)) }) {
				require.NoError(t, os.RemoveAll(path))
				return fs.SkipDir
			}
			return nil
		}
		b, ok := files[rel]
		if !ok {
			return os.Remove(path)
		}
		cur, err := os.ReadFile(path)
		if err == nil && bytes.Equal(cur, b) {
			have[rel] = true
		}
		return err
	}))
	for rel, b := range files {
		if have[rel] {
			continue
		}
		path := filepath.Join(dir, rel)
		require.NoError(t, os.MkdirAll(filepath.Dir(path), 0o755))
		require.NoError(t, os.WriteFile(path, b, 0o644))
	}
}

// damagePositions returns the byte positions of a file of size n to damage:
// every one with REPLMAP_DAMAGE_FULL, else every third of a small file
// (the history record), every other one of the headers, every 37th and
// the last four.
func damagePositions(n int) []int {
	var ps []int
	for i := range n {
		if damageFull() || n <= 128 && i%3 == 0 || i < segmentHeaderSize+8 && i%2 == 0 || i%37 == 0 || i >= n-4 {
			ps = append(ps, i)
		}
	}
	return ps
}

// opened is what a node opened on a damaged directory serves.
type opened struct {
	offset uint64
	data   map[string]string
}

// damageCounts counts the outcomes of a damage sweep.
type damageCounts struct{ cases, errors, prefixes int }

// sweepDamage damages every file of the directory files describes, one
// case at a time (a bit flipped at each position, a truncation at each
// length, the file deleted), opens it, and checks the outcome: an error
// wrapping one of allowed that names the damaged file, or exactly the
// data of a prefix of the writes (never a wrong value). A torn tail of
// the last segment must open; a flipped bit may open only as one (in the
// last frame of the last segment, which is dropped).
func sweepDamage(t *testing.T, dir string, files map[string][]byte, d dirFiles, hist *writeStates, allowed []error,
	open func() (opened, error)) damageCounts {
	var c damageCounts
	try := func(rel, what string, damaged []byte, flipped, truncatedTo int) bool {
		c.cases++
		writeTree(t, dir, files)
		path := filepath.Join(dir, rel)
		if damaged == nil {
			require.NoError(t, os.Remove(path))
		} else {
			require.NoError(t, os.WriteFile(path, damaged, 0o644))
		}
		got, err := open()
		if err != nil {
			c.errors++
			if d.tornTail(rel, truncatedTo) {
				return assert.NoError(t, err, "%s %s: a torn tail must be dropped", rel, what)
			}
			ok := slices.ContainsFunc(allowed, func(e error) bool { return errors.Is(err, e) })
			name := filepath.Base(rel)
			if damaged == nil {
				name = filepath.Dir(path) // a deleted file's neighbour, or its directory
			}
			return assert.True(t, ok, "%s %s: %v", rel, what, err) &&
				assert.Contains(t, err.Error(), name, "%s %s: the error names the file", rel, what)
		}
		c.prefixes++
		if flipped >= 0 && !(rel == d.lastSegment && flipped >= d.lastFrame &&
			got.offset == d.lastStart+uint64(d.lastFrame-segmentHeaderSize)) {
			return assert.Fail(t, "damage served", "%s %s: opened at offset %d", rel, what, got.offset)
		}
		return assert.NoError(t, hist.check(got.offset, got.data), "%s %s: served", rel, what)
	}
	for _, rel := range slices.Sorted(maps.Keys(files)) {
		orig := files[rel]
		for _, pos := range damagePositions(len(orig)) {
			b := bytes.Clone(orig)
			b[pos] ^= 1 << (pos % 8)
			if !try(rel, fmt.Sprintf("bit %d of byte %d flipped", pos%8, pos), b, pos, -1) {
				return c
			}
			if !try(rel, fmt.Sprintf("truncated to %d bytes", pos), orig[:pos], -1, pos) {
				return c
			}
		}
		if !try(rel, "deleted", nil, -1, -1) {
			return c
		}
	}
	writeTree(t, dir, files)
	return c
}

// dirFiles describes a data directory: its last segment and its snapshot.
type dirFiles struct {
	lastSegment string // relative path
	lastStart   uint64
	lastFrame   int // where the last segment's last frame starts in it
	snapAt      uint64
	segments    int
}

func describeDir(t *testing.T, files map[string][]byte) dirFiles {
	var d dirFiles
	snaps := 0
	for _, rel := range slices.Sorted(maps.Keys(files)) {
		base := filepath.Base(rel)
		if s, ok := parseSegmentName(base); ok {
			d.lastSegment, d.lastStart = rel, s
			d.segments++
		}
		if s, ok := parseSnapshotName(base); ok {
			d.snapAt = s
			snaps++
		}
	}
	require.Equal(t, 1, snaps, "one snapshot")
	b := files[d.lastSegment]
	for pos := segmentHeaderSize; pos < len(b); {
		n, ok := validFrame(b[pos:], DefaultMaxFrameSize)
		require.True(t, ok)
		d.lastFrame, pos = pos, pos+n
	}
	require.Positive(t, d.lastFrame, "the last segment holds frames")
	return d
}

// tornTail reports whether truncating rel to n bytes cuts only the tail
// of the last segment after the snapshot: what a crash can leave, which
// must open.
func (d dirFiles) tornTail(rel string, n int) bool {
	return rel == d.lastSegment && n >= 0 &&
		(n < segmentHeaderSize && d.lastStart >= d.snapAt ||
			n >= segmentHeaderSize && d.lastStart+uint64(n-segmentHeaderSize) >= d.snapAt)
}

// damagedPrimaryDir writes the fault workload's directory, cleanly, and
// returns it with the writes' states.
func damagedPrimaryDir(t *testing.T) (string, *writeStates, *logBuffer) {
	r := &faultRun{t: t, dir: t.TempDir(), fs: newDiskFS(), policy: FsyncNever, logs: &logBuffer{}, hist: newWriteStates(0)}
	r.workload()
	require.Zero(t, r.errors, "%s", r.logs)
	return r.dir, r.hist, r.logs
}

// TestDataDirDamage: every file of a primary's directory (the history
// record, a snapshot, segments before and after it) with a bit flipped at
// many positions, truncated at as many lengths, or deleted: NewPrimary
// fails with ErrChecksum or ErrLostState naming the file, or serves
// exactly the data of a prefix of the writes; a torn tail of the last
// segment opens.
func TestDataDirDamage(t *testing.T) {
	dir, hist, logs := damagedPrimaryDir(t)
	files := readTree(t, dir)
	d := describeDir(t, files)
	t.Logf("%v", slices.Sorted(maps.Keys(files)))
	require.Greater(t, d.segments, 3)
	require.Less(t, d.lastStart, d.snapAt+1<<20)
	size := 0
	for _, b := range files {
		size += len(b)
	}
	t.Logf("%d files, %d bytes; snapshot at %d, last segment from %d", len(files), size, d.snapAt, d.lastStart)
	open := func() (opened, error) {
		logs.Reset()
		p, err := NewPrimary[string](WithLogger(slog.New(slog.NewTextHandler(logs, nil))), WithDataDir(dir),
			optionFunc(func(c *config) { c.fsys = newDiskFS() }))
		if err != nil {
			return opened{}, err
		}
		defer func() { require.NoError(t, p.Close()) }()
		return opened{p.Offset(), snapshotOf(p.All())}, nil
	}
	c := sweepDamage(t, dir, files, d, hist, []error{ErrChecksum, ErrLostState}, open)
	t.Logf("%d damage cases: %d refused, %d opened on a prefix", c.cases, c.errors, c.prefixes)
}

// TestDataDirLostState: a directory whose history record survives but
// whose data is gone (the generation, its snapshot, or its log) fails
// NewPrimary with ErrLostState, and leaves it as it is; with
// WithAllowDataLoss the primary starts empty in a new history, its epoch
// kept, and the directory works from then on.
func TestDataDirLostState(t *testing.T) {
	dir, _, logs := damagedPrimaryDir(t)
	files := readTree(t, dir)
	gen := filepath.Join(dir, genName(1))
	log := WithLogger(slog.New(slog.NewTextHandler(logs, nil)))
	for name, lose := range map[string]func() error{
		"generation": func() error { return os.RemoveAll(gen) },
		"snapshot": func() error {
			for rel := range files {
				if _, ok := parseSnapshotName(filepath.Base(rel)); ok {
					return os.Remove(filepath.Join(dir, rel))
				}
			}
			return errors.New("no snapshot")
		},
		"log": func() error {
			for rel := range files {
				if _, ok := parseSegmentName(filepath.Base(rel)); ok {
					if err := os.Remove(filepath.Join(dir, rel)); err != nil {
						return err
					}
				}
			}
			return nil
		},
	} {
		t.Run(name, func(t *testing.T) {
			writeTree(t, dir, files)
			require.NoError(t, lose())
			for range 2 { // refused, and left as it was
				_, err := NewPrimary[string](log, WithDataDir(dir))
				require.ErrorIs(t, err, ErrLostState)
				assert.Contains(t, err.Error(), gen)
			}
			p, err := NewPrimary[string](log, WithDataDir(dir), WithAllowDataLoss())
			require.NoError(t, err)
			assert.Zero(t, p.Len())
			assert.Zero(t, p.Offset())
			assert.Equal(t, uint64(4), p.Info().Epoch, "epoch kept")
			assert.Empty(t, p.Info().ReplID2, "a new history: nothing continues the lost one")
			require.NoError(t, p.Set("after", "loss"))
			require.NoError(t, p.Close())

			p, err = NewPrimary[string](log, WithDataDir(dir))
			require.NoError(t, err)
			assert.Equal(t, map[string]string{"after": "loss"}, snapshotOf(p.All()))
			assert.Equal(t, uint64(4), p.Info().Epoch)
			require.NoError(t, p.Close())
		})
	}
}

// TestDataDirOptionErrors: D0. A data directory is created if missing; a
// path that is a regular file is an error for either role; Sync without
// a data directory returns nil, and ErrClosed after Close.
func TestDataDirOptionErrors(t *testing.T) {
	quiet := WithLogger(slog.New(slog.DiscardHandler))
	regular := filepath.Join(t.TempDir(), "file")
	require.NoError(t, os.WriteFile(regular, []byte("not a directory"), 0o644))
	for _, dir := range []string{regular, filepath.Join(regular, "below")} {
		_, err := NewPrimary[string](quiet, WithDataDir(dir))
		assert.Error(t, err, dir)
		_, err = NewReplica[string](transport.NewInmem(), "primary", quiet, WithDataDir(dir))
		assert.Error(t, err, dir)
	}
	b, err := os.ReadFile(regular)
	require.NoError(t, err)
	assert.Equal(t, "not a directory", string(b), "left alone")

	missing := filepath.Join(t.TempDir(), "a", "b")
	p, err := NewPrimary[string](quiet, WithDataDir(missing))
	require.NoError(t, err)
	require.NoError(t, p.Set("k", "v"))
	require.NoError(t, p.Sync())
	require.NoError(t, p.Close())
	assert.ErrorIs(t, p.Sync(), ErrClosed)
	assert.DirExists(t, filepath.Join(missing, genName(1)))

	p, err = NewPrimary[string](quiet)
	require.NoError(t, err)
	require.NoError(t, p.Set("k", "v"))
	assert.NoError(t, p.Sync(), "nothing to sync without a data directory")
	require.NoError(t, p.Close())
	assert.ErrorIs(t, p.Sync(), ErrClosed)
}

// TestReplicaDataDirDamage: the damage sweep on a replica's directory (a
// generation its full sync wrote, a snapshot it took later, the log).
// NewReplica fails with ErrChecksum naming the file, or serves at once
// exactly the data of a prefix of its primary's writes; a replica whose
// data is gone starts empty (it only has to sync), never ErrLostState.
func TestReplicaDataDirDamage(t *testing.T) {
	tr := transport.NewInmem()
	logs := &logBuffer{}
	quiet := WithLogger(slog.New(slog.NewTextHandler(logs, nil)))
	p := startPrimary[string](t, tr, "primary", quiet)
	hist := newWriteStates(0)
	write := func(i int) {
		key, value := fmt.Sprintf("k%d", i%9), fmt.Sprintf("v%d.%s", i, strings.Repeat("x", i%23))
		if i%5 == 3 {
			require.NoError(t, p.Delete(key))
		} else {
			require.NoError(t, p.Set(key, value))
		}
		hist.note(i%5 == 3, key, value, p.Offset())
	}
	for i := range 40 {
		write(i)
	}
	dir := t.TempDir()
	ropts := []Option{quiet, WithDataDir(dir), optionFunc(func(c *config) {
		c.fsys = newDiskFS()
		c.segmentSize, c.snapshotMin = faultSegment, 1<<50
	})}
	r, err := NewReplica[string](tr, "primary", ropts...)
	require.NoError(t, err)
	for i := 40; i < 100; i++ {
		write(i)
		if i == 70 {
			requireConverged(t, p, r)
			compact(r.n.disk, r.n)
		}
	}
	requireConverged(t, p, r)
	require.NoError(t, r.Close())
	files := readTree(t, dir)
	d := describeDir(t, files)
	require.Greater(t, d.segments, 2)
	t.Logf("%d files; snapshot at %d, last segment from %d", len(files), d.snapAt, d.lastStart)

	open := func() (opened, error) {
		logs.Reset()
		r, err := NewReplica[string](tr, "nowhere", ropts...)
		if err != nil {
			return opened{}, err
		}
		defer func() { require.NoError(t, r.Close()) }()
		return opened{r.Offset(), snapshotOf(r.All())}, nil
	}
	got, err := open()
	require.NoError(t, err)
	require.Equal(t, p.Offset(), got.offset, "undamaged, it serves everything")
	c := sweepDamage(t, dir, files, d, hist, []error{ErrChecksum}, open)
	t.Logf("%d damage cases: %d refused, %d opened on a prefix", c.cases, c.errors, c.prefixes)
}
