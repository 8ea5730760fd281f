package replmap

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"maps"
	"runtime"
	"testing"
	"testing/iotest"

	"github.com/replmap/replmap/transport"
)

// checkAlloc fails if running f allocated more than limit bytes.
func checkAlloc(t *testing.T, limit uint64, f func()) {
	t.Helper()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	if got := after.TotalAlloc - before.TotalAlloc; got > limit {
		t.Fatalf("allocated %d bytes, limit %d", got, limit)
	}
}

// FuzzFrameReader feeds arbitrary bytes, in two halves and a byte at a
// time, to the frame reader: it must never panic, must read the same
// frames however the input is split, and must not allocate far beyond the
// input (plus its fixed buffers).
func FuzzFrameReader(f *testing.F) {
	f.Add(appendFrame(nil, frameSet, []byte("payload")), 3)
	f.Add(append(appendFrame(nil, framePing, nil), appendHello(nil, hello{version: 1, replID: "x", name: "y"})...), 7)
	f.Add(binary.BigEndian.AppendUint32(nil, 0xffffffff), 2)
	f.Add([]byte{0, 0, 0, 0, 's'}, 1)
	f.Fuzz(func(t *testing.T, data []byte, split int) {
		read := func(r io.Reader) (frames [][]byte, err error) {
			fr := newFrameReader(r, 1<<20)
			for {
				typ, payload, size, err := fr.next()
				if err != nil {
					return frames, err
				}
				if size != len(payload)+frameOverhead {
					t.Fatalf("size %d for a %d-byte payload", size, len(payload))
				}
				frames = append(frames, append([]byte{byte(typ)}, payload...))
			}
		}
		var whole [][]byte
		var wholeErr error
		checkAlloc(t, uint64(4*len(data))+512<<10, func() { whole, wholeErr = read(bytes.NewReader(data)) })
		if split < 0 {
			split = -split
		}
		split %= len(data) + 1
		halves := io.MultiReader(bytes.NewReader(data[:split]), bytes.NewReader(data[split:]))
		got, err := read(halves)
		if !equalFrames(whole, got) || !errors.Is(err, wholeErr) && (err == nil) != (wholeErr == nil) {
			t.Fatalf("split read differs: %d vs %d frames, %v vs %v", len(whole), len(got), wholeErr, err)
		}
		got, _ = read(iotest.OneByteReader(bytes.NewReader(data)))
		if !equalFrames(whole, got) {
			t.Fatalf("byte-at-a-time read differs")
		}
		// Round trip: re-encoding what was read reproduces the input's prefix.
		var re []byte
		for _, fr := range whole {
			re = appendFrame(re, frameType(fr[0]), fr[1:])
		}
		if !bytes.HasPrefix(data, re) {
			t.Fatalf("re-encoded frames are not the input")
		}
	})
}

func equalFrames(a, b [][]byte) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !bytes.Equal(a[i], b[i]) {
			return false
		}
	}
	return true
}

