package transport

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"sync"
	"time"
)

// inmemBufferSize is how many bytes one direction of an Inmem connection
// holds before Write blocks, like a socket buffer.
const inmemBufferSize = 1 << 20

// acceptQueue is how many dialled connections wait for Accept before Dial
// blocks.
const acceptQueue = 128

// Direction names one direction of the connections of a listener, for
// [Inmem.Stall].
type Direction int

const (
	// ToListener is the bytes written by the dialling side (a replica
	// writing to its primary).
	ToListener Direction = iota
	// ToDialer is the bytes written by the accepting side (a primary
	// writing to a replica).
	ToDialer
)

// Inmem is an in-process network: a [Transport] whose addresses are any
// non-empty strings. Connections are buffered pipes with full [net.Conn]
// semantics, deadlines included. It blocks only on channels and timers, so
// it works inside testing/synctest bubbles; it starts no goroutines.
//
// Its fault-injection methods ([Inmem.Cut], [Inmem.Refuse],
// [Inmem.Stall]) act on every connection accepted by a listener address.
// All methods are safe for concurrent use.
type Inmem struct {
	mu        sync.Mutex
	listeners map[string]*inmemListener
	refused   map[string]bool
	stalls    map[string][2]bool
	conns     map[string]map[*pipePair]struct{} // by listener address
	dials     int
}

var _ Transport = (*Inmem)(nil)

// NewInmem returns an empty in-process network.
func NewInmem() *Inmem {
	return &Inmem{
		listeners: make(map[string]*inmemListener),
		refused:   make(map[string]bool),
		stalls:    make(map[string][2]bool),
		conns:     make(map[string]map[*pipePair]struct{}),
	}
}

// Listen returns a listener for addr. It fails with [ErrAddrInUse] if addr
// already has one.
func (n *Inmem) Listen(addr string) (net.Listener, error) {
	if addr == "" {
		return nil, &net.OpError{Op: "listen", Net: "inmem", Err: fmt.Errorf("empty address")}
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if _, ok := n.listeners[addr]; ok {
		return nil, &net.OpError{Op: "listen", Net: "inmem", Addr: inmemAddr(addr), Err: ErrAddrInUse}
	}
	l := &inmemListener{
		n:      n,
		addr:   addr,
		queue:  make(chan *inmemConn, acceptQueue),
		closed: make(chan struct{}),
	}
	n.listeners[addr] = l
	return l, nil
}

// Dial connects to the listener at addr. It fails with [ErrConnRefused]
// when there is none or dials to addr are refused, and with ctx's error if
// ctx ends while the accept queue is full.
func (n *Inmem) Dial(ctx context.Context, addr string) (net.Conn, error) {
	refused := func() error {
		return &net.OpError{Op: "dial", Net: "inmem", Addr: inmemAddr(addr), Err: ErrConnRefused}
	}
	if err := ctx.Err(); err != nil {
		return nil, &net.OpError{Op: "dial", Net: "inmem", Addr: inmemAddr(addr), Err: err}
	}
	n.mu.Lock()
	l := n.listeners[addr]
	if l == nil || n.refused[addr] {
		n.mu.Unlock()
		return nil, refused()
	}
	n.dials++
	pair := newPipePair(n.stalls[addr])
	client := &inmemConn{rd: pair.toDialer, wr: pair.toListener, local: inmemAddr(addr + "#" + strconv.Itoa(n.dials)), remote: inmemAddr(addr)}
	server := &inmemConn{rd: pair.toListener, wr: pair.toDialer, local: inmemAddr(addr), remote: client.local}
	client.init(pair)
	server.init(pair)
	if n.conns[addr] == nil {
		n.conns[addr] = make(map[*pipePair]struct{})
	}
	n.conns[addr][pair] = struct{}{}
	pair.forget = func() {
		n.mu.Lock()
		delete(n.conns[addr], pair)
		n.mu.Unlock()
	}
	n.mu.Unlock()

	select {
	case l.queue <- server:
		return client, nil
	case <-l.closed:
	case <-ctx.Done():
	}
	client.Close()
	server.Close()
	if err := ctx.Err(); err != nil {
		return nil, &net.OpError{Op: "dial", Net: "inmem", Addr: inmemAddr(addr), Err: err}
	}
	return nil, refused()
}

// Cut breaks every open connection accepted on listener addr, as a network
// failure would: buffered bytes are lost and both ends' reads and writes
// fail with [ErrConnReset]. The listener stays open. It returns how many
// connections it cut.
func (n *Inmem) Cut(addr string) int {
	n.mu.Lock()
	pairs := make([]*pipePair, 0, len(n.conns[addr]))
	for p := range n.conns[addr] {
		pairs = append(pairs, p)
	}
	n.mu.Unlock()
	for _, p := range pairs {
		p.toListener.fail(ErrConnReset)
		p.toDialer.fail(ErrConnReset)
	}
	return len(pairs)
}

// Refuse makes dials to addr fail with [ErrConnRefused] while refuse is
// true. Open connections are not affected.
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
// of listener addr, open now or opened later, while stall is true: the
// reader sees nothing, and writers go on until the buffer is full, then
// block, like TCP towards a peer that stopped reading. Releasing delivers
// the held bytes in order.
func (n *Inmem) Stall(addr string, dir Direction, stall bool) {
	n.mu.Lock()
	s := n.stalls[addr]
	s[dir] = stall
	n.stalls[addr] = s
	pairs := make([]*pipePair, 0, len(n.conns[addr]))
	for p := range n.conns[addr] {
		pairs = append(pairs, p)
	}
	n.mu.Unlock()
	for _, p := range pairs {
		p.dir(dir).setStalled(stall)
	}
}

type inmemAddr string

func (a inmemAddr) Network() string { return "inmem" }
func (a inmemAddr) String() string  { return string(a) }

type inmemListener struct {
	n      *Inmem
	addr   string
	queue  chan *inmemConn
	closed chan struct{}
	once   sync.Once
}

// Accept waits for the next connection. After Close it returns an error
// wrapping [net.ErrClosed].
func (l *inmemListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.queue:
		return c, nil
	case <-l.closed:
		return nil, &net.OpError{Op: "accept", Net: "inmem", Addr: inmemAddr(l.addr), Err: net.ErrClosed}
	}
}

