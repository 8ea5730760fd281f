package replmap

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// A data directory ([WithDataDir]) holds a node's data and history:
//
//	history                  the history record (histfile.go): which history
//	                         the data belongs to, and which generation holds it
//	gen-<16 hex digits>/     one generation: data built by one stream
//	    snap-<20 digits>.snap  a snapshot exact at that offset, in the
//	                           backup format (backup.go)
//	    log-<20 digits>.seg    the stream from some offset at or before the
//	                           snapshot's on (streamlog.go)
//
// The history record is the commit point. A generation is replaced whole
// (a replica's full sync) by writing the new one beside it, then the
// record naming it; a crash in between leaves the old one in force, and
// the next open removes the other. Within a generation the stream only
// grows: a snapshot is taken from memory in the background and, once it
// and the log up to it are on disk, older snapshots and the segments
// neither it nor the backlog need are removed, so the directory stays
// bounded by about two snapshots and the log written since the last one.
//
// Every write appended to the node's stream is appended to the log of the
// generation in force, under the node's writeMu, so that the log and the
// stream hold the same bytes at the same offsets.
type dataDir struct {
	fsys          fileSystem
	root          string
	policy        FsyncPolicy
	interval      time.Duration
	segmentSize   int64
	spareInline   bool
	snapshotMin   int64
	backlogSize   uint64
	maxFrame      int
	log           *slog.Logger
	allowDataLoss bool

	// Guarded by the node's writeMu.
	rec      dirRecord // the history record on disk
	snapAt   uint64    // offset of the generation's newest snapshot
	snapSize int64     // and its size in bytes

	stream atomic.Pointer[streamLog] // the generation's log; nil before a replica's first sync

	failure    atomic.Pointer[error] // why the directory stopped taking writes
	kick       chan struct{}         // asks the worker for a snapshot
	compacting atomic.Bool
	snapshots  atomic.Uint64 // snapshots written, for tests
	unlock     func() error  // releases the directory's lock
}

// preallocSegmentSize bounds the size of segments under FsyncAlways,
// which are preallocated (see streamLog).
const preallocSegmentSize = 16 << 20

// lockFileName is the file a node holds a lock on while it uses the
// directory.
const lockFileName = "LOCK"

const (
	snapshotPrefix = "snap-"
	snapshotSuffix = ".snap"
	tempSuffix     = ".tmp"
	genPrefix      = "gen-"
)

func genName(gen uint64) string { return fmt.Sprintf("%s%016x", genPrefix, gen) }

func snapshotName(offset uint64) string {
	return fmt.Sprintf("%s%020d%s", snapshotPrefix, offset, snapshotSuffix)
}

func parseSnapshotName(name string) (uint64, bool) {
	return parseOffsetName(name, snapshotPrefix, snapshotSuffix)
}

func (dd *dataDir) genDir(gen uint64) string { return filepath.Join(dd.root, genName(gen)) }

// loadedData is what a data directory held.
type loadedData[V any] struct {
	rec     dirRecord
	store   *store[V]
	backlog *backlog
}

