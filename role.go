package replmap

import (
	"context"
	"fmt"

	"github.com/replmap/replmap/transport"
)

// Promote makes r a primary and returns it. The Primary owns r's data and
// continues its history: its Offset is r.Offset(), its ReplID is new, its
// ReplID2 is r's ReplID up to r.Offset(), so every replica that holds a
// prefix of r's history resumes from it with a partial resync. Its epoch
// is one more than the highest r has seen, or [WithEpoch]'s, which must be
// higher than that (ErrStaleEpoch otherwise). After a double failure (a
// primary promoted and lost before r reached it) r may not have seen the
// latest epoch, so that default can repeat it: a coordinator should pass
// an epoch above every one it has handed out. Its options are r's, with
// opts applied on top (so [WithMinReplicas] can be given here).
//
// Listeners given to r.Serve are served by the Primary from then on, and
// sub-replicas reconnect to it as replicas. r is closed: its state is
// "closed", reads keep working, Follow and a second Promote return
// ErrClosed. Promote returns ErrNotSynced if r never completed a sync (it
// has no history to continue), and ErrClosed if r is closed.
//
// A full sync under way is abandoned: the Primary starts from the data r
// served.
func (r *Replica[V]) Promote(opts ...Option) (*Primary[V], error) {
	given, err := newConfig(opts)
	if err != nil {
		return nil, err
	}
	all := append(append([]Option(nil), r.opts...), opts...)
	cfg, err := newConfig(all)
	if err != nil {
		return nil, err
	}
	r.opMu.Lock()
	defer r.opMu.Unlock()
	if err := r.promotable(); err != nil {
		return nil, err
	}
	seen := r.n.maxEpoch.Load()
	epoch := seen + 1
	if given.epochSet {
		if given.epoch <= seen {
			return nil, fmt.Errorf("%w: epoch %d given, but this replica has seen %d", ErrStaleEpoch, given.epoch, seen)
		}
		epoch = given.epoch
	}
	r.stop()
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.handed { // a handover promoted r meanwhile
		return nil, ErrClosed
	}
	return r.promote(cfg, all, epoch), nil
}

// promotable reports why r cannot be promoted.
func (r *Replica[V]) promotable() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case r.closing || r.handed || r.isClosed.Load():
		return ErrClosed
	case r.n.data().hist.replID == "":
		return fmt.Errorf("%w: nothing to promote", ErrNotSynced)
	}
	return nil
}

// promote hands r's node to a new Primary that continues r's history in
// a new one of the given epoch. The caller holds r.mu, and r's sync loop
// has stopped or is ending.
func (r *Replica[V]) promote(cfg config, opts []Option, epoch uint64) *Primary[V] {
	n := r.n
	r.handed = true
	n.writeMu.Lock()
	d := n.data()
	n.swap(&dataset[V]{store: d.store, backlog: d.backlog, hist: history{
		replID:        newReplID(),
		replID2:       d.hist.replID,
		replID2Offset: d.offset(),
		epoch:         epoch,
	}})
	n.writeMu.Unlock()
	p := newPrimaryHandle(n, cfg)
	p.opts = opts
	r.promoted = p
	r.promotion.fire()
	r.closeHandle()
	n.logger().Info("promoted", "offset", d.offset(), "epoch", epoch, "continues", d.hist.replID)
	return p
}

// WaitPromoted blocks until r is promoted, by Promote or by a handover
// from its primary ([Primary.Handover]), and returns the Primary it
// became: this is how the owner of a replica chosen by a handover gets
// its *Primary. It returns ctx.Err() if ctx ends first, and ErrClosed if r
// is closed without being promoted.
func (r *Replica[V]) WaitPromoted(ctx context.Context) (*Primary[V], error) {
	select {
	case <-r.promotion.ch:
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-r.closedCh:
		if !r.promotion.fired() {
			return nil, ErrClosed
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.promoted, nil
}

// Follow switches r to the primary at primaryAddr without dropping its
// data: it resumes with a partial resync where the new primary's history
// continues r's and its backlog still holds the stream from r's offset,
// and full-syncs otherwise, keeping its data served until the new data is
// complete. The rules of epochs (ErrStaleEpoch) and of data loss
// (ErrWouldLoseData) apply as to any sync. A replica that is ahead of a
// related new primary (it had writes the new primary lacks) full-syncs,
// discarding those writes; their size is logged and counted in
// Info().DiscardedBytes.
//
// Follow returns at once; the switch goes on in the background, as
// NewReplica's first sync does: WaitSynced waits for its first sync with
// the new primary, and Info and WaitOffset show its progress. It returns
// ErrClosed if r is closed.
func (r *Replica[V]) Follow(primaryAddr string) error {
	r.opMu.Lock()
	defer r.opMu.Unlock()
	r.stop()
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closing || r.handed || r.isClosed.Load() {
		return ErrClosed
	}
	r.addr = primaryAddr
	r.synced = newSignal()
	r.start()
	return nil
}

// Demote makes p a replica of the primary at primaryAddr, reached through
// t, and returns it, started. The Replica keeps p's data and history, so
// it resumes with a partial resync from a primary promoted out of p's
// replicas as long as p is not ahead of it (and full-syncs, discarding
// what p had beyond, when it is). Its options are p's, with opts applied
// on top.
//
// p is closed as a primary: blocked Waits return ErrClosed, and so do its
// writes, Wait and a second Demote; reads keep working. Listeners given
// to p.Serve are served by the Replica from then on, so p's replicas carry
// on as its sub-replicas until they are re-pointed.
func (p *Primary[V]) Demote(t transport.Transport, primaryAddr string, opts ...Option) (*Replica[V], error) {
	cfg, all, err := p.replicaConfig(t, opts)
	if err != nil {
		return nil, err
	}
	p.handoverMu.Lock()
	defer p.handoverMu.Unlock()
	if p.closed() {
		return nil, ErrClosed
	}
	// Close the handle under the write lock, so that no write is half
	// made: every write either finished before, or sees ErrClosed.
	p.n.writeMu.Lock()
	p.closeHandle()
	p.n.writeMu.Unlock()
	return p.becomeReplica(t, primaryAddr, cfg, all), nil
}

// replicaConfig checks the arguments of Demote and Handover and returns
// the options of the Replica p becomes: p's, with opts on top.
func (p *Primary[V]) replicaConfig(t transport.Transport, opts []Option) (config, []Option, error) {
	if t == nil {
		return config{}, nil, fmt.Errorf("%w: nil transport", ErrInvalidOption)
	}
	all := append(append([]Option(nil), p.opts...), opts...)
	cfg, err := newConfig(all)
	return cfg, all, err
}

// becomeReplica hands p's node, once p is closed, to a started Replica of
// primaryAddr.
func (p *Primary[V]) becomeReplica(t transport.Transport, primaryAddr string, cfg config, all []Option) *Replica[V] {
	r := newReplicaHandle(p.n, t, primaryAddr, cfg, all)
	r.mu.Lock()
	r.start()
	r.mu.Unlock()
	p.n.logger().Info("now a replica", "offset", p.n.data().offset(), "following", primaryAddr)
	return r
}
