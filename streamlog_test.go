package replmap

import (
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// faultFS is the OS's file system with faults injected where a test asks:
// a write or fsync of a file can fail, or an fsync can wait on a gate.
type faultFS struct {
	osFS
	mu        sync.Mutex
	failWrite func(name string) error // called before each write
	failSync  func(name string) error // called before each fsync
	syncGate  chan struct{}           // if set, each fsync receives from it first
	gateOnly  func(name string) bool  // if set, only the fsyncs of the files it accepts meet the gate
	syncs     atomic.Int64
	gated     atomic.Int64 // fsyncs that have reached the gate
}

func (fs *faultFS) OpenFile(name string, flag int, perm os.FileMode) (file, error) {
	f, err := fs.osFS.OpenFile(name, flag, perm)
	if err != nil {
		return nil, err
	}
	return &faultFile{file: f, fs: fs, name: name}, nil
}

func (fs *faultFS) hooks() (func(string) error, func(string) error, chan struct{}) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	return fs.failWrite, fs.failSync, fs.syncGate
}

// gates reports whether an fsync of name meets the gate.
func (fs *faultFS) gates(name string) bool {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	return fs.gateOnly == nil || fs.gateOnly(name)
}

type faultFile struct {
	file
	fs   *faultFS
	name string
}

func (f *faultFile) Write(p []byte) (int, error) {
	if fail, _, _ := f.fs.hooks(); fail != nil {
		if err := fail(f.name); err != nil {
			return 0, err
		}
	}
	return f.file.Write(p)
}

func (f *faultFile) Sync() error {
	_, fail, gate := f.fs.hooks()
	if gate != nil && f.fs.gates(f.name) {
		f.fs.gated.Add(1)
		<-gate
	}
	if fail != nil {
		if err := fail(f.name); err != nil {
			return err
		}
	}
	f.fs.syncs.Add(1)
	return f.file.Sync()
}

func testFrames(t testing.TB, n int) [][]byte {
	frames := make([][]byte, n)
	for i := range frames {
		var err error
		frames[i], err = appendSetFrame(nil, "key"+strconv.Itoa(i), "value "+strconv.Itoa(i), 0, DefaultMaxValueSize)
		require.NoError(t, err)
	}
	return frames
}

func openTestLog(t testing.TB, fsys fileSystem, dir string, maxSegment int64) *streamLog {
	t.Helper()
	l, err := openStreamLog(fsys, dir, 100, maxSegment, DefaultMaxFrameSize, slog.New(slog.DiscardHandler), nil)
	require.NoError(t, err)
	return l
}

// logEnd returns the stream end a set of frames reaches from offset 100.
func logEnd(frames [][]byte) uint64 {
	end := uint64(100)
	for _, f := range frames {
		end += uint64(len(f))
	}
	return end
}

func TestStreamLogReopen(t *testing.T) {
	dir := t.TempDir()
	frames := testFrames(t, 500)
	l := openTestLog(t, osFS{}, dir, 4<<10) // small segments: several rotations
	for _, f := range frames[:300] {
		require.NoError(t, l.append(f[:3], f[3:]))
	}
	require.NoError(t, l.close())

	l = openTestLog(t, osFS{}, dir, 4<<10)
	assert.Equal(t, logEnd(frames[:300]), l.offset(), "reopened at its end")
	for _, f := range frames[300:] {
		require.NoError(t, l.append(f))
	}
	require.NoError(t, l.close())

	l = openTestLog(t, osFS{}, dir, 4<<10)
	defer l.close()
	assert.Equal(t, logEnd(frames), l.offset())
	assert.Greater(t, len(l.segments), 3)
	// The segments hold exactly the frames, contiguously.
	var all []byte
	for _, s := range l.segments {
		b, err := os.ReadFile(filepath.Join(dir, segmentName(s)))
		require.NoError(t, err)
		all = append(all, b[segmentHeaderSize:]...)
	}
	var want []byte
	for _, f := range frames {
		want = append(want, f...)
	}
	assert.Equal(t, want, all)
}

