package replmap

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/semaphore"
)

// node is the engine under both roles. It holds the data (a store and the
// backlog of the stream that built it), the history the data belongs to,
// and the links that serve that stream to downstream replicas: a
// Primary's replicas, or a Replica's sub-replicas. Data flows one way
// through it: a Primary appends its own writes, a Replica the bytes its
// upstream sends, each to the store and then to the backlog, under
// writeMu; links read the backlog and nothing else.
//
// A Primary or Replica is a handle on a node. Promote and Demote hand the
// node to a handle of the other role, so the data, the backlog, the
// listeners and the links carry on; the node is closed only by Close on
// the handle that owns it last.
type node[V any] struct {
	cfg config
	log atomic.Pointer[slog.Logger] // the owner's: replaced by role changes

	// disk is the data directory the stream is also written to, nil
	// without WithDataDir. It is the node's for life: role changes keep
	// it.
	disk *dataDir

	// cur is what reads see: the store, its backlog (whose end is the
	// offset) and its history. It is replaced whole, under writeMu: by a
	// full sync, a change of history, a promotion.
	cur atomic.Pointer[dataset[V]]

	// writeMu orders changes to the data: each write applies to the store
	// and appends its record to the backlog under it, so the stream's
	// order is the store's.
	writeMu sync.Mutex

	// maxEpoch is the highest epoch this node has seen (in its own
	// history, a peer's handshake, or a sync); see H2.
	maxEpoch atomic.Uint64

	ctx    context.Context // cancelled by close, with cause ErrClosed
	cancel context.CancelCauseFunc
	wg     sync.WaitGroup // one per link goroutine

	handshakes *semaphore.Weighted // connections that have not finished their handshake

	mu        sync.Mutex // guards the fields below
	closing   bool
	owner     any // the handle that owns the node: its Close closes it
	role      role
	listeners map[*net.Listener]struct{}
	links     atomic.Pointer[[]*link[V]] // replaced whole under mu, read without it
	replaced  map[string]string          // replica name -> the instance whose link another instance replaced

	grew         broadcast   // fired when the stream grows or the data is replaced, for watchers
	waits        waitList    // a Primary's blocked Waits
	durableWaits waitList    // a Primary's blocked WaitDurables
	offsets      offsetWaits // a Replica's blocked WaitOffsets

	expired      atomic.Uint64 // keys a primary deleted on expiry
	fullSyncs    atomic.Uint64 // full syncs served
	partialSyncs atomic.Uint64 // partial resyncs served
	droppedSlow  atomic.Uint64

	// stale is set when a primary meets a replica of a newer epoch (H3).
	stale atomic.Bool

	// testHookWrite, if set before the first write, is called under
	// writeMu with each record appended to the stream and the offset it
	// ends at, so tests can know the data at every offset.
	testHookWrite func(record []byte, end uint64)

	// testHookWaitWoken, if set, is called by a Wait woken with enough
	// acknowledgements, before it counts them again.
	testHookWaitWoken func()
}

type role int

const (
	rolePrimary role = iota
	roleReplica
)

// dataset is one generation of a node's data: a store, the backlog of the
// stream that brought it to its current state, and the history that
// stream belongs to. The backlog's end is the store's offset.
type dataset[V any] struct {
	store   *store[V]
	backlog *backlog
	hist    history
}

func (d *dataset[V]) offset() uint64 { return d.backlog.end.Load() }

// history names a stream of writes (see the package documentation,
// "Failover").
type history struct {
	replID        string // this history's ID ("" for a replica that never synced)
	replID2       string // the history this one continues ("" if none)
	replID2Offset uint64 // replID2's history is shared up to this offset
	epoch         uint64 // fencing epoch
}

// covers reports whether a replica at (replID, offset) holds a prefix of
// this history, so that it can continue from offset (H1, less the backlog).
func (h history) covers(replID string, offset uint64) bool {
	if replID == "" {
		return false
	}
	return replID == h.replID || (replID == h.replID2 && offset <= h.replID2Offset)
}

