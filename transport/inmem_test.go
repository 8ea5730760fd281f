package transport_test

import (
	"bytes"
	"context"
	"io"
	"net"
	"os"
	"strconv"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/replmap/replmap/transport"
)

// inmemConnect listens on addr, dials and accepts, and returns the
// dialled and accepted ends. All are closed at cleanup.
func inmemConnect(t *testing.T, n *transport.Inmem, addr string) (dialed, accepted net.Conn) {
	t.Helper()
	return inmemDial(t, n, mustListener(t, n, addr))
}

// inmemDial dials l and accepts, returning both ends, closed at cleanup.
func inmemDial(t *testing.T, n *transport.Inmem, l net.Listener) (dialed, accepted net.Conn) {
	t.Helper()
	dialed, err := n.Dial(context.Background(), l.Addr().String())
	require.NoError(t, err)
	t.Cleanup(func() { dialed.Close() })
	accepted, err = l.Accept() // the dial is queued: no need for a goroutine
	require.NoError(t, err)
	t.Cleanup(func() { accepted.Close() })
	return dialed, accepted
}

// pattern returns n bytes that differ from their neighbours.
func pattern(n, seed int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte((i + seed) % 251)
	}
	return b
}

// goRead reads n bytes from c in a new goroutine, returning a channel
// that reports what it read and the error.
func goRead(c net.Conn, n int) <-chan readResult {
	ch := make(chan readResult, 1)
	go func() {
		b := make([]byte, n)
		k, err := io.ReadFull(c, b)
		ch <- readResult{b[:k], err}
	}()
	return ch
}

type readResult struct {
	b   []byte
	err error
}

func TestInmemAddresses(t *testing.T) {
	n := transport.NewInmem()
	_, err := n.Listen("")
	assert.Error(t, err, "empty address")

	l, err := n.Listen("primary")
	require.NoError(t, err)
	assert.Equal(t, "inmem", l.Addr().Network())
	assert.Equal(t, "primary", l.Addr().String())
	d, a := inmemDial(t, n, l)
	d2, _ := inmemDial(t, n, l)
	assert.Equal(t, "primary", d.RemoteAddr().String())
	assert.Equal(t, "primary", a.LocalAddr().String())
	assert.Equal(t, "inmem", d.LocalAddr().Network())
	assert.NotEqual(t, d.LocalAddr().String(), d2.LocalAddr().String(), "dialers have distinct addresses")
	assert.Equal(t, d.LocalAddr().String(), a.RemoteAddr().String())

	require.NoError(t, l.Close())
	l, err = n.Listen("primary")
	require.NoError(t, err, "a closed listener frees its address")
	require.NoError(t, l.Close())
}

func TestInmemClose(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := transport.NewInmem()
		d, a := inmemConnect(t, n, "p")

		pendingLocal := goRead(d, 1)
		_, err := d.Write([]byte("bye"))
		require.NoError(t, err)
		pendingPeer := goRead(a, 4)
		synctest.Wait()
		require.NoError(t, d.Close())

		res := <-pendingLocal
		assert.ErrorIs(t, res.err, net.ErrClosed, "Close unblocks a local Read")
		res = <-pendingPeer
		assert.Equal(t, "bye", string(res.b), "the peer reads what was written before Close")
		assert.ErrorIs(t, res.err, io.ErrUnexpectedEOF)
		k, err := a.Read(make([]byte, 1))
		assert.Zero(t, k)
		assert.Equal(t, io.EOF, err, "then io.EOF")

		_, err = a.Write([]byte("x"))
		assert.ErrorIs(t, err, syscall.EPIPE, "the peer's writes fail")
		_, err = d.Read(make([]byte, 1))
		assert.ErrorIs(t, err, net.ErrClosed)
		_, err = d.Write([]byte("x"))
		assert.ErrorIs(t, err, net.ErrClosed)
		assert.ErrorIs(t, d.SetDeadline(time.Now()), net.ErrClosed)
		assert.ErrorIs(t, d.Close(), net.ErrClosed, "second Close")
	})
}

