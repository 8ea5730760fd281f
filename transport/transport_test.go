package transport_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"math/big"
	"net"
	"os"
	"strconv"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"golang.org/x/net/nettest"

	"github.com/replmap/replmap/transport"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var addrSeq atomic.Int64

// transports lists every Transport with a way to get a fresh address.
func transports(t *testing.T) map[string]struct {
	tr   transport.Transport
	addr func() string
} {
	inmem := transport.NewInmem()
	return map[string]struct {
		tr   transport.Transport
		addr func() string
	}{
		"inmem": {inmem, func() string { return "addr-" + strconv.FormatInt(addrSeq.Add(1), 10) }},
		"tcp":   {transport.NewTCP(), func() string { return "127.0.0.1:0" }},
		"tls":   {tlsTransport(t), func() string { return "127.0.0.1:0" }},
	}
}

// pipe connects a dialled and an accepted connection.
func pipe(tr transport.Transport, addr string) (c1, c2 net.Conn, stop func(), err error) {
	l, err := tr.Listen(addr)
	if err != nil {
		return nil, nil, nil, err
	}
	defer l.Close()
	accepted := make(chan net.Conn, 1)
	acceptErr := make(chan error, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			acceptErr <- err
			return
		}
		// A TLS server handshakes on first use; the dialler waits for it.
		if tc, ok := c.(*tls.Conn); ok {
			if err := tc.HandshakeContext(context.Background()); err != nil {
				c.Close()
				acceptErr <- err
				return
			}
		}
		accepted <- c
	}()
	c1, err = tr.Dial(context.Background(), l.Addr().String())
	if err != nil {
		return nil, nil, nil, err
	}
	select {
	case c2 = <-accepted:
	case err = <-acceptErr:
		c1.Close()
		return nil, nil, nil, err
	}
	return c1, c2, func() { c1.Close(); c2.Close() }, nil
}

// TestConformance runs the standard net.Conn test suite against the
// transports. TLS is left out: crypto/tls documents that a connection is
// unusable after a write times out, which the suite's timeout tests do.
func TestConformance(t *testing.T) {
	for name, tc := range transports(t) {
		if name == "tls" {
			continue
		}
		t.Run(name, func(t *testing.T) {
			nettest.TestConn(t, func() (net.Conn, net.Conn, func(), error) {
				return pipe(tc.tr, tc.addr())
			})
		})
	}
}

func TestListenDialAccept(t *testing.T) {
	for name, tc := range transports(t) {
		t.Run(name, func(t *testing.T) {
			c1, c2, stop, err := pipe(tc.tr, tc.addr())
			require.NoError(t, err)
			defer stop()
			_, err = c1.Write([]byte("hello"))
			require.NoError(t, err)
			buf := make([]byte, 5)
			_, err = io.ReadFull(c2, buf)
			require.NoError(t, err)
			assert.Equal(t, "hello", string(buf))

			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			l, err := tc.tr.Listen(tc.addr())
			require.NoError(t, err)
			defer l.Close()
			_, err = tc.tr.Dial(ctx, l.Addr().String())
			assert.ErrorIs(t, err, context.Canceled, "Dial honours a cancelled context")

			require.NoError(t, l.Close())
			_, err = l.Accept()
			assert.ErrorIs(t, err, net.ErrClosed)
			_, err = tc.tr.Dial(context.Background(), l.Addr().String())
			assert.Error(t, err, "dial to a closed listener")
		})
	}
}

func TestInmemAddresses(t *testing.T) {
	n := transport.NewInmem()
	_, err := n.Dial(context.Background(), "nobody")
	require.ErrorIs(t, err, transport.ErrConnRefused)
	l, err := n.Listen("a")
	require.NoError(t, err)
	_, err = n.Listen("a")
	require.ErrorIs(t, err, transport.ErrAddrInUse)
	require.NoError(t, l.Close())
	_, err = n.Dial(context.Background(), "a")
	require.ErrorIs(t, err, transport.ErrConnRefused)
	l, err = n.Listen("a") // the address is free again
	require.NoError(t, err)
	l.Close()
}

