package replmap

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"iter"
	"log/slog"
	mrand "math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/replmap/replmap/transport"
)

// Replica keeps a read-only copy of a Primary's map, kept up to date over a
// connection the transport makes.
//
// A Replica syncs in the background from the moment NewReplica returns. On
// its first connection, and whenever the primary's backlog no longer covers
// its offset, it receives a full snapshot, loads it aside and swaps it in
// atomically; meanwhile it keeps serving the data it had. After a dropped
// link it reconnects with jittered exponential backoff and, when it can,
// resumes where it stopped (partial resync).
//
// Reads are safe for concurrent use and never block on the network. They
// are monotonic: once a write is visible, no older value of that key
// returns, and what the Replica shows at offset o is exactly the primary's
// state at o. Writes return ErrReadOnly.
type Replica[V any] struct {
	cfg  config
	log  *slog.Logger
	t    transport.Transport
	addr string
	name string

	data  atomic.Pointer[replicaData[V]] // what reads see
	state atomic.Value                   // ReplicaState

	ctx       context.Context // cancelled by Close, with cause ErrClosed
	cancel    context.CancelCauseFunc
	done      chan struct{} // closed when the sync goroutine exits
	synced    chan struct{} // closed when the first sync completes
	closeOnce sync.Once
	syncOnce  sync.Once

	linkUp       atomic.Bool
	lastIO       atomic.Int64 // UnixNano
	fullSyncs    atomic.Uint64
	partialSyncs atomic.Uint64
	connects     atomic.Uint64
	syncKeys     atomic.Int64
	errMu        sync.Mutex
	lastErr      error
}

// replicaData is one generation of a replica's data: a store, the history
// it belongs to and how far into it the store is.
type replicaData[V any] struct {
	store  *store[V]
	replID string
	offset atomic.Uint64
}

// NewReplica returns a Replica of the primary at primaryAddr, reached
// through t, and starts syncing in the background; use WaitSynced to wait
// for the first sync. It fails only for invalid arguments: connection
// problems are retried until Close, and show in Info.
func NewReplica[V any](t transport.Transport, primaryAddr string, opts ...Option) (*Replica[V], error) {
	cfg, err := newConfig(opts)
	if t == nil {
		err = errors.Join(err, fmt.Errorf("%w: nil transport", ErrInvalidOption))
	}
	if err != nil {
		return nil, err
	}
	name := cfg.replicaName
	if name == "" {
		var b [8]byte
		_, _ = rand.Read(b[:])
		name = hex.EncodeToString(b[:])
	}
	r := &Replica[V]{
		cfg:    cfg,
		log:    cfg.logger.With("replica", name, "primary", primaryAddr),
		t:      t,
		addr:   primaryAddr,
		name:   name,
		done:   make(chan struct{}),
		synced: make(chan struct{}),
	}
	r.data.Store(&replicaData[V]{store: newStore[V]()})
	r.state.Store(StateConnecting)
	r.ctx, r.cancel = context.WithCancelCause(context.Background())
	go r.run()
	return r, nil
}

// Get returns the value stored under key and whether it was there.
func (r *Replica[V]) Get(key string) (V, bool) { return r.data.Load().store.get(key) }

// Set returns ErrReadOnly: replicas take writes only from their primary.
func (r *Replica[V]) Set(key string, value V) error { return ErrReadOnly }

// Delete returns ErrReadOnly: replicas take writes only from their primary.
func (r *Replica[V]) Delete(key string) error { return ErrReadOnly }

// Len returns the number of keys.
func (r *Replica[V]) Len() int { return r.data.Load().store.len() }

// All returns an iterator over the keys and values, with the same
// guarantees as [Primary.All]. A full sync that completes during the walk
// does not affect it: the walk finishes over the data it started on.
func (r *Replica[V]) All() iter.Seq2[string, V] { return r.data.Load().store.all() }

// Offset returns the replication offset of the last write applied to the
// data the Replica serves.
func (r *Replica[V]) Offset() uint64 { return r.data.Load().offset.Load() }