// Close stops accepting: the address is free again, dials are refused, and
// connections dialled but not yet accepted are closed. Accepted
// connections stay open.
func (l *inmemListener) Close() error {
	l.once.Do(func() {
		l.n.mu.Lock()
		if l.n.listeners[l.addr] == l {
			delete(l.n.listeners, l.addr)
		}
		close(l.closed)
		l.n.mu.Unlock()
		for {
			select {
			case c := <-l.queue:
				c.Close()
			default:
				return
			}
		}
	})
	return nil
}

func (l *inmemListener) Addr() net.Addr { return inmemAddr(l.addr) }

// pipePair is the two directions of one connection.
type pipePair struct {
	toListener *pipe
	toDialer   *pipe
	forget     func() // unregisters the pair from its network
	once       sync.Once
}

func newPipePair(stalls [2]bool) *pipePair {
	p := &pipePair{toListener: &pipe{}, toDialer: &pipe{}}
	p.toListener.stalled = stalls[ToListener]
	p.toDialer.stalled = stalls[ToDialer]
	return p
}

func (p *pipePair) dir(d Direction) *pipe {
	if d == ToListener {
		return p.toListener
	}
	return p.toDialer
}

// pipe is one direction of a connection: a bounded byte buffer with a
// broadcast channel that is closed (and replaced) whenever its state
// changes, so blocked readers and writers can select on it together with
// their deadline and their own close.
type pipe struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	stalled bool
	rclosed bool  // the reading end closed: writes fail
	wclosed bool  // the writing end closed: reads see EOF once drained
	err     error // the pipe broke (Cut): both ends fail
	changed chan struct{}
}

// wait returns a channel closed at the next state change. Call with mu held.
func (p *pipe) wait() <-chan struct{} {
	if p.changed == nil {
		p.changed = make(chan struct{})
	}
	return p.changed
}

// notify wakes the waiters. Call with mu held.
func (p *pipe) notify() {
	if p.changed != nil {
		close(p.changed)
		p.changed = nil
	}
}

func (p *pipe) fail(err error) {
	p.mu.Lock()
	if p.err == nil {
		p.err = err
		p.buf.Reset()
	}
	p.notify()
	p.mu.Unlock()
}

func (p *pipe) setStalled(s bool) {
	p.mu.Lock()
	p.stalled = s
	p.notify()
	p.mu.Unlock()
}

// inmemConn is one end of a connection.
type inmemConn struct {
	rd, wr        *pipe
	local, remote inmemAddr
	readDL        deadline
	writeDL       deadline
	closed        chan struct{}
	closeOnce     sync.Once
	pair          *pipePair
}

func (c *inmemConn) init(pair *pipePair) {
	c.pair = pair
	c.closed = make(chan struct{})
	c.readDL.init()
	c.writeDL.init()
}

