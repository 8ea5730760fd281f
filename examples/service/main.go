// Command service is a small HTTP key-value service over replmap, meant
// to be copied: one binary run as several instances. The primary takes
// the writes; every instance serves reads from its own copy; a replica
// forwards the writes it receives to the primary. Run three instances
// locally, each in its own terminal:
//
//	go run ./examples/service -http 127.0.0.1:8080 -repl 127.0.0.1:7070
//	go run ./examples/service -http 127.0.0.1:8081 -primary 127.0.0.1:7070 -primary-http 127.0.0.1:8080
//	go run ./examples/service -http 127.0.0.1:8082 -primary 127.0.0.1:7070 -primary-http 127.0.0.1:8080
//
// Then write through a replica and read your write on the other one with
// the token the write returned:
//
//	curl -i -X PUT --data 'dark' 127.0.0.1:8081/kv/theme   # X-Replmap-Offset: 42
//	curl -H 'X-Replmap-Offset: 42' 127.0.0.1:8082/kv/theme
//	curl -N 127.0.0.1:8082/watch?prefix=theme              # changes, as Server-Sent Events
//
// Endpoints (JSON out; errors are {"error": "..."}):
//
//	GET    /kv?prefix=p        {"offset","items"}: the keys under p at one offset
//	GET    /kv/{key}           the value, {"key","value"}; X-Replmap-Ttl when it expires
//	PUT    /kv/{key}?ttl=30s   body = value; 204 with X-Replmap-Offset
//	DELETE /kv/{key}           204 with X-Replmap-Offset
//	POST   /kv?ttl=30s         {"k1":"v1","k2":null} all at once (null deletes)
//	POST   /cas/{key}          {"old":"v1","new":"v2"}: 409 if the key does not hold old
//	                           (a null old: the key must be absent; a null new deletes it)
//	POST   /sessions?ttl=30m   body = session data; 201 {"id","data"}
//	GET    /sessions/{id}      the session, 404 once it expired; X-Replmap-Ttl = time left
//	GET    /watch?prefix=p&from=N   Server-Sent Events "put" and "delete", one per write
//	                           under p after offset N (or after the listing at N), each
//	                           {"key","value","deleted","offset"}; "relist" when the
//	                           history is gone: list again and watch from the new offset
//	GET    /healthz            {"role","offset","keys"} (and the replica's "state")
//
// A watch event's id ("41+2": the offset of the last whole write before
// it, and how many changes of the next one were sent) resumes the stream
// exactly, mid-Update too: a browser's EventSource sends it back as
// Last-Event-ID when it reconnects, and from= takes one as well. An idle
// stream gets a ": keep-alive" comment every -keepalive (15 s), so that
// proxies do not drop it.
//
// A read that sends X-Replmap-Offset: N waits (up to -wait) until the
// instance has applied offset N, and fails with 504 if it has not by then.
// With -data DIR an instance keeps its data in DIR across restarts (one
// directory per instance). Ctrl-C (or SIGTERM) stops an instance
// gracefully: it finishes the requests in flight, ends the watch streams
// and closes its copy.
package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/replmap/replmap"
	"github.com/replmap/replmap/transport"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := run(ctx, os.Args[1:], os.Stdout)
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "service:", err)
		os.Exit(1)
	}
}

// shutdownTimeout bounds how long a stopping instance waits for the
// requests in flight.
const shutdownTimeout = 10 * time.Second

func run(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("service", flag.ContinueOnError)
	fs.SetOutput(out)
	httpAddr := fs.String("http", "127.0.0.1:8080", "serve HTTP on `ADDR`")
	replAddr := fs.String("repl", "", "serve replication on `ADDR` (the primary's replicas, or a replica's own)")
	primaryAddr := fs.String("primary", "", "replicate from the primary's replication listener at `ADDR`; empty: this instance is the primary")
	primaryHTTP := fs.String("primary-http", "", "forward writes to the primary's HTTP server at `ADDR` (replicas)")
	dataDir := fs.String("data", "", "keep this instance's data in `DIR` across restarts (one directory per instance)")
	sessionTTL := fs.Duration("session-ttl", 30*time.Minute, "TTL of a session created without ?ttl=")
	wait := fs.Duration("wait", 2*time.Second, "how long a read waits for the offset in its X-Replmap-Offset header")
	keepAlive := fs.Duration("keepalive", 15*time.Second, "how often an idle /watch stream gets a keep-alive comment (0: never)")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: service [flags] (go doc ./examples/service for endpoints and a three-instance example)")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if *sessionTTL <= 0 || *wait <= 0 {
		return errors.New("-session-ttl and -wait must be positive")
	}
	cfg := config{sessionTTL: *sessionTTL, waitTimeout: *wait, keepAlive: *keepAlive}
	if *primaryHTTP != "" {
		if *primaryAddr == "" {
			return errors.New("-primary-http is for replicas: give -primary too")
		}
		cfg.primaryHTTP = *primaryHTTP
		if !strings.Contains(cfg.primaryHTTP, "://") {
			cfg.primaryHTTP = "http://" + cfg.primaryHTTP
		}
	}
	var opts []replmap.Option
	if *dataDir != "" {
		opts = append(opts, replmap.WithDataDir(*dataDir))
	}

	tcp := transport.NewTCP()
	var (
		node      Node
		serve     func(net.Listener) error
		closeNode func() error
	)
	if *primaryAddr == "" {
		p, err := replmap.NewPrimary[string](opts...)
		if err != nil {
			return err
		}
		node, serve, closeNode = p, p.Serve, p.Close
	} else {
		r, err := replmap.NewReplica[string](tcp, *primaryAddr, opts...)
		if err != nil {
			return err
		}
		node, serve, closeNode = r, r.Serve, r.Close
	}
	defer closeNode()
	svc, err := newService(node, cfg)
	if err != nil {
		return err
	}
	defer svc.close()

	errs := make(chan error, 2)
	served := 0
	if *replAddr != "" {
		l, err := tcp.Listen(*replAddr)
		if err != nil {
			return err
		}
		served++
		go func() { errs <- fmt.Errorf("replication: %w", serve(l)) }()
		fmt.Fprintf(out, "service: %s replication on %s\n", svc.role(), l.Addr())
	}
	hl, err := net.Listen("tcp", *httpAddr)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: svc, ReadHeaderTimeout: 10 * time.Second}
	srv.RegisterOnShutdown(svc.close)
	served++
	go func() { errs <- fmt.Errorf("http: %w", srv.Serve(hl)) }()
	fmt.Fprintf(out, "service: %s HTTP on %s\n", svc.role(), hl.Addr())

	var failed error
	select {
	case <-ctx.Done():
	case failed = <-errs:
		served--
	}
	// Stop taking requests and finish those in flight (the watch streams
	// are ended by svc.close), then close the copy: with -data, Close makes
	// every write durable.
	sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	serr := srv.Shutdown(sctx)
	svc.close()
	cerr := closeNode()
	for range served {
		if err := <-errs; !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, replmap.ErrClosed) {
			failed = cmp.Or(failed, err)
		}
	}
	if err := errors.Join(failed, serr, cerr); err != nil {
		return err
	}
	fmt.Fprintf(out, "service: %s stopped\n", svc.role())
	return nil
}
