package replmap

// The wire format. Frozen like a file format: change it only together with
// protocolVersion.
//
// Every frame, in both directions, is
//
//	length  uint32, big-endian: bytes in type and payload (at least 1)
//	type    byte
//	payload length-1 bytes
//	crc     uint32, big-endian: CRC-32C (Castagnoli) of length, type and payload
//
// so a frame occupies length+8 bytes. Integers inside payloads are
// big-endian fixed width (u16, u32, u64) or unsigned varints (uv, as
// encoding/binary); a string is a uv length followed by its bytes.
//
// Replica to primary:
//
//	HELLO 'H'   u16 version, str replID ("" for none), u64 offset, str replica name,
//	            str instance ID, u64 epoch (highest seen), u64 value type fingerprint,
//	            u32 largest frame the replica reads
//	ACK   'A'   u64 offset of the last write applied, u64 offset the data directory holds
//	            (0 without one; an ACK without it is accepted)
//	PING  'P'   (empty) keep-alive while syncing
//	LISTEN   'L'  str the address the replica serves sub-replicas on (sent before an ACK when it changed)
//	PROMOTED 'R'  str the new replication ID: the replica took over after a FAILOVER
//
// Primary to replica:
//
//	FULL     'F'  sync start: str replID, u64 offset O the snapshot starts from,
//	              u64 epoch, str replID2, u64 replID2 offset[, u64 key count hint]
//	CHUNK    'K'  snapshot entries: uv key length, key, uv value length, value
//	CHUNKX   'k'  snapshot entries with a deadline: u64 deadline, then as CHUNK
//	END      'E'  u64 entry count, u32 CRC-32C of all CHUNK payloads, u64 offset E
//	CONTINUE 'C'  sync start, as FULL, with the offset the stream resumes from
//	SET      's'  uv key length, key, value (the rest of the payload)
//	SETX     't'  u64 deadline (Unix nanoseconds, > 0), uv key length, key, value (the rest)
//	DEL      'd'  key (the whole payload)
//	TX       'T'  u32 write count n (>= 1), then n writes, applied as one: each a kind byte
//	              ('s' set, 't' set with a deadline, 'd' delete), then for 't' a u64
//	              deadline, then uv key length, key, and for 's' and 't' uv value length, value
//	PING     'P'  (empty) keep-alive on an idle link
//	GETACK   'G'  asks for an ACK now; empty, or a flag byte: 1 = fsync the data directory first
//	ERROR    'X'  u16 error code; the primary closes the link after it
//	FAILOVER 'O'  u64 offset, u64 epoch: become primary of that epoch if at that offset (a handover)
//
// Values are msgpack (github.com/hashicorp/go-msgpack). SET, SETX, DEL and TX
// are data records: the replication offset counts their whole frames,
// length prefix to CRC, and nothing else. A deadline is absolute, so it
// means the same after a full sync, a restart or a failover; a key whose
// deadline has passed is not served, and the primary deletes it with a DEL.
// END's count and checksum cover CHUNK and CHUNKX alike. A full sync is FULL, CHUNKs, END, with the data
// records from O on interleaved between CHUNKs and going on after END; the
// snapshot walk may already contain some writes after O, so the replica
// applies records to the store it loads, keeps it aside until it has
// applied the stream up to E, when it matches the primary at E exactly,
// and only then swaps it in.

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"io"
	"math"
	"net"
	"slices"
	"time"
)

const (
	protocolVersion = 4

	frameHeaderSize = 5 // length + type
	frameCRCSize    = 4
	frameOverhead   = frameHeaderSize + frameCRCSize

	// maxRecordOverhead bounds what a SET or SETX frame adds to its key and value:
	// the frame overhead and the key's varint length.
	maxRecordOverhead = frameOverhead + binary.MaxVarintLen64 + 8 // + a SETX deadline

	// readChunk is how much a frame reader allocates at a time for a frame
	// whose bytes have not arrived yet, so a hostile length prefix costs at
	// most this much before the bytes are there.
	readChunk = 64 << 10

	// snapshotChunkSize is the payload size at which a CHUNK frame is sent.
	snapshotChunkSize = 64 << 10

	// maxKeptReadBuffer is the largest frame buffer a reader keeps between
	// frames.
	maxKeptReadBuffer = 256 << 10
)

type frameType byte

