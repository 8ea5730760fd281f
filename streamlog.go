package replmap

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// The stream on disk: segment files holding exactly the stream's data
// frames, as sent on the wire, so that an offset on disk is the same
// offset in the stream.
//
//	log-<start offset, 20 decimal digits>.seg
//	  magic  8 bytes "RMLOG01\n"
//	  start  u64: the stream offset of the segment's first frame
//	  crc    u32 CRC-32C of magic and start
//	  frames the stream's data frames from start on, each with its own
//	         length and CRC-32C (see frame.go)
//
// Segments are contiguous: each starts where the one before ends. Only the
// last one is written to; it is rotated at a frame boundary once it holds
// maxSegment bytes, after an fsync, so every segment but the last is
// always whole on disk.
//
// On open, a torn tail of the last segment (a frame cut short, or a last
// frame whose checksum fails with nothing valid after it, as a crash in
// the middle of a write leaves) is dropped; any other damage is an error
// wrapping ErrChecksum that names the file and the offset in it.
//
// Under FsyncAlways segments are preallocated (startPrealloc): a segment
// is made as a spare file of zeros, fsynced, before it is needed, and
// frames are written over its zeros, so that the fsync of every write
// does not also extend the file (on ext4, 150 µs instead of 270 µs for
// a few KB). The last segment may then end with zeros after its frames:
// a preallocated tail, not damage. A segment is cut to its frames when it
// is rotated, so every other one still holds exactly its frames.
//
// The data directory (datadir.go) keeps one stream log per generation.
type streamLog struct {
	fsys       fileSystem
	dir        string
	maxSegment int64
	maxFrame   int
	log        *slog.Logger

	mu       sync.Mutex // guards the fields below
	f        file
	w        *bufio.Writer
	segSize  int64 // bytes in the current segment, header included
	end      uint64
	segments []uint64              // start offsets, oldest first; the last is being written
	allocEnd int64                 // the current segment's size on disk: frames below it are written over zeros
	err      error                 // the first write or fsync failure, or the close: nothing is accepted after it
	failure  atomic.Pointer[error] // the failure (not the close), read without mu

	// Group commit: one goroutine at a time fsyncs for everyone, and the
	// others wait on synced, closed when it is done, all woken at once.
	syncMu  sync.Mutex    // guards syncing and synced
	syncing bool          // an fsync is under way
	synced  chan struct{} // closed when it ends
	durable atomic.Uint64 // every stream byte below it is on disk
	fsyncs  atomic.Uint64 // fsyncs done, for tests and Info

	// pendingSince is when the oldest byte not yet handed to an fsync was
	// appended, and inflightSince the same for the bytes an fsync under
	// way covers (UnixNano, 0 if none): the age of the oldest write not
	// yet durable, which FsyncEverySecond bounds.
	pendingSince  atomic.Int64
	inflightSince atomic.Int64
	now           func() time.Time

	// window, if positive, is the age the oldest write not on disk may
	// reach (FsyncEverySecond's second). overdue is set once it has,
	// by a timer armed with each new oldest write, and cleared by the
	// fsync that covers it: writers read one atomic, not the clock.
	window  time.Duration
	overdue atomic.Bool

	spare *spareSegment // nil unless segments are preallocated
}

// spareSegment is the next segment of a preallocated log, made ahead of
// time (see startPrealloc).
type spareSegment struct {
	inline bool // made by the rotation that needs the next one, not in the background
	// mu orders the hand-off of spareName: a rotation takes the spare
	// and the goroutine installs the next one under it, so neither can
	// act on the other's file. (Not the log's mu: close holds that while
	// it waits for the goroutine.)
	mu    sync.Mutex
	ready atomic.Bool   // spareName holds a whole, fsynced segment's worth of zeros
	want  chan struct{} // asks the background goroutine for a spare
	stop  chan struct{} // closed by close
	done  chan struct{} // closed when the goroutine has ended
}

const (
	segmentHeaderSize = 20
	segmentPrefix     = "log-"
	segmentSuffix     = ".seg"
	// spareName is the next segment of a preallocated log while it is
	// being made. Being a temporary file, it is removed when a data
	// directory is opened.
	spareName = segmentPrefix + "spare" + tempSuffix
	// spareNewName is a spare being written, renamed to spareName once
	// it is whole and fsynced.
	spareNewName = segmentPrefix + "spare-new" + tempSuffix
)

var segmentMagic = []byte("RMLOG01\n")