// openDataDir opens the data directory of cfg and loads what it holds: nil
// for a directory that never held data. A directory whose record survives
// without its data is ErrLostState, unless cfg allows data loss (then it
// is treated as empty, and lost.hist says which history was lost); damage
// is an error wrapping ErrChecksum.
func openDataDir[V any](cfg config, log *slog.Logger) (dd *dataDir, ld *loadedData[V], lost dirRecord, err error) {
	dd = &dataDir{
		fsys:          cfg.fsys,
		root:          cfg.dataDir,
		policy:        cfg.fsync,
		interval:      cfg.fsyncInterval,
		segmentSize:   cfg.segmentSize,
		snapshotMin:   cfg.snapshotMin,
		backlogSize:   uint64(cfg.backlogSize),
		maxFrame:      cfg.maxFrameSize,
		log:           log.With("dir", cfg.dataDir),
		allowDataLoss: cfg.allowDataLoss,
		kick:          make(chan struct{}, 1),
		spareInline:   cfg.spareInline,
	}
	if dd.policy == FsyncAlways {
		// Preallocated segments: smaller ones are quicker to fill with
		// zeros, and a restart's first one is rotated sooner.
		dd.segmentSize = min(dd.segmentSize, preallocSegmentSize)
	}
	wrap := func(err error) error { return fmt.Errorf("replmap: data directory %s: %w", cfg.dataDir, err) }
	if err := dd.fsys.MkdirAll(dd.root); err != nil {
		return nil, nil, dirRecord{}, wrap(err)
	}
	unlock, err := lockDir(dd.root)
	if err != nil {
		return nil, nil, dirRecord{}, wrap(err)
	}
	dd.unlock = unlock
	defer func() {
		if err != nil {
			unlock()
		}
	}()
	rec, ok, err := readHistory(dd.fsys, dd.root)
	if err != nil {
		return nil, nil, dirRecord{}, wrap(err)
	}
	dd.rec = rec
	if !ok {
		// Never committed: a generation here is what an interrupted first
		// start left (a snapshot and an empty log), unless it holds writes:
		// then the history record was lost, and with it the epoch.
		if err := dd.checkUncommitted(); err != nil {
			if !cfg.allowDataLoss {
				return nil, nil, dirRecord{}, wrap(err)
			}
			dd.log.Warn("starting empty: the data directory lost its history record", "err", err)
		}
		if err := dd.removeOtherGens(0); err != nil {
			return nil, nil, dirRecord{}, wrap(err)
		}
		return dd, nil, dirRecord{}, nil
	}
	if err := dd.removeOtherGens(rec.gen); err != nil {
		return nil, nil, dirRecord{}, wrap(err)
	}
	ld, err = loadGen[V](dd, cfg, rec)
	if errors.Is(err, ErrLostState) && cfg.allowDataLoss {
		dd.log.Warn("starting empty: the data directory lost its data", "err", err)
		return dd, nil, rec, nil
	}
	if err != nil {
		return nil, nil, dirRecord{}, wrap(err)
	}
	return dd, ld, dirRecord{}, nil
}

// checkUncommitted returns ErrLostState if a generation in a directory
// without a history record holds writes: a log longer than one empty
// segment.
func (dd *dataDir) checkUncommitted() error {
	names, err := dd.fsys.ReadDir(dd.root)
	if err != nil {
		return err
	}
	for _, name := range names {
		if !strings.HasPrefix(name, genPrefix) || strings.HasSuffix(name, tempSuffix) {
			continue
		}
		dir := filepath.Join(dd.root, name)
		files, err := dd.fsys.ReadDir(dir)
		if err != nil {
			return err
		}
		segments := 0
		for _, f := range files {
			if _, ok := parseSegmentName(f); !ok {
				continue
			}
			segments++
			size, err := dataSize(dd.fsys, filepath.Join(dir, f))
			if err != nil {
				return err
			}
			if segments > 1 || size > segmentHeaderSize {
				return fmt.Errorf("%w: %s holds writes but the history record is missing", ErrLostState, dir)
			}
		}
	}
	return nil
}

// removeOtherGens removes every generation but keep, and temporary files.
func (dd *dataDir) removeOtherGens(keep uint64) error {
	names, err := dd.fsys.ReadDir(dd.root)
	if err != nil {
		return err
	}
	for _, name := range names {
		switch {
		case strings.HasPrefix(name, genPrefix) && name != genName(keep),
			strings.HasSuffix(name, tempSuffix):
			if err := dd.fsys.RemoveAll(filepath.Join(dd.root, name)); err != nil {
				return err
			}
		}
	}
	return nil
}

