package replmap

import (
	"bytes"
	"strconv"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestBacklogWindowAndEviction(t *testing.T) {
	b := newBacklog(MinBacklogSize, 4*backlogBlockSize)
	frame := bytes.Repeat([]byte{1}, 1000)
	evicted := 0
	c, ok := b.newCursor(0, func() { evicted++ })
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
