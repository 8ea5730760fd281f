//go:build !unix

package replmap

// lockDir does nothing where flock is not available: one process per
// data directory is then up to the caller.
func lockDir(dir string) (func() error, error) { return func() error { return nil }, nil }
