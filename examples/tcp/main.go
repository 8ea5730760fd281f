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
// and its replicas, while they are ahead of it, refuse to be wiped by it
// ("sync would lose data"), keep serving their counter, and say why. Start a replica with
// -allow-data-loss to let it follow the empty primary anyway. Ctrl-C (or
// SIGTERM) stops either cleanly.
//
// With -data DIR a process keeps its data in DIR (see docs/datadir.md);
// give each process its own directory:
//
//	go run ./examples/tcp -role primary -data /tmp/replmap/primary
//	go run ./examples/tcp -role replica -data /tmp/replmap/replica
//
// Stop the primary and restart it with the same -data: it says how many
// keys it loaded at which offset and counts on from there, and its
// replicas resume with a partial resync, their counter intact. A replica
// restarted with its -data serves what it held at once and resumes
// partially too.
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
	dataDir := fs.String("data", "", "keep this process's data in `DIR` across restarts (one directory per process)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *interval <= 0 {
		return fmt.Errorf("-interval must be positive, got %v", *interval)
	}
	var opts []replmap.Option
	if *dataDir != "" {
		opts = append(opts, replmap.WithDataDir(*dataDir))
	}
	tcp := transport.NewTCP()
	switch *role {
	case "primary":
		return runPrimary(ctx, tcp, *listen, *interval, out, opts...)
	case "replica":
		if *allowLoss {
			opts = append(opts, replmap.WithAllowDataLoss())
		}
		return runReplica(ctx, tcp, *primaryAddr, *interval, out, opts...)
	default:
		return fmt.Errorf("-role must be primary or replica, got %q", *role)
	}
}

func runPrimary(ctx context.Context, tcp *transport.TCP, addr string, every time.Duration, out io.Writer, opts ...replmap.Option) error {
	p, err := replmap.NewPrimary[string](opts...)
	if err != nil {
		return err
	}
	defer p.Close()
	// A primary restarted on its data directory continues the counter.
	n := 1
	if p.Offset() > 0 {
		info := p.Info()
		fmt.Fprintf(out, "primary: loaded %d keys at offset %d, continuing history %s\n", p.Len(), p.Offset(), short(info.ReplID2))
		if c, ok := p.Get("counter"); ok {
			if last, err := strconv.Atoi(c); err == nil {
				n = last + 1
			}
		}
	}
	l, err := tcp.Listen(addr)
	if err != nil {
		return err
	}
	served := make(chan error, 1)
	go func() { served <- p.Serve(l) }()
	fmt.Fprintf(out, "primary %s listening on %s\n", p.ReplID()[:8], l.Addr())

	ticker := time.NewTicker(every)
	defer ticker.Stop()
	for ; ; n++ {
		select {
		case <-ctx.Done():
			// With a data directory, Close makes every write durable.
			cerr := p.Close()
			if err := <-served; !errors.Is(err, replmap.ErrClosed) {
				return err
			}
			if cerr != nil {
				return cerr
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
	// A replica restarted on its data directory serves what it held at once.
	if info := r.Info(); info.Offset > 0 {
		fmt.Fprintf(out, "replica: loaded %d keys at offset %d\n", info.Keys, info.Offset)
	}
	ticker := time.NewTicker(every)
	defer ticker.Stop()
	var full, partial uint64
	for {
		select {
		case <-ctx.Done():
			// With a data directory, Close makes every write durable.
			if err := r.Close(); err != nil {
				return err
			}
			fmt.Fprintln(out, "replica stopped")
			return nil
		case <-ticker.C:
		}
		info := r.Info()
		if info.PartialSyncs > partial {
			fmt.Fprintf(out, "replica: resumed with a partial resync (%d so far), history %s\n", info.PartialSyncs, short(info.ReplID))
		}
		if info.FullSyncs > full {
			fmt.Fprintf(out, "replica: full sync (%d so far), history %s\n", info.FullSyncs, short(info.ReplID))
		}
		full, partial = info.FullSyncs, info.PartialSyncs
		counter, _ := r.Get("counter")
		line := fmt.Sprintf("replica: state=%s offset=%d counter=%s full=%d partial=%d", info.State, info.Offset, counter, info.FullSyncs, info.PartialSyncs)
		if info.LastError != nil && info.State != replmap.StateStreaming {
			line += " last error: " + info.LastError.Error()
		}
		fmt.Fprintln(out, line)
	}
}

// short returns the first eight characters of a replication ID.
func short(id string) string { return id[:min(8, len(id))] }
