package replmap

import (
	"encoding/binary"
	"hash/maphash"
	"iter"
	"math/bits"
	"sync"
	"sync/atomic"
	"unsafe"
)

// shardCount spreads keys over independently locked maps, so readers
// rarely contend with a writer and a snapshot walk holds only one shard's
// lock at a time.
const shardCount = 256

// store is a concurrent map sharded by key hash. Writers to one store are
// serialised by its owner (the Primary's write lock, the Replica's apply
// loop); the shard locks exist for the concurrent readers.
//
// A store of []byte values packs each entry, key and value, into one
// allocation of exactly its size, and maps the key (which points into it)
// to a pointer into it: a map slot of 24 bytes instead of 40, one
// allocation per write instead of two, and about 60 bytes less per key.
// The value handed to Set is copied, and Get returns a slice of the
// packed entry (with capacity equal to its length, so an append by the
// caller copies).
type store[V any] struct {
	seed   maphash.Seed
	n      atomic.Int64
	packed bool // V is []byte: entries live in shard.p

	// private is set while one goroutine alone has the store (a snapshot
	// being loaded): writes then skip the shard locks. It is cleared
	// before the store is published, by an atomic store or under a lock,
	// which orders those writes before any reader's.
	private bool
	shards  [shardCount]shard[V]
}

type shard[V any] struct {
	mu sync.RWMutex
	m  map[string]V     // unless packed
	p  map[string]*byte // if packed: key -> the entry's length field (see pack)
	_  [24]byte         // keep neighbouring shards off one cache line
}

type entry[V any] struct {
	key   string
	value V
}

func newStore[V any]() *store[V] { return newStoreSized[V](0) }

// newStoreSized returns a store with room for about keys entries, so that
// loading them does not grow and rehash its maps.
func newStoreSized[V any](keys int) *store[V] {
	s := &store[V]{seed: maphash.MakeSeed()}
	_, s.packed = any((*V)(nil)).(*[]byte)
	per := 0
	if keys > 0 {
		per = keys/shardCount + keys/shardCount/8 + 1 // hashing is uneven
	}
	for i := range s.shards {
		if s.packed {
			s.shards[i].p = make(map[string]*byte, per)
		} else {
			s.shards[i].m = make(map[string]V, per)
		}
	}
	return s
}

func (s *store[V]) shard(key string) *shard[V] {
	return &s.shards[maphash.String(s.seed, key)%shardCount]
}

// shardOf returns the index of key's shard.
func (s *store[V]) shardOf(key []byte) uint16 {
	return uint16(maphash.Bytes(s.seed, key) % shardCount)
}

func (s *store[V]) get(key string) (V, bool) {
	sh := s.shard(key)
	sh.mu.RLock()
	if s.packed {
		e, ok := sh.p[key]
		sh.mu.RUnlock()
		return s.value(e), ok
	}
	v, ok := sh.m[key]
	sh.mu.RUnlock()
	return v, ok
}

// value returns the packed entry's value as a V (which is []byte); the
// zero V for nil.
func (s *store[V]) value(e *byte) V {
	var v V
	if e != nil {
		*(*[]byte)(unsafe.Pointer(&v)) = unpack(e)
	}
	return v
}

func (s *store[V]) set(key string, v V) {
	if s.packed {
		s.setPacked(s.packEntry(key, v))
		return
	}
	sh := s.shard(key)
	if put(s.private, &sh.mu, sh.m, key, v) {
		s.n.Add(1)
	}
}

// packEntry packs key and v, which is a []byte, for setPacked. Packed
// stores only.
func (s *store[V]) packEntry(key string, v V) (string, *byte) {
	b := *(*[]byte)(unsafe.Pointer(&v))
	return pack(key, b, b == nil)
}

// setBytes stores a []byte value given as wire bytes, without a
// conversion to string or an intermediate copy. It is for packed stores;
// isNil tells a nil value from an empty one.
func (s *store[V]) setBytes(key, value []byte, isNil bool) {
	s.setPacked(pack(key, value, isNil))
}

