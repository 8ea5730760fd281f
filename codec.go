package replmap

import (
	"encoding/binary"
	"fmt"
	"reflect"
	"sync"

	"github.com/hashicorp/go-msgpack/v2/codec"
)

// msgpackHandle encodes values with the msgpack spec's str and bin types.
// Decoding relies on checkMsgpack having bounded every declared length by
// the bytes present, so the codec's own initial-size cap (MaxInitLen) is
// left at its default (256 KiB per container) rather than set small, which
// would make large byte strings grow in many small steps.
var msgpackHandle = func() *codec.MsgpackHandle {
	h := &codec.MsgpackHandle{WriteExt: true}
	h.RawToString = true
	h.MapType = reflect.TypeFor[map[string]any]()
	h.MaxDepth = 64
	return h
}()

// valueEncoder is a pooled msgpack encoder with its output buffer: the
// codec writes from the start of the buffer it is given, so values are
// encoded here and then appended where they belong.
type valueEncoder struct {
	enc *codec.Encoder
	buf []byte
}

var (
	encoderPool = sync.Pool{New: func() any {
		var e valueEncoder
		e.enc = codec.NewEncoderBytes(&e.buf, msgpackHandle)
		return &e
	}}
	decoderPool = sync.Pool{New: func() any { return codec.NewDecoderBytes(nil, msgpackHandle) }}
)

// appendValue appends v's msgpack encoding to dst. []byte and string
// values take a fast path that writes the same bytes without reflection.
func appendValue[V any](dst []byte, v V) ([]byte, error) {
	switch x := any(v).(type) {
	case []byte:
		return appendMsgpackBin(dst, x), nil
	case string:
		return appendMsgpackStr(dst, x), nil
	}
	e := encoderPool.Get().(*valueEncoder)
	e.buf = e.buf[:0]
	e.enc.ResetBytes(&e.buf)
	err := e.enc.Encode(v)
	if err == nil {
		dst = append(dst, e.buf...)
	}
	if cap(e.buf) <= 64<<10 {
		encoderPool.Put(e)
	}
	if err != nil {
		return dst, fmt.Errorf("replmap: encoding value: %w", err)
	}
	return dst, nil
}

// decodeValue decodes a msgpack value. It never aliases b.
func decodeValue[V any](b []byte) (V, error) {
	var v V
	switch p := any(&v).(type) {
	case *[]byte:
		raw, err := readMsgpackRaw(b)
		if err != nil {
			return v, err
		}
		if raw != nil {
			*p = append([]byte{}, raw...)
		}
		return v, nil
	case *string:
		raw, err := readMsgpackRaw(b)
		*p = string(raw)
		return v, err
	}
	if err := checkMsgpack(b); err != nil {
		return v, err
	}
	dec := decoderPool.Get().(*codec.Decoder)
	defer decoderPool.Put(dec)
	dec.ResetBytes(b)
	if err := dec.Decode(&v); err != nil {
		return v, fmt.Errorf("%w: decoding value: %v", ErrProtocol, err)
	}
	return v, nil
}

func appendMsgpackBin(dst, b []byte) []byte {
	if b == nil {
		return append(dst, 0xc0) // nil
	}
	switch n := len(b); {
	case n <= 0xff:
		dst = append(dst, 0xc4, byte(n))
	case n <= 0xffff:
		dst = append(dst, 0xc5, byte(n>>8), byte(n))
	default:
		dst = append(dst, 0xc6)
		dst = binary.BigEndian.AppendUint32(dst, uint32(n))
	}
	return append(dst, b...)
}

func appendMsgpackStr(dst []byte, s string) []byte {
	switch n := len(s); {
	case n < 32:
		dst = append(dst, 0xa0|byte(n))
	case n <= 0xff:
		dst = append(dst, 0xd9, byte(n))
	case n <= 0xffff:
		dst = append(dst, 0xda, byte(n>>8), byte(n))
	default:
		dst = append(dst, 0xdb)
		dst = binary.BigEndian.AppendUint32(dst, uint32(n))
	}
	return append(dst, s...)
}

// readMsgpackRaw returns the bytes of a msgpack bin or str value that must
// fill b exactly; nil for msgpack nil.
func readMsgpackRaw(b []byte) ([]byte, error) {
	bad := func() ([]byte, error) {
		return nil, fmt.Errorf("%w: value is not a well-formed msgpack string or binary", ErrProtocol)
	}
	if len(b) == 0 {
		return bad()
	}
	var n, hdr int
	switch c := b[0]; {
	case c == 0xc0:
		if len(b) != 1 {
			return bad()
		}
		return nil, nil
	case c&0xe0 == 0xa0:
		n, hdr = int(c&0x1f), 1
	case (c == 0xc4 || c == 0xd9) && len(b) >= 2:
		n, hdr = int(b[1]), 2
	case (c == 0xc5 || c == 0xda) && len(b) >= 3:
		n, hdr = int(binary.BigEndian.Uint16(b[1:])), 3
	case (c == 0xc6 || c == 0xdb) && len(b) >= 5:
		n, hdr = int(binary.BigEndian.Uint32(b[1:])), 5
	default:
		return bad()
	}
	if len(b)-hdr != n {
		return bad()
	}
	return b[hdr:], nil
}

