package replmap

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/replmap/replmap/transport"
)

func TestUpdateAppliesAsOneRecord(t *testing.T) {
	for _, packed := range []bool{false, true} {
		t.Run(fmt.Sprint("packed=", packed), func(t *testing.T) {
			if packed {
				testUpdateOneRecord[[]byte](t, func(s string) []byte { return []byte(s) })
			} else {
				testUpdateOneRecord[string](t, func(s string) string { return s })
			}
		})
	}
}

func testUpdateOneRecord[V any](t *testing.T, val func(string) V) {
	net := transport.NewInmem()
	p := startPrimary[V](t, net, "p")
	r := startReplica[V](t, net, "p")
	waitSynced(t, r)
	require.NoError(t, p.Set("gone", val("x")))
	before := p.Offset()

	off, err := p.Update(func(tx *Tx[V]) error {
		for i := range 100 {
			if err := tx.Set(fmt.Sprint("k", i), val(fmt.Sprint(i))); err != nil {
				return err
			}
		}
		v, ok := tx.Get("k7")
		require.True(t, ok)
		require.Equal(t, val("7"), v)
		require.NoError(t, tx.Delete("gone"))
		require.NoError(t, tx.Delete("never")) // writes nothing
		_, ok = tx.Get("gone")
		require.False(t, ok)
		return tx.SetTTL("session", val("s"), time.Hour)
	})
	require.NoError(t, err)
	assert.Equal(t, p.Offset(), off)
	assert.Greater(t, off, before)
	assert.Equal(t, 101, p.Len())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, r.WaitOffset(ctx, off))
	requireConverged(t, p, r)
	left, ok := r.TTL("session")
	assert.True(t, ok)
	assert.Greater(t, left, 59*time.Minute)
	left, ok = r.TTL("k1")
	assert.True(t, ok)
	assert.Zero(t, left)
}

func TestUpdateErrorWritesNothing(t *testing.T) {
	p, err := NewPrimary[string]()
	require.NoError(t, err)
	defer p.Close()
	require.NoError(t, p.Set("a", "1"))
	before := p.Offset()
	boom := errors.New("boom")
	off, err := p.Update(func(tx *Tx[string]) error {
		require.NoError(t, tx.Set("a", "2"))
		require.NoError(t, tx.Set("b", "2"))
		return boom
	})
	assert.ErrorIs(t, err, boom)
	assert.Zero(t, off)
	assert.Equal(t, before, p.Offset())
	v, _ := p.Get("a")
	assert.Equal(t, "1", v)
	assert.Equal(t, 1, p.Len())

	assert.Panics(t, func() {
		_, _ = p.Update(func(tx *Tx[string]) error {
			_ = tx.Set("a", "3")
			panic("in fn")
		})
	})
	v, _ = p.Get("a")
	assert.Equal(t, "1", v)
	require.NoError(t, p.Set("after", "panic")) // the lock was released

	var kept *Tx[string]
	_, err = p.Update(func(tx *Tx[string]) error { kept = tx; return nil })
	require.NoError(t, err)
	assert.ErrorIs(t, kept.Set("x", "y"), ErrClosed)
}

func TestTTLExpiresOnPrimaryAndReplica(t *testing.T) {
	net := transport.NewInmem()
	p := startPrimary[string](t, net, "p")
	r := startReplica[string](t, net, "p")
	waitSynced(t, r)
	require.NoError(t, p.SetTTL("short", "v", 50*time.Millisecond))
	require.NoError(t, p.Set("keep", "v"))
	assert.ErrorIs(t, p.SetTTL("bad", "v", 0), ErrInvalidTTL)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, r.WaitOffset(ctx, p.Offset()))
	_, ok := r.Get("short")
	assert.True(t, ok)
	waitFor(t, "the key expired and its deletion replicated", func() bool {
		return p.Info().Keys == 1 && r.Offset() == p.Offset() && r.Info().Keys == 1 && r.n.data().store.n.Load() == 1
	})
	_, ok = p.Get("short")
	assert.False(t, ok)
	_, ok = p.TTL("short")
	assert.False(t, ok)
}
