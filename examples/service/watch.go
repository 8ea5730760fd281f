package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/replmap/replmap"
)

// list serves GET /kv?prefix=p: the keys under prefix and their values,
// exactly as they were at one offset, which it returns too. Watching from
// that offset (GET /watch?prefix=p&from=offset) then yields every later
// change: together they keep a copy of that part of the map exact.
func (s *service) list(w http.ResponseWriter, r *http.Request) {
	if !s.caughtUp(w, r) {
		return
	}
	items, offset, err := s.node.List(r.Context(), r.URL.Query().Get("prefix"))
	if err != nil {
		writeError(w, statusOf(err), err)
		return
	}
	w.Header().Set(offsetHeader, strconv.FormatUint(offset, 10))
	writeJSON(w, http.StatusOK, listing{Offset: offset, Items: items})
}

// listing is what GET /kv?prefix= returns.
type listing struct {
	Offset uint64            `json:"offset"`
	Items  map[string]string `json:"items"`
}

// change is the data of a /watch event.
type change struct {
	Key     string `json:"key"`
	Value   string `json:"value"`
	Deleted bool   `json:"deleted,omitempty"`
	Offset  uint64 `json:"offset"`
}

// cursor is where a watch stream stands, as the id of each event says:
// every change up to offset done, and the first n changes of the Update
// after it. An id is an offset and a count ("41+1", or "41+2" for the
// second change of an Update) because the changes of one Update share its
// offset, and a stream cut in the middle of one must resume in the middle
// of it, not after it (a gap) or at its start (duplicates).
type cursor struct {
	done uint64 // every change up to this offset was sent
	at   uint64 // the offset of the Update being sent, once n > 0
	n    int    // how many of its changes were sent
	skip int    // how many changes of the first Update to leave out (resuming)
}

// parseCursor reads an event id ("41+2") or a bare offset ("41").
func parseCursor(s string) (cursor, error) {
	off, n, found := strings.Cut(s, "+")
	var c cursor
	var err error
	if c.done, err = strconv.ParseUint(off, 10, 64); err == nil && found {
		c.n, err = strconv.Atoi(n)
		if err == nil && c.n < 0 {
			err = errors.New("negative count")
		}
	}
	if err != nil {
		return cursor{}, fmt.Errorf("bad watch position %q: %w", s, err)
	}
	c.skip = c.n
	return c, nil
}

func (c cursor) String() string {
	if c.n == 0 {
		return strconv.FormatUint(c.done, 10)
	}
	return strconv.FormatUint(c.done, 10) + "+" + strconv.Itoa(c.n)
}

// advance moves c past a change at offset and reports whether to send it:
// not if it is one of the changes of the Update c stopped in that were
// sent before.
func (c *cursor) advance(offset uint64) bool {
	if c.skip > 0 {
		if c.at == 0 {
			c.at = offset // the first Update after done: the one c stopped in
		}
		if offset == c.at {
			c.skip--
			return false
		}
		c.skip = 0 // it had fewer changes than the id said
	}
	if c.n > 0 && offset != c.at {
		c.done, c.n = c.at, 0
	}
	c.at = offset
	c.n++
	return true
}

// watch serves GET /watch?prefix=p&from=N as Server-Sent Events: an event
// "put" or "delete" for each change to a key under prefix after offset N
// (from now without one), with a change as its data. Its id is a cursor
// that a browser's EventSource sends back as Last-Event-ID when it
// reconnects, which resumes the stream with no gap and no duplicate (from
// can be a cursor too). When the history the stream needs is gone (it
// fell behind the backlog, or a full sync replaced a replica's data), the
// last event is "relist": list again (GET /kv?prefix=p) and watch from the
// listing's offset. Shutting the instance down ends the stream.
func (s *service) watch(w http.ResponseWriter, r *http.Request) {
	prefix := r.URL.Query().Get("prefix")
	pos := cmp.Or(r.Header.Get("Last-Event-ID"), r.URL.Query().Get("from"))
	c := cursor{done: s.node.Offset()}
	if pos != "" {
		var err error
		if c, err = parseCursor(pos); err != nil {
			writeError(w, http.StatusBadRequest, err)
			return
		}
	}
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	defer context.AfterFunc(s.streams, cancel)()
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	if rc.Flush() != nil {
		return
	}
	// Events and keep-alives are written by two goroutines, one at a time;
	// the keep-alive goroutine is gone before the handler returns.
	var mu sync.Mutex
	send := func(write func()) bool {
		mu.Lock()
		defer mu.Unlock()
		write()
		return rc.Flush() == nil
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel() // stops the keep-alives, before wg.Wait
	if s.cfg.keepAlive > 0 {
		wg.Go(func() {
			t := time.NewTicker(s.cfg.keepAlive)
			defer t.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
				}
				if !send(func() { io.WriteString(w, ": keep-alive\n\n") }) {
					cancel() // the client is gone
					return
				}
			}
		})
	}
	for ev, err := range s.node.Watch(ctx, prefix, c.done) {
		switch {
		case errors.Is(err, replmap.ErrCompacted):
			send(func() { sendEvent(w, "", "relist", map[string]string{"error": err.Error()}) })
		case err != nil && ctx.Err() == nil && !errors.Is(err, replmap.ErrClosed):
			send(func() { sendEvent(w, "", "error", map[string]string{"error": err.Error()}) })
		case err == nil && !c.advance(ev.Offset):
			continue
		case err == nil:
			kind := "put"
			if ev.Deleted {
				kind = "delete"
			}
			id := c.String()
			if send(func() {
				sendEvent(w, id, kind, change{Key: ev.Key, Value: ev.Value, Deleted: ev.Deleted, Offset: ev.Offset})
			}) {
				continue
			}
		}
		return // after an error, or when the client is gone
	}
}

// sendEvent writes one Server-Sent Event.
func sendEvent(w http.ResponseWriter, id, event string, data any) {
	b, _ := json.Marshal(data) // a change or a map of strings: cannot fail
	if id != "" {
		fmt.Fprintf(w, "id: %s\n", id)
	}
	fmt.Fprintf(w, "event: %s\ndata: %s\n\n", event, b)
}
