//go:build unix

package replmap

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
)

// lockDir takes an exclusive lock on dir (flock on dir/LOCK), so that two
// nodes never write one data directory; the kernel drops it when the
// process dies, however it dies.
func lockDir(dir string) (func() error, error) {
	name := filepath.Join(dir, lockFileName)
	f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w: %s is in use by another Primary or Replica", ErrInvalidOption, dir)
		}
		return nil, fmt.Errorf("locking %s: %w", name, err)
	}
	return f.Close, nil
}
