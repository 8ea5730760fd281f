//go:build !linux

package transport_test

import (
	"net"
	"testing"
	"time"
)

// keepAlive skips the test: reading a socket's keep-alive settings is
// implemented on Linux only.
func keepAlive(t *testing.T, _ net.Conn) (on bool, idle time.Duration) {
	t.Helper()
	t.Skip("reading keep-alive settings is implemented on linux only")
	return false, 0
}
