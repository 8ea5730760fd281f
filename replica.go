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
	"net"
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
	n        *node[V]
	cfg      config
	opts     []Option // as given, for Promote's defaults
	t        transport.Transport
	name     string
	instance string // random, new for every Replica: tells it apart from another of its name upstream
	log      *slog.Logger

	state atomic.Value // ReplicaState

	// opMu orders the calls that change the upstream or the role: Close,
	// Follow, Promote.
	opMu sync.Mutex

	// mu guards the upstream: its address, the sync loop running against
	// it, and the signal of its first sync. Follow and Promote replace them.
	mu        sync.Mutex
	addr      string
	synced    *signal
	cancel    context.CancelCauseFunc // stops the sync loop
	done      chan struct{}           // closed when the sync loop exits
	handed    bool                    // the node was handed to a Primary (Promote, or a handover)
	closing   bool
	promoted  *Primary[V] // set when handed
	promotion *signal     // fired when handed

	closedCh chan struct{} // closed when this handle is closed
	isClosed atomic.Bool

	// advertise is the address sub-replicas reach this node at, told
	// upstream for handovers: read on every ACK, so not under mu.
	advertise atomic.Pointer[string]

	linkUp       atomic.Bool
	lastIO       atomic.Int64 // UnixNano
	fullSyncs    atomic.Uint64
	partialSyncs atomic.Uint64
	connects     atomic.Uint64
	syncKeys     atomic.Int64
	discarded    atomic.Uint64
	errMu        sync.Mutex
	lastErr      error
}

// signal is closed once, when something first happens.
type signal struct {
	ch   chan struct{}
	once sync.Once
}

func newSignal() *signal { return &signal{ch: make(chan struct{})} }
func (s *signal) fire()  { s.once.Do(func() { close(s.ch) }) }
func (s *signal) fired() bool {
	select {
	case <-s.ch:
		return true
	default:
		return false
	}
}

// NewReplica returns a Replica of the primary at primaryAddr, reached
// through t, and starts syncing in the background; use WaitSynced to wait
// for the first sync. It fails only for invalid arguments and a data
// directory it cannot open: connection problems are retried until Close,
// and show in Info.
//
// With [WithDataDir], a directory that holds data is loaded and served at
// once, before any connection, and the Replica resumes from it with a
// partial resync where its primary's history and backlog allow. Damage is
// an error wrapping ErrChecksum; a directory whose data is gone starts
// empty.
func NewReplica[V any](t transport.Transport, primaryAddr string, opts ...Option) (*Replica[V], error) {
	cfg, err := newConfig(opts)
	if t == nil {
		err = errors.Join(err, fmt.Errorf("%w: nil transport", ErrInvalidOption))
	}
	if err != nil {
		return nil, err
	}
	d := &dataset[V]{store: newStore[V](), backlog: newBacklog(cfg, 0)}
	var dd *dataDir
	if cfg.dataDir != "" {
		// A replica whose data is lost starts empty: it only has to sync.
		dcfg := cfg
		dcfg.allowDataLoss = true
		var ld *loadedData[V]
		if dd, ld, _, err = openDataDir[V](dcfg, cfg.logger); err != nil {
			return nil, err
		}
		if ld != nil {
			d = &dataset[V]{store: ld.store, backlog: ld.backlog, hist: ld.rec.hist}
		}
	}
	n := newNode(cfg, roleReplica, d)
	if dd != nil {
		n.startDisk(dd)
	}
	r := newReplicaHandle(n, t, primaryAddr, cfg, opts)
	r.start()
	return r, nil
}