const (
	frameHello    frameType = 'H'
	frameAck      frameType = 'A'
	framePing     frameType = 'P'
	frameFull     frameType = 'F'
	frameChunk    frameType = 'K'
	frameChunkX   frameType = 'k'
	frameEnd      frameType = 'E'
	frameContinue frameType = 'C'
	frameSet      frameType = 's'
	frameDel      frameType = 'd'
	frameSetX     frameType = 't'
	frameTx       frameType = 'T'
	frameGetAck   frameType = 'G'
	frameError    frameType = 'X'
	frameFailover frameType = 'O'
	framePromoted frameType = 'R'
	frameListen   frameType = 'L'
)

func (t frameType) String() string {
	switch t {
	case frameHello:
		return "HELLO"
	case frameAck:
		return "ACK"
	case framePing:
		return "PING"
	case frameFull:
		return "FULL"
	case frameChunk:
		return "CHUNK"
	case frameChunkX:
		return "CHUNKX"
	case frameEnd:
		return "END"
	case frameContinue:
		return "CONTINUE"
	case frameSet:
		return "SET"
	case frameDel:
		return "DEL"
	case frameSetX:
		return "SETX"
	case frameTx:
		return "TX"
	case frameGetAck:
		return "GETACK"
	case frameError:
		return "ERROR"
	case frameFailover:
		return "FAILOVER"
	case framePromoted:
		return "PROMOTED"
	case frameListen:
		return "LISTEN"
	}
	return fmt.Sprintf("frame type 0x%02x", byte(t))
}

// Error codes carried by ERROR frames, so that errors are never rebuilt
// from text received off the wire.
const (
	codeVersion  uint16 = 1 // the replica's protocol version is not spoken
	codeProtocol uint16 = 2 // the replica broke the protocol
	codeTooSlow  uint16 = 3 // the replica fell behind the buffer limit

	codeType          uint16 = 4 // the replica's value type differs
	codeStaleEpoch    uint16 = 5 // the replica has seen a newer epoch than this node
	codeNotSynced     uint16 = 6 // this node is a replica with no data to serve yet
	codeReconnect     uint16 = 7 // this node's history changed: reconnect at once
	codeDuplicateName uint16 = 8 // another replica instance holds this replica's name
)

func codeError(code uint16) error {
	switch code {
	case codeVersion:
		return ErrVersion
	case codeTooSlow:
		return ErrReplicaTooSlow
	case codeType:
		return ErrTypeMismatch
	case codeStaleEpoch:
		return fmt.Errorf("%w: the upstream node is behind this replica's epoch", ErrStaleEpoch)
	case codeNotSynced:
		return fmt.Errorf("%w: the upstream replica has no data yet", ErrNotSynced)
	case codeReconnect:
		return errHistoryChanged
	case codeDuplicateName:
		return ErrDuplicateName
	default:
		return fmt.Errorf("%w: primary reported error code %d", ErrProtocol, code)
	}
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// beginFrame appends a frame header of type t to dst with the length left
// blank; endFrame fills it in and appends the CRC. The payload is appended
// in between, directly into dst.
func beginFrame(dst []byte, t frameType) []byte {
	return append(dst, 0, 0, 0, 0, byte(t))
}

// endFrame completes the frame that starts at dst[start:].
func endFrame(dst []byte, start int) []byte {
	binary.BigEndian.PutUint32(dst[start:], uint32(len(dst)-start-4))
	return binary.BigEndian.AppendUint32(dst, crc32.Checksum(dst[start:], castagnoli))
}

// appendFrame appends a whole frame with the given payload.
func appendFrame(dst []byte, t frameType, payload []byte) []byte {
	start := len(dst)
	dst = beginFrame(dst, t)
	dst = append(dst, payload...)
	return endFrame(dst, start)
}

func appendString(dst []byte, s string) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(s)))
	return append(dst, s...)
}

// frameReader reads frames off a connection, checking every length before
// it allocates and every CRC before it returns a payload.
type frameReader struct {
	r   *bufio.Reader
	max int // largest length accepted (type + payload)
	hdr [frameHeaderSize]byte
	buf []byte

	// timeout, if positive, bounds how long a frame may take to arrive
	// once its header has. Without it, a header whose length was
	// corrupted into a larger plausible one would make the reader wait
	// for bytes that keep coming (heartbeats, later records) and take
	// them as the payload, stalling the stream silently until the CRC
	// finally fails, perhaps megabytes later.
	timeout time.Duration
}

func newFrameReader(r io.Reader, maxFrame int) *frameReader {
	return &frameReader{r: bufio.NewReaderSize(r, 64<<10), max: maxFrame + 1}
}

