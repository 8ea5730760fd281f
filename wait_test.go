package replmap

import (
	"context"
	"net"
	"strconv"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/replmap/replmap/transport"
)

func TestWaitReturnsAtOnceForNonPositiveN(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p, err := NewPrimary[int]()
		require.NoError(t, err)
		defer p.Close()
		require.NoError(t, p.Set("a", 1))
		start := time.Now()
		for _, n := range []int{0, -1} {
			k, err := p.Wait(n, 0) // timeout 0 would block forever for n > 0
			require.NoError(t, err)
			assert.Zero(t, k)
		}
		k, err := p.Wait(1, -time.Second)
		require.NoError(t, err)
		assert.Zero(t, k)
		assert.Zero(t, time.Since(start))
	})
}

func TestWaitTimesOutWithNoReplicas(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p, err := NewPrimary[int]()
		require.NoError(t, err)
		defer p.Close()
		require.NoError(t, p.Set("a", 1))
		start := time.Now()
		k, err := p.Wait(1, 5*time.Second)
		require.NoError(t, err, "a timeout is not an error: the count says it")
		assert.Zero(t, k)
		assert.Equal(t, 5*time.Second, time.Since(start))
	})
}

func TestWaitContextHonoursCancel(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p, err := NewPrimary[int]()
		require.NoError(t, err)
		defer p.Close()
		require.NoError(t, p.Set("a", 1))
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() {
			_, err := p.WaitContext(ctx, 1)
			done <- err
		}()
		synctest.Wait()
		select {
		case <-done:
			t.Fatal("WaitContext returned before cancel")
		default:
		}
		cancel()
		require.ErrorIs(t, <-done, context.Canceled)
		assert.Empty(t, p.n.waits.waiters, "a cancelled Wait leaves nothing behind")
	})
}

// TestWaitCountsOnlyAfterApply holds the primary's bytes back from the
// replica: the write is not counted until the replica has applied it.
func TestWaitCountsOnlyAfterApply(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		net := transport.NewInmem()
		p := startPrimary[int](t, net, "p")
		r := startReplica[int](t, net, "p")
		waitSynced(t, r)

		net.Stall("p", transport.ToDialer, true)
		require.NoError(t, p.Set("a", 1))
		k, err := p.Wait(1, 500*time.Millisecond)
		require.NoError(t, err)
		assert.Zero(t, k, "the replica has not received the write")
		_, ok := r.Get("a")
		require.False(t, ok)

		net.Stall("p", transport.ToDialer, false)
		k, err = p.Wait(1, 0)
		require.NoError(t, err)
		assert.Equal(t, 1, k)
		v, ok := r.Get("a")
		assert.True(t, ok, "Wait counted a replica that had not applied the write")
		assert.Equal(t, 1, v)
	})
}

// TestWaitIsNotBoundToHeartbeat: with a one-minute heartbeat, Wait must
// still return as soon as the replica can answer a GETACK.
func TestWaitIsNotBoundToHeartbeat(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		net := transport.NewInmem()
		slow := []Option{WithHeartbeat(time.Minute), WithLinkTimeout(5 * time.Minute)}
		p := startPrimary[int](t, net, "p", slow...)
		r := startReplica[int](t, net, "p", slow...)
		waitSynced(t, r)
		for i := range 10 {
			require.NoError(t, p.Set("a", i))
			start := time.Now()
			k, err := p.Wait(1, 0)
			require.NoError(t, err)
			assert.Equal(t, 1, k)
			// In the bubble, network round trips take no time at all;
			// only a timer (a heartbeat) would advance the clock.
			assert.Zero(t, time.Since(start))
		}
	})
}

