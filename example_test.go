package replmap_test

import (
	"context"
	"errors"
	"fmt"
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
	n, _ := p.Wait(1, time.Second) // until the replica has applied it
	v, _ := r.Get("greeting")
	fmt.Println(n, v)
	// Output: 1 hello
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
