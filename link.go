package replmap

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// errReplaced ends a link whose replica connected again.
var errReplaced = errors.New("replmap: replaced by a newer link from the same replica")

// link is the primary's end of one replica connection. Two goroutines
// serve it: the sender writes the snapshot, the stream and keep-alives;
// the receiver reads ACKs. Whichever fails first cancels the link, which
// closes the connection and so stops the other.
type link[V any] struct {
	p      *Primary[V]
	addr   string
	id     string
	cancel context.CancelCauseFunc

	wake   chan struct{} // the stream grew
	getack chan struct{} // a Wait wants an ACK

	cur         *cursor       // position in the backlog; owned by the sender
	sent        atomic.Uint64 // stream offset handed to the connection
	asked       atomic.Uint64 // stream offset the last GETACK followed
	ack         atomic.Int64  // highest offset acknowledged; -1 before the first ACK
	lastAck     atomic.Int64  // UnixNano of the last ACK
	streaming   atomic.Bool   // snapshot done
	connectedAt time.Time
}

// evict drops a link that fell too far behind, at once: its sender may be
// blocked writing to a replica that stopped reading.
func (l *link[V]) evict(err error) {
	l.p.droppedSlow.Add(1)
	l.cancel(err)
}

// acked returns the offset the replica acknowledged, if it has.
func (l *link[V]) acked() (uint64, bool) {
	a := l.ack.Load()
	return uint64(a), a >= 0
}

func (l *link[V]) info(primaryOffset uint64) ReplicaLink {
	ri := ReplicaLink{
		ID:          l.id,
		Addr:        l.addr,
		State:       LinkSyncing,
		SentOffset:  l.sent.Load(),
		ConnectedAt: l.connectedAt,
	}
	if l.streaming.Load() {
		ri.State = LinkStreaming
	}
	if off, ok := l.acked(); ok {
		ri.AckOffset = off
		ri.LastAck = time.Unix(0, l.lastAck.Load())
	}
	if primaryOffset > ri.AckOffset {
		ri.Lag = primaryOffset - ri.AckOffset
	}
	return ri
}

// serveLink runs one replica connection from handshake to close.
func (p *Primary[V]) serveLink(conn net.Conn) {
	ctx, cancel := context.WithCancelCause(p.ctx)
	defer cancel(nil)
	defer closeWhenDone(ctx, conn)()
	defer conn.Close()

	addr := conn.RemoteAddr().String()
	dc := &deadlineConn{Conn: conn, timeout: p.cfg.linkTimeout}
	fr := newFrameReader(dc, p.cfg.maxFrameSize)
	fr.timeout = p.cfg.linkTimeout
	h, err := readHello(fr)
	if err != nil {
		if errors.Is(err, ErrVersion) {
			_, _ = dc.Write(appendErrorFrame(nil, codeVersion))
		}
		p.log.Info("replica handshake failed", "addr", addr, "err", linkError("handshake", addr, err))
		return
	}

	l := &link[V]{
		p:           p,
		addr:        addr,
		id:          h.name,
		cancel:      cancel,
		wake:        make(chan struct{}, 1),
		getack:      make(chan struct{}, 1),
		connectedAt: time.Now(),
	}
	l.ack.Store(-1)
	if h.replID == p.replID {
		if c, ok := p.backlog.newCursor(h.offset, l.evict); ok {
			l.cur = c
			l.sent.Store(h.offset)
		}
	}
	p.addLink(l)
	log := p.log.With("replica", l.id, "addr", addr)
	log.Debug("replica connected", "partial", l.cur != nil, "offset", h.offset)

	var wg sync.WaitGroup
	wg.Go(func() { cancel(l.receive(fr)) })
	cancel(l.send(ctx, dc))
	wg.Wait()

	p.removeLink(l)
	if l.cur != nil {
		p.backlog.release(l.cur)
	}
	if err := context.Cause(ctx); !errors.Is(err, ErrClosed) {
		log.Info("replica link closed", "err", err)
	}
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
	p := l.p
	bw := bufio.NewWriterSize(w, 64<<10)
	if l.cur == nil {
		if err := l.sendSnapshot(ctx, bw); err != nil {
			return linkError("sync", l.addr, err)
		}
	} else {
		p.partialSyncs.Add(1)
		if _, err := bw.Write(appendSyncStart(nil, frameContinue, p.replID, l.cur.pos)); err != nil {
			return linkError("sync", l.addr, err)
		}
	}
	l.streaming.Store(true)

	ticker := time.NewTicker(p.cfg.heartbeat)
	defer ticker.Stop()
	var getack, ping, active bool
	for {
		wrote, err := l.drain(bw)
		if err != nil {
			return linkError("stream", l.addr, err)
		}
		active = active || wrote
		if getack {
			// The replica answers after applying everything before the
			// GETACK, so its ACK covers every Wait whose target is at or
			// below asked: those need not ask again.
			l.asked.Store(l.cur.pos)
			_, _ = bw.Write(getAckFrame)
			getack, active = false, true
		}
		if ping {
			_, _ = bw.Write(pingFrame)
			ping = false
		}
		if bw.Buffered() > 0 {
			if err := bw.Flush(); err != nil {
				return linkError("stream", l.addr, err)
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-l.wake:
		case <-l.getack:
			getack = true
		case <-ticker.C:
			ping, active = !active, false
		}
	}
}

// drain writes the stream from the link's cursor to the backlog's end. An
// evicted link gets an ERROR frame saying so before it is dropped.
func (l *link[V]) drain(w *bufio.Writer) (wrote bool, err error) {
	for {
		chunk, err := l.p.backlog.read(l.cur, 256<<10)
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
}

var (
	pingFrame   = appendFrame(nil, framePing, nil)
	getAckFrame = appendFrame(nil, frameGetAck, nil)
)

// receive reads the replica's ACKs and keep-alives until the link fails.
func (l *link[V]) receive(fr *frameReader) error {
	for {
		t, payload, _, err := fr.next()
		if err != nil {
			return linkError("stream", l.addr, err)
		}
		switch t {
		case frameAck:
			off, err := parseU64Frame(t, payload)
			if err != nil {
				return linkError("stream", l.addr, err)
			}
			if sent := l.sent.Load(); off > sent {
				return linkError("stream", l.addr, fmt.Errorf("%w: ACK for offset %d beyond the %d sent", ErrProtocol, off, sent))
			}
			l.lastAck.Store(time.Now().UnixNano())
			if int64(off) > l.ack.Load() {
				l.ack.Store(int64(off))
				l.p.ackAdvanced()
			}
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
