package replmap

import (
	"fmt"
	"math/rand/v2"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/replmap/replmap/transport"
)

// TestCorruptionIsDetected flips one bit at a random position of the
// stream in either direction, or cuts a connection mid-frame, round after
// round, while the primary writes keys it never overwrites, so that a
// corrupted value, once accepted, would stay for the test to see. Every
// fault must drop the link (the replica reconnects), and the replica must
// never hold a key or value the primary does not have.
func TestCorruptionIsDetected(t *testing.T) {
	rounds := 150
	if testing.Short() {
		rounds = 30
	}
	rng := rand.New(rand.NewPCG(7, 7))
	net := transport.NewInmem()
	fast := []Option{WithHeartbeat(10 * time.Millisecond), WithLinkTimeout(50 * time.Millisecond)}
	p := startPrimary[string](t, net, "p", fast...)
	proxy, err := newFaultProxy(net, "proxy", "p", 7)
	require.NoError(t, err)
	t.Cleanup(proxy.Close)
	r := startReplica[string](t, net, "proxy", fast...)
	waitSynced(t, r)

	next := 0
	write := func(n int) {
		for range n {
			v := fmt.Sprintf("value %d %x", next, rng.Uint64())
			if err := p.Set("k"+strconv.Itoa(next), v); err != nil {
				t.Error(err) // not require: this runs in waitFor's goroutine
			}
			next++
		}
	}
	faults := 0
	for round := range rounds {
		connects := r.Info().Connects
		dir := rng.IntN(2)
		if rng.IntN(4) == 0 {
			proxy.Truncate(dir)
		} else {
			proxy.Flip(dir)
		}
		faults++
		// Keep bytes flowing both ways until the fault drops the link: the
		// writes go down, and the replica's ACKs come up.
		waitFor(t, fmt.Sprintf("round %d: the link drops", round), func() bool {
			write(5)
			return r.Info().Connects > connects
		})
		for k, v := range r.All() {
			want, ok := p.Get(k)
			require.True(t, ok && v == want, "round %d: the replica holds %s=%q, the primary %q", round, k, v, want)
		}
		if round%3 == 0 { // a full sync now and then, to corrupt snapshots too
			r.Close()
			r = startReplica[string](t, net, "proxy", fast...)
		}
	}
	requireConverged(t, p, r)
	t.Logf("%d faults, %d bits flipped, %d truncations, %d keys, %d full syncs, %d partial",
		faults, proxy.flipped.Load(), proxy.truncated.Load(), next, p.Info().FullSyncs, p.Info().PartialSyncs)
}
