package replmap

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// errReplaced ends a link whose replica connected again.
var errReplaced = errors.New("replmap: replaced by a newer link from the same replica")

// errHistoryChanged ends the links of a node whose history changed (a
// full sync, a promotion, a shift to the upstream's new history): the
// replicas reconnect at once and learn the new history.
var errHistoryChanged = errors.New("replmap: history changed; reconnect")

// link is a node's end of one downstream replica connection. Two
// goroutines serve it: the sender writes the snapshot, the stream and
// keep-alives; the receiver reads ACKs. Whichever fails first cancels the
// link, which closes the connection and so stops the other.
type link[V any] struct {
	n        *node[V]
	d        *dataset[V] // the data whose stream the link sends
	addr     string
	name     string // the replica's name: one link per name
	instance string // the replica's random instance ID: tells a restarted or duplicate replica of one name apart
	cancel   context.CancelCauseFunc

	wake   chan struct{} // the stream grew
	getack chan struct{} // a Wait wants an ACK and could not write it itself
	acks   chan struct{} // the acknowledged offset advanced (for a handover)
	gone   chan struct{} // closed when the link has ended

	listenMu sync.Mutex
	listen   string // the address the replica advertises (LISTEN)

	failover atomic.Bool // a FAILOVER was sent: PROMOTED may come
	promoted *signal     // fired on PROMOTED

	// ending, once set, is where the link's stream ends: the sender
	// writes the stream up to it, then an ERROR telling the replica to
	// reconnect, and ends the link with its error (see drop). stopped is
	// closed when it is set.
	ending  atomic.Pointer[linkEnd]
	stopped chan struct{}

	// wmu guards the connection's write side: bw and cur. The sender holds
	// it while it writes; a Wait, or the receiver on an ACK, takes it only
	// if it is free, to write a GETACK at once (see requestAck).
	wmu    sync.Mutex
	bw     *bufio.Writer
	cur    *cursor     // position in the backlog
	active atomic.Bool // something was written since the last heartbeat

	// ackMu guards the GETACK state: at most one GETACK is outstanding per
	// link; Waits that need more while it is out are served by one more
	// GETACK sent when its ACK comes back, so one round trip serves every
	// waiter that arrived during the previous one.
	ackMu    sync.Mutex
	inflight bool // a GETACK was requested and its ACK has not come
	more     bool // a Wait needs a GETACK after the one in flight

	maxFrame    int           // the largest frame the replica reads
	sent        atomic.Uint64 // stream offset handed to the connection
	asked       atomic.Uint64 // stream offset the last GETACK followed
	ack         atomic.Int64  // highest offset acknowledged; -1 before the first ACK
	durable     atomic.Uint64 // highest offset the replica reported on disk
	wantDurable atomic.Bool   // a WaitDurable asked: the next GETACK asks for an fsync
	lastAck     atomic.Int64  // UnixNano of the last ACK
	streaming   atomic.Bool   // snapshot done
	ackable     atomic.Bool   // the sync's last frame (CONTINUE or END) is being sent: ACKs may come
	connectedAt time.Time
}

// linkEnd is where a link's stream ends, and why.
type linkEnd struct {
	offset uint64
	err    error
}

// drop ends the link because its node's history ended at the current
// end of the stream. The caller holds the node's writeMu, so nothing is
// appended meanwhile: the replica gets the stream exactly up to the
// change, then an ERROR that makes it reconnect at once.
func (l *link[V]) drop(err error) { l.endAt(l.d.backlog.end.Load(), err) }

// endAt makes offset the end of the link's stream, unless it has one.
func (l *link[V]) endAt(offset uint64, err error) {
	if l.ending.CompareAndSwap(nil, &linkEnd{offset, err}) {
		close(l.stopped)
	}
}

// listenAddr returns the address the replica advertises, "" if none.
func (l *link[V]) listenAddr() string {
	l.listenMu.Lock()
	defer l.listenMu.Unlock()
	return l.listen
}

// evict drops a link that fell too far behind, at once: its sender may be
// blocked writing to a replica that stopped reading.
func (l *link[V]) evict(err error) {
	l.n.droppedSlow.Add(1)
	l.cancel(err)
}

// acked returns the offset the replica acknowledged, if it has.
func (l *link[V]) acked() (uint64, bool) {
	a := l.ack.Load()
	return uint64(a), a >= 0
}

