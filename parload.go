package replmap

import (
	"runtime"
	"sync"
	"sync/atomic"
)

// A store loaded from disk (a restart's snapshot and log, a restore's
// backup) is filled by several goroutines: the one reading the data
// checks it (frame checksums, the snapshot's count and checksum, limits),
// splits it into entries and records and hands them, in batches, to
// workers that decode the values, pack them and insert them. Worker w owns
// the shards i with i%workers == w, so each shard's map has one writer
// (the store is private: no shard locks), and the entries and records of
// one key reach its map in the order they were read: the final state is
// the one a sequential load gives. A replica's full sync still loads on
// its session goroutine alone (snapshotLoader without par): it applies
// the stream's records to the store between CHUNKs itself.

const (
	maxLoadWorkers = 4
	loadBatchSize  = 512     // items per batch: enough to make a channel send cheap
	loadArenaSize  = 1 << 20 // bytes of payload copied into one arena
	loadQueue      = 4       // batches queued per worker
)

// loadWorkerCount returns how many workers fill a store being loaded: n
// if not 0 (a test's choice; negative for none), else one per CPU up to
// maxLoadWorkers, and none (the reader applies everything itself) on one
// CPU.
func loadWorkerCount(n int) int {
	if n != 0 {
		return max(n, 0)
	}
	if p := runtime.GOMAXPROCS(0); p > 1 {
		return min(p, maxLoadWorkers)
	}
	return 0
}

// loadItem is a snapshot entry or a write of a data record to apply: the
// op's key and value alias a payload that stays unchanged until the item
// is applied.
type loadItem struct {
	o     op
	shard uint16
	at    uint64 // the log offset of a record + 1; 0 for a snapshot's entries and records
}

// loadArena holds copies of payloads whose reader reuses its buffer. It is
// reused once every batch holding an item over it, and the reader, have
// let it go.
type loadArena struct {
	b    []byte
	refs atomic.Int32
}

type loadBatch struct {
	items  []loadItem
	arenas []*loadArena // each referenced once by this batch
}

// parallelLoad fills a private store with workers (see above). Its
// methods are called by the reading goroutine only; stop must be called
// on every path, so that no worker outlives the load.
type parallelLoad[V any] struct {
	st      *store[V]
	work    []chan *loadBatch
	pending []*loadBatch
	free    chan *loadBatch
	arenas  chan *loadArena
	arena   *loadArena // where copy puts payloads; the reader holds a reference
	wg      sync.WaitGroup
	stopped bool

	failed atomic.Bool
	errMu  sync.Mutex
	err    error
	errAt  uint64
	wrap   func(err error, at uint64) error // describes a worker's error; nil leaves it as is
}

// newParallelLoad starts workers into st, which must be private: with
// workers 0, add applies each item itself.
func newParallelLoad[V any](st *store[V], workers int) *parallelLoad[V] {
	p := &parallelLoad[V]{st: st}
	if workers <= 0 {
		return p
	}
	p.work = make([]chan *loadBatch, workers)
	p.pending = make([]*loadBatch, workers)
	p.free = make(chan *loadBatch, workers*(loadQueue+2))
	p.arenas = make(chan *loadArena, workers*(loadQueue+2))
	for w := range p.work {
		p.work[w] = make(chan *loadBatch, loadQueue)
		p.pending[w] = &loadBatch{items: make([]loadItem, 0, loadBatchSize)}
		p.wg.Go(func() { p.worker(p.work[w]) })
	}
	return p
}

func (p *parallelLoad[V]) worker(in <-chan *loadBatch) {
	for b := range in {
		var dn, dt int
		if !p.failed.Load() {
			for _, it := range b.items {
				n, t, err := applyItem(p.st, it)
				if err != nil {
					p.fail(err, it.at)
					break
				}
				dn, dt = dn+n, dt+t
			}
		}
		p.st.count(dn, dt) // once a batch: the counters are shared
		for _, a := range b.arenas {
			p.releaseArena(a)
		}
		clear(b.items) // let go of the payloads
		b.items, b.arenas = b.items[:0], b.arenas[:0]
		select {
		case p.free <- b:
		default:
		}
	}
}

func (p *parallelLoad[V]) fail(err error, at uint64) {
	p.errMu.Lock()
	if p.err == nil {
		p.err, p.errAt = err, at
	}
	p.errMu.Unlock()
	p.failed.Store(true)
}