func TestInmemCloseUnblocksWriter(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := transport.NewInmem()
		d, a := inmemConnect(t, n, "p")
		wrote := make(chan error, 2)
		go func() {
			_, err := d.Write(make([]byte, 2*transport.InmemBufferSize))
			wrote <- err
		}()
		synctest.Wait()
		go func() { // waits for the first Write to finish
			_, err := d.Write([]byte("x"))
			wrote <- err
		}()
		synctest.Wait()
		require.Empty(t, wrote, "writers block on a full buffer")
		require.NoError(t, a.Close())
		assert.ErrorIs(t, <-wrote, syscall.EPIPE, "the peer's Close unblocks a Write")
		assert.ErrorIs(t, <-wrote, syscall.EPIPE)

		d2, _ := inmemDial(t, n, mustListener(t, n, "q"))
		go func() {
			_, err := d2.Write(make([]byte, 2*transport.InmemBufferSize))
			wrote <- err
		}()
		synctest.Wait()
		require.NoError(t, d2.Close())
		assert.ErrorIs(t, <-wrote, net.ErrClosed, "Close unblocks a local Write")
	})
}

func mustListener(t *testing.T, n *transport.Inmem, addr string) net.Listener {
	t.Helper()
	l, err := n.Listen(addr)
	require.NoError(t, err)
	t.Cleanup(func() { l.Close() })
	return l
}

func TestInmemDeadlines(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := transport.NewInmem()
		d, a := inmemConnect(t, n, "p")

		// A deadline moved into the past fails a pending Read at once.
		pending := goRead(a, 1)
		synctest.Wait()
		require.NoError(t, a.SetReadDeadline(time.Now().Add(-time.Second)))
		res := <-pending
		assert.ErrorIs(t, res.err, os.ErrDeadlineExceeded)
		var ne net.Error
		if assert.ErrorAs(t, res.err, &ne) {
			assert.True(t, ne.Timeout())
		}

		// A past deadline fails later operations even with data waiting.
		_, err := d.Write([]byte("ab"))
		require.NoError(t, err)
		synctest.Wait()
		_, err = a.Read(make([]byte, 1))
		assert.ErrorIs(t, err, os.ErrDeadlineExceeded)

		// Extending the deadline revives the connection, nothing lost.
		require.NoError(t, a.SetReadDeadline(time.Now().Add(time.Hour)))
		buf := make([]byte, 2)
		_, err = io.ReadFull(a, buf)
		require.NoError(t, err)
		assert.Equal(t, "ab", string(buf))

		// Shortening a deadline applies to a pending Read.
		pending = goRead(a, 1)
		synctest.Wait()
		start := time.Now()
		require.NoError(t, a.SetReadDeadline(start.Add(time.Second)))
		assert.ErrorIs(t, (<-pending).err, os.ErrDeadlineExceeded)
		assert.Equal(t, time.Second, time.Since(start))

		// Write deadlines: a Write blocked on a full buffer times out, having
		// buffered what fit.
		require.NoError(t, d.SetWriteDeadline(time.Now().Add(time.Second)))
		k, err := d.Write(make([]byte, 2*transport.InmemBufferSize))
		assert.ErrorIs(t, err, os.ErrDeadlineExceeded)
		assert.Equal(t, transport.InmemBufferSize, k)
		require.NoError(t, d.SetWriteDeadline(time.Time{}))
		require.NoError(t, a.SetReadDeadline(time.Time{}))
		_, err = io.ReadFull(a, make([]byte, k))
		require.NoError(t, err)
		_, err = d.Write([]byte("z"))
		assert.NoError(t, err, "cleared deadline")
	})
}

func TestInmemWritesDoNotInterleave(t *testing.T) {
	n := transport.NewInmem()
	d, a := inmemConnect(t, n, "p")
	const size = 3 * transport.InmemBufferSize
	done := make(chan error, 2)
	for _, c := range []byte("ab") {
		go func() {
			_, err := d.Write(bytes.Repeat([]byte{c}, size))
			done <- err
		}()
	}
	got := make([]byte, 2*size)
	_, err := io.ReadFull(a, got)
	require.NoError(t, err)
	require.NoError(t, <-done)
	require.NoError(t, <-done)
	first, second := got[:size], got[size:]
	assert.Equal(t, bytes.Repeat(first[:1], size), first)
	assert.Equal(t, bytes.Repeat(second[:1], size), second)
	assert.NotEqual(t, first[0], second[0])
}

