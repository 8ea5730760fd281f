package replmap

import (
	"bytes"
	"encoding/binary"
	"io"
	"runtime"
	"testing"
	"testing/iotest"
	"testing/synctest"
	"time"

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

// TestFrameReaderTimesOutAFrameThatNeverEnds feeds a header promising more
// bytes than will come soon, then a trickle that keeps the connection busy
// (as heartbeats would after a corrupted length): the reader must give up
// after its timeout instead of waiting for the whole declared length.
func TestFrameReaderTimesOutAFrameThatNeverEnds(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		pr, pw := io.Pipe()
		done := make(chan struct{})
		defer func() { pr.Close(); <-done }()
		go func() {
			defer close(done)
			hdr := binary.BigEndian.AppendUint32(nil, 1<<20)
			if _, err := pw.Write(append(hdr, byte(frameSet))); err != nil {
				return
			}
			for {
				time.Sleep(time.Second)
				if _, err := pw.Write(pingFrame); err != nil {
					return
				}
			}
		}()
		fr := newFrameReader(pr, DefaultMaxFrameSize)
		fr.timeout = 5 * time.Second
		start := time.Now()
		_, _, _, err := fr.next()
		require.ErrorIs(t, err, ErrLinkTimeout)
		assert.Equal(t, 6*time.Second, time.Since(start), "gave up at the first read after the timeout")
	})
}