// appendSetFrame appends a SET record for key and the encoded value, or
// a SETX if at (a deadline in Unix nanoseconds) is not 0.
func appendSetFrame[V any](dst []byte, key string, v V, at int64, maxValue int) ([]byte, error) {
	start := len(dst)
	if at != 0 {
		dst = beginFrame(dst, frameSetX)
		dst = binary.BigEndian.AppendUint64(dst, uint64(at))
	} else {
		dst = beginFrame(dst, frameSet)
	}
	dst = appendString(dst, key)
	valueStart := len(dst)
	dst, err := appendValue(dst, v)
	if err != nil {
		return dst[:start], err
	}
	if n := len(dst) - valueStart; n > maxValue {
		return dst[:start], fmt.Errorf("%w: value of %d bytes exceeds the %d-byte limit", ErrTooLarge, n, maxValue)
	}
	return endFrame(dst, start), nil
}

// appendDelFrame appends a DEL record for key.
func appendDelFrame(dst []byte, key string) []byte {
	return appendFrame(dst, frameDel, []byte(key))
}

// appendEntry appends a key and an encoded value as CHUNK and CHUNKX
// entries and the set writes of a TX lay them out: the deadline first if
// at is not 0, then the key and the value, each after its uvarint length.
func appendEntry(dst []byte, at int64, key string, value []byte) []byte {
	if at != 0 {
		dst = binary.BigEndian.AppendUint64(dst, uint64(at))
	}
	dst = appendString(dst, key)
	dst = binary.AppendUvarint(dst, uint64(len(value)))
	return append(dst, value...)
}

// entry parses what appendEntry appends, with a deadline first if
// deadline is set; names are its fields' names in errors (constants: this
// runs for every entry, where building them would cost a fifth of a
// replica's apply).
func (p *parser) entry(names *entryNames, deadline bool, maxKey, maxValue int) op {
	var o op
	if deadline {
		o.at = p.deadline(names.deadline)
	}
	o.key = p.bytes(names.key, maxKey)
	o.raw = p.bytes(names.value, maxValue)
	return o
}

// entryNames name an entry's fields in errors.
type entryNames struct{ deadline, key, value string }

var (
	txNames       = &entryNames{"TX deadline", "TX key", "TX value"}
	snapshotNames = &entryNames{"snapshot deadline", "snapshot key", "snapshot value"}
)

// isDataRecord reports whether frames of type t are data records: writes
// that advance the offset.
func isDataRecord(t frameType) bool {
	return t == frameSet || t == frameDel || t == frameSetX || t == frameTx
}

// op is one write of a data record, checked against the limits: a set
// (with a deadline, or not) or a deletion. Its slices alias the payload
// it was parsed from.
type op struct {
	del bool
	key []byte
	raw []byte // a set's msgpack value
	at  int64  // a set's deadline in Unix nanoseconds; 0 for none
}

// parseOps appends the writes of the data record (t, payload) to ops, in
// order, after checking the whole record: a malformed or oversized one
// adds nothing. Values are not decoded here.
func parseOps(ops []op, t frameType, payload []byte, maxKey, maxValue int) ([]op, error) {
	p := parser{b: payload}
	switch t {
	case frameSet, frameSetX:
		o := op{}
		what := "SET key" // a constant: see parser.entry
		if t == frameSetX {
			o.at = p.deadline("SETX deadline")
			what = "SETX key"
		}
		o.key = p.bytes(what, maxKey)
		if p.err != nil {
			return ops, p.err
		}
		if len(p.b) > maxValue {
			return ops, fmt.Errorf("%w: value of %d bytes exceeds the %d-byte limit", ErrTooLarge, len(p.b), maxValue)
		}
		o.raw = p.b
		return append(ops, o), nil
	case frameDel:
		if len(payload) > maxKey {
			return ops, fmt.Errorf("%w: DEL key of %d bytes exceeds the %d-byte limit", ErrTooLarge, len(payload), maxKey)
		}
		return append(ops, op{del: true, key: payload}), nil
	case frameTx:
		n := p.u32("TX count")
		if p.err == nil && (n == 0 || uint64(n) > uint64(len(p.b)/2)) {
			// Every write takes at least two bytes: a count above that
			// is a lie, and must not size anything.
			return ops, fmt.Errorf("%w: TX of %d writes in %d bytes", ErrProtocol, n, len(p.b))
		}
		first := len(ops)
		for range n {
			if p.err != nil {
				break
			}
			if len(p.b) == 0 {
				p.fail("TX write")
				break
			}
			kind := frameType(p.b[0])
			p.b = p.b[1:]
			var o op
			switch kind {
			case frameSet, frameSetX:
				o = p.entry(txNames, kind == frameSetX, maxKey, maxValue)
			case frameDel:
				o = op{del: true, key: p.bytes(txNames.key, maxKey)}
			default:
				p.err = fmt.Errorf("%w: TX write of kind 0x%02x", ErrProtocol, byte(kind))
			}
			ops = append(ops, o)
		}
		if err := p.end("TX"); err != nil {
			return ops[:first], err
		}
		return ops, nil
	}
	return ops, fmt.Errorf("%w: %s is not a data record", ErrProtocol, t)
}

