package replmap

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"runtime"
	"strconv"
	"testing"
	"time"
	"unsafe"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestPackedStoreRoundTrip checks []byte values of every length class
// the packed layout distinguishes, nil and empty apart.
func TestPackedStoreRoundTrip(t *testing.T) {
	s := newStore[[]byte]()
	require.True(t, s.packed)
	values := map[string][]byte{
		"nil":   nil,
		"empty": {},
		"one":   {7},
		"126":   bytes.Repeat([]byte{1}, 126), // one-byte length field
		"127":   bytes.Repeat([]byte{2}, 127), // two-byte length field
		"300":   bytes.Repeat([]byte{3}, 300),
		"70000": bytes.Repeat([]byte{4}, 70000), // three-byte length field
		"":      []byte("empty key"),
	}
	for k, v := range values {
		s.set(k, v)
	}
	require.Equal(t, len(values), s.len())
	for k, want := range values {
		got, ok := s.get(k)
		require.True(t, ok, k)
		assert.Equal(t, want, got, k) // tells nil from empty
		assert.Equal(t, len(got), cap(got), "%s: an append by the caller must copy", k)
	}
	all := make(map[string][]byte)
	for k, v := range s.all() {
		all[k] = v
	}
	assert.Equal(t, values, all)

	// The wire path stores the same thing.
	w := newStore[[]byte]()
	for k, v := range values {
		_, err := applyOps(w, []op{{key: []byte(k), raw: appendMsgpackBin(nil, v)}}, nil)
		require.NoError(t, err)
	}
	for k, want := range values {
		got, _ := w.get(k)
		assert.Equal(t, want, got, k)
	}
	assert.True(t, w.delete("nil"))
	assert.False(t, w.delete("nil"))
	assert.Equal(t, len(values)-1, w.len())
}

// TestPackedStoreCopiesAndReplaces: Set copies the caller's bytes, and an
// overwrite replaces the map's key as well as its value, so the key of
// every entry still points into that entry and nothing of the old one is
// kept alive.
func TestPackedStoreCopiesAndReplaces(t *testing.T) {
	s := newStore[[]byte]()
	v := []byte("first")
	s.set("k", v)
	v[0] = 'X'
	got, _ := s.get("k")
	assert.Equal(t, []byte("first"), got)

	for i := range 100 {
		s.set("key:"+strconv.Itoa(i%10), []byte(strconv.Itoa(i)))
	}
	for i := range s.shards {
		for k, e := range s.shards[i].p {
			if k == "" {
				continue
			}
			assert.Equal(t, unsafe.Add(unsafe.Pointer(unsafe.StringData(k)), len(k)), unsafe.Pointer(e),
				"key %q does not live in its own entry", k)
		}
	}
}

// TestPackedStoreMemory: a million keys of 100-byte values cost under 200
// bytes each, the figure Redis reaches (W7 of the benchmark program).
func TestPackedStoreMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("allocates 200 MB")
	}
	const n = 1_000_000
	heap := func() uint64 {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	before := heap()
	s := newStore[[]byte]()
	val := make([]byte, 100)
	for i := range n {
		s.set("key:"+strconv.Itoa(i), val)
	}
	perKey := float64(heap()-before) / n
	runtime.KeepAlive(s)
	t.Logf("%.0f bytes per key", perKey)
	assert.Less(t, perKey, 200.0)
}

