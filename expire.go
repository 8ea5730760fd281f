package replmap

import (
	"errors"
	"runtime"
	"time"
)

// ErrInvalidTTL is returned by SetTTL for a TTL that is not positive.
var ErrInvalidTTL = errors.New("replmap: TTL must be positive")

const (
	// expiryInterval is how often a primary deletes the keys whose
	// deadline has passed (sooner when a read meets one). Reads never
	// return such a key in between, on any node.
	expiryInterval = 100 * time.Millisecond

	// expiryBatch is how many keys a primary deletes per hold of its
	// write lock, so that expiring many keys never stalls writers for
	// more than a few tens of microseconds.
	expiryBatch = 16
)

// TTL returns the time key has left to live: (remaining, true) for a key
// with a deadline, (0, true) for a key without one, and (0, false) for a
// key that is missing or whose deadline has passed.
func (p *Primary[V]) TTL(key string) (time.Duration, bool) { return p.n.data().store.ttl(key) }

// TTL returns the time key has left to live, as [Primary.TTL] does,
// measured against this node's clock: a key whose deadline has passed is
// not returned by any read, even before the primary's deletion arrives.
func (r *Replica[V]) TTL(key string) (time.Duration, bool) { return r.n.data().store.ttl(key) }

// startExpiry starts p's expiry goroutine, which deletes the keys whose
// deadline has passed and replicates each deletion as a Delete's, until
// p is closed (by Close, Demote or a handover).
func (p *Primary[V]) startExpiry() {
	n := p.n
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closing {
		return
	}
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		t := time.NewTicker(expiryInterval)
		defer t.Stop()
		for {
			select {
			case <-p.stopped:
				return
			case <-n.ctx.Done():
				return
			case <-t.C:
			case <-n.data().store.kick:
			}
			p.expireDue(now())
		}
	}()
}

// expireDue deletes every key whose deadline is at or before t, a batch
// of keys per hold of the write lock. It gives up when writes are refused
// (the keys stay hidden from reads, and are deleted once writes resume).
func (p *Primary[V]) expireDue(t int64) {
	st := p.n.data().store
	if st.ttls.Load() == 0 {
		return
	}
	var keys []string
	for i := range shardCount {
		for {
			keys = st.dueKeys(i, t, keys, expiryBatch)
			if len(keys) == 0 || len(keys) < expiryBatch && i < shardCount-1 {
				break // on to the next shard, gathering a batch
			}
			deleted, ok := p.expireKeys(st, keys, t)
			if !ok || deleted == 0 {
				return
			}
			clear(keys)
			keys = keys[:0]
			// The same shard again: it may have more keys due.
		}
	}
}

// expireKeys deletes those of keys in st whose deadline is still at or
// before t, under one hold of the write lock. It returns how many it
// deleted, and whether writes are still accepted. It does not wait for
// the DELs to reach the disk (a Set's afterWrite): a crash that loses
// them loses nothing, since the deadlines are on disk and the restarted
// primary deletes those keys again.
func (p *Primary[V]) expireKeys(st *store[V], keys []string, t int64) (int, bool) {
	n := p.n
	d, err := p.lockForWrite()
	if err != nil {
		return 0, false
	}
	if d.store != st { // the data was replaced: the next round looks again
		n.writeMu.Unlock()
		return 0, false
	}
	buf := p.frameBuf()
	frame := (*buf)[:0]
	deleted := 0
	for _, k := range keys {
		if !st.expire(k, t) {
			continue
		}
		frame = appendDelFrame(frame[:0], k)
		deleted++
		if err = n.appendRecord(d, frame, nil); err != nil {
			break
		}
	}
	n.writeMu.Unlock()
	p.putFrameBuf(buf, frame)
	n.expired.Add(uint64(deleted))
	if deleted > 0 {
		n.wakeLinks()
	}
	// Let a writer that waited for the lock have it before the next
	// batch: Unlock readied it on this P, and without a yield this
	// goroutine would take the lock again first, batch after batch, for
	// up to the millisecond after which sync.Mutex turns fair.
	runtime.Gosched()
	return deleted, err == nil
}
