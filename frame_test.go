package replmap

import (
	"bytes"
	"encoding/binary"
	"io"
	"runtime"
	"testing"
	"testing/iotest"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestFrameReaderBoundsAllocation: a length prefix for a 32 MiB frame
// whose bytes never come must not make the reader allocate for it.
func TestFrameReaderBoundsAllocation(t *testing.T) {
	hdr := binary.BigEndian.AppendUint32(nil, DefaultMaxFrameSize)
	hdr = append(hdr, byte(frameSet))
	input := append(hdr, bytes.Repeat([]byte{1}, 100)...)

	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for range 10 {
		fr := newFrameReader(bytes.NewReader(input), DefaultMaxFrameSize)
		_, _, _, err := fr.next()
		require.ErrorIs(t, err, io.ErrUnexpectedEOF)
	}
	runtime.ReadMemStats(&after)
	perRead := (after.TotalAlloc - before.TotalAlloc) / 10
	assert.Less(t, perRead, uint64(256<<10), "allocated %d bytes for a frame that never came", perRead)
}

func TestFrameRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	frames := []struct {
		t       frameType
		payload []byte
	}{{framePing, nil}, {frameSet, []byte("hello")}, {frameChunk, bytes.Repeat([]byte{7}, 200000)}}
	for _, f := range frames {
		buf.Write(appendFrame(nil, f.t, f.payload))
	}
	// One byte per Read, to catch partial-read bugs.
	fr := newFrameReader(iotest.OneByteReader(&buf), DefaultMaxFrameSize)
	for _, f := range frames {
		typ, payload, size, err := fr.next()
		require.NoError(t, err)
		assert.Equal(t, f.t, typ)
		assert.Equal(t, len(f.payload), len(payload))
		assert.True(t, bytes.Equal(f.payload, payload))
		assert.Equal(t, len(f.payload)+frameOverhead, size)
	}
	_, _, _, err := fr.next()
	assert.ErrorIs(t, err, io.EOF)
}
