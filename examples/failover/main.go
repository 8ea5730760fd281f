// Command failover walks through a failover and a planned handover over
// TCP loopback, in one process: a primary with three replicas, one of
// them chained under another.
//
//	go run ./examples/failover
//
// It writes -keys keys, kills the primary, promotes the most caught-up
// replica, re-points the others at it, and prints for each replica
// whether it resumed with a partial resync and how long its switch took.
// Then it hands the primary role over to another replica with
// Primary.Handover while a writer keeps writing, and prints the same,
// with the writes that were told where the primary went.
package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/replmap/replmap"
	"github.com/replmap/replmap/transport"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "failover:", err)
		os.Exit(1)
	}
}

// node is one replica of the walk-through, with the address it serves
// sub-replicas (and, once promoted, replicas) on.
type node struct {
	name string
	addr string
	r    *replmap.Replica[string]
}

func run(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("failover", flag.ContinueOnError)
	fs.SetOutput(out)
	keys := fs.Int("keys", 100_000, "keys to write before the failover")
	if err := fs.Parse(args); err != nil {
		return err
	}
	tcp := transport.NewTCP()
	var closers []func() error
	defer func() {
		for _, c := range slices.Backward(closers) {
			c()
		}
	}()
	listen := func(serve func(net.Listener) error) (string, error) {
		l, err := tcp.Listen("127.0.0.1:0")
		if err != nil {
			return "", err
		}
		go serve(l) // returns when the node serving it last is closed
		return l.Addr().String(), nil
	}

	p, err := replmap.NewPrimary[string]()
	if err != nil {
		return err
	}
	closers = append(closers, p.Close)
	paddr, err := listen(p.Serve)
	if err != nil {
		return err
	}
	// r1 and r2 follow the primary, r3 follows r2 (a chain).
	nodes := make([]*node, 3)
	for i, upstream := range []string{paddr, paddr, ""} {
		n := &node{name: "r" + strconv.Itoa(i+1)}
		if upstream == "" {
			upstream = nodes[1].addr
		}
		if n.r, err = replmap.NewReplica[string](tcp, upstream, replmap.WithReplicaName(n.name)); err != nil {
			return err
		}
		closers = append(closers, n.r.Close)
		if n.addr, err = listen(n.r.Serve); err != nil {
			return err
		}
		nodes[i] = n
	}
	fmt.Fprintf(out, "primary %s, replicas r1 and r2 of it, r3 chained under r2\n", paddr)

	value := string(make([]byte, 100))
	for i := range *keys {
		if err := p.Set("key"+strconv.Itoa(i), value); err != nil {
			return err
		}
	}
	for _, n := range nodes {
		if err := n.r.WaitOffset(ctx, p.Offset()); err != nil {
			return err
		}
	}
	fmt.Fprintf(out, "wrote %d keys; offset %d everywhere\n", *keys, p.Offset())

	// The primary dies. Promote the direct replica with the highest
	// offset, re-point the other direct replica; r3 follows r2 wherever
	// r2 goes.
	fulls := fullSyncs(nodes)
	killed := time.Now()
	p.Close()
	direct := slices.MaxFunc(nodes[:2], func(a, b *node) int { return cmp.Compare(a.r.Offset(), b.r.Offset()) })
	np, err := direct.r.Promote()
	if err != nil {
		return err
	}
	closers = append(closers, np.Close)
	fmt.Fprintf(out, "\nprimary killed; promoted %s (offset %d, epoch %d)\n", direct.name, np.Offset(), np.Info().Epoch)
	for _, n := range nodes[:2] {
		if n != direct {
			if err := n.r.Follow(direct.addr); err != nil {
				return err
			}
		}
	}
	if err := report(ctx, out, nodes, direct, np, fulls, killed); err != nil {
		return err
	}

	// A planned handover to another replica, under write load.
	var target *node
	for _, n := range nodes {
		if n != direct && n.r.Info().Primary == direct.addr {
			target = n
			break
		}
	}
	var (
		wg    sync.WaitGroup
		acked atomic.Int64
		moved *replmap.MovedError
		err2  error
	)
	wg.Go(func() {
		for i := 0; ; i++ {
			if err2 = np.Set("load"+strconv.Itoa(i%1000), value); err2 != nil {
				errors.As(err2, &moved)
				return
			}
			acked.Add(1)
		}
	})
	for acked.Load() < 1000 { // under way
		time.Sleep(100 * time.Microsecond)
	}
	fulls = fullSyncs(nodes)
	started := time.Now()
	hctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	old, err := np.Handover(hctx, tcp, target.name)
	cancel()
	if err != nil {
		return err
	}
	wg.Wait()
	if moved == nil {
		return fmt.Errorf("the writer ended with %v, not a MovedError", err2)
	}
	closers = append(closers, old.Close)
	np2, err := target.r.WaitPromoted(ctx)
	if err != nil {
		return err
	}
	closers = append(closers, np2.Close)
	fmt.Fprintf(out, "\nhanded over from %s to %s in %v (offset %d, epoch %d); %d writes went through, then writers were told: %v\n",
		direct.name, target.name, time.Since(started).Round(time.Microsecond), np2.Offset(), np2.Info().Epoch, acked.Load(), moved)
	direct.r = old
	return report(ctx, out, nodes, target, np2, fulls, started)
}

// report waits until every node but the primary streams from the
// primary's history, and prints how each switched.
func report(ctx context.Context, out io.Writer, nodes []*node, primary *node, p *replmap.Primary[string], fulls map[string]uint64, since time.Time) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for _, n := range nodes {
		if n == primary {
			continue
		}
		for {
			info := n.r.Info()
			if info.State == replmap.StateStreaming && info.ReplID == p.ReplID() {
				break
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("%s did not switch: %+v", n.name, info)
			case <-time.After(100 * time.Microsecond):
			}
		}
		took := time.Since(since)
		info := n.r.Info()
		how := "resumed with a partial resync"
		if info.FullSyncs > fulls[n.name] {
			how = "needed a full sync"
		}
		fmt.Fprintf(out, "  %s: %s from %s after %v\n", n.name, how, info.Primary, took.Round(time.Microsecond))
	}
	if err := waitAll(ctx, nodes, primary, p.Offset()); err != nil {
		return err
	}
	fmt.Fprintf(out, "  all at offset %d, %d keys\n", p.Offset(), p.Len())
	return nil
}

func waitAll(ctx context.Context, nodes []*node, primary *node, offset uint64) error {
	for _, n := range nodes {
		if n != primary {
			if err := n.r.WaitOffset(ctx, offset); err != nil {
				return err
			}
		}
	}
	return nil
}

func fullSyncs(nodes []*node) map[string]uint64 {
	m := make(map[string]uint64)
	for _, n := range nodes {
		m[n.name] = n.r.Info().FullSyncs
	}
	return m
}
