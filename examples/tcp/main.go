// Command tcp runs a primary or a replica as its own process over TCP.
// Start a primary, then as many replicas as you like, in other terminals:
//
//	go run ./examples/tcp -role primary -listen 127.0.0.1:7070
//	go run ./examples/tcp -role replica -primary 127.0.0.1:7070
//
// The primary writes a counter every -interval and reports how many
// replicas acknowledged it; each replica reports what it holds. Stop a
// replica for a moment to watch it resume with a partial resync. Stop the
// primary and restart it: it comes back empty (it keeps nothing on disk),
// and its replicas refuse to be wiped by it ("sync would lose data"), keep
// serving their counter, and say why. Start a replica with
// -allow-data-loss to let it follow the empty primary anyway. Ctrl-C (or
// SIGTERM) stops either cleanly.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/replmap/replmap"
	"github.com/replmap/replmap/transport"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "tcp:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("tcp", flag.ContinueOnError)
	fs.SetOutput(out)
	role := fs.String("role", "primary", "primary or replica")
	listen := fs.String("listen", "127.0.0.1:7070", "address the primary listens on")
	primaryAddr := fs.String("primary", "127.0.0.1:7070", "address of the primary (replica role)")
	interval := fs.Duration("interval", time.Second, "how often to write (primary) or report (replica)")
	allowLoss := fs.Bool("allow-data-loss", false, "let the replica follow a primary that would wipe its data (replica role)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *interval <= 0 {
		return fmt.Errorf("-interval must be positive, got %v", *interval)
	}
	tcp := transport.NewTCP()
	switch *role {
	case "primary":
		return runPrimary(ctx, tcp, *listen, *interval, out)
	case "replica":
		var opts []replmap.Option
		if *allowLoss {
			opts = append(opts, replmap.WithAllowDataLoss())
		}
		return runReplica(ctx, tcp, *primaryAddr, *interval, out, opts...)
	default:
		return fmt.Errorf("-role must be primary or replica, got %q", *role)
	}
}

func runPrimary(ctx context.Context, tcp *transport.TCP, addr string, every time.Duration, out io.Writer) error {
	p, err := replmap.NewPrimary[string]()
	if err != nil {
		return err
	}
	defer p.Close()
	l, err := tcp.Listen(addr)
	if err != nil {
		return err
	}
	served := make(chan error, 1)
	go func() { served <- p.Serve(l) }()
	fmt.Fprintf(out, "primary %s listening on %s\n", p.ReplID()[:8], l.Addr())

	ticker := time.NewTicker(every)
	defer ticker.Stop()
	for n := 1; ; n++ {
		select {
		case <-ctx.Done():
			p.Close()
			if err := <-served; !errors.Is(err, replmap.ErrClosed) {
				return err
			}
			fmt.Fprintln(out, "primary stopped")
			return nil
		case err := <-served:
			return fmt.Errorf("serve: %w", err)
		case <-ticker.C:
		}
		if err := p.Set("counter", strconv.Itoa(n)); err != nil {
			return err
		}
		if err := p.Set("written-at", time.Now().Format(time.RFC3339Nano)); err != nil {
			return err
		}
		info := p.Info()
		// Give the replicas a moment to acknowledge, without holding up
		// the next write for long.
		acked, err := p.Wait(len(info.Replicas), every/2)
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "primary: counter=%d offset=%d replicas=%d acknowledged=%d\n", n, p.Offset(), len(info.Replicas), acked)
	}
}

func runReplica(ctx context.Context, tcp *transport.TCP, addr string, every time.Duration, out io.Writer, opts ...replmap.Option) error {
	r, err := replmap.NewReplica[string](tcp, addr, opts...)
	if err != nil {
		return err
	}
	defer r.Close()
	fmt.Fprintf(out, "replica of %s\n", addr)
	ticker := time.NewTicker(every)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			r.Close()
			fmt.Fprintln(out, "replica stopped")
			return nil
		case <-ticker.C:
		}
		info := r.Info()
		counter, _ := r.Get("counter")
		line := fmt.Sprintf("replica: state=%s offset=%d counter=%s full=%d partial=%d", info.State, info.Offset, counter, info.FullSyncs, info.PartialSyncs)
		if info.LastError != nil && info.State != replmap.StateStreaming {
			line += " last error: " + info.LastError.Error()
		}
		fmt.Fprintln(out, line)
	}
}
