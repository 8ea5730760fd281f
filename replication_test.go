package replmap

import (
	"bytes"
	"context"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/replmap/replmap/transport"
)

func TestFullSyncOfExistingData(t *testing.T) {
	net := transport.NewInmem()
	p := startPrimary[string](t, net, "p")
	for i := range 5000 {
		require.NoError(t, p.Set("key:"+strconv.Itoa(i), "value-"+strconv.Itoa(i)))
	}
	r := startReplica[string](t, net, "p")
	waitSynced(t, r)
	// The first sync is complete when WaitSynced returns: no eventually.
	require.NoError(t, converged(p, r))
	info := r.Info()
	assert.Equal(t, StateStreaming, info.State)
	assert.Equal(t, p.ReplID(), info.ReplID)
	assert.Equal(t, uint64(1), info.FullSyncs)
	assert.Equal(t, 5000, info.Keys)
	assert.Equal(t, uint64(1), p.Info().FullSyncs)
}

func TestLiveSetsAndDeletes(t *testing.T) {
	net := transport.NewInmem()
	p := startPrimary[string](t, net, "p")
	r := startReplica[string](t, net, "p")
	waitSynced(t, r)

	require.NoError(t, p.Set("a", "1"))
	require.NoError(t, p.Set("b", "2"))
	require.NoError(t, p.Set("a", "3"))
	require.NoError(t, p.Delete("b"))
	require.NoError(t, p.Delete("missing")) // no record, no offset change
	requireConverged(t, p, r)

	v, ok := r.Get("a")
	assert.True(t, ok)
	assert.Equal(t, "3", v)
	_, ok = r.Get("b")
	assert.False(t, ok)
	assert.Equal(t, 1, r.Len())
}

func TestDeleteOfMissingKeyDoesNotAdvanceOffset(t *testing.T) {
	p, err := NewPrimary[int]()
	require.NoError(t, err)
	defer p.Close()
	require.NoError(t, p.Set("a", 1))
	off := p.Offset()
	require.NoError(t, p.Delete("nope"))
	assert.Equal(t, off, p.Offset())
	require.NoError(t, p.Delete("a"))
	assert.Greater(t, p.Offset(), off)
}

func TestReplicaIsReadOnly(t *testing.T) {
	net := transport.NewInmem()
	p := startPrimary[string](t, net, "p")
	require.NoError(t, p.Set("a", "1"))
	r := startReplica[string](t, net, "p")
	waitSynced(t, r)

	require.ErrorIs(t, r.Set("a", "2"), ErrReadOnly)
	require.ErrorIs(t, r.Delete("a"), ErrReadOnly)
	v, _ := r.Get("a")
	assert.Equal(t, "1", v)
	v, _ = p.Get("a")
	assert.Equal(t, "1", v)
}

func TestStructAndLargeByteValues(t *testing.T) {
	type user struct {
		Name  string
		Age   int
		Tags  []string
		Attrs map[string]float64
	}
	t.Run("struct", func(t *testing.T) {
		net := transport.NewInmem()
		p := startPrimary[user](t, net, "p")
		want := user{Name: "ada", Age: 36, Tags: []string{"math", "engines"}, Attrs: map[string]float64{"x": 1.5}}
		require.NoError(t, p.Set("before", want))
		r := startReplica[user](t, net, "p")
		waitSynced(t, r)
		require.NoError(t, p.Set("after", want))
		waitFor(t, "replica offset", func() bool { return r.Offset() == p.Offset() })
		for _, k := range []string{"before", "after"} {
			got, ok := r.Get(k)
			require.True(t, ok, k)
			assert.Equal(t, want, got, k)
		}
	})
	t.Run("1MiB bytes", func(t *testing.T) {
		net := transport.NewInmem()
		p := startPrimary[[]byte](t, net, "p")
		big := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
		require.NoError(t, p.Set("snap", big))
		r := startReplica[[]byte](t, net, "p")
		waitSynced(t, r)
		require.NoError(t, p.Set("live", big))
		waitFor(t, "replica offset", func() bool { return r.Offset() == p.Offset() })
		for _, k := range []string{"snap", "live"} {
			got, ok := r.Get(k)
			require.True(t, ok, k)
			assert.True(t, bytes.Equal(big, got), k)
		}
	})
}

