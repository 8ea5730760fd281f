package replmap

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/replmap/replmap/transport"
)

// TestHandoverUnderLoad hands the primary role to a replica while writers
// keep writing: no write whose Set returned nil is lost, every write
// refused names the new primary, nobody full-syncs, and all copies end
// identical.
func TestHandoverUnderLoad(t *testing.T) {
	tr := transport.NewInmem()
	p := startPrimary[int](t, tr, "p")
	target := startReplica[int](t, tr, "p", WithReplicaName("target"))
	serveOn(t, tr, "target", target.Serve)
	other := startReplica[int](t, tr, "p", WithReplicaName("other"))
	waitSynced(t, target)
	waitSynced(t, other)
	writeN(t, p, "pre", 100)
	requireConverged(t, p, target, other)
	// The target advertises its listener with its next ACK.
	waitFor(t, "advertised address", func() bool { return p.n.handoverTarget("target") != nil })

	var (
		mu      sync.Mutex
		written = map[string]int{} // every write whose Set returned nil
		moved   atomic.Int64
		wg      sync.WaitGroup
	)
	for w := range 4 {
		wg.Go(func() {
			for i := 0; ; i++ { // until the handover sends the writer away
				key := "w" + strconv.Itoa(w) + "-" + strconv.Itoa(i%50)
				err := p.Set(key, i)
				var me *MovedError
				switch {
				case err == nil:
					mu.Lock()
					written[key] = i
					mu.Unlock()
				case errors.As(err, &me):
					assert.Equal(t, "target", me.Addr)
					assert.ErrorIs(t, err, ErrClosed)
					moved.Add(1)
					return
				default:
					t.Errorf("Set: %v", err)
					return
				}
			}
		})
	}
	waitFor(t, "writes under way", func() bool { return p.Offset() > 20000 })

	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	demoted, err := p.Handover(ctx, tr, "")
	require.NoError(t, err)
	t.Cleanup(func() { demoted.Close() })
	np, err := target.WaitPromoted(ctx)
	require.NoError(t, err)
	t.Cleanup(func() { np.Close() })
	wg.Wait()
	assert.Equal(t, int64(4), moved.Load(), "every writer was told where the primary went")

	require.NoError(t, np.Set("after", 1))
	requireConverged(t, np, demoted, other)
	for k, v := range written {
		got, ok := np.Get(k)
		require.True(t, ok, "write to %s lost", k)
		require.Equal(t, v, got, "write to %s lost", k)
	}
	assert.Zero(t, np.Info().FullSyncs, "no full sync")
	assert.Zero(t, demoted.Info().FullSyncs)
	assert.Equal(t, uint64(1), other.Info().FullSyncs, "only its first sync")
	assert.Equal(t, uint64(1), np.Info().Epoch)
	assert.Equal(t, np.ReplID(), demoted.Info().ReplID)
	_, err = p.Wait(1, time.Millisecond)
	assert.ErrorIs(t, err, ErrClosed)
}

// TestHandoverRollsBack: a handover whose target cannot acknowledge in
// time rolls back; the writes it held up then go through on the old
// primary, and the target is not promoted.
func TestHandoverRollsBack(t *testing.T) {
	tr := transport.NewInmem()
	p := startPrimary[int](t, tr, "p")
	target := startReplica[int](t, tr, "p", WithReplicaName("target"), WithAdvertiseAddr("target"))
	waitSynced(t, target)
	require.NoError(t, p.Set("a", 1))
	requireConverged(t, p, target)
	waitFor(t, "advertised address", func() bool { return p.n.handoverTarget("target") != nil })

	tr.Stall("p", transport.ToListener, true) // the target's ACKs stop arriving
	require.NoError(t, p.Set("b", 2))
	errc := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		_, err := p.Handover(ctx, tr, "target")
		errc <- err
	}()
	waitFor(t, "writes paused", func() bool {
		p.n.writeMu.Lock()
		defer p.n.writeMu.Unlock()
		return p.pause != nil
	})
	setErr := make(chan error, 1)
	go func() { setErr <- p.Set("during", 3) }()
	assert.ErrorIs(t, <-errc, context.DeadlineExceeded)
	require.NoError(t, <-setErr, "the held-up write goes through after the rollback")
	tr.Stall("p", transport.ToListener, false)
	requireConverged(t, p, target)
	v, _ := target.Get("during")
	assert.Equal(t, 3, v)
	assert.Equal(t, StateStreaming, target.Info().State, "not promoted")
}

func TestHandoverNeedsAReplica(t *testing.T) {
	tr := transport.NewInmem()
	p := startPrimary[int](t, tr, "p")
	_, err := p.Handover(t.Context(), tr, "")
	assert.ErrorIs(t, err, ErrNoReplica)
	r := startReplica[int](t, tr, "p", WithReplicaName("r")) // no advertised address
	waitSynced(t, r)
	_, err = p.Handover(t.Context(), tr, "r")
	assert.ErrorIs(t, err, ErrNoReplica)
	require.NoError(t, p.Set("still", 1), "writes go on")
}

// TestCloseDuringHandover: Close does not wait for a handover that cannot
// finish; the handover rolls back with ErrClosed.
func TestCloseDuringHandover(t *testing.T) {
	tr := transport.NewInmem()
	p := startPrimary[int](t, tr, "p")
	target := startReplica[int](t, tr, "p", WithReplicaName("target"), WithAdvertiseAddr("target"))
	waitSynced(t, target)
	require.NoError(t, p.Set("a", 1))
	_, _ = p.Wait(1, 0)
	waitFor(t, "advertised address", func() bool { return p.n.handoverTarget("target") != nil })
	tr.Stall("p", transport.ToListener, true) // the target's ACKs stop arriving
	defer tr.Stall("p", transport.ToListener, false)
	require.NoError(t, p.Set("b", 2))
	errc := make(chan error, 1)
	go func() {
		_, err := p.Handover(context.Background(), tr, "target") // no deadline
		errc <- err
	}()
	waitFor(t, "writes paused", func() bool {
		p.n.writeMu.Lock()
		defer p.n.writeMu.Unlock()
		return p.pause != nil
	})
	require.NoError(t, p.Close())
	assert.ErrorIs(t, <-errc, ErrClosed)
	assert.ErrorIs(t, p.Set("c", 3), ErrClosed)
}
