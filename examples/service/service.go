package main

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"iter"
	"maps"
	"net/http"
	"net/http/httputil"
	"net/url"
	"slices"
	"strconv"
	"time"

	"github.com/replmap/replmap"
)

const (
	// offsetHeader carries the read-your-writes token: a write's response
	// has the offset of the write, and a read that sends it back waits
	// until the instance it reaches has applied that offset.
	offsetHeader = "X-Replmap-Offset"

	// ttlHeader says how long the key read has left to live, as a Go
	// duration ("29.5s"), when it has a TTL.
	ttlHeader = "X-Replmap-Ttl"

	// forwardedHeader marks a write a replica forwarded to its primary.
	// An instance that receives one and is not the primary refuses it
	// instead of forwarding it again, so a misconfigured -primary-http
	// cannot make requests go round in a loop.
	forwardedHeader = "X-Replmap-Forwarded"

	// maxBody caps the body of a write: replmap's default largest value.
	maxBody = replmap.DefaultMaxValueSize

	// sessionPrefix is where session keys live.
	sessionPrefix = "session/"
)

// Node is the local copy the service reads from: a
// *replmap.Primary[string] or a *replmap.Replica[string].
type Node interface {
	Get(key string) (string, bool)
	TTL(key string) (time.Duration, bool)
	Len() int
	Offset() uint64
	List(ctx context.Context, prefix string) (map[string]string, uint64, error)
	Watch(ctx context.Context, prefix string, from uint64) iter.Seq2[replmap.Event[string], error]
}

var (
	_ Node = (*replmap.Primary[string])(nil)
	_ Node = (*replmap.Replica[string])(nil)
)

// config is what a service needs besides its Node.
type config struct {
	// primaryHTTP is the primary's HTTP base URL ("http://host:port"),
	// where a replica forwards writes; empty on the primary, and on a
	// replica that refuses writes instead.
	primaryHTTP string
	// sessionTTL is the TTL of a session when POST /sessions names none.
	sessionTTL time.Duration
	// waitTimeout bounds how long a read waits for its offset token.
	waitTimeout time.Duration
	// keepAlive is how often an idle /watch stream gets a comment line,
	// so that proxies and load balancers do not drop it as idle; 0 for
	// never.
	keepAlive time.Duration
}

// service is the HTTP handler of one instance. Reads come from its Node;
// writes go to the Primary, directly on the primary and through a reverse
// proxy on a replica.
type service struct {
	node    Node
	primary *replmap.Primary[string] // nil on a replica
	replica *replmap.Replica[string] // nil on the primary
	cfg     config
	mux     *http.ServeMux

	// proxy forwards writes to the primary (nil without primaryHTTP);
	// transport is its own, so that close can drop its idle connections.
	proxy     *httputil.ReverseProxy
	transport *http.Transport

	// streams ends the open /watch streams, which would otherwise keep
	// http.Server.Shutdown waiting for them forever.
	streams    context.Context
	endStreams context.CancelFunc
}