func (c *inmemConn) opError(op string, err error) error {
	return &net.OpError{Op: op, Net: "inmem", Source: c.local, Addr: c.remote, Err: err}
}

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// Read reads what is buffered, waiting for at least one byte. It returns
// io.EOF once the peer closed and the buffer is drained.
func (c *inmemConn) Read(b []byte) (int, error) {
	p := c.rd
	for {
		p.mu.Lock()
		switch {
		case isClosed(c.closed):
			p.mu.Unlock()
			return 0, c.opError("read", net.ErrClosed)
		case p.err != nil:
			err := p.err
			p.mu.Unlock()
			return 0, c.opError("read", err)
		case p.buf.Len() > 0 && !p.stalled:
			if len(b) == 0 {
				p.mu.Unlock()
				return 0, nil
			}
			n, _ := p.buf.Read(b)
			p.notify()
			p.mu.Unlock()
			return n, nil
		case p.wclosed && p.buf.Len() == 0:
			p.mu.Unlock()
			return 0, io.EOF
		case isClosed(c.readDL.wait()):
			p.mu.Unlock()
			return 0, c.opError("read", os.ErrDeadlineExceeded)
		case len(b) == 0:
			p.mu.Unlock()
			return 0, nil
		}
		changed := p.wait()
		p.mu.Unlock()
		select {
		case <-changed:
		case <-c.readDL.wait():
		case <-c.closed:
		}
	}
}

// Write buffers b, waiting while the buffer is full. It fails once the
// peer has closed.
func (c *inmemConn) Write(b []byte) (int, error) {
	p := c.wr
	n := 0
	for {
		p.mu.Lock()
		switch {
		case isClosed(c.closed):
			p.mu.Unlock()
			return n, c.opError("write", net.ErrClosed)
		case p.err != nil:
			err := p.err
			p.mu.Unlock()
			return n, c.opError("write", err)
		case p.rclosed:
			p.mu.Unlock()
			return n, c.opError("write", io.ErrClosedPipe)
		case isClosed(c.writeDL.wait()):
			p.mu.Unlock()
			return n, c.opError("write", os.ErrDeadlineExceeded)
		case len(b) == 0:
			p.mu.Unlock()
			return n, nil
		}
		if room := inmemBufferSize - p.buf.Len(); room > 0 {
			k := min(room, len(b))
			p.buf.Write(b[:k])
			b = b[k:]
			n += k
			p.notify()
			p.mu.Unlock()
			continue
		}
		changed := p.wait()
		p.mu.Unlock()
		select {
		case <-changed:
		case <-c.writeDL.wait():
		case <-c.closed:
		}
	}
}

// Close closes this end: its pending and later reads and writes fail with
// net.ErrClosed, the peer reads what was already written and then io.EOF,
// and the peer's writes fail.
func (c *inmemConn) Close() error {
	c.closeOnce.Do(func() {
		close(c.closed)
		c.rd.mu.Lock()
		c.rd.rclosed = true
		c.rd.notify()
		c.rd.mu.Unlock()
		c.wr.mu.Lock()
		c.wr.wclosed = true
		c.wr.notify()
		c.wr.mu.Unlock()
		c.readDL.set(time.Time{})
		c.writeDL.set(time.Time{})
		if c.pair != nil && c.pair.forget != nil {
			c.pair.once.Do(c.pair.forget)
		}
	})
	return nil
}

func (c *inmemConn) LocalAddr() net.Addr  { return c.local }
func (c *inmemConn) RemoteAddr() net.Addr { return c.remote }

func (c *inmemConn) SetDeadline(t time.Time) error {
	c.readDL.set(t)
	c.writeDL.set(t)
	return nil
}

func (c *inmemConn) SetReadDeadline(t time.Time) error  { c.readDL.set(t); return nil }
func (c *inmemConn) SetWriteDeadline(t time.Time) error { c.writeDL.set(t); return nil }

// deadline is a settable point in time exposed as a channel that is closed
// when it passes.
type deadline struct {
	mu      sync.Mutex
	timer   *time.Timer
	expired chan struct{}
}

func (d *deadline) init() { d.expired = make(chan struct{}) }

func (d *deadline) set(t time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.timer != nil && !d.timer.Stop() {
		// The timer fired: its function has closed expired, or is about
		// to (it waits for mu). A fresh channel is needed either way.
		d.expired = make(chan struct{})
	}
	d.timer = nil
	if isClosed(d.expired) {
		d.expired = make(chan struct{})
	}
	if t.IsZero() {
		return
	}
	dur := time.Until(t)
	if dur <= 0 {
		close(d.expired)
		return
	}
	ch := d.expired
	var timer *time.Timer
	timer = time.AfterFunc(dur, func() {
		d.mu.Lock()
		defer d.mu.Unlock()
		if d.timer == timer { // not replaced since
			close(ch)
		}
	})
	d.timer = timer
}

func (d *deadline) wait() <-chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.expired
}