// loadGen loads the generation rec names: its newest snapshot, then the
// log from the snapshot's offset on. The backlog is refilled with the
// log's last backlog's worth, so replicas that were behind can still
// resume partially.
func loadGen[V any](dd *dataDir, cfg config, rec dirRecord) (*loadedData[V], error) {
	dir := dd.genDir(rec.gen)
	names, err := dd.fsys.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s is missing", ErrLostState, dir)
	}
	if err != nil {
		return nil, err
	}
	var snap uint64
	var found bool
	var stale []string
	for _, name := range names {
		if off, ok := parseSnapshotName(name); ok {
			if found {
				stale = append(stale, snapshotName(snap))
			}
			snap, found = off, true // names sort by offset
		}
		if strings.HasSuffix(name, tempSuffix) {
			stale = append(stale, name)
		}
	}
	if !found {
		return nil, fmt.Errorf("%w: %s holds no snapshot", ErrLostState, dir)
	}
	// Where the log starts and ends (no log at all is ErrLostState): the
	// store is sized for the keys its records past the snapshot may add.
	first, logEnd, err := segmentBounds(dd.fsys, dir)
	if err != nil {
		return nil, err
	}
	if first > snap {
		return nil, fmt.Errorf("%w: the log in %s starts at offset %d, after the snapshot at %d", ErrLostState, dir, first, snap)
	}
	name := filepath.Join(dir, snapshotName(snap))
	size, err := fileSize(dd.fsys, name)
	if err != nil {
		return nil, err
	}
	f, err := dd.fsys.OpenFile(name, os.O_RDONLY, 0)
	if err != nil {
		return nil, err
	}
	// The snapshot and the log go to one load: the workers filling the
	// store (parload.go) go on from the snapshot's entries to the log's
	// records.
	_, par, end, err := loadBackup[V](bufio.NewReaderSize(f, 256<<10), cfg, size, int64(logEnd)-int64(snap))
	f.Close()
	if err == nil {
		defer par.stop()
		if end != snap {
			err = fmt.Errorf("snapshot is exact at offset %d, not %d", end, snap)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrChecksum, name, err)
	}
	st := par.st
	var files []logFile // the segments replayed, for a worker's error
	par.wrap = func(err error, at uint64) error {
		if at == 0 {
			return fmt.Errorf("%w: %s: %w", ErrChecksum, name, err)
		}
		file := ""
		for _, lf := range files {
			if lf.from <= at-1 {
				file = lf.name
			}
		}
		return fmt.Errorf("%w: %s at offset %d: %w", ErrChecksum, file, at-1, err)
	}

	// The log: the frames past the snapshot go to the store, and the last
	// backlog's worth of frames (from the first that starts at or after
	// cutoff) to the backlog, so that replicas that were behind can
	// resume.
	cutoff := first
	if logEnd > first+dd.backlogSize {
		cutoff = logEnd - dd.backlogSize
	}
	var bl *backlog
	var ops []op
	off := first
	replay := func(frame []byte, file string) error {
		if off >= snap {
			if n := len(files); n == 0 || files[n-1].name != file {
				files = append(files, logFile{name: file, from: off})
			}
			// frame is in a buffer of its segment's own, not reused.
			t := frameType(frame[4])
			var err error
			ops, err = parseOps(ops[:0], t, frame[frameHeaderSize:len(frame)-frameCRCSize], cfg.maxKeySize, cfg.maxValueSize)
			if err != nil {
				return fmt.Errorf("%w: %s at offset %d: %w", ErrChecksum, file, off, err)
			}
			if err := par.record(ops, off+1); err != nil {
				return err // described by wrap
			}
		}
		if bl == nil && off >= cutoff {
			bl = newBacklog(cfg, off)
		}
		if bl != nil {
			bl.append(frame)
		}
		off += uint64(len(frame))
		return nil
	}
	sl, err := openStreamLog(dd.fsys, dir, snap, dd.segmentSize, dd.maxFrame, dd.log, replay)
	if err != nil {
		return nil, err
	}
	if err := par.finish(); err != nil {
		sl.close()
		return nil, err
	}
	if sl.end < snap {
		sl.close()
		return nil, fmt.Errorf("%w: the log in %s ends at offset %d, before the snapshot at %d", ErrLostState, dir, sl.end, snap)
	}
	if bl == nil {
		bl = newBacklog(cfg, sl.end)
	}
	st.private = false // the caller publishes it
	for _, name := range stale {
		if err := dd.fsys.Remove(filepath.Join(dir, name)); err != nil {
			dd.log.Warn("could not remove a stale file", "file", name, "err", err)
		}
	}
	dd.setUpLog(sl)
	dd.stream.Store(sl)
	dd.snapAt, dd.snapSize = snap, size
	dd.log.Info("loaded", "snapshot", snap, "offset", sl.end, "keys", st.len(), "log_from", first)
	return &loadedData[V]{rec: rec, store: st, backlog: bl}, nil
}