func TestInmemCut(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := transport.NewInmem()
		l := mustListener(t, n, "p")
		d, a := inmemDial(t, n, l)
		d2, a2 := inmemDial(t, n, l)
		other, _ := inmemConnect(t, n, "other")

		_, err := d.Write([]byte("lost"))
		require.NoError(t, err)
		pending := goRead(d, 1)
		synctest.Wait()

		assert.Equal(t, 2, n.Cut("p"))
		assert.ErrorIs(t, (<-pending).err, transport.ErrConnReset, "Cut unblocks a Read")
		for i, c := range []net.Conn{d, a, d2, a2} {
			_, err := c.Read(make([]byte, 10))
			assert.ErrorIs(t, err, transport.ErrConnReset, "Read %d", i)
			_, err = c.Write([]byte("x"))
			assert.ErrorIs(t, err, transport.ErrConnReset, "Write %d", i)
			assert.NoError(t, c.Close(), "the owner still closes")
		}
		assert.Zero(t, n.Cut("p"), "nothing left to cut")

		// The listener stays open, other listeners are untouched.
		d3, a3 := inmemDial(t, n, l)
		_, err = d3.Write([]byte("ok"))
		require.NoError(t, err)
		_, err = io.ReadFull(a3, make([]byte, 2))
		assert.NoError(t, err)
		_, err = other.Write([]byte("ok"))
		assert.NoError(t, err)
		assert.Equal(t, 1, n.Cut("p"))
	})
}

func TestInmemCutCountsOpenConnections(t *testing.T) {
	n := transport.NewInmem()
	l := mustListener(t, n, "p")
	d, a := inmemDial(t, n, l)
	_, _ = inmemDial(t, n, l)
	require.NoError(t, d.Close())
	require.NoError(t, a.Close())
	assert.Equal(t, 1, n.Cut("p"), "closed connections are forgotten")
	assert.Zero(t, n.Cut("unknown"))
}

func TestInmemRefuse(t *testing.T) {
	n := transport.NewInmem()
	n.Refuse("p", true) // before the listener exists
	l := mustListener(t, n, "p")
	_, a := inmemConnect(t, n, "other")

	for range 2 { // toggles
		_, err := n.Dial(context.Background(), "p")
		require.ErrorIs(t, err, transport.ErrConnRefused)

		n.Refuse("p", false)
		d, _ := inmemDial(t, n, l)
		n.Refuse("p", true)
		_, err = d.Write([]byte("x"))
		assert.NoError(t, err, "open connections are not affected")
	}
	_, err := n.Dial(context.Background(), "other")
	assert.NoError(t, err, "other addresses are not affected")
	_, err = a.Write([]byte("x"))
	assert.NoError(t, err)
}

func TestInmemStall(t *testing.T) {
	for _, dir := range []transport.Direction{transport.ToListener, transport.ToDialer} {
		t.Run(dir.String(), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) { testStall(t, dir) })
		})
	}
}

func testStall(t *testing.T, dir transport.Direction) {
	n := transport.NewInmem()
	l := mustListener(t, n, "p")
	type stalled struct {
		w, r    net.Conn
		want    []byte
		pending <-chan readResult
		wrote   chan error
	}
	d0, a0 := inmemDial(t, n, l)
	n.Stall("p", dir, true)
	d1, a1 := inmemDial(t, n, l)
	conns := []*stalled{{w: d0, r: a0}, {w: d1, r: a1}} // dialled before and after the Stall
	if dir == transport.ToDialer {
		for _, s := range conns {
			s.w, s.r = s.r, s.w
		}
	}

	for i, s := range conns {
		// The other direction flows.
		_, err := s.r.Write([]byte("back"))
		require.NoError(t, err)
		_, err = io.ReadFull(s.w, make([]byte, 4))
		require.NoError(t, err, "conn %d: the other direction flows", i)

		// Bytes are held: the reader waits, durably.
		s.want = pattern(3*transport.InmemBufferSize/2, i)
		s.pending = goRead(s.r, len(s.want))
		k, err := s.w.Write(s.want[:10])
		require.NoError(t, err)
		synctest.Wait()
		require.Empty(t, s.pending, "conn %d: stalled bytes arrived", i)

		// Writers go on until the buffer is full, then block.
		require.NoError(t, s.w.SetWriteDeadline(time.Now().Add(time.Second)))
		m, err := s.w.Write(s.want[k:])
		assert.ErrorIs(t, err, os.ErrDeadlineExceeded, "conn %d: a Write to a full stalled buffer blocks", i)
		k += m
		assert.Equal(t, transport.InmemBufferSize, k, "conn %d: the buffer is full", i)
		require.NoError(t, s.w.SetWriteDeadline(time.Time{}))

		// The rest, and the writer's Close, wait for the release.
		s.wrote = make(chan error, 1)
		go func() {
			_, err := s.w.Write(s.want[k:])
			if err == nil {
				err = s.w.Close()
			}
			s.wrote <- err
		}()
	}
	synctest.Wait()
	for i, s := range conns {
		require.Empty(t, s.pending, "conn %d", i)
		require.Empty(t, s.wrote, "conn %d", i)
	}

	n.Stall("p", dir, false)
	for i, s := range conns {
		res := <-s.pending
		require.NoError(t, res.err)
		assert.True(t, bytes.Equal(s.want, res.b), "conn %d: released bytes arrive in order", i)
		assert.NoError(t, <-s.wrote)
		_, err := s.r.Read(make([]byte, 1))
		assert.Equal(t, io.EOF, err, "conn %d: then the writer's Close", i)
	}
}

