package replmap

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/replmap/replmap/transport"
)

// collect runs a watch until it has yielded n events or an error.
func collect[V any](t *testing.T, seq func(func(Event[V], error) bool), n int) ([]Event[V], error) {
	t.Helper()
	var evs []Event[V]
	for ev, err := range seq {
		if err != nil {
			return evs, err
		}
		evs = append(evs, ev)
		if len(evs) == n {
			break
		}
	}
	return evs, nil
}

func TestWatchOrderPrefixAndResume(t *testing.T) {
	p, err := NewPrimary[string]()
	require.NoError(t, err)
	defer p.Close()
	ctx := context.Background()
	start := p.Offset()
	require.NoError(t, p.Set("a/1", "x"))
	require.NoError(t, p.Set("b/1", "skip"))
	off, err := p.Update(func(tx *Tx[string]) error {
		require.NoError(t, tx.Set("a/2", "y"))
		require.NoError(t, tx.Set("b/2", "skip"))
		return tx.Delete("a/1")
	})
	require.NoError(t, err)
	require.NoError(t, p.SetTTL("a/3", "z", time.Hour))

	evs, err := collect(t, p.Watch(ctx, "a/", start), 4)
	require.NoError(t, err)
	require.Len(t, evs, 4)
	assert.Equal(t, "a/1", evs[0].Key)
	assert.Equal(t, "x", evs[0].Value)
	assert.Equal(t, []string{"a/2", "a/1"}, []string{evs[1].Key, evs[2].Key})
	assert.Equal(t, off, evs[1].Offset)
	assert.Equal(t, off, evs[2].Offset)
	assert.True(t, evs[2].Deleted)
	assert.Equal(t, p.Offset(), evs[3].Offset)

	// Resuming from an event's offset yields what follows it, once.
	evs2, err := collect(t, p.Watch(ctx, "a/", evs[0].Offset), 3)
	require.NoError(t, err)
	assert.Equal(t, evs[1:], evs2)

	// A watch from now waits for the next write.
	got := make(chan Event[string], 1)
	wctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	now := p.Offset()
	go func() {
		defer close(done)
		for ev, err := range p.Watch(wctx, "", now) {
			if err == nil {
				got <- ev
			}
		}
	}()
	require.NoError(t, p.Set("later", "v"))
	ev := <-got
	assert.Equal(t, "later", ev.Key)
	cancel()
	<-done // ctx ends the iteration
}

func TestWatchErrors(t *testing.T) {
	p, err := NewPrimary[string](WithBacklogSize(MinBacklogSize))
	require.NoError(t, err)
	ctx := context.Background()
	require.NoError(t, p.Set("k", "v"))
	_, err = collect(t, p.Watch(ctx, "", 3), 1)
	assert.ErrorIs(t, err, ErrCompacted, "an offset inside a record")

	// A slow watcher, reading one event and then stalling, is ended once
	// the backlog moves past it: it pins nothing.
	from := p.Offset()
	next, stop := iterPull(p.Watch(ctx, "", from))
	defer stop()
	require.NoError(t, p.Set("first", "v"))
	ev, err, ok := next()
	require.True(t, ok)
	require.NoError(t, err)
	assert.Equal(t, "first", ev.Key)
	big := strings.Repeat("x", 1000)
	for i := 0; p.Info().BacklogFirst <= ev.Offset; i++ {
		require.NoError(t, p.Set(fmt.Sprint("fill", i%100), big))
		// The stalled watcher pins nothing: the backlog stays its size.
		require.LessOrEqual(t, p.Info().BacklogBytes, MinBacklogSize+2*backlogBlockSize)
	}
	_, err, _ = next()
	assert.ErrorIs(t, err, ErrCompacted)
	_, err = collect(t, p.Watch(ctx, "", from), 1)
	assert.ErrorIs(t, err, ErrCompacted, "an offset older than the backlog")

	// Close ends a waiting watcher with ErrClosed.
	errc := make(chan error, 1)
	go func() {
		_, err := collect(t, p.Watch(ctx, "", p.Offset()), 1)
		errc <- err
	}()
	waitFor(t, "the watcher waits", func() bool { return p.n.grew.armed.Load() })
	require.NoError(t, p.Close())
	assert.ErrorIs(t, <-errc, ErrClosed)
}

// iterPull pulls a watch's events one at a time.
func iterPull[V any](seq iter.Seq2[Event[V], error]) (func() (Event[V], error, bool), func()) {
	return iter.Pull2(seq)
}