func TestLimitsRejectOversizedWrites(t *testing.T) {
	p, err := NewPrimary[[]byte](WithMaxKeySize(8), WithMaxValueSize(100), WithMaxFrameSize(1024))
	require.NoError(t, err)
	defer p.Close()
	require.ErrorIs(t, p.Set("123456789", nil), ErrTooLarge)
	require.ErrorIs(t, p.Set("k", make([]byte, 101)), ErrTooLarge)
	require.ErrorIs(t, p.Delete("123456789"), ErrTooLarge)
	assert.Zero(t, p.Offset(), "a rejected write must not reach the stream")
	assert.Zero(t, p.Len())
	require.NoError(t, p.Set("k", make([]byte, 90)))
}

func TestInvalidOptionsAreAllReported(t *testing.T) {
	_, err := NewPrimary[int](WithBacklogSize(-1), WithHeartbeat(0), WithMaxKeySize(0))
	require.ErrorIs(t, err, ErrInvalidOption)
	for _, want := range []string{"backlog size", "heartbeat", "max key size"} {
		assert.Contains(t, err.Error(), want)
	}
	_, err = NewReplica[int](nil, "x")
	require.ErrorIs(t, err, ErrInvalidOption)
}

func TestSmallBacklogIsRaisedToMinimum(t *testing.T) {
	p, err := NewPrimary[int](WithBacklogSize(1))
	require.NoError(t, err)
	defer p.Close()
	assert.Equal(t, MinBacklogSize, p.n.cfg.backlogSize)
}

func TestPartialResyncAfterCut(t *testing.T) {
	net := transport.NewInmem()
	p := startPrimary[string](t, net, "p")
	r := startReplica[string](t, net, "p")
	require.NoError(t, p.Set("a", "1"))
	waitSynced(t, r)
	requireConverged(t, p, r)

	net.Refuse("p", true)
	require.Equal(t, 1, net.Cut("p"))
	waitFor(t, "link down", func() bool { return len(p.Info().Replicas) == 0 })
	for i := range 100 {
		require.NoError(t, p.Set("k"+strconv.Itoa(i), "v"))
	}
	net.Refuse("p", false)
	requireConverged(t, p, r)

	pi, ri := p.Info(), r.Info()
	assert.Equal(t, uint64(1), pi.FullSyncs)
	assert.Equal(t, uint64(1), pi.PartialSyncs)
	assert.Equal(t, uint64(1), ri.FullSyncs)
	assert.Equal(t, uint64(1), ri.PartialSyncs)
}

func TestFullResyncWhenBacklogNoLongerCovers(t *testing.T) {
	net := transport.NewInmem()
	p := startPrimary[[]byte](t, net, "p", WithBacklogSize(MinBacklogSize))
	r := startReplica[[]byte](t, net, "p")
	waitSynced(t, r)

	net.Refuse("p", true)
	net.Cut("p")
	waitFor(t, "link down", func() bool { return len(p.Info().Replicas) == 0 })
	before := r.Offset()
	val := make([]byte, 1000)
	for i := 0; p.Info().BacklogFirst <= before; i++ {
		require.NoError(t, p.Set("k"+strconv.Itoa(i%50), val))
	}
	net.Refuse("p", false)
	requireConverged(t, p, r)

	pi := p.Info()
	assert.Equal(t, uint64(2), pi.FullSyncs)
	assert.Zero(t, pi.PartialSyncs)
	assert.Equal(t, uint64(2), r.Info().FullSyncs)
}

