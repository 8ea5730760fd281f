package replmap

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"iter"
	"strings"
	"sync"
	"sync/atomic"
)

// ErrCompacted is the error a watch ends with when the history it needs
// is gone, and the way to recover is the same in every case: list again
// ([Primary.List], [Replica.List]) and watch from the offset the list
// returns. It is returned for an offset older than the backlog
// ([WithBacklogSize]) or not a record boundary of this history, for a
// watcher that fell so far behind that the backlog moved past it, and on
// a replica whose data a full sync replaced.
var ErrCompacted = errors.New("replmap: history compacted")

// Event is one write, as [Primary.Watch] and [Replica.Watch] yield it.
type Event[V any] struct {
	Key     string
	Value   V      // zero for a deletion
	Deleted bool   // a Delete, or a key that expired
	Offset  uint64 // the stream offset just after this write: resume with from = Offset
}

// Watch returns an iterator over every write to a key beginning with
// prefix ("" for all) made after offset from, in stream order, with no
// gap and no duplicate: pass from = Offset() to watch from now, or the
// Offset of the last event handled to resume. The writes of one Update
// come in the order its function made them, all with the Update's offset
// (so resume after an Update whole, not from the middle of one). A key
// that expires comes as a deletion.
//
// The iteration reads the backlog, so it costs no memory of its own and
// never slows writers: a watcher that falls more than the backlog
// ([WithBacklogSize]) behind is ended with ErrCompacted, and so is one
// whose from is older than the backlog. It waits for a from beyond the
// current offset. It ends after yielding an error, when ctx ends
// (yielding nothing more), and when p is closed (yielding ErrClosed).
//
// For a consistent view of a part of the map that stays up to date (a
// cache, an informer), call [Primary.List], then Watch from the offset it
// returns.
func (p *Primary[V]) Watch(ctx context.Context, prefix string, from uint64) iter.Seq2[Event[V], error] {
	return watch(p.n, ctx, prefix, from, p.stopped)
}

// Watch returns an iterator over every write the replica applies to a key
// beginning with prefix after offset from, as [Primary.Watch] does. It
// goes on across reconnects and partial resyncs, which continue the same
// stream. A full sync replaces the data under it: the watcher is then
// ended with ErrCompacted, and lists again. When r is closed, by Close or
// by its promotion, the iteration yields ErrClosed: after a promotion,
// resume on the new Primary from the last event's offset, which it
// continues without a gap.
func (r *Replica[V]) Watch(ctx context.Context, prefix string, from uint64) iter.Seq2[Event[V], error] {
	return watch(r.n, ctx, prefix, from, r.closedCh)
}

// List returns the keys beginning with prefix and their values, exactly as
// they were at one offset, which it returns too: Watch(ctx, prefix,
// offset) then yields every later change, so the pair keeps a copy of
// that part of the map exact. Keys whose deadline has passed are left
// out. It does not stop writers: it walks the store a shard at a time and
// then applies the writes made meanwhile, which the backlog holds for it
// up to the replica buffer limits ([WithReplicaBufferLimit]); past them
// it starts again, and after a few attempts returns an error wrapping
// ErrReplicaTooSlow. It returns ctx's error if ctx ends first.
func (p *Primary[V]) List(ctx context.Context, prefix string) (map[string]V, uint64, error) {
	return list(p.n, ctx, prefix)
}

// List returns the keys beginning with prefix and their values at one
// offset, and the offset, as [Primary.List] does, from the data the
// replica serves.
func (r *Replica[V]) List(ctx context.Context, prefix string) (map[string]V, uint64, error) {
	return list(r.n, ctx, prefix)
}

