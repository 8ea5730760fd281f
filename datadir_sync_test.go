package replmap

import (
	"errors"
	"fmt"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestSyncReportsSnapshotFailure: a snapshot that cannot be written stops
// writes, and Sync reports that failure too rather than nil.
func TestSyncReportsSnapshotFailure(t *testing.T) {
	boom := errors.New("boom")
	fs := &faultFS{}
	fs.failWrite = func(name string) error {
		if filepath.Base(name) == "snap.tmp" {
			return boom
		}
		return nil
	}
	opts := append(fastOpts(t), WithDataDir(t.TempDir()), optionFunc(func(c *config) { c.fsys = fs }), withSmallLog(1<<10, 1<<10))
	p, err := NewPrimary[string](opts...)
	require.NoError(t, err)
	defer p.Close()
	waitFor(t, "writes to stop", func() bool {
		return p.Set(fmt.Sprint("k", p.Offset()), "value") != nil
	})
	assert.ErrorIs(t, p.Set("k", "v"), boom)
	assert.ErrorIs(t, p.Sync(), boom, "Sync reports why writes stopped")
}