func TestReplicaServesOldDataDuringFullResync(t *testing.T) {
	net := transport.NewInmem()
	p := startPrimary[string](t, net, "p", WithBacklogSize(MinBacklogSize))
	r := startReplica[string](t, net, "p")
	for i := range 1000 {
		require.NoError(t, p.Set("old:"+strconv.Itoa(i), "old"))
	}
	waitSynced(t, r)
	requireConverged(t, p, r)
	oldOffset := r.Offset()

	// Drop the link, overflow the backlog, and hold back everything the
	// primary sends on the next connection: the replica is mid-resync.
	net.Refuse("p", true)
	net.Cut("p")
	waitFor(t, "link down", func() bool { return len(p.Info().Replicas) == 0 })
	for i := 0; i < 2000 || p.Info().BacklogFirst <= oldOffset; i++ {
		require.NoError(t, p.Set("new:"+strconv.Itoa(i%2000), "new-value-padding-padding"))
	}
	net.Stall("p", transport.ToDialer, true)
	net.Refuse("p", false)
	waitFor(t, "second full sync to start", func() bool { return p.Info().FullSyncs == 2 })

	for range 100 {
		assert.Equal(t, oldOffset, r.Offset())
		assert.Equal(t, 1000, r.Len())
		v, ok := r.Get("old:7")
		assert.True(t, ok)
		assert.Equal(t, "old", v)
		_, ok = r.Get("new:7")
		assert.False(t, ok, "a half-loaded snapshot must not be visible")
	}

	net.Stall("p", transport.ToDialer, false)
	requireConverged(t, p, r)
	assert.Equal(t, 3000, r.Len())
}

func TestReadsNeverGoBackAcrossReconnects(t *testing.T) {
	net := transport.NewInmem()
	p := startPrimary[int](t, net, "p", WithBacklogSize(MinBacklogSize))
	r := startReplica[int](t, net, "p")
	waitSynced(t, r)

	const last = 20000
	var violations atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		seen := 0
		for {
			select {
			case <-stop:
				return
			default:
			}
			v, _ := r.Get("counter")
			if v < seen {
				violations.Add(1)
			}
			seen = v
		}
	})
	for i := 1; i <= last; i++ {
		require.NoError(t, p.Set("counter", i))
		require.NoError(t, p.Set("pad:"+strconv.Itoa(i%100), i))
		if i%2000 == 0 {
			net.Cut("p")
		}
	}
	requireConverged(t, p, r)
	close(stop)
	wg.Wait()
	assert.Zero(t, violations.Load(), "a replica read went back in time")
	v, _ := r.Get("counter")
	assert.Equal(t, last, v)
}

func TestWritesDuringFullSyncConverge(t *testing.T) {
	net := transport.NewInmem()
	p := startPrimary[string](t, net, "p")
	for i := range 50000 {
		require.NoError(t, p.Set("k"+strconv.Itoa(i), "initial"))
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				k := "k" + strconv.Itoa((i*7919+w)%60000)
				if i%5 == 0 {
					_ = p.Delete(k)
				} else {
					_ = p.Set(k, fmt.Sprintf("w%d-%d", w, i))
				}
			}
		})
	}
	r := startReplica[string](t, net, "p")
	waitSynced(t, r)
	close(stop)
	wg.Wait()
	requireConverged(t, p, r)
}

func TestThreeReplicasUnderConcurrentWriters(t *testing.T) {
	net := transport.NewInmem()
	p := startPrimary[int](t, net, "p")
	var rs []*Replica[int]
	for range 3 {
		rs = append(rs, startReplica[int](t, net, "p"))
	}
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for i := range 3000 {
				k := "k" + strconv.Itoa((i+w*13)%500)
				if i%7 == 0 {
					assert.NoError(t, p.Delete(k))
				} else {
					assert.NoError(t, p.Set(k, w*100000+i))
				}
			}
		})
	}
	wg.Wait()
	requireConverged(t, p, rs...)
	k, err := p.Wait(3, 0)
	require.NoError(t, err)
	assert.Equal(t, 3, k)
}

func TestTCPEndToEnd(t *testing.T) {
	tcp := transport.NewTCP()
	p, addr := startPrimaryAddr[string](t, tcp, "127.0.0.1:0")
	require.NoError(t, p.Set("before", "1"))

	r := startReplica[string](t, tcp, addr)
	waitSynced(t, r)
	require.NoError(t, p.Set("after", "2"))
	k, err := p.Wait(1, 10*time.Second)
	require.NoError(t, err)
	require.Equal(t, 1, k)
	v, ok := r.Get("after")
	assert.True(t, ok)
	assert.Equal(t, "2", v)
	require.NoError(t, converged(p, r))
}