// TestExpiryHeapAgainstModel drives an expiry index with random sets,
// updates and removals, and after every one checks it against a map: the
// heap property, that idx and heap agree (every key once, at the place
// idx says), deadline, and countDue and appendDue at several times.
func TestExpiryHeapAgainstModel(t *testing.T) {
	for seed := range uint64(4) {
		rng := rand.New(rand.NewPCG(seed, 7))
		var x expiry
		model := make(map[string]int64)
		keys := 1 + rng.IntN(200)
		for step := range 2000 {
			k := "k" + strconv.Itoa(rng.IntN(keys))
			switch rng.IntN(3) {
			case 0, 1:
				at := int64(1 + rng.IntN(1000)) // small range: many equal deadlines
				_, had := model[k]
				require.Equal(t, !had, x.set(k, at), "seed %d step %d: set(%s) reports whether it was new", seed, step, k)
				model[k] = at
			default:
				_, had := model[k]
				require.Equal(t, had, x.remove(k), "seed %d step %d: remove(%s)", seed, step, k)
				delete(model, k)
			}
			checkExpiry(t, &x, model, rng, fmt.Sprintf("seed %d step %d", seed, step))
			if step%100 == 99 && rng.IntN(4) == 0 { // empty it now and then
				for k := range model {
					require.True(t, x.remove(k))
					delete(model, k)
				}
				checkExpiry(t, &x, model, rng, "emptied")
			}
		}
	}
}

// setWrite returns a prepared set of key to v with the deadline at.
func (s *store[V]) setWrite(key string, v V, at int64) write[V] {
	var w write[V]
	s.prepareSet(&w, key, v, at)
	return w
}

// TestStoreDropsEmptyExpiry checks that a shard whose last key with a
// deadline goes holds no index: a store without TTLs pays nothing.
func TestStoreDropsEmptyExpiry(t *testing.T) {
	st := newStore[string]()
	w := st.setWrite("k", "v", now()+int64(time.Hour))
	st.apply(&w)
	sh := st.shard("k")
	require.NotNil(t, sh.exp)
	st.set("k", "v2") // a Set without a TTL clears it
	require.Nil(t, sh.exp)
	w = st.setWrite("k", "v", now()+int64(time.Hour))
	st.apply(&w)
	require.True(t, st.delete("k"))
	require.Nil(t, sh.exp)
	require.Zero(t, st.ttls.Load())
}

func checkExpiry(t *testing.T, x *expiry, model map[string]int64, rng *rand.Rand, where string) {
	t.Helper()
	if len(x.heap) != len(model) || len(x.idx) != len(model) {
		t.Fatalf("%s: heap %d, idx %d, model %d keys", where, len(x.heap), len(x.idx), len(model))
	}
	for i, it := range x.heap {
		if i > 0 && x.heap[(i-1)/expArity].at > it.at {
			t.Fatalf("%s: heap property broken at %d", where, i)
		}
		if j, ok := x.idx[it.key]; !ok || int(j) != i {
			t.Fatalf("%s: %s is at %d, idx says %d (%v)", where, it.key, i, j, ok)
		}
		if at, ok := x.deadline(it.key); !ok || at != model[it.key] || it.at != at {
			t.Fatalf("%s: deadline of %s is %d, want %d", where, it.key, at, model[it.key])
		}
	}
	if _, ok := x.deadline("absent"); ok {
		t.Fatalf("%s: a deadline for an absent key", where)
	}
	for _, now := range []int64{0, 1 + rng.Int64N(1000), 1000} {
		due := make(map[string]bool)
		for k, at := range model {
			if at <= now {
				due[k] = true
			}
		}
		if n := x.countDue(0, now); n != len(due) {
			t.Fatalf("%s: countDue(%d) = %d, want %d", where, now, n, len(due))
		}
		limit := rng.IntN(len(model) + 2)
		got := x.appendDue(0, now, []string{"pre"}, limit)
		if got[0] != "pre" {
			t.Fatalf("%s: appendDue overwrote dst", where)
		}
		got = got[1:]
		if want := max(0, min(len(due), limit-1)); len(got) != want {
			t.Fatalf("%s: appendDue(%d) with limit %d (one in dst) returned %d keys, want %d", where, now, limit, len(got), want)
		}
		seen := make(map[string]bool)
		for _, k := range got {
			if !due[k] || seen[k] {
				t.Fatalf("%s: appendDue(%d) returned %s: not due, or twice", where, now, k)
			}
			seen[k] = true
		}
	}
}
