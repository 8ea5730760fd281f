package transport

import (
	"context"
	"errors"
	"net"
)

// Transport makes byte-stream connections between a primary and its replicas.
type Transport interface {
	// Listen returns a listener accepting connections on addr.
	Listen(addr string) (net.Listener, error)
	// Dial connects to the listener at addr. It honours ctx until the
	// connection is established.
	Dial(ctx context.Context, addr string) (net.Conn, error)
}

// Errors returned by the transports, wrapped with the operation and the
// addresses involved; test for them with [errors.Is].
var (
	// ErrConnRefused means nothing accepts connections at the address: no
	// listener, a closed one, or dials refused by [Inmem.Refuse]. [TCP]
	// wraps it around the system's "connection refused" error too.
	ErrConnRefused = errors.New("transport: connection refused")

	// ErrAddrInUse means the address already has a listener. [TCP] wraps
	// it around the system's "address already in use" error too.
	ErrAddrInUse = errors.New("transport: address in use")

	// ErrConnReset means [Inmem.Cut] broke the connection, or its
	// listener closed before accepting it.
	ErrConnReset = errors.New("transport: connection reset")
)