func TestCloseIsIdempotentAndStopsEverything(t *testing.T) {
	net := transport.NewInmem()
	p, err := NewPrimary[int](fastOpts(t)...)
	require.NoError(t, err)
	l, err := net.Listen("p")
	require.NoError(t, err)
	served := make(chan error, 1)
	go func() { served <- p.Serve(l) }()
	r := startReplica[int](t, net, "p")
	waitSynced(t, r)

	waited := make(chan error, 1)
	go func() {
		_, err := p.Wait(2, 0) // only one replica: blocks until Close
		waited <- err
	}()
	require.NoError(t, p.Set("a", 1))
	require.NoError(t, p.Close())
	require.ErrorIs(t, <-waited, ErrClosed)
	require.ErrorIs(t, <-served, ErrClosed)
	require.NoError(t, p.Close())

	l2, err := net.Listen("p2")
	require.NoError(t, err)
	require.ErrorIs(t, p.Serve(l2), ErrClosed)
	_, err = l2.Accept()
	assert.Error(t, err, "Serve after Close closes the listener")
	require.ErrorIs(t, p.Set("b", 2), ErrClosed)
	require.ErrorIs(t, p.Delete("a"), ErrClosed)
	_, err = p.Wait(1, time.Second)
	require.ErrorIs(t, err, ErrClosed)
	v, ok := p.Get("a")
	assert.True(t, ok, "data stays readable after Close")
	assert.Equal(t, 1, v)

	require.NoError(t, r.Close())
	require.NoError(t, r.Close())
	assert.Equal(t, StateClosed, r.Info().State)
	require.NoError(t, r.WaitSynced(context.Background()), "synced before Close")
}

func TestWaitSyncedReturnsErrClosed(t *testing.T) {
	net := transport.NewInmem()
	r, err := NewReplica[int](net, "nobody", fastOpts(t)...)
	require.NoError(t, err)
	done := make(chan error, 1)
	go func() { done <- r.WaitSynced(context.Background()) }()
	require.NoError(t, r.Close())
	require.ErrorIs(t, <-done, ErrClosed)

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	r2 := startReplica[int](t, net, "nobody")
	require.ErrorIs(t, r2.WaitSynced(ctx), context.Canceled)
	assert.Equal(t, StateConnecting, r2.Info().State)
}

// TestStuckReplicaIsDropped: a replica that stops reading is dropped as
// soon as it is more than the buffer limit behind, the primary's backlog
// stays bounded, and the replica full-syncs when it reads again.
func TestStuckReplicaIsDropped(t *testing.T) {
	const limit = 256 << 10
	net := transport.NewInmem()
	p := startPrimary[[]byte](t, net, "p", WithBacklogSize(MinBacklogSize), WithReplicaBufferLimit(limit))
	r := startReplica[[]byte](t, net, "p")
	waitSynced(t, r)

	net.Refuse("p", true) // once dropped, stay away until released
	net.Stall("p", transport.ToDialer, true)
	val := make([]byte, 1000)
	for i := 0; i < 4000; i++ { // 4 MB: more than the pipe buffer and the limit
		require.NoError(t, p.Set("k"+strconv.Itoa(i%100), val))
		assert.LessOrEqual(t, p.Info().BacklogBytes, limit+2*backlogBlockSize, "the backlog grew past the limit")
	}
	waitFor(t, "stuck replica dropped", func() bool { return len(p.Info().Replicas) == 0 })
	assert.Equal(t, uint64(1), p.Info().DroppedSlow)
	net.Stall("p", transport.ToDialer, false)
	net.Refuse("p", false)
	requireConverged(t, p, r)
	assert.Equal(t, uint64(2), p.Info().FullSyncs, "the dropped replica full-syncs")
}
