package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// A workload runs on one system and returns its measurements, keyed by
// row ID (see rows in results.go).
type workload struct {
	ids   []string // the workload IDs that select it
	title string
	run   func(ctx context.Context, s system, cfg config) (map[string]float64, error)
}

func (w workload) selected(cfg config) bool {
	return slices.ContainsFunc(w.ids, cfg.wants)
}

var workloads = []workload{
	{[]string{"W1"}, "W1 replicated writes, 1 replica", func(ctx context.Context, s system, cfg config) (map[string]float64, error) {
		v, err := replicatedWrites(ctx, s, cfg, 1)
		return map[string]float64{"W1": v}, err
	}},
	{[]string{"W2"}, "W2 replicated writes, 2 replicas", func(ctx context.Context, s system, cfg config) (map[string]float64, error) {
		v, err := replicatedWrites(ctx, s, cfg, 2)
		return map[string]float64{"W2": v}, err
	}},
	{[]string{"W3"}, "W3 Set+Wait latency, sequential", setWaitLatency},
	{[]string{"W4"}, "W4 Set+Wait throughput, concurrent", setWaitThroughput},
	{[]string{"W8"}, "W8 partial resync", partialResync},
	{[]string{"W5", "W6", "W7"}, "W5-W7 full sync of a large primary", fullSync},
	{[]string{"W9"}, "W9 failover after the primary's death", failover},
	{[]string{"W10"}, "W10 planned handover", handover},
	{[]string{"W11"}, "W11 durable writes, fsync always", durableWrites},
	{[]string{"W12"}, "W12 W1 with a data directory, fsync every second", everySecondCost},
	{[]string{"W13", "W14"}, "W13-W14 restart of a primary on its data, bytes on disk", restartFromDisk},
	{[]string{"W15"}, "W15 replicated writes in atomic batches", batchWrites},
	{[]string{"W16"}, "W16 W1 while keys expire", expiringWrites},
	{[]string{"W17"}, "W17 watch delivery latency, 100 watchers", watchDelivery},
}

// startFilled starts a primary with two replicas, fills it with
// cfg.failoverKeys keys and waits until both replicas have them (W9, W10).
func startFilled(ctx context.Context, s system, cfg config) error {
	if err := s.start(ctx, 2, false); err != nil {
		return err
	}
	if _, _, err := s.fill(ctx, cfg.failoverKeys, cfg.valueSize); err != nil {
		s.stop()
		return err
	}
	if err := s.waitReplicas(ctx, 2); err != nil {
		s.stop()
		return err
	}
	return nil
}

// failover is W9: a primary with cfg.failoverKeys keys and two replicas;
// kill the primary, promote one replica, re-point the other; the time
// until the other streams from the new primary, and the full syncs.
func failover(ctx context.Context, s system, cfg config) (map[string]float64, error) {
	if err := startFilled(ctx, s, cfg); err != nil {
		return nil, err
	}
	defer s.stop()
	took, fulls, err := s.failover(ctx)
	if err != nil {
		return nil, err
	}
	return map[string]float64{"W9": millis(took), "W9 full syncs": float64(fulls)}, nil
}

// handover is W10: the same setup, handing the primary role to one
// replica on purpose; the time until the old primary streams from it.
func handover(ctx context.Context, s system, cfg config) (map[string]float64, error) {
	if err := startFilled(ctx, s, cfg); err != nil {
		return nil, err
	}
	defer s.stop()
	took, fulls, ok, err := s.handover(ctx)
	if err != nil || !ok {
		return nil, err
	}
	return map[string]float64{"W10": millis(took), "W10 full syncs": float64(fulls)}, nil
}

// keyNames returns key:0 ... key:n-1.
func keyNames(n int) []string {
	keys := make([]string, n)
	for i := range keys {
		keys[i] = "key:" + strconv.Itoa(i)
	}
	return keys
}

// randomValue returns size random bytes in a fresh allocation.
func randomValue(r *rand.ChaCha8, size int) []byte {
	b := make([]byte, size)
	r.Read(b)
	return b
}

func newRand() *rand.ChaCha8 {
	var seed [32]byte
	ns := uint64(time.Now().UnixNano())
	for i := range 8 {
		seed[i] = byte(ns >> (8 * i))
	}
	return rand.NewChaCha8(seed)
}

