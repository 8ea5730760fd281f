package replmap

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"maps"
	"math"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/replmap/replmap/transport"
)

// rawFrame builds a frame by hand, optionally lying about its length.
func rawFrame(t frameType, payload []byte) []byte { return appendFrame(nil, t, payload) }

func corruptCRC(frame []byte) []byte {
	f := bytes.Clone(frame)
	f[len(f)-1] ^= 0x40
	return f
}

// fakePrimary accepts replica connections on addr and lets the test speak
// the protocol by hand.
type fakePrimary struct {
	t    *testing.T // the current (sub)test, for assertions
	root *testing.T // the test that owns the connections
	l    net.Listener
	conn net.Conn
	fr   *frameReader
}

func newFakePrimary(t *testing.T, tr *transport.Inmem, addr string) *fakePrimary {
	l, err := tr.Listen(addr)
	require.NoError(t, err)
	t.Cleanup(func() { l.Close() })
	return &fakePrimary{t: t, root: t, l: l}
}

// accept takes the next replica connection and reads its HELLO.
func (f *fakePrimary) accept() hello {
	f.t.Helper()
	if f.conn != nil {
		f.conn.Close()
	}
	conn, err := f.l.Accept()
	require.NoError(f.t, err)
	f.root.Cleanup(func() { conn.Close() })
	f.conn = conn
	f.fr = newFrameReader(conn, DefaultMaxFrameSize)
	h, err := readHello(f.fr)
	require.NoError(f.t, err)
	return h
}

func (f *fakePrimary) send(frames ...[]byte) {
	f.t.Helper()
	for _, b := range frames {
		_, err := f.conn.Write(b)
		require.NoError(f.t, err)
	}
}

// fullSync sends a valid snapshot of data at offset 0.
func (f *fakePrimary) fullSync(replID string, data map[string]int) {
	f.t.Helper()
	var buf bytes.Buffer
	buf.Write(appendSyncStart(nil, frameFull, syncStart{replID: replID, offset: 0}))
	sw := snapshotWriter{w: &buf}
	for k, v := range data {
		require.NoError(f.t, addEntry(&sw, k, v, 0))
	}
	require.NoError(f.t, sw.finish(0))
	f.send(buf.Bytes())
}

// dropped waits for the replica to close the link.
func (f *fakePrimary) dropped() {
	f.t.Helper()
	require.NoError(f.t, f.conn.SetReadDeadline(time.Now().Add(10*time.Second)))
	_, err := io.Copy(io.Discard, f.conn)
	require.NoError(f.t, err, "the replica should close the link, not go silent")
}

func setFrame(t *testing.T, key string, v int) []byte {
	b, err := appendSetFrame(nil, key, v, 0, DefaultMaxValueSize)
	require.NoError(t, err)
	return b
}

