package replmap

import (
	"bufio"
	"context"
	"fmt"
	"hash/crc32"
	"io"
)

// sendSnapshot runs the primary's side of a full sync: FULL with the
// offset O the snapshot starts from, the store's entries in CHUNK frames,
// then END with the entry count, the checksum of every CHUNK payload and
// the offset E that the walk is complete at.
//
// The walk does not stop the world: it copies one shard at a time while
// writers go on, so it may see some writes made after O. Once a replica
// has applied the stream from O up to E, its copy equals the primary's at
// E, since every write is a blind Set or Delete and replaying one is
// harmless. Entries carry their deadlines, including those already due:
// the primary's deletion of such a key is in the stream, or yet to come.
//
// The stream is not held back until END: between shards, once the copied
// entries have been written, the link sends the records written so far.
// Every record sent before a shard's entries was in the store when the
// shard was copied, and every later one follows them, so the replica can
// apply records to the store it is loading as they come. The primary then
// buffers only what the link has not yet had time to send, and a replica
// that can keep up with the writes always finishes its sync, however long
// the snapshot takes (no full-sync loop, unlike a replica whose stream
// waits in an output buffer until the snapshot is done).
func (l *link[V]) sendSnapshot(ctx context.Context, w *bufio.Writer) (end uint64, err error) {
	n, d := l.n, l.d
	n.writeMu.Lock()
	from := d.backlog.end.Load()
	cur, _ := d.backlog.newCursor(from, l.evict) // the end is always inside the window
	n.writeMu.Unlock()
	l.cur = cur
	l.sent.Store(from)

	st := l.start(from)
	st.keys = uint64(d.store.len())
	if _, err := w.Write(appendSyncStart(nil, frameFull, st)); err != nil {
		return 0, err
	}
	sw := snapshotWriter{w: w, limit: chunkLimit(l.maxFrame)}
	var entries []entry[V]
	for i := range shardCount {
		if err := ctx.Err(); err != nil {
			return 0, context.Cause(ctx)
		}
		entries = d.store.copyShard(i, entries[:0], 0)
		for _, e := range entries {
			if err := addEntry(&sw, e.key, e.value, e.at); err != nil {
				return 0, err
			}
		}
		clear(entries) // drop the references before the next shard
		if d.backlog.end.Load() > l.cur.pos {
			if err := sw.flush(); err != nil {
				return 0, err
			}
			if _, err := l.drain(w); err != nil {
				return 0, err
			}
		}
	}
	// Every write the walk saw has finished appending to the backlog once
	// the write lock is free, so E covers them all.
	n.writeMu.Lock()
	to := d.backlog.end.Load()
	n.writeMu.Unlock()
	l.ackable.Store(true)
	return to, sw.finish(to)
}

// chunkLimit returns the CHUNK payload size to aim for when the replica
// reads frames of at most maxFrame bytes: snapshotChunkSize, or less for a
// replica with a smaller limit. One entry larger than that still goes in a
// CHUNK of its own; it fits any replica whose limits admit the entry.
func chunkLimit(maxFrame int) int {
	if maxFrame <= 0 {
		return snapshotChunkSize
	}
	return max(1, min(snapshotChunkSize, maxFrame-frameOverhead))
}

// snapshotWriter packs snapshot entries into CHUNK frames (CHUNKX for
// those with a deadline) of about snapshotChunkSize bytes and writes each
// as it fills, so a snapshot is never held in memory whole.
type snapshotWriter struct {
	w      io.Writer
	limit  int       // payload bytes a chunk may hold (0: snapshotChunkSize)
	frames [2][]byte // the CHUNK and the CHUNKX being filled
	value  []byte    // scratch for one encoded value
	crc    uint32
	count  uint64
}

func addEntry[V any](s *snapshotWriter, key string, v V, at int64) error {
	var err error
	if s.value, err = appendValue(s.value[:0], v); err != nil {
		return err
	}
	limit := s.limit
	if limit <= 0 {
		limit = snapshotChunkSize
	}
	k, t := 0, frameChunk
	size := uvarintLen(uint64(len(key))) + len(key) + uvarintLen(uint64(len(s.value))) + len(s.value)
	if at != 0 {
		k, t = 1, frameChunkX
		size += 8
	}
	if f := s.frames[k]; len(f) > 0 && len(f)-frameHeaderSize+size > limit {
		if err := s.flushFrame(k); err != nil {
			return err
		}
	}
	f := s.frames[k]
	if len(f) == 0 {
		f = beginFrame(f, t)
	}
	f = appendEntry(f, at, key, s.value)
	s.frames[k] = f
	s.count++
	if len(f)-frameHeaderSize >= limit {
		return s.flushFrame(k)
	}
	return nil
}

