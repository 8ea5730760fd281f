package replmap

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/replmap/replmap/transport"
)

// watchLog records every data record a node appends, in stream order,
// through its write hook: the events a watch of that node must yield.
type watchLog struct {
	mu      sync.Mutex
	records []watchRecord
}

type watchRecord struct {
	end    uint64
	events []Event[string] // every write of the record, Offset = end
}

func (w *watchLog) hook(t *testing.T) func(frame []byte, end uint64) {
	return func(frame []byte, end uint64) {
		ops, err := parseOps(nil, frameType(frame[4]), frame[frameHeaderSize:len(frame)-frameCRCSize], DefaultMaxKeySize, DefaultMaxValueSize)
		if err != nil {
			t.Errorf("write hook: %v", err)
			return
		}
		rec := watchRecord{end: end}
		for _, o := range ops {
			ev := Event[string]{Key: string(o.key), Deleted: o.del, Offset: end}
			if !o.del {
				ev.Value, err = decodeValue[string](o.raw)
				if err != nil {
					t.Errorf("write hook: %v", err)
				}
			}
			rec.events = append(rec.events, ev)
		}
		w.mu.Lock()
		w.records = append(w.records, rec)
		w.mu.Unlock()
	}
}

// stats counts the records, those of several writes, and the deletions.
func (w *watchLog) stats() (records, multi, deletes int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, rec := range w.records {
		if len(rec.events) > 1 {
			multi++
		}
		for _, ev := range rec.events {
			if ev.Deleted {
				deletes++
			}
		}
	}
	return len(w.records), multi, deletes
}

// want returns the events a watch of prefix from offset from up to
// offset to must yield, in order.
func (w *watchLog) want(prefix string, from, to uint64) []Event[string] {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []Event[string]
	for _, r := range w.records {
		if r.end <= from || r.end > to {
			continue
		}
		for _, ev := range r.events {
			if len(ev.Key) >= len(prefix) && ev.Key[:len(prefix)] == prefix {
				out = append(out, ev)
			}
		}
	}
	return out
}

// watchCollector runs a watch in a goroutine and keeps what it yields.
type watchCollector struct {
	mu     sync.Mutex
	events []Event[string]
	err    error
	done   chan struct{}
}

func collectWatch(seq func(func(Event[string], error) bool)) *watchCollector {
	c := &watchCollector{done: make(chan struct{})}
	go func() {
		defer close(c.done)
		for ev, err := range seq {
			c.mu.Lock()
			if err != nil {
				c.err = err
			} else {
				c.events = append(c.events, ev)
			}
			c.mu.Unlock()
		}
	}()
	return c
}

func (c *watchCollector) last() (uint64, int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.events) == 0 {
		return 0, 0
	}
	return c.events[len(c.events)-1].Offset, len(c.events)
}

// TestWatchChaos runs writers (Sets, Deletes, Updates of several keys,
// keys with short TTLs that expire during the run) against a primary
// while the links to it are cut again and again, with watchers on the
// primary and on a replica; then promotes the replica and resumes the
// replica's watch on the new primary from the last offset it saw. Every
// watcher must yield exactly the records its node appended under its
// prefix, in order: no gap, no duplicate, an Update's writes together at
// its offset, the expiries as deletions. REPLMAP_WATCH_CHAOS_SEEDS sets
// how many seeds run (default 2); REPLMAP_WATCH_CHAOS_SEED runs one.
func TestWatchChaos(t *testing.T) {
	seeds := []uint64{1, 2}
	if s := os.Getenv("REPLMAP_WATCH_CHAOS_SEEDS"); s != "" {
		n, err := strconv.Atoi(s)
		require.NoError(t, err)
		seeds = seeds[:0]
		for i := range n {
			seeds = append(seeds, uint64(i+1))
		}
	}
	if s := os.Getenv("REPLMAP_WATCH_CHAOS_SEED"); s != "" {
		n, err := strconv.ParseUint(s, 10, 64)
		require.NoError(t, err)
		seeds = []uint64{n}
	}
	for _, seed := range seeds {
		t.Run(fmt.Sprint("seed=", seed), func(t *testing.T) { runWatchChaos(t, seed) })
	}
}

