package replmap

import (
	"bufio"
	"bytes"
	"strconv"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestBacklogWindowAndEviction(t *testing.T) {
	b := newBacklog(config{backlogSize: MinBacklogSize, bufferLimit: 4 * backlogBlockSize}, 0)
	frame := bytes.Repeat([]byte{1}, 1000)
	evicted := 0
	c, ok := b.newCursor(0, func(error) { evicted++ })
	require.True(t, ok)
	for b.end.Load() < 10*backlogBlockSize {
		b.append(frame)
	}
	assert.True(t, c.evicted, "a cursor more than limit behind is evicted")
	assert.Equal(t, 1, evicted, "eviction is reported once")
	_, err := b.read(c, 100)
	assert.ErrorIs(t, err, ErrReplicaTooSlow)
	start, end := b.window()
	assert.GreaterOrEqual(t, end-start, uint64(MinBacklogSize), "the window keeps at least size bytes")
	assert.Less(t, end-start, uint64(MinBacklogSize+backlogBlockSize))
	_, ok = b.newCursor(start-1, nil)
	assert.False(t, ok)
	c2, ok := b.newCursor(start, nil)
	require.True(t, ok)
	var got int
	for {
		chunk, err := b.read(c2, 5000)
		require.NoError(t, err)
		if len(chunk) == 0 {
			break
		}
		got += len(chunk)
	}
	assert.Equal(t, int(end-start), got)
	assert.Equal(t, strconv.Itoa(int(end)), strconv.Itoa(int(c2.pos)))
}

// TestBacklogSoftLimit checks the soft limit's clock: a cursor is evicted
// only after staying past the limit for the whole soft time, and catching
// up below it, even briefly, starts the clock again.
func TestBacklogSoftLimit(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const soft = 2 * backlogBlockSize
		b := newBacklog(config{backlogSize: MinBacklogSize, bufferLimit: 100 * backlogBlockSize,
			softLimit: soft, softTime: 10 * time.Second}, 0)
		var cause error
		c, ok := b.newCursor(0, func(err error) { cause = err })
		require.True(t, ok)
		block := make([]byte, backlogBlockSize)
		grow := func() { b.append(block) } // one block: one eviction check

		for b.end.Load() <= soft+backlogBlockSize {
			grow() // past the soft limit from now on
		}
		time.Sleep(9 * time.Second)
		grow()
		require.False(t, c.evicted, "evicted before the soft time passed")

		// Catch up to within the limit: the clock starts again.
		for b.end.Load()-c.pos > soft {
			_, err := b.read(c, backlogBlockSize)
			require.NoError(t, err)
		}
		grow()
		grow()
		time.Sleep(9 * time.Second)
		grow()
		require.False(t, c.evicted, "the clock did not restart after catching up")
		time.Sleep(time.Second)
		grow()
		require.True(t, c.evicted, "not evicted after the soft time")
		assert.ErrorIs(t, cause, ErrReplicaTooSlow)
		assert.ErrorContains(t, cause, "soft limit")
	})
}

// TestBacklogReusesBlocks: blocks trimmed from the window are reused, so
// a primary writing steadily allocates no new ones.
func TestBacklogReusesBlocks(t *testing.T) {
	b := newBacklog(config{backlogSize: MinBacklogSize, bufferLimit: 4 * backlogBlockSize}, 0)
	block := make([]byte, backlogBlockSize)
	for range 20 {
		b.append(block)
	}
	allocs := testing.AllocsPerRun(100, func() { b.append(block) })
	assert.Zero(t, allocs, "appending a block's worth allocated")
}

// TestBacklogKeepsABlockBeingRead: the bytes read returns stay valid until
// the reader's next read, even once the window has moved past them: their
// block is not reused while a reader may still be writing it out.
func TestBacklogKeepsABlockBeingRead(t *testing.T) {
	b := newBacklog(config{backlogSize: MinBacklogSize, bufferLimit: 100 * backlogBlockSize}, 0)
	c, ok := b.newCursor(0, nil)
	require.True(t, ok)
	b.append(bytes.Repeat([]byte{'A'}, backlogBlockSize))
	chunk, err := b.read(c, backlogBlockSize) // all of block 0; c is now at block 1
	require.NoError(t, err)
	require.Len(t, chunk, backlogBlockSize)
	// Block 1, then block 2, whose allocation trims block 0 from the
	// window: a reused block 0 would now hold 'C's.
	b.append(bytes.Repeat([]byte{'B'}, backlogBlockSize))
	b.append(bytes.Repeat([]byte{'C'}, backlogBlockSize))
	assert.Equal(t, bytes.Repeat([]byte{'A'}, backlogBlockSize), chunk)
}

// appendingWriter appends more to a backlog on every write, as writers
// appending while a link drains would.
type appendingWriter struct {
	b       *backlog
	written int
}

func (w *appendingWriter) Write(p []byte) (int, error) {
	w.written += len(p)
	if w.written < 8<<20 { // an unbounded drain would stop here
		w.b.append(make([]byte, 64<<10))
	}
	return len(p), nil
}

// TestDrainIsBounded: a drain writes the stream up to the end it saw on
// entry, however much is appended meanwhile, so a Wait that writes a
// GETACK on its own goroutine writes a bounded amount.
func TestDrainIsBounded(t *testing.T) {
	b := newBacklog(config{backlogSize: 64 << 20, bufferLimit: 64 << 20}, 0)
	b.append(make([]byte, 100<<10))
	c, ok := b.newCursor(0, nil)
	require.True(t, ok)
	l := &link[int]{d: &dataset[int]{backlog: b}, cur: c}
	w := &appendingWriter{b: b}
	bw := bufio.NewWriterSize(w, 16<<10)
	_, err := l.drain(bw)
	require.NoError(t, err)
	require.NoError(t, bw.Flush())
	assert.Equal(t, 100<<10, w.written, "drained only what was there on entry")
	assert.Equal(t, uint64(100<<10), c.pos)
}
