package replmap

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func withLoadWorkers(n int) Option { return optionFunc(func(c *config) { c.loadWorkers = n }) }

// interleavedBackup returns a backup whose CHUNKs (of a few entries each)
// alternate with SET and DEL records over the same few keys, both before
// and after END, and the data it holds: what applying entries and records
// in stream order gives.
func interleavedBackup(t *testing.T, seed uint64) ([]byte, map[string][]byte) {
	rng := rand.New(rand.NewPCG(seed, 1))
	var buf bytes.Buffer
	const start = 1000
	buf.Write(appendSyncStart(nil, frameFull, syncStart{replID: newReplID(), offset: start, epoch: 1, keys: 50}))
	want := map[string][]byte{}
	value := func() []byte {
		if rng.IntN(10) == 0 {
			return nil
		}
		return fmt.Appendf(nil, "v%d", rng.Uint32())
	}
	offset := uint64(start)
	record := func() {
		k := fmt.Sprintf("k%d", rng.IntN(300))
		var f []byte
		if rng.IntN(4) == 0 {
			f = appendDelFrame(nil, k)
			delete(want, k)
		} else {
			v := value()
			var err error
			f, err = appendSetFrame(nil, k, v, 0, DefaultMaxValueSize)
			require.NoError(t, err)
			want[k] = v
		}
		buf.Write(f)
		offset += uint64(len(f))
	}
	sw := snapshotWriter{w: &buf, limit: 64}
	for range 3000 {
		if rng.IntN(3) == 0 {
			require.NoError(t, sw.flush())
			record()
			continue
		}
		k, v := fmt.Sprintf("k%d", rng.IntN(300)), value()
		require.NoError(t, addEntry(&sw, k, v, 0))
		want[k] = v
	}
	// Records that END's offset takes in, then END, then the rest.
	require.NoError(t, sw.flush())
	mark := buf.Len()
	for range 200 {
		record()
	}
	after := bytes.Clone(buf.Bytes()[mark:])
	buf.Truncate(mark)
	require.NoError(t, sw.finish(offset))
	buf.Write(after)
	return buf.Bytes(), want
}

// TestParallelLoadKeepsOrder: a backup whose records overwrite and delete
// the keys of the snapshot's entries loads to the same data with any
// number of workers as sequentially.
func TestParallelLoadKeepsOrder(t *testing.T) {
	for seed := range uint64(4) {
		b, want := interleavedBackup(t, seed)
		for _, workers := range []int{-1, 1, 2, 3, 4, 7} {
			cfg, err := newConfig([]Option{withLoadWorkers(workers)})
			require.NoError(t, err)
			_, st, _, err := readBackup[[]byte](bytes.NewReader(b), cfg, int64(len(b)))
			require.NoError(t, err, "seed %d, %d workers", seed, workers)
			assert.Equal(t, want, snapshotOf(st.all()), "seed %d, %d workers", seed, workers)
			assert.Equal(t, len(want), st.len(), "seed %d, %d workers", seed, workers)
			for k, v := range want {
				got, _ := st.get(k)
				assert.Equal(t, v == nil, got == nil, "seed %d, %d workers: nil value of %s", seed, workers, k)
			}

			// A store of values that are decoded.
			_, ss, _, err := readBackup[string](bytes.NewReader(b), cfg, int64(len(b)))
			require.NoError(t, err)
			assert.Equal(t, len(want), ss.len())
			for k, v := range want {
				got, ok := ss.get(k)
				assert.True(t, ok)
				assert.Equal(t, string(v), got)
			}
		}
	}
}

