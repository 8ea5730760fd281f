package transport

import (
	"context"
	"crypto/tls"
	"net"
	"time"
)

// Defaults for [TCP].
const (
	DefaultDialTimeout = 5 * time.Second  // how long Dial may take at most
	DefaultKeepAlive   = 15 * time.Second // TCP keep-alive period
)

// TCP is a [Transport] over TCP, optionally with TLS. Its zero value is not
// usable: make one with [NewTCP]. It is safe for concurrent use.
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
// connections; negative disables keep-alives. Default [DefaultKeepAlive].
func WithKeepAlive(d time.Duration) TCPOption {
	return tcpOption(func(t *TCP) { t.keepAlive = d })
}

// WithTLS wraps connections in TLS: server, if not nil, configures the
// listeners (it needs a certificate); client, if not nil, configures dials
// (set ServerName, or RootCAs for a private CA).
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

// Listen listens on the TCP address addr ("host:port"; port 0 picks one).
func (t *TCP) Listen(addr string) (net.Listener, error) {
	lc := net.ListenConfig{KeepAlive: t.keepAlive}
	l, err := lc.Listen(context.Background(), "tcp", addr)
	if err != nil {
		return nil, err
	}
	if t.serverTLS != nil {
		l = tls.NewListener(l, t.serverTLS)
	}
	return l, nil
}

// Dial connects to the TCP address addr, completing the TLS handshake when
// TLS is configured.
func (t *TCP) Dial(ctx context.Context, addr string) (net.Conn, error) {
	d := &net.Dialer{Timeout: t.dialTimeout, KeepAlive: t.keepAlive}
	if t.clientTLS != nil {
		td := &tls.Dialer{NetDialer: d, Config: t.clientTLS}
		return td.DialContext(ctx, "tcp", addr)
	}
	return d.DialContext(ctx, "tcp", addr)
}