// logFile is a segment replayed from offset from on.
type logFile struct {
	name string
	from uint64
}

// segmentBounds returns where the oldest segment in dir starts, and where
// the log ends by the newest one's size (before a torn tail, if any, is
// cut off; without a preallocated tail of zeros). A dir without segments
// is ErrLostState.
func segmentBounds(fsys fileSystem, dir string) (first, end uint64, err error) {
	names, err := fsys.ReadDir(dir)
	if err != nil {
		return 0, 0, err
	}
	var last uint64
	found := false
	for _, name := range names {
		if s, ok := parseSegmentName(name); ok {
			if !found {
				first = s
			}
			last, found = s, true
		}
	}
	if !found {
		return 0, 0, fmt.Errorf("%w: %s holds no log", ErrLostState, dir)
	}
	size, err := dataSize(fsys, filepath.Join(dir, segmentName(last)))
	if err != nil {
		return 0, 0, err
	}
	return first, last + uint64(max(size-segmentHeaderSize, 0)), nil
}

func fileSize(fsys fileSystem, name string) (int64, error) {
	f, err := fsys.OpenFile(name, os.O_RDONLY, 0)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	return f.Seek(0, 2)
}

// setUpLog sets sl up for the policy, before sl is in use. Under
// FsyncAlways it preallocates its segments: an fsync that does not extend
// a file is quicker, and every write waits for one (the other policies
// write too much for the zeros to be worth writing first). Under
// FsyncEverySecond it watches the age of its oldest write not on disk.
func (dd *dataDir) setUpLog(sl *streamLog) {
	if dd.policy == FsyncEverySecond {
		sl.window = dd.interval
	}
	if dd.policy == FsyncAlways {
		sl.startPrealloc(dd.spareInline)
	}
}

// failed returns why the directory stopped taking writes, or nil.
func (dd *dataDir) failed() error {
	if e := dd.failure.Load(); e != nil {
		return *e
	}
	if s := dd.stream.Load(); s != nil {
		return s.failed()
	}
	return nil
}

// fail stops the directory taking writes; the first failure is kept.
func (dd *dataDir) fail(err error) error {
	err = fmt.Errorf("replmap: data directory %s failed, writes stopped: %w", dd.root, err)
	if dd.failure.CompareAndSwap(nil, &err) {
		dd.log.Error("data directory failed; writes stopped", "err", err)
	}
	return dd.failed()
}

// append adds a record to the log, if there is one. The caller holds
// writeMu. It asks for a snapshot once the log since the last one has
// grown past the threshold.
func (dd *dataDir) append(head, rest []byte) error {
	s := dd.stream.Load()
	if s == nil {
		return nil
	}
	if err := dd.failed(); err != nil {
		return err
	}
	end, err := s.appendEnd(head, rest)
	if err != nil {
		return err
	}
	if grown := end - dd.snapAt; grown >= uint64(max(dd.snapshotMin, dd.snapSize)) && !dd.compacting.Load() {
		select {
		case dd.kick <- struct{}{}:
		default:
		}
	}
	return nil
}

// afterWrite makes a write that ended at end as durable as the policy
// asks, outside writeMu: FsyncAlways waits for it to be on disk (sharing
// the fsync with concurrent writers), FsyncEverySecond waits only when the
// oldest write not on disk is older than the interval.
func (dd *dataDir) afterWrite(end uint64) error {
	s := dd.stream.Load()
	if s == nil {
		return nil
	}
	switch dd.policy {
	case FsyncAlways:
		return s.sync(end)
	case FsyncEverySecond:
		if s.overdue.Load() {
			return s.sync(end)
		}
	}
	return s.failed()
}

// sync makes every write so far durable. After a failure (of the log,
// or of a snapshot, which the log does not know of) it returns that
// failure: writes have stopped.
func (dd *dataDir) sync() error {
	if err := dd.failed(); err != nil {
		return err
	}
	s := dd.stream.Load()
	if s == nil {
		return nil
	}
	return s.sync(s.offset())
}

// durable returns the offset up to which the stream is on disk.
func (dd *dataDir) durable() uint64 {
	if s := dd.stream.Load(); s != nil {
		return s.durable.Load()
	}
	return 0
}