// FuzzHandshake parses arbitrary HELLO, FULL/CONTINUE, END, ACK, ERROR,
// FAILOVER, LISTEN and PROMOTED payloads: errors, never panics, and round
// trips what parses.
func FuzzHandshake(f *testing.F) {
	f.Add(appendHello(nil, hello{version: protocolVersion, replID: "abc", offset: 7, name: "r", instance: "i", epoch: 3, fingerprint: 9, maxFrame: 1 << 20})[5:])
	f.Add(appendSyncStart(nil, frameFull, syncStart{replID: "abc", offset: 99, epoch: 2, replID2: "def", replID2Offset: 50})[5:])
	f.Add(appendSnapshotEnd(nil, snapshotEnd{count: 1, crc: 2, offset: 3})[5:])
	f.Add(appendFailover(nil, 1234, 5)[5:])
	f.Add(appendStringFrame(nil, frameListen, "127.0.0.1:7070")[5:])
	f.Fuzz(func(t *testing.T, payload []byte) {
		// Parsing copies at most the strings it finds.
		checkAlloc(t, uint64(4*len(payload))+64<<10, func() {
			_, _ = parseHello(payload)
			_, _ = parseSyncStart(frameFull, payload)
			_, _ = parseSnapshotEnd(payload)
		})
		// Varints may arrive in non-canonical form, so the round trip
		// compares values: parse, encode, parse again.
		if h, err := parseHello(payload); err == nil {
			re := appendHello(nil, h)
			if h2, err := parseHello(re[5 : len(re)-4]); err != nil || h2 != h {
				t.Fatalf("HELLO round trip: %+v vs %+v (%v)", h, h2, err)
			}
		}
		if st, err := parseSyncStart(frameFull, payload); err == nil {
			re := appendSyncStart(nil, frameFull, st)
			if st2, err := parseSyncStart(frameFull, re[5:len(re)-4]); err != nil || st2 != st {
				t.Fatalf("FULL round trip differs: %+v vs %+v", st, st2)
			}
		}
		if e, err := parseSnapshotEnd(payload); err == nil {
			if re := appendSnapshotEnd(nil, e); !bytes.Equal(re[5:len(re)-4], payload) {
				t.Fatalf("END round trip differs")
			}
		}
		if off, epoch, err := parseFailover(payload); err == nil {
			if re := appendFailover(nil, off, epoch); !bytes.Equal(re[5:len(re)-4], payload) {
				t.Fatalf("FAILOVER round trip differs")
			}
		}
		if addr, err := parseStringFrame(frameListen, payload); err == nil {
			re := appendStringFrame(nil, frameListen, addr)
			if addr2, err := parseStringFrame(frameListen, re[5:len(re)-4]); err != nil || addr2 != addr {
				t.Fatalf("LISTEN round trip differs: %q vs %q", addr, addr2)
			}
		}
		_, _ = parseU64Frame(frameAck, payload)
		_, _ = parseErrorFrame(payload)
	})
}

// FuzzSnapshotChunk loads arbitrary CHUNK payloads for a few value types:
// errors, never panics, bounded allocation.
func FuzzSnapshotChunk(f *testing.F) {
	var buf bytes.Buffer
	sw := snapshotWriter{w: &buf}
	_ = addEntry(&sw, "k", map[string]any{"a": 1, "b": []any{"x", 2.5}}, 0)
	_ = addEntry(&sw, "k2", "str", 0)
	_ = sw.flush()
	f.Add(buf.Bytes()[5 : buf.Len()-4])
	buf.Reset()
	_ = addEntry(&sw, "k3", "str", 1e18)
	_ = sw.flush()
	f.Add(buf.Bytes()[5 : buf.Len()-4]) // a CHUNKX payload
	f.Add([]byte{1, 'k', 5, 0xc6, 0xff, 0xff, 0xff, 0xff})
	f.Add([]byte{1, 'k', 5, 0xdd, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, payload []byte) {
		limit := uint64(64*len(payload)) + 1<<20
		for _, kind := range []frameType{frameChunk, frameChunkX} {
			checkAlloc(t, limit, func() { _ = newSnapshotLoader[any](1024, 1<<20, 0, 0).chunk(kind, payload) })
			checkAlloc(t, limit, func() { _ = newSnapshotLoader[[]byte](1024, 1<<20, 0, 0).chunk(kind, payload) })
			checkAlloc(t, limit, func() { _ = newSnapshotLoader[map[string][]int](1024, 1<<20, 0, 0).chunk(kind, payload) })
		}
	})
}

// FuzzStreamRecord decodes arbitrary SET payloads as a replica would:
// errors, never panics, and round trips what decodes.
func FuzzStreamRecord(f *testing.F) {
	frame, _ := appendSetFrame(nil, "key", []byte("value"), 0, 1<<20)
	f.Add(frame[5 : len(frame)-4])
	frame, _ = appendSetFrame(nil, "key", "value", 0, 1<<20)
	f.Add(frame[5 : len(frame)-4])
	f.Fuzz(func(t *testing.T, payload []byte) {
		ops, err := parseOps(nil, frameSet, payload, 1024, 1<<20)
		if err != nil {
			return
		}
		key, raw := ops[0].key, ops[0].raw
		// Whatever decodes re-encodes to a record that decodes the same.
		if v, err := decodeValue[[]byte](raw); err == nil {
			re, err := appendSetFrame(nil, string(key), v, 0, 1<<20)
			if err != nil {
				t.Fatal(err)
			}
			ops2, err := parseOps(nil, frameSet, re[5:len(re)-4], 1024, 1<<20)
			if err != nil {
				t.Fatal(err)
			}
			key2, raw2 := ops2[0].key, ops2[0].raw
			v2, err := decodeValue[[]byte](raw2)
			if err != nil || !bytes.Equal(key, key2) || !bytes.Equal(v, v2) || (v == nil) != (v2 == nil) {
				t.Fatalf("SET round trip: %q=%x became %q=%x (%v)", key, v, key2, v2, err)
			}
		}
		_, _ = decodeValue[string](raw)
		checkAlloc(t, uint64(64*len(raw))+1<<20, func() { _, _ = decodeValue[any](raw) })
	})
}