// WaitSynced blocks until the first sync has completed, so that the
// Replica serves a copy of the primary's data. It returns nil once synced,
// even after Close; ctx.Err() if ctx is done first; ErrClosed if the
// Replica is closed first.
func (r *Replica[V]) WaitSynced(ctx context.Context) error {
	select {
	case <-r.synced:
		return nil
	default:
	}
	select {
	case <-r.synced:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-r.ctx.Done():
		return ErrClosed
	}
}

// Info returns a snapshot of the Replica's state.
func (r *Replica[V]) Info() ReplicaInfo {
	d := r.data.Load()
	info := ReplicaInfo{
		State:        r.state.Load().(ReplicaState),
		ReplID:       d.replID,
		Offset:       d.offset.Load(),
		Primary:      r.addr,
		LinkUp:       r.linkUp.Load(),
		FullSyncs:    r.fullSyncs.Load(),
		PartialSyncs: r.partialSyncs.Load(),
		Connects:     r.connects.Load(),
		SyncKeys:     int(r.syncKeys.Load()),
		Keys:         d.store.len(),
	}
	if ns := r.lastIO.Load(); ns != 0 {
		info.LastIO = time.Unix(0, ns)
	}
	r.errMu.Lock()
	info.LastError = r.lastErr
	r.errMu.Unlock()
	return info
}

// Close stops syncing, closes the link and returns once the Replica's
// goroutines have exited. The data stays readable. A second Close returns
// nil.
func (r *Replica[V]) Close() error {
	r.closeOnce.Do(func() {
		r.cancel(ErrClosed)
		<-r.done
		r.linkUp.Store(false)
		r.state.Store(StateClosed)
	})
	return nil
}

// run connects, syncs and streams until Close, reconnecting with
// jittered exponential backoff. The backoff restarts after a session that
// got as far as streaming.
func (r *Replica[V]) run() {
	defer close(r.done)
	attempt := 0
	for {
		r.state.Store(StateConnecting)
		synced, err := r.session()
		r.linkUp.Store(false)
		if r.ctx.Err() != nil {
			return
		}
		r.errMu.Lock()
		r.lastErr = err
		r.errMu.Unlock()
		r.log.Info("link to primary lost", "err", err)
		if synced {
			attempt = 0
		}
		delay := backoff(attempt, r.cfg.reconnectMin, r.cfg.reconnectMax)
		attempt++
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-r.ctx.Done():
			t.Stop()
			return
		}
	}
}

// backoff returns the delay before reconnect attempt n (from 0): at most
// lo for the first, then "equal jitter" over a ceiling that doubles from lo
// to hi.
func backoff(n int, lo, hi time.Duration) time.Duration {
	if n == 0 {
		return mrand.N(lo) + 1
	}
	ceil := hi
	if n < 32 && lo<<n < hi && lo<<n > 0 {
		ceil = lo << n
	}
	return ceil/2 + mrand.N(ceil/2+1)
}

// session runs one connection: handshake, sync, stream. It reports whether
// it reached streaming, and why it ended.
func (r *Replica[V]) session() (synced bool, err error) {
	dctx, dcancel := context.WithTimeout(r.ctx, r.cfg.linkTimeout)
	conn, err := r.t.Dial(dctx, r.addr)
	dcancel()
	if err != nil {
		return false, linkError("dial", r.addr, err)
	}
	r.connects.Add(1)
	r.linkUp.Store(true)

	ctx, cancel := context.WithCancelCause(r.ctx)
	defer cancel(nil)
	defer closeWhenDone(ctx, conn)()
	defer conn.Close()

	dc := &deadlineConn{Conn: conn, timeout: r.cfg.linkTimeout}
	cur := r.data.Load()
	h := hello{version: protocolVersion, replID: cur.replID, offset: cur.offset.Load(), name: r.name}
	if _, err := dc.Write(appendHello(nil, h)); err != nil {
		return false, linkError("handshake", r.addr, err)
	}

	s := &replicaSession[V]{
		r:  r,
		fr: newFrameReader(dc, r.cfg.maxFrameSize),
		w:  dc,
	}
	s.fr.timeout = r.cfg.linkTimeout
	var wg sync.WaitGroup
	wg.Go(func() { cancel(s.heartbeat(ctx)) })
	cancel(s.receive())
	wg.Wait()
	if err := context.Cause(ctx); !errors.Is(err, ErrClosed) {
		return s.synced, err
	}
	return s.synced, ErrClosed
}

