package transport

import (
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"time"
)

// signal is a broadcast condition that can be waited on in a select. The
// caller guards it with its own mutex. Waiters take a channel with wait,
// release the mutex, and block on the channel (and whatever else they
// select on); broadcast closes the channel. Waiters always re-check their
// condition after waking.
//
// The channel is created by the first waiter, so a goroutine in a
// testing/synctest bubble blocks on a channel of its own bubble and is
// durably blocked.
type signal struct {
	ch chan struct{}
}

// wait returns a channel closed by the next broadcast.
func (s *signal) wait() <-chan struct{} {
	if s.ch == nil {
		s.ch = make(chan struct{})
	}
	return s.ch
}

// broadcast wakes every waiter.
func (s *signal) broadcast() {
	if s.ch != nil {
		close(s.ch)
		s.ch = nil
	}
}

// isClosed reports whether ch is closed, without blocking.
func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// pipe is one direction of an Inmem connection: a bounded byte buffer and
// the state of its two ends. Its mutex is only held briefly; blocked
// readers and writers wait on its signal.
type pipe struct {
	mu      sync.Mutex
	buf     ring
	stalled bool  // bytes are held back from the reader
	rclosed bool  // the reading end is closed: writes fail
	wclosed bool  // the writing end is closed: reads see io.EOF once drained
	err     error // the pipe is broken (Cut): both ends fail with err
	change  signal
}

func (p *pipe) setStalled(stalled bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.stalled = stalled
	p.change.broadcast()
}

// fail breaks the pipe: buffered bytes are dropped, and both ends' later
// operations fail with err.
func (p *pipe) fail(err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.err == nil {
		p.err = err
		p.buf.reset()
	}
	p.change.broadcast()
}

// closeRead closes the reading end. Nobody will read what is buffered.
func (p *pipe) closeRead() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.rclosed = true
	p.buf.reset()
	p.change.broadcast()
}

// closeWrite closes the writing end.
func (p *pipe) closeWrite() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.wclosed = true
	p.change.broadcast()
}

// ring is a FIFO byte buffer that grows up to inmemBufferSize.
type ring struct {
	b    []byte
	r, n int // read index, bytes buffered
}

// write appends as much of p as fits under inmemBufferSize, returning how
// much.
func (q *ring) write(p []byte) int {
	k := min(inmemBufferSize-q.n, len(p))
	if k == 0 {
		return 0
	}
	if q.n+k > len(q.b) {
		q.grow(q.n + k)
	}
	w := (q.r + q.n) % len(q.b)
	c := copy(q.b[w:], p[:k])
	copy(q.b, p[c:k])
	q.n += k
	return k
}

// read moves up to len(p) bytes into p, returning how many.
func (q *ring) read(p []byte) int {
	k := min(q.n, len(p))
	if k == 0 {
		return 0
	}
	c := copy(p[:k], q.b[q.r:])
	copy(p[c:k], q.b)
	q.r = (q.r + k) % len(q.b)
	q.n -= k
	if q.n == 0 {
		q.r = 0
	}
	return k
}

// grow makes room for need bytes, need <= inmemBufferSize.
func (q *ring) grow(need int) {
	size := min(max(2*len(q.b), need, 4<<10), inmemBufferSize)
	b := make([]byte, size)
	c := copy(b[:q.n], q.b[q.r:])
	copy(b[c:q.n], q.b)
	q.b, q.r = b, 0
}

func (q *ring) reset() { *q = ring{} }

// inmemConn is one end of an Inmem connection.
type inmemConn struct {
	pair          *inmemPair
	rd, wr        *pipe // the pipes it reads from and writes to
	local, remote inmemAddr
	readDL        deadline
	writeDL       deadline
	writing       chan struct{} // holds a token during a Write, so Writes do not interleave
	closed        chan struct{} // closed by Close
	closeOnce     sync.Once
}

var _ net.Conn = (*inmemConn)(nil)

func newInmemConn(pair *inmemPair, rd, wr *pipe, local, remote inmemAddr) *inmemConn {
	return &inmemConn{
		pair:    pair,
		rd:      rd,
		wr:      wr,
		local:   local,
		remote:  remote,
		readDL:  newDeadline(),
		writeDL: newDeadline(),
		writing: make(chan struct{}, 1),
		closed:  make(chan struct{}),
	}
}

func (c *inmemConn) opError(op string, err error) error {
	return &net.OpError{Op: op, Net: "inmem", Source: c.local, Addr: c.remote, Err: err}
}

// Read reads what is buffered, waiting for at least one byte. It returns
// io.EOF once the peer has closed and everything it wrote has been read.
func (c *inmemConn) Read(b []byte) (int, error) {
	p := c.rd
	p.mu.Lock()
	for {
		var err error
		switch {
		case p.rclosed:
			err = net.ErrClosed
		case p.err != nil:
			err = p.err
		case len(b) == 0:
			p.mu.Unlock()
			return 0, nil
		case c.readDL.expired():
			err = os.ErrDeadlineExceeded
		case !p.stalled && p.buf.n > 0:
			n := p.buf.read(b)
			p.change.broadcast()
			p.mu.Unlock()
			return n, nil
		case !p.stalled && p.wclosed:
			p.mu.Unlock()
			return 0, io.EOF
		}
		if err != nil {
			p.mu.Unlock()
			return 0, c.opError("read", err)
		}
		wake := p.change.wait()
		p.mu.Unlock()
		select {
		case <-wake:
		case <-c.readDL.done():
		}
		p.mu.Lock()
	}
}