// FuzzRecord applies arbitrary data records of every kind (SET, SETX,
// DEL, TX) as a replica does: errors, never panics, allocates within a
// multiple of the input, and a record that fails changes nothing (a TX
// applies whole or not at all).
func FuzzRecord(f *testing.F) {
	frame, _ := appendSetFrame(nil, "key", []byte("value"), 1e18, 1<<20)
	f.Add(byte(frameSetX), frame[5:len(frame)-4])
	tx := binary.BigEndian.AppendUint32(nil, 3)
	tx = append(tx, 's')
	tx = appendString(tx, "a")
	tx = appendString(tx, string(appendMsgpackBin(nil, []byte("1"))))
	tx = append(tx, 't')
	tx = binary.BigEndian.AppendUint64(tx, 1e18)
	tx = appendString(tx, "b")
	tx = appendString(tx, string(appendMsgpackBin(nil, []byte("2"))))
	tx = append(tx, 'd')
	tx = appendString(tx, "old")
	f.Add(byte(frameTx), tx)
	f.Add(byte(frameTx), append(binary.BigEndian.AppendUint32(nil, 2), 's', 1, 'x', 1, 0xc1, 'd', 1, 'y')) // bad value: nothing applies
	f.Add(byte(frameTx), binary.BigEndian.AppendUint32(nil, 1<<31))
	f.Add(byte(frameDel), []byte("old"))
	f.Fuzz(func(t *testing.T, kind byte, payload []byte) {
		kinds := []frameType{frameSet, frameSetX, frameDel, frameTx}
		typ := kinds[int(kind)%len(kinds)]
		checkAlloc(t, uint64(64*len(payload))+1<<20, func() {
			st := newStore[[]byte]()
			st.set("old", []byte("v"))
			ops, err := parseOps(nil, typ, payload, 1024, 1<<20)
			if err != nil {
				return
			}
			if _, err := applyOps(st, ops, nil); err != nil {
				if v, ok := st.get("old"); st.len() != 1 || !ok || string(v) != "v" {
					t.Fatalf("a %s that failed (%v) changed the store", typ, err)
				}
			}
			_ = st.len()
		})
	})
}

// FuzzReplicaStream runs a replica's side of a link on arbitrary bytes from
// the primary: the handshake reply, a snapshot whose CHUNKs may interleave
// with records, and the stream. It must never panic, must allocate within
// a multiple of the input, and must end serving the same data however the
// input is split into reads; what it serves is either its old data or
// data from a snapshot that verified.
// runReplicaStream feeds r to a replica holding {"old": old} at offset 5
// of history "old", through its whole receive path, and returns it.
func runReplicaStream[V any](t *testing.T, r io.Reader, old V) *Replica[V] {
	cfg := config{maxKeySize: 64, maxValueSize: 1 << 10, backlogSize: MinBacklogSize, bufferLimit: MinBacklogSize,
		maxHandshakes: 1, logger: slog.New(slog.DiscardHandler)}
	d := &dataset[V]{store: newStore[V](), backlog: newBacklog(cfg, 0), hist: history{replID: "old"}}
	d.store.set("old", old)
	d.backlog.append(make([]byte, 5)) // offset 5
	n := newNode(cfg, roleReplica, d)
	rep := newReplicaHandle(n, transport.NewInmem(), "fuzz", cfg, nil)
	s := &replicaSession[V]{r: rep, n: n, addr: "fuzz", synced: rep.synced, fr: newFrameReader(r, 4<<10), w: io.Discard}
	if err := s.receive(); err == nil {
		t.Fatal("receive returned nil at the end of the input")
	}
	return rep
}

