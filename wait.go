package replmap

import (
	"context"
	"errors"
	"sync"
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
	target := p.Offset()
	if p.closed() {
		return p.ackCount(target), ErrClosed
	}
	if n <= 0 {
		return p.ackCount(target), nil
	}
	w := p.waits.add(target, n)
	defer p.waits.remove(w)
	if k := p.ackCount(target); k >= n {
		return k, nil
	}
	p.requestAcks(target)
	select {
	case <-w.ready:
		return p.ackCount(target), nil
	case <-ctx.Done():
		return p.ackCount(target), ctx.Err()
	case <-p.ctx.Done():
		return p.ackCount(target), ErrClosed
	}
}

// ackCount counts the replicas that acknowledged offset target or later.
func (p *Primary[V]) ackCount(target uint64) int {
	k := 0
	for _, l := range p.linkList() {
		if off, ok := l.acked(); ok && off >= target {
			k++
		}
	}
	return k
}

// requestAcks asks every replica that has not acknowledged target yet to
// acknowledge now. Requests to one link coalesce until it sends one GETACK,
// which follows all the data written before the request; and no request is
// made while a GETACK that follows target is awaiting its answer.
func (p *Primary[V]) requestAcks(target uint64) {
	for _, l := range p.linkList() {
		if off, ok := l.acked(); (!ok || off < target) && l.asked.Load() < target {
			select {
			case l.getack <- struct{}{}:
			default:
			}
		}
	}
}

// ackAdvanced wakes the waiters that now have enough acknowledgements.
func (p *Primary[V]) ackAdvanced() {
	p.waits.notify(p.ackCount)
}

// waitList holds the blocked Waits, each keyed by the offset it needs.
type waitList struct {
	mu      sync.Mutex
	waiters map[*waiter]struct{}
}

type waiter struct {
	target uint64        // offset to be acknowledged
	n      int           // replicas needed
	ready  chan struct{} // closed when n replicas acknowledged target
}

func (l *waitList) add(target uint64, n int) *waiter {
	w := &waiter{target: target, n: n, ready: make(chan struct{})}
	l.mu.Lock()
	if l.waiters == nil {
		l.waiters = make(map[*waiter]struct{})
	}
	l.waiters[w] = struct{}{}
	l.mu.Unlock()
	return w
}

func (l *waitList) remove(w *waiter) {
	l.mu.Lock()
	delete(l.waiters, w)
	l.mu.Unlock()
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
			close(w.ready)
			delete(l.waiters, w)
		}
	}
}