func (l *link[V]) info(end uint64) ReplicaLink {
	ri := ReplicaLink{
		ID:          l.name,
		Addr:        l.addr,
		Listen:      l.listenAddr(),
		State:       LinkSyncing,
		SentOffset:  l.sent.Load(),
		ConnectedAt: l.connectedAt,
	}
	if l.streaming.Load() {
		ri.State = LinkStreaming
	}
	ri.DurableOffset = l.durable.Load()
	if off, ok := l.acked(); ok {
		ri.AckOffset = off
		ri.LastAck = time.Unix(0, l.lastAck.Load())
	}
	if end > ri.AckOffset {
		ri.Lag = end - ri.AckOffset
	}
	return ri
}

// maxInboundFrame bounds the frames a node reads from a downstream
// replica: HELLO, ACK and PING are all small, so a hostile replica cannot
// make the node buffer a data-sized frame.
const maxInboundFrame = 4 << 10

// serveLink runs one downstream connection from handshake to close. The
// caller has taken a handshake slot; serveLink gives it back once the
// handshake is over.
func (n *node[V]) serveLink(conn net.Conn) {
	ctx, cancel := context.WithCancelCause(n.ctx)
	defer cancel(nil)
	defer closeWhenDone(ctx, conn)()
	defer conn.Close()

	addr := conn.RemoteAddr().String()
	dc := &deadlineConn{Conn: conn, timeout: n.cfg.linkTimeout}
	fr := newFrameReader(dc, maxInboundFrame)
	fr.timeout = n.cfg.linkTimeout
	l, err := n.handshake(fr, dc, addr, cancel)
	n.handshakes.Release(1)
	if err != nil {
		n.logger().Info("replica handshake failed", "addr", addr, "err", linkError("handshake", addr, err))
		return
	}
	log := n.logger().With("replica", l.name, "addr", addr)
	log.Debug("replica connected", "partial", l.cur != nil, "offset", l.sent.Load())

	var wg sync.WaitGroup
	wg.Go(func() { cancel(l.receive(fr)) })
	cancel(l.send(ctx, dc))
	wg.Wait()

	n.removeLink(l)
	close(l.gone)
	l.wmu.Lock() // wait out a GETACK being written by a Wait
	l.streaming.Store(false)
	if l.cur != nil {
		l.d.backlog.release(l.cur)
	}
	l.wmu.Unlock()
	if err := context.Cause(ctx); !errors.Is(err, ErrClosed) && !errors.Is(err, errHistoryChanged) {
		log.Info("replica link closed", "err", err)
	}
}

// handshake reads the replica's HELLO, checks it, and registers the link:
// with a cursor where the replica can continue (a partial resync), without
// one for a full sync. It refuses, with an ERROR frame saying why, a
// replica of another protocol version or value type, one of a newer epoch
// (which also makes a primary stale, H3), and any replica while this node
// has no history to serve (a replica that never synced).
func (n *node[V]) handshake(fr *frameReader, w io.Writer, addr string, cancel context.CancelCauseFunc) (*link[V], error) {
	refuse := func(code uint16, err error) (*link[V], error) {
		_, _ = w.Write(appendErrorFrame(nil, code))
		return nil, err
	}
	h, err := readHello(fr)
	if err != nil {
		if errors.Is(err, ErrVersion) {
			return refuse(codeVersion, err)
		}
		return nil, err
	}
	if fp := typeFingerprint[V](); h.fingerprint != fp {
		return refuse(codeType, fmt.Errorf("%w: replica's value type has fingerprint %016x, this node's %016x", ErrTypeMismatch, h.fingerprint, fp))
	}
	if mine := n.maxEpoch.Load(); h.epoch > mine {
		if n.currentRole() == rolePrimary && !n.stale.Swap(true) {
			n.logger().Warn("a replica has seen a newer epoch: this primary is stale and refuses writes", "epoch", mine, "replica_epoch", h.epoch, "addr", addr)
		}
		return refuse(codeStaleEpoch, fmt.Errorf("%w: replica has seen epoch %d, this node is at %d", ErrStaleEpoch, h.epoch, mine))
	}

	l := &link[V]{
		n:           n,
		addr:        addr,
		name:        h.name,
		instance:    h.instance,
		cancel:      cancel,
		wake:        make(chan struct{}, 1),
		getack:      make(chan struct{}, 1),
		acks:        make(chan struct{}, 1),
		gone:        make(chan struct{}),
		promoted:    newSignal(),
		stopped:     make(chan struct{}),
		connectedAt: time.Now(),
	}
	l.ack.Store(-1)
	// Decide and register under writeMu: the history and the backlog
	// cannot change in between, and a swap that follows sees the link.
	n.writeMu.Lock()
	d := n.data()
	if d.hist.replID == "" {
		n.writeMu.Unlock()
		return refuse(codeNotSynced, fmt.Errorf("%w: this replica has no data to serve yet", ErrNotSynced))
	}
	l.d = d
	if d.hist.covers(h.replID, h.offset) {
		if c, ok := d.backlog.newCursor(h.offset, l.evict); ok {
			l.cur = c
			l.sent.Store(h.offset)
		}
	}
	l.maxFrame = h.maxFrame
	if err := n.addLink(l); err != nil {
		n.writeMu.Unlock()
		if l.cur != nil {
			d.backlog.release(l.cur)
		}
		return refuse(codeDuplicateName, err)
	}
	n.writeMu.Unlock()
	return l, nil
}

