package transport

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"syscall"
	"time"
)

const (
	// DefaultDialTimeout is how long a [TCP] Dial may take at most, TLS
	// handshake included, unless set with [WithDialTimeout].
	DefaultDialTimeout = 5 * time.Second
	// DefaultKeepAlive is the TCP keep-alive period of [TCP] connections,
	// unless set with [WithKeepAlive].
	DefaultKeepAlive = 15 * time.Second
)

// TCP is a [Transport] over TCP, optionally with TLS. Make one with
// [NewTCP], which sets the defaults (the zero value works, but without a
// dial timeout). It is safe for concurrent use.
type TCP struct {
	dialTimeout time.Duration
	keepAlive   time.Duration
	serverTLS   *tls.Config
	clientTLS   *tls.Config
}

var _ Transport = (*TCP)(nil)

// A TCPOption configures a [TCP] transport.
type TCPOption interface {
	apply(*TCP)
}

type tcpOption func(*TCP)

func (f tcpOption) apply(t *TCP) { f(t) }

// WithDialTimeout bounds how long Dial may take, on top of its context.
// Zero or negative means no bound but the context's. Default
// [DefaultDialTimeout].
func WithDialTimeout(d time.Duration) TCPOption {
	return tcpOption(func(t *TCP) { t.dialTimeout = d })
}

// WithKeepAlive sets the TCP keep-alive period of dialled and accepted
// connections; negative disables keep-alives, zero means Go's default.
// Default [DefaultKeepAlive].
func WithKeepAlive(d time.Duration) TCPOption {
	return tcpOption(func(t *TCP) { t.keepAlive = d })
}

// WithTLS wraps connections in TLS: server, if not nil, configures the
// listeners (it needs a certificate); client, if not nil, configures dials
// (ServerName defaults to the dialled host; set RootCAs for a private CA).
// The configurations must not be modified after use.
func WithTLS(server, client *tls.Config) TCPOption {
	return tcpOption(func(t *TCP) { t.serverTLS, t.clientTLS = server, client })
}

// NewTCP returns a TCP transport.
func NewTCP(opts ...TCPOption) *TCP {
	t := &TCP{dialTimeout: DefaultDialTimeout, keepAlive: DefaultKeepAlive}
	for _, o := range opts {
		o.apply(t)
	}
	return t
}

// Listen listens on the TCP address addr ("host:port"; port 0 picks a
// free one). Accepted connections have keep-alives as configured, and are
// [*TLSConn] server connections, handshaking on first use, if a server TLS
// configuration was given. If the address is taken the error wraps
// [ErrAddrInUse].
func (t *TCP) Listen(addr string) (net.Listener, error) {
	lc := net.ListenConfig{KeepAlive: t.keepAlive}
	l, err := lc.Listen(context.Background(), "tcp", addr)
	if err != nil {
		if errors.Is(err, syscall.EADDRINUSE) {
			return nil, fmt.Errorf("%w: %w", ErrAddrInUse, err)
		}
		return nil, err
	}
	if t.serverTLS != nil {
		l = &tlsListener{Listener: l, config: t.serverTLS}
	}
	return l, nil
}

// tlsListener is [tls.NewListener]'s listener, but its connections are
// [*TLSConn]s.
type tlsListener struct {
	net.Listener
	config *tls.Config
}

func (l *tlsListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &TLSConn{tls.Server(c, l.config)}, nil
}

// Dial connects to the TCP address addr. If a client TLS configuration
// was given, it completes the TLS handshake and returns a [*TLSConn]. It
// gives up when ctx is done or the dial timeout passes. If nothing listens
// at addr the error wraps [ErrConnRefused].
func (t *TCP) Dial(ctx context.Context, addr string) (net.Conn, error) {
	d := &net.Dialer{Timeout: max(t.dialTimeout, 0), KeepAlive: t.keepAlive}
	var (
		c   net.Conn
		err error
	)
	if t.clientTLS != nil {
		td := &tls.Dialer{NetDialer: d, Config: t.clientTLS}
		c, err = td.DialContext(ctx, "tcp", addr)
		if err == nil {
			return &TLSConn{c.(*tls.Conn)}, nil
		}
	} else {
		c, err = d.DialContext(ctx, "tcp", addr)
	}
	if err == nil {
		return c, nil
	}
	if errors.Is(err, syscall.ECONNREFUSED) {
		return nil, fmt.Errorf("%w: %w", ErrConnRefused, err)
	}
	if _, ok := err.(*net.OpError); !ok { // a TLS handshake error
		return nil, fmt.Errorf("transport: dial tls %s: %w", addr, err)
	}
	return nil, err
}

// TLSConn is a TLS connection made by [TCP]: a [tls.Conn], with all its
// methods (ConnectionState, HandshakeContext, NetConn...), but whose Close
// does not send a close_notify alert. Like any [net.Conn] it is safe for
// concurrent use.
type TLSConn struct {
	*tls.Conn
}

var _ net.Conn = (*TLSConn)(nil)

// Close closes the TCP connection at once, without the TLS close_notify
// alert. Closing twice returns an error wrapping [net.ErrClosed].
//
// Why: crypto/tls's Close sends close_notify first, and if the peer has
// stopped reading and the socket buffers are full, that write blocks for
// up to 5 s. A write deadline set beforehand does not help, because
// crypto/tls replaces it with its own 5 s one for the alert. Connections
// are closed to end them, often from a [context.AfterFunc] or while
// shutting down, and that must not hang on a stuck peer.
//
// Without the alert, the peer reads [io.EOF] (if the connection was closed
// between TLS records) as over plain TCP, and cannot tell a clean end from
// a truncation by an attacker, so a protocol must frame its messages to
// notice one cut short. To send close_notify anyway, call CloseWrite
// (which may block for up to 5 s) before Close.
func (c *TLSConn) Close() error {
	return c.NetConn().Close()
}
