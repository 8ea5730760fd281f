package transport_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"math/big"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/replmap/replmap/transport"
)

// selfSigned returns a fresh self-signed certificate for 127.0.0.1 and a
// pool trusting it.
func selfSigned(t *testing.T) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "replmap test"},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
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
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: cert}, pool
}

// tlsTransport returns a TCP transport with TLS on both sides, serving a
// fresh self-signed certificate, and opts. The client trusts roots, or the
// certificate if roots is nil.
func tlsTransport(t *testing.T, roots *x509.CertPool, opts ...transport.TCPOption) *transport.TCP {
	t.Helper()
	cert, pool := selfSigned(t)
	if roots == nil {
		roots = pool
	}
	server := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13}
	client := &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS13}
	return transport.NewTCP(append([]transport.TCPOption{transport.WithTLS(server, client)}, opts...)...)
}

func TestTLSRoundTrip(t *testing.T) {
	tr := tlsTransport(t, nil)
	dialed, accepted, stop, err := connect(tr, "127.0.0.1:0")
	require.NoError(t, err)
	defer stop()

	for _, c := range []net.Conn{dialed, accepted} {
		tc, ok := c.(*transport.TLSConn)
		require.True(t, ok, "%T is not a TLS connection", c)
		state := tc.ConnectionState()
		assert.True(t, state.HandshakeComplete)
		assert.Equal(t, uint16(tls.VersionTLS13), state.Version)
	}
	_, err = dialed.Write([]byte("ping"))
	require.NoError(t, err)
	buf := make([]byte, 4)
	_, err = io.ReadFull(accepted, buf)
	require.NoError(t, err)
	assert.Equal(t, "ping", string(buf))
	_, err = accepted.Write([]byte("pong"))
	require.NoError(t, err)
	_, err = io.ReadFull(dialed, buf)
	require.NoError(t, err)
	assert.Equal(t, "pong", string(buf))

	// Without close_notify, as over plain TCP, the peer reads io.EOF.
	require.NoError(t, dialed.Close())
	_, err = accepted.Read(buf)
	assert.ErrorIs(t, err, io.EOF)
}

// TestTLSCloseUnread checks that Close returns promptly when the peer has
// stopped reading and the send buffer is full. crypto/tls's own Close
// would first send a close_notify alert, blocking for up to 5 s.
func TestTLSCloseUnread(t *testing.T) {
	for _, side := range []string{"dialed", "accepted"} {
		t.Run(side, func(t *testing.T) {
			dialed, accepted, stop, err := connect(tlsTransport(t, nil), "127.0.0.1:0")
			require.NoError(t, err)
			defer stop()
			c := dialed
			if side == "accepted" {
				c = accepted
			}
			fillSendBuffer(t, c)

			start := time.Now()
			closed := make(chan error, 1)
			go func() { closed <- c.Close() }()
			select {
			case err := <-closed:
				assert.NoError(t, err)
				assert.ErrorIs(t, c.Close(), net.ErrClosed, "closing twice")
			case <-time.After(2 * time.Second):
				err := <-closed // no goroutine outlives the test
				t.Errorf("Close took %v on a full send buffer (error %v)", time.Since(start), err)
			}
		})
	}
}

// fillSendBuffer writes to the TCP connection under the TLS connection c,
// whose peer does not read, until not even one more byte goes out within a
// short deadline: the socket buffers are full. (Writing 64 KiB at a time
// is not enough: the kernel may still take a small write into the last
// packet, and crypto/tls refuses any write after one has timed out.)
func fillSendBuffer(t *testing.T, c net.Conn) {
	t.Helper()
	nc, ok := c.(interface{ NetConn() net.Conn })
	require.True(t, ok, "%T has no NetConn method", c)
	raw := nc.NetConn()
	buf := make([]byte, 64<<10)
	sizes := []int{len(buf), 512, 1} // each until a write times out
	for written := 0; written < 1<<30; {
		require.NoError(t, raw.SetWriteDeadline(time.Now().Add(100*time.Millisecond)))
		n, err := raw.Write(buf[:sizes[0]])
		written += n
		if err == nil {
			continue
		}
		var ne net.Error
		require.ErrorAs(t, err, &ne)
		require.True(t, ne.Timeout(), "%v", err)
		if sizes = sizes[1:]; len(sizes) == 0 {
			return
		}
	}
	t.Fatal("wrote 1 GiB to a peer that does not read")
}