func segmentName(start uint64) string {
	return fmt.Sprintf("%s%020d%s", segmentPrefix, start, segmentSuffix)
}

// parseSegmentName returns the start offset a segment file name holds.
func parseSegmentName(name string) (uint64, bool) {
	return parseOffsetName(name, segmentPrefix, segmentSuffix)
}

// parseOffsetName returns the offset in a name made of prefix, 20
// decimal digits and suffix.
func parseOffsetName(name, prefix, suffix string) (uint64, bool) {
	s, ok := strings.CutPrefix(name, prefix)
	if !ok {
		return 0, false
	}
	if s, ok = strings.CutSuffix(s, suffix); !ok || len(s) != 20 {
		return 0, false
	}
	n, err := strconv.ParseUint(s, 10, 64)
	return n, err == nil
}

func segmentHeader(start uint64) []byte {
	b := append([]byte(nil), segmentMagic...)
	b = binary.BigEndian.AppendUint64(b, start)
	return binary.BigEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
}

// openStreamLog opens the stream log in dir, recovering what a crash left,
// and returns it ready to append at its end. A directory with no segment
// starts a stream at offset start. If replay is not nil it is called with
// every valid frame in the log, in order, and the file it is in; an error
// from it ends the open.
func openStreamLog(fsys fileSystem, dir string, start uint64, maxSegment int64, maxFrame int, log *slog.Logger, replay func(frame []byte, file string) error) (*streamLog, error) {
	if err := fsys.MkdirAll(dir); err != nil {
		return nil, err
	}
	names, err := fsys.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	l := &streamLog{fsys: fsys, dir: dir, maxSegment: maxSegment, maxFrame: maxFrame, log: log, now: time.Now}
	for _, name := range names {
		if s, ok := parseSegmentName(name); ok {
			l.segments = append(l.segments, s)
		}
	}
	l.end = start
	for i, s := range l.segments {
		last := i == len(l.segments)-1
		if i > 0 && s != l.end {
			// Either may be the damaged one (cut short, or a later
			// one lost): name both.
			return nil, fmt.Errorf("%w: %s ends at offset %d, but the next segment, %s, starts at %d",
				ErrChecksum, filepath.Join(dir, segmentName(l.segments[i-1])), l.end, filepath.Join(dir, segmentName(s)), s)
		}
		end, size, alloc, err := l.recoverSegment(s, last, replay)
		if err != nil {
			return nil, err
		}
		if last && size < segmentHeaderSize {
			// Created, but its header never made it to disk: start it again.
			if err := fsys.Remove(filepath.Join(dir, segmentName(s))); err != nil {
				return nil, err
			}
			l.segments = l.segments[:i]
			l.end = s
			break
		}
		l.end, l.segSize, l.allocEnd = end, size, alloc
	}
	if len(l.segments) == 0 {
		if err := l.createSegment(l.end); err != nil {
			return nil, err
		}
	} else {
		name := filepath.Join(dir, segmentName(l.segments[len(l.segments)-1]))
		f, err := fsys.OpenFile(name, os.O_RDWR, 0)
		if err != nil {
			return nil, err
		}
		if _, err := f.Seek(l.segSize, io.SeekStart); err != nil {
			f.Close()
			return nil, err
		}
		// What was written before the restart may still be only in the
		// page cache.
		if err := f.Sync(); err != nil {
			f.Close()
			return nil, err
		}
		l.f, l.w = f, bufio.NewWriterSize(f, 64<<10)
	}
	l.durable.Store(l.end)
	return l, nil
}