func readHello(fr *frameReader) (hello, error) {
	t, payload, _, err := fr.next()
	if err != nil {
		return hello{}, err
	}
	if t != frameHello {
		return hello{}, fmt.Errorf("%w: expected HELLO, got %s", ErrProtocol, t)
	}
	return parseHello(payload)
}

// send writes the sync start (a snapshot, or CONTINUE), then the stream
// from the link's cursor, GETACKs when a Wait asks, and a PING on every
// heartbeat in which nothing else was sent.
func (l *link[V]) send(ctx context.Context, w io.Writer) error {
	n := l.n
	l.wmu.Lock()
	l.bw = bufio.NewWriterSize(w, 64<<10)
	var err error
	if l.cur == nil {
		n.fullSyncs.Add(1)
		_, err = l.sendSnapshot(ctx, l.bw)
	} else {
		n.partialSyncs.Add(1)
		l.ackable.Store(true)
		_, err = l.bw.Write(appendSyncStart(nil, frameContinue, l.start(l.cur.pos)))
	}
	l.wmu.Unlock()
	if err != nil {
		return linkError("sync", l.addr, err)
	}
	l.streaming.Store(true)
	// A Wait that began before this link was streaming asked the old
	// link, or none: ask this one now rather than a heartbeat later.
	if target, ok := n.waits.maxTarget(); ok {
		l.requestAck(target)
	}
	if target, ok := n.durableWaits.maxTarget(); ok {
		l.requestDurableAck(target)
	}

	ticker := time.NewTicker(n.cfg.heartbeat)
	defer ticker.Stop()
	var getack, ping bool
	for {
		if err := l.sendPending(getack, ping); err != nil {
			return linkError("stream", l.addr, err)
		}
		getack, ping = false, false
		select {
		case <-ctx.Done():
			return nil
		case <-l.stopped:
			return l.finish()
		case <-l.wake:
			// Let the writers that are ready to run append their records
			// first, so that one system call carries them all. With no
			// other goroutine to run this returns at once.
			runtime.Gosched()
		case <-l.getack:
			getack = true
		case <-ticker.C:
			ping = !l.active.Swap(false)
		}
	}
}

// start returns the FULL or CONTINUE payload for a stream starting at
// offset, in the link's history.
func (l *link[V]) start(offset uint64) syncStart { return l.d.hist.syncStart(offset) }

// finish ends a dropped link: the stream up to where its history ended,
// then an ERROR that tells the replica to reconnect at once.
func (l *link[V]) finish() error {
	err := l.ending.Load().err
	l.wmu.Lock()
	defer l.wmu.Unlock()
	if ferr := l.flush(false, false); ferr != nil {
		return linkError("stream", l.addr, ferr)
	}
	_, _ = l.bw.Write(appendErrorFrame(nil, codeReconnect))
	_ = l.bw.Flush()
	return err
}

// sendPending writes the stream, and the GETACK or PING asked for. With
// only the stream to write it gives way to a Wait that holds the write
// side: that Wait writes the stream too, and wakes the sender if it grew
// meanwhile, so queueing behind it would only cost a hand-off.
func (l *link[V]) sendPending(getack, ping bool) error {
	if getack || ping {
		l.wmu.Lock()
	} else if !l.wmu.TryLock() {
		return nil
	}
	defer l.wmu.Unlock()
	return l.flush(getack, ping)
}

