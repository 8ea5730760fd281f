package main

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

// TestMain lets the test binary serve as a replica process, as the
// benchmark binary does, and checks that no goroutine outlives the tests.
func TestMain(m *testing.M) {
	if os.Getenv(roleEnv) == "replica" {
		os.Exit(replicaMain(os.Stdin, os.Stdout, os.Stderr))
	}
	goleak.VerifyTestMain(m)
}

// TestRunSmall runs every workload against replmap at a tiny scale: the
// replica processes, the proxy and the table all work, and every row has
// a figure.
func TestRunSmall(t *testing.T) {
	dir := t.TempDir()
	var out, progress bytes.Buffer
	err := run(t.Context(), []string{
		"-writes", "2000", "-keyspace", "1500", "-latency-ops", "200", "-ack-time", "200ms",
		"-sync-keys", "2000", "-resync-writes", "300", "-failover-keys", "2000", "-restart-keys", "2000",
		"-ttl-keys", "2000", "-expire-rate", "1000",
		"-out", dir,
	}, &out, &progress)
	require.NoError(t, err, progress.String())

	md := out.String()
	for _, r := range rows {
		assert.Contains(t, md, "| "+r.id+" |", "row %s missing", r.id)
	}
	b, err := os.ReadFile(filepath.Join(dir, "results.json"))
	require.NoError(t, err)
	var res results
	require.NoError(t, json.Unmarshal(b, &res))
	require.Len(t, res.Rows, len(rows))
	for _, r := range res.Rows {
		assert.Len(t, r.Replmap, 1, r.ID)
		switch {
		case strings.HasSuffix(r.ID, "full syncs"):
			assert.Zero(t, r.ReplmapMedian, "%s: a failover, handover or restart without a full sync", r.ID)
		case r.ID == "W12 cost", r.ID == "W16 cost": // a difference between two rates: either sign
		case !strings.HasSuffix(r.ID, "RSS"): // RSS can shrink between readings
			assert.Positive(t, r.ReplmapMedian, r.ID)
		}
	}
	saved, err := os.ReadFile(filepath.Join(dir, "results.md"))
	require.NoError(t, err)
	assert.Equal(t, md, string(saved))
}

// TestRunSmallRedis runs the Redis side at the same tiny scale, when
// redis-server and redis-benchmark are installed (CI installs them).
func TestRunSmallRedis(t *testing.T) {
	for _, bin := range []string{"redis-server", "redis-benchmark"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("%s not installed", bin)
		}
	}
	var out, progress bytes.Buffer
	err := run(t.Context(), []string{
		"-redis", "-writes", "2000", "-keyspace", "500", "-latency-ops", "200", "-ack-time", "200ms",
		"-sync-keys", "2000", "-resync-writes", "500", "-failover-keys", "2000", "-restart-keys", "2000",
		"-ttl-keys", "2000", "-expire-rate", "1000",
		"-out", "",
	}, &out, &progress)
	require.NoError(t, err, progress.String())
	for _, line := range strings.Split(out.String(), "\n") {
		// RSS rows may read zero; W17 (Watch) has no Redis counterpart.
		if strings.HasPrefix(line, "| W") && !strings.Contains(line, "RSS") && !strings.HasPrefix(line, "| W17") {
			cells := strings.Split(line, "|")
			assert.NotEqual(t, "—", strings.TrimSpace(cells[4]), "no Redis figure: %s", line)
		}
	}
}

func TestFlagsAreChecked(t *testing.T) {
	for _, args := range [][]string{
		{"-only", "W99"},
		{"-tx-size", "0"},
		{"-watchers", "0"},
		{"-runs", "0"},
		{"-ack-time", "-1s"},
		{"-restart-keys", "0"},
		{"extra"},
	} {
		_, err := parseFlags(args, &bytes.Buffer{})
		assert.Error(t, err, "%q", args)
	}
	cfg, err := parseFlags([]string{"-only", "w3, W8"}, &bytes.Buffer{})
	require.NoError(t, err)
	assert.True(t, cfg.wants("W3") && cfg.wants("W8") && !cfg.wants("W1"))
}

// TestOnlyKeepsOtherRows: a run of some workloads (-only) rewrites their
// rows in results.json and results.md and keeps the others, with their
// dates.
func TestOnlyKeepsOtherRows(t *testing.T) {
	dir := t.TempDir()
	old := newResults(config{runs: 1}, "")
	old.Date = "2026-01-02T00:00:00Z"
	old.add("W1", "replmap", 5)
	old.add("W11", "replmap", 1)
	old.finish()
	require.NoError(t, old.write(dir, old.markdown()))

	res := newResults(config{runs: 1}, "")
	res.Date = "2026-03-04T00:00:00Z"
	res.add("W11", "replmap", 2)
	require.NoError(t, res.keep(filepath.Join(dir, "results.json")))
	res.finish()
	require.Len(t, res.Rows, 2)
	assert.Equal(t, "W1", res.Rows[0].ID)
	assert.Equal(t, 5.0, res.Rows[0].ReplmapMedian)
	assert.Equal(t, "2026-01-02T00:00:00Z", res.Rows[0].Date)
	assert.Equal(t, 2.0, res.Rows[1].ReplmapMedian, "W11 measured again")
	assert.Contains(t, res.markdown(), "W1 on 2026-01-02, W11 on 2026-03-04")

	fresh := newResults(config{runs: 1}, "")
	require.NoError(t, fresh.keep(filepath.Join(t.TempDir(), "results.json")), "no earlier file")
}

func TestStatistics(t *testing.T) {
	var d []time.Duration
	for i := 1; i <= 1000; i++ {
		d = append(d, time.Duration(i)*time.Microsecond)
	}
	assert.Equal(t, 500*time.Microsecond, percentile(d, 0.5))
	assert.Equal(t, 990*time.Microsecond, percentile(d, 0.99))
	assert.Equal(t, 999*time.Microsecond, percentile(d, 0.999))
	assert.Equal(t, 1000*time.Microsecond, percentile(d, 1))
	assert.Equal(t, 2.0, median([]float64{3, 1, 2}))
	assert.Equal(t, 2.5, median([]float64{4, 1, 2, 3}))
}

func TestTargets(t *testing.T) {
	w1, w3, w4 := findRow("W1"), findRow("W3 p50"), findRow("W4")
	met, known := w1.target.met(w1, 5e6, 1e6, true)
	assert.True(t, met && known)
	met, _ = w1.target.met(w1, 4e6, 1e6, true)
	assert.False(t, met)
	_, known = w1.target.met(w1, 4e6, 0, false)
	assert.False(t, known, "a factor needs a Redis figure")
	met, _ = w3.target.met(w3, 30, 100, true)
	assert.True(t, met)
	met, _ = w3.target.met(w3, 40, 100, true)
	assert.False(t, met)
	met, known = w4.target.met(w4, 250_000, 0, false)
	assert.True(t, met && known)
	assert.Equal(t, "≤ ⅓ of Redis", w3.target.String(w3))
	assert.Equal(t, "≥ 5× Redis", w1.target.String(w1))
	assert.Equal(t, "≥ 200k/s", w4.target.String(w4))
	w12, w13 := findRow("W12 cost"), findRow("W13 replica")
	met, _ = w12.target.met(w12, -3, 0, false)
	assert.True(t, met, "faster with a data directory than without")
	assert.Equal(t, "≤ 10.0%", w12.target.String(w12))
	assert.Equal(t, "≤ Redis", w13.target.String(w13))
}
