package replmap

import (
	"encoding/binary"
	"fmt"
	"time"
)

// Update runs fn under the primary's write lock and applies the writes it
// made through tx as one: if fn returns nil, all of them, in the order fn
// made them, as a single record at a single offset, which Update returns
// (pass it to [Replica.WaitOffset] to read your writes on a replica); if
// fn returns an error (or panics), none, and Update returns that error.
// No reader, watcher or Wait, on the primary or on any replica, ever sees
// part of an Update: Get, Len and All show none of its writes or all of
// them, [Primary.Watch] yields all of its events, each with its offset,
// and an offset either includes it or does not.
//
// This makes read-modify-write safe (a counter, compare-and-swap, moving
// a value between keys), and it is the fast path for bulk writes: one
// lock, one record, one wake of the replica links for many keys. An
// Update with no writes returns the current offset.
//
// fn must not keep tx, and must not call the write methods of p (Set,
// Delete, Update...), which wait for the lock fn holds; reads of p are
// fine. Writes through tx are checked as they are made (ErrTooLarge, an
// encoding error), so fn can see a bad one; the record as a whole must
// also fit in [WithMaxFrameSize] (ErrTooLarge otherwise, and nothing is
// written). Update returns ErrStaleEpoch, ErrNotEnoughReplicas and
// ErrClosed as Set does, without running fn.
func (p *Primary[V]) Update(fn func(tx *Tx[V]) error) (offset uint64, err error) {
	d, err := p.lockForWrite()
	if err != nil {
		return 0, err
	}
	n := p.n
	buf := p.frameBuf()
	tx := &Tx[V]{p: p, st: d.store, frame: append(beginFrame((*buf)[:0], frameTx), 0, 0, 0, 0), ws: p.txWrites[:0]}
	locked := true
	defer func() {
		tx.done = true
		p.keepTxScratch(tx, locked)
		if locked {
			n.writeMu.Unlock()
		}
		p.putFrameBuf(buf, tx.frame)
	}()
	err = fn(tx)
	tx.done = true
	if err != nil {
		return 0, err
	}
	if len(tx.ws) == 0 {
		return d.offset(), nil
	}
	binary.BigEndian.PutUint32(tx.frame[frameHeaderSize:], uint32(len(tx.ws)))
	tx.frame = endFrame(tx.frame, 0)
	if size := len(tx.frame) - frameHeaderSize - frameCRCSize; size > p.cfg.maxFrameSize {
		return 0, fmt.Errorf("%w: an Update of %d writes makes a record of %d bytes, over the %d-byte frame limit", ErrTooLarge, len(tx.ws), size, p.cfg.maxFrameSize)
	}
	if len(tx.ws) == 1 {
		d.store.apply(&tx.ws[0])
	} else {
		d.store.applyAll(tx.ws)
	}
	err = n.appendRecord(d, tx.frame, nil)
	end := d.offset()
	p.keepTxScratch(tx, true)
	n.writeMu.Unlock()
	locked = false
	n.wakeLinks()
	if err == nil && n.disk != nil {
		err = n.disk.afterWrite(end)
	}
	return end, err
}

// keepTxScratch keeps tx's writes slice and key index for the next
// Update, emptied so that they hold no keys or values, unless they grew
// past what is worth keeping. It runs once per Update, with the write
// lock held (held says whether it still is).
func (p *Primary[V]) keepTxScratch(tx *Tx[V], held bool) {
	if !held || tx.ws == nil {
		return
	}
	ws, last := tx.ws, tx.last
	tx.ws, tx.last = nil, nil
	if cap(ws) > txScratchMax {
		return
	}
	clear(ws)
	p.txWrites = ws[:0]
	if last != nil && len(last) <= txScratchMax {
		clear(last)
		p.txIndex = last
	}
}

// txScratchMax is the largest Update whose scratch is kept for the next.
const txScratchMax = 4096

// Tx is the view of the map that the function given to [Primary.Update]
// works through. Its reads see the map as it is under the write lock,
// with the Tx's own writes on top; its writes are kept until the function
// returns, then applied together, or not at all. A Tx must not be used
// after the function returns: its writes then return an error wrapping
// ErrClosed, and its reads find nothing.
type Tx[V any] struct {
	p     *Primary[V]
	st    *store[V]
	frame []byte         // the TX record being built
	ws    []write[V]     // the writes, in order
	last  map[string]int // key -> index in ws of its last write, once ws is long
	value []byte         // scratch for an encoded value
	done  bool
}

