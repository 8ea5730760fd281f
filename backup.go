package replmap

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
)

// errBackupDone ends a backup's stream at the offset its snapshot is exact
// at.
var errBackupDone = errors.New("replmap: backup complete")

// Backup writes a consistent copy of p's data to w, without stopping
// writers, and returns the offset it is exact at: the copy holds exactly
// p's data after the write that ended there. It is the stream a replica's
// full sync receives (the wire format, checksummed frame by frame and
// over the whole snapshot), recorded: give it to [RestorePrimary] to
// start a primary from it, for backups to object storage, seeding a new
// deployment, or tests.
//
// Writes made during the backup are included up to the offset returned.
// A writer slower than the writes is bounded like a replica: past the
// replica buffer limits ([WithReplicaBufferLimit]) the backup fails with
// ErrReplicaTooSlow. It returns ctx's error if ctx ends first, w's error
// if a write to w fails, and ErrClosed if p is closed.
func (p *Primary[V]) Backup(ctx context.Context, w io.Writer) (uint64, error) {
	if p.closed() {
		return 0, ErrClosed
	}
	end, err := p.n.writeSnapshot(ctx, w)
	if err != nil {
		return 0, fmt.Errorf("replmap: backup: %w", err)
	}
	return end, nil
}

// writeSnapshot writes the node's data to w as a backup (see
// Primary.Backup) and returns the offset it is exact at.
func (n *node[V]) writeSnapshot(ctx context.Context, w io.Writer) (uint64, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stop := context.AfterFunc(n.ctx, func() { cancel(ErrClosed) })
	defer stop()
	l := &link[V]{
		n:       n,
		d:       n.data(),
		addr:    "backup",
		cancel:  cancel,
		stopped: make(chan struct{}),
	}
	bw := bufio.NewWriterSize(w, 64<<10)
	end, err := l.sendSnapshot(ctx, bw)
	if l.cur != nil {
		defer l.d.backlog.release(l.cur)
	}
	if err == nil {
		// The stream from the snapshot's start up to its end, and no
		// further: what the restore needs to be exact at end.
		l.endAt(end, errBackupDone)
		_, err = l.drain(bw)
	}
	if err == nil {
		err = bw.Flush()
	}
	if cause := context.Cause(ctx); err != nil && cause != nil {
		err = cause // eviction, Close or ctx: say why rather than how
	}
	return end, err
}

// RestorePrimary returns a Primary whose data is the backup read from r
// (written by [Primary.Backup]). It continues the backed-up history: its
// Offset is the backup's, its ReplID2 is the backed-up primary's ReplID up
// to that offset, and its epoch is the backup's (or [WithEpoch]'s, if
// higher). Replicas that hold a prefix of that history resume with a
// partial resync if they are exactly at the backup's offset, and
// full-sync otherwise (those that were ahead discard what they had beyond
// it).
//
// The whole backup is checked before the Primary is returned: a damaged,
// truncated or oversized one is an error wrapping ErrChecksum,
// ErrProtocol or ErrTooLarge, and nothing is returned. The limits of the
// options apply ([WithMaxKeySize], [WithMaxValueSize],
// [WithMaxFrameSize], [WithMaxSnapshotSize]). With [WithDataDir], the
// directory must hold no data (ErrInvalidOption otherwise): the restored
// data is written to it before RestorePrimary returns.
func RestorePrimary[V any](r io.Reader, opts ...Option) (*Primary[V], error) {
	cfg, err := newConfig(opts)
	if err != nil {
		return nil, err
	}
	st, store, end, err := readBackup[V](r, cfg, 0)
	if err != nil {
		return nil, fmt.Errorf("replmap: restore: %w", err)
	}
	store.private = false
	epoch := max(st.epoch, cfg.epoch)
	d := &dataset[V]{
		store:   store,
		backlog: newBacklog(cfg, end),
		hist:    history{replID: newReplID(), replID2: st.replID, replID2Offset: end, epoch: epoch},
	}
	if cfg.dataDir != "" {
		return openPrimary(cfg, opts, d)
	}
	n := newNode(cfg, rolePrimary, d)
	p := newPrimaryHandle(n, cfg)
	p.opts = opts
	return p, nil
}

// loadSizeHint returns how many keys to size a store for that is loaded
// from a snapshot of size bytes, given the key count of its FULL frame,
// hint (bounded by size), and its first CHUNK, and that more bytes of
// records will follow. hint counts the keys when the snapshot began, not
// those written while it was taken, nor those the records add: both are
// estimated from the size of the CHUNK's entries, up to twice hint. It
// is a guess: too low, the maps grow as they fill (rehashing every key);
// too high, they take up to twice the room.
func loadSizeHint(hint int, chunk []byte, size, more int64) int {
	n := 0
	for p := (parser{b: chunk}); len(p.b) > 0 && p.err == nil; n++ {
		p.bytes("", len(p.b))
		p.bytes("", len(p.b))
	}
	if n == 0 || hint <= 0 {
		return hint
	}
	per := max(int64(len(chunk)/n), 1)
	est := size/per + max(more, 0)/(per+frameOverhead)
	return int(max(int64(hint), min(est, 2*int64(hint))))
}