// replicatedWrites is W1 and W2: cfg.writes writes of random keys from a
// keyspace of cfg.keyspace, then the time until n replicas hold them all.
// Each key has its own random value, generated before the clock starts.
func replicatedWrites(ctx context.Context, s system, cfg config, n int) (float64, error) {
	if err := s.start(ctx, n, false); err != nil {
		return 0, err
	}
	defer s.stop()
	keys, vals := w1Writes(cfg)
	start := time.Now()
	if err := s.writeAll(ctx, keys, vals); err != nil {
		return 0, err
	}
	if err := s.waitReplicas(ctx, n); err != nil {
		return 0, err
	}
	return float64(len(keys)) / time.Since(start).Seconds(), nil
}

// w1Writes returns W1's writes: cfg.writes random keys of a keyspace of
// cfg.keyspace, each key with its own random value.
func w1Writes(cfg config) (keys []string, vals [][]byte) {
	r := newRand()
	names := keyNames(cfg.keyspace)
	values := make([][]byte, cfg.keyspace)
	for i := range values {
		values[i] = randomValue(r, cfg.valueSize)
	}
	keys = make([]string, cfg.writes)
	vals = make([][]byte, cfg.writes)
	for i := range keys {
		k := int(r.Uint64() % uint64(cfg.keyspace))
		keys[i], vals[i] = names[k], values[k]
	}
	return keys, vals
}

// writeConcurrently splits the writes between n goroutines, each calling
// setBatch on batches of redisBatch.
func writeConcurrently(ctx context.Context, n int, keys []string, vals [][]byte,
	setBatch func(context.Context, []string, [][]byte) error) error {
	return writeInBatches(ctx, n, redisBatch, keys, vals, setBatch)
}