// TestParallelLoadValueError: a value that does not decode, found by a
// worker, fails the load, and no worker outlives it (goleak, TestMain).
func TestParallelLoadValueError(t *testing.T) {
	var buf bytes.Buffer
	buf.Write(appendSyncStart(nil, frameFull, syncStart{replID: newReplID(), offset: 0, keys: 5000}))
	var crc uint32
	var count uint64
	for c := range 40 {
		var payload []byte
		for i := range 100 {
			payload = appendString(payload, fmt.Sprintf("k%d-%d", c, i))
			raw := []byte{0xa1, 'x'}
			if c == 20 && i == 50 {
				raw = []byte{0xc1} // never valid msgpack
			}
			payload = binary.AppendUvarint(payload, uint64(len(raw)))
			payload = append(payload, raw...)
			count++
		}
		crc = crc32.Update(crc, castagnoli, payload)
		buf.Write(appendFrame(nil, frameChunk, payload))
	}
	buf.Write(appendSnapshotEnd(nil, snapshotEnd{count: count, crc: crc, offset: 0}))
	for _, workers := range []int{-1, 1, 2, 4} {
		cfg, err := newConfig([]Option{withLoadWorkers(workers)})
		require.NoError(t, err)
		_, _, _, err = readBackup[[]byte](bytes.NewReader(buf.Bytes()), cfg, 0)
		assert.ErrorIs(t, err, ErrProtocol, "%d workers", workers)
	}
}

// TestDataDirLogValueError: a record in the log that passes its checksum
// but whose value does not decode fails the restart with ErrChecksum,
// naming the segment and the offset.
func TestDataDirLogValueError(t *testing.T) {
	dir := t.TempDir()
	p, err := NewPrimary[[]byte](append(fastOpts(t), WithDataDir(dir))...)
	require.NoError(t, err)
	for i := range 3000 {
		require.NoError(t, p.Set(fmt.Sprintf("k%d", i), []byte("v")))
	}
	bad := p.Offset()
	require.NoError(t, p.Close())

	gens, err := filepath.Glob(filepath.Join(dir, genPrefix+"*"))
	require.NoError(t, err)
	require.Len(t, gens, 1)
	segs, err := filepath.Glob(filepath.Join(gens[0], "log-*.seg"))
	require.NoError(t, err)
	require.NotEmpty(t, segs)
	last := segs[len(segs)-1]
	f, err := os.OpenFile(last, os.O_WRONLY|os.O_APPEND, 0)
	require.NoError(t, err)
	payload := append(appendString(nil, "bad"), 0xc1)
	frame := appendFrame(nil, frameSet, payload)
	for i := range 2000 { // then good records, for the workers to be busy with
		frame = appendFrame(frame, frameSet, append(appendString(nil, fmt.Sprintf("k%d", i)), 0xa1, 'w'))
	}
	_, err = f.Write(frame)
	require.NoError(t, err)
	require.NoError(t, f.Close())

	for _, workers := range []int{-1, 2} {
		_, err = NewPrimary[[]byte](append(fastOpts(t), WithDataDir(dir), withLoadWorkers(workers))...)
		require.ErrorIs(t, err, ErrChecksum, "%d workers", workers)
		assert.ErrorContains(t, err, fmt.Sprintf("%s at offset %d", last, bad), "%d workers", workers)
	}
}

// TestLoadSizeHint: the store of a restart is sized for the snapshot's
// entries by their size and for what the log may add, within twice the
// FULL frame's hint.
func TestLoadSizeHint(t *testing.T) {
	var chunk []byte
	for i := range 10 {
		chunk = appendString(chunk, fmt.Sprintf("key%03d", i))                             // 7 bytes
		chunk = binary.AppendUvarint(chunk, 12)                                            // 1
		chunk = append(chunk, 0xab, 'v', 'a', 'l', 'u', 'e', '.', '.', 'x', 'y', 'z', '!') // 12: 20 an entry
	}
	assert.Equal(t, 100, loadSizeHint(60, chunk, 2000, 0))
	assert.Equal(t, 150, loadSizeHint(100, chunk, 2000, 50*(20+frameOverhead)))
	assert.Equal(t, 120, loadSizeHint(60, chunk, 2000, 1<<20), "at most twice the hint")
	assert.Equal(t, 500, loadSizeHint(500, chunk, 2000, 0), "never below the hint")
	assert.Equal(t, 60, loadSizeHint(60, nil, 2000, 0))
	assert.Equal(t, 0, loadSizeHint(0, chunk, 2000, 0))
}