// txIndexAt is how many writes a Tx holds before it indexes them by key.
const txIndexAt = 16

// Get returns the value under key, as the Tx's own writes left it if it
// made any, and whether it is there. A key whose deadline has passed is
// not.
func (tx *Tx[V]) Get(key string) (V, bool) {
	var zero V
	if tx.done {
		return zero, false
	}
	if i := tx.find(key); i >= 0 {
		w := &tx.ws[i]
		switch {
		case w.del:
			return zero, false
		case tx.st.packed:
			return tx.st.value(w.e), true
		}
		return w.v, true
	}
	return tx.st.get(key)
}

// Set stores value under key when the Update applies, clearing a
// deadline the key had. It returns ErrTooLarge for a key or encoded value
// over the limits, and an encoding error for a value msgpack cannot
// encode; the write is then left out.
func (tx *Tx[V]) Set(key string, value V) error { return tx.set(key, value, 0) }

// SetTTL stores value under key when the Update applies, to expire ttl
// from now, as [Primary.SetTTL] does. A ttl that is not positive is
// ErrInvalidTTL.
func (tx *Tx[V]) SetTTL(key string, value V, ttl time.Duration) error {
	at, err := deadline(ttl)
	if err != nil {
		return err
	}
	return tx.set(key, value, at)
}

// Delete removes key when the Update applies. Deleting a key that is not
// there (nor set earlier in the Tx) writes nothing.
func (tx *Tx[V]) Delete(key string) error {
	if err := tx.usable(key); err != nil {
		return err
	}
	if i := tx.find(key); i >= 0 {
		if tx.ws[i].del {
			return nil
		}
	} else if !tx.st.contains(key) {
		return nil
	}
	tx.frame = append(tx.frame, byte(frameDel))
	tx.frame = appendString(tx.frame, key)
	tx.add(tx.st.delWrite(key))
	return nil
}

func (tx *Tx[V]) set(key string, value V, at int64) error {
	if err := tx.usable(key); err != nil {
		return err
	}
	var err error
	if tx.value, err = appendValue(tx.value[:0], value); err != nil {
		return err
	}
	if max := tx.p.cfg.maxValueSize; len(tx.value) > max {
		return fmt.Errorf("%w: value of %d bytes exceeds the %d-byte limit", ErrTooLarge, len(tx.value), max)
	}
	kind := frameSet
	if at != 0 {
		kind = frameSetX
	}
	tx.frame = appendEntry(append(tx.frame, byte(kind)), at, key, tx.value)
	tx.ws = append(tx.ws, write[V]{})
	tx.st.prepareSet(&tx.ws[len(tx.ws)-1], key, value, at)
	tx.indexLast()
	return nil
}

// usable reports why a write to key cannot be made through tx.
func (tx *Tx[V]) usable(key string) error {
	if tx.done {
		return fmt.Errorf("%w: Tx used after its Update returned", ErrClosed)
	}
	return checkKey(key, tx.p.cfg.maxKeySize)
}

func (tx *Tx[V]) add(w write[V]) {
	tx.ws = append(tx.ws, w)
	tx.indexLast()
}

// indexLast indexes the last write, if the writes are indexed.
func (tx *Tx[V]) indexLast() {
	if tx.last != nil {
		n := len(tx.ws) - 1
		tx.last[tx.ws[n].key] = n
	}
}

// find returns the index of the last write to key, or -1. Once the Tx
// holds txIndexAt writes, the first find indexes them by key (a Tx that
// only sets never pays for the index), and add keeps the index from then on.
func (tx *Tx[V]) find(key string) int {
	if tx.last == nil && len(tx.ws) >= txIndexAt {
		tx.last = tx.p.txIndex
		tx.p.txIndex = nil
		if tx.last == nil {
			tx.last = make(map[string]int, 2*len(tx.ws))
		}
		for i := range tx.ws {
			tx.last[tx.ws[i].key] = i
		}
	}
	if tx.last != nil {
		if i, ok := tx.last[key]; ok {
			return i
		}
		return -1
	}
	for i := len(tx.ws) - 1; i >= 0; i-- {
		if tx.ws[i].key == key {
			return i
		}
	}
	return -1
}
