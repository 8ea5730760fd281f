package replmap

import (
	"context"
	"errors"
	"net"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/replmap/replmap/transport"
)

// TestIdleLinkStaysUp: with no writes for many link timeouts, PINGs and
// ACKs keep the link alive, and ACKs arrive every heartbeat.
func TestIdleLinkStaysUp(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		net := transport.NewInmem()
		p := startPrimary[int](t, net, "p")
		r := startReplica[int](t, net, "p")
		waitSynced(t, r)

		time.Sleep(10 * DefaultLinkTimeout)
		synctest.Wait()
		ri := r.Info()
		assert.Equal(t, uint64(1), ri.Connects, "the idle link was dropped: %v", ri.LastError)
		assert.Equal(t, StateStreaming, ri.State)
		links := p.Info().Replicas
		require.Len(t, links, 1)
		assert.WithinDuration(t, time.Now(), links[0].LastAck, DefaultHeartbeat, "ACKs arrive every heartbeat")
	})
}

// TestSilentPrimaryIsDropped stalls the primary's bytes: the replica drops
// the link after the link timeout, no sooner, and reconnects.
func TestSilentPrimaryIsDropped(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		net := transport.NewInmem()
		p := startPrimary[int](t, net, "p")
		r := startReplica[int](t, net, "p")
		waitSynced(t, r)
		require.NoError(t, p.Set("a", 1))
		_, err := p.Wait(1, 0)
		require.NoError(t, err)

		net.Stall("p", transport.ToDialer, true)
		synctest.Wait()
		stalled := time.Now()
		time.Sleep(DefaultLinkTimeout - time.Millisecond)
		synctest.Wait()
		assert.Equal(t, uint64(1), r.Info().Connects, "dropped before the timeout")

		time.Sleep(2 * DefaultHeartbeat)
		synctest.Wait()
		assert.ErrorIs(t, r.Info().LastError, ErrLinkTimeout)
		assert.GreaterOrEqual(t, time.Since(stalled), DefaultLinkTimeout)
		// Reconnection works once bytes flow again, and resumes partially.
		net.Stall("p", transport.ToDialer, false)
		require.NoError(t, p.Set("b", 2))
		k, err := p.Wait(1, 0)
		require.NoError(t, err)
		assert.Equal(t, 1, k)
		assert.GreaterOrEqual(t, r.Info().PartialSyncs, uint64(1))
	})
}

// TestSilentReplicaIsDropped stalls the replica's bytes: the primary drops
// the link after the link timeout.
func TestSilentReplicaIsDropped(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		net := transport.NewInmem()
		p := startPrimary[int](t, net, "p")
		r := startReplica[int](t, net, "p")
		waitSynced(t, r)
		synctest.Wait()
		require.Len(t, p.Info().Replicas, 1)

		net.Refuse("p", true) // keep it from coming back at once
		net.Stall("p", transport.ToListener, true)
		time.Sleep(DefaultLinkTimeout + 2*DefaultHeartbeat)
		synctest.Wait()
		assert.Empty(t, p.Info().Replicas, "the primary kept a silent replica")
		net.Stall("p", transport.ToListener, false)
		net.Refuse("p", false)
	})
}

// TestReconnectBackoff refuses dials for a while: the replica retries with
// a delay that grows but stays under the maximum, and reconnects soon after
// the primary is reachable again.
func TestReconnectBackoff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		net := transport.NewInmem()
		p := startPrimary[int](t, net, "p")
		net.Refuse("p", true)
		r, err := NewReplica[int](net, "p", WithReconnectBackoff(100*time.Millisecond, 2*time.Second))
		require.NoError(t, err)
		defer r.Close()

		time.Sleep(time.Minute)
		synctest.Wait()
		assert.Zero(t, r.Info().Connects)
		assert.ErrorIs(t, r.Info().LastError, transport.ErrConnRefused)

		net.Refuse("p", false)
		start := time.Now()
		require.NoError(t, r.WaitSynced(t.Context()))
		assert.LessOrEqual(t, time.Since(start), 2*time.Second, "retry delay beyond the maximum")
		assert.Equal(t, uint64(1), p.Info().FullSyncs)
	})
}