// Write buffers all of b, waiting while the buffer is full. It fails once
// the peer has closed. Concurrent Writes do not interleave their bytes.
func (c *inmemConn) Write(b []byte) (int, error) {
	if err := c.lockWrite(); err != nil {
		return 0, c.opError("write", err)
	}
	defer func() { <-c.writing }()

	p := c.wr
	n := 0
	p.mu.Lock()
	for {
		var err error
		switch {
		case p.wclosed:
			err = net.ErrClosed
		case p.err != nil:
			err = p.err
		case p.rclosed:
			err = syscall.EPIPE
		case c.writeDL.expired():
			err = os.ErrDeadlineExceeded
		case len(b) == 0:
			p.mu.Unlock()
			return n, nil
		}
		if err != nil {
			p.mu.Unlock()
			return n, c.opError("write", err)
		}
		if k := p.buf.write(b); k > 0 {
			n += k
			b = b[k:]
			p.change.broadcast()
			continue
		}
		wake := p.change.wait()
		p.mu.Unlock()
		select {
		case <-wake:
		case <-c.writeDL.done():
		}
		p.mu.Lock()
	}
}

// lockWrite waits for the other Writes in progress to finish, unless the
// connection closes or the write deadline passes first.
func (c *inmemConn) lockWrite() error {
	for {
		select {
		case c.writing <- struct{}{}:
			return nil
		default:
		}
		if isClosed(c.closed) {
			return net.ErrClosed
		}
		if c.writeDL.expired() {
			return os.ErrDeadlineExceeded
		}
		select {
		case c.writing <- struct{}{}:
			return nil
		case <-c.closed:
		case <-c.writeDL.done():
		}
	}
}

// Close closes this end: its pending and later operations fail with
// net.ErrClosed; the peer reads what was already written, then io.EOF,
// and its writes fail. Closing twice returns an error.
func (c *inmemConn) Close() error {
	first := false
	c.closeOnce.Do(func() { first = true })
	if !first {
		return c.opError("close", net.ErrClosed)
	}
	close(c.closed)
	c.rd.closeRead()
	c.wr.closeWrite()
	c.readDL.stop()
	c.writeDL.stop()
	c.pair.endClosed()
	return nil
}

// LocalAddr returns this end's address.
func (c *inmemConn) LocalAddr() net.Addr { return c.local }

// RemoteAddr returns the peer's address.
func (c *inmemConn) RemoteAddr() net.Addr { return c.remote }

// SetDeadline sets the read and write deadlines.
func (c *inmemConn) SetDeadline(t time.Time) error {
	if isClosed(c.closed) {
		return c.opError("set", net.ErrClosed)
	}
	c.readDL.set(t)
	c.writeDL.set(t)
	return nil
}

// SetReadDeadline sets the read deadline.
func (c *inmemConn) SetReadDeadline(t time.Time) error {
	if isClosed(c.closed) {
		return c.opError("set", net.ErrClosed)
	}
	c.readDL.set(t)
	return nil
}

// SetWriteDeadline sets the write deadline.
func (c *inmemConn) SetWriteDeadline(t time.Time) error {
	if isClosed(c.closed) {
		return c.opError("set", net.ErrClosed)
	}
	c.writeDL.set(t)
	return nil
}

// deadline is a settable point in time, exposed as a channel closed once
// it has passed. A timer (time.AfterFunc, no goroutine until it fires)
// closes the channel, so deadlines follow a synctest bubble's clock.
type deadline struct {
	mu    sync.Mutex
	timer *time.Timer
	ch    chan struct{} // closed once the current deadline has passed
}

func newDeadline() deadline { return deadline{ch: make(chan struct{})} }

// done returns a channel that is closed when the deadline passes, or when
// the deadline is changed: a waiter that wakes must check expired.
func (d *deadline) done() <-chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.ch
}

// expired reports whether the deadline has passed.
func (d *deadline) expired() bool { return isClosed(d.done()) }

// set sets the deadline to t; the zero t means none.
func (d *deadline) set(t time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.stopLocked()
	// Wake the waiters on the old deadline so they look at the new one.
	if !isClosed(d.ch) {
		close(d.ch)
	}
	d.ch = make(chan struct{})
	if t.IsZero() {
		return
	}
	dur := time.Until(t)
	if dur <= 0 {
		close(d.ch)
		return
	}
	ch := d.ch
	var timer *time.Timer
	timer = time.AfterFunc(dur, func() {
		d.mu.Lock()
		defer d.mu.Unlock()
		if d.timer == timer { // not stopped or replaced since
			close(ch)
			d.timer = nil
		}
	})
	d.timer = timer
}

// stop stops the timer, if any; the deadline no longer passes.
func (d *deadline) stop() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.stopLocked()
}

func (d *deadline) stopLocked() {
	if d.timer != nil {
		d.timer.Stop()
		d.timer = nil
	}
}
