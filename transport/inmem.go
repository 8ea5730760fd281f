package transport

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
)

const (
	// inmemBufferSize is how many bytes one direction of an Inmem
	// connection holds before Write blocks, like a socket buffer. The
	// buffer grows to it as needed; idle connections hold little memory.
	inmemBufferSize = 1 << 20

	// acceptBacklog is how many dialled connections may wait for Accept
	// before Dial blocks.
	acceptBacklog = 128
)

// Direction names one direction of the connections of a listener, for
// [Inmem.Stall].
type Direction int

const (
	// ToListener is the bytes written by the dialling side (e.g. a replica
	// writing to its primary).
	ToListener Direction = iota
	// ToDialer is the bytes written by the accepting side (e.g. a primary
	// writing to a replica).
	ToDialer
)

// String returns "ToListener" or "ToDialer".
func (d Direction) String() string {
	switch d {
	case ToListener:
		return "ToListener"
	case ToDialer:
		return "ToDialer"
	}
	return "Direction(" + strconv.Itoa(int(d)) + ")"
}

var errEmptyAddr = errors.New("empty address")

// Inmem is an in-process network: a [Transport] whose addresses are any
// non-empty strings. Use [NewInmem] to make one.
//
// Its connections are buffered pipes: each direction holds up to 1 MiB,
// so Write returns as soon as its bytes are buffered and blocks only while
// the buffer is full. They have full [net.Conn] semantics: deadlines
// (timeouts satisfy [os.ErrDeadlineExceeded]), Close unblocking pending
// Reads and Writes on both ends, the peer reading what was written before
// a Close and then [io.EOF] (its Writes fail, wrapping [syscall.EPIPE]),
// and concurrent use; concurrent Writes do not interleave. The dialling
// end's local address is the listener's address followed by "#N".
//
// Inmem blocks only on channels and timers, and starts no goroutines, so
// it works inside a testing/synctest bubble, where an idle Read is durably
// blocked and deadlines follow the bubble's clock. Create the Inmem and use
// its listeners and connections either all inside one bubble or all
// outside bubbles.
//
// Its fault-injection methods ([Inmem.Cut], [Inmem.Refuse],
// [Inmem.Stall]) act on the connections dialled to a listener address.
// All methods are safe for concurrent use.
type Inmem struct {
	mu        sync.Mutex
	listeners map[string]*inmemListener
	refused   map[string]bool
	stalls    map[string][2]bool                 // by address, indexed by Direction
	conns     map[string]map[*inmemPair]struct{} // by listener address; pairs with an end open
	dials     int
}

var _ Transport = (*Inmem)(nil)

// NewInmem returns an in-process network with no listeners.
func NewInmem() *Inmem {
	return &Inmem{
		listeners: make(map[string]*inmemListener),
		refused:   make(map[string]bool),
		stalls:    make(map[string][2]bool),
		conns:     make(map[string]map[*inmemPair]struct{}),
	}
}

// Listen returns a listener for addr, which may be any non-empty string.
// It fails with an error wrapping [ErrAddrInUse] if addr already has an
// open listener.
func (n *Inmem) Listen(addr string) (net.Listener, error) {
	if addr == "" {
		return nil, &net.OpError{Op: "listen", Net: "inmem", Err: errEmptyAddr}
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if _, ok := n.listeners[addr]; ok {
		return nil, &net.OpError{Op: "listen", Net: "inmem", Addr: inmemAddr(addr), Err: ErrAddrInUse}
	}
	l := &inmemListener{n: n, addr: inmemAddr(addr)}
	n.listeners[addr] = l
	return l, nil
}

// Dial connects to the listener at addr. It fails with an error wrapping
// [ErrConnRefused] if addr has no listener or dials to it are refused, and
// with one wrapping ctx's error if ctx is done before the connection is
// queued for Accept. Dial returns without waiting for Accept unless the
// listener already has 128 connections waiting.
func (n *Inmem) Dial(ctx context.Context, addr string) (net.Conn, error) {
	if err := ctx.Err(); err != nil {
		return nil, dialError(addr, err)
	}
	n.mu.Lock()
	l := n.listeners[addr]
	if l == nil || n.refused[addr] {
		n.mu.Unlock()
		return nil, dialError(addr, ErrConnRefused)
	}
	n.dials++
	p := newInmemPair(n, addr, n.dials, n.stalls[addr])
	if n.conns[addr] == nil {
		n.conns[addr] = make(map[*inmemPair]struct{})
	}
	n.conns[addr][p] = struct{}{}
	n.mu.Unlock()

	if err := l.enqueue(ctx, p.server); err != nil {
		p.client.Close()
		p.server.Close()
		return nil, dialError(addr, err)
	}
	return p.client, nil
}

func dialError(addr string, err error) error {
	return &net.OpError{Op: "dial", Net: "inmem", Addr: inmemAddr(addr), Err: err}
}

// Cut breaks every connection dialled to listener addr that has an end
// still open, accepted or still waiting for Accept, as a network failure
// would: the bytes they buffer are lost, and every later Read and Write on
// either end fails with an error wrapping [ErrConnReset]. Each end must
// still be closed by its owner. The listener stays open. Cut returns how
// many connections it broke.
func (n *Inmem) Cut(addr string) int {
	n.mu.Lock()
	pairs := make([]*inmemPair, 0, len(n.conns[addr]))
	for p := range n.conns[addr] {
		pairs = append(pairs, p)
	}
	delete(n.conns, addr) // broken pairs need no more faults
	n.mu.Unlock()
	for _, p := range pairs {
		p.fail(ErrConnReset)
	}
	return len(pairs)
}

// Refuse makes dials to addr fail with [ErrConnRefused] while refuse is
// true, whether or not addr has a listener. Established connections are
// not affected.
func (n *Inmem) Refuse(addr string, refuse bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if refuse {
		n.refused[addr] = true
	} else {
		delete(n.refused, addr)
	}
}

// Stall holds back the bytes flowing in direction dir on every connection
// dialled to listener addr, open now or dialled later, while stall is
// true. The reader sees nothing, not even the end of the stream; writers
// go on until the buffer is full and then block, like TCP towards a peer
// that stopped reading. Calling Stall with stall false delivers the held
// bytes in order, none lost. Deadlines and Close work as usual on a
// stalled connection. Stall panics if dir is not ToListener or ToDialer.
func (n *Inmem) Stall(addr string, dir Direction, stall bool) {
	if dir != ToListener && dir != ToDialer {
		panic(fmt.Sprintf("transport: Stall with invalid %v", dir))
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	s := n.stalls[addr]
	s[dir] = stall
	if s == ([2]bool{}) {
		delete(n.stalls, addr)
	} else {
		n.stalls[addr] = s
	}
	for p := range n.conns[addr] {
		p.pipe(dir).setStalled(stall)
	}
}

// forget stops tracking p for faults. Called when both its ends are closed.
func (n *Inmem) forget(p *inmemPair) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if set := n.conns[p.addr]; set != nil {
		delete(set, p)
		if len(set) == 0 {
			delete(n.conns, p.addr)
		}
	}
}

// unlisten frees l's address.
func (n *Inmem) unlisten(l *inmemListener) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.listeners[string(l.addr)] == l {
		delete(n.listeners, string(l.addr))
	}
}

