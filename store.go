package replmap

import (
	"encoding/binary"
	"hash/maphash"
	"iter"
	"math/bits"
	"sync"
	"sync/atomic"
	"time"
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
	n      atomic.Int64 // keys, expired ones included
	ttls   atomic.Int64 // keys with a deadline
	packed bool         // V is []byte: entries live in shard.p

	// private is set while one goroutine alone has the store (a snapshot
	// being loaded): writes then skip the shard locks. It is cleared
	// before the store is published, by an atomic store or under a lock,
	// which orders those writes before any reader's.
	private bool

	// kick is sent to, without blocking, when a read meets a key whose
	// deadline has passed: a primary's expiry goroutine then deletes it
	// at once rather than at its next round.
	kick chan struct{}

	shards [shardCount]shard[V]
}

type shard[V any] struct {
	mu  sync.RWMutex
	m   map[string]V     // unless packed
	p   map[string]*byte // if packed: key -> the entry's length field (see pack)
	exp *expiry          // the keys that have a deadline; nil if none
	_   [16]byte         // keep neighbouring shards off one cache line
}

type entry[V any] struct {
	key   string
	value V
	at    int64 // deadline in Unix nanoseconds; 0 for none
}

func newStore[V any]() *store[V] { return newStoreSized[V](0) }

// newStoreSized returns a store with room for about keys entries, so that
// loading them does not grow and rehash its maps.
func newStoreSized[V any](keys int) *store[V] {
	s := &store[V]{seed: maphash.MakeSeed(), kick: make(chan struct{}, 1)}
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
	return &s.shards[s.shardIndex(key)]
}

func (s *store[V]) shardIndex(key string) uint16 {
	return uint16(maphash.String(s.seed, key) % shardCount)
}

// shardOf returns the index of key's shard.
func (s *store[V]) shardOf(key []byte) uint16 {
	return uint16(maphash.Bytes(s.seed, key) % shardCount)
}

// now is the clock deadlines are read against.
func now() int64 { return time.Now().UnixNano() }