// readBackup reads a backup: FULL, CHUNKs and records up to END, then the
// records up to END's offset, and nothing after. It returns the history
// it was taken from, the data, and the offset the data is exact at. The
// store is private (see store.private): the caller publishes it. size, if
// positive, is the backup's size in bytes, which bounds the key count the
// store is sized for.
func readBackup[V any](r io.Reader, cfg config, size int64) (syncStart, *store[V], uint64, error) {
	st, par, end, err := loadBackup[V](r, cfg, size, 0)
	if err != nil {
		return syncStart{}, nil, 0, err
	}
	if err := par.finish(); err != nil {
		return syncStart{}, nil, 0, err
	}
	return st, par.st, end, nil
}

// loadBackup is readBackup with the store still being filled: the caller
// may add more to it, and must call finish (or stop) on it. On an error,
// the load is stopped. more, if positive, is how many bytes of records
// the caller will add: the store is sized for the keys they may add too.
func loadBackup[V any](r io.Reader, cfg config, size, more int64) (_ syncStart, _ *parallelLoad[V], _ uint64, err error) {
	fr := newFrameReader(r, cfg.maxFrameSize)
	next := func() (frameType, []byte, int, error) {
		t, payload, size, err := fr.next()
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			err = fmt.Errorf("%w: the backup ends before it is complete", ErrProtocol)
		}
		return t, payload, size, err
	}
	t, payload, _, err := next()
	if err != nil {
		return syncStart{}, nil, 0, err
	}
	if t != frameFull {
		return syncStart{}, nil, 0, fmt.Errorf("%w: a backup starts with FULL, not %s", ErrProtocol, t)
	}
	st, err := parseSyncStart(t, payload)
	if err != nil {
		return syncStart{}, nil, 0, err
	}
	bound := cfg.maxSnapshot
	if size > 0 && (bound <= 0 || size < bound) {
		bound = size
	}
	// The frame after FULL: a first CHUNK tells the size of the entries.
	t, payload, fsize, err := next()
	if err != nil {
		return syncStart{}, nil, 0, err
	}
	keys := sizeHint(st.keys, bound)
	if t == frameChunk && size > 0 {
		keys = loadSizeHint(keys, payload, size, more)
	}
	loader := newSnapshotLoader[V](cfg.maxKeySize, cfg.maxValueSize, cfg.maxSnapshot, keys)
	par := newParallelLoad(loader.store, loadWorkerCount(cfg.loadWorkers))
	loader.par = par
	defer func() {
		if err != nil {
			par.stop()
		}
	}()
	offset := st.offset
	var until uint64
	ended := false
	var ops []op
	for have := true; !ended || offset < until; have = false {
		if !have {
			if t, payload, fsize, err = next(); err != nil {
				return syncStart{}, nil, 0, err
			}
		}
		switch t {
		case frameSet, frameDel, frameSetX, frameTx:
			ops, err = parseOps(ops[:0], t, par.copy(payload), cfg.maxKeySize, cfg.maxValueSize)
			if err == nil {
				err = par.record(ops, 0)
			}
			if err != nil {
				return syncStart{}, nil, 0, err
			}
			offset += uint64(fsize)
		case frameChunk, frameChunkX:
			if ended {
				return syncStart{}, nil, 0, fmt.Errorf("%w: %s after END", ErrProtocol, t)
			}
			if err := loader.chunk(t, payload); err != nil {
				return syncStart{}, nil, 0, err
			}
		case frameEnd:
			if ended {
				return syncStart{}, nil, 0, fmt.Errorf("%w: a second END", ErrProtocol)
			}
			e, err := parseSnapshotEnd(payload)
			if err == nil {
				err = loader.end(e)
			}
			if err != nil {
				return syncStart{}, nil, 0, err
			}
			ended, until = true, e.offset
		default:
			return syncStart{}, nil, 0, fmt.Errorf("%w: unexpected %s in a backup", ErrProtocol, t)
		}
		if ended && offset > until {
			return syncStart{}, nil, 0, fmt.Errorf("%w: records run past the snapshot's end at %d", ErrProtocol, until)
		}
	}
	if _, _, _, err := fr.next(); err != io.EOF {
		return syncStart{}, nil, 0, fmt.Errorf("%w: data after the backup's end", ErrProtocol)
	}
	return st, par, offset, nil
}