// flush writes the stream up to the backlog's end, then a GETACK or a
// PING if asked, and flushes. The caller holds wmu.
func (l *link[V]) flush(getack, ping bool) error {
	wrote, err := l.drain(l.bw)
	if err != nil {
		return err
	}
	if getack {
		// The replica answers after applying everything before the
		// GETACK, so its ACK covers every Wait whose target is at or
		// below asked.
		l.asked.Store(l.cur.pos)
		if l.wantDurable.Swap(false) {
			_, _ = l.bw.Write(getAckDurableFrame)
		} else {
			_, _ = l.bw.Write(getAckFrame)
		}
		wrote = true
	}
	if ping {
		_, _ = l.bw.Write(pingFrame)
	}
	if wrote {
		l.active.Store(true)
	}
	if l.bw.Buffered() > 0 {
		return l.bw.Flush()
	}
	return nil
}

// requestAck asks the replica to acknowledge target, unless it has or a
// GETACK that will cover it is already out. If the write side is free it
// writes the GETACK on the calling goroutine, which saves waking the
// sender: a Wait's round trip is then one network round trip.
func (l *link[V]) requestAck(target uint64) {
	if off, ok := l.acked(); ok && off >= target {
		return
	}
	l.askForAck(l.asked.Load() < target)
}

// requestDurableAck asks the replica to make target durable and say so,
// unless it has: as requestAck, with the fsync flag on the next GETACK.
func (l *link[V]) requestDurableAck(target uint64) {
	if l.durable.Load() >= target {
		return
	}
	l.wantDurable.Store(true)
	l.askForAck(true) // the GETACK out may lack the flag
}

// askForAck sends a GETACK, or, if one is out, has another sent when its
// ACK comes back if again (the one out does not serve the caller).
func (l *link[V]) askForAck(again bool) {
	l.ackMu.Lock()
	if l.inflight {
		if again {
			l.more = true
		}
		l.ackMu.Unlock()
		return
	}
	l.inflight = true
	l.ackMu.Unlock()
	l.sendGetAck()
}

func (l *link[V]) wakeSender() {
	select {
	case l.wake <- struct{}{}:
	default:
	}
}

func (l *link[V]) inlineOK() bool {
	ack, ok := l.acked()
	sent := l.sent.Load()
	return ok && l.streaming.Load() &&
		l.d.backlog.end.Load()-sent <= inlineMaxPending && sent-ack <= inlineMaxUnacked
}

// acknowledged updates the GETACK state for an ACK of off, sending the
// next GETACK if Waits asked for one while the last was out.
func (l *link[V]) acknowledged(off uint64) {
	l.ackMu.Lock()
	if !l.inflight || off < l.asked.Load() {
		l.ackMu.Unlock()
		return
	}
	next := l.more
	l.inflight, l.more = next, false
	l.ackMu.Unlock()
	if next {
		// The ACK has just released waiters, which will write again and
		// Wait: let those that are ready run first, so this GETACK
		// covers their writes too rather than leave them for the next.
		runtime.Gosched()
		l.sendGetAck()
	}
}

// Limits on writing a GETACK from a Wait's goroutine: the stream still to
// drain, and the bytes sent but not acknowledged. Below them the write fits
// in the socket buffers and does not block even if the replica has just
// stopped reading, so a Wait's timeout is not held up by a stuck replica.
const (
	inlineMaxPending = 16 << 10
	inlineMaxUnacked = 64 << 10
)

// sendGetAck writes a GETACK now if the write side is free, the link is
// streaming and the replica is keeping up; otherwise it leaves it to the
// sender.
func (l *link[V]) sendGetAck() {
	if l.inlineOK() && l.wmu.TryLock() {
		if l.streaming.Load() { // not torn down meanwhile
			err := l.flush(true, false)
			l.wmu.Unlock()
			if err != nil {
				l.cancel(linkError("stream", l.addr, err))
				return
			}
			// The sender may have given way to this write while the
			// stream grew: make sure it looks again.
			if l.d.backlog.end.Load() > l.sent.Load() {
				l.wakeSender()
			}
			return
		}
		l.wmu.Unlock()
	}
	select {
	case l.getack <- struct{}{}:
	default:
	}
}