// TestStalledReplicaIsNotCounted serves two replicas on two listeners and
// stalls one of them.
func TestStalledReplicaIsNotCounted(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		net := transport.NewInmem()
		p := startPrimary[int](t, net, "p1")
		l2, err := net.Listen("p2")
		require.NoError(t, err)
		go p.Serve(l2)
		fast := startReplica[int](t, net, "p1")
		stalled := startReplica[int](t, net, "p2")
		waitSynced(t, fast)
		waitSynced(t, stalled)

		net.Stall("p2", transport.ToDialer, true)
		require.NoError(t, p.Set("a", 1))
		k, err := p.Wait(2, time.Second)
		require.NoError(t, err)
		assert.Equal(t, 1, k)
		k, err = p.Wait(1, 0)
		require.NoError(t, err)
		assert.Equal(t, 1, k)
		net.Stall("p2", transport.ToDialer, false)
		k, err = p.Wait(2, 0)
		require.NoError(t, err)
		assert.Equal(t, 2, k)
	})
}

func TestConcurrentWaitersAllReturn(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		net := transport.NewInmem()
		p := startPrimary[int](t, net, "p")
		r := startReplica[int](t, net, "p")
		waitSynced(t, r)
		results := make(chan int, 50)
		for i := range 50 {
			go func() {
				if err := p.Set("k", i); err != nil {
					results <- -1
					return
				}
				k, _ := p.Wait(1, 0)
				results <- k
			}()
		}
		for range 50 {
			assert.Equal(t, 1, <-results)
		}
	})
}

// TestOneAckReleasesManyWaiters connects a hand-driven replica: 50
// concurrent Waits are all released by the single ACK it sends, and the
// GETACKs they triggered coalesce instead of one per Wait.
func TestOneAckReleasesManyWaiters(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tr := transport.NewInmem()
		p := startPrimary[int](t, tr, "p", WithHeartbeat(time.Hour), WithLinkTimeout(10*time.Hour))
		h := dialHandReplica(t, tr, "p")
		synctest.Wait() // handshake and (empty) snapshot done
		require.Len(t, p.Info().Replicas, 1)
		require.NoError(t, p.Set("a", 1))
		results := make(chan int, 50)
		for range 50 {
			go func() {
				k, _ := p.Wait(1, 0)
				results <- k
			}()
		}
		synctest.Wait() // all 50 blocked, their GETACKs sent and read
		require.Equal(t, p.Offset(), h.offset.Load())
		assert.Len(t, p.n.waits.waiters, 50)
		getacks := 0
		for _, f := range drainFrames(h) {
			if f == frameGetAck {
				getacks++
			}
		}
		assert.Equal(t, 1, getacks, "GETACKs were not shared")

		h.ack(t)
		for range 50 {
			assert.Equal(t, 1, <-results)
		}
	})
}

// handReplica is a replica driven by a test: it has done the handshake
// and read the (empty) snapshot; frames reports every later frame.
type handReplica struct {
	conn   net.Conn
	frames chan frameType
	offset atomic.Uint64
}

func dialHandReplica(t *testing.T, tr transport.Transport, addr string) *handReplica {
	return dialHandReplicaNamed(t, tr, addr, "hand")
}

// dialHandReplicaNamed is dialHandReplica for a replica of the given name
// (and a new instance ID each time).
func dialHandReplicaNamed(t *testing.T, tr transport.Transport, addr, name string) *handReplica {
	conn, err := tr.Dial(t.Context(), addr)
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	hello := hello{version: protocolVersion, name: name, instance: randomHex(8),
		fingerprint: typeFingerprint[int](), maxFrame: DefaultMaxFrameSize}
	_, err = conn.Write(appendHello(nil, hello))
	require.NoError(t, err)
	h := &handReplica{conn: conn, frames: make(chan frameType, 1024)}
	go func() {
		defer close(h.frames)
		fr := newFrameReader(conn, DefaultMaxFrameSize)
		for {
			typ, payload, size, err := fr.next()
			if err != nil {
				return
			}
			switch typ {
			case frameFull:
				st, _ := parseSyncStart(typ, payload)
				h.offset.Store(st.offset)
			case frameSet, frameDel:
				h.offset.Add(uint64(size))
			}
			if typ == frameGetAck || typ == frameSet {
				h.frames <- typ
			}
		}
	}()
	return h
}