// recoverSegment checks the segment that starts at start, frame by frame,
// and returns the offset it ends at, its valid size in bytes, and its size
// on disk. In the last segment a torn tail is cut off, and a preallocated
// tail (zeros after the last frame) is kept; anywhere else, damage is an
// error.
func (l *streamLog) recoverSegment(start uint64, last bool, replay func([]byte, string) error) (end uint64, size, alloc int64, err error) {
	name := filepath.Join(l.dir, segmentName(start))
	f, err := l.fsys.OpenFile(name, os.O_RDWR, 0)
	if err != nil {
		return 0, 0, 0, err
	}
	defer f.Close()
	data, err := readWhole(f)
	if err != nil {
		return 0, 0, 0, fmt.Errorf("replmap: reading %s: %w", name, err)
	}
	damaged := func(at int, why string) error {
		return fmt.Errorf("%w: %s at byte %d: %s", ErrChecksum, name, at, why)
	}
	header := segmentHeader(start)
	if len(data) < segmentHeaderSize || !bytes.Equal(data[:segmentHeaderSize], header) {
		// Cut short, or a preallocated segment whose header was not
		// all written (a prefix of it, then only zeros): created, but
		// never written to.
		torn := last && len(data) < segmentHeaderSize
		if last && len(data) >= segmentHeaderSize {
			i := 0
			for i < segmentHeaderSize && data[i] == header[i] {
				i++
			}
			torn = allZero(data[i:])
		}
		if !torn {
			if len(data) < segmentHeaderSize {
				return 0, 0, 0, damaged(0, "truncated header")
			}
			return 0, 0, 0, damaged(0, "bad header")
		}
		l.log.Warn("dropped a segment whose header was torn", "file", name, "bytes", len(data))
		return start, 0, 0, nil
	}
	pos := segmentHeaderSize
	alloc = int64(len(data))
	for pos < len(data) {
		n, ok := validFrame(data[pos:], l.maxFrame)
		if ok {
			if replay != nil {
				if err := replay(data[pos:pos+n], name); err != nil {
					return 0, 0, 0, err
				}
			}
			pos += n
			continue
		}
		if last && allZero(data[pos:]) {
			// Zeros the next frames were to be written over: nothing
			// was lost, and appends go on over them.
			l.log.Debug("a preallocated tail", "file", name, "at", pos, "bytes", len(data)-pos)
			break
		}
		next := nextValidFrame(data, pos+1, l.maxFrame)
		if !last || next < len(data) && !(endsInZeros(data) && lostSector(data[:next], pos)) {
			return 0, 0, 0, damaged(pos, "bad frame")
		}
		// Nothing valid follows: a write cut short by a crash. Or what
		// follows was written with it, by the same fsync, which the
		// crash cut short before a sector of it reached the disk: over
		// a preallocated segment's zeros, sectors of an fsync reach it
		// in any order.
		l.log.Warn("dropped a torn tail", "file", name, "at", pos, "bytes", len(data)-pos, "lost_sector", next < len(data))
		if err := f.Truncate(int64(pos)); err != nil {
			return 0, 0, 0, err
		}
		if err := f.Sync(); err != nil {
			return 0, 0, 0, err
		}
		alloc = int64(pos)
		break
	}
	return start + uint64(pos-segmentHeaderSize), int64(pos), alloc, nil
}

// allZero reports whether b holds only zeros.
func allZero(b []byte) bool {
	for len(b) >= 8 {
		if binary.NativeEndian.Uint64(b) != 0 {
			return false
		}
		b = b[8:]
	}
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// dataSize returns the size of the file name without its trailing zeros:
// where a preallocated segment's frames end (give or take a few zero
// bytes of its last frame's checksum).
func dataSize(fsys fileSystem, name string) (int64, error) {
	f, err := fsys.OpenFile(name, os.O_RDONLY, 0)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	end, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return 0, err
	}
	buf := make([]byte, min(end, 64<<10))
	for end > 0 {
		n := min(end, int64(len(buf)))
		if _, err := f.Seek(end-n, io.SeekStart); err != nil {
			return 0, err
		}
		if _, err := io.ReadFull(f, buf[:n]); err != nil {
			return 0, err
		}
		for i := n - 1; i >= 0; i-- {
			if buf[i] != 0 {
				return end - n + i + 1, nil
			}
		}
		end -= n
	}
	return 0, nil
}

// readWhole reads f from its start to its end into a buffer of its size.
func readWhole(f file) ([]byte, error) {
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return nil, err
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return nil, err
	}
	data := make([]byte, size)
	n, err := io.ReadFull(f, data)
	if err == io.ErrUnexpectedEOF {
		err = nil // shorter than its size said: read what is there
	}
	return data[:n], err
}

// validFrame reports whether b starts with a whole data frame whose
// checksum matches, and its size.
func validFrame(b []byte, maxFrame int) (int, bool) {
	if len(b) < frameHeaderSize {
		return 0, false
	}
	n := int(binary.BigEndian.Uint32(b))
	if n < 1 || n > maxFrame+1 || len(b) < n+4+frameCRCSize {
		return 0, false
	}
	if !isDataRecord(frameType(b[4])) {
		return 0, false
	}
	if crc32.Checksum(b[:n+4], castagnoli) != binary.BigEndian.Uint32(b[n+4:]) {
		return 0, false
	}
	return n + 4 + frameCRCSize, true
}