func TestInmemListenerCloseResetsQueued(t *testing.T) {
	n := transport.NewInmem()
	l, err := n.Listen("p")
	require.NoError(t, err)
	d, err := n.Dial(context.Background(), "p")
	require.NoError(t, err)
	defer d.Close()
	require.NoError(t, l.Close())
	_, err = d.Read(make([]byte, 1))
	assert.ErrorIs(t, err, transport.ErrConnReset)
	assert.Equal(t, 1, n.Cut("p"), "the dialler's end is still open")
	require.NoError(t, d.Close())
	assert.Zero(t, n.Cut("p"))
}

func TestInmemBacklog(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := transport.NewInmem()
		l := mustListener(t, n, "p")
		for i := range transport.AcceptBacklog {
			c, err := n.Dial(context.Background(), "p")
			require.NoError(t, err, "dial %d returns before Accept", i)
			t.Cleanup(func() { c.Close() })
		}

		// A full backlog makes Dial wait, honouring ctx.
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		start := time.Now()
		_, err := n.Dial(ctx, "p")
		assert.ErrorIs(t, err, context.DeadlineExceeded)
		assert.Equal(t, time.Second, time.Since(start))

		// Until Accept makes room.
		dialed := make(chan net.Conn, 1)
		go func() {
			c, err := n.Dial(context.Background(), "p")
			assert.NoError(t, err)
			dialed <- c
		}()
		synctest.Wait()
		require.Empty(t, dialed, "Dial waits")
		a, err := l.Accept()
		require.NoError(t, err)
		defer a.Close()
		c := <-dialed
		defer c.Close()

		// Accepts come in dial order.
		for range transport.AcceptBacklog - 1 {
			a, err := l.Accept()
			require.NoError(t, err)
			a.Close()
		}
		a, err = l.Accept()
		require.NoError(t, err)
		defer a.Close()
		assert.Equal(t, c.LocalAddr().String(), a.RemoteAddr().String())
	})
}

func TestDirectionString(t *testing.T) {
	assert.Equal(t, "ToListener", transport.ToListener.String())
	assert.Equal(t, "ToDialer", transport.ToDialer.String())
	assert.Equal(t, "Direction(7)", transport.Direction(7).String())
	assert.Panics(t, func() { transport.NewInmem().Stall("p", 7, true) })
}

func BenchmarkInmem(b *testing.B) {
	for _, size := range []int{64, 4 << 10, 64 << 10} {
		b.Run(strconv.Itoa(size), func(b *testing.B) {
			n := transport.NewInmem()
			l, err := n.Listen("p")
			require.NoError(b, err)
			defer l.Close()
			d, err := n.Dial(context.Background(), "p")
			require.NoError(b, err)
			defer d.Close()
			a, err := l.Accept()
			require.NoError(b, err)
			defer a.Close()
			done := make(chan error, 1)
			go func() {
				_, err := io.Copy(io.Discard, a)
				done <- err
			}()
			buf := make([]byte, size)
			b.SetBytes(int64(size))
			for b.Loop() {
				if _, err := d.Write(buf); err != nil {
					b.Fatal(err)
				}
			}
			d.Close()
			require.NoError(b, <-done)
		})
	}
}
