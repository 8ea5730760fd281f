package replmap

// Regression tests for four defects a review of the data directory found
// (each failed before its fix).

import (
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/replmap/replmap/transport"
)

// TestCompactionOverlappingFullSync: a replica's background snapshot that
// a full sync overtakes (the generation it was writing is replaced, its
// log closed, its directory removed) is dropped; it must not fail the new
// generation.
func TestCompactionOverlappingFullSync(t *testing.T) {
	tr := transport.NewInmem()
	serve := func(p *Primary[string]) chan error {
		l, err := tr.Listen("primary")
		require.NoError(t, err)
		served := make(chan error, 1)
		go func() { served <- p.Serve(l) }()
		return served
	}
	p, err := NewPrimary[string](fastOpts(t)...)
	require.NoError(t, err)
	served := serve(p)
	for i := range 50 {
		require.NoError(t, p.Set(fmt.Sprintf("k%d", i), "a"))
	}
	fs := &faultFS{}
	r, err := NewReplica[string](tr, "primary", append(fastOpts(t), WithDataDir(t.TempDir()), WithFsync(FsyncAlways),
		optionFunc(func(c *config) { c.fsys = fs; c.snapshotMin = 1 << 50 }))...)
	require.NoError(t, err)
	defer r.Close()
	requireConverged(t, p, r)

	gate := make(chan struct{})
	fs.mu.Lock()
	fs.gateOnly = func(name string) bool { return strings.HasSuffix(name, "snap.tmp") }
	fs.syncGate = gate
	fs.mu.Unlock()
	compacted := make(chan struct{})
	go func() { compact(r.n.disk, r.n); close(compacted) }()
	waitFor(t, "the snapshot's fsync at the gate", func() bool { return fs.gated.Load() == 1 })
	fs.mu.Lock()
	fs.syncGate = nil
	fs.mu.Unlock()

	require.NoError(t, p.Close())
	<-served
	p, err = NewPrimary[string](append(fastOpts(t), WithEpoch(2))...)
	require.NoError(t, err)
	served = serve(p)
	defer func() {
		require.NoError(t, p.Close())
		<-served
	}()
	for i := range 200 {
		require.NoError(t, p.Set(fmt.Sprintf("k%d", i), "b"))
	}
	requireConverged(t, p, r)
	close(gate)
	<-compacted
	require.NoError(t, r.n.disk.failed(), "a snapshot cut short by a new generation failed the directory")
	require.NoError(t, p.Set("after", "c"))
	requireConverged(t, p, r)
}

// eioFS fails the first fsync of a segment once armed, after the caller
// lets it go: a writeback error, reported to that fsync only.
type eioFS struct {
	osFS
	armed            atomic.Bool
	entered, release chan struct{}
}

type eioFile struct {
	file
	fs   *eioFS
	name string
}

func (fs *eioFS) OpenFile(name string, flag int, perm os.FileMode) (file, error) {
	f, err := fs.osFS.OpenFile(name, flag, perm)
	if err != nil {
		return nil, err
	}
	return &eioFile{file: f, fs: fs, name: name}, nil
}

func (f *eioFile) Sync() error {
	if strings.HasSuffix(f.name, segmentSuffix) && f.fs.armed.CompareAndSwap(true, false) {
		close(f.fs.entered)
		<-f.fs.release
		return &os.PathError{Op: "sync", Path: f.name, Err: syscall.EIO}
	}
	return f.file.Sync()
}

// TestSyncFailureDuringRotation: a group-commit fsync that fails while a
// rotation closes its segment fails the log. The rotation's own fsync may
// succeed over the lost data: only "already closed" is moot.
func TestSyncFailureDuringRotation(t *testing.T) {
	fs := &eioFS{entered: make(chan struct{}), release: make(chan struct{})}
	l := openTestLog(t, fs, t.TempDir(), 4<<10)
	frames := testFrames(t, 200)
	require.NoError(t, l.append(frames[0]))
	target := l.offset()
	fs.armed.Store(true)
	synced := make(chan error, 1)
	go func() { synced <- l.sync(target) }()
	<-fs.entered
	for _, f := range frames[1:] {
		require.NoError(t, l.append(f)) // rotates
	}
	require.Greater(t, len(l.segments), 1)
	close(fs.release)
	err := <-synced
	failed := l.failed()
	_ = l.close()
	require.True(t, err != nil && failed != nil, "EIO swallowed (sync err=%v, log failed=%v)", err, failed)
}

// TestBitFlipBeforeZeroValueIsDamage: in a segment that grows with its
// writes, a bad frame before valid ones is damage even when a sector of
// zeros (a value of zeros) follows it: only a preallocated segment may
// have lost a sector.
func TestBitFlipBeforeZeroValueIsDamage(t *testing.T) {
	dir := t.TempDir()
	frames := testFrames(t, 20)
	big, err := appendSetFrame(nil, "zeros", make([]byte, 4096), 0, DefaultMaxValueSize)
	require.NoError(t, err)
	all := append(append(append([][]byte{}, frames[:10]...), big), frames[10:]...)
	l := openTestLog(t, osFS{}, dir, 1<<20)
	for _, f := range all {
		require.NoError(t, l.append(f))
	}
	require.NoError(t, l.sync(l.offset()))
	require.NoError(t, l.close())
	seg := lastSegment(t, dir)
	b, err := os.ReadFile(seg)
	require.NoError(t, err)
	at := segmentHeaderSize
	for _, f := range frames[:10] {
		at += len(f)
	}
	b[at+6] ^= 0x01
	require.NoError(t, os.WriteFile(seg, b, 0o644))
	_, err = openStreamLog(osFS{}, dir, 100, 1<<20, DefaultMaxFrameSize, slog.New(slog.DiscardHandler), nil)
	require.ErrorIs(t, err, ErrChecksum)
}

// TestSpareHandOff: rotations taking spare segments while the background
// goroutine makes the next ones, hundreds of times: no rotation may find
// the spare gone (which failed the log), and the log reopens whole.
func TestSpareHandOff(t *testing.T) {
	frames := testFrames(t, 64)
	for round := range 5 {
		dir := t.TempDir()
		l := openTestLog(t, osFS{}, dir, 300)
		l.startPrealloc(false)
		for i := range 3000 {
			require.NoError(t, l.append(frames[i%64]), "round %d append %d", round, i)
		}
		want := l.offset()
		require.NoError(t, l.close())
		l2, err := openStreamLog(osFS{}, dir, 100, 300, DefaultMaxFrameSize, slog.New(slog.DiscardHandler), nil)
		require.NoError(t, err)
		require.Equal(t, want, l2.offset())
		require.NoError(t, l2.close())
	}
}
