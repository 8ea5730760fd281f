// Command quickstart runs a primary and two replicas in one process over
// the in-memory transport: it writes, waits for both replicas, reads from
// them, and prints what each side reports.
//
//	go run ./examples/quickstart
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"time"

	"github.com/replmap/replmap"
	"github.com/replmap/replmap/transport"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "quickstart:", err)
		os.Exit(1)
	}
}

// Profile is the value type replicated in this example: any type msgpack
// can encode works.
type Profile struct {
	Name  string
	Email string
	Score int
}

func run(ctx context.Context, out io.Writer) (err error) {
	network := transport.NewInmem()

	primary, err := replmap.NewPrimary[Profile]()
	if err != nil {
		return err
	}
	defer primary.Close()
	l, err := network.Listen("primary")
	if err != nil {
		return err
	}
	go primary.Serve(l) // returns ErrClosed when primary.Close runs

	var replicas []*replmap.Replica[Profile]
	for range 2 {
		r, err := replmap.NewReplica[Profile](network, "primary")
		if err != nil {
			return err
		}
		defer r.Close()
		replicas = append(replicas, r)
	}

	// Some data before the replicas sync (it arrives in the snapshot) ...
	if err := primary.Set("user:1", Profile{Name: "Ada", Email: "ada@example.com", Score: 36}); err != nil {
		return err
	}
	for i, r := range replicas {
		if err := r.WaitSynced(ctx); err != nil {
			return fmt.Errorf("replica %d: %w", i, err)
		}
	}
	// ... and some after (it arrives in the live stream).
	if err := primary.Set("user:2", Profile{Name: "Grace", Email: "grace@example.com", Score: 85}); err != nil {
		return err
	}
	if err := primary.Delete("user:1"); err != nil {
		return err
	}

	// Block until both replicas have applied every write so far.
	n, err := primary.Wait(len(replicas), 5*time.Second)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "writes acknowledged by %d of %d replicas\n", n, len(replicas))

	for i, r := range replicas {
		p, ok := r.Get("user:2")
		_, gone := r.Get("user:1")
		fmt.Fprintf(out, "replica %d: user:2 = %+v (found %v), user:1 found %v, %d key(s)\n", i, p, ok, gone, r.Len())
		if err := r.Set("user:3", Profile{}); err != nil {
			fmt.Fprintf(out, "replica %d: write rejected: %v\n", i, err)
		}
	}

	pi := primary.Info()
	fmt.Fprintf(out, "primary: offset %d, %d full sync(s), %d partial, %d replica(s)\n",
		pi.Offset, pi.FullSyncs, pi.PartialSyncs, len(pi.Replicas))
	for _, link := range pi.Replicas {
		fmt.Fprintf(out, "  replica %s: %s, acknowledged offset %d, lag %d\n", link.ID[:4], link.State, link.AckOffset, link.Lag)
	}
	for i, r := range replicas {
		ri := r.Info()
		fmt.Fprintf(out, "replica %d: %s at offset %d (primary at %d)\n", i, ri.State, ri.Offset, pi.Offset)
	}
	return nil
}
