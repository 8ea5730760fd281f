package main

import (
	"context"
	"fmt"
	"slices"
	"time"
)

// The map-feature workloads: batched atomic writes (W15) and the cost of
// keys that expire (W16).

// batchWrites is W15: W1's writes in atomic batches of cfg.txSize keys
// (replmap: one Update of cfg.txSize Sets per call, from cfg.writers
// goroutines), then the time until the replica holds them all. Redis is
// measured twice: with redis-benchmark pipelining cfg.txSize SETs
// ("W15", not atomic), and with MULTI/EXEC transactions of cfg.txSize SETs
// ("W15 multi"); replmap runs its Updates once for each, so each row
// compares two measurements of its own.
func batchWrites(ctx context.Context, s system, cfg config) (map[string]float64, error) {
	got := make(map[string]float64)
	for _, m := range []struct {
		id    string
		multi bool
	}{{"W15", false}, {"W15 multi", true}} {
		id, multi := m.id, m.multi
		keys, vals := w1Writes(cfg)
		if err := s.start(ctx, 1, false); err != nil {
			return nil, err
		}
		start := time.Now()
		err := s.writeBatches(ctx, keys, vals, cfg.txSize, multi)
		if err == nil {
			err = s.waitReplicas(ctx, 1)
		}
		elapsed := time.Since(start)
		if serr := s.stop(); err == nil {
			err = serr
		}
		if err != nil {
			return nil, err
		}
		got[id] = float64(len(keys)) / elapsed.Seconds()
	}
	return got, nil
}

// ttlKey names the i-th key with a deadline (W16); all have one length, so
// their deletions are records of one size.
func ttlKey(i int) string { return fmt.Sprintf("ttl:%07d", i) }

// expiringWrites is W16: W1 on a primary holding cfg.ttlKeys keys whose
// deadlines pass at cfg.expireRate a second, against W1 on a primary
// holding as many keys without deadlines (so that what differs is the
// deadlines and the expiry, not the size of the map), alternated A B B A
// as W12 is; then, in each setup, one goroutine writing cfg.w6Rate Sets a
// second for cfg.ackTime while its latencies are recorded (W6's probe).
// It reports both rates, how much slower the one with deadlines is, the
// Set p99.9 in both, and the keys the primary deleted on expiry per
// second while the measurements ran.
func expiringWrites(ctx context.Context, s system, cfg config) (map[string]float64, error) {
	var plain, ttl, expired float64
	var latPlain, latTTL []time.Duration
	for _, withTTL := range []bool{false, true, true, false} {
		ph, err := expiryPhase(ctx, s, cfg, withTTL)
		if err != nil {
			return nil, err
		}
		if withTTL {
			ttl += ph.rate / 2
			expired += ph.expiredRate / 2
			latTTL = append(latTTL, ph.lat...)
		} else {
			plain += ph.rate / 2
			latPlain = append(latPlain, ph.lat...)
		}
	}
	slices.Sort(latPlain)
	slices.Sort(latTTL)
	return map[string]float64{
		"W16":           ttl,
		"W16 no TTL":    plain,
		"W16 cost":      100 * (1 - ttl/plain),
		"W16 p99.9":     micros(percentile(latTTL, 0.999)),
		"W16 p99.9 off": micros(percentile(latPlain, 0.999)),
		"W16 expired/s": expired,
	}, nil
}

type phase struct {
	rate        float64         // W1's writes a second
	lat         []time.Duration // the probe's Set latencies
	expiredRate float64         // keys deleted on expiry a second, during both
}