// TestHostilePrimary feeds a replica bad frames after a good sync: each one
// drops the link with a clear error, leaves the served data untouched, and
// the replica comes back asking to continue from where it was.
func TestHostilePrimary(t *testing.T) {
	hugeLen := binary.BigEndian.AppendUint32(nil, 0xfffffff0)
	hugeLen = append(hugeLen, byte(frameSet), 1, 2, 3)
	badKeyLen := rawFrame(frameSet, binary.AppendUvarint(nil, 1<<40))
	badMsgpack := rawFrame(frameSet, append(appendString(nil, "a"), 0xc1)) // 0xc1 is never used
	hugeBin := rawFrame(frameSet, append(appendString(nil, "a"), 0xc6, 0xff, 0xff, 0xff, 0x00))

	cases := []struct {
		name  string
		bytes []byte
		want  error
	}{
		{"huge length prefix", hugeLen, ErrTooLarge},
		{"zero length", []byte{0, 0, 0, 0, byte(frameSet)}, ErrProtocol},
		{"flipped CRC bit", corruptCRC(setFrame(t, "a", 99)), ErrChecksum},
		{"key length beyond frame", badKeyLen, ErrProtocol},
		{"invalid msgpack", badMsgpack, ErrProtocol},
		{"msgpack declares 4 GiB", hugeBin, ErrProtocol},
		{"unknown frame type", rawFrame(0x7f, nil), ErrProtocol},
		{"snapshot frame in stream", rawFrame(frameChunk, nil), ErrProtocol},
		{"END in stream", appendSnapshotEnd(nil, snapshotEnd{}), ErrProtocol},
		{"oversized key in DEL", rawFrame(frameDel, bytes.Repeat([]byte("k"), DefaultMaxKeySize+1)), ErrTooLarge},

		// Deadlines: SETX, and writes of kind 't' in a TX.
		{"SETX zero deadline", rawFrame(frameSetX, setxPayload(0, "a", 100)), ErrProtocol},
		{"SETX deadline over MaxInt64", rawFrame(frameSetX, setxPayload(math.MaxInt64+1, "a", 100)), ErrProtocol},
		{"SETX deadline truncated", rawFrame(frameSetX, []byte{0, 0, 0, 1}), ErrProtocol},
		{"SETX without a key", rawFrame(frameSetX, binary.BigEndian.AppendUint64(nil, 1)), ErrProtocol},
		{"CHUNKX in stream", rawFrame(frameChunkX, setxPayload(1, "a", 100)), ErrProtocol},

		// TX: every write is checked before any is applied, so the first
		// write, a=100, must never show.
		{"TX count zero", txFrame(0), ErrProtocol},
		{"TX count over what the payload can hold", txFrame(1<<20, txSet("a", 100)), ErrProtocol},
		{"TX count one more than the writes", txFrame(2, txSet("a", 100)), ErrProtocol},
		{"TX bytes after the last write", txFrame(1, txSet("a", 100), []byte{byte(frameDel)}), ErrProtocol},
		{"TX truncated mid-write", txFrame(2, txSet("a", 100), txSet("b", 7)[:3]), ErrProtocol},
		{"TX truncated count", rawFrame(frameTx, []byte{0, 0, 1}), ErrProtocol},
		{"TX unknown write kind", txFrame(2, txSet("a", 100), append([]byte{'x'}, txSet("b", 7)[1:]...)), ErrProtocol},
		{"TX write of a snapshot kind", txFrame(2, txSet("a", 100), append([]byte{byte(frameChunkX)}, txSetX(1, "b", 7)[1:]...)), ErrProtocol},
		{"TX zero deadline", txFrame(2, txSet("a", 100), txSetX(0, "b", 7)), ErrProtocol},
		{"TX deadline over MaxInt64", txFrame(2, txSet("a", 100), txSetX(1<<63, "b", 7)), ErrProtocol},
		{"TX deadline all ones", txFrame(2, txSet("a", 100), txSetX(math.MaxUint64, "b", 7)), ErrProtocol},
		{"TX invalid msgpack in a later write", txFrame(2, txSet("a", 100), txRaw('s', "b", []byte{0xc1})), ErrProtocol},
		{"TX value length beyond frame", txFrame(2, txSet("a", 100), append([]byte{'s', 1, 'b'}, binary.AppendUvarint(nil, 1<<40)...)), ErrProtocol},
		{"TX oversized key", txFrame(2, txSet("a", 100), txRaw('d', strings.Repeat("k", DefaultMaxKeySize+1), nil)), ErrTooLarge},
		{"TX of only deletes, one bad", txFrame(2, txRaw('d', "a", nil), txRaw('t', "b", nil)), ErrProtocol},
	}
	net := transport.NewInmem()
	fake := newFakePrimary(t, net, "fake")
	r := startReplica[int](t, net, "fake")
	h := fake.accept()
	assert.Empty(t, h.replID, "a new replica presents no history")
	fake.fullSync("feedface", map[string]int{"a": 1, "b": 2})
	waitSynced(t, r)
	require.Equal(t, 2, r.Len())

	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			fake.t = t
			fake.send(c.bytes)
			fake.dropped()
			waitFor(t, "error recorded", func() bool { return errors.Is(r.Info().LastError, c.want) })
			var le *LinkError
			assert.ErrorAs(t, r.Info().LastError, &le)
			v, _ := r.Get("a")
			assert.Equal(t, 1, v, "served data changed")
			assert.Equal(t, 2, r.Len())
			assert.Zero(t, r.Offset())

			h := fake.accept()
			assert.Equal(t, "feedface", h.replID)
			assert.Zero(t, h.offset)
			fake.send(appendSyncStart(nil, frameContinue, syncStart{replID: "feedface", offset: 0}))
		})
	}

	// The builders above make well-formed records when asked to: the
	// same shapes, right, apply.
	t.Run("well-formed", func(t *testing.T) {
		fake.t = t
		far := uint64(time.Now().Add(time.Hour).UnixNano())
		tx := txFrame(3, txSet("a", 100), txSetX(far, "b", 7), txRaw('d', "c", nil))
		setx := rawFrame(frameSetX, setxPayload(far, "d", 8))
		fake.send(tx, setx)
		waitFor(t, "the records applied", func() bool { return r.Offset() == uint64(len(tx)+len(setx)) })
		assert.Equal(t, map[string]int{"a": 100, "b": 7, "d": 8}, maps.Collect(r.All()))
		left, ok := r.TTL("b")
		assert.True(t, ok)
		assert.Positive(t, left)
	})
}