func (s *store[V]) get(key string) (V, bool) {
	sh := s.shard(key)
	var v V
	var ok bool
	sh.mu.RLock()
	if s.packed {
		var e *byte
		if e, ok = sh.p[key]; ok {
			v = s.value(e)
		}
	} else {
		v, ok = sh.m[key]
	}
	expired := false
	if ok && sh.exp != nil {
		if at, has := sh.exp.deadline(key); has && at <= now() {
			expired = true
		}
	}
	sh.mu.RUnlock()
	if expired {
		s.expiredRead()
		var zero V
		return zero, false
	}
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

// packEntry packs key and v, which is a []byte, for a packed store.
func (s *store[V]) packEntry(key string, v V) (string, *byte) {
	b := *(*[]byte)(unsafe.Pointer(&v))
	return pack(key, b, b == nil)
}

// write is one change to a store, prepared outside any lock: a set of
// key (over the packed entry e, in a packed store) to v with the deadline
// at (0 for none), or a deletion.
type write[V any] struct {
	key string
	v   V
	e   *byte
	at  int64
	del bool
	sh  uint16
}

// prepareSet prepares in *w a set of key to v with the deadline at (0:
// none); a packed store's []byte value is copied here. It fills *w in
// place: returning a write by value cost a Set about a tenth of its time.
func (s *store[V]) prepareSet(w *write[V], key string, v V, at int64) {
	w.key, w.at, w.sh = key, at, s.shardIndex(key)
	if s.packed {
		w.key, w.e = s.packEntry(key, v)
	} else {
		w.v = v
	}
}

// delWrite prepares the deletion of key.
func (s *store[V]) delWrite(key string) write[V] {
	return write[V]{key: key, del: true, sh: s.shardIndex(key)}
}

// prepareRecord prepares a record's write in *w (in place: returning a
// write by value costs a hot path measurably), decoding its value (for a
// packed store, taking the bytes straight from the wire: no decoder, one
// allocation). A value that does not decode is an error.
func prepareRecord[V any](s *store[V], w *write[V], o op) error {
	w.at, w.del, w.sh = o.at, o.del, s.shardOf(o.key)
	switch {
	case o.del:
		w.key = string(o.key)
	case s.packed:
		b, err := readMsgpackRaw(o.raw)
		if err != nil {
			return err
		}
		w.key, w.e = pack(o.key, b, b == nil)
	default:
		v, err := decodeValue[V](o.raw)
		if err != nil {
			return err
		}
		w.key, w.v = string(o.key), v
	}
	return nil
}

// apply makes one write and reports whether its key was there before.
func (s *store[V]) apply(w *write[V]) bool {
	sh := &s.shards[w.sh]
	if !s.private {
		sh.mu.Lock()
	}
	existed, dn, dt := s.applyLocked(sh, w)
	if !s.private {
		sh.mu.Unlock()
	}
	s.count(dn, dt)
	return existed
}

func (s *store[V]) count(dn, dt int) {
	if dn != 0 {
		s.n.Add(int64(dn))
	}
	if dt != 0 {
		s.ttls.Add(int64(dt))
	}
}

// applyAll makes the writes, in order, as one: it holds the lock of every
// shard they touch (taken in shard order) from the first to the last, and
// counts the keys before it lets go, so a reader sees none of them or all.
func (s *store[V]) applyAll(ws []write[V]) {
	var touched [shardCount / 64]uint64
	for i := range ws {
		touched[ws[i].sh/64] |= 1 << (ws[i].sh % 64)
	}
	lock := func(f func(*sync.RWMutex)) {
		if s.private {
			return
		}
		for word, bitsSet := range touched {
			for bitsSet != 0 {
				b := bits.TrailingZeros64(bitsSet)
				bitsSet &^= 1 << b
				f(&s.shards[word*64+b].mu)
			}
		}
	}
	lock((*sync.RWMutex).Lock)
	var dn, dt int
	for i := range ws {
		_, n, t := s.applyLocked(&s.shards[ws[i].sh], &ws[i])
		dn, dt = dn+n, dt+t
	}
	s.count(dn, dt)
	lock((*sync.RWMutex).Unlock)
}

// applyLocked makes w in sh, whose lock the caller holds (unless the store
// is private). It reports whether the key was there before, and by how
// much the key count and the count of keys with a deadline change.
func (s *store[V]) applyLocked(sh *shard[V], w *write[V]) (existed bool, dn, dt int) {
	if w.del {
		if s.packed {
			if _, existed = sh.p[w.key]; existed {
				delete(sh.p, w.key)
			}
		} else if _, existed = sh.m[w.key]; existed {
			delete(sh.m, w.key)
		}
		if existed {
			dn = -1
		}
	} else {
		// Assigning to a present string key replaces the key too, so a
		// packed entry replaced is released whole.
		if s.packed {
			n := len(sh.p)
			sh.p[w.key] = w.e
			existed = len(sh.p) == n
		} else {
			n := len(sh.m)
			sh.m[w.key] = w.v
			existed = len(sh.m) == n
		}
		if !existed {
			dn = 1
		}
	}
	switch {
	case w.at != 0 && !w.del:
		if sh.exp == nil {
			sh.exp = new(expiry)
		}
		if sh.exp.set(w.key, w.at) {
			dt = 1
		}
	case sh.exp != nil:
		if sh.exp.remove(w.key) {
			dt = -1
			if len(sh.exp.heap) == 0 {
				sh.exp = nil
			}
		}
	}
	return existed, dn, dt
}

// delete removes key and reports whether it was there.
func (s *store[V]) delete(key string) bool {
	w := s.delWrite(key)
	return s.apply(&w)
}

// set stores v under key, without a deadline.
func (s *store[V]) set(key string, v V) {
	var w write[V]
	s.prepareSet(&w, key, v, 0)
	s.apply(&w)
}

// contains reports whether key is in the store, whether or not its
// deadline has passed.
func (s *store[V]) contains(key string) bool {
	ok, _ := s.lookup(key)
	return ok
}

// lookup reports whether key is in the store (whether or not its deadline
// has passed) and its deadline, 0 for none.
func (s *store[V]) lookup(key string) (bool, int64) {
	sh := s.shard(key)
	sh.mu.RLock()
	defer sh.mu.RUnlock()
	var ok bool
	if s.packed {
		_, ok = sh.p[key]
	} else {
		_, ok = sh.m[key]
	}
	at, _ := sh.exp.deadline(key)
	return ok, at
}

// len returns the number of keys, less those whose deadline has passed.
func (s *store[V]) len() int {
	n := int(s.n.Load())
	if s.ttls.Load() == 0 {
		return n
	}
	t := now()
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.RLock()
		if sh.exp != nil && sh.exp.heap[0].at <= t {
			n -= sh.exp.countDue(0, t)
		}
		sh.mu.RUnlock()
	}
	return max(n, 0)
}

