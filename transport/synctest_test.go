package transport_test

import (
	"context"
	"net"
	"os"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/replmap/replmap/transport"
)

// TestInmemInSynctest checks that an Inmem created in a bubble follows the
// bubble's fake clock, and that its blocked operations are durably
// blocked: synctest.Wait returns while they wait.
func TestInmemInSynctest(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := transport.NewInmem()
		l, err := n.Listen("primary")
		require.NoError(t, err)
		defer l.Close()

		// An idle Accept.
		accepted := make(chan net.Conn, 1)
		go func() {
			c, err := l.Accept()
			assert.NoError(t, err)
			accepted <- c
		}()
		synctest.Wait()
		require.Empty(t, accepted, "Accept returned with nothing dialled")
		d, err := n.Dial(context.Background(), "primary")
		require.NoError(t, err)
		defer d.Close()
		a := <-accepted
		defer a.Close()

		// A read deadline fires after exactly its duration of fake time.
		start := time.Now()
		require.NoError(t, a.SetReadDeadline(start.Add(3*time.Second)))
		_, err = a.Read(make([]byte, 1))
		require.ErrorIs(t, err, os.ErrDeadlineExceeded)
		var ne net.Error
		require.ErrorAs(t, err, &ne)
		assert.True(t, ne.Timeout())
		assert.Equal(t, 3*time.Second, time.Since(start))
		require.NoError(t, a.SetReadDeadline(time.Time{}))

		// An idle Read, with no deadline or with a far one.
		for _, dl := range []time.Time{{}, time.Now().Add(time.Hour)} {
			require.NoError(t, a.SetReadDeadline(dl))
			read := goRead(a, 1)
			synctest.Wait() // returns only if the reader is durably blocked
			require.Empty(t, read, "Read returned early")
			_, err = d.Write([]byte{1})
			require.NoError(t, err)
			assert.NoError(t, (<-read).err)
		}
		assert.Equal(t, 3*time.Second, time.Since(start), "no fake time passed")

		// A Write blocked on a full buffer.
		wrote := make(chan error, 1)
		go func() {
			_, err := d.Write(make([]byte, transport.InmemBufferSize+1))
			wrote <- err
		}()
		synctest.Wait()
		require.Empty(t, wrote, "Write returned with the buffer full")
		_, err = a.Read(make([]byte, 1))
		require.NoError(t, err)
		require.NoError(t, <-wrote)

		// Faults work from inside the bubble.
		n.Stall("primary", transport.ToDialer, true)
		_, err = a.Write([]byte{2})
		require.NoError(t, err)
		read := goRead(d, 1)
		synctest.Wait()
		require.Empty(t, read, "stalled byte arrived")
		n.Stall("primary", transport.ToDialer, false)
		assert.Equal(t, []byte{2}, (<-read).b)
		assert.Equal(t, 1, n.Cut("primary"))
	})
}