// noteHistory writes h as the directory's history, if it changed. The
// caller holds writeMu. A failure stops writes.
func (dd *dataDir) noteHistory(h history) {
	if dd.rec.hist == h || dd.stream.Load() == nil || dd.failed() != nil {
		return
	}
	rec := dirRecord{hist: h, gen: dd.rec.gen}
	if err := writeHistory(dd.fsys, dd.root, rec); err != nil {
		dd.fail(err)
		return
	}
	dd.rec = rec
}

// newGen writes d as a new generation, whole, and commits it: a snapshot
// of d's data, an empty log from its offset, then the history record. The
// caller holds no lock; n must not be taking writes yet.
func newGen[V any](dd *dataDir, n *node[V], d *dataset[V]) error {
	sf, gen, err := beginGen(dd, n)
	if err != nil {
		return err
	}
	end, err := n.writeSnapshot(context.Background(), sf.w)
	if err == nil {
		_, err = sf.finish(end)
	}
	if err != nil {
		sf.abort()
		return err
	}
	return dd.commitGen(sf, gen, end, d.hist)
}

// snapshotFile is a snapshot being written, as a temporary file.
type snapshotFile struct {
	fsys fileSystem
	f    file
	w    *bufio.Writer
	dir  string
	tmp  string
	size int64
}

// createSnapshotFile starts a snapshot as the temporary file tmp in dir.
func createSnapshotFile(fsys fileSystem, dir, tmp string) (*snapshotFile, error) {
	tmp = filepath.Join(dir, tmp)
	f, err := fsys.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, err
	}
	return &snapshotFile{fsys: fsys, f: f, w: bufio.NewWriterSize(f, 256<<10), dir: dir, tmp: tmp}, nil
}

// finish makes the snapshot durable under its name for offset.
func (sf *snapshotFile) finish(offset uint64) (string, error) {
	err := sf.w.Flush()
	if err == nil {
		sf.size, err = sf.f.Seek(0, 1)
	}
	if err == nil {
		err = sf.f.Sync()
	}
	if cerr := sf.f.Close(); err == nil {
		err = cerr
	}
	name := filepath.Join(sf.dir, snapshotName(offset))
	if err == nil {
		err = sf.fsys.Rename(sf.tmp, name)
	}
	if err == nil {
		err = sf.fsys.SyncDir(sf.dir)
	}
	return name, err
}

// abort removes the snapshot being written.
func (sf *snapshotFile) abort() {
	sf.f.Close()
	_ = sf.fsys.Remove(sf.tmp)
}

// commitGen starts the log of a new generation, whose snapshot sf is
// finished and exact at end, and commits it with h: from then on the old
// generation is gone. The caller holds writeMu, or has the node to itself.
func (dd *dataDir) commitGen(sf *snapshotFile, gen, end uint64, h history) error {
	dir := dd.genDir(gen)
	sl, err := openStreamLog(dd.fsys, dir, end, dd.segmentSize, dd.maxFrame, dd.log, nil)
	if err != nil {
		return err
	}
	if sl.end != end {
		sl.close()
		return fmt.Errorf("%w: the new log in %s ends at %d, not %d", ErrChecksum, dir, sl.end, end)
	}
	rec := dirRecord{hist: h, gen: gen}
	if err := writeHistory(dd.fsys, dd.root, rec); err != nil {
		sl.close()
		return err
	}
	dd.setUpLog(sl)
	old := dd.stream.Swap(sl)
	oldGen := dd.rec.gen
	dd.rec, dd.snapAt, dd.snapSize = rec, end, sf.size
	if old != nil {
		if err := old.close(); err != nil {
			dd.log.Warn("closing the old generation's log", "err", err)
		}
	}
	if oldGen != gen {
		if err := dd.fsys.RemoveAll(dd.genDir(oldGen)); err != nil {
			dd.log.Warn("could not remove the old generation", "dir", dd.genDir(oldGen), "err", err)
		}
	}
	return nil
}