// flush writes the chunks being filled.
func (s *snapshotWriter) flush() error {
	for k := range s.frames {
		if err := s.flushFrame(k); err != nil {
			return err
		}
	}
	return nil
}

func (s *snapshotWriter) flushFrame(k int) error {
	f := s.frames[k]
	if len(f) == 0 {
		return nil
	}
	s.crc = crc32.Update(s.crc, castagnoli, f[frameHeaderSize:])
	f = endFrame(f, 0)
	_, err := s.w.Write(f)
	if cap(f) > 4*snapshotChunkSize {
		f = nil // one huge value: do not keep its buffer
	}
	s.frames[k] = f[:0]
	return err
}

func (s *snapshotWriter) finish(offset uint64) error {
	if err := s.flush(); err != nil {
		return err
	}
	_, err := s.w.Write(appendSnapshotEnd(nil, snapshotEnd{count: s.count, crc: s.crc, offset: offset}))
	return err
}

// snapshotLoader is the replica's side of a full sync: it decodes CHUNK
// frames into a fresh store that nobody reads yet, and at END checks the
// entry count and checksum before the store may be used.
type snapshotLoader[V any] struct {
	store    *store[V]
	maxKey   int
	maxValue int
	maxBytes int64            // of CHUNK payloads; 0 for no cap
	par      *parallelLoad[V] // if set, fills store (else chunk does)
	bytes    int64
	crc      uint32
	count    uint64
}

// newSnapshotLoader returns a loader into a new private store (see
// store.private), sized for keys entries: the FULL frame's hint, which
// the caller bounds by what it trusts.
func newSnapshotLoader[V any](maxKey, maxValue int, maxBytes int64, keys int) *snapshotLoader[V] {
	st := newStoreSized[V](keys)
	st.private = true
	return &snapshotLoader[V]{store: st, maxKey: maxKey, maxValue: maxValue, maxBytes: maxBytes}
}

// sizeHint bounds a FULL frame's key count by what the bytes it can be
// followed by could hold: a peer must not make a replica allocate for
// keys it never sends. An entry takes at least minEntryBytes of the
// snapshot; with no bound on the snapshot, the hint is not used.
func sizeHint(keys uint64, maxBytes int64) int {
	const minEntryBytes = 16
	if maxBytes <= 0 {
		return 0
	}
	return int(min(keys, uint64(maxBytes/minEntryBytes)))
}

// chunk loads one CHUNK or CHUNKX payload.
func (s *snapshotLoader[V]) chunk(t frameType, payload []byte) error {
	if s.bytes += int64(len(payload)); s.maxBytes > 0 && s.bytes > s.maxBytes {
		return fmt.Errorf("%w: snapshot of more than %d bytes exceeds the %d-byte limit", ErrTooLarge, s.bytes, s.maxBytes)
	}
	s.crc = crc32.Update(s.crc, castagnoli, payload)
	if s.par != nil {
		payload = s.par.copy(payload)
	}
	p := parser{b: payload}
	for len(p.b) > 0 {
		o := p.entry(snapshotNames, t == frameChunkX, s.maxKey, s.maxValue)
		if p.err != nil {
			return p.err
		}
		var err error
		if s.par != nil {
			err = s.par.add(loadItem{o: o, shard: s.store.shardOf(o.key)})
		} else {
			var w write[V]
			if err = prepareRecord(s.store, &w, o); err == nil {
				s.store.apply(&w)
			}
		}
		if err != nil {
			return err
		}
		s.count++
	}
	return nil
}

// end checks the END frame against what was loaded.
func (s *snapshotLoader[V]) end(e snapshotEnd) error {
	if e.count != s.count || e.crc != s.crc {
		return fmt.Errorf("%w: snapshot has %d entries with checksum %08x, END says %d and %08x",
			ErrChecksum, s.count, s.crc, e.count, e.crc)
	}
	return nil
}