func newNode[V any](cfg config, r role, d *dataset[V]) *node[V] {
	n := &node[V]{
		cfg:        cfg,
		role:       r,
		listeners:  make(map[*net.Listener]struct{}),
		handshakes: semaphore.NewWeighted(int64(cfg.maxHandshakes)),
	}
	n.cur.Store(d)
	n.maxEpoch.Store(d.hist.epoch)
	n.ctx, n.cancel = context.WithCancelCause(context.Background())
	n.links.Store(&[]*link[V]{})
	return n
}

func (n *node[V]) data() *dataset[V] { return n.cur.Load() }

func (n *node[V]) logger() *slog.Logger { return n.log.Load() }

// setOwner makes h the handle that owns the node, in role r.
func (n *node[V]) setOwner(h any, r role) {
	n.mu.Lock()
	n.owner, n.role = h, r
	n.mu.Unlock()
}

func (n *node[V]) currentRole() role {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.role
}

// seeEpoch raises maxEpoch to e.
func (n *node[V]) seeEpoch(e uint64) { raise(&n.maxEpoch, e) }

// serve accepts downstream replicas on l until l fails or the node is
// closed; see Primary.Serve.
func (n *node[V]) serve(l net.Listener) error {
	n.mu.Lock()
	if n.closing {
		n.mu.Unlock()
		l.Close()
		return ErrClosed
	}
	// Keyed by the address of a local, not by the listener: an interface
	// whose dynamic type is not comparable would panic as a map key.
	key := &l
	n.listeners[key] = struct{}{}
	n.mu.Unlock()
	defer func() {
		n.mu.Lock()
		delete(n.listeners, key)
		n.mu.Unlock()
	}()

	var delay time.Duration
	for {
		conn, err := l.Accept()
		if err != nil {
			if n.ctx.Err() != nil {
				return ErrClosed
			}
			var te interface{ Temporary() bool }
			if errors.As(err, &te) && te.Temporary() {
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				n.logger().Warn("accept failed; retrying", "err", err, "delay", delay)
				select {
				case <-time.After(delay):
					continue
				case <-n.ctx.Done():
					return ErrClosed
				}
			}
			return err
		}
		delay = 0
		if !n.handshakes.TryAcquire(1) {
			// Too many connections are still in their handshake: shed
			// this one rather than let a flood of them hold memory.
			n.logger().Warn("too many pending handshakes; connection refused", "addr", conn.RemoteAddr(), "limit", n.cfg.maxHandshakes)
			conn.Close()
			continue
		}
		n.mu.Lock()
		if n.closing {
			n.mu.Unlock()
			n.handshakes.Release(1)
			conn.Close()
			return ErrClosed
		}
		n.wg.Add(1)
		n.mu.Unlock()
		go func() {
			defer n.wg.Done()
			n.serveLink(conn)
		}()
	}
}

// startDisk makes dd the node's data directory and starts its
// background work. The node is not serving yet.
func (n *node[V]) startDisk(dd *dataDir) {
	n.disk = dd
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		run(dd, n, n.ctx)
	}()
}

// close stops the node: it closes every listener and link, returns once
// every goroutine the node started has exited, and closes the data
// directory, whose last fsync's error it returns.
func (n *node[V]) close() error {
	n.mu.Lock()
	if n.closing {
		n.mu.Unlock()
		n.wg.Wait()
		return nil
	}
	n.closing = true
	n.cancel(ErrClosed) // closes every link's connection
	for l := range n.listeners {
		(*l).Close()
	}
	n.mu.Unlock()
	n.wg.Wait()
	if n.disk != nil {
		// Under writeMu: a write that passed its closed check before the
		// owner was marked closed may still be under way, and must reach
		// the log first, or it stays in memory, served, and never on disk.
		n.writeMu.Lock()
		defer n.writeMu.Unlock()
		return n.disk.close()
	}
	return nil
}

// closeIfOwner closes the node if h owns it.
func (n *node[V]) closeIfOwner(h any) error {
	n.mu.Lock()
	own := n.owner == h
	n.mu.Unlock()
	if own {
		return n.close()
	}
	return nil
}