// newService returns the handler for n, which must be a
// *replmap.Primary[string] or a *replmap.Replica[string].
func newService(n Node, cfg config) (*service, error) {
	s := &service{node: n, cfg: cfg, mux: http.NewServeMux()}
	switch n := n.(type) {
	case *replmap.Primary[string]:
		s.primary = n
	case *replmap.Replica[string]:
		s.replica = n
	default:
		return nil, fmt.Errorf("service: a %T is neither a Primary nor a Replica", n)
	}
	if s.replica != nil && cfg.primaryHTTP != "" {
		target, err := url.Parse(cfg.primaryHTTP)
		if err != nil {
			return nil, fmt.Errorf("service: primary HTTP address: %w", err)
		}
		if target.Scheme == "" || target.Host == "" {
			return nil, fmt.Errorf("service: primary HTTP address %q is not a URL like http://host:port", cfg.primaryHTTP)
		}
		// Forwarding rather than a 307 redirect: a client gets its answer
		// in one request wherever it sent it, needs no redirect-following
		// that re-sends the body (curl does not without -L, and a Go
		// client needs GetBody), and never has to reach the primary itself,
		// which may sit on a network only the instances share. The cost is
		// one more hop for writes, which go to one place anyway.
		s.transport = http.DefaultTransport.(*http.Transport).Clone()
		s.proxy = &httputil.ReverseProxy{
			Rewrite: func(pr *httputil.ProxyRequest) {
				pr.SetURL(target)
				pr.SetXForwarded()
				pr.Out.Header.Set(forwardedHeader, "1")
			},
			Transport: s.transport,
			ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
				writeError(w, http.StatusBadGateway, fmt.Errorf("forwarding to the primary: %w", err))
			},
		}
	}
	s.streams, s.endStreams = context.WithCancel(context.Background())

	s.mux.HandleFunc("GET /kv", s.list)
	s.mux.HandleFunc("GET /kv/{key...}", s.get)
	s.mux.HandleFunc("PUT /kv/{key...}", s.write(s.put))
	s.mux.HandleFunc("DELETE /kv/{key...}", s.write(s.delete))
	s.mux.HandleFunc("POST /kv", s.write(s.batch))
	s.mux.HandleFunc("POST /cas/{key...}", s.write(s.cas))
	s.mux.HandleFunc("POST /sessions", s.write(s.newSession))
	s.mux.HandleFunc("GET /sessions/{id}", s.getSession)
	s.mux.HandleFunc("GET /watch", s.watch)
	s.mux.HandleFunc("GET /healthz", s.health)
	return s, nil
}

func (s *service) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.mux.ServeHTTP(w, r) }

// close ends the open /watch streams and drops the idle connections to
// the primary. Call it when the HTTP server shuts down (it is safe to call
// more than once): http.Server.RegisterOnShutdown(s.close).
func (s *service) close() {
	s.endStreams()
	if s.transport != nil {
		s.transport.CloseIdleConnections()
	}
}

// role names what the instance is.
func (s *service) role() string {
	if s.primary != nil {
		return "primary"
	}
	return "replica"
}

// caughtUp waits, on a replica, until it has applied the offset in the
// request's offsetHeader, if there is one, for at most cfg.waitTimeout.
// When it cannot, it writes the error response and returns false.
func (s *service) caughtUp(w http.ResponseWriter, r *http.Request) bool {
	h := r.Header.Get(offsetHeader)
	if h == "" {
		return true
	}
	offset, err := strconv.ParseUint(h, 10, 64)
	if err != nil {
		writeError(w, http.StatusBadRequest, fmt.Errorf("%s: %w", offsetHeader, err))
		return false
	}
	if s.replica == nil {
		// The primary's offset includes every write it reported.
		return true
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.cfg.waitTimeout)
	defer cancel()
	switch err := s.replica.WaitOffset(ctx, offset); {
	case err == nil:
		return true
	case errors.Is(err, context.DeadlineExceeded):
		writeError(w, http.StatusGatewayTimeout, fmt.Errorf("this replica has not reached offset %d after %v (it is at %d)", offset, s.cfg.waitTimeout, s.replica.Offset()))
	default:
		writeError(w, statusOf(err), err)
	}
	return false
}

// item is a key and its value, as GET /kv/{key} returns it.
type item struct {
	Key   string `json:"key"`
	Value string `json:"value"`
}

// get serves GET /kv/{key}.
func (s *service) get(w http.ResponseWriter, r *http.Request) {
	key := r.PathValue("key")
	if !s.caughtUp(w, r) {
		return
	}
	s.read(w, key, func(v string) any { return item{Key: key, Value: v} })
}

// read writes key's value as show(value) makes it, with the TTL it has
// left in ttlHeader, or 404.
func (s *service) read(w http.ResponseWriter, key string, show func(string) any) {
	v, ok := s.node.Get(key)
	if !ok {
		writeError(w, http.StatusNotFound, fmt.Errorf("no key %q", key))
		return
	}
	// TTL after Get: a key that expires in between is shown without one.
	if ttl, ok := s.node.TTL(key); ok && ttl > 0 {
		w.Header().Set(ttlHeader, ttl.Round(time.Millisecond).String())
	}
	writeJSON(w, http.StatusOK, show(v))
}