// next returns the next frame's type and payload and its size on the wire.
// The payload is valid until the next call.
func (fr *frameReader) next() (frameType, []byte, int, error) {
	hdr := fr.hdr[:] // a field, not a local: ReadFull would move a local to the heap
	if _, err := io.ReadFull(fr.r, hdr); err != nil {
		return 0, nil, 0, err
	}
	n := int(binary.BigEndian.Uint32(hdr[:4]))
	if n < 1 {
		return 0, nil, 0, fmt.Errorf("%w: zero-length frame", ErrProtocol)
	}
	if n > fr.max {
		return 0, nil, 0, fmt.Errorf("%w: frame of %d bytes exceeds the %d-byte limit", ErrTooLarge, n, fr.max-1)
	}
	// Read payload and CRC, growing the buffer only as bytes arrive. A
	// buffer grown for one huge frame is let go, not kept for the link's
	// life.
	want := n - 1 + frameCRCSize
	if cap(fr.buf) > maxKeptReadBuffer && want <= maxKeptReadBuffer {
		fr.buf = nil
	}
	var start time.Time
	if fr.timeout > 0 && fr.r.Buffered() < want {
		start = time.Now()
	}
	fr.buf = fr.buf[:0]
	for len(fr.buf) < want {
		if len(fr.buf) == cap(fr.buf) {
			fr.buf = slices.Grow(fr.buf, min(want-len(fr.buf), readChunk))
		}
		m, err := fr.r.Read(fr.buf[len(fr.buf):min(cap(fr.buf), want)])
		fr.buf = fr.buf[:len(fr.buf)+m]
		if err == nil && len(fr.buf) < want && !start.IsZero() && time.Since(start) > fr.timeout {
			err = fmt.Errorf("%w: %s frame of %d bytes incomplete after %v", ErrLinkTimeout, frameType(hdr[4]), n, fr.timeout)
		}
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return 0, nil, 0, err
		}
	}
	payload := fr.buf[:n-1]
	crc := crc32.Update(crc32.Checksum(hdr, castagnoli), castagnoli, payload)
	if got := binary.BigEndian.Uint32(fr.buf[n-1:]); got != crc {
		return 0, nil, 0, fmt.Errorf("%w: %s frame", ErrChecksum, frameType(hdr[4]))
	}
	return frameType(hdr[4]), payload, n + 4 + frameCRCSize, nil
}

// raw returns the bytes of the frame next returned last, as read: its
// header, then its payload and CRC. They are valid until the next call.
func (fr *frameReader) raw() (head, rest []byte) {
	n := int(binary.BigEndian.Uint32(fr.hdr[:4]))
	return fr.hdr[:], fr.buf[:n-1+frameCRCSize]
}

// parser decodes a payload. The first failure sticks: later calls return
// zero values, and err reports what was wrong.
type parser struct {
	b   []byte
	err error
}

func (p *parser) fail(what string) {
	if p.err == nil {
		p.err = fmt.Errorf("%w: truncated or malformed %s", ErrProtocol, what)
	}
}

func (p *parser) u16(what string) uint16 {
	if p.err != nil || len(p.b) < 2 {
		p.fail(what)
		return 0
	}
	v := binary.BigEndian.Uint16(p.b)
	p.b = p.b[2:]
	return v
}

func (p *parser) u32(what string) uint32 {
	if p.err != nil || len(p.b) < 4 {
		p.fail(what)
		return 0
	}
	v := binary.BigEndian.Uint32(p.b)
	p.b = p.b[4:]
	return v
}

func (p *parser) u64(what string) uint64 {
	if p.err != nil || len(p.b) < 8 {
		p.fail(what)
		return 0
	}
	v := binary.BigEndian.Uint64(p.b)
	p.b = p.b[8:]
	return v
}

// deadline reads a u64 deadline, which must be a positive int64.
func (p *parser) deadline(what string) int64 {
	v := p.u64(what)
	if p.err == nil && (v == 0 || v > math.MaxInt64) {
		p.err = fmt.Errorf("%w: %s %d out of range", ErrProtocol, what, v)
	}
	return int64(v)
}

// bytes returns a length-prefixed byte string of at most limit bytes,
// aliasing the payload.
func (p *parser) bytes(what string, limit int) []byte {
	if p.err != nil {
		return nil
	}
	n, k := binary.Uvarint(p.b)
	if k <= 0 || n > uint64(len(p.b)-k) {
		p.fail(what)
		return nil
	}
	if n > uint64(limit) {
		p.err = fmt.Errorf("%w: %s of %d bytes exceeds the %d-byte limit", ErrTooLarge, what, n, limit)
		return nil
	}
	b := p.b[k : k+int(n)]
	p.b = p.b[k+int(n):]
	return b
}