// swap replaces the data served. The caller holds writeMu. When the
// history changes, or the data is replaced whole, the downstream links are
// dropped: their replicas reconnect at once and resume, partially where
// the new history allows (as Redis disconnects sub-replicas when its own
// replication ID shifts).
func (n *node[V]) swap(d *dataset[V]) {
	old := n.cur.Swap(d)
	n.seeEpoch(d.hist.epoch)
	if n.disk != nil && old.store == d.store {
		// The same data in a new history. (New data is a new
		// generation, which the full sync committed before the swap.)
		n.disk.noteHistory(d.hist)
	}
	if old.hist != d.hist || old.store != d.store {
		n.dropLinks(errHistoryChanged)
	}
	n.offsets.notify(d.offset())
	n.grew.fire()
}

// wakeLinks tells every link's sender, and every watcher, that the
// stream grew.
func (n *node[V]) wakeLinks() {
	for _, l := range n.linkList() {
		l.wakeSender()
	}
	n.grew.fire()
}

func (n *node[V]) linkList() []*link[V] { return *n.links.Load() }

// addLink registers l, replacing an earlier link of the same name: a
// replica that reconnects, or restarts, before its old link timed out must
// not be counted twice by Wait. A replica instance whose link was replaced
// by another instance of the same name, and that comes back while that
// other instance is connected, is refused with ErrDuplicateName: two
// replicas given one name would otherwise evict each other forever.
func (n *node[V]) addLink(l *link[V]) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	cur := n.linkList()
	if n.replaced[l.name] == l.instance {
		// Refused only while the instance that took the name over is
		// still connected: a stale connection of an old instance (a
		// delayed HELLO) may have been the one to take it over.
		for _, old := range cur {
			if old.name == l.name && old.instance != l.instance {
				return fmt.Errorf("%w: %q", ErrDuplicateName, l.name)
			}
		}
		delete(n.replaced, l.name)
	}
	links := make([]*link[V], 0, len(cur)+1)
	for _, old := range cur {
		if old.name == l.name {
			if old.instance != l.instance {
				if n.replaced == nil || len(n.replaced) >= maxReplacedNames {
					n.replaced = make(map[string]string)
				}
				n.replaced[l.name] = old.instance
			}
			old.cancel(errReplaced)
			continue
		}
		links = append(links, old)
	}
	links = append(links, l)
	n.links.Store(&links)
	return nil
}

// maxReplacedNames bounds the memory of replaced replica instances.
const maxReplacedNames = 1024

func (n *node[V]) removeLink(l *link[V]) {
	n.mu.Lock()
	defer n.mu.Unlock()
	cur := n.linkList()
	links := make([]*link[V], 0, len(cur))
	for _, x := range cur {
		if x != l {
			links = append(links, x)
		}
	}
	n.links.Store(&links)
}

// dropLinks ends every downstream link with err.
func (n *node[V]) dropLinks(err error) {
	for _, l := range n.linkList() {
		l.drop(err)
	}
}

// appendRecord adds a data record to d's stream, and to the data
// directory's log if d is the data served. The caller holds writeMu and
// has applied the record to d's store. A record may come in two parts (a
// replica's frame header and the rest as read off the wire). An error is
// the data directory's failure.
func (n *node[V]) appendRecord(d *dataset[V], head, rest []byte) error {
	d.backlog.append(head, rest)
	if n.testHookWrite != nil {
		n.testHookWrite(append(head[:len(head):len(head)], rest...), d.backlog.end.Load())
	}
	if n.disk != nil && d == n.data() {
		return n.disk.append(head, rest)
	}
	return nil
}

// linkInfo returns the links' view for PrimaryInfo and ReplicaInfo.
func (n *node[V]) linkInfo(end uint64) []ReplicaLink {
	var out []ReplicaLink
	for _, l := range n.linkList() {
		out = append(out, l.info(end))
	}
	return out
}

// durable returns the offset up to which the data directory holds the
// stream, 0 without one.
func (n *node[V]) durable() uint64 {
	if n.disk == nil {
		return 0
	}
	return n.disk.durable()
}