func TestInmemCut(t *testing.T) {
	n := transport.NewInmem()
	c1, c2, stop, err := pipe(n, "cut")
	require.NoError(t, err)
	defer stop()
	_, err = c1.Write([]byte("lost"))
	require.NoError(t, err)
	assert.Equal(t, 1, n.Cut("cut"))
	for _, c := range []net.Conn{c1, c2} {
		_, err := c.Read(make([]byte, 10))
		assert.ErrorIs(t, err, transport.ErrConnReset)
		_, err = c.Write([]byte("x"))
		assert.ErrorIs(t, err, transport.ErrConnReset)
	}
	stop()
	assert.Zero(t, n.Cut("cut"), "closed connections are forgotten")
}

func TestInmemRefuse(t *testing.T) {
	n := transport.NewInmem()
	l, err := n.Listen("r")
	require.NoError(t, err)
	defer l.Close()
	n.Refuse("r", true)
	_, err = n.Dial(context.Background(), "r")
	require.ErrorIs(t, err, transport.ErrConnRefused)
	n.Refuse("r", false)
	c, err := n.Dial(context.Background(), "r")
	require.NoError(t, err)
	c.Close()
}

func TestInmemStall(t *testing.T) {
	for _, dir := range []transport.Direction{transport.ToListener, transport.ToDialer} {
		t.Run(strconv.Itoa(int(dir)), func(t *testing.T) {
			n := transport.NewInmem()
			dialer, listener, stop, err := pipe(n, "s")
			require.NoError(t, err)
			defer stop()
			w, r := dialer, listener
			if dir == transport.ToDialer {
				w, r = listener, dialer
			}
			n.Stall("s", dir, true)
			_, err = w.Write([]byte("held"))
			require.NoError(t, err)
			require.NoError(t, r.SetReadDeadline(time.Now().Add(20*time.Millisecond)))
			_, err = r.Read(make([]byte, 10))
			require.ErrorIs(t, err, os.ErrDeadlineExceeded, "stalled bytes must not arrive")

			// The writer blocks once the buffer is full.
			require.NoError(t, w.SetWriteDeadline(time.Now().Add(50*time.Millisecond)))
			_, err = w.Write(make([]byte, 4<<20))
			require.ErrorIs(t, err, os.ErrDeadlineExceeded)
			require.NoError(t, w.SetWriteDeadline(time.Time{}))

			n.Stall("s", dir, false)
			require.NoError(t, r.SetReadDeadline(time.Time{}))
			buf := make([]byte, 4)
			_, err = io.ReadFull(r, buf)
			require.NoError(t, err)
			assert.Equal(t, "held", string(buf), "released bytes arrive in order")
		})
	}
}

// TestInmemInSynctest checks that deadlines follow the bubble's fake clock
// and that an idle reader is durably blocked.
func TestInmemInSynctest(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := transport.NewInmem()
		c1, c2, stop, err := pipe(n, "bubble")
		require.NoError(t, err)
		defer stop()

		read := make(chan error, 1)
		go func() {
			_, err := c2.Read(make([]byte, 1))
			read <- err
		}()
		synctest.Wait() // returns only because the reader is durably blocked
		select {
		case err := <-read:
			t.Fatalf("Read returned early: %v", err)
		default:
		}
		_, err = c1.Write([]byte{1})
		require.NoError(t, err)
		require.NoError(t, <-read)

		start := time.Now()
		require.NoError(t, c2.SetReadDeadline(start.Add(3*time.Second)))
		_, err = c2.Read(make([]byte, 1))
		require.ErrorIs(t, err, os.ErrDeadlineExceeded)
		var ne net.Error
		require.True(t, errors.As(err, &ne) && ne.Timeout())
		assert.Equal(t, 3*time.Second, time.Since(start))
	})
}

// tlsTransport returns a TCP transport with TLS, trusting a fresh
// self-signed certificate.
func tlsTransport(t *testing.T) *transport.TCP {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "replmap test"},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	cert, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	server := &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}, MinVersion: tls.VersionTLS13}
	client := &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS13}
	return transport.NewTCP(transport.WithTLS(server, client), transport.WithDialTimeout(5*time.Second))
}
