package replmap

import (
	"context"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/replmap/replmap/transport"
)

// Directions through a faultProxy.
const (
	up   = 0 // replica to primary
	down = 1 // primary to replica
)

// faultProxy forwards every connection made to its address to a backend
// address, over any transport, and injects the faults a test switches on:
// cut connections, refused dials, a stalled or delayed direction, and bit
// flips. It works the same over Inmem and TCP, so one fault suite runs on
// both.
type faultProxy struct {
	tr      transport.Transport
	backend string
	l       net.Listener

	mu      sync.Mutex
	changed *sync.Cond // a stall was lifted, or a pair or the proxy closed
	rng     *rand.Rand // where bit flips land
	refuse  bool
	stall   [2]bool
	delay   [2]time.Duration
	flips   [2]int  // bit flips pending, per direction
	cuts    [2]bool // truncations pending, per direction
	pairs   map[*proxyPair]struct{}
	closed  bool
	wg      sync.WaitGroup

	flipped   atomic.Int64 // bits actually flipped
	truncated atomic.Int64 // connections actually truncated
}

// proxyPair is one proxied connection: the dialler's end and the backend's.
type proxyPair struct {
	conns  [2]net.Conn // [up] reads from the replica, [down] from the primary
	closed bool        // guarded by the proxy's mu
}

func newFaultProxy(tr transport.Transport, listenAddr, backend string, seed uint64) (*faultProxy, error) {
	l, err := tr.Listen(listenAddr)
	if err != nil {
		return nil, err
	}
	p := &faultProxy{
		tr:      tr,
		backend: backend,
		l:       l,
		rng:     rand.New(rand.NewPCG(seed, 0x9e3779b97f4a7c15)),
		pairs:   make(map[*proxyPair]struct{}),
	}
	p.changed = sync.NewCond(&p.mu)
	p.wg.Go(p.accept)
	return p, nil
}

// Addr is the address replicas dial.
func (p *faultProxy) Addr() string { return p.l.Addr().String() }

func (p *faultProxy) accept() {
	for {
		c, err := p.l.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		refuse, closed := p.refuse, p.closed
		p.mu.Unlock()
		if refuse || closed {
			c.Close()
			continue
		}
		p.wg.Go(func() { p.connect(c) })
	}
}

func (p *faultProxy) connect(c net.Conn) {
	b, err := p.tr.Dial(context.Background(), p.backend)
	if err != nil {
		c.Close()
		return
	}
	pair := &proxyPair{conns: [2]net.Conn{c, b}}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		c.Close()
		b.Close()
		return
	}
	p.pairs[pair] = struct{}{}
	p.mu.Unlock()
	var wg sync.WaitGroup
	wg.Go(func() { p.pipe(pair, up) })
	p.pipe(pair, down)
	wg.Wait()
	p.mu.Lock()
	delete(p.pairs, pair)
	p.mu.Unlock()
}

// pipe copies one direction of a pair until either end fails, then closes
// the pair, so that a fault in one direction is seen in both.
func (p *faultProxy) pipe(pair *proxyPair, dir int) {
	defer p.closePair(pair)
	src, dst := pair.conns[dir], pair.conns[1-dir]
	buf := make([]byte, 16<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			delay, keep, ok := p.pass(pair, dir, buf[:n])
			if !ok {
				return
			}
			if delay > 0 {
				time.Sleep(delay) // the fault being injected: late delivery
			}
			if _, err := dst.Write(buf[:keep]); err != nil || keep < n {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// pass holds b while dir is stalled, then applies the pending faults to
// it: it flips a bit in place, and returns the delivery delay and how many
// bytes to deliver before closing the pair (len(b) to go on); false if the
// pair closed meanwhile.
func (p *faultProxy) pass(pair *proxyPair, dir int, b []byte) (delay time.Duration, keep int, ok bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for p.stall[dir] && !pair.closed {
		p.changed.Wait()
	}
	if pair.closed {
		return 0, 0, false
	}
	if p.flips[dir] > 0 {
		p.flips[dir]--
		b[p.rng.IntN(len(b))] ^= 1 << p.rng.IntN(8)
		p.flipped.Add(1)
	}
	keep = len(b)
	if p.cuts[dir] {
		p.cuts[dir] = false
		keep = p.rng.IntN(len(b))
		p.truncated.Add(1)
	}
	return p.delay[dir], keep, true
}

func (p *faultProxy) closePair(pair *proxyPair) {
	p.mu.Lock()
	pair.closed = true
	p.changed.Broadcast()
	p.mu.Unlock()
	pair.conns[up].Close()
	pair.conns[down].Close()
}

// Cut closes every open connection.
func (p *faultProxy) Cut() {
	p.mu.Lock()
	pairs := make([]*proxyPair, 0, len(p.pairs))
	for pair := range p.pairs {
		pairs = append(pairs, pair)
	}
	p.mu.Unlock()
	for _, pair := range pairs {
		p.closePair(pair)
	}
}

// Refuse makes new connections close at once while on is true.
func (p *faultProxy) Refuse(on bool) {
	p.mu.Lock()
	p.refuse = on
	p.mu.Unlock()
}

// Stall holds back the bytes flowing in dir while on is true.
func (p *faultProxy) Stall(dir int, on bool) {
	p.mu.Lock()
	p.stall[dir] = on
	p.changed.Broadcast()
	p.mu.Unlock()
}

// Delay makes every read in dir wait d before it is delivered.
func (p *faultProxy) Delay(dir int, d time.Duration) {
	p.mu.Lock()
	p.delay[dir] = d
	p.mu.Unlock()
}

// Flip flips one bit, at a random position, of the next bytes to pass in
// dir.
func (p *faultProxy) Flip(dir int) {
	p.mu.Lock()
	p.flips[dir]++
	p.mu.Unlock()
}

// Truncate delivers a random prefix of the next bytes to pass in dir,
// then closes the connection: it ends mid-frame, most of the time.
func (p *faultProxy) Truncate(dir int) {
	p.mu.Lock()
	p.cuts[dir] = true
	p.mu.Unlock()
}

// Heal lifts every fault: no refusals, stalls, delays or pending flips.
func (p *faultProxy) Heal() {
	p.mu.Lock()
	p.refuse = false
	p.stall = [2]bool{}
	p.delay = [2]time.Duration{}
	p.flips = [2]int{}
	p.cuts = [2]bool{}
	p.changed.Broadcast()
	p.mu.Unlock()
}

// Close stops the proxy and waits for its goroutines.
func (p *faultProxy) Close() {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	p.l.Close()
	p.Cut()
	p.wg.Wait()
}