func runWatchChaos(t *testing.T, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, seed))
	net := transport.NewInmem()
	var plog, rlog watchLog
	p, err := NewPrimary[string](fastOpts(t)...)
	require.NoError(t, err)
	p.n.testHookWrite = plog.hook(t) // before any write
	l, err := net.Listen("p")
	require.NoError(t, err)
	served := make(chan error, 1)
	go func() { served <- p.Serve(l) }()
	defer func() { p.Close(); <-served }()

	r, err := NewReplica[string](net, "p", fastOpts(t)...)
	require.NoError(t, err)
	r.n.testHookWrite = rlog.hook(t) // before the first sync
	defer r.Close()
	waitSynced(t, r)

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	pFrom, rFrom := p.Offset(), r.Offset()
	pw := collectWatch(p.Watch(ctx, "a", pFrom))
	rw := collectWatch(r.Watch(ctx, "", rFrom))

	// Writers and a link cutter.
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for w := range 2 {
		wrng := rand.New(rand.NewPCG(seed, uint64(w)+100))
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				key := fmt.Sprintf("%c%d", "ab"[wrng.IntN(2)], wrng.IntN(20))
				var err error
				switch wrng.IntN(5) {
				case 0:
					err = p.Delete(key)
				case 1:
					err = p.SetTTL(key, fmt.Sprint(w, ":", i), time.Duration(1+wrng.IntN(20))*time.Millisecond)
				case 2:
					_, err = p.Update(func(tx *Tx[string]) error {
						for j := range 1 + wrng.IntN(5) {
							k := fmt.Sprintf("%c%d", "ab"[wrng.IntN(2)], wrng.IntN(20))
							if wrng.IntN(4) == 0 {
								if err := tx.Delete(k); err != nil {
									return err
								}
							} else if err := tx.Set(k, fmt.Sprint(w, ":", i, ":", j)); err != nil {
								return err
							}
						}
						return nil
					})
				default:
					err = p.Set(key, fmt.Sprint(w, ":", i))
				}
				if err != nil {
					t.Errorf("write: %v", err)
					return
				}
				time.Sleep(time.Duration(wrng.IntN(300)) * time.Microsecond)
			}
		})
	}
	for range 8 {
		time.Sleep(time.Duration(5+rng.IntN(20)) * time.Millisecond)
		net.Cut("p")
	}
	close(stop)
	wg.Wait()
	// Every key with a TTL expires within milliseconds: once the primary
	// has deleted them all, nothing more is written.
	waitFor(t, "every key with a TTL deleted", func() bool { return p.n.data().store.ttls.Load() == 0 })
	require.NoError(t, r.WaitOffset(ctx, p.Offset()))
	waitFor(t, "the watchers caught up", func() bool {
		po, _ := pw.last()
		ro, _ := rw.last()
		return po >= lastEnd(&plog, "a", pFrom) && ro >= lastEnd(&rlog, "", rFrom)
	})
	cancel2 := func(c *watchCollector) []Event[string] {
		c.mu.Lock()
		defer c.mu.Unlock()
		return append([]Event[string](nil), c.events...)
	}
	assert.Equal(t, plog.want("a", pFrom, p.Offset()), cancel2(pw), "primary watcher, prefix a")
	records, updates, deletes := plog.stats()
	t.Logf("%d records (%d Updates, %d deletions, expiries among them), %d partial resyncs",
		records, updates, deletes, r.Info().PartialSyncs)
	require.Greater(t, updates, 0)
	assert.Equal(t, 1, int(r.Info().FullSyncs), "the replica resumed partially every time")

	// Promote the replica: its watch ends with ErrClosed, and resumes on
	// the new primary from the last offset it saw.
	end := p.Offset()
	require.NoError(t, p.Close())
	<-pw.done
	assert.ErrorIs(t, pw.err, ErrClosed)
	np, err := r.Promote()
	require.NoError(t, err)
	defer np.Close()
	<-rw.done
	assert.ErrorIs(t, rw.err, ErrClosed)
	seen := cancel2(rw)
	resume := rFrom
	if len(seen) > 0 {
		resume = seen[len(seen)-1].Offset
	}
	assert.Equal(t, rlog.want("", rFrom, resume), seen, "replica watcher")
	assert.Equal(t, end, np.Offset())

	ctx2, cancel3 := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel3()
	nw := collectWatch(np.Watch(ctx2, "", resume))
	for i := range 50 {
		if i%10 == 0 {
			_, err = np.Update(func(tx *Tx[string]) error {
				_ = tx.Set("b0", "promoted")
				return tx.Set("a0", "promoted")
			})
		} else {
			err = np.Set(fmt.Sprint("a", i%20), "promoted")
		}
		require.NoError(t, err)
	}
	waitFor(t, "the resumed watcher caught up", func() bool {
		o, _ := nw.last()
		return o >= np.Offset()
	})
	cancel3()
	<-nw.done
	assert.Equal(t, rlog.want("", resume, np.Offset()), cancel2(nw), "the watch resumed on the promoted primary")
	if errors.Is(nw.err, ErrCompacted) {
		t.Errorf("resumed watch: %v", nw.err)
	}
}

// lastEnd returns the end of the last record under prefix after from.
func lastEnd(w *watchLog, prefix string, from uint64) uint64 {
	evs := w.want(prefix, from, ^uint64(0))
	if len(evs) == 0 {
		return 0
	}
	return evs[len(evs)-1].Offset
}
