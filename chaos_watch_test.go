package replmap

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
)

// Watchers in the fault-injection suite. Each replica slot has a watcher
// that lists its prefix, watches from the list's offset, and on any end
// (ErrCompacted after a full sync, ErrClosed after a restart of the
// replica) lists again. After the run every session is checked against
// the primary's stream, write by write: the list is the stream's state at
// its offset, and the events are exactly the stream's writes under the
// prefix after it, in order, with an Update's writes at its offset.

// chaosWatch is one session of a replica's watcher: a list, then a watch.
type chaosWatch struct {
	slot   string
	prefix string
	from   uint64
	list   map[string]string
	events []Event[string]
	err    error
}

// chaosWatchPrefixes are the watchers' prefixes, one per replica slot: all
// keys, one key, and all keys again.
var chaosWatchPrefixes = []string{"", "k1", "k"}

// watchEvents returns what a watch yields for a data record that ends at
// end: each of its writes, in order.
func watchEvents(frame []byte, end uint64) ([]Event[string], error) {
	t := frameType(frame[4])
	ops, err := parseOps(nil, t, frame[frameHeaderSize:len(frame)-frameCRCSize], DefaultMaxKeySize, DefaultMaxValueSize)
	if err != nil {
		return nil, err
	}
	evs := make([]Event[string], 0, len(ops))
	for _, o := range ops {
		ev := Event[string]{Key: string(o.key), Deleted: o.del, Offset: end}
		if !o.del {
			if ev.Value, err = decodeValue[string](o.raw); err != nil {
				return nil, err
			}
		}
		evs = append(evs, ev)
	}
	return evs, nil
}

// replicaWatcher runs s's watcher until ctx ends.
func (c *chaosRun) replicaWatcher(ctx context.Context, s *replicaSlot, prefix string, rng *rand.Rand) {
	for ctx.Err() == nil {
		r := s.current().r
		list, from, err := r.List(ctx, prefix)
		if err != nil {
			if ctx.Err() == nil && !errors.Is(err, ErrReplicaTooSlow) {
				c.fail("watcher of %s: List: %v", s.name, err)
			}
			pause(rng)
			continue
		}
		w := &chaosWatch{slot: s.name, prefix: prefix, from: from, list: list}
		for ev, err := range r.Watch(ctx, prefix, from) {
			if err != nil {
				w.err = err
				break
			}
			w.events = append(w.events, ev)
		}
		switch {
		case w.err == nil, errors.Is(w.err, ErrCompacted), errors.Is(w.err, ErrClosed):
			c.count("watch sessions")
		default:
			c.fail("watcher of %s from %d: %v", s.name, from, w.err)
		}
		c.mu.Lock()
		c.watches = append(c.watches, w)
		c.stats["watch events"] += len(w.events)
		c.mu.Unlock()
		if w.err != nil {
			pause(rng)
		}
	}
}

// checkWatches checks every watch session against line, the primary's
// stream (runs without restarts of the primary have one).
func (c *chaosRun) checkWatches(line *chaosLine) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, w := range c.watches {
		where := fmt.Sprintf("watcher of %s, prefix %q, from %d", w.slot, w.prefix, w.from)
		state := make(map[string]string)
		var want []Event[string]
		last := w.from
		if n := len(w.events); n > 0 {
			last = w.events[n-1].Offset
		}
		for _, ev := range line.events {
			if !strings.HasPrefix(ev.Key, w.prefix) {
				continue
			}
			switch {
			case ev.Offset <= w.from && ev.Deleted:
				delete(state, ev.Key)
			case ev.Offset <= w.from:
				state[ev.Key] = ev.Value
			case ev.Offset <= last:
				want = append(want, ev)
			}
		}
		if !maps.Equal(state, w.list) {
			c.failures = append(c.failures, fmt.Sprintf("%s: listed %v, the stream has %v there", where, w.list, state))
		}
		if !slices.Equal(want, w.events) {
			c.failures = append(c.failures, fmt.Sprintf("%s: yielded %d events to %d, the stream has %d there (first difference at %d)",
				where, len(w.events), last, len(want), firstDifference(want, w.events)))
		}
	}
}

func firstDifference(a, b []Event[string]) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}
