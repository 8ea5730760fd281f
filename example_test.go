package replmap_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/replmap/replmap"
	"github.com/replmap/replmap/transport"
)

// A primary and a replica in one process, over the in-memory transport.
func Example() {
	network := transport.NewInmem()
	p, _ := replmap.NewPrimary[string]()
	defer p.Close()
	l, _ := network.Listen("primary")
	go p.Serve(l)

	r, _ := replmap.NewReplica[string](network, "primary")
	defer r.Close()
	_ = r.WaitSynced(context.Background())

	_ = p.Set("greeting", "hello")
	n, _ := p.Wait(1, 0) // until the replica has applied it, however long that takes
	v, _ := r.Get("greeting")
	fmt.Println(n, v)
	// Output: 1 hello
}

// Read your writes on a replica: wait for the offset the primary reported
// after the write.
func ExampleReplica_WaitOffset() {
	network := transport.NewInmem()
	p, _ := replmap.NewPrimary[string]()
	defer p.Close()
	l, _ := network.Listen("primary")
	go p.Serve(l)
	r, _ := replmap.NewReplica[string](network, "primary")
	defer r.Close()

	_ = p.Set("session", "alice")
	token := p.Offset() // hand this to whoever reads from r next
	_ = r.WaitOffset(context.Background(), token)
	v, _ := r.Get("session")
	fmt.Println(v)
	// Output: alice
}

// Failover after the primary is lost: promote the most caught-up replica,
// re-point the other at it. The sibling resumes with a partial resync.
func ExampleReplica_Promote() {
	network := transport.NewInmem()
	p, _ := replmap.NewPrimary[int]()
	l, _ := network.Listen("p")
	go p.Serve(l)
	a, _ := replmap.NewReplica[int](network, "p")
	defer a.Close()
	b, _ := replmap.NewReplica[int](network, "p")
	defer b.Close()
	_ = p.Set("x", 1)
	_, _ = p.Wait(2, 0)
	p.Close() // the primary is gone

	np, _ := a.Promote() // a continues the history, one epoch up
	defer np.Close()
	nl, _ := network.Listen("a")
	go np.Serve(nl)
	_ = b.Follow("a")
	_ = np.Set("y", 2)
	_ = b.WaitOffset(context.Background(), np.Offset())

	v, _ := b.Get("y")
	info := b.Info()
	fmt.Println(v, info.Epoch, info.FullSyncs, info.PartialSyncs)
	// Output: 2 1 1 1
}

// A planned handover: the primary pauses writes, lets the replica catch up,
// promotes it and follows it. Nothing acknowledged is lost, nobody
// full-syncs, and the replica's owner gets its Primary from WaitPromoted.
func ExamplePrimary_Handover() {
	network := transport.NewInmem()
	p, _ := replmap.NewPrimary[int]()
	l, _ := network.Listen("p")
	go p.Serve(l)
	r, _ := replmap.NewReplica[int](network, "p", replmap.WithReplicaName("r"), replmap.WithAdvertiseAddr("r"))
	defer r.Close()
	rl, _ := network.Listen("r")
	go r.Serve(rl)
	_ = p.Set("x", 1)
	_, _ = p.Wait(1, 0) // r is streaming and has told p its address

	ctx := context.Background()
	old, err := p.Handover(ctx, network, "r")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer old.Close()
	np, _ := r.WaitPromoted(ctx) // on r's side
	defer np.Close()

	var moved *replmap.MovedError
	fmt.Println(errors.As(p.Set("y", 2), &moved), moved.Addr)
	_ = np.Set("y", 2)
	_ = old.WaitOffset(ctx, np.Offset())
	v, _ := old.Get("y")
	fmt.Println(v, old.Info().FullSyncs)
	// Output:
	// true r
	// 2 0
}

func ExamplePrimary_Wait() {
	p, _ := replmap.NewPrimary[int]()
	defer p.Close()
	_ = p.Set("visits", 1)

	// With no replicas, Wait returns 0 when the timeout passes; the count,
	// not an error, tells how many replicas hold the write.
	n, err := p.Wait(1, 10*time.Millisecond)
	fmt.Println(n, err)
	// Output: 0 <nil>
}

func ExampleReplica_Set() {
	r, _ := replmap.NewReplica[int](transport.NewInmem(), "nowhere")
	defer r.Close()
	err := r.Set("x", 1)
	fmt.Println(errors.Is(err, replmap.ErrReadOnly))
	// Output: true
}

func ExampleNewPrimary_options() {
	_, err := replmap.NewPrimary[[]byte](
		replmap.WithBacklogSize(64<<20),
		replmap.WithHeartbeat(0), // invalid
		replmap.WithMaxKeySize(-1),
	)
	fmt.Println(errors.Is(err, replmap.ErrInvalidOption))
	// Output: true
}