// watch runs a watch on n's data until ctx ends or closed is closed.
func watch[V any](n *node[V], ctx context.Context, prefix string, from uint64, closed <-chan struct{}) iter.Seq2[Event[V], error] {
	return func(yield func(Event[V], error) bool) {
		var none Event[V]
		bl := n.data().backlog
		// wait blocks until the stream may have grown; false when the
		// iteration is over (it yielded why, if it has to).
		wait := func(ch <-chan struct{}) bool {
			select {
			case <-ch:
				return true
			case <-ctx.Done():
			case <-closed:
				yield(none, ErrClosed)
			case <-n.ctx.Done():
				yield(none, ErrClosed)
			}
			return false
		}
		replaced := func() bool {
			if n.data().backlog != bl {
				yield(none, fmt.Errorf("%w: a full sync replaced the data being watched", ErrCompacted))
				return true
			}
			return false
		}
		for bl.end.Load() < from {
			ch := n.grew.wait()
			if replaced() {
				return
			}
			if bl.end.Load() >= from {
				break
			}
			if !wait(ch) {
				return
			}
		}
		c, ok := bl.newWeakCursor(from)
		if !ok {
			start, _ := bl.window()
			yield(none, fmt.Errorf("%w: offset %d is before the backlog's first, %d", ErrCompacted, from, start))
			return
		}
		defer bl.release(c)
		rr := recordReader{bl: bl, c: c, pos: from, maxFrame: n.cfg.maxFrameSize}
		pre := []byte(prefix)
		var ops []op
		for {
			t, payload, err := rr.next()
			if err == errNoRecord {
				ch := n.grew.wait()
				if bl.end.Load() > rr.read() {
					continue
				}
				if replaced() || !wait(ch) {
					return
				}
				continue
			}
			if err == nil {
				ops, err = parseOps(ops[:0], t, payload, n.cfg.maxKeySize, n.cfg.maxValueSize)
			}
			if err != nil {
				yield(none, err)
				return
			}
			for _, o := range ops {
				if !bytes.HasPrefix(o.key, pre) {
					continue
				}
				ev := Event[V]{Key: string(o.key), Deleted: o.del, Offset: rr.pos}
				if !o.del {
					if ev.Value, err = decodeValue[V](o.raw); err != nil {
						yield(none, err)
						return
					}
				}
				if !yield(ev, nil) {
					return
				}
			}
		}
	}
}

// maxListAttempts bounds how often List starts again when the writes made
// during its walk outgrow what the backlog holds for it.
const maxListAttempts = 3

// list is Primary.List and Replica.List on n.
func list[V any](n *node[V], ctx context.Context, prefix string) (map[string]V, uint64, error) {
	var err error
	for range maxListAttempts {
		var m map[string]V
		var end uint64
		if m, end, err = listOnce(n, ctx, prefix); err == nil {
			return m, end, nil
		}
		if !errors.Is(err, errListAgain) {
			return nil, 0, err
		}
	}
	return nil, 0, err
}

// errListAgain is why a listing starts again.
var errListAgain = errors.New("replmap: list again")

// listOnce walks the data while writers go on, from offset from to to,
// then applies the records between the two to what it found: every key
// not written meanwhile had the same value throughout, and every key
// written meanwhile ends with its last write, so the result is the data
// at to exactly (as a replica's full sync is).
func listOnce[V any](n *node[V], ctx context.Context, prefix string) (map[string]V, uint64, error) {
	d := n.data()
	n.writeMu.Lock()
	from := d.offset()
	c, _ := d.backlog.newCursor(from, nil) // the end is always in the window
	n.writeMu.Unlock()
	defer d.backlog.release(c)

	m := make(map[string]V)
	var buf []entry[V]
	t := now()
	for i := range shardCount {
		if err := ctx.Err(); err != nil {
			return nil, 0, err
		}
		buf = d.store.copyShard(i, buf[:0], t)
		for _, e := range buf {
			if strings.HasPrefix(e.key, prefix) {
				m[e.key] = e.value
			}
		}
		clear(buf)
	}
	n.writeMu.Lock()
	to := d.offset()
	cur := n.data()
	n.writeMu.Unlock()
	if cur.store != d.store || cur.backlog != d.backlog {
		return nil, 0, fmt.Errorf("%w: the data was replaced", errListAgain)
	}

	rr := recordReader{bl: d.backlog, c: c, pos: from, maxFrame: n.cfg.maxFrameSize}
	pre := []byte(prefix)
	var ops []op
	for rr.pos < to {
		typ, payload, err := rr.next()
		if err == nil {
			ops, err = parseOps(ops[:0], typ, payload, n.cfg.maxKeySize, n.cfg.maxValueSize)
		}
		if errors.Is(err, ErrReplicaTooSlow) {
			return nil, 0, fmt.Errorf("%w: %w", errListAgain, err)
		}
		if err != nil {
			return nil, 0, err
		}
		for _, o := range ops {
			if !bytes.HasPrefix(o.key, pre) {
				continue
			}
			if o.del || o.at != 0 && o.at <= t {
				delete(m, string(o.key))
				continue
			}
			v, err := decodeValue[V](o.raw)
			if err != nil {
				return nil, 0, err
			}
			m[string(o.key)] = v
		}
	}
	return m, to, nil
}