// nextValidFrame returns where the first valid frame at or after from
// starts in b, or len(b): if there is one, a bad frame before it is
// damage, not a torn tail, unless a sector was lost (lostSector).
func nextValidFrame(b []byte, from int, maxFrame int) int {
	for i := from; i < len(b); i++ {
		if _, ok := validFrame(b[i:], maxFrame); ok {
			return i
		}
	}
	return len(b)
}

// sectorSize is the unit a disk writes whole, at the least.
const sectorSize = 512

// lostSector reports whether b, a segment whose frame at pos is bad, holds
// zeros from pos to the end of its sector, or in a whole sector after
// pos: what a crash leaves when the sectors an fsync was writing over
// zeros reached the disk in part. A frame never starts with zeros (its
// length, then its type), and a flipped bit does not zero a sector.
func lostSector(b []byte, pos int) bool {
	end := min(max((pos/sectorSize+1)*sectorSize, pos+frameHeaderSize), len(b))
	if allZero(b[pos:end]) {
		return true
	}
	for s := end; s+sectorSize <= len(b); s += sectorSize {
		if allZero(b[s : s+sectorSize]) {
			return true
		}
	}
	return false
}

// endsInZeros reports whether b, a last segment, ends in a sector of
// zeros: a preallocated segment not yet written to its end. Only there
// may an fsync's sectors have reached the disk out of order (lostSector);
// in a segment that grows with its writes, a bad frame before valid ones
// is damage.
func endsInZeros(b []byte) bool {
	return len(b) >= segmentHeaderSize+sectorSize && allZero(b[len(b)-sectorSize:])
}

// createSegment starts a new segment at start and makes it the one
// written to: the spare, if one is ready, else a new file. The caller
// holds mu (or has l to itself).
func (l *streamLog) createSegment(start uint64) error {
	name := filepath.Join(l.dir, segmentName(start))
	var f file
	var alloc int64
	var err error
	if l.takeSpare(name) {
		// Opened without O_APPEND: frames are written over the zeros.
		if f, err = l.fsys.OpenFile(name, os.O_RDWR, 0); err != nil {
			return err
		}
		alloc, err = f.Seek(0, io.SeekEnd)
		if err == nil {
			_, err = f.Seek(0, io.SeekStart)
		}
		if err != nil {
			f.Close()
			return err
		}
	} else if l.err != nil {
		return l.err // taking the spare failed
	} else if f, err = l.fsys.OpenFile(name, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644); err != nil {
		return err
	}
	if _, err := f.Write(segmentHeader(start)); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := l.fsys.SyncDir(l.dir); err != nil {
		f.Close()
		return err
	}
	l.f, l.w, l.segSize = f, bufio.NewWriterSize(f, 64<<10), segmentHeaderSize
	l.allocEnd = max(alloc, segmentHeaderSize)
	l.segments = append(l.segments, start)
	l.askSpare()
	return nil
}

// startPrealloc makes the log preallocate its segments from now on (see
// the type's doc): the next segment is made ahead, as a spare, by a
// goroutine that close ends, or inline, by the rotation before it. The
// segment being written, unless it is already preallocated, is rotated
// as soon as the first spare is ready.
func (l *streamLog) startPrealloc(inline bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.err != nil || l.spare != nil {
		return
	}
	sp := &spareSegment{inline: inline}
	l.spare = sp
	if !inline {
		sp.want, sp.stop, sp.done = make(chan struct{}, 1), make(chan struct{}), make(chan struct{})
		go l.makeSpares(sp)
	}
	l.askSpare()
}

// askSpare has the next spare made, if there is none. The caller holds
// mu.
func (l *streamLog) askSpare() {
	sp := l.spare
	switch {
	case sp == nil || sp.ready.Load():
	case sp.inline:
		if l.makeSpare(nil) {
			l.installSpare(sp)
		}
	default:
		select {
		case sp.want <- struct{}{}:
		default: // asked already
		}
	}
}

// takeSpare renames the ready spare to name, if there is one, and
// reports whether it did. The caller holds mu. A failed rename fails the
// log (its error is then l.err).
func (l *streamLog) takeSpare(name string) bool {
	sp := l.spare
	if sp == nil {
		return false
	}
	sp.mu.Lock()
	defer sp.mu.Unlock()
	if !sp.ready.Load() {
		return false
	}
	sp.ready.Store(false)
	if err := l.fsys.Rename(filepath.Join(l.dir, spareName), name); err != nil {
		l.fail(err)
		return false
	}
	return true
}

