package replmap

import (
	"bytes"
	"context"
	"errors"
	"maps"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/replmap/replmap/transport"
)

// stateAt replays recorded SET and DEL frames that end at or before
// offset into a map of string values.
func stateAt(t *testing.T, frames []recordedFrame, offset uint64) map[string]string {
	m := make(map[string]string)
	for _, f := range frames {
		if f.end > offset {
			break
		}
		fr := newFrameReader(bytes.NewReader(f.bytes), DefaultMaxFrameSize)
		typ, payload, _, err := fr.next()
		require.NoError(t, err)
		ops, err := parseOps(nil, typ, payload, DefaultMaxKeySize, DefaultMaxValueSize)
		require.NoError(t, err)
		for _, o := range ops {
			if o.del {
				delete(m, string(o.key))
				continue
			}
			v, err := decodeValue[string](o.raw)
			require.NoError(t, err)
			m[string(o.key)] = v
		}
	}
	return m
}

type recordedFrame struct {
	bytes []byte
	end   uint64
}

// TestBackupUnderWrites: a backup taken while writers write restores to
// exactly the primary's data at the offset the backup returned, and the
// restored primary continues that history.
func TestBackupUnderWrites(t *testing.T) {
	p, err := NewPrimary[string](WithEpoch(3))
	require.NoError(t, err)
	defer p.Close()
	var mu sync.Mutex
	var frames []recordedFrame
	p.n.testHookWrite = func(record []byte, end uint64) {
		mu.Lock()
		frames = append(frames, recordedFrame{bytes.Clone(record), end})
		mu.Unlock()
	}
	for i := range 20000 {
		require.NoError(t, p.Set("k"+strconv.Itoa(i), "v"+strconv.Itoa(i)))
	}
	var stop atomic.Bool
	var wg sync.WaitGroup
	for w := range 3 {
		wg.Go(func() {
			for i := 0; !stop.Load(); i++ {
				key := "k" + strconv.Itoa((i*7+w)%25000)
				if i%5 == 0 {
					assert.NoError(t, p.Delete(key))
				} else {
					assert.NoError(t, p.Set(key, "w"+strconv.Itoa(w)+"-"+strconv.Itoa(i)))
				}
			}
		})
	}
	var backup bytes.Buffer
	end, err := p.Backup(t.Context(), &backup)
	stop.Store(true)
	wg.Wait()
	require.NoError(t, err)

	r, err := RestorePrimary[string](bytes.NewReader(backup.Bytes()))
	require.NoError(t, err)
	defer r.Close()
	mu.Lock()
	want := stateAt(t, frames, end)
	mu.Unlock()
	assert.Equal(t, want, snapshotOf(r.All()), "exactly the data at the backup's offset")
	info := r.Info()
	assert.Equal(t, end, r.Offset())
	assert.Equal(t, p.ReplID(), info.ReplID2)
	assert.Equal(t, end, info.ReplID2Offset)
	assert.Equal(t, uint64(3), info.Epoch)
	assert.Zero(t, p.Info().FullSyncs, "a backup is not a full sync served")

	// The restored primary serves replicas and takes writes.
	tr := transport.NewInmem()
	l, err := tr.Listen("r")
	require.NoError(t, err)
	go r.Serve(l)
	rep := startReplica[string](t, tr, "r")
	require.NoError(t, r.Set("after", "restore"))
	requireConverged(t, r, rep)
}

// TestRestoreRefusesDamage: a flipped bit or a truncation anywhere in a
// backup fails the restore; no damaged backup is ever served.
func TestRestoreRefusesDamage(t *testing.T) {
	p, err := NewPrimary[string]()
	require.NoError(t, err)
	defer p.Close()
	for i := range 3000 {
		require.NoError(t, p.Set("k"+strconv.Itoa(i), "value "+strconv.Itoa(i)))
	}
	var backup bytes.Buffer
	_, err = p.Backup(t.Context(), &backup)
	require.NoError(t, err)
	orig := backup.Bytes()
	known := func(err error) bool {
		return errors.Is(err, ErrChecksum) || errors.Is(err, ErrProtocol) || errors.Is(err, ErrTooLarge)
	}
	for i := 0; i < len(orig); i += 37 {
		b := bytes.Clone(orig)
		b[i] ^= 0x20
		_, err := RestorePrimary[string](bytes.NewReader(b))
		require.Error(t, err, "flip at byte %d", i)
		require.True(t, known(err), "flip at byte %d: %v", i, err)
		_, err = RestorePrimary[string](bytes.NewReader(orig[:i]))
		require.Error(t, err, "cut at byte %d", i)
		require.True(t, known(err), "cut at byte %d: %v", i, err)
	}
	_, err = RestorePrimary[string](bytes.NewReader(append(bytes.Clone(orig), pingFrame...)))
	assert.ErrorIs(t, err, ErrProtocol, "data after the end")
	_, err = RestorePrimary[string](bytes.NewReader(orig), WithMaxSnapshotSize(1<<10))
	assert.ErrorIs(t, err, ErrTooLarge)
	r, err := RestorePrimary[string](bytes.NewReader(orig))
	require.NoError(t, err, "the undamaged backup restores")
	defer r.Close()
	assert.Equal(t, maps.Collect(p.All()), maps.Collect(r.All()))
}

func TestBackupRefusals(t *testing.T) {
	p, err := NewPrimary[string]()
	require.NoError(t, err)
	require.NoError(t, p.Set("a", "b"))
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	_, err = p.Backup(ctx, &bytes.Buffer{})
	assert.ErrorIs(t, err, context.Canceled)
	require.NoError(t, p.Close())
	_, err = p.Backup(t.Context(), &bytes.Buffer{})
	assert.ErrorIs(t, err, ErrClosed)
	_, err = RestorePrimary[string](bytes.NewReader(nil))
	assert.ErrorIs(t, err, ErrProtocol, "an empty backup")
}
