package main

import (
	"bufio"
	"context"
	"io"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// lines runs a role and sends each line it prints.
func start(t *testing.T, ctx context.Context, args ...string) (<-chan string, <-chan error) {
	pr, pw := io.Pipe()
	lines := make(chan string, 1000)
	done := make(chan error, 1)
	go func() {
		err := run(ctx, args, pw)
		pw.Close()
		done <- err
	}()
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	return lines, done
}

func waitLine(t *testing.T, lines <-chan string, prefix string) string {
	t.Helper()
	for l := range lines {
		if strings.HasPrefix(l, prefix) {
			return l
		}
	}
	t.Fatalf("no line starting with %q", prefix)
	return ""
}

func TestPrimaryAndReplicaOverTCP(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	plines, pdone := start(t, ctx, "-role", "primary", "-listen", "127.0.0.1:0", "-interval", "20ms")
	first := waitLine(t, plines, "primary ")
	addr := first[strings.LastIndex(first, " ")+1:]

	rlines, rdone := start(t, ctx, "-role", "replica", "-primary", addr, "-interval", "20ms")
	waitLine(t, rlines, "replica: state=streaming")
	waitLine(t, plines, "primary: counter")
	for l := range plines {
		if strings.Contains(l, "acknowledged=1") {
			break
		}
	}
	cancel()
	require.NoError(t, <-pdone)
	require.NoError(t, <-rdone)
	for range plines {
	}
	for range rlines {
	}
}

func TestBadFlags(t *testing.T) {
	var sb strings.Builder
	assert.Error(t, run(context.Background(), []string{"-role", "sidecar"}, &sb))
	assert.Error(t, run(context.Background(), []string{"-interval", "0s"}, &sb))
}