func TestTLSUntrustedServer(t *testing.T) {
	tr := tlsTransport(t, x509.NewCertPool()) // the client trusts nobody
	_, _, _, err := connect(tr, "127.0.0.1:0")
	var unknown x509.UnknownAuthorityError
	assert.ErrorAs(t, err, &unknown)
}

// TestTLSServerOnly checks that either TLS side may be left out: a
// plain-TCP client cannot talk to a TLS listener.
func TestTLSServerOnly(t *testing.T) {
	cert, _ := selfSigned(t)
	server := transport.NewTCP(transport.WithTLS(&tls.Config{Certificates: []tls.Certificate{cert}}, nil))
	l, err := server.Listen("127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	handshake := make(chan error, 1)
	go func() {
		c, err := l.Accept()
		if err == nil {
			err = c.(*transport.TLSConn).HandshakeContext(context.Background())
			c.Close()
		}
		handshake <- err
	}()
	c, err := server.Dial(context.Background(), l.Addr().String()) // plain TCP
	require.NoError(t, err)
	_, err = c.Write([]byte("not a TLS hello\n\n\n\n\n\n\n\n\n"))
	require.NoError(t, err)
	assert.Error(t, <-handshake)
	c.Close()
}

// TestTCPOptions checks that the options reach the sockets: whatever the
// dial timeout, a connection is made, over TCP and TLS, with keep-alives as
// configured on both ends; and a dial gives up at the dial timeout.
func TestTCPOptions(t *testing.T) {
	assert.Equal(t, 5*time.Second, transport.DefaultDialTimeout)
	assert.Equal(t, 15*time.Second, transport.DefaultKeepAlive)

	for _, tc := range []struct {
		name string
		opts []transport.TCPOption
		on   bool          // keep-alives
		idle time.Duration // before the first probe, if on
	}{
		{"default", nil, true, transport.DefaultKeepAlive},
		{"set", []transport.TCPOption{transport.WithDialTimeout(time.Second), transport.WithKeepAlive(7 * time.Second)}, true, 7 * time.Second},
		{"no limits", []transport.TCPOption{transport.WithDialTimeout(-1), transport.WithKeepAlive(-1)}, false, 0},
		{"go default", []transport.TCPOption{transport.WithDialTimeout(0), transport.WithKeepAlive(0)}, true, 15 * time.Second},
	} {
		for _, network := range []string{"tcp", "tls"} {
			t.Run(tc.name+"/"+network, func(t *testing.T) {
				tr := transport.NewTCP(tc.opts...)
				if network == "tls" {
					tr = tlsTransport(t, nil, tc.opts...)
				}
				dialed, accepted, stop, err := connect(tr, "127.0.0.1:0")
				require.NoError(t, err)
				defer stop()
				for side, c := range map[string]net.Conn{"dialed": dialed, "accepted": accepted} {
					on, idle := keepAlive(t, c)
					if assert.Equal(t, tc.on, on, "%s: keep-alive on", side) && on {
						assert.Equal(t, tc.idle, idle, "%s: keep-alive idle time", side)
					}
				}
			})
		}
	}

	t.Run("dial timeout", func(t *testing.T) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		defer l.Close()
		// A TLS dial to a listener that never answers the handshake, with a
		// context that would end it long after the dial timeout (and long
		// before the default one).
		_, pool := selfSigned(t)
		tr := transport.NewTCP(
			transport.WithDialTimeout(50*time.Millisecond),
			transport.WithTLS(nil, &tls.Config{RootCAs: pool}),
		)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_, err = tr.Dial(ctx, l.Addr().String())
		var ne net.Error
		require.ErrorAs(t, err, &ne)
		assert.True(t, ne.Timeout(), "%v", err)
		assert.NoError(t, ctx.Err(), "the dial ended at the context's deadline, not the dial timeout")
	})
}
