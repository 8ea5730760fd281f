package main

import (
	"bufio"
	"context"
	"io"
	"strconv"
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

// TestRestartedPrimaryDoesNotWipeReplica: a primary restarted empty on
// the same address does not wipe its replica, which keeps its counter and
// reports why; one started with -allow-data-loss follows the empty one.
func TestRestartedPrimaryDoesNotWipeReplica(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pctx, pcancel := context.WithCancel(ctx)
	plines, pdone := start(t, pctx, "-role", "primary", "-listen", "127.0.0.1:0", "-interval", "10ms")
	first := waitLine(t, plines, "primary ")
	addr := first[strings.LastIndex(first, " ")+1:]
	guarded, gdone := start(t, ctx, "-role", "replica", "-primary", addr, "-interval", "10ms")
	careless, cdone := start(t, ctx, "-role", "replica", "-primary", addr, "-interval", "10ms", "-allow-data-loss")
	waitLine(t, guarded, "replica: state=streaming offset=")
	for l := range plines {
		if strings.Contains(l, "counter=5 ") {
			break
		}
	}
	pcancel()
	require.NoError(t, <-pdone)
	for range plines {
	}

	plines, pdone = start(t, ctx, "-role", "primary", "-listen", addr, "-interval", "10ms")
	waitLine(t, plines, "primary ")
	line := waitLine(t, guarded, "replica: state=connecting")
	for !strings.Contains(line, "would lose data") {
		line = waitLine(t, guarded, "replica: ")
	}
	counter := line[strings.Index(line, "counter=")+len("counter="):]
	counter = counter[:strings.Index(counter, " ")]
	n, err := strconv.Atoi(counter)
	require.NoError(t, err, line)
	assert.GreaterOrEqual(t, n, 5, "the guarded replica kept its counter")
	// The careless one follows the new primary: its counter starts again.
	for {
		l := waitLine(t, careless, "replica: state=streaming")
		if strings.Contains(l, "counter=1 ") || strings.Contains(l, "counter=2 ") {
			break
		}
	}
	cancel()
	require.NoError(t, <-pdone)
	require.NoError(t, <-gdone)
	require.NoError(t, <-cdone)
	for range plines {
	}
	for range guarded {
	}
	for range careless {
	}
}

func TestBadFlags(t *testing.T) {
	var sb strings.Builder
	assert.Error(t, run(context.Background(), []string{"-role", "sidecar"}, &sb))
	assert.Error(t, run(context.Background(), []string{"-interval", "0s"}, &sb))
}
