package replmap

import (
	"bytes"
	"net"
	"os"
	"runtime"
	"strconv"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/replmap/replmap/transport"
)

// TestConnectCloseCycles runs connect/close cycles over TCP loopback, of
// every kind a primary meets: replicas that full-sync and close, links cut
// and resumed, connections that close without a word, after half a HELLO,
// or in the middle of their snapshot. Afterwards no goroutine, file
// descriptor, link or backlog cursor may remain, and the heap must not
// have grown. REPLMAP_CYCLES sets the count (default 10,000).
func TestConnectCloseCycles(t *testing.T) {
	cycles := 10_000
	if s := os.Getenv("REPLMAP_CYCLES"); s != "" {
		var err error
		cycles, err = strconv.Atoi(s)
		require.NoError(t, err)
	}
	tcp := transport.NewTCP()
	p, addr := startPrimaryAddr[string](t, tcp, "127.0.0.1:0", WithLogger(nil))
	for i := range 100 {
		require.NoError(t, p.Set("k"+strconv.Itoa(i), "value"))
	}
	proxy, err := newFaultProxy(tcp, "127.0.0.1:0", addr, 1)
	require.NoError(t, err)
	quiet := []Option{WithLogger(nil), WithReconnectBackoff(time.Millisecond, 10*time.Millisecond)}
	resumer, err := NewReplica[string](tcp, proxy.Addr(), quiet...)
	require.NoError(t, err)
	waitSynced(t, resumer)

	hello := handHello[string]("raw")
	cycle := func(i int) {
		switch i % 5 {
		case 0: // a replica that full-syncs and closes
			r, err := NewReplica[string](tcp, addr, quiet...)
			require.NoError(t, err)
			waitSynced(t, r)
			require.NoError(t, r.Close())
		case 1: // a link cut and resumed
			before := resumer.Info().PartialSyncs
			require.NoError(t, p.Set("k0", strconv.Itoa(i)))
			proxy.Cut()
			waitFor(t, "partial resync", func() bool { return resumer.Info().PartialSyncs > before })
		case 2, 3, 4: // raw connections: silent, half a HELLO, gone mid-snapshot
			c, err := net.Dial("tcp", addr)
			require.NoError(t, err)
			switch i % 5 {
			case 3:
				_, err = c.Write(hello[:len(hello)/2])
				require.NoError(t, err)
			case 4:
				_, err = c.Write(hello)
				require.NoError(t, err)
				_, err = c.Read(make([]byte, 64)) // the start of the snapshot
				require.NoError(t, err)
			}
			require.NoError(t, c.Close())
		}
	}
	settled := func() bool { return len(p.Info().Replicas) == 1 && p.Info().Replicas[0].State == LinkStreaming }

	// Warm up, so that pools, buffers and the runtime reach their steady
	// state before the baseline is taken.
	for i := range 200 {
		cycle(i)
	}
	waitFor(t, "warm-up links gone", settled)
	goroutines, fds, heap := runtime.NumGoroutine(), openFDs(t), heapInUse()

	start := time.Now()
	for i := range cycles {
		cycle(i)
	}
	elapsed := time.Since(start)

	waitFor(t, "links gone", settled)
	// Polled here rather than with waitFor, whose own goroutines would count.
	for deadline := time.Now().Add(30 * time.Second); runtime.NumGoroutine() > goroutines; {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines, %d before the cycles:\n%s", runtime.NumGoroutine(), goroutines, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(time.Millisecond)
	}
	waitFor(t, "file descriptors back to the baseline", func() bool { return openFDs(t) <= fds })
	p.n.data().backlog.mu.Lock()
	cursors := len(p.n.data().backlog.cursors)
	p.n.data().backlog.mu.Unlock()
	assert.Equal(t, 1, cursors, "backlog cursors left pinned")
	grown := heapInUse() - heap
	t.Logf("%d cycles in %v; goroutines %d -> %d, fds %d -> %d, heap %d -> %d bytes (%+d)",
		cycles, elapsed.Round(time.Millisecond), goroutines, runtime.NumGoroutine(), fds, openFDs(t), heap, heap+grown, grown)
	// A leak of 100 bytes a cycle would add 1 MB over 10,000 cycles.
	assert.Less(t, grown, int64(cycles)*100, "the heap grew by %d bytes over %d cycles", grown, cycles)

	require.NoError(t, resumer.Close())
	proxy.Close()
	waitFor(t, "last link gone", func() bool { return len(p.Info().Replicas) == 0 })
}

// openFDs counts this process's open file descriptors; -1 where /proc is
// missing, which makes the comparison vacuous.
func openFDs(t *testing.T) int {
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Logf("cannot count file descriptors: %v", err)
		return -1
	}
	return len(entries)
}

func heapInUse() int64 {
	var m runtime.MemStats
	runtime.GC()
	runtime.GC() // the second cycle frees what the first one's finalizers released
	runtime.ReadMemStats(&m)
	return int64(m.HeapAlloc)
}