// installSpare makes the spare just written the ready one, unless one
// is ready already.
func (l *streamLog) installSpare(sp *spareSegment) {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	made := filepath.Join(l.dir, spareNewName)
	if sp.ready.Load() {
		_ = l.fsys.Remove(made)
		return
	}
	if err := l.fsys.Rename(made, filepath.Join(l.dir, spareName)); err != nil {
		l.log.Warn("could not preallocate a log segment", "file", made, "err", err)
		_ = l.fsys.Remove(made)
		return
	}
	sp.ready.Store(true)
}

// makeSpares makes a spare whenever asked, until stopped.
func (l *streamLog) makeSpares(sp *spareSegment) {
	defer close(sp.done)
	for {
		select {
		case <-sp.stop:
			return
		case <-sp.want:
		}
		if !sp.ready.Load() && l.makeSpare(sp.stop) {
			l.installSpare(sp)
		}
	}
}

// makeSpare writes the spare: a segment's worth of zeros, fsynced. It
// reports whether it did; a failure is logged and not retried until the
// next rotation: the log then appends to a file that grows, as without
// preallocation. It gives up when stop is closed.
func (l *streamLog) makeSpare(stop <-chan struct{}) bool {
	name := filepath.Join(l.dir, spareNewName)
	f, err := l.fsys.OpenFile(name, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err == nil {
		zeros := make([]byte, min(l.maxSegment, 1<<20))
		for n := int64(0); n < l.maxSegment && err == nil; n += int64(len(zeros)) {
			select {
			case <-stop:
				err = errors.New("stream log closed")
			default:
				_, err = f.Write(zeros[:min(int64(len(zeros)), l.maxSegment-n)])
			}
		}
		if err == nil {
			err = f.Sync()
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		select {
		case <-stop:
		default:
			l.log.Warn("could not preallocate a log segment", "file", name, "err", err)
		}
		_ = l.fsys.Remove(name)
		return false
	}
	return true
}

// stopPrealloc ends the goroutine making spares and removes the spare.
// The caller holds mu.
func (l *streamLog) stopPrealloc() {
	sp := l.spare
	if sp == nil {
		return
	}
	if !sp.inline {
		close(sp.stop)
		<-sp.done
	}
	l.spare = nil
	_ = l.fsys.Remove(filepath.Join(l.dir, spareName))
	_ = l.fsys.Remove(filepath.Join(l.dir, spareNewName))
}

// append adds a frame, given in parts, at the end of the stream. Its bytes
// are buffered: sync makes them durable. After a failure it returns that
// failure and accepts nothing more.
func (l *streamLog) append(parts ...[]byte) error {
	_, err := l.appendEnd(parts...)
	return err
}

// appendEnd is append that also returns the end of the stream after it.
func (l *streamLog) appendEnd(parts ...[]byte) (uint64, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.err != nil {
		return 0, l.err
	}
	if l.pendingSince.Load() == 0 {
		l.pendingSince.Store(l.now().UnixNano())
		if l.window > 0 {
			// At most one timer per pending period (about two a
			// second); it only reads and stores atomics, so one that
			// fires after close is harmless and needs no owner.
			time.AfterFunc(l.window, l.checkOverdue)
		}
	}
	for _, p := range parts {
		if _, err := l.w.Write(p); err != nil {
			return 0, l.fail(err)
		}
		l.end += uint64(len(p))
		l.segSize += int64(len(p))
	}
	if l.segSize >= l.maxSegment || l.spare != nil && l.segSize >= l.allocEnd && l.spare.ready.Load() {
		// Full, or growing its file while a preallocated one waits.
		if err := l.rotate(); err != nil {
			return 0, l.fail(err)
		}
	}
	return l.end, nil
}

// rotate closes the current segment, whole and synced, and starts the
// next. The caller holds mu.
func (l *streamLog) rotate() error {
	if err := l.w.Flush(); err != nil {
		return err
	}
	if l.allocEnd > l.segSize {
		// Only the last segment may end with zeros: cut them off.
		if err := l.f.Truncate(l.segSize); err != nil {
			return err
		}
	}
	if err := l.f.Sync(); err != nil {
		return err
	}
	l.fsyncs.Add(1)
	if err := l.f.Close(); err != nil {
		return err
	}
	raise(&l.durable, l.end)
	return l.createSegment(l.end)
}

// raise sets v to x if x is higher.
func raise(v *atomic.Uint64, x uint64) {
	for {
		cur := v.Load()
		if x <= cur || v.CompareAndSwap(cur, x) {
			return
		}
	}
}

// fail records err as the log's failure: a write or fsync that failed may
// have lost data the kernel had accepted, so nothing is retried
// (PostgreSQL's "fsyncgate").
func (l *streamLog) fail(err error) error {
	if l.err == nil {
		l.err = fmt.Errorf("replmap: data directory %s failed, writes stopped: %w", l.dir, err)
		l.failure.Store(&l.err)
		l.log.Error("data directory failed; writes stopped", "dir", l.dir, "err", err)
	}
	return l.err
}

// offset returns the end of the stream appended so far.
func (l *streamLog) offset() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.end
}

// sync returns once every byte before target is on disk. Concurrent
// callers share fsyncs: one does it for all the bytes appended so far,
// the others wait for it and find their target covered (group commit).
// They wait on a channel, not on a mutex: woken one by one through a
// mutex, 64 writers took longer to file past it than the fsync itself.
func (l *streamLog) sync(target uint64) error {
	for l.durable.Load() < target {
		l.syncMu.Lock()
		if l.durable.Load() >= target {
			l.syncMu.Unlock()
			break
		}
		if l.syncing {
			done := l.synced
			l.syncMu.Unlock()
			<-done
			continue
		}
		l.syncing, l.synced = true, make(chan struct{})
		l.syncMu.Unlock()
		err := l.syncAll()
		l.syncMu.Lock()
		l.syncing = false
		close(l.synced)
		l.syncMu.Unlock()
		if err != nil {
			return err
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.err
}

// syncAll flushes and fsyncs every byte appended so far. One goroutine
// at a time calls it (see sync).
func (l *streamLog) syncAll() error {
	l.mu.Lock()
	err := l.err
	end, f := l.end, l.f
	if err == nil {
		if err = l.w.Flush(); err != nil {
			err = l.fail(err)
		}
	}
	l.inflightSince.Store(l.pendingSince.Swap(0))
	l.mu.Unlock()
	if err == nil {
		// Outside mu, so appends go on during the fsync. A rotation
		// may close f meanwhile; it fsyncs f first, up to an end at
		// or past this one, so then this fsync failing because f is
		// closed is moot. Any other failure is not: the kernel reports
		// a writeback error to one fsync only, so the rotation's may
		// have succeeded over lost data.
		if err = f.Sync(); err != nil {
			l.mu.Lock()
			if l.f != f && errors.Is(err, os.ErrClosed) {
				err = nil
			} else {
				err = l.fail(err)
			}
			l.mu.Unlock()
		} else {
			l.fsyncs.Add(1)
			raise(&l.durable, end)
		}
	}
	if err == nil {
		l.inflightSince.Store(0)
		if l.window > 0 {
			l.checkOverdue()
		}
	}
	return err
}

// checkOverdue sets overdue if the oldest write not on disk is as old as
// the window.
func (l *streamLog) checkOverdue() {
	t := l.oldestPending()
	l.overdue.Store(!t.IsZero() && l.now().Sub(t) >= l.window)
}

// oldestPending returns when the oldest write not yet on disk was
// appended, or the zero time if every write is.
func (l *streamLog) oldestPending() time.Time {
	t := l.inflightSince.Load()
	if t == 0 {
		t = l.pendingSince.Load()
	}
	if t == 0 {
		return time.Time{}
	}
	return time.Unix(0, t)
}

// failed returns the log's failure, if it has failed.
// Lock-free: it is on every write's path.
func (l *streamLog) failed() error {
	if e := l.failure.Load(); e != nil {
		return *e
	}
	return nil
}

// removeBelow removes the segments that hold only offsets below offset,
// never the one being written. A failure is logged and left for a later
// call: what it would have removed is still valid.
func (l *streamLog) removeBelow(offset uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for len(l.segments) > 1 && l.segments[1] <= offset {
		name := filepath.Join(l.dir, segmentName(l.segments[0]))
		if err := l.fsys.Remove(name); err != nil {
			l.log.Warn("could not remove a log segment", "file", name, "err", err)
			return
		}
		l.segments = l.segments[1:]
	}
}

// close makes everything appended durable and closes the segment.
func (l *streamLog) close() error {
	err := l.sync(l.offset())
	l.mu.Lock()
	defer l.mu.Unlock()
	l.stopPrealloc()
	if l.f != nil {
		if cerr := l.f.Close(); err == nil {
			err = cerr
		}
		l.f = nil
	}
	if l.err == nil {
		l.err = errors.New("replmap: stream log closed")
	}
	return err
}