// expiryPhase is one setup of W16: a primary and one replica, and
// cfg.ttlKeys keys; with withTTL, filled in deadline order, their
// deadlines cfg.expireRate a second apart from a first one far enough
// ahead for the fill, and the measurements start once the first has
// passed. It fails if the last deadline passes before they end: the keys
// must be expiring throughout.
func expiryPhase(ctx context.Context, s system, cfg config, withTTL bool) (ph phase, err error) {
	keys, vals := w1Writes(cfg)
	if err := s.start(ctx, 1, false); err != nil {
		return ph, err
	}
	defer func() {
		if serr := s.stop(); err == nil {
			err = serr
		}
	}()
	every := time.Second / time.Duration(cfg.expireRate)
	var first, last time.Time
	if withTTL {
		// The fill runs ahead of the deadlines (it writes far faster
		// than cfg.expireRate), so a lead of its expected time means
		// about cfg.ttlKeys keys are left when the measurements start.
		lead := 200*time.Millisecond + time.Duration(cfg.ttlKeys)*time.Second/300_000
		first = time.Now().Add(lead)
		last = first.Add(time.Duration(cfg.ttlKeys-1) * every)
	}
	if err := s.fillTTL(ctx, cfg.ttlKeys, cfg.valueSize, first, every); err != nil {
		return ph, err
	}
	if err := s.waitReplicas(ctx, 1); err != nil {
		return ph, err
	}
	if withTTL {
		// Let the primary's expiry reach its steady state.
		if d := time.Until(first.Add(200 * time.Millisecond)); d > 0 {
			select {
			case <-time.After(d):
			case <-ctx.Done():
				return ph, context.Cause(ctx)
			}
		}
		if err := s.markExpired(ctx); err != nil {
			return ph, err
		}
	}
	begin := time.Now()
	if err := s.writeAll(ctx, keys, vals); err != nil {
		return ph, err
	}
	if err := s.waitReplicas(ctx, 1); err != nil {
		return ph, err
	}
	ph.rate = float64(len(keys)) / time.Since(begin).Seconds()
	probed, lat, err := probeSets(ctx, s, cfg, cfg.ackTime)
	if err != nil {
		return ph, err
	}
	ph.lat = lat
	if withTTL {
		n, err := s.expiredSinceMark(ctx, slices.Concat(keys, probed))
		if err != nil {
			return ph, err
		}
		ph.expiredRate = n / time.Since(begin).Seconds()
		if time.Now().After(last) {
			return ph, fmt.Errorf("the keys with deadlines all expired before the measurements ended: raise -ttl-keys or lower -expire-rate")
		}
	}
	return ph, nil
}

// probeSets writes cfg.w6Rate Sets a second of random keys of the
// keyspace from one goroutine for d, as W6 does, and returns the keys it
// wrote and each Set's latency.
func probeSets(ctx context.Context, s system, cfg config, d time.Duration) ([]string, []time.Duration, error) {
	r := newRand()
	names := keyNames(cfg.keyspace)
	val := randomValue(r, cfg.valueSize)
	every := time.Second / time.Duration(cfg.w6Rate)
	var keys []string
	var lat []time.Duration
	end := time.Now().Add(d)
	for next := time.Now(); next.Before(end); next = next.Add(every) {
		if d := time.Until(next); d > 0 {
			time.Sleep(d)
		}
		key := names[r.Uint64()%uint64(len(names))]
		t := time.Now()
		if err := s.set(ctx, key, val); err != nil {
			return nil, nil, err
		}
		lat = append(lat, time.Since(t))
		keys = append(keys, key)
	}
	return keys, lat, nil
}

// watchDelivery is W17: a primary and one replica process running
// cfg.watchers watchers of one prefix; cfg.watchRate Sets a second under
// it for cfg.ackTime, each value carrying the time just before its Set;
// the latency from then until each watcher has the event.
func watchDelivery(ctx context.Context, s system, cfg config) (map[string]float64, error) {
	if err := s.start(ctx, 1, false); err != nil {
		return nil, err
	}
	defer s.stop()
	n := max(1, int(cfg.ackTime.Seconds()*float64(cfg.watchRate)))
	p50, p99, worst, ok, err := s.watchLatency(ctx, n)
	if err != nil || !ok {
		return nil, err
	}
	return map[string]float64{"W17 p50": micros(p50), "W17 p99": micros(p99), "W17 max": micros(worst)}, nil
}