func TestReplicaWatchAcrossPartialResyncAndPromotion(t *testing.T) {
	net := transport.NewInmem()
	p := startPrimary[string](t, net, "p")
	r := startReplica[string](t, net, "p")
	waitSynced(t, r)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	from := r.Offset()
	next, stop := iterPull(r.Watch(ctx, "", from))
	defer stop()

	require.NoError(t, p.Set("a", "1"))
	ev, err, _ := next()
	require.NoError(t, err)
	assert.Equal(t, "a", ev.Key)

	// The link drops; writes made meanwhile arrive by a partial resync,
	// and the watcher sees each once.
	net.Refuse("p", true)
	net.Cut("p")
	for i := range 5 {
		require.NoError(t, p.Set(fmt.Sprint("b", i), "v"))
	}
	net.Refuse("p", false)
	var bs []Event[string]
	for i := range 5 {
		ev, err, _ = next()
		require.NoError(t, err)
		assert.Equal(t, fmt.Sprint("b", i), ev.Key)
		bs = append(bs, ev)
	}
	assert.Zero(t, r.Info().FullSyncs-1, "one full sync, at the start")
	last := bs[1].Offset // resume from the middle of what was seen
	require.NoError(t, r.WaitOffset(ctx, p.Offset()))

	// Promotion closes the replica's watch; the Primary it became
	// continues the stream from the last offset seen.
	require.NoError(t, p.Close())
	np, err := r.Promote()
	require.NoError(t, err)
	defer np.Close()
	_, err, _ = next()
	assert.ErrorIs(t, err, ErrClosed)
	require.NoError(t, np.Set("c", "1"))
	evs, err := collect(t, np.Watch(ctx, "", last), 4)
	require.NoError(t, err)
	var keys []string
	for _, e := range evs {
		keys = append(keys, e.Key)
	}
	assert.Equal(t, []string{"b2", "b3", "b4", "c"}, keys)
	assert.Equal(t, bs[2:], evs[:3], "the same events, at the same offsets")
}

func TestReplicaWatchEndsAtFullSync(t *testing.T) {
	net := transport.NewInmem()
	p := startPrimary[string](t, net, "p", WithBacklogSize(MinBacklogSize))
	r := startReplica[string](t, net, "p")
	waitSynced(t, r)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	next, stop := iterPull(r.Watch(ctx, "", r.Offset()))
	defer stop()
	net.Refuse("p", true)
	net.Cut("p")
	big := strings.Repeat("x", 1000)
	for i := 0; p.Info().BacklogFirst <= r.Offset(); i++ {
		require.NoError(t, p.Set(fmt.Sprint("fill", i%100), big))
	}
	net.Refuse("p", false)
	_, err, _ := next()
	assert.ErrorIs(t, err, ErrCompacted)
	m, off, err := r.List(ctx, "fill")
	require.NoError(t, err)
	assert.Len(t, m, 100)
	assert.Equal(t, r.Offset(), off)
}

func TestListThenWatchIsExact(t *testing.T) {
	p, err := NewPrimary[int]()
	require.NoError(t, err)
	defer p.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for i := range 1000 {
		require.NoError(t, p.Set(fmt.Sprint("k", i), 0))
	}
	// Writers bump every key in whole Updates while lists are taken: a
	// list is the data at its offset, so all of its values are equal.
	stopw := make(chan struct{})
	werr := make(chan error, 1)
	go func() {
		for gen := 1; ; gen++ {
			select {
			case <-stopw:
				werr <- nil
				return
			default:
			}
			_, err := p.Update(func(tx *Tx[int]) error {
				for i := range 1000 {
					if err := tx.Set(fmt.Sprint("k", i), gen); err != nil {
						return err
					}
				}
				return nil
			})
			if err != nil {
				werr <- err
				return
			}
		}
	}()
	for range 20 {
		m, off, err := p.List(ctx, "k")
		require.NoError(t, err)
		require.Len(t, m, 1000)
		gen := m["k0"]
		for k, v := range m {
			require.Equal(t, gen, v, "key %s at offset %d", k, off)
		}
		// The watch from the list's offset continues it exactly.
		evs, err := collect(t, p.Watch(ctx, "k", off), 1000)
		require.NoError(t, err)
		for _, ev := range evs {
			require.Equal(t, gen+1, ev.Value)
		}
	}
	close(stopw)
	require.NoError(t, <-werr)
}

func TestWatchContextEndsQuietly(t *testing.T) {
	p, err := NewPrimary[string]()
	require.NoError(t, err)
	defer p.Close()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for _, err := range p.Watch(ctx, "", p.Offset()) {
		t.Fatalf("yielded %v", err)
	}
	_, _, err = p.List(ctx, "")
	assert.True(t, errors.Is(err, context.Canceled))
}

// A primary restarted on its data directory refills its backlog from the
// log, so a watch resumes from an offset seen before the restart with no
// gap and no duplicate.
func TestWatchResumesAcrossRestart(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	p, err := NewPrimary[string](WithDataDir(dir))
	require.NoError(t, err)
	from := p.Offset()
	for i := range 10 {
		require.NoError(t, p.Set(fmt.Sprint("k", i), fmt.Sprint(i)))
	}
	_, err = p.Update(func(tx *Tx[string]) error {
		require.NoError(t, tx.Delete("k0"))
		return tx.SetTTL("k1", "ttl", time.Hour)
	})
	require.NoError(t, err)
	before, err := collect(t, p.Watch(ctx, "", from), 12)
	require.NoError(t, err)
	require.NoError(t, p.Close())

	p2, err := NewPrimary[string](WithDataDir(dir))
	require.NoError(t, err)
	defer p2.Close()
	require.NoError(t, p2.Set("after", "restart"))
	mid := before[4].Offset
	evs, err := collect(t, p2.Watch(ctx, "", mid), 8)
	require.NoError(t, err)
	assert.Equal(t, before[5:], evs[:7], "the same events, at the same offsets")
	assert.Equal(t, Event[string]{Key: "after", Value: "restart", Offset: p2.Offset()}, evs[7])
}