// replicaSession is the state of one connection to the primary.
type replicaSession[V any] struct {
	r      *Replica[V]
	fr     *frameReader
	frames uint64 // read so far

	// wmu serialises writes: ACKs written by the receiving goroutine on
	// GETACK, and the heartbeat's.
	wmu    sync.Mutex
	w      io.Writer
	ackBuf []byte

	// streaming is set once the data being served is the data this
	// session updates, so ACKs report offsets in the primary's stream.
	streaming atomic.Bool
	synced    bool // reached streaming

	target  *replicaData[V]    // the data the stream applies to
	loader  *snapshotLoader[V] // loads target's store until END
	pending bool               // target is a loaded snapshot not yet served
	until   uint64             // offset at which a pending snapshot is exact
}

// next reads a frame and notes the I/O: when the bytes read so far are
// used up, or every 256 frames, not on every frame (time.Now is a
// measurable part of applying a small record).
func (s *replicaSession[V]) next() (frameType, []byte, int, error) {
	t, payload, size, err := s.fr.next()
	if err == nil {
		if s.frames++; s.frames%256 == 0 || s.fr.r.Buffered() == 0 {
			s.r.lastIO.Store(time.Now().UnixNano())
		}
	}
	return t, payload, size, err
}

// receive reads the handshake reply, loads a snapshot if one comes, and
// applies the stream until the link fails.
func (s *replicaSession[V]) receive() error {
	r := s.r
	t, payload, _, err := s.next()
	if err != nil {
		return linkError("handshake", r.addr, err)
	}
	switch t {
	case frameContinue:
		cur := r.data.Load()
		replID, offset, err := parseSyncStart(t, payload)
		if err == nil && (replID != cur.replID || offset != cur.offset.Load()) {
			err = fmt.Errorf("%w: CONTINUE at %s/%d for a replica at %s/%d",
				ErrProtocol, replID, offset, cur.replID, cur.offset.Load())
		}
		if err != nil {
			return linkError("handshake", r.addr, err)
		}
		r.partialSyncs.Add(1)
		s.target = cur
		s.startStreaming()
	case frameFull:
		if err := s.startSnapshot(payload); err != nil {
			return linkError("sync", r.addr, err)
		}
	case frameError:
		return linkError("handshake", r.addr, errorFromFrame(payload))
	default:
		return linkError("handshake", r.addr, fmt.Errorf("%w: unexpected %s in handshake", ErrProtocol, t))
	}
	err = s.stream()
	if s.loader != nil {
		return linkError("sync", r.addr, err)
	}
	return linkError("stream", r.addr, err)
}

// startSnapshot begins a full sync: CHUNKs load into a fresh store, which
// the stream updates as records arrive, and which is served only once END
// has checked it and the stream has brought it to END's offset (see
// stream).
func (s *replicaSession[V]) startSnapshot(full []byte) error {
	r := s.r
	replID, from, err := parseSyncStart(frameFull, full)
	if err != nil {
		return err
	}
	r.state.Store(StateSyncing)
	r.syncKeys.Store(0)
	s.loader = newSnapshotLoader[V](r.cfg.maxKeySize, r.cfg.maxValueSize)
	s.target = &replicaData[V]{store: s.loader.store, replID: replID}
	s.target.offset.Store(from)
	return nil
}