// ttl returns the time key has left: (remaining, true) with a deadline,
// (0, true) without one, (0, false) for a key missing or expired.
func (s *store[V]) ttl(key string) (time.Duration, bool) {
	ok, at := s.lookup(key)
	switch {
	case !ok:
		return 0, false
	case at == 0:
		return 0, true
	}
	left := time.Duration(at - now())
	if left <= 0 {
		s.expiredRead()
		return 0, false
	}
	return left, true
}

// expiredRead tells the expiry goroutine, if any, that a read met a key
// whose deadline has passed.
func (s *store[V]) expiredRead() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// copyShard appends shard i's entries to buf under its read lock, with
// their deadlines; if t is not 0, it leaves out those due at t. Values
// are shared, not copied: callers promise not to change a value after Set.
func (s *store[V]) copyShard(i int, buf []entry[V], t int64) []entry[V] {
	sh := &s.shards[i]
	sh.mu.RLock()
	ttl := sh.exp != nil
	add := func(k string, v V) {
		var at int64
		if ttl {
			if at, _ = sh.exp.deadline(k); at != 0 && t != 0 && at <= t {
				return
			}
		}
		buf = append(buf, entry[V]{k, v, at})
	}
	if s.packed {
		for k, e := range sh.p {
			add(k, s.value(e))
		}
	} else {
		for k, v := range sh.m {
			add(k, v)
		}
	}
	sh.mu.RUnlock()
	return buf
}

// all walks the store a shard at a time, yielding outside the locks so
// the loop body may call back into the store. Like ranging over a map
// being written, it sees each key at most once and may or may not see
// writes made during the walk. Keys whose deadline has passed when their
// shard is copied are left out.
func (s *store[V]) all() iter.Seq2[string, V] {
	return func(yield func(string, V) bool) {
		var buf []entry[V]
		for i := range s.shards {
			buf = s.copyShard(i, buf[:0], now())
			for _, e := range buf {
				if !yield(e.key, e.value) {
					return
				}
			}
		}
	}
}

// dueKeys appends to dst up to limit keys of shard i whose deadline is at
// or before t.
func (s *store[V]) dueKeys(i int, t int64, dst []string, limit int) []string {
	sh := &s.shards[i]
	sh.mu.RLock()
	if sh.exp != nil && sh.exp.heap[0].at <= t {
		dst = sh.exp.appendDue(0, t, dst, limit)
	}
	sh.mu.RUnlock()
	return dst
}

// expire deletes key if its deadline is at or before t, and reports
// whether it did. The caller serialises writes.
func (s *store[V]) expire(key string, t int64) bool {
	w := s.delWrite(key)
	sh := &s.shards[w.sh]
	sh.mu.Lock()
	at, has := sh.exp.deadline(key)
	var existed bool
	var dn, dt int
	if has && at <= t {
		existed, dn, dt = s.applyLocked(sh, &w)
	}
	sh.mu.Unlock()
	s.count(dn, dt)
	return existed
}

