package replmap

import (
	"strconv"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/replmap/replmap/transport"
)

// TestFullSyncFinishesUnderHeavyWrites is the full-sync loop that Redis
// users meet (redis#4697): a snapshot that takes long while writes pour
// in. Here the writes made during one sync add up to five times the
// replica buffer limit, yet the replica must finish on its first attempt,
// because the stream flows to it between snapshot chunks instead of
// piling up on the primary until the snapshot is done.
func TestFullSyncFinishesUnderHeavyWrites(t *testing.T) {
	const (
		limit = 1 << 20
		keys  = 40_000
		batch = limit / 4 // written each time the replica loads 2000 keys
	)
	net := transport.NewInmem()
	p := startPrimary[[]byte](t, net, "p", WithBacklogSize(MinBacklogSize), WithReplicaBufferLimit(limit))
	val := make([]byte, 1000)
	for i := range keys {
		require.NoError(t, p.Set("k"+strconv.Itoa(i), val))
	}

	r := startReplica[[]byte](t, net, "p")
	var written, maxBacklog int
	for next, i := 2000, 0; ; next += 2000 {
		// Pace the writes by the replica's progress, so that the test
		// measures the protocol rather than which goroutine runs faster.
		waitFor(t, "snapshot progress", func() bool {
			info := r.Info()
			return info.SyncKeys >= next || info.State != StateSyncing && info.State != StateConnecting
		})
		if r.Info().State == StateStreaming || p.Info().DroppedSlow > 0 {
			break
		}
		for w := 0; w < batch; w += len(val) {
			require.NoError(t, p.Set("k"+strconv.Itoa(i%keys), val))
			i++
		}
		written += batch
		maxBacklog = max(maxBacklog, p.Info().BacklogBytes)
	}
	waitSynced(t, r)
	assert.Zero(t, p.Info().DroppedSlow, "the replica was dropped during its sync")
	assert.Equal(t, uint64(1), p.Info().FullSyncs, "the sync started over")
	assert.Greater(t, written, 4*limit, "the test wrote too little during the sync to prove anything")
	assert.LessOrEqual(t, maxBacklog, limit+2*backlogBlockSize)
	requireConverged(t, p, r)
}

// TestSoftLimitDropsAReplicaThatStaysBehind stalls one of two replicas so
// that it falls past the soft limit but not the hard one: it is dropped
// only once it has stayed behind for the soft time, and the other
// replica's Waits meanwhile return at once.
func TestSoftLimitDropsAReplicaThatStaysBehind(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const soft = 1 << 20
		slow := []Option{WithLinkTimeout(time.Minute)} // the soft limit must act first
		net := transport.NewInmem()
		p := startPrimary[[]byte](t, net, "p1", append(slow, WithBacklogSize(MinBacklogSize),
			WithReplicaBufferLimit(16<<20), WithReplicaBufferSoftLimit(soft, 5*time.Second))...)
		l2, err := net.Listen("p2")
		require.NoError(t, err)
		go p.Serve(l2)
		healthy := startReplica[[]byte](t, net, "p1", slow...)
		stuck := startReplica[[]byte](t, net, "p2", slow...)
		waitSynced(t, healthy)
		waitSynced(t, stuck)

		net.Stall("p2", transport.ToDialer, true)
		val := make([]byte, 4096)
		write := func(bytes int) {
			for i := 0; i < bytes; i += len(val) {
				require.NoError(t, p.Set("k"+strconv.Itoa(i%1000), val))
			}
			synctest.Wait()
		}
		write(3 << 20) // ~1 MiB fills the stalled pipe; the rest waits on the primary
		start := time.Now()
		k, err := p.Wait(1, 0)
		require.NoError(t, err)
		assert.Equal(t, 1, k)
		assert.Zero(t, time.Since(start), "the stuck replica delayed the healthy one's Wait")

		time.Sleep(4 * time.Second)
		write(backlogBlockSize)
		assert.Zero(t, p.Info().DroppedSlow, "dropped before the soft time passed")
		assert.Len(t, p.Info().Replicas, 2)

		time.Sleep(time.Second)
		write(backlogBlockSize)
		assert.Equal(t, uint64(1), p.Info().DroppedSlow, "not dropped after the soft time")
		assert.Len(t, p.Info().Replicas, 1)

		net.Stall("p2", transport.ToDialer, false)
		requireConverged(t, p, healthy, stuck)
		assert.Equal(t, uint64(3), p.Info().FullSyncs, "the dropped replica full-syncs again")
	})
}
