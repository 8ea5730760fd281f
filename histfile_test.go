package replmap

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestHistoryRecord(t *testing.T) {
	dir := t.TempDir()
	_, ok, err := readHistory(osFS{}, dir)
	require.NoError(t, err)
	assert.False(t, ok, "no record yet")

	h := dirRecord{hist: history{replID: newReplID(), replID2: newReplID(), replID2Offset: 12345, epoch: 7}, gen: 3}
	require.NoError(t, writeHistory(osFS{}, dir, h))
	got, ok, err := readHistory(osFS{}, dir)
	require.NoError(t, err)
	assert.True(t, ok)
	assert.Equal(t, h, got)

	// Every flipped bit, and every truncation, is an error wrapping
	// ErrChecksum that names the file.
	name := filepath.Join(dir, historyFileName)
	orig, err := os.ReadFile(name)
	require.NoError(t, err)
	for i := range orig {
		b := append([]byte(nil), orig...)
		b[i] ^= 0x04
		require.NoError(t, os.WriteFile(name, b, 0o644))
		_, _, err := readHistory(osFS{}, dir)
		require.ErrorIs(t, err, ErrChecksum, "flip at byte %d", i)
		assert.Contains(t, err.Error(), name)
		require.NoError(t, os.WriteFile(name, orig[:i], 0o644))
		_, _, err = readHistory(osFS{}, dir)
		require.ErrorIs(t, err, ErrChecksum, "cut at byte %d", i)
	}
}

// TestHistoryRecordIsReplacedWhole: a write that fails at any step leaves
// the old record in place.
func TestHistoryRecordIsReplacedWhole(t *testing.T) {
	dir := t.TempDir()
	old := dirRecord{hist: history{replID: "old", epoch: 1}, gen: 1}
	require.NoError(t, writeHistory(osFS{}, dir, old))
	boom := errors.New("no space left")
	for name, set := range map[string]func(fs *faultFS){
		"write": func(fs *faultFS) { fs.failWrite = func(string) error { return boom } },
		"fsync": func(fs *faultFS) { fs.failSync = func(string) error { return boom } },
	} {
		t.Run(name, func(t *testing.T) {
			fs := &faultFS{}
			set(fs)
			err := writeHistory(fs, dir, dirRecord{hist: history{replID: "new", epoch: 2}, gen: 2})
			require.ErrorIs(t, err, boom)
			got, ok, err := readHistory(osFS{}, dir)
			require.NoError(t, err)
			assert.True(t, ok)
			assert.Equal(t, old, got)
			_, err = os.Stat(filepath.Join(dir, historyFileName+".tmp"))
			assert.ErrorIs(t, err, os.ErrNotExist, "no temporary file left")
		})
	}
}