// endSnapshot checks END against what was loaded, then serves the new
// store as soon as it is exact.
func (s *replicaSession[V]) endSnapshot(payload []byte) error {
	end, err := parseSnapshotEnd(payload)
	if err != nil {
		return err
	}
	if err := s.loader.end(end); err != nil {
		return err
	}
	if from := s.target.offset.Load(); end.offset < from {
		return fmt.Errorf("%w: snapshot ends at offset %d before the %d already streamed", ErrProtocol, end.offset, from)
	}
	s.loader = nil
	s.pending, s.until = true, end.offset
	s.maybeSwap()
	return nil
}

// maybeSwap serves the pending snapshot once it is exact.
func (s *replicaSession[V]) maybeSwap() {
	if !s.pending || s.target.offset.Load() < s.until {
		return
	}
	s.pending = false
	s.r.data.Store(s.target)
	s.r.fullSyncs.Add(1)
	s.r.syncKeys.Store(0)
	s.startStreaming()
	// Tell the primary at once, so a Wait need not wait for a heartbeat.
	// A failed write fails the next read too, so its error can go.
	_ = s.writeAck()
}

func (s *replicaSession[V]) startStreaming() {
	s.streaming.Store(true)
	s.synced = true
	s.r.state.Store(StateStreaming)
	s.r.syncOnce.Do(func() { close(s.r.synced) })
}

// stream applies data records to the target data until the link fails,
// and loads the snapshot whose CHUNKs come between them during a full
// sync. Each record is decoded and checked whole before it is applied.
func (s *replicaSession[V]) stream() error {
	r := s.r
	for {
		t, payload, size, err := s.next()
		if err != nil {
			return err
		}
		switch t {
		case frameSet:
			key, raw, err := parseSet(payload, r.cfg.maxKeySize, r.cfg.maxValueSize)
			if err != nil {
				return err
			}
			if err := storeSet(s.target.store, key, raw); err != nil {
				return err
			}
			s.target.offset.Add(uint64(size))
			s.maybeSwap()
		case frameDel:
			if len(payload) > r.cfg.maxKeySize {
				return fmt.Errorf("%w: DEL key of %d bytes exceeds the %d-byte limit", ErrTooLarge, len(payload), r.cfg.maxKeySize)
			}
			s.target.store.delete(string(payload))
			s.target.offset.Add(uint64(size))
			s.maybeSwap()
		case frameChunk:
			if s.loader == nil {
				return fmt.Errorf("%w: %s outside a snapshot", ErrProtocol, t)
			}
			if err := s.loader.chunk(payload); err != nil {
				return err
			}
			r.syncKeys.Store(int64(s.loader.count))
		case frameEnd:
			if s.loader == nil {
				return fmt.Errorf("%w: %s outside a snapshot", ErrProtocol, t)
			}
			if err := s.endSnapshot(payload); err != nil {
				return err
			}
		case framePing:
		case frameGetAck:
			// Answer on this goroutine, which has just applied everything
			// before the GETACK: no hand-off, so a Wait costs one round trip.
			if s.streaming.Load() {
				if err := s.writeAck(); err != nil {
					return err
				}
			}
		case frameError:
			return errorFromFrame(payload)
		default:
			return fmt.Errorf("%w: unexpected %s in stream", ErrProtocol, t)
		}
	}
}

// heartbeat writes an ACK with the applied offset every heartbeat, or a
// PING while a full sync is still loading.
func (s *replicaSession[V]) heartbeat(ctx context.Context) error {
	ticker := time.NewTicker(s.r.cfg.heartbeat)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-ticker.C:
		}
		var err error
		if s.streaming.Load() {
			err = s.writeAck()
		} else {
			s.wmu.Lock()
			_, err = s.w.Write(pingFrame)
			s.wmu.Unlock()
		}
		if err != nil {
			return linkError("stream", s.r.addr, err)
		}
	}
}

// writeAck writes an ACK of the offset applied so far.
func (s *replicaSession[V]) writeAck() error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	s.ackBuf = appendU64Frame(s.ackBuf[:0], frameAck, s.r.data.Load().offset.Load())
	_, err := s.w.Write(s.ackBuf)
	return err
}
