package transport_test

import (
	"context"
	"io"
	"net"
	"strconv"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/net/nettest"

	"github.com/replmap/replmap/transport"
)

// network is a Transport under test and a way to get a fresh address for
// it.
type network struct {
	name string
	tr   transport.Transport
	addr func() string
}

var addrSeq atomic.Int64

func freshInmemAddr() string { return "addr-" + strconv.FormatInt(addrSeq.Add(1), 10) }

// networks returns every Transport, TCP with and without TLS.
func networks(t *testing.T) []network {
	loopback := func() string { return "127.0.0.1:0" }
	return []network{
		{"inmem", transport.NewInmem(), freshInmemAddr},
		{"tcp", transport.NewTCP(), loopback},
		{"tls", tlsTransport(t, nil), loopback},
	}
}

// connect listens on addr, dials the listener and accepts, returning the
// dialled and the accepted connections. The listener is closed before it
// returns; stop closes both connections.
func connect(tr transport.Transport, addr string) (dialed, accepted net.Conn, stop func(), err error) {
	l, err := tr.Listen(addr)
	if err != nil {
		return nil, nil, nil, err
	}
	defer l.Close()
	type result struct {
		c   net.Conn
		err error
	}
	acceptc := make(chan result, 1)
	go func() {
		c, err := l.Accept()
		// A TLS server handshakes on first use, and the dialler waits for it.
		if tc, ok := c.(*transport.TLSConn); ok && err == nil {
			if err = tc.HandshakeContext(context.Background()); err != nil {
				c.Close()
			}
		}
		acceptc <- result{c, err}
	}()
	dialed, err = tr.Dial(context.Background(), l.Addr().String())
	if err != nil {
		l.Close() // ends the Accept
		<-acceptc
		return nil, nil, nil, err
	}
	res := <-acceptc
	if res.err != nil {
		dialed.Close()
		return nil, nil, nil, res.err
	}
	return dialed, res.c, func() { dialed.Close(); res.c.Close() }, nil
}

// TestConformance runs the x/net/nettest net.Conn test suite against the
// transports. TLS is left out: crypto/tls documents that a connection is
// unusable after a Write times out, which the suite does.
func TestConformance(t *testing.T) {
	for _, nw := range networks(t) {
		if nw.name == "tls" {
			continue
		}
		t.Run(nw.name, func(t *testing.T) {
			nettest.TestConn(t, func() (net.Conn, net.Conn, func(), error) {
				return connect(nw.tr, nw.addr())
			})
		})
	}
}

func TestRoundTrip(t *testing.T) {
	for _, nw := range networks(t) {
		t.Run(nw.name, func(t *testing.T) {
			dialed, accepted, stop, err := connect(nw.tr, nw.addr())
			require.NoError(t, err)
			defer stop()

			for _, dir := range []struct {
				name string
				w, r net.Conn
			}{{"to listener", dialed, accepted}, {"to dialer", accepted, dialed}} {
				msg := "hello " + dir.name
				_, err = dir.w.Write([]byte(msg))
				require.NoError(t, err)
				buf := make([]byte, len(msg))
				_, err = io.ReadFull(dir.r, buf)
				require.NoError(t, err)
				assert.Equal(t, msg, string(buf))
			}
			assert.Equal(t, dialed.LocalAddr().String(), accepted.RemoteAddr().String())
			assert.Equal(t, dialed.RemoteAddr().String(), accepted.LocalAddr().String())
		})
	}
}

func TestDialNobody(t *testing.T) {
	for _, nw := range networks(t) {
		t.Run(nw.name, func(t *testing.T) {
			// An address that was listened on, and is no longer.
			l, err := nw.tr.Listen(nw.addr())
			require.NoError(t, err)
			addr := l.Addr().String()
			require.NoError(t, l.Close())

			c, err := nw.tr.Dial(context.Background(), addr)
			require.Error(t, err)
			assert.Nil(t, c)
			assert.ErrorIs(t, err, transport.ErrConnRefused)
		})
	}
}

func TestListenTwice(t *testing.T) {
	for _, nw := range networks(t) {
		t.Run(nw.name, func(t *testing.T) {
			l, err := nw.tr.Listen(nw.addr())
			require.NoError(t, err)
			defer l.Close()
			_, err = nw.tr.Listen(l.Addr().String())
			assert.ErrorIs(t, err, transport.ErrAddrInUse)
		})
	}
}

func TestListenerClose(t *testing.T) {
	for _, nw := range networks(t) {
		t.Run(nw.name, func(t *testing.T) {
			dialed, accepted, stop, err := connect(nw.tr, nw.addr()) // closes its listener
			require.NoError(t, err)
			defer stop()

			l, err := nw.tr.Listen(nw.addr())
			require.NoError(t, err)
			accepting := make(chan error, 1)
			go func() {
				_, err := l.Accept()
				accepting <- err
			}()
			require.NoError(t, l.Close())
			assert.ErrorIs(t, <-accepting, net.ErrClosed, "a pending Accept returns")
			_, err = l.Accept()
			assert.ErrorIs(t, err, net.ErrClosed, "a later Accept fails")
			_, err = nw.tr.Dial(context.Background(), l.Addr().String())
			assert.ErrorIs(t, err, transport.ErrConnRefused, "dials are refused")
			assert.Error(t, l.Close(), "second Close")

			// Connections accepted earlier stay up.
			_, err = dialed.Write([]byte("x"))
			require.NoError(t, err)
			_, err = io.ReadFull(accepted, make([]byte, 1))
			assert.NoError(t, err)
		})
	}
}

func TestDialCancelled(t *testing.T) {
	for _, nw := range networks(t) {
		t.Run(nw.name, func(t *testing.T) {
			l, err := nw.tr.Listen(nw.addr())
			require.NoError(t, err)
			defer l.Close()
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			c, err := nw.tr.Dial(ctx, l.Addr().String())
			assert.ErrorIs(t, err, context.Canceled)
			assert.Nil(t, c)
		})
	}
}