// end reports an error if bytes are left over.
func (p *parser) end(what string) error {
	if p.err == nil && len(p.b) != 0 {
		p.err = fmt.Errorf("%w: %d stray bytes after %s", ErrProtocol, len(p.b), what)
	}
	return p.err
}

// maxIDLen bounds replication IDs and replica names on the wire.
const maxIDLen = 256

type hello struct {
	version     uint16
	replID      string
	offset      uint64
	name        string
	instance    string
	epoch       uint64
	fingerprint uint64
	maxFrame    int
}

func appendHello(dst []byte, h hello) []byte {
	start := len(dst)
	dst = beginFrame(dst, frameHello)
	dst = binary.BigEndian.AppendUint16(dst, h.version)
	dst = appendString(dst, h.replID)
	dst = binary.BigEndian.AppendUint64(dst, h.offset)
	dst = appendString(dst, h.name)
	dst = appendString(dst, h.instance)
	dst = binary.BigEndian.AppendUint64(dst, h.epoch)
	dst = binary.BigEndian.AppendUint64(dst, h.fingerprint)
	dst = binary.BigEndian.AppendUint32(dst, uint32(min(h.maxFrame, math.MaxUint32)))
	return endFrame(dst, start)
}

func parseHello(b []byte) (hello, error) {
	p := parser{b: b}
	var h hello
	h.version = p.u16("HELLO version")
	if p.err == nil && h.version != protocolVersion {
		// Do not parse further: a later version may lay out the rest differently.
		return h, fmt.Errorf("%w: replica speaks version %d, this node %d", ErrVersion, h.version, protocolVersion)
	}
	h.replID = string(p.bytes("HELLO replication ID", maxIDLen))
	h.offset = p.u64("HELLO offset")
	h.name = string(p.bytes("HELLO replica name", maxIDLen))
	h.instance = string(p.bytes("HELLO instance ID", maxIDLen))
	h.epoch = p.u64("HELLO epoch")
	h.fingerprint = p.u64("HELLO type fingerprint")
	h.maxFrame = int(p.u32("HELLO frame limit"))
	return h, p.end("HELLO")
}

// syncStart is the payload of FULL and CONTINUE: the upstream's history
// and the offset the stream (after a snapshot, for FULL) starts from.
type syncStart struct {
	replID        string
	offset        uint64
	epoch         uint64
	replID2       string
	replID2Offset uint64
	keys          uint64 // FULL: about how many keys the snapshot holds (a sizing hint, unchecked)
}

func (s syncStart) history() history {
	return history{replID: s.replID, replID2: s.replID2, replID2Offset: s.replID2Offset, epoch: s.epoch}
}

// syncStart returns the sync start of a stream of h from offset on.
func (h history) syncStart(offset uint64) syncStart {
	return syncStart{replID: h.replID, offset: offset, epoch: h.epoch, replID2: h.replID2, replID2Offset: h.replID2Offset}
}

// appendSyncStart appends a FULL or CONTINUE frame.
func appendSyncStart(dst []byte, t frameType, s syncStart) []byte {
	start := len(dst)
	dst = beginFrame(dst, t)
	dst = appendString(dst, s.replID)
	dst = binary.BigEndian.AppendUint64(dst, s.offset)
	dst = binary.BigEndian.AppendUint64(dst, s.epoch)
	dst = appendString(dst, s.replID2)
	dst = binary.BigEndian.AppendUint64(dst, s.replID2Offset)
	if s.keys > 0 {
		dst = binary.BigEndian.AppendUint64(dst, s.keys)
	}
	return endFrame(dst, start)
}

func parseSyncStart(t frameType, b []byte) (syncStart, error) {
	p := parser{b: b}
	var s syncStart
	s.replID = string(p.bytes(t.String()+" replication ID", maxIDLen))
	s.offset = p.u64(t.String() + " offset")
	s.epoch = p.u64(t.String() + " epoch")
	s.replID2 = string(p.bytes(t.String()+" replication ID 2", maxIDLen))
	s.replID2Offset = p.u64(t.String() + " replication ID 2 offset")
	if len(p.b) > 0 {
		s.keys = p.u64(t.String() + " key count")
	}
	if p.err == nil && s.replID == "" {
		p.err = fmt.Errorf("%w: %s without a replication ID", ErrProtocol, t)
	}
	return s, p.end(t.String())
}

type snapshotEnd struct {
	count  uint64
	crc    uint32
	offset uint64
}

