package replmap

import (
	"hash/maphash"
	"iter"
	"sync"
	"sync/atomic"
)

// shardCount spreads keys over independently locked maps, so readers
// rarely contend with a writer and a snapshot walk holds only one shard's
// lock at a time.
const shardCount = 256

// store is a concurrent map sharded by key hash. Writers to one store are
// serialised by its owner (the Primary's write lock, the Replica's apply
// loop); the shard locks exist for the concurrent readers.
type store[V any] struct {
	seed   maphash.Seed
	n      atomic.Int64
	shards [shardCount]shard[V]
}

type shard[V any] struct {
	mu sync.RWMutex
	m  map[string]V
	_  [40]byte // keep neighbouring shards off one cache line
}

type entry[V any] struct {
	key   string
	value V
}

func newStore[V any]() *store[V] {
	s := &store[V]{seed: maphash.MakeSeed()}
	for i := range s.shards {
		s.shards[i].m = make(map[string]V)
	}
	return s
}

func (s *store[V]) shard(key string) *shard[V] {
	return &s.shards[maphash.String(s.seed, key)%shardCount]
}

func (s *store[V]) get(key string) (V, bool) {
	sh := s.shard(key)
	sh.mu.RLock()
	v, ok := sh.m[key]
	sh.mu.RUnlock()
	return v, ok
}

func (s *store[V]) set(key string, v V) {
	sh := s.shard(key)
	sh.mu.Lock()
	n := len(sh.m)
	sh.m[key] = v
	grew := len(sh.m) - n
	sh.mu.Unlock()
	if grew != 0 {
		s.n.Add(1)
	}
}

// delete removes key and reports whether it was there.
func (s *store[V]) delete(key string) bool {
	sh := s.shard(key)
	sh.mu.Lock()
	_, ok := sh.m[key]
	if ok {
		delete(sh.m, key)
	}
	sh.mu.Unlock()
	if ok {
		s.n.Add(-1)
	}
	return ok
}

func (s *store[V]) len() int { return int(s.n.Load()) }

// copyShard appends shard i's entries to buf under its read lock. Values
// are shared, not copied: callers promise not to change a value after Set.
func (s *store[V]) copyShard(i int, buf []entry[V]) []entry[V] {
	sh := &s.shards[i]
	sh.mu.RLock()
	for k, v := range sh.m {
		buf = append(buf, entry[V]{k, v})
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