// write returns the handler of a write: on the primary, h with the
// Primary; on a replica, the proxy to the primary.
func (s *service) write(h func(http.ResponseWriter, *http.Request, *replmap.Primary[string])) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		switch {
		case s.primary != nil:
			r.Body = http.MaxBytesReader(w, r.Body, maxBody)
			h(w, r, s.primary)
		case r.Header.Get(forwardedHeader) != "":
			writeError(w, http.StatusServiceUnavailable, errors.New("a write forwarded to a replica: -primary-http must name the primary"))
		case s.proxy == nil:
			writeError(w, http.StatusServiceUnavailable, errors.New("this replica is read-only and has no -primary-http to forward writes to"))
		default:
			s.proxy.ServeHTTP(w, r)
		}
	}
}

// written returns the function that answers a write with what Update
// returned: 204 with the write's offset as the token, or the error.
func written(w http.ResponseWriter) func(offset uint64, err error) {
	return func(offset uint64, err error) {
		if err != nil {
			writeError(w, statusOf(err), err)
			return
		}
		w.Header().Set(offsetHeader, strconv.FormatUint(offset, 10))
		w.WriteHeader(http.StatusNoContent)
	}
}

// ttlParam returns the request's ?ttl=, 0 without one.
func ttlParam(r *http.Request) (time.Duration, error) {
	q := r.URL.Query().Get("ttl")
	if q == "" {
		return 0, nil
	}
	ttl, err := time.ParseDuration(q)
	if err == nil && ttl <= 0 {
		err = replmap.ErrInvalidTTL
	}
	if err != nil {
		return 0, fmt.Errorf("ttl: %w", err)
	}
	return ttl, nil
}

// set sets key to v in tx, with ttl if it is not 0.
func set(tx *replmap.Tx[string], key, v string, ttl time.Duration) error {
	if ttl != 0 {
		return tx.SetTTL(key, v, ttl)
	}
	return tx.Set(key, v)
}

