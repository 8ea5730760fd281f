package transport_test

import (
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// keepAlive reports whether the TCP socket under c (a TCP or TLS
// connection) sends keep-alive probes, and after how long idle.
func keepAlive(t *testing.T, c net.Conn) (on bool, idle time.Duration) {
	t.Helper()
	if nc, ok := c.(interface{ NetConn() net.Conn }); ok {
		c = nc.NetConn()
	}
	sc, ok := c.(syscall.Conn)
	require.True(t, ok, "%T is not a syscall.Conn", c)
	rc, err := sc.SyscallConn()
	require.NoError(t, err)
	var onOpt, idleOpt int
	var optErr error
	require.NoError(t, rc.Control(func(fd uintptr) {
		onOpt, optErr = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_KEEPALIVE)
		if optErr == nil {
			idleOpt, optErr = syscall.GetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_KEEPIDLE)
		}
	}))
	require.NoError(t, optErr)
	return onOpt != 0, time.Duration(idleOpt) * time.Second
}