// lastSegment returns the path of the log's newest segment.
func lastSegment(t *testing.T, dir string) string {
	names, err := osFS{}.ReadDir(dir)
	require.NoError(t, err)
	var last string
	for _, n := range names {
		if _, ok := parseSegmentName(n); ok {
			last = n
		}
	}
	return filepath.Join(dir, last)
}

func writeTestLog(t *testing.T, dir string, frames [][]byte, maxSegment int64) {
	l := openTestLog(t, osFS{}, dir, maxSegment)
	for _, f := range frames {
		require.NoError(t, l.append(f))
	}
	require.NoError(t, l.close())
}

// TestStreamLogTornTail: a frame cut short at the end of the last
// segment, or a last frame whose bytes were never written (zeros), is
// dropped; the log reopens at the frame before and appends after it.
func TestStreamLogTornTail(t *testing.T) {
	frames := testFrames(t, 50)
	for name, tear := range map[string]func(b []byte) []byte{
		"cut short": func(b []byte) []byte { return b[:len(b)-3] },
		"zeroed": func(b []byte) []byte {
			last := len(frames[49])
			for i := len(b) - last + 6; i < len(b); i++ {
				b[i] = 0
			}
			return b
		},
		"zeros appended": func(b []byte) []byte { return append(b, make([]byte, 4096)...) },
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			writeTestLog(t, dir, frames, 1<<20)
			seg := lastSegment(t, dir)
			b, err := os.ReadFile(seg)
			require.NoError(t, err)
			require.NoError(t, os.WriteFile(seg, tear(b), 0o644))

			l := openTestLog(t, osFS{}, dir, 1<<20)
			want := logEnd(frames[:49])
			if name == "zeros appended" {
				want = logEnd(frames)
			}
			assert.Equal(t, want, l.offset())
			require.NoError(t, l.append(frames[49]))
			require.NoError(t, l.close())
			l = openTestLog(t, osFS{}, dir, 1<<20)
			assert.Equal(t, want+uint64(len(frames[49])), l.offset())
			require.NoError(t, l.close())
		})
	}
}

// TestStreamLogDamage: a flipped bit anywhere but in a torn tail, or a
// gap between segments, fails the open with ErrChecksum naming the file.
func TestStreamLogDamage(t *testing.T) {
	frames := testFrames(t, 200)
	t.Run("middle of the last segment", func(t *testing.T) {
		dir := t.TempDir()
		writeTestLog(t, dir, frames, 1<<20)
		seg := lastSegment(t, dir)
		b, err := os.ReadFile(seg)
		require.NoError(t, err)
		b[segmentHeaderSize+len(frames[0])+7] ^= 0x10 // inside frame 1
		require.NoError(t, os.WriteFile(seg, b, 0o644))
		_, err = openStreamLog(osFS{}, dir, 100, 1<<20, DefaultMaxFrameSize, slog.New(slog.DiscardHandler), nil)
		require.ErrorIs(t, err, ErrChecksum)
		assert.Contains(t, err.Error(), seg)
	})
	t.Run("every byte of an earlier segment", func(t *testing.T) {
		dir := t.TempDir()
		writeTestLog(t, dir, frames, 2<<10)
		names, err := osFS{}.ReadDir(dir)
		require.NoError(t, err)
		first := filepath.Join(dir, names[0])
		orig, err := os.ReadFile(first)
		require.NoError(t, err)
		for i := range orig {
			b := append([]byte(nil), orig...)
			b[i] ^= 0x01
			require.NoError(t, os.WriteFile(first, b, 0o644))
			_, err = openStreamLog(osFS{}, dir, 100, 2<<10, DefaultMaxFrameSize, slog.New(slog.DiscardHandler), nil)
			require.ErrorIs(t, err, ErrChecksum, "bit flip at byte %d", i)
		}
	})
	t.Run("gap", func(t *testing.T) {
		dir := t.TempDir()
		writeTestLog(t, dir, frames, 2<<10)
		names, err := osFS{}.ReadDir(dir)
		require.NoError(t, err)
		require.Greater(t, len(names), 2)
		require.NoError(t, os.Remove(filepath.Join(dir, names[1])))
		_, err = openStreamLog(osFS{}, dir, 100, 2<<10, DefaultMaxFrameSize, slog.New(slog.DiscardHandler), nil)
		require.ErrorIs(t, err, ErrChecksum)
	})
}