// newReplicaHandle makes a Replica the owner of n, following primaryAddr;
// start starts its sync loop.
func newReplicaHandle[V any](n *node[V], t transport.Transport, primaryAddr string, cfg config, opts []Option) *Replica[V] {
	name := cfg.replicaName
	if name == "" {
		name = randomHex(8)
	}
	r := &Replica[V]{
		n:         n,
		cfg:       cfg,
		opts:      opts,
		t:         t,
		name:      name,
		instance:  randomHex(8),
		addr:      primaryAddr,
		synced:    newSignal(),
		promotion: newSignal(),
		closedCh:  make(chan struct{}),
	}
	if cfg.advertiseAddr != "" {
		r.advertise.Store(&cfg.advertiseAddr)
	}
	r.log = cfg.logger.With("replica", name)
	n.log.Store(r.log)
	n.stale.Store(false)
	n.setOwner(r, roleReplica)
	r.state.Store(StateConnecting)
	return r
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// start starts the sync loop against r.addr. The caller holds r.mu, or
// has r to itself.
func (r *Replica[V]) start() {
	ctx, cancel := context.WithCancelCause(r.n.ctx)
	done := make(chan struct{})
	r.cancel, r.done = cancel, done
	r.state.Store(StateConnecting)
	go r.run(ctx, r.addr, r.synced, done)
}

// stop stops the sync loop and waits for it. The caller holds opMu, not
// mu (the loop may take mu on its way out).
func (r *Replica[V]) stop() {
	r.mu.Lock()
	cancel, done := r.cancel, r.done
	r.cancel = nil
	r.mu.Unlock()
	if cancel == nil {
		return
	}
	cancel(ErrClosed)
	<-done
	r.linkUp.Store(false)
}

// Get returns the value stored under key and whether it was there.
func (r *Replica[V]) Get(key string) (V, bool) { return r.n.data().store.get(key) }

// Set returns ErrReadOnly: replicas take writes only from their primary.
func (r *Replica[V]) Set(key string, value V) error { return ErrReadOnly }

// Delete returns ErrReadOnly: replicas take writes only from their primary.
func (r *Replica[V]) Delete(key string) error { return ErrReadOnly }

// Len returns the number of keys.
func (r *Replica[V]) Len() int { return r.n.data().store.len() }

// All returns an iterator over the keys and values, with the same
// guarantees as [Primary.All]. A full sync that completes during the walk
// does not affect it: the walk finishes over the data it started on.
func (r *Replica[V]) All() iter.Seq2[string, V] { return r.n.data().store.all() }

// Offset returns the replication offset of the last write applied to the
// data the Replica serves.
func (r *Replica[V]) Offset() uint64 { return r.n.data().offset() }

// WaitSynced blocks until the Replica has completed a sync with its
// current primary (the one given to NewReplica, or to the last Follow),
// so that it serves a copy of that primary's data. It returns nil once
// synced, even after Close; ctx.Err() if ctx is done first; ErrClosed if
// the Replica is closed first.
func (r *Replica[V]) WaitSynced(ctx context.Context) error {
	r.mu.Lock()
	synced := r.synced
	r.mu.Unlock()
	if synced.fired() {
		return nil
	}
	select {
	case <-synced.ch:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-r.closedCh:
		if synced.fired() {
			return nil
		}
		return ErrClosed
	}
}

// WaitOffset blocks until the Replica has applied the stream up to offset,
// so that it shows every write a primary made before it reported that
// offset: for read-your-writes, pass the Primary's Offset read after the
// write. It returns nil at once if r.Offset() >= offset already, ctx.Err()
// if ctx ends first, and ErrClosed if r is closed first.
func (r *Replica[V]) WaitOffset(ctx context.Context, offset uint64) error {
	if r.Offset() >= offset {
		return nil
	}
	ch := r.n.offsets.add(offset)
	defer r.n.offsets.remove(ch)
	if r.Offset() >= offset { // advanced before the waiter was listed
		return nil
	}
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-r.closedCh:
		if r.Offset() >= offset {
			return nil
		}
		return ErrClosed
	}
}

