package replmap

import (
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// backlogBlockSize is the unit in which the backlog allocates and frees.
const backlogBlockSize = 64 << 10

// backlog is the primary's window onto its replication stream: the encoded
// data records in offset order, appended once by writers and read by every
// link through its own cursor, so the same bytes fan out to all replicas
// without being copied per link.
//
// It keeps at least the last size bytes, for partial resyncs. A cursor also
// pins what it has not read yet, so a replica reading slowly does not lose
// its place; but once a cursor is more than limit bytes behind the end, or
// more than softLimit bytes behind for softTime without a break, it is
// evicted and its link dropped, so memory stays bounded by the larger of
// size and limit.
//
// The bytes live in fixed-size blocks aligned to offsets that are multiples
// of backlogBlockSize. A block's bytes below end never change, so readers
// use them after releasing the lock; writers only append beyond end.
type backlog struct {
	mu        sync.Mutex
	size      uint64
	limit     uint64
	softLimit uint64 // 0: none
	softTime  time.Duration
	blocks    [][]byte // blocks[i] holds offsets [first+i*blockSize, first+(i+1)*blockSize)
	first     uint64   // offset of blocks[0][0]
	start     uint64   // oldest offset held
	end       atomic.Uint64
	cursors   map[*cursor]struct{}
	free      [][]byte // trimmed blocks kept for reuse (see trim)

	// served is the offset at which the data this backlog's stream
	// builds was first served: where a replica's full sync swapped it in
	// (0 for a primary's, or data loaded from disk). It is set before the
	// data is published and never changes after. Offsets before it name
	// no state that was ever served from this data.
	served uint64
}

// backlogFreeBlocks is how many trimmed blocks the backlog keeps for
// reuse. The window moves a block at a time, so a few suffice; reusing
// them saves a fresh 64 KiB allocation, and its page faults, every few
// hundred writes.
const backlogFreeBlocks = 8

// A cursor is one reader's position in the backlog.
type cursor struct {
	pos       uint64          // next offset to read
	weak      bool            // pins nothing: evicted when its position leaves the window
	holding   *byte           // first byte of the block read last, which the reader may still be writing out
	overSince time.Time       // when it went past the soft limit; zero if within it
	evicted   bool            // fell too far behind
	err       error           // why it was evicted
	onEvict   func(err error) // called once, under the backlog's lock, on eviction
}

// newBacklog returns an empty backlog whose stream starts at offset start:
// a primary's at its offset, a replica's where its data begins.
func newBacklog(c config, start uint64) *backlog {
	b := &backlog{
		size:      uint64(c.backlogSize),
		limit:     uint64(c.bufferLimit),
		softLimit: uint64(c.softLimit),
		softTime:  c.softTime,
		cursors:   make(map[*cursor]struct{}),
		first:     start - start%backlogBlockSize,
		start:     start,
	}
	b.end.Store(start)
	return b
}

// append adds a record's bytes, given in parts, at the end. The caller
// serialises appends.
func (b *backlog) append(parts ...[]byte) {
	b.mu.Lock()
	end := b.end.Load()
	// Limits are judged against the start of the record: a cursor that has
	// read everything before it is keeping up, however large the record
	// (a record larger than the limit must not evict every replica).
	recordStart := end
	for _, p := range parts {
		for len(p) > 0 {
			i := (end - b.first) / backlogBlockSize
			if i == uint64(len(b.blocks)) {
				b.trim(end, recordStart)
				i = (end - b.first) / backlogBlockSize
				b.blocks = append(b.blocks, b.newBlock())
			}
			blk := b.blocks[i]
			n := copy(blk[end%backlogBlockSize:], p)
			p = p[n:]
			end += uint64(n)
		}
	}
	b.end.Store(end)
	b.mu.Unlock()
}

// trim frees the blocks that neither the size window nor any live cursor
// needs, and evicts cursors that were past the buffer limits at
// recordStart, the start of the record being appended.
func (b *backlog) trim(end, recordStart uint64) {
	var keep uint64
	if end > b.size {
		keep = end - b.size
	}
	var now time.Time
	for c := range b.cursors {
		if c.evicted || c.weak {
			continue
		}
		var behind uint64
		if recordStart > c.pos {
			behind = recordStart - c.pos
		}
		switch {
		case behind > b.limit:
			b.evict(c, fmt.Errorf("%w: %d bytes behind, over the limit of %d", ErrReplicaTooSlow, behind, b.limit))
			continue
		case b.softLimit > 0 && behind > b.softLimit:
			if now.IsZero() {
				now = time.Now()
			}
			if c.overSince.IsZero() {
				c.overSince = now
			} else if over := now.Sub(c.overSince); over >= b.softTime {
				b.evict(c, fmt.Errorf("%w: over the soft limit of %d bytes for %v", ErrReplicaTooSlow, b.softLimit, over.Round(time.Millisecond)))
				continue
			}
		default:
			c.overSince = time.Time{}
		}
		keep = min(keep, c.pos)
	}
	if keep <= b.first {
		return
	}
	drop := int((keep - b.first) / backlogBlockSize)
	if drop == 0 {
		return
	}
	for _, blk := range b.blocks[:drop] {
		if len(b.free) < backlogFreeBlocks && !b.held(blk) {
			b.free = append(b.free, blk)
		}
	}
	b.blocks = slices.Delete(b.blocks, 0, drop)
	b.first += uint64(drop) * backlogBlockSize
	b.start = max(b.start, b.first)
	for c := range b.cursors {
		if c.weak && !c.evicted && c.pos < b.start {
			b.evict(c, fmt.Errorf("%w: the watcher fell behind the backlog (%d bytes)", ErrCompacted, b.size))
		}
	}
}

// held reports whether a reader may still be using blk: the bytes read
// returns are used after the lock is released, until that reader's next
// read. Such a block is left to the garbage collector, never reused.
func (b *backlog) held(blk []byte) bool {
	for c := range b.cursors {
		if c.holding == &blk[0] {
			return true
		}
	}
	return false
}

func (b *backlog) newBlock() []byte {
	if n := len(b.free); n > 0 {
		blk := b.free[n-1]
		b.free = b.free[:n-1]
		return blk
	}
	return make([]byte, backlogBlockSize)
}

func (b *backlog) evict(c *cursor, err error) {
	c.evicted, c.err = true, err
	if c.onEvict != nil {
		c.onEvict(err)
	}
}

// window returns the range of offsets held: [start, end].
func (b *backlog) window() (start, end uint64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.start, b.end.Load()
}

// newCursor returns a cursor at pos, or false if pos is outside the window.
// onEvict, if not nil, is called when the cursor is evicted; it must not
// block or call back into the backlog.
func (b *backlog) newCursor(pos uint64, onEvict func(error)) (*cursor, bool) {
	return b.addCursor(&cursor{pos: pos, onEvict: onEvict})
}

// newWeakCursor returns a cursor at pos that pins nothing: once pos
// leaves the window, the cursor is evicted (and read returns the error it
// was evicted with). A watcher reads with one, so that one which does not
// keep up costs no memory: it is ended instead.
func (b *backlog) newWeakCursor(pos uint64) (*cursor, bool) {
	return b.addCursor(&cursor{pos: pos, weak: true})
}

// addCursor registers c if its position is inside the window.
func (b *backlog) addCursor(c *cursor) (*cursor, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if c.pos < b.start || c.pos > b.end.Load() {
		return nil, false
	}
	b.cursors[c] = struct{}{}
	return c, true
}

// release forgets c, unpinning what it had not read.
func (b *backlog) release(c *cursor) {
	b.mu.Lock()
	delete(b.cursors, c)
	b.mu.Unlock()
}

// read returns up to limit bytes at c's position and advances c past them.
// The bytes are the backlog's own: the caller must not change them, and may
// use them only until its next read on c (or until c is released). It
// returns nothing when c is at the end, and the error c was evicted with
// (wrapping ErrReplicaTooSlow, or ErrCompacted for a weak cursor) once it
// has been.
func (b *backlog) read(c *cursor, limit int) ([]byte, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if c.evicted {
		return nil, c.err
	}
	end := b.end.Load()
	if c.pos >= end {
		return nil, nil
	}
	off := c.pos % backlogBlockSize
	n := min(backlogBlockSize-off, end-c.pos, uint64(limit))
	blk := b.blocks[(c.pos-b.first)/backlogBlockSize]
	c.holding = &blk[0]
	c.pos += n
	if end-c.pos <= b.softLimit {
		c.overSince = time.Time{}
	}
	return blk[off : off+n], nil
}