// A backup of a live primary, and a primary started from it: it continues
// the backed-up history at the backup's offset.
func ExamplePrimary_Backup() {
	p, _ := replmap.NewPrimary[string]()
	defer p.Close()
	_ = p.Set("config/mode", "blue")

	var backup bytes.Buffer // any io.Writer: a file, an object store upload
	offset, err := p.Backup(context.Background(), &backup)
	if err != nil {
		fmt.Println(err)
		return
	}

	restored, err := replmap.RestorePrimary[string](&backup)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer restored.Close()
	v, _ := restored.Get("config/mode")
	info := restored.Info()
	fmt.Println(v, restored.Offset() == offset, info.ReplID2 == p.ReplID())
	// Output: blue true true
}

// A primary with a data directory, restarted: it keeps its data and
// offset, and continues its old history, so its replicas resume with a
// partial resync.
func ExampleWithDataDir() {
	dir, err := os.MkdirTemp("", "replmap-example")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer os.RemoveAll(dir)

	p, err := replmap.NewPrimary[string](replmap.WithDataDir(dir), replmap.WithFsync(replmap.FsyncAlways))
	if err != nil {
		fmt.Println(err)
		return
	}
	_ = p.Set("config/mode", "blue") // on disk when Set returns
	offset, id := p.Offset(), p.ReplID()
	if err := p.Close(); err != nil {
		fmt.Println(err)
		return
	}

	p, err = replmap.NewPrimary[string](replmap.WithDataDir(dir))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer p.Close()
	v, _ := p.Get("config/mode")
	info := p.Info()
	fmt.Println(v, info.Offset == offset, info.ReplID2 == id)
	// Output: blue true true
}

// Waiting until a write is on disk on the primary and on one replica
// (Redis's WAITAOF): both have a data directory.
func ExamplePrimary_WaitDurable() {
	pdir, _ := os.MkdirTemp("", "replmap-primary")
	rdir, _ := os.MkdirTemp("", "replmap-replica")
	defer os.RemoveAll(pdir)
	defer os.RemoveAll(rdir)

	network := transport.NewInmem()
	p, err := replmap.NewPrimary[string](replmap.WithDataDir(pdir))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer p.Close()
	l, _ := network.Listen("primary")
	go p.Serve(l)
	r, err := replmap.NewReplica[string](network, "primary", replmap.WithDataDir(rdir))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer r.Close()

	_ = p.Set("config/mode", "blue")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	n, err := p.WaitDurable(ctx, 1) // fsynced here and on 1 replica
	fmt.Println(n, err, r.Info().DurableOffset >= p.Offset())
	// Output: 1 <nil> true
}

// Compare-and-swap falls out of Update: fn reads and writes under the
// write lock, so nothing changes key between the check and the write.
// The offset is the token to read the write back on a replica.
func ExamplePrimary_Update() {
	network := transport.NewInmem()
	p, _ := replmap.NewPrimary[string]()
	defer p.Close()
	l, _ := network.Listen("primary")
	go p.Serve(l)
	r, _ := replmap.NewReplica[string](network, "primary")
	defer r.Close()

	// compareAndSwap sets key to new if it holds old.
	compareAndSwap := func(key, old, new string) (swapped bool, offset uint64, err error) {
		offset, err = p.Update(func(tx *replmap.Tx[string]) error {
			if v, ok := tx.Get(key); !ok || v != old {
				return nil // no writes: nothing is written
			}
			swapped = true
			return tx.Set(key, new)
		})
		return swapped, offset, err
	}

	_ = p.Set("leader", "alice")
	ok1, _, _ := compareAndSwap("leader", "alice", "bob")
	ok2, _, _ := compareAndSwap("leader", "alice", "carol") // lost the race: bob is leader

	// A bulk write: one record, applied as one on every replica.
	off, _ := p.Update(func(tx *replmap.Tx[string]) error {
		for _, k := range []string{"a", "b", "c"} {
			if err := tx.Set(k, "1"); err != nil {
				return err
			}
		}
		return tx.Delete("leader")
	})
	_ = r.WaitOffset(context.Background(), off)
	_, stillLeader := r.Get("leader")
	fmt.Println(ok1, ok2, r.Len(), stillLeader)
	// Output: true false 3 false
}

// A key that expires: TTL reports the time it has left, on the primary
// and on replicas alike; Set without a TTL clears the deadline.
func ExamplePrimary_SetTTL() {
	network := transport.NewInmem()
	p, _ := replmap.NewPrimary[string]()
	defer p.Close()
	l, _ := network.Listen("primary")
	go p.Serve(l)
	r, _ := replmap.NewReplica[string](network, "primary")
	defer r.Close()

	_ = p.SetTTL("session:42", "alice", 30*time.Minute)
	_ = p.Set("config", "v1")
	_ = r.WaitOffset(context.Background(), p.Offset())

	left, ok := r.TTL("session:42")
	fmt.Println(ok, left > 29*time.Minute && left <= 30*time.Minute)
	left, ok = r.TTL("config") // no deadline
	fmt.Println(left, ok)
	_, ok = r.TTL("missing")
	fmt.Println(ok)

	_ = p.Set("session:42", "alice") // no TTL: the deadline goes
	left, _ = p.TTL("session:42")
	fmt.Println(left)
	fmt.Println(errors.Is(p.SetTTL("x", "y", 0), replmap.ErrInvalidTTL))
	// Output:
	// true true
	// 0s true
	// false
	// 0s
	// true
}