// put serves PUT /kv/{key}?ttl=30s: the body is the value. It writes
// through Update rather than Set because Update returns the write's
// offset; p.Offset() after a Set could include a later write, which is
// still a correct token, only one that may wait longer.
func (s *service) put(w http.ResponseWriter, r *http.Request, p *replmap.Primary[string]) {
	key := r.PathValue("key")
	ttl, err := ttlParam(r)
	if err != nil {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	body, err := io.ReadAll(r.Body)
	if err != nil {
		writeError(w, statusOf(err), err)
		return
	}
	written(w)(p.Update(func(tx *replmap.Tx[string]) error { return set(tx, key, string(body), ttl) }))
}

// delete serves DELETE /kv/{key}. Deleting a missing key succeeds, with
// the current offset as its token.
func (s *service) delete(w http.ResponseWriter, r *http.Request, p *replmap.Primary[string]) {
	key := r.PathValue("key")
	written(w)(p.Update(func(tx *replmap.Tx[string]) error { return tx.Delete(key) }))
}

// batch serves POST /kv?ttl=30s: the body is a JSON object of key to
// value, a null value deleting its key. All the writes apply at once, at
// one offset: no reader anywhere sees some of them without the others.
func (s *service) batch(w http.ResponseWriter, r *http.Request, p *replmap.Primary[string]) {
	ttl, err := ttlParam(r)
	if err != nil {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	var writes map[string]*string
	if err := decode(r, &writes); err != nil {
		writeError(w, statusOf(err), err)
		return
	}
	// In key order, so that watchers see the same order every time.
	keys := slices.Sorted(maps.Keys(writes))
	written(w)(p.Update(func(tx *replmap.Tx[string]) error {
		for _, k := range keys {
			var err error
			if v := writes[k]; v == nil {
				err = tx.Delete(k)
			} else {
				err = set(tx, k, *v, ttl)
			}
			if err != nil {
				return fmt.Errorf("key %q: %w", k, err)
			}
		}
		return nil
	}))
}

// casRequest is the body of POST /cas/{key}. A null (or missing) Old
// means the key must be absent; a null New deletes it.
type casRequest struct {
	Old *string `json:"old"`
	New *string `json:"new"`
}

// errMismatch is a compare-and-swap whose old value was not the key's.
var errMismatch = errors.New("the key does not hold the old value")

// cas serves POST /cas/{key}?ttl=30s: it sets key to new only if it
// holds old, in one Update, so no write can come in between; 409, with
// what the key holds, if it does not.
func (s *service) cas(w http.ResponseWriter, r *http.Request, p *replmap.Primary[string]) {
	key := r.PathValue("key")
	ttl, err := ttlParam(r)
	if err != nil {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	var req casRequest
	if err := decode(r, &req); err != nil {
		writeError(w, statusOf(err), err)
		return
	}
	var cur *string
	offset, err := p.Update(func(tx *replmap.Tx[string]) error {
		if v, ok := tx.Get(key); ok {
			cur = &v
		}
		if (cur == nil) != (req.Old == nil) || (cur != nil && *cur != *req.Old) {
			return errMismatch
		}
		if req.New == nil {
			return tx.Delete(key)
		}
		return set(tx, key, *req.New, ttl)
	})
	if errors.Is(err, errMismatch) {
		writeJSON(w, http.StatusConflict, map[string]any{"error": err.Error(), "current": cur})
		return
	}
	written(w)(offset, err)
}

// session is what POST /sessions and GET /sessions/{id} return.
type session struct {
	ID   string `json:"id"`
	Data string `json:"data"`
}

// newSession serves POST /sessions?ttl=30m: it stores the body under a
// new random session key that expires after ttl (cfg.sessionTTL without
// one), and returns the session's id, with the token in offsetHeader.
func (s *service) newSession(w http.ResponseWriter, r *http.Request, p *replmap.Primary[string]) {
	ttl, err := ttlParam(r)
	if err != nil {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	if ttl == 0 {
		ttl = s.cfg.sessionTTL
	}
	body, err := io.ReadAll(r.Body)
	if err != nil {
		writeError(w, statusOf(err), err)
		return
	}
	id := rand.Text()
	offset, err := p.Update(func(tx *replmap.Tx[string]) error {
		return tx.SetTTL(sessionPrefix+id, string(body), ttl)
	})
	if err != nil {
		writeError(w, statusOf(err), err)
		return
	}
	w.Header().Set(offsetHeader, strconv.FormatUint(offset, 10))
	w.Header().Set(ttlHeader, ttl.String())
	writeJSON(w, http.StatusCreated, session{ID: id, Data: string(body)})
}

// getSession serves GET /sessions/{id}: 404 once it expired.
func (s *service) getSession(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if !s.caughtUp(w, r) {
		return
	}
	s.read(w, sessionPrefix+id, func(v string) any { return session{ID: id, Data: v} })
}

// health serves GET /healthz.
func (s *service) health(w http.ResponseWriter, r *http.Request) {
	h := map[string]any{"role": s.role(), "offset": s.node.Offset(), "keys": s.node.Len()}
	if s.replica != nil {
		h["state"] = s.replica.Info().State
	}
	writeJSON(w, http.StatusOK, h)
}

// decode reads the request's JSON body into v.
func decode(r *http.Request, v any) error {
	if err := json.NewDecoder(r.Body).Decode(v); err != nil {
		return fmt.Errorf("request body: %w", err)
	}
	return nil
}

// statusOf is the HTTP status for err.
func statusOf(err error) int {
	var maxBytes *http.MaxBytesError
	var syntax *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &maxBytes), errors.Is(err, replmap.ErrTooLarge):
		return http.StatusRequestEntityTooLarge
	case errors.As(err, &syntax), errors.As(err, &typ), errors.Is(err, io.ErrUnexpectedEOF),
		errors.Is(err, io.EOF), errors.Is(err, replmap.ErrInvalidTTL):
		return http.StatusBadRequest
	case errors.Is(err, replmap.ErrClosed), errors.Is(err, replmap.ErrNotEnoughReplicas),
		errors.Is(err, replmap.ErrStaleEpoch), errors.Is(err, replmap.ErrReadOnly),
		errors.Is(err, replmap.ErrReplicaTooSlow):
		return http.StatusServiceUnavailable
	}
	return http.StatusInternalServerError
}

func writeError(w http.ResponseWriter, code int, err error) {
	writeJSON(w, code, map[string]string{"error": err.Error()})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v) // an error here means the client went away
}