func (s *store[V]) setPacked(key string, e *byte) {
	// Assigning to a present string key replaces the key too, so the old
	// entry is released whole.
	sh := s.shard(key)
	if put(s.private, &sh.mu, sh.p, key, e) {
		s.n.Add(1)
	}
}

// put sets m[key] = e under mu (unless the store is private) and reports
// whether key is new.
func put[E any](private bool, mu *sync.RWMutex, m map[string]E, key string, e E) bool {
	if private {
		n := len(m)
		m[key] = e
		return len(m) != n
	}
	mu.Lock()
	n := len(m)
	m[key] = e
	grew := len(m) != n
	mu.Unlock()
	return grew
}

// delete removes key and reports whether it was there.
func (s *store[V]) delete(key string) bool {
	ok := s.deleteIn(s.shard(key), key)
	if ok {
		s.n.Add(-1)
	}
	return ok
}

// deleteIn removes key from sh, which is its shard, and reports whether it
// was there, leaving s.n to the caller.
func (s *store[V]) deleteIn(sh *shard[V], key string) bool {
	sh.mu.Lock()
	var ok bool
	if s.packed {
		if _, ok = sh.p[key]; ok {
			delete(sh.p, key)
		}
	} else if _, ok = sh.m[key]; ok {
		delete(sh.m, key)
	}
	sh.mu.Unlock()
	return ok
}

func (s *store[V]) len() int { return int(s.n.Load()) }

// copyShard appends shard i's entries to buf under its read lock. Values
// are shared, not copied: callers promise not to change a value after Set.
func (s *store[V]) copyShard(i int, buf []entry[V]) []entry[V] {
	sh := &s.shards[i]
	sh.mu.RLock()
	if s.packed {
		for k, e := range sh.p {
			buf = append(buf, entry[V]{k, s.value(e)})
		}
	} else {
		for k, v := range sh.m {
			buf = append(buf, entry[V]{k, v})
		}
	}
	sh.mu.RUnlock()
	return buf
}

// all walks the store a shard at a time, yielding outside the locks so
// the loop body may call back into the store. Like ranging over a map
// being written, it sees each key at most once and may or may not see
// writes made during the walk.
func (s *store[V]) all() iter.Seq2[string, V] {
	return func(yield func(string, V) bool) {
		var buf []entry[V]
		for i := range s.shards {
			buf = s.copyShard(i, buf[:0])
			for _, e := range buf {
				if !yield(e.key, e.value) {
					return
				}
			}
		}
	}
}

// pack lays out a []byte entry in one allocation: the key's bytes, then a
// uvarint that is 0 for a nil value and len(value)+1 otherwise, then the
// value's bytes. It returns the key as a string over the entry and a
// pointer to the uvarint.
func pack[K string | []byte](key K, value []byte, isNil bool) (string, *byte) {
	var n uint64
	if !isNil {
		n = uint64(len(value)) + 1
	}
	b := make([]byte, len(key)+uvarintLen(n)+len(value))
	copy(b, key)
	i := len(key) + binary.PutUvarint(b[len(key):], n)
	copy(b[i:], value)
	return unsafe.String(unsafe.SliceData(b), len(key)), &b[len(key)]
}

// unpack returns the value of the entry whose uvarint e points to. It
// reads only the uvarint's own bytes, then the value's.
func unpack(e *byte) []byte {
	var n uint64
	var i int
	for shift := 0; ; shift += 7 {
		c := *(*byte)(unsafe.Add(unsafe.Pointer(e), i))
		i++
		n |= uint64(c&0x7f) << shift
		if c < 0x80 {
			break
		}
	}
	switch n {
	case 0:
		return nil
	case 1:
		return []byte{}
	}
	return unsafe.Slice((*byte)(unsafe.Add(unsafe.Pointer(e), i)), n-1)
}

func uvarintLen(n uint64) int {
	return (bits.Len64(n|1) + 6) / 7
}