func FuzzReplicaStream(f *testing.F) {
	var full bytes.Buffer
	full.Write(appendSyncStart(nil, frameFull, syncStart{replID: "id", offset: 10}))
	rec1, _ := appendSetFrame(nil, "b", "x", 0, 1<<10)
	full.Write(rec1)
	sw := snapshotWriter{w: &full}
	_ = addEntry(&sw, "a", "1", 0)
	_ = addEntry(&sw, "b", "2", 0)
	_ = sw.flush()
	full.Write(appendDelFrame(nil, "a"))
	_ = sw.finish(uint64(10 + len(rec1) + len(appendDelFrame(nil, "a"))))
	full.Write(pingFrame)
	full.Write(rec1)
	f.Add(full.Bytes(), 7)
	cont := appendSyncStart(nil, frameContinue, syncStart{replID: "old", offset: 5})
	cont = append(cont, rec1...)
	shift := append(appendSyncStart(nil, frameContinue, syncStart{replID: "new", offset: 5, epoch: 1, replID2: "old", replID2Offset: 5}), rec1...)
	shift = append(shift, appendFailover(nil, uint64(5+len(rec1)), 2)...)
	f.Add(shift, 9)
	cont = append(cont, getAckFrame...)
	cont = append(cont, appendDelFrame(nil, "b")...)
	f.Add(cont, 3)
	// Protocol 4's records: a snapshot with deadlines, a SETX and a TX
	// (a deadline far off, so that what is served does not depend on
	// the clock).
	var ttl bytes.Buffer
	ttl.Write(appendSyncStart(nil, frameFull, syncStart{replID: "id", offset: 10}))
	sw = snapshotWriter{w: &ttl}
	_ = addEntry(&sw, "a", "1", 1<<62)
	_ = addEntry(&sw, "b", "2", 0)
	_ = sw.finish(10)
	setx, _ := appendSetFrame(nil, "c", "3", 1<<62, 1<<10)
	ttl.Write(setx)
	tx := beginFrame(nil, frameTx)
	tx = binary.BigEndian.AppendUint32(tx, 2)
	tx = append(tx, byte(frameSet))
	tx = appendString(tx, "d")
	tx = appendString(tx, string(appendMsgpackStr(nil, "4")))
	tx = append(tx, byte(frameDel))
	tx = appendString(tx, "a")
	ttl.Write(endFrame(tx, 0))
	f.Add(ttl.Bytes(), 11)
	f.Fuzz(func(t *testing.T, data []byte, split int) {
		run := func(r io.Reader) *Replica[string] { return runReplicaStream(t, r, "data") }
		var whole *Replica[string]
		checkAlloc(t, uint64(300*len(data))+1<<20, func() { whole = run(bytes.NewReader(data)) })
		if split < 0 {
			split = -split
		}
		split %= len(data) + 1
		halves := run(io.MultiReader(bytes.NewReader(data[:split]), bytes.NewReader(data[split:])))
		bytewise := run(iotest.OneByteReader(bytes.NewReader(data)))
		want := snapshotOf(whole.All())
		for _, got := range []*Replica[string]{halves, bytewise} {
			if got.Offset() != whole.Offset() || got.Info().ReplID != whole.Info().ReplID || !maps.Equal(snapshotOf(got.All()), want) {
				t.Fatalf("split reads served different data: %s/%d vs %s/%d",
					got.Info().ReplID, got.Offset(), whole.Info().ReplID, whole.Offset())
			}
		}
		// A []byte replica takes the packed store's path from the wire;
		// it must end in the same place with the same bytes.
		packed := runReplicaStream(t, bytes.NewReader(data), []byte("data"))
		if packed.Offset() != whole.Offset() || packed.Len() != whole.Len() {
			t.Fatalf("a []byte replica reached offset %d with %d keys, a string one %d with %d",
				packed.Offset(), packed.Len(), whole.Offset(), whole.Len())
		}
		for k, v := range packed.All() {
			if w, ok := whole.Get(k); !ok || w != string(v) {
				t.Fatalf("key %q: []byte replica has %q, string replica %q", k, v, w)
			}
		}
		switch info := whole.Info(); {
		case info.ReplID == "old":
			if v, _ := whole.Get("old"); v != "data" || whole.Offset() < 5 {
				t.Fatalf("the old data changed without a sync: offset %d", whole.Offset())
			}
		case info.FullSyncs == 0:
			// Only a CONTINUE into a history that continues "old" may
			// change the ID without a full sync.
			if info.ReplID2 != "old" || info.ReplID2Offset != 5 || whole.Offset() < 5 {
				t.Fatalf("serving %s (continuing %q at %d) without a full sync", info.ReplID, info.ReplID2, info.ReplID2Offset)
			}
		case info.FullSyncs != 1:
			t.Fatalf("serving %s after %d full syncs from one input", info.ReplID, info.FullSyncs)
		}
	})
}
