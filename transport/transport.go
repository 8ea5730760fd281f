// Package transport makes the byte-stream connections between a replmap
// primary and its replicas.
//
// [Transport] is the whole contract: a primary listens, a replica dials.
// [TCP] is for real deployments (optionally with TLS). [Inmem] is an
// in-process network for tests and examples: any string is an address, and
// it can inject faults (cut links, refused dials, one direction stalled)
// while keeping full [net.Conn] semantics, deadlines included. Inmem works
// inside testing/synctest bubbles.
//
// This package does not depend on the replmap package: any code that needs
// a pluggable stream network can use it.
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

// Errors returned by the transports, wrapped in a [*net.OpError] that
// names the operation and addresses; test them with [errors.Is].
var (
	// ErrConnRefused means nothing accepts connections at the address:
	// no listener, a closed one, or dials refused by [Inmem.Refuse].
	ErrConnRefused = errors.New("transport: connection refused")

	// ErrAddrInUse means an Inmem address already has a listener.
	ErrAddrInUse = errors.New("transport: address in use")

	// ErrConnReset means [Inmem.Cut] broke the connection.
	ErrConnReset = errors.New("transport: connection reset")
)
