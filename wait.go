package replmap

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"
)

// Wait blocks until every write made before the call has been acknowledged
// by at least n replicas, or timeout passes, and returns how many replicas
// had acknowledged them when it returned. Like Redis's WAIT:
//
//   - it returns the count even when the timeout passes, with a nil error;
//   - timeout 0 blocks until n replicas acknowledge or the Primary closes;
//   - a negative timeout, or n ≤ 0, returns the current count at once;
//   - after Close, and when Close interrupts it, it returns ErrClosed.
//
// It asks lagging replicas for an acknowledgement at once, so it costs a
// round trip, not a heartbeat; concurrent calls share the request. A
// replica is counted only once it has applied the writes, and only up to
// the stream actually sent to it, so a replica that reports a higher
// offset than it was sent is dropped, not counted.
//
// Wait narrows but does not close the window in which a crash of the
// primary loses acknowledged writes: a write for which Wait returned k ≥ 1
// is held by k replicas at that moment, no more.
func (p *Primary[V]) Wait(n int, timeout time.Duration) (int, error) {
	if timeout < 0 {
		n = 0
	}
	ctx := context.Background()
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	k, err := p.WaitContext(ctx, n)
	if errors.Is(err, context.DeadlineExceeded) {
		err = nil
	}
	return k, err
}

// WaitContext is Wait with a context in place of the timeout: it blocks
// until every write made before the call has been acknowledged by at least
// n replicas, or ctx is done. It always returns the count taken when it
// returns; the error is ctx.Err() if ctx ended the wait, ErrClosed if the
// Primary is closed, and nil otherwise. Cancelling leaves nothing behind.
func (p *Primary[V]) WaitContext(ctx context.Context, n int) (int, error) {
	nd := p.n
	target := p.Offset()
	if p.closed() {
		return nd.ackCount(target), ErrClosed
	}
	if n <= 0 {
		return nd.ackCount(target), nil
	}
	return p.waitAcks(ctx, target, n, false)
}

// waitAcks blocks until n replicas have acknowledged target, or ctx is
// done, and returns the count taken when it returns: for WaitContext,
// replicas that applied target; if durable, for WaitDurable, replicas
// that hold it on disk.
func (p *Primary[V]) waitAcks(ctx context.Context, target uint64, n int, durable bool) (int, error) {
	for {
		k, woken, err := p.waitOnce(ctx, target, n, durable)
		if err != nil || k >= n || !woken {
			return k, err
		}
		// Woken with n acknowledgements, but a link was replaced (its
		// replica reconnected) before the recount: wait again rather than
		// return fewer than n with no error.
	}
}

// waitOnce blocks until the waiter for target is woken, or ctx is done;
// it reports the count taken then and whether it was woken. durable is
// as for waitAcks.
func (p *Primary[V]) waitOnce(ctx context.Context, target uint64, n int, durable bool) (int, bool, error) {
	nd := p.n
	list, count := &nd.waits, nd.ackCount
	if durable {
		list, count = &nd.durableWaits, nd.durableCount
	}
	w := list.add(target, n)
	defer list.remove(w)
	if k := count(target); k >= n {
		return k, false, nil
	}
	// Close wakes every listed waiter (see waitList.closeAll), and this
	// one is listed before this check: so no Close is missed, without a
	// select on a channel that every blocked Wait would share.
	if p.closed() {
		return count(target), false, ErrClosed
	}
	nd.requestAcks(target, durable)
	select {
	case <-w.ready: // n acknowledged, or Close
		if nd.testHookWaitWoken != nil {
			nd.testHookWaitWoken()
		}
		k := count(target)
		if k < n && p.closed() {
			return k, true, ErrClosed
		}
		return k, true, nil
	case <-ctx.Done():
		return count(target), false, ctx.Err()
	}
}

// ackCount counts the replicas that acknowledged offset target or later.
func (n *node[V]) ackCount(target uint64) int {
	k := 0
	for _, l := range n.linkList() {
		if off, ok := l.acked(); ok && off >= target {
			k++
		}
	}
	return k
}

// durableCount counts the replicas that hold offset target or later on
// disk.
func (n *node[V]) durableCount(target uint64) int {
	k := 0
	for _, l := range n.linkList() {
		if l.durable.Load() >= target {
			k++
		}
	}
	return k
}

// requestAcks asks every replica that has not acknowledged target yet to
// acknowledge now (see link.requestAck for how requests are shared); if
// durable, to make it durable first and say so.
func (n *node[V]) requestAcks(target uint64, durable bool) {
	for _, l := range n.linkList() {
		if durable {
			l.requestDurableAck(target)
		} else {
			l.requestAck(target)
		}
	}
}

// ackAdvanced wakes the waiters that now have enough acknowledgements.
func (n *node[V]) ackAdvanced() {
	n.waits.notify(n.ackCount)
}