// TestStreamLogFailStop: a failed write or fsync stops the log: that call
// and every later one return the failure, and nothing is retried.
func TestStreamLogFailStop(t *testing.T) {
	frames := testFrames(t, 20)
	boom := errors.New("disk on fire")
	for name, set := range map[string]func(fs *faultFS){
		"write": func(fs *faultFS) { fs.failWrite = func(string) error { return boom } },
		"fsync": func(fs *faultFS) { fs.failSync = func(string) error { return boom } },
	} {
		t.Run(name, func(t *testing.T) {
			fs := &faultFS{}
			l := openTestLog(t, fs, t.TempDir(), 1<<20)
			require.NoError(t, l.append(frames[0]))
			require.NoError(t, l.sync(l.offset()))
			fs.mu.Lock()
			set(fs)
			fs.mu.Unlock()
			require.NoError(t, l.append(frames[1])) // buffered
			err := l.sync(l.offset())
			require.ErrorIs(t, err, boom)
			fs.mu.Lock()
			fs.failWrite, fs.failSync = nil, nil
			fs.mu.Unlock()
			assert.ErrorIs(t, l.append(frames[2]), boom, "stopped for good")
			assert.ErrorIs(t, l.sync(l.offset()), boom)
			assert.Equal(t, logEnd(frames[:1]), l.durable.Load())
		})
	}
}

// TestStreamLogGroupCommit: writers that sync while an fsync is under way
// share the next one.
func TestStreamLogGroupCommit(t *testing.T) {
	frames := testFrames(t, 9)
	fs := &faultFS{}
	l := openTestLog(t, fs, t.TempDir(), 1<<20)
	defer l.close()
	gate := make(chan struct{})
	fs.mu.Lock()
	fs.syncGate = gate
	fs.mu.Unlock()
	before := fs.syncs.Load()

	// The first writer's fsync waits at the gate...
	require.NoError(t, l.append(frames[0]))
	first := make(chan error)
	go func() { first <- l.sync(l.offset()) }()
	waitFor(t, "the first fsync at the gate", func() bool { return fs.gated.Load() == 1 })
	// ...while eight more append and sync.
	var wg sync.WaitGroup
	for _, f := range frames[1:] {
		require.NoError(t, l.append(f))
		end := l.offset()
		wg.Go(func() { assert.NoError(t, l.sync(end)) })
	}
	close(gate) // let every fsync through
	require.NoError(t, <-first)
	wg.Wait()
	assert.Equal(t, logEnd(frames), l.durable.Load())
	assert.Equal(t, int64(2), fs.syncs.Load()-before, "nine syncs, two fsyncs")
}

// openPreallocLog opens a log in dir that preallocates segments of
// maxSegment bytes, inline so that every rotation finds its spare ready.
func openPreallocLog(t *testing.T, dir string, maxSegment int64, logs *countingHandler) *streamLog {
	t.Helper()
	l, err := openStreamLog(osFS{}, dir, 100, maxSegment, DefaultMaxFrameSize, slog.New(logs), nil)
	require.NoError(t, err)
	l.startPrealloc(true)
	return l
}

// segmentFiles returns the contents of the log's segments, oldest first.
func segmentFiles(t *testing.T, dir string) [][]byte {
	names, err := osFS{}.ReadDir(dir)
	require.NoError(t, err)
	var files [][]byte
	for _, n := range names {
		if _, ok := parseSegmentName(n); ok {
			b, err := os.ReadFile(filepath.Join(dir, n))
			require.NoError(t, err)
			files = append(files, b)
		}
	}
	return files
}

// framesEnd returns where the frames after the header of segment b end.
func framesEnd(b []byte) int {
	pos := segmentHeaderSize
	for {
		n, ok := validFrame(b[pos:], DefaultMaxFrameSize)
		if !ok {
			return pos
		}
		pos += n
	}
}