// Serve serves sub-replicas on l, the way a Primary serves replicas: they
// receive exactly the bytes this Replica receives, with the same
// replication IDs and offsets, and resume partially from this Replica's
// own backlog ([WithBacklogSize]). A Replica serves from the data it has,
// also while its own link is down (its sub-replicas are then as far
// behind as it is); one that has never synced refuses them until it has.
// When its history changes (a full sync, its primary's promotion) it
// drops its sub-replicas, which reconnect at once and follow into the new
// history. A primary's Wait counts its direct replicas only.
//
// The listener outlives role changes: after Promote, the Primary serves
// it, and Serve returns only when the object that serves l last is
// closed. (So a Serve that starts only after a promotion, as a goroutine
// may, serves for the Primary r became.) It returns ErrClosed then,
// ErrClosed at once if r is closed and was not promoted, or l's error.
func (r *Replica[V]) Serve(l net.Listener) error {
	addr := l.Addr().String()
	r.advertise.CompareAndSwap(nil, &addr) // the first listener, unless WithAdvertiseAddr
	return r.n.serve(l)
}

// advertised returns the address this replica tells its upstream.
func (r *Replica[V]) advertised() string {
	if a := r.advertise.Load(); a != nil {
		return *a
	}
	return ""
}

// Info returns a snapshot of the Replica's state.
func (r *Replica[V]) Info() ReplicaInfo {
	d := r.n.data()
	r.mu.Lock()
	addr := r.addr
	r.mu.Unlock()
	end := d.offset()
	info := ReplicaInfo{
		State:          r.state.Load().(ReplicaState),
		ReplID:         d.hist.replID,
		ReplID2:        d.hist.replID2,
		ReplID2Offset:  d.hist.replID2Offset,
		Epoch:          r.n.maxEpoch.Load(),
		Offset:         end,
		DiscardedBytes: r.discarded.Load(),
		Primary:        addr,
		LinkUp:         r.linkUp.Load(),
		FullSyncs:      r.fullSyncs.Load(),
		PartialSyncs:   r.partialSyncs.Load(),
		Connects:       r.connects.Load(),
		SyncKeys:       int(r.syncKeys.Load()),
		Keys:           d.store.len(),
		Replicas:       r.n.linkInfo(end),
		DurableOffset:  r.n.durable(),
	}
	if ns := r.lastIO.Load(); ns != 0 {
		info.LastIO = time.Unix(0, ns)
	}
	r.errMu.Lock()
	info.LastError = r.lastErr
	r.errMu.Unlock()
	return info
}

// Close stops syncing, closes the link and every sub-replica link and
// listener, and returns once the Replica's goroutines have exited. The
// data stays readable. A second Close returns nil, and so does Close after
// Promote, which has closed r already.
func (r *Replica[V]) Close() error {
	r.opMu.Lock()
	defer r.opMu.Unlock()
	r.mu.Lock()
	r.closing = true
	r.mu.Unlock()
	r.stop()
	r.closeHandle()
	return r.n.closeIfOwner(r)
}

// closeHandle marks r closed. The sync loop has stopped.
func (r *Replica[V]) closeHandle() {
	if !r.isClosed.Swap(true) {
		r.linkUp.Store(false)
		r.state.Store(StateClosed)
		close(r.closedCh)
	}
}

// setErr records why the last attempt failed.
func (r *Replica[V]) setErr(err error) {
	r.errMu.Lock()
	r.lastErr = err
	r.errMu.Unlock()
}