// writeInBatches splits the writes between n goroutines, each calling
// setBatch on batches of size.
func writeInBatches(ctx context.Context, n, size int, keys []string, vals [][]byte,
	setBatch func(context.Context, []string, [][]byte) error) error {
	var wg sync.WaitGroup
	errs := make([]error, n)
	chunk := (len(keys) + n - 1) / n
	for w := range n {
		lo, hi := min(w*chunk, len(keys)), min((w+1)*chunk, len(keys))
		wg.Go(func() {
			for i := lo; i < hi && errs[w] == nil; i += size {
				j := min(i+size, hi)
				errs[w] = setBatch(ctx, keys[i:j], vals[i:j])
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// setWaitLatency is W3: one goroutine doing Set then Wait(1, 0), over
// and over, after a short warm-up.
func setWaitLatency(ctx context.Context, s system, cfg config) (map[string]float64, error) {
	if err := s.start(ctx, 1, false); err != nil {
		return nil, err
	}
	defer s.stop()
	r := newRand()
	names := keyNames(cfg.keyspace)
	val := randomValue(r, cfg.valueSize)
	warm := min(1000, cfg.latencyOps)
	lat := make([]time.Duration, 0, cfg.latencyOps)
	for i := range warm + cfg.latencyOps {
		key := names[r.Uint64()%uint64(len(names))]
		t := time.Now()
		if err := s.setWait(ctx, key, val); err != nil {
			return nil, err
		}
		if i >= warm {
			lat = append(lat, time.Since(t))
		}
	}
	slices.Sort(lat)
	return map[string]float64{
		"W3 p50":   micros(percentile(lat, 0.50)),
		"W3 p99":   micros(percentile(lat, 0.99)),
		"W3 p99.9": micros(percentile(lat, 0.999)),
	}, nil
}

// setWaitThroughput is W4: cfg.ackWorkers goroutines each doing Set then
// Wait(1, 0) for cfg.ackTime; the rate of acknowledged writes.
func setWaitThroughput(ctx context.Context, s system, cfg config) (map[string]float64, error) {
	if err := s.start(ctx, 1, false); err != nil {
		return nil, err
	}
	defer s.stop()
	rate, err := workersFor(ctx, cfg, s.setWait)
	return map[string]float64{"W4": rate}, err
}

// workersFor runs cfg.ackWorkers goroutines, each calling op on keys of
// the keyspace in turn for cfg.ackTime, and returns the rate of calls
// that succeeded, or the first errors.
func workersFor(ctx context.Context, cfg config, op func(ctx context.Context, key string, value []byte) error) (float64, error) {
	names := keyNames(cfg.keyspace)
	val := randomValue(newRand(), cfg.valueSize)
	var done atomic.Int64
	var wg sync.WaitGroup
	errs := make([]error, cfg.ackWorkers)
	deadline := time.Now().Add(cfg.ackTime)
	start := time.Now()
	for w := range cfg.ackWorkers {
		wg.Go(func() {
			for i := w; time.Now().Before(deadline); i += cfg.ackWorkers {
				if err := op(ctx, names[i%len(names)], val); err != nil {
					errs[w] = err
					return
				}
				done.Add(1)
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	if err := errors.Join(errs...); err != nil {
		return 0, err
	}
	return float64(done.Load()) / elapsed.Seconds(), nil
}

// fullSync is W5, W6 and W7: fill a primary with cfg.syncKeys keys
// (memory per key on the primary), then start a new replica and time its
// full sync while one goroutine writes at cfg.w6Rate and records each
// Set's latency (W6), then read the replica's memory per key.
func fullSync(ctx context.Context, s system, cfg config) (map[string]float64, error) {
	if err := s.start(ctx, 0, false); err != nil {
		return nil, err
	}
	defer s.stop()
	pheap, prss, err := s.fill(ctx, cfg.syncKeys, cfg.valueSize)
	if err != nil {
		return nil, err
	}

	names := keyNames(cfg.syncKeys)
	stop := make(chan struct{})
	var lat []time.Duration
	var werr error
	var wg sync.WaitGroup
	wg.Go(func() {
		r := newRand()
		every := time.Second / time.Duration(cfg.w6Rate)
		next := time.Now()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if d := time.Until(next); d > 0 {
				time.Sleep(d)
			}
			next = next.Add(every)
			val := randomValue(r, cfg.valueSize)
			key := names[r.Uint64()%uint64(len(names))]
			t := time.Now()
			if werr = s.set(ctx, key, val); werr != nil {
				return
			}
			lat = append(lat, time.Since(t))
		}
	})
	synced, err := s.addReplica(ctx)
	close(stop)
	wg.Wait()
	if err != nil {
		return nil, err
	}
	if werr != nil {
		return nil, werr
	}
	rheap, rrss, err := s.replicaMemory(ctx)
	if err != nil {
		return nil, err
	}
	slices.Sort(lat)
	n := float64(cfg.syncKeys)
	return map[string]float64{
		"W5":             synced.Seconds(),
		"W6 p99.9":       micros(percentile(lat, 0.999)),
		"W6 max":         micros(percentile(lat, 1)),
		"W7 primary":     pheap / n,
		"W7 primary RSS": prss / n,
		"W7 replica":     rheap / n,
		"W7 replica RSS": rrss / n,
	}, nil
}

// partialResync is W8: cut a synced replica's link, write
// cfg.resyncWrites keys, let the replica's reconnection through, and time
// until it has every write. The clock starts when the link heals: the
// replica has already redialled by then, so its reconnect timer (Redis's
// is a once-a-second cron) is not part of the figure.
func partialResync(ctx context.Context, s system, cfg config) (map[string]float64, error) {
	if err := s.start(ctx, 1, true); err != nil {
		return nil, err
	}
	defer s.stop()
	names := keyNames(cfg.keyspace)
	r := newRand()
	vals := make([][]byte, cfg.resyncWrites)
	for i := range vals {
		vals[i] = randomValue(r, cfg.valueSize)
	}
	prefill := min(1000, len(names), len(vals))
	if err := s.setBatch(ctx, names[:prefill], vals[:prefill]); err != nil {
		return nil, err
	}
	if err := s.waitReplicas(ctx, 1); err != nil {
		return nil, err
	}
	before, err := s.partialSyncs(ctx)
	if err != nil {
		return nil, err
	}
	if err := s.cut(ctx); err != nil {
		return nil, err
	}
	keys := make([]string, len(vals))
	for i := range keys {
		keys[i] = names[r.Uint64()%uint64(len(names))]
	}
	for i := 0; i < len(keys); i += redisBatch {
		j := min(i+redisBatch, len(keys))
		if err := s.setBatch(ctx, keys[i:j], vals[i:j]); err != nil {
			return nil, err
		}
	}
	start, err := s.heal(ctx)
	if err != nil {
		return nil, err
	}
	if err := s.caughtUp(ctx); err != nil {
		return nil, err
	}
	elapsed := time.Since(start)
	after, err := s.partialSyncs(ctx)
	if err != nil {
		return nil, err
	}
	if after <= before {
		return nil, fmt.Errorf("the replica did not resume with a partial resync (partial syncs %d → %d)", before, after)
	}
	return map[string]float64{"W8": millis(elapsed)}, nil
}

// percentile returns the q-quantile of sorted durations (nearest rank).
func percentile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(q*float64(len(sorted))+0.999999) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}

func micros(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
func millis(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// pollUntil calls done every interval until it reports true, fails, or
// ctx ends.
func pollUntil(ctx context.Context, interval time.Duration, done func() (bool, error)) error {
	for {
		ok, err := done()
		if err != nil || ok {
			return err
		}
		select {
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-time.After(interval):
		}
	}
}

// durableWrites is W11: a primary that fsyncs every write before
// acknowledging it (replmap: FsyncAlways; Redis: appendfsync always), no
// replicas, cfg.ackWorkers goroutines (Redis: as many connections) doing
// Set for cfg.ackTime; the rate of acknowledged writes.
func durableWrites(ctx context.Context, s system, cfg config) (map[string]float64, error) {
	s.setDurability(always)
	defer s.setDurability(inMemory)
	if err := s.start(ctx, 0, false); err != nil {
		return nil, err
	}
	defer s.stop()
	rate, err := workersFor(ctx, cfg, s.set)
	return map[string]float64{"W11": rate}, err
}

// everySecondCost is W12: W1 in memory and with the primary writing a
// data directory fsynced every second (Redis: no AOF, and appendonly yes
// with appendfsync everysec), alternated A B B A in one run so that drift
// in the machine's speed falls on both; the rate with the directory and how
// much slower it is, in percent.
func everySecondCost(ctx context.Context, s system, cfg config) (map[string]float64, error) {
	defer s.setDurability(inMemory)
	var mem, disk float64
	for _, d := range []durability{inMemory, everySec, everySec, inMemory} {
		s.setDurability(d)
		v, err := replicatedWrites(ctx, s, cfg, 1)
		if err != nil {
			return nil, err
		}
		if d == inMemory {
			mem += v / 2
		} else {
			disk += v / 2
		}
	}
	return map[string]float64{"W12": disk, "W12 cost": 100 * (1 - disk/mem)}, nil
}

// restartFromDisk is W13 and W14: a primary with a data directory (fsync
// every second; Redis: an AOF fsynced every second) and one replica
// behind the proxy, filled with cfg.restartKeys keys. W14 reads the bytes
// on disk per key. Then the replica's link is cut and its redial held, the
// primary is shut down cleanly and restarted on its data (W13: the time
// from starting it until it serves), the replica is let through, and one
// write is made and waited for: the time from starting the primary until
// the replica acknowledged it (W13 replica), and the full syncs that took.
func restartFromDisk(ctx context.Context, s system, cfg config) (map[string]float64, error) {
	s.setDurability(everySec)
	defer s.setDurability(inMemory)
	if err := s.start(ctx, 1, true); err != nil {
		return nil, err
	}
	defer s.stop()
	if _, _, err := s.fill(ctx, cfg.restartKeys, cfg.valueSize); err != nil {
		return nil, err
	}
	if err := s.waitReplicas(ctx, 1); err != nil {
		return nil, err
	}
	dir, snap, err := s.diskUsage(ctx)
	if err != nil {
		return nil, err
	}
	if err := s.cut(ctx); err != nil {
		return nil, err
	}
	if err := s.redialled(ctx); err != nil {
		return nil, err
	}
	start, served, err := s.restart(ctx)
	if err != nil {
		return nil, err
	}
	if _, err := s.heal(ctx); err != nil {
		return nil, err
	}
	if err := s.setWait(ctx, "key:0", randomValue(newRand(), cfg.valueSize)); err != nil {
		return nil, err
	}
	streaming := time.Since(start)
	fulls, err := s.primaryFullSyncs(ctx)
	if err != nil {
		return nil, err
	}
	n := float64(cfg.restartKeys)
	return map[string]float64{
		"W13 serve":      millis(served),
		"W13 replica":    millis(streaming),
		"W13 full syncs": float64(fulls),
		"W14 dir":        dir / n,
		"W14 snapshot":   snap / n,
	}, nil
}