// TestStreamLogPrealloc: a preallocating log writes its frames over the
// zeros of segments made ahead; rotation leaves every segment but the last
// exactly its frames; the last one's zero tail reopens silently, with
// appends going on over it, and a frame cut short before the zeros is a
// torn tail, dropped.
func TestStreamLogPrealloc(t *testing.T) {
	const segment = 1 << 10
	frames := testFrames(t, 400)
	dir := t.TempDir()
	logs := &countingHandler{}
	l := openPreallocLog(t, dir, segment, logs)
	for _, f := range frames[:300] {
		require.NoError(t, l.append(f))
	}
	require.NoError(t, l.close())
	_, err := os.Stat(filepath.Join(dir, spareName))
	require.ErrorIs(t, err, os.ErrNotExist, "close removes the spare")

	files := segmentFiles(t, dir)
	require.Greater(t, len(files), 3)
	assert.Equal(t, segmentHeaderSize+len(frames[0]), len(files[0]), "the segment made at open is rotated once a spare is ready")
	var all []byte
	for i, b := range files {
		end := framesEnd(b)
		all = append(all, b[segmentHeaderSize:end]...)
		if i < len(files)-1 {
			assert.Equal(t, len(b), end, "segment %d is exactly its frames", i)
			continue
		}
		assert.Equal(t, segment, len(b), "the last segment is preallocated")
		assert.Less(t, end, len(b))
		assert.True(t, allZero(b[end:]), "zeros after its frames")
	}
	var want []byte
	for _, f := range frames[:300] {
		want = append(want, f...)
	}
	assert.Equal(t, want, all)

	// The restart's backlog is placed by where the frames end, not by
	// the file's size.
	_, end, err := segmentBounds(osFS{}, dir)
	require.NoError(t, err)
	assert.LessOrEqual(t, end, logEnd(frames[:300]))
	assert.Greater(t, end+frameCRCSize, logEnd(frames[:300]))

	// Reopened: the zero tail is no torn tail, and appends go on over it.
	l = openPreallocLog(t, dir, segment, logs)
	assert.Equal(t, logEnd(frames[:300]), l.offset())
	assert.Zero(t, logs.count("dropped a torn tail"))
	assert.Equal(t, int64(1), logs.count("a preallocated tail"))
	last := lastSegment(t, dir)
	require.NoError(t, l.append(frames[300]))
	require.NoError(t, l.sync(l.offset()))
	st, err := os.Stat(last)
	require.NoError(t, err)
	assert.Equal(t, int64(segment), st.Size(), "written over the zeros")
	require.NoError(t, l.close())

	// A frame cut short before the zeros is a torn tail.
	b, err := os.ReadFile(last)
	require.NoError(t, err)
	at := framesEnd(b)
	copy(b[at:], frames[301][:len(frames[301])-2])
	require.NoError(t, os.WriteFile(last, b, 0o644))
	l = openPreallocLog(t, dir, segment, logs)
	assert.Equal(t, logEnd(frames[:301]), l.offset())
	assert.Equal(t, int64(1), logs.count("dropped a torn tail"))
	for _, f := range frames[301:] {
		require.NoError(t, l.append(f))
	}
	require.NoError(t, l.close())
	l = openPreallocLog(t, dir, segment, logs)
	assert.Equal(t, logEnd(frames), l.offset())
	require.NoError(t, l.close())
	for i, b := range segmentFiles(t, dir) {
		if i < len(files)-1 {
			assert.Equal(t, len(b), framesEnd(b), "segment %d is exactly its frames", i)
		}
	}
}

