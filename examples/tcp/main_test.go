package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"
	"testing"
	"time"

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

// waitLine returns the next line that starts with prefix. The deadline
// only turns a hang into a failure that says what was awaited.
func waitLine(t *testing.T, lines <-chan string, prefix string) string {
	t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("no line starting with %q", prefix)
			}
			if strings.HasPrefix(l, prefix) {
				return l
			}
		case <-deadline:
			t.Fatalf("no line starting with %q after 30s", prefix)
		}
	}
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

	// The new primary writes nothing: a replica refuses an unrelated
	// history only while it is behind (H4), and a primary that wrote past
	// the replica's offset before the replica reconnected would wipe it.
	plines, pdone = start(t, ctx, "-role", "primary", "-listen", addr, "-interval", "1h")
	newID := strings.Fields(waitLine(t, plines, "primary "))[1]
	line := waitLine(t, guarded, "replica: state=connecting")
	for !strings.Contains(line, "would lose data") {
		line = waitLine(t, guarded, "replica: ")
	}
	counter := line[strings.Index(line, "counter=")+len("counter="):]
	counter = counter[:strings.Index(counter, " ")]
	n, err := strconv.Atoi(counter)
	require.NoError(t, err, line)
	assert.GreaterOrEqual(t, n, 5, "the guarded replica kept its counter")
	// The careless one follows the new primary with a full sync into its
	// history, and holds nothing.
	for {
		l := waitLine(t, careless, "replica: full sync (")
		if strings.HasSuffix(l, "history "+newID) {
			break
		}
	}
	assert.Contains(t, waitLine(t, careless, "replica: state=streaming"), "offset=0 counter= ")
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

// field returns the integer that follows name= in line.
func field(t *testing.T, line, name string) int {
	t.Helper()
	i := strings.Index(line, name+"=")
	require.GreaterOrEqual(t, i, 0, "no %s= in %q", name, line)
	v := line[i+len(name)+1:]
	if j := strings.IndexByte(v, ' '); j >= 0 {
		v = v[:j]
	}
	n, err := strconv.Atoi(v)
	require.NoError(t, err, line)
	return n
}

// TestRestartOnDataDir: a primary restarted with -data loads its keys at
// the offset it stopped at and counts on; its replica resumes with a
// partial resync, its counter intact. The replica, restarted with its own
// -data, serves its counter at once and resumes partially too.
func TestRestartOnDataDir(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dir := t.TempDir()
	pdir, rdir := dir+"/primary", dir+"/replica"

	// First run: a fresh replica full-syncs from a fresh primary.
	pctx, pcancel := context.WithCancel(ctx)
	plines, pdone := start(t, pctx, "-role", "primary", "-data", pdir, "-listen", "127.0.0.1:0", "-interval", "10ms")
	first := waitLine(t, plines, "primary ")
	addr := first[strings.LastIndex(first, " ")+1:]
	rctx, rcancel := context.WithCancel(ctx)
	rlines, rdone := start(t, rctx, "-role", "replica", "-data", rdir, "-primary", addr, "-interval", "10ms")
	waitLine(t, rlines, "replica: full sync (1 so far)")
	last := 0
	for last < 5 {
		last = field(t, waitLine(t, plines, "primary: counter="), "counter")
	}
	pcancel()
	require.NoError(t, <-pdone)
	// The last counter written is the last one printed: each is printed
	// before the loop looks at the context again.
	for l := range plines {
		if strings.HasPrefix(l, "primary: counter=") {
			last = field(t, l, "counter")
		}
	}

	// The primary restarts on its directory, on the same address.
	pctx, pcancel = context.WithCancel(ctx)
	defer pcancel()
	plines, pdone = start(t, pctx, "-role", "primary", "-data", pdir, "-listen", addr, "-interval", "10ms")
	var keys, offset int
	loaded := waitLine(t, plines, "primary: loaded ")
	_, err := fmt.Sscanf(loaded, "primary: loaded %d keys at offset %d,", &keys, &offset)
	require.NoError(t, err, loaded)
	assert.Equal(t, 2, keys, loaded)
	assert.Positive(t, offset, loaded)
	assert.Equal(t, last+1, field(t, waitLine(t, plines, "primary: counter="), "counter"), "the primary counts on")

	// Its replica resumes partially and never went back.
	waitLine(t, rlines, "replica: resumed with a partial resync (1 so far)")
	for {
		l := waitLine(t, rlines, "replica: state=streaming")
		require.Contains(t, l, "full=1 partial=1", "no second full sync")
		if field(t, l, "counter") > last {
			break
		}
	}
	rcancel()
	require.NoError(t, <-rdone)
	held := 0
	for l := range rlines {
		if strings.HasPrefix(l, "replica: state=") {
			held = max(held, field(t, l, "counter"))
		}
	}

	// The replica restarts on its directory: it serves its data at once
	// and resumes partially.
	rlines, rdone = start(t, ctx, "-role", "replica", "-data", rdir, "-primary", addr, "-interval", "10ms")
	loaded = waitLine(t, rlines, "replica: loaded ")
	_, err = fmt.Sscanf(loaded, "replica: loaded %d keys at offset %d", &keys, &offset)
	require.NoError(t, err, loaded)
	assert.Equal(t, 2, keys, loaded)
	assert.Positive(t, offset, loaded)
	waitLine(t, rlines, "replica: resumed with a partial resync (1 so far)")
	l := waitLine(t, rlines, "replica: state=streaming")
	assert.Contains(t, l, "full=0 partial=1")
	assert.GreaterOrEqual(t, field(t, l, "counter"), held, "the replica's counter is intact")

	cancel()
	require.NoError(t, <-pdone)
	require.NoError(t, <-rdone)
	for range plines {
	}
	for range rlines {
	}
}