// beginGen starts writing a new generation's snapshot from a full sync's
// stream (the frames a replica receives are the backup format): the
// replica tees FULL, the CHUNKs, END and the records up to END's offset
// into it, and commits it with commitGen when it swaps the new data in.
func beginGen[V any](dd *dataDir, n *node[V]) (*snapshotFile, uint64, error) {
	if err := dd.failed(); err != nil {
		return nil, 0, err
	}
	n.writeMu.Lock()
	gen := dd.rec.gen + 1
	n.writeMu.Unlock()
	dir := dd.genDir(gen)
	if err := dd.fsys.RemoveAll(dir); err != nil {
		return nil, 0, err
	}
	if err := dd.fsys.MkdirAll(dir); err != nil {
		return nil, 0, err
	}
	sf, err := createSnapshotFile(dd.fsys, dir, snapshotName(0)+tempSuffix)
	return sf, gen, err
}

// compact writes a snapshot of the node's data into the current
// generation and removes what it makes unneeded. A failure stops writes:
// the disk is failing.
func compact[V any](dd *dataDir, n *node[V]) {
	defer dd.compacting.Store(false)
	n.writeMu.Lock()
	d, gen, s := n.data(), dd.rec.gen, dd.stream.Load()
	n.writeMu.Unlock()
	if s == nil || dd.failed() != nil {
		return
	}
	dir := dd.genDir(gen)
	sf, err := createSnapshotFile(dd.fsys, dir, "snap"+tempSuffix)
	if err != nil {
		dd.fail(err)
		return
	}
	end, err := n.writeSnapshot(n.ctx, sf.w)
	if err == nil {
		// The log must reach the snapshot on disk: a restart replays it
		// from there.
		err = s.sync(end)
	}
	var name string
	if err == nil {
		name, err = sf.finish(end)
	}
	// A full sync may have replaced the generation meanwhile (closing
	// its log, removing its directory): then whatever failed, failed for
	// that, not for the disk, and the snapshot is simply dropped.
	n.writeMu.Lock()
	same := n.data().store == d.store && dd.rec.gen == gen && dd.stream.Load() == s
	prev := dd.snapAt
	if same && err == nil {
		dd.snapAt, dd.snapSize = end, sf.size
	}
	n.writeMu.Unlock()
	if err != nil || !same {
		sf.abort()
		if name != "" && !same {
			_ = dd.fsys.Remove(name)
		}
		if err != nil && same && n.ctx.Err() == nil {
			dd.fail(err)
		}
		return
	}
	dd.snapshots.Add(1)
	if prev != end {
		if err := dd.fsys.Remove(filepath.Join(dir, snapshotName(prev))); err != nil && !errors.Is(err, os.ErrNotExist) {
			dd.log.Warn("could not remove an old snapshot", "err", err)
		}
	}
	// Keep the log the backlog would hold after a restart.
	keep := end
	if tail := s.offset(); tail > dd.backlogSize {
		keep = min(keep, tail-dd.backlogSize)
	} else {
		keep = 0
	}
	s.removeBelow(keep)
	dd.log.Debug("snapshot written", "file", name, "offset", end, "bytes", sf.size)
}

// run is the directory's background work: the FsyncEverySecond flusher
// and snapshots, until ctx ends.
func run[V any](dd *dataDir, n *node[V], ctx context.Context) {
	var tick <-chan time.Time
	if dd.policy == FsyncEverySecond {
		t := time.NewTicker(dd.interval / 2)
		defer t.Stop()
		tick = t.C
	}
	// Snapshots run beside the flusher, one at a time.
	var snapshots sync.WaitGroup
	defer snapshots.Wait()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick:
			if s := dd.stream.Load(); s != nil && s.durable.Load() < s.offset() {
				_ = s.sync(s.offset()) // a failure is kept by the log, and stops writes
			}
		case <-dd.kick:
			if dd.compacting.CompareAndSwap(false, true) {
				snapshots.Go(func() { compact(dd, n) })
			}
		}
	}
}

// close makes everything durable, closes the log and releases the
// directory.
func (dd *dataDir) close() error {
	var err error
	if s := dd.stream.Load(); s != nil {
		err = s.close()
	}
	if f := dd.failure.Load(); f != nil && err == nil {
		err = *f
	}
	if dd.unlock != nil {
		dd.unlock()
		dd.unlock = nil
	}
	return err
}