func (h *handReplica) ack(t *testing.T) {
	_, err := h.conn.Write(appendU64Frame(nil, frameAck, h.offset.Load()))
	require.NoError(t, err)
}

// TestOneGetAckInFlight: while a GETACK is unanswered, a Wait for a later
// write sends no GETACK of its own; the ACK's arrival sends the next one
// at once, and its answer releases the second Wait.
func TestOneGetAckInFlight(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tr := transport.NewInmem()
		p := startPrimary[int](t, tr, "p", WithHeartbeat(time.Hour), WithLinkTimeout(10*time.Hour))
		h := dialHandReplica(t, tr, "p")
		synctest.Wait()

		require.NoError(t, p.Set("a", 1))
		first := make(chan int)
		go func() { k, _ := p.Wait(1, 0); first <- k }()
		synctest.Wait()
		require.Equal(t, []frameType{frameSet, frameGetAck}, drainFrames(h))

		require.NoError(t, p.Set("b", 2))
		second := make(chan int)
		go func() { k, _ := p.Wait(1, 0); second <- k }()
		synctest.Wait()
		assert.Equal(t, []frameType{frameSet}, drainFrames(h), "a second GETACK went out while the first was unanswered")

		h.ack(t) // covers both writes: the replica has read both
		assert.Equal(t, 1, <-first)
		assert.Equal(t, 1, <-second)
		synctest.Wait()
		// The second Wait asked for more while the first GETACK was out,
		// so one more GETACK follows the ACK, even though it was not needed
		// this time: the ACK happened to cover both.
		assert.Equal(t, []frameType{frameGetAck}, drainFrames(h))

		require.NoError(t, p.Set("c", 3))
		third := make(chan int)
		go func() { k, _ := p.Wait(1, 0); third <- k }()
		synctest.Wait()
		select {
		case <-third:
			t.Fatal("Wait returned before its write was acknowledged")
		default:
		}
		h.ack(t)
		assert.Equal(t, 1, <-third)
	})
}

// TestWaitTimeoutWithStuckReplica: a replica that stops reading does not
// hold a Wait past its timeout, even though Waits write GETACKs (and the
// stream before them) themselves when they can. (A Wait stuck in that
// write blocks outside synctest's knowledge: the test then hangs until go
// test's own timeout.)
func TestWaitTimeoutWithStuckReplica(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tr := transport.NewInmem()
		p := startPrimary[[]byte](t, tr, "p", WithHeartbeat(time.Hour), WithLinkTimeout(10*time.Hour))
		conn, err := tr.Dial(t.Context(), "p")
		require.NoError(t, err)
		defer conn.Close()
		_, err = conn.Write(handHello[[]byte]("stuck"))
		require.NoError(t, err)
		synctest.Wait()
		// One ACK, so the primary knows it as keeping up; then it stops
		// reading while the primary writes more than fits in the pipe.
		_, err = conn.Write(appendU64Frame(nil, frameAck, 0))
		require.NoError(t, err)
		synctest.Wait()
		// Fill the connection's buffer (Inmem's is 1 MiB) to within 4 KiB,
		// so the sender has written everything and is idle; then a write
		// that does not fit, and at once a Wait, which finds the write
		// side free.
		val := make([]byte, 1000)
		for i := 0; p.Offset() < 1<<20-5000; i++ {
			require.NoError(t, p.Set(strconv.Itoa(i), val))
		}
		synctest.Wait()
		require.NoError(t, p.Set("big", make([]byte, 8<<10)))
		start := time.Now()
		k, err := p.Wait(1, 100*time.Millisecond)
		require.NoError(t, err)
		assert.Zero(t, k)
		assert.Equal(t, 100*time.Millisecond, time.Since(start))
	})
}

func drainFrames(h *handReplica) []frameType {
	var got []frameType
	for {
		select {
		case f := <-h.frames:
			got = append(got, f)
		default:
			return got
		}
	}
}
