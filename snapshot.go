package replmap

import (
	"context"
	"encoding/binary"
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
// writers go on, so it may see some writes made after O. The link's cursor
// is pinned at O, and the stream from O follows END; once a replica has
// applied it up to E, its copy equals the primary's at E, since every
// write is a blind Set or Delete and replaying one is harmless.
func (l *link[V]) sendSnapshot(ctx context.Context, w io.Writer) error {
	p := l.p
	p.writeMu.Lock()
	from := p.backlog.end.Load()
	cur, _ := p.backlog.newCursor(from, l.evict) // the end is always inside the window
	p.writeMu.Unlock()
	l.cur = cur
	l.sent.Store(from)
	p.fullSyncs.Add(1)

	if _, err := w.Write(appendSyncStart(nil, frameFull, p.replID, from)); err != nil {
		return err
	}
	sw := snapshotWriter{w: w}
	var entries []entry[V]
	for i := range shardCount {
		if err := ctx.Err(); err != nil {
			return context.Cause(ctx)
		}
		entries = p.store.copyShard(i, entries[:0])
		for _, e := range entries {
			if err := addEntry(&sw, e.key, e.value); err != nil {
				return err
			}
		}
		clear(entries) // drop the references before the next shard
	}
	// Every write the walk saw has finished appending to the backlog once
	// the write lock is free, so E covers them all.
	p.writeMu.Lock()
	to := p.backlog.end.Load()
	p.writeMu.Unlock()
	return sw.finish(to)
}

// snapshotWriter packs snapshot entries into CHUNK frames of about
// snapshotChunkSize bytes and writes each as it fills, so a snapshot is
// never held in memory whole.
type snapshotWriter struct {
	w     io.Writer
	frame []byte // the CHUNK being filled
	value []byte // scratch for one encoded value
	crc   uint32
	count uint64
}

func addEntry[V any](s *snapshotWriter, key string, v V) error {
	var err error
	if s.value, err = appendValue(s.value[:0], v); err != nil {
		return err
	}
	if len(s.frame) == 0 {
		s.frame = beginFrame(s.frame, frameChunk)
	}
	s.frame = appendString(s.frame, key)
	s.frame = binary.AppendUvarint(s.frame, uint64(len(s.value)))
	s.frame = append(s.frame, s.value...)
	s.count++
	if len(s.frame) >= snapshotChunkSize {
		return s.flush()
	}
	return nil
}

func (s *snapshotWriter) flush() error {
	if len(s.frame) == 0 {
		return nil
	}
	s.crc = crc32.Update(s.crc, castagnoli, s.frame[frameHeaderSize:])
	s.frame = endFrame(s.frame, 0)
	_, err := s.w.Write(s.frame)
	if cap(s.frame) > 4*snapshotChunkSize {
		s.frame = nil // one huge value: do not keep its buffer
	}
	s.frame = s.frame[:0]
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
	crc      uint32
	count    uint64
}

func newSnapshotLoader[V any](maxKey, maxValue int) *snapshotLoader[V] {
	return &snapshotLoader[V]{store: newStore[V](), maxKey: maxKey, maxValue: maxValue}
}

// chunk loads one CHUNK payload.
func (s *snapshotLoader[V]) chunk(payload []byte) error {
	s.crc = crc32.Update(s.crc, castagnoli, payload)
	p := parser{b: payload}
	for len(p.b) > 0 {
		key := p.bytes("snapshot key", s.maxKey)
		raw := p.bytes("snapshot value", s.maxValue)
		if p.err != nil {
			return p.err
		}
		v, err := decodeValue[V](raw)
		if err != nil {
			return err
		}
		s.store.set(string(key), v)
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