// setxPayload is a SETX payload with the deadline at, key and int value v.
func setxPayload(at uint64, key string, v int) []byte {
	b := binary.BigEndian.AppendUint64(nil, at)
	b = appendString(b, key)
	val, _ := appendValue(nil, v)
	return append(b, val...)
}

// txFrame is a TX frame that claims count writes and holds writes.
func txFrame(count uint32, writes ...[]byte) []byte {
	b := binary.BigEndian.AppendUint32(nil, count)
	for _, w := range writes {
		b = append(b, w...)
	}
	return rawFrame(frameTx, b)
}

// txRaw is one TX write of kind k: key, then (unless k is 'd') value as
// raw bytes with their length.
func txRaw(k byte, key string, value []byte) []byte {
	b := appendString([]byte{k}, key)
	if k != byte(frameDel) {
		b = binary.AppendUvarint(b, uint64(len(value)))
		b = append(b, value...)
	}
	return b
}

func txSet(key string, v int) []byte {
	val, _ := appendValue(nil, v)
	return txRaw(byte(frameSet), key, val)
}

func txSetX(at uint64, key string, v int) []byte {
	w := txSet(key, v)
	return append(binary.BigEndian.AppendUint64([]byte{byte(frameSetX)}, at), w[1:]...)
}

// TestHostileSnapshot checks that a corrupted or lying snapshot is never
// served.
func TestHostileSnapshot(t *testing.T) {
	goodChunk := func() []byte {
		var buf bytes.Buffer
		sw := snapshotWriter{w: &buf}
		require.NoError(t, addEntry(&sw, "x", 5, 0))
		require.NoError(t, sw.flush())
		return buf.Bytes()
	}
	cases := []struct {
		name   string
		frames [][]byte
		want   error
	}{
		{"END count lies", [][]byte{goodChunk(), appendSnapshotEnd(nil, snapshotEnd{count: 2, crc: 0, offset: 0})}, ErrChecksum},
		{"END checksum lies", [][]byte{goodChunk(), appendSnapshotEnd(nil, snapshotEnd{count: 1, crc: 1, offset: 0})}, ErrChecksum},
		{"corrupted chunk", [][]byte{corruptCRC(goodChunk())}, ErrChecksum},
		{"END behind the stream", [][]byte{setFrame(t, "x", 1), appendSnapshotEnd(nil, snapshotEnd{})}, ErrProtocol},
		{"END before FULL offset", [][]byte{appendSyncStart(nil, frameFull, syncStart{replID: "abc", offset: 100})}, nil},
		{"CHUNKX zero deadline", [][]byte{rawFrame(frameChunkX, chunkxPayload(0, "x", 5))}, ErrProtocol},
		{"CHUNKX deadline over MaxInt64", [][]byte{rawFrame(frameChunkX, chunkxPayload(math.MaxInt64+1, "x", 5))}, ErrProtocol},
		{"CHUNKX truncated deadline", [][]byte{rawFrame(frameChunkX, []byte{0, 0, 0, 0, 1})}, ErrProtocol},
		{"CHUNKX truncated entry", [][]byte{rawFrame(frameChunkX, chunkxPayload(1, "x", 5)[:10])}, ErrProtocol},
		{"CHUNKX second entry bad", [][]byte{rawFrame(frameChunkX, append(chunkxPayload(1, "x", 5), chunkxPayload(0, "y", 6)...))}, ErrProtocol},
		{"CHUNKX entry without value", [][]byte{rawFrame(frameChunkX, appendString(binary.BigEndian.AppendUint64(nil, 1), "x"))}, ErrProtocol},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			net := transport.NewInmem()
			fake := newFakePrimary(t, net, "fake")
			r := startReplica[int](t, net, "fake")
			fake.accept()
			if c.want == nil { // the FULL itself is in frames
				fake.send(c.frames...)
				fake.send(appendSnapshotEnd(nil, snapshotEnd{offset: 50}))
				c.want = ErrProtocol
			} else {
				fake.send(appendSyncStart(nil, frameFull, syncStart{replID: "abc", offset: 0}))
				fake.send(c.frames...)
			}
			fake.dropped()
			waitFor(t, "error recorded", func() bool { return errors.Is(r.Info().LastError, c.want) })
			assert.Zero(t, r.Len(), "a bad snapshot was served")
			assert.Empty(t, r.Info().ReplID)
			assert.Zero(t, r.Info().FullSyncs)
		})
	}
}

