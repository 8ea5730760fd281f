package replmap

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestDeleteOfMissingKeyWaitsForDisk: D1 for a Delete that finds its key
// already gone. It acknowledges that state, so under FsyncAlways it
// returns only once the write that removed the key is on disk. (Found by
// TestChaosDurable: a crash lost another writer's Delete, not yet
// fsynced, and the key came back after this one had returned nil.)
func TestDeleteOfMissingKeyWaitsForDisk(t *testing.T) {
	p, err := NewPrimary[string](append(fastOpts(t), WithDataDir(t.TempDir()), WithFsync(FsyncAlways))...)
	require.NoError(t, err)
	defer func() { assert.NoError(t, p.Close()) }()
	// Another writer's Delete of k, between its write and its fsync. The
	// group commit of the Set before it may still be running and take the
	// DEL along: then try again, until the DEL is not on disk yet.
	n := p.n
	for attempt := 0; ; attempt++ {
		require.Less(t, attempt, 1000, "the DEL was always on disk at once")
		require.NoError(t, p.Set("k", "v"))
		n.writeMu.Lock()
		d := n.data()
		require.True(t, d.store.delete("k"))
		require.NoError(t, n.appendRecord(d, appendDelFrame(nil, "k"), nil))
		n.writeMu.Unlock()
		if p.Info().DurableOffset < p.Offset() {
			break
		}
	}
	require.NoError(t, p.Delete("k"))
	assert.Equal(t, p.Offset(), p.Info().DurableOffset, "Delete returned before the state it saw was on disk")
}