func appendSnapshotEnd(dst []byte, e snapshotEnd) []byte {
	start := len(dst)
	dst = beginFrame(dst, frameEnd)
	dst = binary.BigEndian.AppendUint64(dst, e.count)
	dst = binary.BigEndian.AppendUint32(dst, e.crc)
	dst = binary.BigEndian.AppendUint64(dst, e.offset)
	return endFrame(dst, start)
}

func parseSnapshotEnd(b []byte) (snapshotEnd, error) {
	p := parser{b: b}
	e := snapshotEnd{count: p.u64("END count"), crc: p.u32("END checksum"), offset: p.u64("END offset")}
	return e, p.end("END")
}

func appendU64Frame(dst []byte, t frameType, v uint64) []byte {
	start := len(dst)
	dst = beginFrame(dst, t)
	dst = binary.BigEndian.AppendUint64(dst, v)
	return endFrame(dst, start)
}

func parseU64Frame(t frameType, b []byte) (uint64, error) {
	p := parser{b: b}
	v := p.u64(t.String())
	return v, p.end(t.String())
}

func appendErrorFrame(dst []byte, code uint16) []byte {
	return appendFrame(dst, frameError, binary.BigEndian.AppendUint16(nil, code))
}

func parseErrorFrame(b []byte) (uint16, error) {
	p := parser{b: b}
	code := p.u16("ERROR code")
	return code, p.end("ERROR")
}

// errorFromFrame returns the error an ERROR frame from the primary reports.
func errorFromFrame(payload []byte) error {
	code, err := parseErrorFrame(payload)
	if err != nil {
		return err
	}
	return codeError(code)
}

// deadlineConn keeps a deadline ahead of every read and write that reaches
// the connection, so a peer that goes silent, or stops reading, fails the
// link after the timeout instead of blocking it forever. It sits under the
// bufio layers, so it acts per system call, not per frame; and it pushes a
// deadline forward only once a sixteenth of the timeout has passed since
// it last did, so a busy link does not reset a timer on every call. A link
// therefore fails after between 15/16 of the timeout and the whole of it.
//
// Reads and writes each keep their own state: one goroutine may read while
// another writes, but neither may be used by two goroutines at once.
type deadlineConn struct {
	net.Conn
	timeout time.Duration
	read    time.Time // when the read deadline was last pushed
	write   time.Time // likewise for writes
}

func (c *deadlineConn) Read(b []byte) (int, error) {
	if now := time.Now(); now.Sub(c.read) >= c.timeout/16 {
		if err := c.SetReadDeadline(now.Add(c.timeout)); err != nil {
			return 0, err
		}
		c.read = now
	}
	return c.Conn.Read(b)
}

func (c *deadlineConn) Write(b []byte) (int, error) {
	if now := time.Now(); now.Sub(c.write) >= c.timeout/16 {
		if err := c.SetWriteDeadline(now.Add(c.timeout)); err != nil {
			return 0, err
		}
		c.write = now
	}
	return c.Conn.Write(b)
}

// appendStringFrame appends a frame whose payload is one string.
func appendStringFrame(dst []byte, t frameType, s string) []byte {
	start := len(dst)
	dst = beginFrame(dst, t)
	dst = appendString(dst, s)
	return endFrame(dst, start)
}

func parseStringFrame(t frameType, b []byte) (string, error) {
	p := parser{b: b}
	s := string(p.bytes(t.String(), maxIDLen))
	return s, p.end(t.String())
}

func appendFailover(dst []byte, offset, epoch uint64) []byte {
	start := len(dst)
	dst = beginFrame(dst, frameFailover)
	dst = binary.BigEndian.AppendUint64(dst, offset)
	dst = binary.BigEndian.AppendUint64(dst, epoch)
	return endFrame(dst, start)
}

func parseFailover(b []byte) (offset, epoch uint64, err error) {
	p := parser{b: b}
	offset, epoch = p.u64("FAILOVER offset"), p.u64("FAILOVER epoch")
	return offset, epoch, p.end("FAILOVER")
}

// appendAck appends an ACK: the offset applied, and the offset up to which
// the replica's data directory holds the stream (0 without one).
func appendAck(dst []byte, applied, durable uint64) []byte {
	start := len(dst)
	dst = beginFrame(dst, frameAck)
	dst = binary.BigEndian.AppendUint64(dst, applied)
	dst = binary.BigEndian.AppendUint64(dst, durable)
	return endFrame(dst, start)
}

// parseAck parses an ACK; one without the durable offset has none.
func parseAck(b []byte) (applied, durable uint64, err error) {
	p := parser{b: b}
	applied = p.u64("ACK offset")
	if len(p.b) > 0 {
		durable = p.u64("ACK durable offset")
	}
	return applied, durable, p.end("ACK")
}