// workerErr returns the first worker's error, described by wrap.
func (p *parallelLoad[V]) workerErr() error {
	p.errMu.Lock()
	err, at := p.err, p.errAt
	p.errMu.Unlock()
	if err != nil && p.wrap != nil {
		err = p.wrap(err, at)
	}
	return err
}

// applyItem applies it to st, whose shard it.shard only the caller writes,
// and returns by how much the store's key count and count of keys with a
// deadline change.
func applyItem[V any](st *store[V], it loadItem) (dn, dt int, err error) {
	var w write[V]
	if err := prepareRecord(st, &w, it.o); err != nil {
		return 0, 0, err
	}
	_, dn, dt = st.applyLocked(&st.shards[it.shard], &w)
	return dn, dt, nil
}

// copy returns a copy of b that stays unchanged until the items over it
// are applied, for a payload whose buffer the reader reuses. Without
// workers it returns b.
func (p *parallelLoad[V]) copy(b []byte) []byte {
	if p.work == nil {
		return b
	}
	if a := p.arena; a == nil || cap(a.b)-len(a.b) < len(b) {
		p.newArena(len(b))
	}
	a := p.arena
	n := len(a.b)
	a.b = append(a.b, b...)
	return a.b[n:len(a.b):len(a.b)]
}

// newArena lets the current arena go and takes one with room for n bytes.
func (p *parallelLoad[V]) newArena(n int) {
	if p.arena != nil {
		p.releaseArena(p.arena)
		p.arena = nil
	}
	var a *loadArena
	if n <= loadArenaSize {
		select {
		case a = <-p.arenas:
			a.b = a.b[:0]
		default:
		}
	}
	if a == nil {
		a = &loadArena{b: make([]byte, 0, max(n, loadArenaSize))}
	}
	a.refs.Store(1)
	p.arena = a
}

func (p *parallelLoad[V]) releaseArena(a *loadArena) {
	if a.refs.Add(-1) == 0 && cap(a.b) == loadArenaSize {
		select {
		case p.arenas <- a:
		default:
		}
	}
}

// add applies it, or queues it for the worker that owns its shard. It
// returns a worker's error, if one failed: the load is over.
func (p *parallelLoad[V]) add(it loadItem) error {
	if p.work == nil {
		dn, dt, err := applyItem(p.st, it)
		if err != nil {
			p.fail(err, it.at)
			return p.workerErr()
		}
		p.st.count(dn, dt)
		return nil
	}
	w := int(it.shard) % len(p.work)
	b := p.pending[w]
	// The item may lie in the current arena (the reader copies a payload
	// and adds its items before copying another): the batch keeps it.
	if a := p.arena; a != nil {
		if n := len(b.arenas); n == 0 || b.arenas[n-1] != a {
			a.refs.Add(1)
			b.arenas = append(b.arenas, a)
		}
	}
	b.items = append(b.items, it)
	if len(b.items) == loadBatchSize {
		return p.flush(w)
	}
	return nil
}

// record applies the writes of a data record, or queues them, like add;
// at is its log offset + 1, or 0. The payload they alias must not change
// until then (see copy). A TX's writes go to the workers of their shards
// like any others: the store is private, so nobody sees it half applied,
// and each key's writes still reach its map in order.
func (p *parallelLoad[V]) record(ops []op, at uint64) error {
	for _, o := range ops {
		if err := p.add(loadItem{o: o, shard: p.st.shardOf(o.key), at: at}); err != nil {
			return err
		}
	}
	return nil
}

func (p *parallelLoad[V]) flush(w int) error {
	if p.failed.Load() {
		return p.workerErr()
	}
	b := p.pending[w]
	if len(b.items) == 0 {
		return nil
	}
	p.work[w] <- b
	select {
	case p.pending[w] = <-p.free:
	default:
		p.pending[w] = &loadBatch{items: make([]loadItem, 0, loadBatchSize)}
	}
	return nil
}

// finish applies everything added, stops the workers and returns the
// first error of one.
func (p *parallelLoad[V]) finish() error {
	for w := range p.work {
		if err := p.flush(w); err != nil {
			break
		}
	}
	p.stop()
	return p.workerErr()
}

// stop ends the workers, dropping what they were not given, and waits
// for them. It may be called more than once.
func (p *parallelLoad[V]) stop() {
	if p.stopped {
		return
	}
	p.stopped = true
	for _, c := range p.work {
		close(c)
	}
	p.wg.Wait()
	p.arena = nil
}