// applyOps applies a data record's writes to st as one: all of them, or,
// if a value does not decode, none. Readers see none of them or all. ws
// is scratch for the prepared writes, returned for reuse.
func applyOps[V any](st *store[V], ops []op, ws []write[V]) ([]write[V], error) {
	if len(ops) == 1 {
		var w write[V]
		if err := prepareRecord(st, &w, ops[0]); err != nil {
			return ws, err
		}
		st.apply(&w)
		return ws, nil
	}
	ws = ws[:0]
	for _, o := range ops {
		ws = append(ws, write[V]{})
		if err := prepareRecord(st, &ws[len(ws)-1], o); err != nil {
			clear(ws)
			return ws[:0], err
		}
	}
	st.applyAll(ws)
	clear(ws) // hold no keys or values between records
	if cap(ws) > 4096 {
		ws = nil
	}
	return ws[:0], nil
}

// checkKey reports a key over the limit.
func checkKey(key string, maxKey int) error {
	if len(key) > maxKey {
		return fmt.Errorf("%w: key of %d bytes exceeds the %d-byte limit", ErrTooLarge, len(key), maxKey)
	}
	return nil
}

// checkMsgpack walks one msgpack value without decoding it and checks that
// every declared length fits in the bytes that are really there: a string,
// binary or extension no longer than what remains, and a container with no
// more elements than remaining bytes (each element takes at least one). It
// also requires b to hold exactly one value. After it, a decoder cannot be
// talked into allocating much more than len(b) times an element's size.
func checkMsgpack(b []byte) error {
	bad := func(why string) error {
		return fmt.Errorf("%w: malformed msgpack value: %s", ErrProtocol, why)
	}
	pos, pending := 0, 1 // bytes consumed; values still to read
	// length reads an n-byte big-endian length at pos.
	length := func(n int) (int, bool) {
		if len(b)-pos < n {
			return 0, false
		}
		var v uint64
		for _, c := range b[pos : pos+n] {
			v = v<<8 | uint64(c)
		}
		pos += n
		if v > uint64(len(b)) {
			return 0, false
		}
		return int(v), true
	}
	for pending > 0 {
		if pos >= len(b) {
			return bad("truncated")
		}
		pending--
		c := b[pos]
		pos++
		skip, count := 0, 0 // payload bytes to skip; elements to add
		ok := true
		switch {
		case c <= 0x7f || c >= 0xe0 || c == 0xc0 || c == 0xc2 || c == 0xc3:
		case c&0xf0 == 0x80:
			count = 2 * int(c&0x0f)
		case c&0xf0 == 0x90:
			count = int(c & 0x0f)
		case c&0xe0 == 0xa0:
			skip = int(c & 0x1f)
		case c == 0xc4 || c == 0xd9:
			skip, ok = length(1)
		case c == 0xc5 || c == 0xda:
			skip, ok = length(2)
		case c == 0xc6 || c == 0xdb:
			skip, ok = length(4)
		case c == 0xc7, c == 0xc8, c == 0xc9: // ext 8/16/32: length, then a type byte
			skip, ok = length(1 << (c - 0xc7))
			skip++
		case c == 0xca || c == 0xce || c == 0xd2:
			skip = 4
		case c == 0xcb || c == 0xcf || c == 0xd3:
			skip = 8
		case c == 0xcc || c == 0xd0:
			skip = 1
		case c == 0xcd || c == 0xd1:
			skip = 2
		case c >= 0xd4 && c <= 0xd8: // fixext 1, 2, 4, 8, 16: a type byte and data
			skip = 1 + 1<<(c-0xd4)
		case c == 0xdc:
			count, ok = length(2)
		case c == 0xdd:
			count, ok = length(4)
		case c == 0xde:
			count, ok = length(2)
			count *= 2
		case c == 0xdf:
			count, ok = length(4)
			count *= 2
		default: // 0xc1 is never used
			return bad(fmt.Sprintf("invalid byte 0x%02x", c))
		}
		if !ok || skip > len(b)-pos {
			return bad("a length exceeds the value")
		}
		pos += skip
		pending += count
		if pending > len(b)-pos {
			return bad("more elements declared than bytes remain")
		}
	}
	if pos != len(b) {
		return bad(fmt.Sprintf("%d stray bytes", len(b)-pos))
	}
	return nil
}
