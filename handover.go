package replmap

import (
	"context"
	"errors"
	"fmt"

	"github.com/replmap/replmap/transport"
)

// MovedError is returned by writes on a Primary that handed its role over
// ([Primary.Handover]): those issued during the handover, which blocked
// until it was done, and every later one. Addr is where the new primary
// serves. It matches ErrClosed with errors.Is, since the Primary is closed.
type MovedError struct {
	Addr string // the new primary's address, as its replica advertised it
}

func (e *MovedError) Error() string { return "replmap: primary moved to " + e.Addr }

// Is reports whether target is ErrClosed.
func (e *MovedError) Is(target error) bool { return target == ErrClosed }

// ErrNoReplica is returned by Handover when no replica can take over: none
// is streaming with an advertised address, or none has the name given.
var ErrNoReplica = errors.New("replmap: no replica to hand over to")

// writePause is a handover in progress: writes wait for done, then retry, or
// fail with moved if the handover went through.
type writePause struct {
	done  chan struct{}
	moved error
}

// Handover hands the primary role to a replica, losing nothing, as
// Redis's FAILOVER does: it pauses writes (they block, and Waits go on),
// waits until the replica named to (its [WithReplicaName], shown as
// [ReplicaLink.ID]), or the most caught-up one if to is "", has
// acknowledged every write, tells it to promote itself with the next
// epoch, and once it has, makes p a replica of it (as Demote, through t)
// and returns that replica. Writes issued during the handover then fail
// with a [*MovedError] naming the new primary's address; they would have
// been lost otherwise, since nothing is written after the replica's last
// acknowledged offset.
//
// The replica's owner gets its new [*Primary] from [Replica.WaitPromoted].
// The replica must advertise an address ([WithAdvertiseAddr], or a
// listener given to [Replica.Serve]), where its other replicas and p will
// reach it.
//
// If ctx ends first, the replica's link fails, or p is closed, Handover
// rolls back: writes resume on p (or fail with ErrClosed), and the error
// wraps the cause. A replica that
// promoted itself after p gave up (its confirmation lost in flight) is of a
// newer epoch, so p is fenced (ErrStaleEpoch) as soon as a replica that
// follows it reaches p; give ctx a timeout well above a round trip.
func (p *Primary[V]) Handover(ctx context.Context, t transport.Transport, to string, opts ...Option) (*Replica[V], error) {
	cfg, all, err := p.replicaConfig(t, opts)
	if err != nil {
		return nil, err
	}
	p.handoverMu.Lock()
	defer p.handoverMu.Unlock()
	if p.closed() {
		return nil, ErrClosed
	}
	n := p.n
	l := n.handoverTarget(to)
	if l == nil {
		if to == "" {
			return nil, ErrNoReplica
		}
		return nil, fmt.Errorf("%w: no streaming replica named %q advertises an address", ErrNoReplica, to)
	}

	h := &writePause{done: make(chan struct{})}
	n.writeMu.Lock()
	p.pause = h
	end := n.data().offset()
	n.writeMu.Unlock()
	rollback := func(err error) (*Replica[V], error) {
		n.writeMu.Lock()
		p.pause = nil
		n.writeMu.Unlock()
		close(h.done)
		n.logger().Warn("handover rolled back", "to", l.name, "err", err)
		return nil, fmt.Errorf("replmap: handover to %s rolled back: %w", l.name, err)
	}

	// Every write is in; wait until the replica has applied them all.
	for {
		if off, ok := l.acked(); ok && off >= end {
			break
		}
		l.requestAck(end)
		select {
		case <-l.acks:
		case <-l.gone:
			return rollback(errors.New("the replica's link closed"))
		case <-p.closing:
			return rollback(ErrClosed)
		case <-ctx.Done():
			return rollback(ctx.Err())
		}
	}
	epoch := n.maxEpoch.Load() + 1
	if err := l.sendFailover(end, epoch); err != nil {
		return rollback(err)
	}
	select {
	case <-l.promoted.ch:
	case <-l.gone:
		if !l.promoted.fired() {
			return rollback(errors.New("the replica's link closed before it confirmed"))
		}
	case <-p.closing:
		return rollback(ErrClosed)
	case <-ctx.Done():
		return rollback(ctx.Err())
	}

	addr := l.listenAddr()
	moved := &MovedError{Addr: addr}
	n.writeMu.Lock()
	p.moved = moved
	p.closeHandle()
	p.pause = nil
	n.writeMu.Unlock()
	h.moved = moved
	close(h.done)
	n.logger().Info("handed over", "to", l.name, "addr", addr, "offset", end, "epoch", epoch)
	return p.becomeReplica(t, addr, cfg, all), nil
}

// handoverTarget returns the link of the replica named to, or the most
// caught-up one for "": streaming and advertising an address.
func (n *node[V]) handoverTarget(to string) *link[V] {
	var best *link[V]
	var bestAck uint64
	for _, l := range n.linkList() {
		if !l.streaming.Load() || l.listenAddr() == "" || (to != "" && l.name != to) {
			continue
		}
		ack, _ := l.acked()
		if best == nil || ack > bestAck {
			best, bestAck = l, ack
		}
	}
	return best
}

// sendFailover writes the stream up to the end, then FAILOVER.
func (l *link[V]) sendFailover(offset, epoch uint64) error {
	l.wmu.Lock()
	defer l.wmu.Unlock()
	if !l.streaming.Load() {
		return errors.New("the replica's link closed")
	}
	l.failover.Store(true)
	if err := l.flush(false, false); err != nil {
		return err
	}
	if _, err := l.bw.Write(appendFailover(nil, offset, epoch)); err != nil {
		return err
	}
	return l.bw.Flush()
}

// awaitHandover blocks a write until the handover h is over: it returns
// nil if the write should be tried again (rolled back), or the error that
// sends it to the new primary.
func awaitHandover(h *writePause) error {
	<-h.done
	return h.moved
}

// promoteByUpstream promotes r on its primary's FAILOVER, from the session
// of the sync loop whose done channel is loop. It fails if that loop is
// being stopped (Close, Follow, Promote) or r is not where the primary
// says.
func (r *Replica[V]) promoteByUpstream(loop chan struct{}, epoch uint64) (*Primary[V], error) {
	all := append([]Option(nil), r.opts...)
	cfg, err := newConfig(all)
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cancel == nil || r.done != loop || r.closing || r.handed {
		return nil, ErrClosed
	}
	if seen := r.n.maxEpoch.Load(); epoch <= seen {
		return nil, fmt.Errorf("%w: handover to epoch %d, but this replica has seen %d", ErrStaleEpoch, epoch, seen)
	}
	return r.promote(cfg, all, epoch), nil
}

// errPromoted ends the session of a replica that a handover promoted.
var errPromoted = errors.New("replmap: promoted by a handover")