// drain writes the stream from the link's cursor up to the backlog's end
// as it was on entry (so a Wait that writes inline writes a bounded
// amount), and no further than where the link's history ends. An evicted
// link gets an ERROR frame saying so before it is dropped.
func (l *link[V]) drain(w *bufio.Writer) (wrote bool, err error) {
	end := l.d.backlog.end.Load()
	if e := l.ending.Load(); e != nil {
		end = min(end, e.offset)
	}
	for l.cur.pos < end {
		chunk, err := l.d.backlog.read(l.cur, int(min(end-l.cur.pos, 256<<10)))
		if errors.Is(err, ErrReplicaTooSlow) {
			_, _ = w.Write(appendErrorFrame(nil, codeTooSlow))
			_ = w.Flush()
		}
		if err != nil || len(chunk) == 0 {
			return wrote, err
		}
		// Publish the offset before the bytes can reach the replica, so
		// that its ACK for them is never taken for a lie.
		l.sent.Store(l.cur.pos)
		if _, err := w.Write(chunk); err != nil {
			return wrote, err
		}
		wrote = true
	}
	return wrote, nil
}

var (
	pingFrame   = appendFrame(nil, framePing, nil)
	getAckFrame = appendFrame(nil, frameGetAck, nil)
	// getAckDurableFrame asks the replica to make its data durable before
	// it answers (WaitDurable).
	getAckDurableFrame = appendFrame(nil, frameGetAck, []byte{getAckDurable})
)

// getAckDurable is the GETACK flag byte asking for an fsync first.
const getAckDurable = 1

// receive reads the replica's ACKs and keep-alives until the link fails.
func (l *link[V]) receive(fr *frameReader) error {
	for {
		t, payload, _, err := fr.next()
		if err != nil {
			return linkError("stream", l.addr, err)
		}
		switch t {
		case frameAck:
			off, durable, err := parseAck(payload)
			if err != nil {
				return linkError("stream", l.addr, err)
			}
			if !l.ackable.Load() {
				return linkError("stream", l.addr, fmt.Errorf("%w: ACK before the sync finished", ErrProtocol))
			}
			if sent := l.sent.Load(); off > sent {
				return linkError("stream", l.addr, fmt.Errorf("%w: ACK for offset %d beyond the %d sent", ErrProtocol, off, sent))
			}
			l.lastAck.Store(time.Now().UnixNano())
			if durable = min(durable, off); durable > l.durable.Load() {
				l.durable.Store(durable)
				l.n.durableWaits.notify(l.n.durableCount)
			}
			if int64(off) > l.ack.Load() {
				l.ack.Store(int64(off))
				l.n.ackAdvanced()
				select {
				case l.acks <- struct{}{}:
				default:
				}
			}
			l.acknowledged(off)
		case frameListen:
			addr, err := parseStringFrame(t, payload)
			if err != nil {
				return linkError("stream", l.addr, err)
			}
			l.listenMu.Lock()
			l.listen = addr
			l.listenMu.Unlock()
		case framePromoted:
			if !l.failover.Load() {
				return linkError("stream", l.addr, fmt.Errorf("%w: PROMOTED without a FAILOVER", ErrProtocol))
			}
			l.promoted.fire()
			return linkError("stream", l.addr, errPromoted)
		case framePing:
		default:
			return linkError("stream", l.addr, fmt.Errorf("%w: unexpected %s from replica", ErrProtocol, t))
		}
	}
}

// closeWhenDone closes conn when ctx is done, which unblocks the link's
// reads and writes. The returned release stops that or, if the close has
// already started, waits for it to finish, so that no goroutine outlives
// the link (and Close can promise that every goroutine has exited).
func closeWhenDone(ctx context.Context, conn net.Conn) (release func()) {
	closed := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		conn.Close()
		close(closed)
	})
	return func() {
		if !stop() {
			<-closed
		}
	}
}

// linkError wraps err with the link's context, naming timeouts
// ErrLinkTimeout.
func linkError(op, addr string, err error) error {
	if err == nil {
		return nil
	}
	var le *LinkError
	if errors.As(err, &le) {
		return err
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		err = fmt.Errorf("%w: %w", ErrLinkTimeout, err)
	}
	return &LinkError{Op: op, Addr: addr, Err: err}
}