// errNoRecord reports that no whole record is in the backlog yet.
var errNoRecord = errors.New("replmap: no record yet")

// recordReader reads whole data records from a backlog through a cursor.
// The backlog hands out bytes a block at a time, so a record that spans
// blocks is gathered in buf; others are returned in place.
type recordReader struct {
	bl       *backlog
	c        *cursor
	pos      uint64 // offset just after the last record returned
	maxFrame int
	chunk    []byte // bytes of the last read not yet taken
	buf      []byte // the start of a record that spans reads
}

// read returns the offset up to which the backlog has been read.
func (rr *recordReader) read() uint64 { return rr.pos + uint64(len(rr.buf)+len(rr.chunk)) }

// next returns the next record's type and payload, valid until the next
// call; errNoRecord if the backlog does not hold it whole yet; and the
// cursor's error once it has been evicted.
func (rr *recordReader) next() (frameType, []byte, error) {
	for {
		if len(rr.buf) == 0 && len(rr.chunk) >= 4 {
			n, err := rr.size(rr.chunk)
			if err != nil {
				return 0, nil, err
			}
			if len(rr.chunk) >= n {
				f := rr.chunk[:n]
				rr.chunk = rr.chunk[n:]
				return rr.record(f)
			}
		}
		if len(rr.chunk) > 0 {
			need := 4 - len(rr.buf)
			if len(rr.buf) >= 4 {
				n, err := rr.size(rr.buf)
				if err != nil {
					return 0, nil, err
				}
				need = n - len(rr.buf)
			}
			take := min(need, len(rr.chunk))
			rr.buf = append(rr.buf, rr.chunk[:take]...)
			rr.chunk = rr.chunk[take:]
			if len(rr.buf) >= 4 {
				if n, _ := rr.size(rr.buf); len(rr.buf) == n {
					f := rr.buf
					rr.buf = rr.buf[:0]
					return rr.record(f)
				}
			}
			continue
		}
		b, err := rr.bl.read(rr.c, 256<<10)
		if err != nil {
			return 0, nil, err
		}
		if len(b) == 0 {
			return 0, nil, errNoRecord
		}
		rr.chunk = b
	}
}

// size returns the size of the frame that b starts with, from its length
// prefix.
func (rr *recordReader) size(b []byte) (int, error) {
	n := binary.BigEndian.Uint32(b)
	if n < 1 || n > uint32(rr.maxFrame)+1 {
		return 0, rr.notARecord()
	}
	return int(n) + 4 + frameCRCSize, nil
}

// record checks the whole frame f and returns it as the next record.
func (rr *recordReader) record(f []byte) (frameType, []byte, error) {
	t := frameType(f[4])
	body := f[:len(f)-frameCRCSize]
	if !isDataRecord(t) || crc32.Checksum(body, castagnoli) != binary.BigEndian.Uint32(f[len(body):]) {
		return 0, nil, rr.notARecord()
	}
	rr.pos += uint64(len(f))
	return t, body[frameHeaderSize:], nil
}

func (rr *recordReader) notARecord() error {
	return fmt.Errorf("%w: offset %d is not a record boundary of this history", ErrCompacted, rr.pos)
}

// broadcast wakes every goroutine waiting on it, each time it fires. It
// costs a writer one atomic load while nobody waits.
type broadcast struct {
	mu    sync.Mutex
	ch    chan struct{}
	armed atomic.Bool
}

// wait returns a channel closed at the next fire. Check the condition
// waited for after calling it, then wait on the channel.
func (b *broadcast) wait() <-chan struct{} {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.ch == nil {
		b.ch = make(chan struct{})
	}
	b.armed.Store(true)
	return b.ch
}

func (b *broadcast) fire() {
	if !b.armed.Load() {
		return
	}
	b.mu.Lock()
	if b.ch != nil {
		close(b.ch)
		b.ch = nil
	}
	b.armed.Store(false)
	b.mu.Unlock()
}