// chunkxPayload is one CHUNKX entry: the deadline at, key and int value v.
func chunkxPayload(at uint64, key string, v int) []byte {
	b := binary.BigEndian.AppendUint64(nil, at)
	b = appendString(b, key)
	val, _ := appendValue(nil, v)
	b = binary.AppendUvarint(b, uint64(len(val)))
	return append(b, val...)
}

// TestRecordsInterleavedWithSnapshot checks the replica's side of a full
// sync whose stream comes between the snapshot's chunks: records apply to
// the store being loaded, which is served only at END's offset.
func TestRecordsInterleavedWithSnapshot(t *testing.T) {
	net := transport.NewInmem()
	fake := newFakePrimary(t, net, "fake")
	r := startReplica[int](t, net, "fake")
	fake.accept()

	var chunks bytes.Buffer
	sw := snapshotWriter{w: &chunks}
	require.NoError(t, addEntry(&sw, "a", 1, 0))
	require.NoError(t, addEntry(&sw, "b", 2, 0))
	require.NoError(t, sw.flush())
	setB, delA, setC := setFrame(t, "b", 20), appendDelFrame(nil, "a"), setFrame(t, "c", 3)
	upTo := uint64(100 + len(setB) + len(delA))

	fake.send(appendSyncStart(nil, frameFull, syncStart{replID: "abc", offset: 100}), setB, delA, chunks.Bytes())
	fake.send(appendSnapshotEnd(nil, snapshotEnd{count: sw.count, crc: sw.crc, offset: upTo + uint64(len(setC))}))
	assert.Never(t, func() bool { return r.Len() > 0 }, 50*time.Millisecond, time.Millisecond,
		"served before the stream reached END's offset")
	assert.Equal(t, StateSyncing, r.Info().State)

	fake.send(setC)
	waitSynced(t, r)
	assert.Equal(t, upTo+uint64(len(setC)), r.Offset())
	// The chunk's a=1 and b=2 were copied after the records: they win.
	assert.Equal(t, map[string]int{"a": 1, "b": 2, "c": 3}, maps.Collect(r.All()))
}

// TestHostileReplica connects fake replicas that send garbage to a real
// primary: each is dropped, and a real replica is not disturbed.
func TestHostileReplica(t *testing.T) {
	net := transport.NewInmem()
	p := startPrimary[int](t, net, "p")
	good := startReplica[int](t, net, "p")
	waitSynced(t, good)

	helloFrame := handHello[int]("liar")
	hugeLen := append(binary.BigEndian.AppendUint32(nil, 0xffffffff), byte(frameHello))
	cases := []struct {
		name  string
		bytes [][]byte
	}{
		{"garbage", [][]byte{[]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n")}},
		{"huge length prefix", [][]byte{hugeLen}},
		{"bad CRC hello", [][]byte{corruptCRC(helloFrame)}},
		{"wrong version", [][]byte{appendHello(nil, hello{version: 99})}},
		{"hello with huge id", [][]byte{rawFrame(frameHello, append([]byte{0, 1}, binary.AppendUvarint(nil, 1<<50)...))}},
		{"ACK beyond sent", [][]byte{helloFrame, appendU64Frame(nil, frameAck, 1<<40)}},
		{"SET from a replica", [][]byte{helloFrame, setFrame(t, "x", 1)}},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			conn, err := net.Dial(context.Background(), "p")
			require.NoError(t, err)
			defer conn.Close()
			for _, b := range c.bytes {
				_, _ = conn.Write(b)
			}
			require.NoError(t, conn.SetReadDeadline(time.Now().Add(10*time.Second)))
			_, err = io.Copy(io.Discard, conn)
			require.NoError(t, err, "the primary should drop the link")

			require.NoError(t, p.Set("k", i))
			k, err := p.Wait(1, 10*time.Second)
			require.NoError(t, err)
			assert.Equal(t, 1, k, "only the real replica counts")
			requireConverged(t, p, good)
		})
	}
}
