package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/replmap/replmap"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// sse is one Server-Sent Event.
type sse struct{ id, event, data string }

// watch opens a /watch stream and returns its events as they come, the
// channel closed when the stream ends; stop ends it.
func (c *cluster) watch(url string, hdr ...string) (events <-chan sse, stop func()) {
	c.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, "GET", url, nil)
	require.NoError(c.t, err)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := c.client.Do(req)
	require.NoError(c.t, err)
	require.Equal(c.t, http.StatusOK, resp.StatusCode)
	require.Equal(c.t, "text/event-stream", resp.Header.Get("Content-Type"))
	ch := make(chan sse)
	go func() {
		defer close(ch)
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		var ev sse
		for sc.Scan() {
			line := sc.Text()
			if strings.HasPrefix(line, ":") { // a comment: a keep-alive
				ev = sse{event: "comment", data: strings.TrimSpace(line[1:])}
				line = ""
			}
			name, v, _ := strings.Cut(line, ": ")
			switch name {
			case "id":
				ev.id = v
			case "event":
				ev.event = v
			case "data":
				ev.data = v
			case "":
				if ev == (sse{}) {
					continue // the blank line after a comment
				}
				select {
				case ch <- ev:
				case <-ctx.Done():
					return
				}
				ev = sse{}
			}
		}
	}()
	return ch, func() {
		cancel()
		for range ch {
		}
	}
}

// next returns the next event of a stream. The deadline only turns a
// hang into a failure that says what was awaited.
func next(t *testing.T, events <-chan sse) (sse, change) {
	t.Helper()
	select {
	case ev, ok := <-events:
		require.True(t, ok, "the stream ended")
		var ch change
		require.NoError(t, json.Unmarshal([]byte(ev.data), &ch), ev.data)
		return ev, ch
	case <-time.After(10 * time.Second):
		t.Fatal("no event after 10s")
	}
	panic("unreachable")
}

// ended checks that a stream has ended.
func ended(t *testing.T, events <-chan sse) {
	t.Helper()
	select {
	case ev, ok := <-events:
		require.False(t, ok, "an event after the end: %+v", ev)
	case <-time.After(10 * time.Second):
		t.Fatal("the stream did not end after 10s")
	}
}