// inmemAddr is an Inmem address.
type inmemAddr string

func (a inmemAddr) Network() string { return "inmem" }
func (a inmemAddr) String() string  { return string(a) }

// inmemListener is an Inmem listener: a queue of dialled connections.
type inmemListener struct {
	n    *Inmem
	addr inmemAddr

	mu     sync.Mutex
	queue  []*inmemConn // dialled, not yet accepted
	closed bool
	change signal // queue or closed changed
}

// enqueue queues c for Accept, waiting while the queue is full.
func (l *inmemListener) enqueue(ctx context.Context, c *inmemConn) error {
	l.mu.Lock()
	for {
		if l.closed {
			l.mu.Unlock()
			return ErrConnRefused
		}
		if len(l.queue) < acceptBacklog {
			l.queue = append(l.queue, c)
			l.change.broadcast()
			l.mu.Unlock()
			return nil
		}
		wake := l.change.wait()
		l.mu.Unlock()
		select {
		case <-wake:
		case <-ctx.Done():
			return ctx.Err()
		}
		l.mu.Lock()
	}
}

// Accept waits for the next connection. After Close it returns an error
// wrapping [net.ErrClosed].
func (l *inmemListener) Accept() (net.Conn, error) {
	l.mu.Lock()
	for {
		if l.closed {
			l.mu.Unlock()
			return nil, &net.OpError{Op: "accept", Net: "inmem", Addr: l.addr, Err: net.ErrClosed}
		}
		if len(l.queue) > 0 {
			c := l.queue[0]
			l.queue[0] = nil
			l.queue = l.queue[1:]
			l.change.broadcast()
			l.mu.Unlock()
			return c, nil
		}
		wake := l.change.wait()
		l.mu.Unlock()
		<-wake
		l.mu.Lock()
	}
}

// Close stops listening: the address is free again, later dials are
// refused, pending Accepts return, and connections dialled but not yet
// accepted are reset. Accepted connections stay open.
func (l *inmemListener) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return &net.OpError{Op: "close", Net: "inmem", Addr: l.addr, Err: net.ErrClosed}
	}
	l.closed = true
	queued := l.queue
	l.queue = nil
	l.change.broadcast()
	l.mu.Unlock()

	l.n.unlisten(l)
	for _, c := range queued {
		c.pair.fail(ErrConnReset)
		c.Close()
	}
	return nil
}

// Addr returns the listener's address.
func (l *inmemListener) Addr() net.Addr { return l.addr }

// inmemPair is the two ends of one connection and the pipes between them.
type inmemPair struct {
	n                    *Inmem
	addr                 string // the listener's
	toListener, toDialer *pipe
	client, server       *inmemConn

	mu   sync.Mutex
	open int // ends not closed yet
}

func newInmemPair(n *Inmem, addr string, seq int, stalls [2]bool) *inmemPair {
	p := &inmemPair{n: n, addr: addr, toListener: &pipe{}, toDialer: &pipe{}, open: 2}
	p.toListener.stalled = stalls[ToListener]
	p.toDialer.stalled = stalls[ToDialer]
	clientAddr := inmemAddr(addr + "#" + strconv.Itoa(seq))
	p.client = newInmemConn(p, p.toDialer, p.toListener, clientAddr, inmemAddr(addr))
	p.server = newInmemConn(p, p.toListener, p.toDialer, inmemAddr(addr), clientAddr)
	return p
}

// pipe returns the pipe carrying bytes in direction d.
func (p *inmemPair) pipe(d Direction) *pipe {
	if d == ToListener {
		return p.toListener
	}
	return p.toDialer
}

// fail breaks both directions with err.
func (p *inmemPair) fail(err error) {
	p.toListener.fail(err)
	p.toDialer.fail(err)
}

// endClosed records that one end closed; the network forgets the pair
// once both are.
func (p *inmemPair) endClosed() {
	p.mu.Lock()
	p.open--
	last := p.open == 0
	p.mu.Unlock()
	if last {
		p.n.forget(p)
	}
}