// freshReplicas counts the links that acknowledged within maxLag.
func (n *node[V]) freshReplicas(maxLag time.Duration) int {
	since := time.Now().Add(-maxLag).UnixNano()
	k := 0
	for _, l := range n.linkList() {
		if _, ok := l.acked(); ok && l.lastAck.Load() >= since {
			k++
		}
	}
	return k
}

// waitList holds the blocked Waits, each keyed by the offset it needs.
type waitList struct {
	mu      sync.Mutex
	waiters map[*waiter]struct{}

	// pool recycles waiters with their channels: a Wait is often on a hot
	// path. It belongs to one Primary, so that its channels stay in the
	// goroutines' world they were made in (testing/synctest's bubbles).
	pool sync.Pool
}

type waiter struct {
	target uint64        // offset to be acknowledged
	n      int           // replicas needed
	ready  chan struct{} // receives once n replicas acknowledged target
}

func (l *waitList) add(target uint64, n int) *waiter {
	w, ok := l.pool.Get().(*waiter)
	if !ok {
		w = &waiter{ready: make(chan struct{}, 1)}
	}
	w.target, w.n = target, n
	l.mu.Lock()
	if l.waiters == nil {
		l.waiters = make(map[*waiter]struct{})
	}
	l.waiters[w] = struct{}{}
	l.mu.Unlock()
	return w
}

// remove forgets w and returns it to the pool. Once it is out of the
// list nothing sends on its channel, so draining it leaves it empty.
func (l *waitList) remove(w *waiter) {
	l.mu.Lock()
	delete(l.waiters, w)
	l.mu.Unlock()
	select {
	case <-w.ready:
	default:
	}
	l.pool.Put(w)
}

// maxTarget returns the highest offset a listed waiter needs.
func (l *waitList) maxTarget() (uint64, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var m uint64
	for w := range l.waiters {
		m = max(m, w.target)
	}
	return m, len(l.waiters) > 0
}

// closeAll wakes every waiter, for Close.
func (l *waitList) closeAll() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for w := range l.waiters {
		select {
		case w.ready <- struct{}{}:
		default: // already woken
		}
		delete(l.waiters, w)
	}
}

// notify releases every waiter whose target count(target) says is met.
func (l *waitList) notify(count func(target uint64) int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	// Waiters with equal targets are common (many writers waiting on one
	// burst), so remember the last count.
	var last uint64
	k := -1
	for w := range l.waiters {
		if k < 0 || w.target != last {
			last, k = w.target, count(w.target)
		}
		if k >= w.n {
			w.ready <- struct{}{} // never blocks: sent once while listed
			delete(l.waiters, w)
		}
	}
}

// offsetWaits holds the blocked WaitOffset calls of a replica, each keyed
// by the offset it waits for. notify is on the replica's apply path, so it
// costs one atomic load when nobody waits.
type offsetWaits struct {
	n       atomic.Int32
	mu      sync.Mutex
	waiters map[chan struct{}]uint64
}

// add registers a waiter for offset; its channel is closed once the
// offset is reached.
func (o *offsetWaits) add(offset uint64) chan struct{} {
	ch := make(chan struct{})
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.waiters == nil {
		o.waiters = make(map[chan struct{}]uint64)
	}
	o.waiters[ch] = offset
	o.n.Add(1)
	return ch
}

func (o *offsetWaits) remove(ch chan struct{}) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if _, ok := o.waiters[ch]; ok {
		delete(o.waiters, ch)
		o.n.Add(-1)
	}
}

// notify releases the waiters for offsets up to off.
func (o *offsetWaits) notify(off uint64) {
	if o.n.Load() == 0 {
		return
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	for ch, want := range o.waiters {
		if want <= off {
			close(ch)
			delete(o.waiters, ch)
			o.n.Add(-1)
		}
	}
}

// WaitDurable blocks until every write made before the call is on disk:
// in p's data directory (as [Primary.Sync] makes it) and in the data
// directories of at least n replicas, or until ctx is done, and returns
// how many replicas held the writes on disk when it returned (Redis's
// WAITAOF). Replicas are asked to fsync at once, whatever their
// [WithFsync] policy, so it costs a round trip and an fsync on each, not
// a second. Replicas without a data directory never count; without a
// data directory of its own, p only counts replicas.
//
// It returns the count with ctx.Err() if ctx ended the wait, the data
// directory's failure if p's Sync fails, and ErrClosed if p is closed.
// With n ≤ 0 it makes p's writes durable and returns the current count.
func (p *Primary[V]) WaitDurable(ctx context.Context, n int) (int, error) {
	target := p.Offset()
	if err := p.Sync(); err != nil {
		return p.n.durableCount(target), err
	}
	return p.waitAcks(ctx, target, n, true)
}