// expiry indexes the keys of a shard that have a deadline: a 4-ary
// min-heap ordered by deadline, and each key's place in it, so that the
// next key due is at the top, a deadline is found or changed in O(log n),
// and the keys due at a time are found without looking at the others. A
// shard without such keys has none (a nil *expiry), so a store without
// TTLs pays one pointer per shard.
type expiry struct {
	idx  map[string]int32
	heap []expItem
}

// expArity is the heap's number of children per node: four halves the
// levels an item moves through, and with them the writes to idx, each
// likely a cache miss, for a few more comparisons in one cache line.
const expArity = 4

type expItem struct {
	key string
	at  int64
}

// deadline returns key's deadline, if it has one. x may be nil.
func (x *expiry) deadline(key string) (int64, bool) {
	if x == nil {
		return 0, false
	}
	i, ok := x.idx[key]
	if !ok {
		return 0, false
	}
	return x.heap[i].at, true
}

// set gives key the deadline at and reports whether it had none. The key
// string is stored as given, replacing the one held (for a packed store,
// the one over the entry now in the map).
func (x *expiry) set(key string, at int64) bool {
	if i, ok := x.idx[key]; ok {
		x.idx[key] = i
		x.heap[i] = expItem{key, at}
		x.fix(int(i))
		return false
	}
	if x.idx == nil {
		x.idx = make(map[string]int32)
	}
	i := len(x.heap)
	x.heap = append(x.heap, expItem{key, at})
	x.idx[key] = int32(i)
	x.up(i)
	return true
}

// remove takes key's deadline away and reports whether it had one.
func (x *expiry) remove(key string) bool {
	i, ok := x.idx[key]
	if !ok {
		return false
	}
	delete(x.idx, key)
	last := len(x.heap) - 1
	if int(i) != last {
		x.heap[i] = x.heap[last]
		x.idx[x.heap[i].key] = i
	}
	x.heap[last] = expItem{}
	x.heap = x.heap[:last]
	if int(i) != last {
		x.fix(int(i))
	}
	return true
}

func (x *expiry) fix(i int) {
	if !x.down(i) {
		x.up(i)
	}
}

// up moves the item at j towards the root to its place. Items move
// through a hole, so each one moved has its place recorded once; the item
// itself has its place recorded only if it moved.
func (x *expiry) up(j0 int) {
	h := x.heap
	it := h[j0]
	j := j0
	for j > 0 {
		i := (j - 1) / expArity
		if h[i].at <= it.at {
			break
		}
		h[j] = h[i]
		x.idx[h[j].key] = int32(j)
		j = i
	}
	if j < j0 {
		h[j] = it
		x.idx[it.key] = int32(j)
	}
}

// down moves the item at i0 away from the root to its place, as up does,
// and reports whether it moved.
func (x *expiry) down(i0 int) bool {
	h := x.heap
	it := h[i0]
	i := i0
	for {
		first := expArity*i + 1
		if first >= len(h) {
			break
		}
		j := first
		for c := first + 1; c < min(first+expArity, len(h)); c++ {
			if h[c].at < h[j].at {
				j = c
			}
		}
		if it.at <= h[j].at {
			break
		}
		h[i] = h[j]
		x.idx[h[i].key] = int32(i)
		i = j
	}
	if i > i0 {
		h[i] = it
		x.idx[it.key] = int32(i)
	}
	return i > i0
}

// countDue returns how many keys in the subheap at i are due at t. It
// visits only those and their children: O(due).
func (x *expiry) countDue(i int, t int64) int {
	if i >= len(x.heap) || x.heap[i].at > t {
		return 0
	}
	n := 1
	for c := expArity*i + 1; c <= expArity*i+expArity; c++ {
		n += x.countDue(c, t)
	}
	return n
}

// appendDue appends up to limit keys of the subheap at i that are due at t.
func (x *expiry) appendDue(i int, t int64, dst []string, limit int) []string {
	if i >= len(x.heap) || x.heap[i].at > t || len(dst) >= limit {
		return dst
	}
	dst = append(dst, x.heap[i].key)
	for c := expArity*i + 1; c <= expArity*i+expArity; c++ {
		dst = x.appendDue(c, t, dst, limit)
	}
	return dst
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