// run connects, syncs and streams until ctx ends, reconnecting with
// jittered exponential backoff. The backoff restarts after a session that
// made progress (applied a write or completed a sync: a CONTINUE alone
// is not progress, or a replica that cannot apply its primary's records
// would reconnect in a tight loop); an upstream whose history changed is
// reconnected to at once, if the session before had streamed.
func (r *Replica[V]) run(ctx context.Context, addr string, synced *signal, done chan struct{}) {
	defer close(done)
	attempt := 0
	immediate := false
	for {
		r.state.Store(StateConnecting)
		progress, streamed, err := r.session(ctx, addr, synced, done)
		r.linkUp.Store(false)
		if ctx.Err() != nil || errors.Is(err, errPromoted) {
			return
		}
		r.setErr(err)
		r.log.Info("link to primary lost", "primary", addr, "err", err)
		if progress {
			attempt = 0
		}
		if errors.Is(err, errHistoryChanged) && (streamed || !immediate) {
			// At once, but only once until a session streams again: an
			// upstream that keeps changing history without ever
			// streaming gets the backoff.
			immediate = true
			continue
		}
		immediate = false
		t := time.NewTimer(backoff(attempt, r.cfg.reconnectMin, r.cfg.reconnectMax))
		attempt++
		select {
		case <-t.C:
		case <-ctx.Done():
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
// it made progress, and why it ended.
func (r *Replica[V]) session(ctx context.Context, addr string, synced *signal, loop chan struct{}) (progress, streamed bool, err error) {
	dctx, dcancel := context.WithTimeout(ctx, r.cfg.linkTimeout)
	conn, err := r.t.Dial(dctx, addr)
	dcancel()
	if err != nil {
		return false, false, linkError("dial", addr, err)
	}
	r.connects.Add(1)
	r.linkUp.Store(true)

	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	defer closeWhenDone(ctx, conn)()
	defer conn.Close()

	dc := &deadlineConn{Conn: conn, timeout: r.cfg.linkTimeout}
	cur := r.n.data()
	h := hello{
		version:     protocolVersion,
		replID:      cur.hist.replID,
		offset:      cur.offset(),
		name:        r.name,
		instance:    r.instance,
		epoch:       r.n.maxEpoch.Load(),
		fingerprint: typeFingerprint[V](),
		maxFrame:    r.cfg.maxFrameSize,
	}
	if _, err := dc.Write(appendHello(nil, h)); err != nil {
		return false, false, linkError("handshake", addr, err)
	}

	s := &replicaSession[V]{
		r:      r,
		n:      r.n,
		addr:   addr,
		synced: synced,
		loop:   loop,
		fr:     newFrameReader(dc, r.cfg.maxFrameSize),
		w:      dc,
	}
	s.fr.timeout = r.cfg.linkTimeout
	var wg sync.WaitGroup
	wg.Go(func() { cancel(s.heartbeat(ctx)) })
	cancel(s.receive())
	wg.Wait()
	streamed = s.streaming.Load()
	if err := context.Cause(ctx); !errors.Is(err, ErrClosed) {
		return s.progress, streamed, err
	}
	return s.progress, streamed, ErrClosed
}

// replicaSession is the state of one connection to the primary.
type replicaSession[V any] struct {
	r      *Replica[V]
	n      *node[V]
	addr   string
	synced *signal
	loop   chan struct{} // the sync loop's done channel, naming the loop
	fr     *frameReader
	frames uint64 // read so far

	// wmu serialises writes: ACKs written by the receiving goroutine on
	// GETACK, and the heartbeat's.
	wmu    sync.Mutex
	w      io.Writer
	ackBuf []byte
	listen string // the address last advertised upstream

	// streaming is set once the data being served is the data this
	// session updates, so ACKs report offsets in the primary's stream.
	streaming atomic.Bool
	progress  bool // applied a write to the data served, or completed a sync

	target  *dataset[V]        // the data the stream applies to
	loader  *snapshotLoader[V] // loads target's store until END
	pending bool               // target is a loaded snapshot not yet served
	until   uint64             // offset at which a pending snapshot is exact

	// snap records a full sync's stream, which is a snapshot in the
	// backup format, as the data directory's next generation gen.
	snap *snapshotFile
	gen  uint64

	ops []op       // scratch for the record being applied
	ws  []write[V] // and for its writes
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
	t, payload, _, err := s.next()
	if err != nil {
		return linkError("handshake", s.addr, err)
	}
	if dd := s.n.disk; dd != nil {
		// A directory that failed stops writes for good: neither a
		// partial resync nor a full sync may apply anything more
		// (the data in memory would run ahead of the disk, one record
		// per reconnect).
		if err := dd.failed(); err != nil {
			return linkError("handshake", s.addr, err)
		}
	}
	switch t {
	case frameContinue:
		if err := s.resume(payload); err != nil {
			return linkError("handshake", s.addr, err)
		}
	case frameFull:
		if err := s.startSnapshot(payload); err != nil {
			return linkError("sync", s.addr, err)
		}
	case frameError:
		return linkError("handshake", s.addr, errorFromFrame(payload))
	default:
		return linkError("handshake", s.addr, fmt.Errorf("%w: unexpected %s in handshake", ErrProtocol, t))
	}
	err = s.stream()
	if s.snap != nil { // a full sync cut short
		s.snap.abort()
		_ = s.snap.fsys.RemoveAll(s.snap.dir)
		s.snap = nil
	}
	if s.loader != nil {
		return linkError("sync", s.addr, err)
	}
	return linkError("stream", s.addr, err)
}

// checkEpoch refuses an upstream of an older epoch than one seen (H2).
func (s *replicaSession[V]) checkEpoch(st syncStart) error {
	if seen := s.n.maxEpoch.Load(); st.epoch < seen {
		return fmt.Errorf("%w: primary is at epoch %d, this replica has seen %d", ErrStaleEpoch, st.epoch, seen)
	}
	return nil
}

// resume handles CONTINUE: the stream goes on from this replica's offset,
// in the history it holds or in one that continues it, which the replica
// then takes on (its old ID becomes ReplID2, up to where the upstream
// says the histories part).
func (s *replicaSession[V]) resume(payload []byte) error {
	n := s.n
	st, err := parseSyncStart(frameContinue, payload)
	if err != nil {
		return err
	}
	if err := s.checkEpoch(st); err != nil {
		return err
	}
	n.writeMu.Lock()
	cur := n.data()
	off := cur.offset()
	if st.offset != off || !st.history().covers(cur.hist.replID, off) {
		n.writeMu.Unlock()
		return fmt.Errorf("%w: CONTINUE at %s/%d for a replica at %s/%d",
			ErrProtocol, st.replID, st.offset, cur.hist.replID, off)
	}
	if h := st.history(); h != cur.hist {
		// The upstream's history continues this replica's (its ReplID2
		// is the replica's ID, up to an offset at or past the replica's):
		// take it on whole. Its ReplID2Offset, not this replica's offset,
		// is where the two really part, so siblings and sub-replicas
		// that hold the old history up to there can still resume from
		// this replica, and a later full sync counts exactly what it
		// discards.
		next := &dataset[V]{store: cur.store, backlog: cur.backlog, hist: h}
		n.swap(next)
		cur = next
	}
	n.writeMu.Unlock()
	n.seeEpoch(st.epoch)
	s.r.partialSyncs.Add(1)
	s.target = cur
	s.startStreaming()
	// Tell the upstream at once where this replica is, so that a Wait
	// that overlaps the reconnect need not wait for a heartbeat.
	return s.writeAck()
}

// startSnapshot begins a full sync: CHUNKs load into a fresh store, which
// the stream updates as records arrive, and which is served only once END
// has checked it and the stream has brought it to END's offset (see
// stream). It refuses a sync that would lose this replica's data (H4).
func (s *replicaSession[V]) startSnapshot(full []byte) error {
	r, n := s.r, s.n
	st, err := parseSyncStart(frameFull, full)
	if err != nil {
		return err
	}
	if err := s.checkEpoch(st); err != nil {
		return err
	}
	cur := n.data()
	if off := cur.offset(); off > 0 && !r.cfg.allowDataLoss &&
		st.replID != cur.hist.replID && st.replID2 != cur.hist.replID &&
		st.offset < off && st.epoch <= n.maxEpoch.Load() {
		return fmt.Errorf("%w: primary offers history %s at offset %d (epoch %d), unrelated to this replica's %s at %d (epoch %d)",
			ErrWouldLoseData, st.replID, st.offset, st.epoch, cur.hist.replID, off, n.maxEpoch.Load())
	}
	if dd := n.disk; dd != nil {
		if s.snap, s.gen, err = beginGen(dd, n); err != nil {
			return err
		}
		s.tee()
	}
	n.seeEpoch(st.epoch)
	r.state.Store(StateSyncing)
	r.syncKeys.Store(0)
	s.loader = newSnapshotLoader[V](r.cfg.maxKeySize, r.cfg.maxValueSize, r.cfg.maxSnapshot, sizeHint(st.keys, r.cfg.maxSnapshot))
	s.target = &dataset[V]{store: s.loader.store, backlog: newBacklog(r.cfg, st.offset), hist: st.history()}
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
	if from := s.target.offset(); end.offset < from {
		return fmt.Errorf("%w: snapshot ends at offset %d before the %d already streamed", ErrProtocol, end.offset, from)
	}
	s.loader = nil
	s.pending, s.until = true, end.offset
	return s.maybeSwap()
}

// maybeSwap serves the pending snapshot once it is exact.
func (s *replicaSession[V]) maybeSwap() error {
	if !s.pending || s.target.offset() < s.until {
		return nil
	}
	r, n := s.r, s.n
	s.pending = false
	var err error
	if s.snap != nil {
		_, err = s.snap.finish(s.until)
	}
	n.writeMu.Lock()
	if s.snap != nil {
		if err == nil {
			err = n.disk.commitGen(s.snap, s.gen, s.until, s.target.hist)
		}
		if err != nil {
			n.writeMu.Unlock()
			return n.disk.fail(err)
		}
		s.snap = nil
	}
	s.target.store.private = false // published by the swap below
	s.target.backlog.served = s.until
	old := n.data()
	if shared, ok := sharedPrefix(old.hist, s.target.hist); ok && old.offset() > shared {
		// This replica was ahead of the new primary in the history they
		// share (a sibling that had writes the promoted one lacked):
		// those writes are gone now.
		lost := old.offset() - shared
		r.discarded.Add(lost)
		r.log.Warn("full sync discarded writes this replica had beyond the new primary's history",
			"bytes", lost, "history", old.hist.replID, "from", shared, "to", old.offset())
	}
	// Counted before the swap: once the new data is served (and
	// WaitOffset returns), Info must already count the sync that brought it.
	r.fullSyncs.Add(1)
	n.swap(s.target)
	n.writeMu.Unlock()
	r.syncKeys.Store(0)
	s.progress = true
	s.startStreaming()
	// Tell the primary at once, so a Wait need not wait for a heartbeat.
	return s.writeAck()
}

// tee records the frame just read in the full sync's snapshot file. A
// failure to write it shows when the snapshot is finished.
func (s *replicaSession[V]) tee() {
	head, rest := s.fr.raw()
	s.snap.w.Write(head)
	s.snap.w.Write(rest)
}

// sharedPrefix returns how far the replica's history mine and the
// primary's history theirs are known to share a prefix: theirs continues
// mine, or both continue the same earlier history.
func sharedPrefix(mine, theirs history) (uint64, bool) {
	switch {
	case mine.replID == "":
		return 0, false
	case theirs.replID2 == mine.replID:
		return theirs.replID2Offset, true
	case mine.replID2 != "" && theirs.replID2 == mine.replID2:
		return min(mine.replID2Offset, theirs.replID2Offset), true
	}
	return 0, false
}

func (s *replicaSession[V]) startStreaming() {
	s.streaming.Store(true)
	s.r.state.Store(StateStreaming)
	s.synced.fire()
}

// apply applies one data record to the target data and appends its bytes
// to the target's backlog, under the node's write lock, so that the
// bytes sub-replicas get are exactly the ones received. A TX is applied
// whole or, if a value in it does not decode, not at all.
func (s *replicaSession[V]) apply(t frameType, payload []byte) error {
	r, n := s.r, s.n
	var err error
	s.ops, err = parseOps(s.ops[:0], t, payload, r.cfg.maxKeySize, r.cfg.maxValueSize)
	if err != nil {
		return err
	}
	head, rest := s.fr.raw()
	n.writeMu.Lock()
	if s.ws, err = applyOps(s.target.store, s.ops, s.ws); err != nil {
		n.writeMu.Unlock()
		return err
	}
	err = n.appendRecord(s.target, head, rest)
	serving := n.data() == s.target
	end := s.target.offset()
	n.writeMu.Unlock()
	if serving {
		s.progress = true
		n.wakeLinks()
		n.offsets.notify(end)
		if err == nil && n.disk != nil {
			// FsyncAlways: once per batch of frames read together, so
			// a replica shares its fsyncs the way writers do.
			if n.disk.policy != FsyncAlways || s.fr.r.Buffered() == 0 {
				err = n.disk.afterWrite(end)
			}
		}
	}
	if err != nil {
		return err
	}
	return s.maybeSwap()
}

// stream applies data records to the target data until the link fails,
// and loads the snapshot whose CHUNKs come between them during a full
// sync. Each record is decoded and checked whole before it is applied.
func (s *replicaSession[V]) stream() error {
	r := s.r
	for {
		t, payload, _, err := s.next()
		if err != nil {
			return err
		}
		if s.snap != nil && (isDataRecord(t) || t == frameChunk || t == frameChunkX || t == frameEnd) {
			s.tee()
		}
		switch t {
		case frameSet, frameDel, frameSetX, frameTx:
			if err := s.apply(t, payload); err != nil {
				return err
			}
		case frameChunk, frameChunkX:
			if s.loader == nil {
				return fmt.Errorf("%w: %s outside a snapshot", ErrProtocol, t)
			}
			if err := s.loader.chunk(t, payload); err != nil {
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
			if len(payload) > 0 && payload[0]&getAckDurable != 0 && s.n.disk != nil && s.n.data() == s.target {
				if err := s.n.disk.sync(); err != nil {
					return err
				}
			}
			if s.streaming.Load() {
				if err := s.writeAck(); err != nil {
					return err
				}
			}
		case frameFailover:
			if err := s.failover(payload); err != nil {
				return err
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
			return linkError("stream", s.addr, err)
		}
	}
}

// writeAck writes an ACK of the offset applied so far, after a LISTEN if
// the address this replica advertises changed.
func (s *replicaSession[V]) writeAck() error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	s.ackBuf = s.ackBuf[:0]
	if addr := s.r.advertised(); addr != s.listen {
		s.listen = addr
		s.ackBuf = appendStringFrame(s.ackBuf, frameListen, addr)
	}
	var durable uint64
	if s.n.data() == s.target {
		durable = s.n.durable()
	}
	s.ackBuf = appendAck(s.ackBuf, s.target.offset(), durable)
	_, err := s.w.Write(s.ackBuf)
	return err
}

// failover handles FAILOVER: the primary hands its role to this replica,
// which must be streaming at exactly the primary's offset. It promotes
// the replica, tells the primary, and ends the session. A FAILOVER this
// replica cannot follow is ignored: the primary gives up and rolls back.
func (s *replicaSession[V]) failover(payload []byte) error {
	offset, epoch, err := parseFailover(payload)
	if err != nil {
		return err
	}
	if !s.streaming.Load() || s.n.data() != s.target || s.target.offset() != offset {
		s.r.log.Warn("handover refused: not at the primary's offset", "offset", s.target.offset(), "primary_offset", offset)
		return nil
	}
	p, err := s.r.promoteByUpstream(s.loop, epoch)
	if err != nil {
		s.r.log.Warn("handover refused", "err", err)
		return nil
	}
	s.streaming.Store(false) // no more ACKs: this node writes its own history now
	s.wmu.Lock()
	_, err = s.w.Write(appendStringFrame(nil, framePromoted, p.ReplID()))
	s.wmu.Unlock()
	if err != nil {
		s.r.log.Warn("promoted, but could not tell the old primary", "err", err)
		return errPromoted
	}
	// Let the old primary close the link once it has read PROMOTED: a
	// close from this end could race its reading of it. Whatever else
	// comes (keep-alives) is ignored; the link timeout bounds the wait.
	for {
		if _, _, _, err := s.next(); err != nil {
			return errPromoted
		}
	}
}