// TestWatch streams changes under a prefix from a replica, resumes from
// an event id in the middle of a batch without a gap or a duplicate,
// tells the client to list again when the history is gone, and ends when
// the instance shuts down.
func TestWatch(t *testing.T) {
	// A small backlog on the primary, to see a stream whose history is gone.
	c := newCluster(t, replmap.WithBacklogSize(16<<10))
	r1, _ := c.replica("r1", defaultCfg, false)
	r2, rep2 := c.replica("r2", defaultCfg, false)
	start := c.p.Offset()
	events, stop := c.watch(r2.url + "/watch?prefix=cfg/")
	defer stop()

	write := func(method, url, body string) uint64 {
		t.Helper()
		resp, b := c.do(method, url, body)
		require.Equal(t, http.StatusNoContent, resp.StatusCode, b)
		return mustUint(t, token(t, resp))
	}
	a := write("PUT", r1.url+"/kv/cfg/a", "1")
	write("PUT", r1.url+"/kv/other/x", "not watched")
	b := write("POST", r1.url+"/kv", `{"cfg/b":"2","cfg/c":"3","other/y":"no"}`)
	d := write("DELETE", r2.url+"/kv/cfg/a", "")

	want := []struct {
		id, event string
		ch        change
	}{
		{fmt.Sprintf("%d+1", start), "put", change{Key: "cfg/a", Value: "1", Offset: a}},
		{fmt.Sprintf("%d+1", a), "put", change{Key: "cfg/b", Value: "2", Offset: b}},
		{fmt.Sprintf("%d+2", a), "put", change{Key: "cfg/c", Value: "3", Offset: b}},
		{fmt.Sprintf("%d+1", b), "delete", change{Key: "cfg/a", Deleted: true, Offset: d}},
	}
	var got []sse
	for _, w := range want {
		ev, ch := next(t, events)
		assert.Equal(t, w.id, ev.id)
		assert.Equal(t, w.event, ev.event)
		assert.Equal(t, w.ch, ch)
		got = append(got, ev)
	}

	// A browser resumes with Last-Event-ID, here in the middle of the
	// batch; a client can pass an event id or an offset as from, on any
	// instance.
	for _, tc := range []struct {
		name  string
		url   string
		hdr   []string
		first int // the index in want of the first event that comes again
	}{
		{"Last-Event-ID mid-batch", r2.url + "/watch?prefix=cfg/", []string{"Last-Event-ID", got[1].id}, 2},
		{"from an offset", c.primary.url + "/watch?prefix=cfg/&from=" + strconv.FormatUint(a, 10), nil, 1},
		{"from the start", r1.url + "/watch?prefix=cfg/&from=" + strconv.FormatUint(start, 10), nil, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			events, stop := c.watch(tc.url, tc.hdr...)
			defer stop()
			for _, w := range want[tc.first:] {
				ev, ch := next(t, events)
				assert.Equal(t, w.id, ev.id)
				assert.Equal(t, w.ch, ch)
			}
		})
	}

	// A stream resumed at the end waits for the next change.
	resumed, stopResumed := c.watch(r1.url+"/watch?prefix=cfg/", "Last-Event-ID", got[3].id)
	defer stopResumed()
	z := write("PUT", r1.url+"/kv/cfg/z", "26")
	ev, ch := next(t, resumed)
	assert.Equal(t, fmt.Sprintf("%d+1", d), ev.id)
	assert.Equal(t, change{Key: "cfg/z", Value: "26", Offset: z}, ch)
	ev, ch = next(t, events)
	assert.Equal(t, "cfg/z", ch.Key, "the first stream goes on too")

	// A stream from an offset the primary's backlog no longer holds (it
	// moved on by more than its 16 KiB): list again, and watch from the
	// listing's offset.
	var big uint64
	for i := 0; c.p.Info().BacklogFirst <= start; i++ {
		require.Less(t, i, 100, "the backlog does not move")
		big = write("PUT", c.primary.url+"/kv/big", strings.Repeat("x", 8<<10))
	}
	gone, stopGone := c.watch(c.primary.url + "/watch?from=" + strconv.FormatUint(start, 10))
	defer stopGone()
	ev = <-gone
	assert.Equal(t, "relist", ev.event)
	assert.Contains(t, ev.data, "compacted")
	ended(t, gone)
	resp, body := c.do("GET", r2.url+"/kv?prefix=cfg/", "", offsetHeader, strconv.FormatUint(big, 10))
	require.Equal(t, http.StatusOK, resp.StatusCode, body)
	var l listing
	require.NoError(t, json.Unmarshal([]byte(body), &l), body)
	assert.Equal(t, listing{Offset: rep2.Offset(), Items: map[string]string{"cfg/b": "2", "cfg/c": "3", "cfg/z": "26"}}, l)

	resp, _ = c.do("GET", r2.url+"/watch?from=soon", "")
	assert.Equal(t, http.StatusBadRequest, resp.StatusCode)

	// Shutting an instance down ends its streams.
	r1.svc.close()
	ended(t, resumed)
}

// TestWatchKeepAlive checks that an idle stream gets keep-alive comments,
// and that events still come between them.
func TestWatchKeepAlive(t *testing.T) {
	c := newCluster(t)
	in := c.serve(c.p, config{sessionTTL: time.Minute, waitTimeout: time.Second, keepAlive: 5 * time.Millisecond})
	events, stop := c.watch(in.url + "/watch?prefix=k")
	defer stop()
	ev := <-events
	require.Equal(t, sse{event: "comment", data: "keep-alive"}, ev)
	resp, _ := c.do("PUT", in.url+"/kv/k1", "v")
	require.Equal(t, http.StatusNoContent, resp.StatusCode)
	for ev = range events {
		if ev.event != "comment" {
			break
		}
	}
	require.Equal(t, "put", ev.event)
	var ch change
	require.NoError(t, json.Unmarshal([]byte(ev.data), &ch))
	require.Equal(t, "k1", ch.Key)
}

func TestParseCursor(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want cursor
	}{
		{"41", cursor{done: 41}},
		{"41+2", cursor{done: 41, n: 2, skip: 2}},
		{"0+0", cursor{}},
	} {
		c, err := parseCursor(tc.in)
		require.NoError(t, err, tc.in)
		assert.Equal(t, tc.want, c, tc.in)
		assert.Equal(t, strings.TrimSuffix(tc.in, "+0"), c.String())
	}
	for _, bad := range []string{"", "x", "41+", "41+x", "41+-1", "-1", "1+2+3"} {
		_, err := parseCursor(bad)
		assert.Error(t, err, bad)
	}
}
