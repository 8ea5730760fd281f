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
	require.NoError(t, p.Set("k", "v"))

	// Another writer's Delete of k, between its write and its fsync.
	n := p.n
	n.writeMu.Lock()
	d := n.data()
	require.True(t, d.store.delete("k"))
	require.NoError(t, n.appendRecord(d, appendDelFrame(nil, "k"), nil))
	n.writeMu.Unlock()
	require.Less(t, p.Info().DurableOffset, p.Offset())

	require.NoError(t, p.Delete("k"))
	assert.Equal(t, p.Offset(), p.Info().DurableOffset, "Delete returned before the state it saw was on disk")
}
