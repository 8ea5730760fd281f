package replmap

import (
	"context"
	"errors"
	"iter"
	"log/slog"
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
	cfg     config
	log     *slog.Logger
	replID  string
	store   *store[V]
	backlog *backlog
	waits   waitList

	// writeMu orders writes: each applies to the store and appends its
	// record to the backlog under it, so the stream's order is the store's.
	writeMu sync.Mutex

	ctx      context.Context // cancelled by Close, with cause ErrClosed
	cancel   context.CancelCauseFunc
	wg       sync.WaitGroup // one per link goroutine
	isClosed atomic.Bool

	mu        sync.Mutex // guards the fields below
	closing   bool
	listeners map[net.Listener]struct{}
	links     atomic.Pointer[[]*link[V]] // replaced whole under mu, read without it

	fullSyncs    atomic.Uint64
	partialSyncs atomic.Uint64
	droppedSlow  atomic.Uint64

	frames sync.Pool // *[]byte scratch for encoding records

	// testHookWrite, if set before the first write, is called under
	// writeMu with each record appended to the stream and the offset it
	// ends at, so tests can know the primary's state at every offset.
	testHookWrite func(record []byte, end uint64)
}

// NewPrimary returns a Primary with an empty store. It reports every
// invalid option at once, each wrapping ErrInvalidOption.
func NewPrimary[V any](opts ...Option) (*Primary[V], error) {
	cfg, err := newConfig(opts)
	if err != nil {
		return nil, err
	}
	p := &Primary[V]{
		cfg:       cfg,
		replID:    newReplID(),
		store:     newStore[V](),
		backlog:   newBacklog(cfg),
		listeners: make(map[net.Listener]struct{}),
	}
	p.log = cfg.logger.With("primary", p.replID[:8])
	p.ctx, p.cancel = context.WithCancelCause(context.Background())
	p.links.Store(&[]*link[V]{})
	return p, nil
}

// Serve accepts replica connections on l until l fails or the Primary is
// closed, running each link in its own goroutine. It backs off on
// temporary accept errors (5 ms doubling to 1 s). It returns ErrClosed
// after Close (which closes l), or l's error otherwise. Serve may be called
// on several listeners at once.
func (p *Primary[V]) Serve(l net.Listener) error {
	p.mu.Lock()
	if p.closing {
		p.mu.Unlock()
		l.Close()
		return ErrClosed
	}
	p.listeners[l] = struct{}{}
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		delete(p.listeners, l)
		p.mu.Unlock()
	}()

	var delay time.Duration
	for {
		conn, err := l.Accept()
		if err != nil {
			if p.closed() {
				return ErrClosed
			}
			var te interface{ Temporary() bool }
			if errors.As(err, &te) && te.Temporary() {
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				p.log.Warn("accept failed; retrying", "err", err, "delay", delay)
				select {
				case <-time.After(delay):
					continue
				case <-p.ctx.Done():
					return ErrClosed
				}
			}
			return err
		}
		delay = 0
		p.mu.Lock()
		if p.closing {
			p.mu.Unlock()
			conn.Close()
			return ErrClosed
		}
		p.wg.Add(1)
		p.mu.Unlock()
		go func() {
			defer p.wg.Done()
			p.serveLink(conn)
		}()
	}
}

