package replmap

import (
	"context"
	"fmt"
	"log/slog"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/replmap/replmap/transport"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// testLogger routes the library's logs to t.Log.
func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(b []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimSuffix(string(b), "\n"))
	return len(b), nil
}

// fastOpts keeps reconnects quick in tests that run in real time.
func fastOpts(t testing.TB) []Option {
	return []Option{WithLogger(testLogger(t)), WithReconnectBackoff(time.Millisecond, 20*time.Millisecond)}
}

// startPrimary starts a Primary serving on addr of tr, closed at cleanup;
// the cleanup also checks that Serve returned ErrClosed.
func startPrimary[V any](t testing.TB, tr transport.Transport, addr string, opts ...Option) *Primary[V] {
	t.Helper()
	p, _ := startPrimaryAddr[V](t, tr, addr, opts...)
	return p
}

// startPrimaryAddr is startPrimary that also returns the address the
// listener got (for "127.0.0.1:0").
func startPrimaryAddr[V any](t testing.TB, tr transport.Transport, addr string, opts ...Option) (*Primary[V], string) {
	t.Helper()
	p, err := NewPrimary[V](append(fastOpts(t), opts...)...)
	require.NoError(t, err)
	l, err := tr.Listen(addr)
	require.NoError(t, err)
	served := make(chan error, 1)
	go func() { served <- p.Serve(l) }()
	t.Cleanup(func() {
		assert.NoError(t, p.Close())
		assert.ErrorIs(t, <-served, ErrClosed)
	})
	return p, l.Addr().String()
}

// startReplica starts a Replica of addr, closed at cleanup.
func startReplica[V any](t testing.TB, tr transport.Transport, addr string, opts ...Option) *Replica[V] {
	t.Helper()
	r, err := NewReplica[V](tr, addr, append(fastOpts(t), opts...)...)
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, r.Close()) })
	return r
}

func waitSynced[V any](t testing.TB, r *Replica[V]) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	require.NoError(t, r.WaitSynced(ctx))
}

func snapshotOf[V any](all func(func(string, V) bool)) map[string]V {
	m := make(map[string]V)
	for k, v := range all {
		m[k] = v
	}
	return m
}

// converged reports nil once r holds exactly p's data at p's offset.
func converged[V any](p *Primary[V], r *Replica[V]) error {
	if po, ro := p.Offset(), r.Offset(); po != ro {
		return fmt.Errorf("offset: primary %d, replica %d", po, ro)
	}
	want, got := snapshotOf(p.All()), snapshotOf(r.All())
	if !reflect.DeepEqual(want, got) {
		return fmt.Errorf("data differs: primary has %d keys, replica %d", len(want), len(got))
	}
	return nil
}

// requireConverged waits until every replica holds exactly p's data.
func requireConverged[V any](t testing.TB, p *Primary[V], rs ...*Replica[V]) {
	t.Helper()
	for i, r := range rs {
		var last error
		ok := assert.Eventually(t, func() bool {
			last = converged(p, r)
			return last == nil
		}, 30*time.Second, time.Millisecond, "replica %d did not converge", i)
		if !ok {
			require.NoError(t, last, "replica %d", i)
		}
	}
}

// waitFor polls cond, failing the test after a generous bound.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	require.Eventually(t, cond, 30*time.Second, time.Millisecond, "waiting for %s", what)
}

// handHello returns a HELLO frame for a hand-driven replica of V with no
// data: the name doubles as its instance ID.
func handHello[V any](name string) []byte {
	return appendHello(nil, hello{version: protocolVersion, name: name, instance: name,
		fingerprint: typeFingerprint[V](), maxFrame: DefaultMaxFrameSize})
}