func TestBackoffBounds(t *testing.T) {
	lo, hi := 50*time.Millisecond, 5*time.Second
	for range 1000 {
		assert.LessOrEqual(t, backoff(0, lo, hi), lo, "first retry is fast")
		assert.Positive(t, backoff(0, lo, hi))
	}
	for n := 1; n < 100; n++ {
		d := backoff(n, lo, hi)
		ceil := min(hi, lo<<min(n, 20))
		assert.GreaterOrEqual(t, d, ceil/2, "attempt %d", n)
		assert.LessOrEqual(t, d, ceil, "attempt %d", n)
	}
}

// flakyListener fails Accept with temporary errors a few times.
type flakyListener struct {
	net.Listener
	mu       sync.Mutex
	failures int
	accepts  []time.Time
}

type tempErr struct{}

func (tempErr) Error() string   { return "temporary accept failure" }
func (tempErr) Temporary() bool { return true }
func (tempErr) Timeout() bool   { return false }

func (l *flakyListener) Accept() (net.Conn, error) {
	l.mu.Lock()
	l.accepts = append(l.accepts, time.Now())
	fail := l.failures > 0
	l.failures--
	l.mu.Unlock()
	if fail {
		return nil, tempErr{}
	}
	return l.Listener.Accept()
}

// TestServeBacksOffOnTemporaryErrors: 5 ms doubling, like net/http.
func TestServeBacksOffOnTemporaryErrors(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := transport.NewInmem()
		inner, err := n.Listen("p")
		require.NoError(t, err)
		l := &flakyListener{Listener: inner, failures: 4}
		p, err := NewPrimary[int]()
		require.NoError(t, err)
		served := make(chan error, 1)
		go func() { served <- p.Serve(l) }()
		time.Sleep(time.Second)
		synctest.Wait()
		require.NoError(t, p.Close())
		require.ErrorIs(t, <-served, ErrClosed)

		l.mu.Lock()
		defer l.mu.Unlock()
		require.Len(t, l.accepts, 5)
		var gaps []time.Duration
		for i := 1; i < len(l.accepts); i++ {
			gaps = append(gaps, l.accepts[i].Sub(l.accepts[i-1]))
		}
		assert.Equal(t, []time.Duration{5 * time.Millisecond, 10 * time.Millisecond, 20 * time.Millisecond, 40 * time.Millisecond}, gaps)
	})
}

func TestServeReturnsListenerError(t *testing.T) {
	p, err := NewPrimary[int]()
	require.NoError(t, err)
	defer p.Close()
	n := transport.NewInmem()
	l, err := n.Listen("p")
	require.NoError(t, err)
	l.Close()
	err = p.Serve(l)
	assert.ErrorIs(t, err, net.ErrClosed)
	assert.False(t, errors.Is(err, ErrClosed))
}

// TestCloseWhenDoneWaitsForTheClose: once the context is done, release
// returns only after the connection is closed, so no goroutine outlives
// the link.
func TestCloseWhenDoneWaitsForTheClose(t *testing.T) {
	n := transport.NewInmem()
	l, err := n.Listen("x")
	require.NoError(t, err)
	defer l.Close()
	conn, err := n.Dial(t.Context(), "x")
	require.NoError(t, err)

	ctx, cancel := context.WithCancel(t.Context())
	release := closeWhenDone(ctx, conn)
	cancel()
	release()
	_, err = conn.Write([]byte("x"))
	assert.ErrorIs(t, err, net.ErrClosed, "release returned before the close")

	conn2, err := n.Dial(t.Context(), "x")
	require.NoError(t, err)
	defer conn2.Close()
	closeWhenDone(t.Context(), conn2)() // released before done: no close
	_, err = conn2.Write([]byte("x"))
	assert.NoError(t, err)
}
