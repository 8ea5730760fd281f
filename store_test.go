package replmap

import (
	"bytes"
	"math/rand/v2"
	"runtime"
	"strconv"
	"testing"
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

// TestExpiryHeapStaysIndexed drives an expiry index with random deadline
// changes and removals and checks after each that it is a min-heap by
// deadline whose index gives every key's place, and that the keys due
// come out in deadline order.
func TestExpiryHeapStaysIndexed(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	var x expiry
	want := make(map[string]int64)
	check := func() {
		t.Helper()
		require.Len(t, x.heap, len(want))
		require.Len(t, x.idx, len(want))
		for i, it := range x.heap {
			if x.idx[it.key] != int32(i) || want[it.key] != it.at || i > 0 && x.heap[(i-1)/2].at > it.at {
				t.Fatalf("at %d: %s due %d, indexed at %d, want due %d; parent due %d",
					i, it.key, it.at, x.idx[it.key], want[it.key], x.heap[max(i-1, 0)/2].at)
			}
		}
	}
	for range 3000 {
		key := "k" + strconv.Itoa(r.IntN(300))
		if r.IntN(3) == 0 {
			_, had := want[key]
			require.Equal(t, had, x.remove(key))
			delete(want, key)
		} else {
			at := int64(r.IntN(1000) + 1)
			_, had := want[key]
			require.Equal(t, !had, x.set(key, at))
			want[key] = at
		}
		check()
	}
	for len(x.heap) > 0 {
		top := x.heap[0]
		for _, at := range want {
			require.LessOrEqual(t, top.at, at)
		}
		require.True(t, x.remove(top.key))
		delete(want, top.key)
		check()
	}
}