// Close stops the Primary: it closes every listener given to Serve and
// every replica link, ends blocked Waits with ErrClosed, and returns once
// every goroutine the Primary started has exited. The data stays readable
// with Get, Len and All; writes return ErrClosed. A second Close returns nil.
func (p *Primary[V]) Close() error {
	p.mu.Lock()
	if p.closing {
		p.mu.Unlock()
		return nil
	}
	p.closing = true
	p.isClosed.Store(true)
	p.cancel(ErrClosed) // closes every link's connection
	p.waits.closeAll()  // after isClosed is set: see WaitContext
	for l := range p.listeners {
		l.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
	return nil
}

func (p *Primary[V]) closed() bool { return p.isClosed.Load() }

// Set stores value under key and queues the write for every replica. It
// returns ErrTooLarge for a key or encoded value over the limits (nothing
// is written), an encoding error for a value msgpack cannot encode, and
// ErrClosed after Close. The caller must not change value afterwards,
// unless it is a []byte, which Set copies.
func (p *Primary[V]) Set(key string, value V) error {
	if err := checkKey(key, p.cfg.maxKeySize); err != nil {
		return err
	}
	buf := p.frameBuf()
	frame, err := appendSetFrame((*buf)[:0], key, value, p.cfg.maxValueSize)
	if err == nil {
		// Encoding and, for []byte values, packing happen before the
		// write lock, so concurrent writers do that work in parallel.
		var packedKey string
		var packed *byte
		if p.store.packed {
			packedKey, packed = p.store.packEntry(key, value)
		}
		p.writeMu.Lock()
		switch {
		case p.closed():
			err = ErrClosed
		case packed != nil:
			p.store.setPacked(packedKey, packed)
			p.appendRecord(frame)
		default:
			p.store.set(key, value)
			p.appendRecord(frame)
		}
		p.writeMu.Unlock()
	}
	p.putFrameBuf(buf, frame)
	if err == nil {
		p.wakeLinks()
	}
	return err
}

// Delete removes key and queues the deletion for every replica. Deleting
// a missing key changes nothing and sends nothing. It returns ErrTooLarge
// for a key over the limit and ErrClosed after Close.
func (p *Primary[V]) Delete(key string) error {
	if err := checkKey(key, p.cfg.maxKeySize); err != nil {
		return err
	}
	buf := p.frameBuf()
	frame := appendDelFrame((*buf)[:0], key)
	var err error
	existed := false
	p.writeMu.Lock()
	if p.closed() {
		err = ErrClosed
	} else if existed = p.store.delete(key); existed {
		p.appendRecord(frame)
	}
	p.writeMu.Unlock()
	p.putFrameBuf(buf, frame)
	if existed {
		p.wakeLinks()
	}
	return err
}

// appendRecord adds a write's record to the stream. The caller holds
// writeMu and has applied the write to the store.
func (p *Primary[V]) appendRecord(frame []byte) {
	p.backlog.append(frame)
	if p.testHookWrite != nil {
		p.testHookWrite(frame, p.backlog.end.Load())
	}
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

// wakeLinks tells every link's sender that the stream grew.
func (p *Primary[V]) wakeLinks() {
	for _, l := range p.linkList() {
		select {
		case l.wake <- struct{}{}:
		default:
		}
	}
}

// Get returns the value stored under key and whether it was there.
func (p *Primary[V]) Get(key string) (V, bool) { return p.store.get(key) }

// Len returns the number of keys.
func (p *Primary[V]) Len() int { return p.store.len() }

// All returns an iterator over the keys and values. Like ranging over a
// map, it yields each key at most once, and a write made during the walk
// may or may not be seen. The loop body may call any method of p.
func (p *Primary[V]) All() iter.Seq2[string, V] { return p.store.all() }

// Offset returns the replication offset of the last write: the number of
// stream bytes written since the Primary started.
func (p *Primary[V]) Offset() uint64 { return p.backlog.end.Load() }

// ReplID returns the replication ID of this Primary's history. It is new
// for every Primary, so a replica of an earlier one full-syncs.
func (p *Primary[V]) ReplID() string { return p.replID }

// Info returns a snapshot of the Primary's replication state.
func (p *Primary[V]) Info() PrimaryInfo {
	start, end := p.backlog.window()
	info := PrimaryInfo{
		ReplID:       p.replID,
		Offset:       end,
		FullSyncs:    p.fullSyncs.Load(),
		PartialSyncs: p.partialSyncs.Load(),
		DroppedSlow:  p.droppedSlow.Load(),
		BacklogFirst: start,
		BacklogBytes: int(end - start),
		Keys:         p.store.len(),
	}
	for _, l := range p.linkList() {
		info.Replicas = append(info.Replicas, l.info(end))
	}
	return info
}

func (p *Primary[V]) linkList() []*link[V] { return *p.links.Load() }

// addLink registers l, replacing any link from the same replica ID: a
// replica that reconnects before its old link timed out must not be
// counted twice by Wait.
func (p *Primary[V]) addLink(l *link[V]) {
	p.mu.Lock()
	defer p.mu.Unlock()
	cur := p.linkList()
	links := make([]*link[V], 0, len(cur)+1)
	for _, old := range cur {
		if old.id == l.id {
			old.cancel(errReplaced)
			continue
		}
		links = append(links, old)
	}
	links = append(links, l)
	p.links.Store(&links)
}

func (p *Primary[V]) removeLink(l *link[V]) {
	p.mu.Lock()
	defer p.mu.Unlock()
	cur := p.linkList()
	links := make([]*link[V], 0, len(cur))
	for _, x := range cur {
		if x != l {
			links = append(links, x)
		}
	}
	p.links.Store(&links)
}