// TestCloseInEveryPhase closes a Primary, or a Replica, while its link is
// held in each phase: the handshake (the HELLO never arrives), the
// snapshot (the replica stopped reading halfway, or the primary stopped
// sending), the stream (likewise), and a Wait that cannot be satisfied.
// Close must return without waiting for any timer, which synctest shows as
// no time passing, and every goroutine must exit, which synctest checks
// when the bubble ends.
func TestCloseInEveryPhase(t *testing.T) {
	bulk := func(t *testing.T, p *Primary[[]byte]) {
		val := make([]byte, 4096)
		for i := range 1000 { // 4 MB: more than a pipe holds
			require.NoError(t, p.Set("k"+strconv.Itoa(i), val))
		}
	}
	cases := []struct {
		phase, closing string
		// enter brings the link into the phase; p or r may be nil when
		// the other end is a fake.
		enter func(t *testing.T, net *transport.Inmem) (*Primary[[]byte], *Replica[[]byte])
	}{
		{"handshake", "primary", handshake},
		{"handshake", "replica", handshake},
		{"snapshot", "primary", func(t *testing.T, net *transport.Inmem) (*Primary[[]byte], *Replica[[]byte]) {
			p := closePhasePrimary(t, net)
			bulk(t, p)
			net.Stall("p", transport.ToDialer, true)
			r := closePhaseReplica(t, net)
			synctest.Wait()
			require.Len(t, p.Info().Replicas, 1)
			require.Equal(t, LinkSyncing, p.Info().Replicas[0].State)
			return p, r
		}},
		{"snapshot", "replica", func(t *testing.T, net *transport.Inmem) (*Primary[[]byte], *Replica[[]byte]) {
			fake := newFakePrimary(t, net, "p")
			r := closePhaseReplica(t, net)
			fake.accept()
			var chunk bytes.Buffer
			sw := snapshotWriter{w: &chunk}
			require.NoError(t, addEntry(&sw, "a", []byte("1"), 0))
			require.NoError(t, sw.flush())
			fake.send(appendSyncStart(nil, frameFull, syncStart{replID: "abc", offset: 0}), chunk.Bytes())
			synctest.Wait()
			require.Equal(t, StateSyncing, r.Info().State)
			return nil, r
		}},
		{"stream", "primary", stream},
		{"stream", "replica", stream},
		{"wait", "primary", func(t *testing.T, net *transport.Inmem) (*Primary[[]byte], *Replica[[]byte]) {
			p := closePhasePrimary(t, net)
			r := closePhaseReplica(t, net)
			waitSynced(t, r)
			net.Stall("p", transport.ToListener, true) // ACKs never arrive
			require.NoError(t, p.Set("a", []byte("1")))
			go func() {
				_, err := p.Wait(1, 0)
				assert.ErrorIs(t, err, ErrClosed)
			}()
			synctest.Wait()
			return p, r
		}},
	}
	for _, c := range cases {
		t.Run(c.phase+"/"+c.closing, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				net := transport.NewInmem()
				p, r := c.enter(t, net)
				closer := func() error { return p.Close() }
				if c.closing == "replica" {
					closer = r.Close
				}
				start := time.Now()
				require.NoError(t, closer())
				assert.Zero(t, time.Since(start), "Close waited for a timer")
				net.Stall("p", transport.ToListener, false)
				net.Stall("p", transport.ToDialer, false)
			})
		})
	}
}

func handshake(t *testing.T, net *transport.Inmem) (*Primary[[]byte], *Replica[[]byte]) {
	p := closePhasePrimary(t, net)
	net.Stall("p", transport.ToListener, true) // the HELLO never arrives
	r := closePhaseReplica(t, net)
	synctest.Wait()
	require.Empty(t, p.Info().Replicas, "the handshake completed")
	require.Equal(t, uint64(1), r.Info().Connects)
	return p, r
}

func stream(t *testing.T, net *transport.Inmem) (*Primary[[]byte], *Replica[[]byte]) {
	p := closePhasePrimary(t, net)
	r := closePhaseReplica(t, net)
	waitSynced(t, r)
	net.Stall("p", transport.ToDialer, true)
	val := make([]byte, 4096)
	for i := range 1000 {
		require.NoError(t, p.Set("k"+strconv.Itoa(i), val))
	}
	synctest.Wait()
	require.Equal(t, LinkStreaming, p.Info().Replicas[0].State)
	return p, r
}

// closePhasePrimary and closePhaseReplica start the two ends, closed again
// at cleanup (a second Close is harmless).
func closePhasePrimary(t *testing.T, net *transport.Inmem) *Primary[[]byte] {
	p, err := NewPrimary[[]byte](WithLogger(nil))
	require.NoError(t, err)
	l, err := net.Listen("p")
	require.NoError(t, err)
	go p.Serve(l)
	t.Cleanup(func() { p.Close() })
	return p
}

func closePhaseReplica(t *testing.T, net *transport.Inmem) *Replica[[]byte] {
	r, err := NewReplica[[]byte](net, "p", WithLogger(nil))
	require.NoError(t, err)
	t.Cleanup(func() { r.Close() })
	return r
}