// TestStreamLogPreallocTorn: a preallocated last segment whose header was
// not all written (a crash between the spare's rename and the header's
// fsync) is dropped; zeros after the frames of an earlier segment are
// damage (rotation cuts them off).
func TestStreamLogPreallocTorn(t *testing.T) {
	frames := testFrames(t, 200)
	for name, header := range map[string]int{"no header": 0, "half a header": segmentHeaderSize / 2} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			writeTestLog(t, dir, frames, 2<<10)
			end := logEnd(frames)
			b := make([]byte, 2<<10)
			copy(b, segmentHeader(end)[:header])
			require.NoError(t, os.WriteFile(filepath.Join(dir, segmentName(end)), b, 0o644))
			logs := &countingHandler{}
			l := openPreallocLog(t, dir, 2<<10, logs)
			assert.Equal(t, end, l.offset())
			assert.Equal(t, int64(1), logs.count("dropped a segment whose header was torn"))
			require.NoError(t, l.append(frames[0]))
			require.NoError(t, l.close())
		})
	}
	t.Run("lost sector", func(t *testing.T) {
		// A crash in an fsync over zeros: a sector of it did not reach
		// the disk, later ones did. The frames from the one it cuts on
		// were not acknowledged: dropped.
		dir := t.TempDir()
		writeTestLog(t, dir, frames, 1<<20)
		seg := lastSegment(t, dir)
		b, err := os.ReadFile(seg)
		require.NoError(t, err)
		require.Greater(t, len(b), 4*sectorSize)
		clear(b[2*sectorSize : 3*sectorSize])
		// Only a preallocated segment (ending in zeros) may have lost a
		// sector: in one that grows with its writes, this is damage.
		require.NoError(t, os.WriteFile(seg, b, 0o644))
		_, err = openStreamLog(osFS{}, dir, 100, 1<<20, DefaultMaxFrameSize, slog.New(slog.DiscardHandler), nil)
		require.ErrorIs(t, err, ErrChecksum)
		b = append(b, make([]byte, 4*sectorSize)...)
		require.NoError(t, os.WriteFile(seg, b, 0o644))
		want, pos := uint64(100), segmentHeaderSize
		for _, f := range frames {
			if pos+len(f) > 2*sectorSize {
				break
			}
			want, pos = want+uint64(len(f)), pos+len(f)
		}
		logs := &countingHandler{}
		l := openPreallocLog(t, dir, 1<<20, logs)
		assert.Equal(t, want, l.offset())
		assert.Equal(t, int64(1), logs.count("dropped a torn tail"))
		require.NoError(t, l.close())
	})
	t.Run("bad header", func(t *testing.T) {
		dir := t.TempDir()
		writeTestLog(t, dir, frames, 2<<10)
		end := logEnd(frames)
		b := make([]byte, 2<<10)
		copy(b, segmentHeader(end))
		b[3] ^= 1
		require.NoError(t, os.WriteFile(filepath.Join(dir, segmentName(end)), b, 0o644))
		_, err := openStreamLog(osFS{}, dir, 100, 2<<10, DefaultMaxFrameSize, slog.New(slog.DiscardHandler), nil)
		require.ErrorIs(t, err, ErrChecksum)
	})
	t.Run("zeros after an earlier segment", func(t *testing.T) {
		dir := t.TempDir()
		writeTestLog(t, dir, frames, 2<<10)
		names, err := osFS{}.ReadDir(dir)
		require.NoError(t, err)
		f, err := os.OpenFile(filepath.Join(dir, names[0]), os.O_WRONLY|os.O_APPEND, 0)
		require.NoError(t, err)
		_, err = f.Write(make([]byte, 100))
		require.NoError(t, err)
		require.NoError(t, f.Close())
		_, err = openStreamLog(osFS{}, dir, 100, 2<<10, DefaultMaxFrameSize, slog.New(slog.DiscardHandler), nil)
		require.ErrorIs(t, err, ErrChecksum)
		assert.Contains(t, err.Error(), names[0])
	})
}

// TestStreamLogPreallocBackground: spares made by the background goroutine
// are taken by rotations, and close ends it (goleak checks) even while it
// is making one.
func TestStreamLogPreallocBackground(t *testing.T) {
	frames := testFrames(t, 50)
	dir := t.TempDir()
	l := openTestLog(t, osFS{}, dir, 64<<10)
	l.startPrealloc(false)
	waitFor(t, "a spare", l.spare.ready.Load)
	require.NoError(t, l.append(frames[0]))
	require.NoError(t, l.sync(l.offset()))
	l.mu.Lock()
	alloc := l.allocEnd
	l.mu.Unlock()
	assert.Equal(t, int64(64<<10), alloc, "rotated to the spare")
	for _, f := range frames[1:] {
		require.NoError(t, l.append(f))
	}
	require.NoError(t, l.close())
	l = openTestLog(t, osFS{}, dir, 64<<10)
	assert.Equal(t, logEnd(frames), l.offset())
	l.startPrealloc(false)
	require.NoError(t, l.close()) // likely while the spare is being made
}
