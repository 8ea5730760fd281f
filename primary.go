package replmap

import (
	"fmt"
	"iter"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Primary owns the authoritative copy of a map and replicates every write
// to the replicas connected to it.
//
// Writes are applied to the in-memory store and acknowledged at once; they
// reach replicas afterwards, in order (asynchronous replication). Use
// [Primary.Wait] to learn how many replicas hold them.
//
// All methods are safe for concurrent use. A value handed to Set is shared
// with readers and encoded for replicas later: the caller must not change
// it afterwards. ([]byte values are copied into the store, so those may be
// reused once Set returns; see the package documentation.)
type Primary[V any] struct {
	n    *node[V]
	cfg  config   // this handle's options
	opts []Option // as given, for Demote's defaults

	// closing is closed when Close starts, so that a Handover under way
	// rolls back rather than hold Close up.
	closing     chan struct{}
	closingOnce sync.Once

	// stopped is closed when the handle is closed (isClosed is set): it
	// stops the expiry goroutine.
	stopped chan struct{}

	// handoverMu orders Close and Demote, so that a Close never closes a
	// node that a concurrent Demote is handing to a Replica.
	handoverMu sync.Mutex

	// isClosed is set when this handle is closed: by Close, or by a
	// Demote or Handover that gave its node to a Replica.
	isClosed atomic.Bool

	// pause and moved are guarded by the node's writeMu: a handover in
	// progress, and where the role went after one.
	pause *writePause
	moved error

	frames sync.Pool // *[]byte scratch for encoding records

	// txWrites and txIndex are the scratch of the Update under way, kept
	// from one to the next so that an Update of many writes does not grow
	// a slice and build a map each time; guarded by the node's writeMu.
	txWrites []write[V]
	txIndex  map[string]int
}

// NewPrimary returns a Primary with an empty store, starting a new history
// at offset 0 (of epoch 0, or that of [WithEpoch]). It reports every
// invalid option at once, each wrapping ErrInvalidOption.
//
// With [WithDataDir], a directory that holds data is loaded instead: the
// Primary has its data and offset, its epoch (or WithEpoch's, if higher),
// and a new history that continues the one saved (ReplID2 is the old
// ReplID, up to the saved offset), with its backlog refilled from the log,
// so that its replicas resume with a partial resync. Damage is an error
// wrapping ErrChecksum; a directory whose data is gone is ErrLostState
// unless [WithAllowDataLoss] is given.
func NewPrimary[V any](opts ...Option) (*Primary[V], error) {
	cfg, err := newConfig(opts)
	if err != nil {
		return nil, err
	}
	if cfg.dataDir != "" {
		return openPrimary[V](cfg, opts, nil)
	}
	d := &dataset[V]{
		store:   newStore[V](),
		backlog: newBacklog(cfg, 0),
		hist:    history{replID: newReplID(), epoch: cfg.epoch},
	}
	n := newNode(cfg, rolePrimary, d)
	p := newPrimaryHandle(n, cfg)
	p.opts = opts
	return p, nil
}

// openPrimary starts a Primary on cfg's data directory: on the data it
// holds, or, if it holds none, on restored (a backup's data and history)
// or else empty.
func openPrimary[V any](cfg config, opts []Option, restored *dataset[V]) (*Primary[V], error) {
	dd, ld, lost, err := openDataDir[V](cfg, cfg.logger)
	if err != nil {
		return nil, err
	}
	var d *dataset[V]
	switch {
	case ld != nil && restored != nil:
		dd.close()
		return nil, fmt.Errorf("%w: data directory %s already holds data: restore into an empty one", ErrInvalidOption, cfg.dataDir)
	case ld != nil:
		end := ld.backlog.end.Load()
		d = &dataset[V]{store: ld.store, backlog: ld.backlog, hist: history{
			replID:        newReplID(),
			replID2:       ld.rec.hist.replID,
			replID2Offset: end,
			epoch:         max(ld.rec.hist.epoch, cfg.epoch),
		}}
	case restored != nil:
		d = restored
	default:
		d = &dataset[V]{
			store:   newStore[V](),
			backlog: newBacklog(cfg, 0),
			hist:    history{replID: newReplID(), epoch: max(lost.hist.epoch, cfg.epoch)},
		}
	}
	n := newNode(cfg, rolePrimary, d)
	if ld != nil {
		n.disk = dd
		dd.noteHistory(d.hist)
		err = dd.failed()
	} else {
		err = newGen(dd, n, d)
	}
	if err != nil {
		n.close()
		dd.close()
		return nil, fmt.Errorf("replmap: data directory %s: %w", cfg.dataDir, err)
	}
	n.startDisk(dd)
	p := newPrimaryHandle(n, cfg)
	p.opts = opts
	if ld != nil {
		n.logger().Info("restarted from the data directory", "offset", d.offset(), "keys", d.store.len(), "continues", ld.rec.hist.replID, "epoch", d.hist.epoch)
	}
	return p, nil
}

// newPrimaryHandle makes a Primary the owner of n.
func newPrimaryHandle[V any](n *node[V], cfg config) *Primary[V] {
	p := &Primary[V]{n: n, cfg: cfg, closing: make(chan struct{}), stopped: make(chan struct{})}
	n.log.Store(cfg.logger.With("primary", n.data().hist.replID[:8]))
	n.setOwner(p, rolePrimary)
	p.startExpiry()
	return p
}

// Serve accepts replica connections on l until l fails or the node is
// closed, running each link in its own goroutine. It backs off on
// temporary accept errors (5 ms doubling to 1 s). Serve may be called on
// several listeners at once.
//
// The listener outlives role changes: after Demote, the Replica serves it
// to sub-replicas, and Serve returns only when the object that serves l
// last is closed. (So a Serve that starts only after a Demote or a
// handover, as a goroutine may, serves for the Replica p became.) It
// returns ErrClosed then (Close closes l), ErrClosed at once if p is
// already closed and did not become a Replica, or l's error.
func (p *Primary[V]) Serve(l net.Listener) error {
	return p.n.serve(l) // ErrClosed, closing l, if the node is closed
}

// Close stops the Primary: it closes every listener given to Serve and
// every replica link, ends blocked Waits with ErrClosed, and returns once
// every goroutine the Primary started has exited. The data stays readable
// with Get, Len and All; writes return ErrClosed. A second Close returns
// nil, and so does Close after Demote, which has closed p already.
//
// With a data directory, Close makes every write durable and returns the
// error of that last fsync, if it fails.
func (p *Primary[V]) Close() error {
	p.closingOnce.Do(func() { close(p.closing) })
	p.handoverMu.Lock()
	defer p.handoverMu.Unlock()
	p.closeHandle()
	return p.n.closeIfOwner(p)
}

// Sync makes every write whose Set or Delete returned before the call
// durable in the data directory (flushed and fsynced), whatever the
// [WithFsync] policy. (A write still under way may be covered or not:
// Offset can already count it, so read Info().DurableOffset after Sync,
// not Offset before it, to learn the offset on disk.) It returns nil
// at once without a data directory, ErrClosed after Close, and the
// directory's failure if a write or fsync to it has failed: then writes
// have stopped (see [WithDataDir]).
func (p *Primary[V]) Sync() error {
	if p.closed() {
		return ErrClosed
	}
	dd := p.n.disk
	if dd == nil {
		return nil
	}
	err := dd.sync()
	if err != nil && p.closed() {
		return ErrClosed
	}
	return err
}

// closeHandle marks p closed and wakes its blocked Waits.
func (p *Primary[V]) closeHandle() {
	if !p.isClosed.Swap(true) {
		p.n.waits.closeAll() // after isClosed is set: see WaitContext
		p.n.durableWaits.closeAll()
		close(p.stopped)
	}
}

func (p *Primary[V]) closed() bool { return p.isClosed.Load() }

// lockForWrite takes the node's write lock for a write, waiting out a
// handover in progress. It returns with the lock held and the data to
// write to, or with an error and without the lock.
func (p *Primary[V]) lockForWrite() (*dataset[V], error) {
	n := p.n
	for {
		n.writeMu.Lock()
		if h := p.pause; h != nil {
			n.writeMu.Unlock()
			if err := awaitHandover(h); err != nil {
				return nil, err
			}
			continue // rolled back: try again
		}
		if err := p.writable(); err != nil {
			n.writeMu.Unlock()
			return nil, err
		}
		return n.data(), nil
	}
}

// writable reports why a write cannot be made now, under writeMu.
func (p *Primary[V]) writable() error {
	switch {
	case p.moved != nil:
		return p.moved
	case p.closed():
		return ErrClosed
	case p.n.stale.Load():
		return fmt.Errorf("%w: a replica has seen a newer epoch than this primary's %d", ErrStaleEpoch, p.n.data().hist.epoch)
	case p.cfg.minReplicas > 0:
		if k := p.n.freshReplicas(p.cfg.minReplicasLag); k < p.cfg.minReplicas {
			return fmt.Errorf("%w: %d of %d replicas acknowledged within %v", ErrNotEnoughReplicas, k, p.cfg.minReplicas, p.cfg.minReplicasLag)
		}
	}
	if p.n.disk != nil {
		return p.n.disk.failed()
	}
	return nil
}

// Set stores value under key and queues the write for every replica. A
// deadline the key had ([Primary.SetTTL]) is cleared. It returns
// ErrTooLarge for a key or encoded value over the limits (nothing is
// written), an encoding error for a value msgpack cannot encode,
// ErrStaleEpoch once the primary has been superseded, ErrNotEnoughReplicas
// under [WithMinReplicas], and ErrClosed after Close. The caller must not
// change value afterwards, unless it is a []byte, which Set copies.
func (p *Primary[V]) Set(key string, value V) error {
	return p.set(key, value, 0)
}

// SetTTL stores value under key, as Set does, to expire ttl from now: from
// then on no read on the primary or a replica returns it, and the primary
// deletes it, replicating the deletion like a Delete's. The deadline is
// absolute (this node's clock), so it holds across full syncs, restarts
// from a data directory and failovers; replicas compare it with their own
// clocks. A ttl that is not positive is ErrInvalidTTL.
func (p *Primary[V]) SetTTL(key string, value V, ttl time.Duration) error {
	at, err := deadline(ttl)
	if err != nil {
		return err
	}
	return p.set(key, value, at)
}

// deadline returns the deadline ttl from now, in Unix nanoseconds.
func deadline(ttl time.Duration) (int64, error) {
	if ttl <= 0 {
		return 0, fmt.Errorf("%w: %v", ErrInvalidTTL, ttl)
	}
	return now() + int64(ttl), nil
}

// set is Set with a deadline (0 for none).
func (p *Primary[V]) set(key string, value V, at int64) error {
	if err := checkKey(key, p.cfg.maxKeySize); err != nil {
		return err
	}
	buf := p.frameBuf()
	frame, err := appendSetFrame((*buf)[:0], key, value, at, p.cfg.maxValueSize)
	if err == nil {
		// Encoding and, for []byte values, packing happen before the
		// write lock, so concurrent writers do that work in parallel.
		n := p.n
		var d *dataset[V]
		pre := n.data().store
		var w write[V]
		pre.prepareSet(&w, key, value, at)
		if d, err = p.lockForWrite(); err == nil {
			if d.store != pre {
				w.sh = d.store.shardIndex(key) // the data was replaced meanwhile
			}
			d.store.apply(&w)
			err = n.appendRecord(d, frame, nil)
			end := d.offset()
			n.writeMu.Unlock()
			n.wakeLinks()
			if err == nil && n.disk != nil {
				err = n.disk.afterWrite(end)
			}
		}
	}
	p.putFrameBuf(buf, frame)
	return err
}

// Delete removes key and queues the deletion for every replica. Deleting
// a missing key changes nothing and sends nothing. It returns ErrTooLarge
// for a key over the limit, and ErrStaleEpoch, ErrNotEnoughReplicas and
// ErrClosed as Set does.
func (p *Primary[V]) Delete(key string) error {
	if err := checkKey(key, p.cfg.maxKeySize); err != nil {
		return err
	}
	buf := p.frameBuf()
	frame := appendDelFrame((*buf)[:0], key)
	n := p.n
	existed := false
	d, err := p.lockForWrite()
	if err == nil {
		if existed = d.store.delete(key); existed {
			err = n.appendRecord(d, frame, nil)
		}
		end := d.offset()
		n.writeMu.Unlock()
		if existed {
			n.wakeLinks()
		}
		// A key already missing may be missing by a write not yet on
		// disk: the Delete acknowledges that state, so it waits for it.
		if err == nil && n.disk != nil {
			err = n.disk.afterWrite(end)
		}
	}
	p.putFrameBuf(buf, frame)
	return err
}

func (p *Primary[V]) frameBuf() *[]byte {
	if b, ok := p.frames.Get().(*[]byte); ok {
		return b
	}
	return new([]byte)
}

func (p *Primary[V]) putFrameBuf(b *[]byte, used []byte) {
	if cap(used) <= 64<<10 { // let the odd huge value's buffer go
		*b = used
		p.frames.Put(b)
	}
}

// Get returns the value stored under key and whether it was there.
func (p *Primary[V]) Get(key string) (V, bool) { return p.n.data().store.get(key) }

// Len returns the number of keys.
func (p *Primary[V]) Len() int { return p.n.data().store.len() }

// All returns an iterator over the keys and values. Like ranging over a
// map, it yields each key at most once, and a write made during the walk
// may or may not be seen. The loop body may call any method of p.
func (p *Primary[V]) All() iter.Seq2[string, V] { return p.n.data().store.all() }

// Offset returns the replication offset of the last write: the number of
// stream bytes written in this history and the histories it continues.
func (p *Primary[V]) Offset() uint64 { return p.n.data().offset() }

// ReplID returns the replication ID of this Primary's history. It is new
// for every Primary, so a replica of an unrelated one full-syncs.
func (p *Primary[V]) ReplID() string { return p.n.data().hist.replID }

// Info returns a snapshot of the Primary's replication state.
func (p *Primary[V]) Info() PrimaryInfo {
	n := p.n
	d := n.data()
	start, end := d.backlog.window()
	return PrimaryInfo{
		ReplID:        d.hist.replID,
		ReplID2:       d.hist.replID2,
		ReplID2Offset: d.hist.replID2Offset,
		Epoch:         d.hist.epoch,
		Stale:         n.stale.Load(),
		Offset:        end,
		FullSyncs:     n.fullSyncs.Load(),
		PartialSyncs:  n.partialSyncs.Load(),
		Expired:       n.expired.Load(),
		DroppedSlow:   n.droppedSlow.Load(),
		BacklogFirst:  start,
		BacklogBytes:  int(end - start),
		Keys:          d.store.len(),
		Replicas:      n.linkInfo(end),
		DurableOffset: n.durable(),
	}
}
