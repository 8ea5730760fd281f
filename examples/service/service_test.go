package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/replmap/replmap"
	"github.com/replmap/replmap/transport"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// cluster is a primary instance and the replica instances added to it,
// replicating over the in-memory transport and serving HTTP on httptest
// servers. Each replica has a listener of its own on the primary
// ("repl-NAME"), so that the test can stall one replica's link alone.
type cluster struct {
	t       *testing.T
	net     *transport.Inmem
	p       *replmap.Primary[string]
	primary *instance
	client  *http.Client
}

// instance is one instance's HTTP server.
type instance struct {
	url string
	svc *service
}

// newCluster starts a primary with opts, and its instance.
func newCluster(t *testing.T, opts ...replmap.Option) *cluster {
	t.Helper()
	tr := http.DefaultTransport.(*http.Transport).Clone()
	t.Cleanup(tr.CloseIdleConnections)
	p, err := replmap.NewPrimary[string](opts...)
	require.NoError(t, err)
	t.Cleanup(func() { p.Close() })
	c := &cluster{t: t, net: transport.NewInmem(), p: p, client: &http.Client{Transport: tr}}
	c.primary = c.serve(p, config{sessionTTL: time.Minute, waitTimeout: time.Second})
	return c
}

// serve starts an instance over n.
func (c *cluster) serve(n Node, cfg config) *instance {
	c.t.Helper()
	svc, err := newService(n, cfg)
	require.NoError(c.t, err)
	ts := httptest.NewServer(svc)
	c.t.Cleanup(func() {
		svc.close() // as http.Server.Shutdown does, through RegisterOnShutdown
		ts.Close()
	})
	return &instance{url: ts.URL, svc: svc}
}

// replica adds a synced replica instance with cfg, whose writes go to the
// primary instance unless noForward.
func (c *cluster) replica(name string, cfg config, noForward bool) (*instance, *replmap.Replica[string]) {
	c.t.Helper()
	addr := "repl-" + name
	l, err := c.net.Listen(addr)
	require.NoError(c.t, err)
	served := make(chan error, 1)
	go func() { served <- c.p.Serve(l) }()
	c.t.Cleanup(func() {
		l.Close()
		err := <-served
		if !errors.Is(err, replmap.ErrClosed) {
			assert.ErrorIs(c.t, err, net.ErrClosed)
		}
	})
	r, err := replmap.NewReplica[string](c.net, addr)
	require.NoError(c.t, err)
	c.t.Cleanup(func() { r.Close() })
	require.NoError(c.t, r.WaitSynced(context.Background()))
	if !noForward {
		cfg.primaryHTTP = c.primary.url
	}
	return c.serve(r, cfg), r
}

// do sends a request and returns the response, its body read and closed.
// hdr is header name, value pairs.
func (c *cluster) do(method, url, body string, hdr ...string) (*http.Response, string) {
	c.t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	require.NoError(c.t, err)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := c.client.Do(req)
	require.NoError(c.t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(c.t, err)
	return resp, string(b)
}

// token returns the offset token of a write's response.
func token(t *testing.T, resp *http.Response) string {
	t.Helper()
	tok := resp.Header.Get(offsetHeader)
	n, err := strconv.ParseUint(tok, 10, 64)
	require.NoError(t, err, "token %q", tok)
	require.Positive(t, n)
	return tok
}

// value is the value of a GET /kv/{key} response.
func value(t *testing.T, body string) string {
	t.Helper()
	var it item
	require.NoError(t, json.Unmarshal([]byte(body), &it), body)
	return it.Value
}

var defaultCfg = config{sessionTTL: time.Minute, waitTimeout: 5 * time.Second}

// TestReadYourWrites: a PUT sent to a replica is forwarded to the primary,
// and the token it returns makes a GET on another replica, whose link is
// held back, wait until it has the write.
func TestReadYourWrites(t *testing.T) {
	c := newCluster(t)
	r1, _ := c.replica("r1", defaultCfg, false)
	r2, _ := c.replica("r2", defaultCfg, false)

	c.net.Stall("repl-r2", transport.ToDialer, true)
	resp, body := c.do("PUT", r1.url+"/kv/theme", "dark")
	require.Equal(t, http.StatusNoContent, resp.StatusCode, body)
	tok := token(t, resp)
	v, ok := c.p.Get("theme")
	assert.True(t, ok, "the write reached the primary")
	assert.Equal(t, "dark", v)

	// Without the token, r2 answers from what it has: not the write yet.
	resp, _ = c.do("GET", r2.url+"/kv/theme", "")
	assert.Equal(t, http.StatusNotFound, resp.StatusCode)

	// With it, r2 waits for the write.
	type result struct {
		code int
		body string
	}
	got := make(chan result, 1)
	go func() {
		req, _ := http.NewRequest("GET", r2.url+"/kv/theme", nil)
		req.Header.Set(offsetHeader, tok)
		resp, err := c.client.Do(req)
		if err != nil {
			got <- result{body: err.Error()}
			return
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		got <- result{resp.StatusCode, string(b)}
	}()
	c.net.Stall("repl-r2", transport.ToDialer, false)
	res := <-got
	require.Equal(t, http.StatusOK, res.code, res.body)
	assert.Equal(t, "dark", value(t, res.body))

	// A DELETE through r2 is forwarded too; r1 sees it with its token.
	resp, body = c.do("DELETE", r2.url+"/kv/theme", "")
	require.Equal(t, http.StatusNoContent, resp.StatusCode, body)
	resp, _ = c.do("GET", r1.url+"/kv/theme", "", offsetHeader, token(t, resp))
	assert.Equal(t, http.StatusNotFound, resp.StatusCode)

	// A key with a TTL shows the time it has left.
	resp, body = c.do("PUT", r1.url+"/kv/cache/x?ttl=1m", "1")
	require.Equal(t, http.StatusNoContent, resp.StatusCode, body)
	resp, body = c.do("GET", r2.url+"/kv/cache/x", "", offsetHeader, token(t, resp))
	require.Equal(t, http.StatusOK, resp.StatusCode, body)
	ttl, err := time.ParseDuration(resp.Header.Get(ttlHeader))
	require.NoError(t, err)
	assert.True(t, ttl > 0 && ttl <= time.Minute, "ttl %v", ttl)
}

// TestWaitTimesOut: a replica that cannot reach the token's offset within
// its -wait answers 504.
func TestWaitTimesOut(t *testing.T) {
	c := newCluster(t)
	r, _ := c.replica("r", config{sessionTTL: time.Minute, waitTimeout: 20 * time.Millisecond}, false)
	c.net.Stall("repl-r", transport.ToDialer, true)
	defer c.net.Stall("repl-r", transport.ToDialer, false)
	resp, body := c.do("PUT", c.primary.url+"/kv/k", "v")
	require.Equal(t, http.StatusNoContent, resp.StatusCode, body)
	resp, body = c.do("GET", r.url+"/kv/k", "", offsetHeader, token(t, resp))
	assert.Equal(t, http.StatusGatewayTimeout, resp.StatusCode, body)
}

// TestBatchAndCAS: POST /kv writes many keys in one Update; POST /cas
// swaps only from the expected value.
func TestBatchAndCAS(t *testing.T) {
	c := newCluster(t)
	r1, _ := c.replica("r1", defaultCfg, false)
	r2, _ := c.replica("r2", defaultCfg, false)

	resp, body := c.do("PUT", c.primary.url+"/kv/c", "gone soon")
	require.Equal(t, http.StatusNoContent, resp.StatusCode, body)
	before := c.p.Offset()
	resp, body = c.do("POST", r1.url+"/kv", `{"a":"1","b":"2","c":null}`)
	require.Equal(t, http.StatusNoContent, resp.StatusCode, body)
	tok := token(t, resp)
	assert.Equal(t, strconv.FormatUint(c.p.Offset(), 10), tok, "one record, at the token's offset")
	assert.Greater(t, c.p.Offset(), before)
	for k, want := range map[string]string{"a": "1", "b": "2"} {
		resp, body := c.do("GET", r2.url+"/kv/"+k, "", offsetHeader, tok)
		require.Equal(t, http.StatusOK, resp.StatusCode, body)
		assert.Equal(t, want, value(t, body))
	}
	resp, _ = c.do("GET", r2.url+"/kv/c", "", offsetHeader, tok)
	assert.Equal(t, http.StatusNotFound, resp.StatusCode)

	cas := []struct {
		name, key, body string
		code            int
		current         any
	}{
		{"swap", "a", `{"old":"1","new":"10"}`, http.StatusNoContent, nil},
		{"stale old", "a", `{"old":"1","new":"11"}`, http.StatusConflict, "10"},
		{"create if absent", "n", `{"old":null,"new":"x"}`, http.StatusNoContent, nil},
		{"already there", "n", `{"new":"y"}`, http.StatusConflict, "x"},
		{"absent", "missing", `{"old":"x","new":"y"}`, http.StatusConflict, nil},
		{"delete", "n", `{"old":"x","new":null}`, http.StatusNoContent, nil},
	}
	for _, tc := range cas {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := c.do("POST", r2.url+"/cas/"+tc.key, tc.body)
			require.Equal(t, tc.code, resp.StatusCode, body)
			if tc.code == http.StatusConflict {
				var got struct{ Current any }
				require.NoError(t, json.Unmarshal([]byte(body), &got))
				assert.Equal(t, tc.current, got.Current)
			}
		})
	}
	resp, body = c.do("GET", r1.url+"/kv/a", "", offsetHeader, strconv.FormatUint(c.p.Offset(), 10))
	require.Equal(t, http.StatusOK, resp.StatusCode, body)
	assert.Equal(t, "10", value(t, body))
	_, ok := c.p.Get("n")
	assert.False(t, ok)
}

// TestSessions: a session created through a replica is readable on
// another one with its TTL, and is gone once it expires, on every
// instance, before and after the primary's deletion arrives.
func TestSessions(t *testing.T) {
	c := newCluster(t)
	r1, _ := c.replica("r1", defaultCfg, false)
	r2, rep2 := c.replica("r2", defaultCfg, false)

	create := func(ttl, data string) (session, string) {
		t.Helper()
		resp, body := c.do("POST", r1.url+"/sessions"+ttl, data)
		require.Equal(t, http.StatusCreated, resp.StatusCode, body)
		var s session
		require.NoError(t, json.Unmarshal([]byte(body), &s), body)
		require.NotEmpty(t, s.ID)
		assert.Equal(t, data, s.Data)
		return s, token(t, resp)
	}
	long, tok := create("", "alice")
	resp, body := c.do("GET", r2.url+"/sessions/"+long.ID, "", offsetHeader, tok)
	require.Equal(t, http.StatusOK, resp.StatusCode, body)
	var got session
	require.NoError(t, json.Unmarshal([]byte(body), &got))
	assert.Equal(t, long, got)
	ttl, err := time.ParseDuration(resp.Header.Get(ttlHeader))
	require.NoError(t, err)
	assert.True(t, ttl > 0 && ttl <= time.Minute, "the default session TTL, %v", ttl)

	short, tok := create("?ttl=50ms", "bob")
	require.NoError(t, rep2.WaitOffset(context.Background(), mustUint(t, tok)))
	for _, in := range []*instance{c.primary, r1, r2} {
		require.Eventually(t, func() bool {
			resp, _ := c.do("GET", in.url+"/sessions/"+short.ID, "")
			return resp.StatusCode == http.StatusNotFound
		}, 5*time.Second, 5*time.Millisecond)
	}
	// The primary deletes it and replicates the deletion.
	created := mustUint(t, tok)
	require.Eventually(t, func() bool { return c.p.Offset() > created && rep2.Offset() == c.p.Offset() }, 5*time.Second, 5*time.Millisecond)
	assert.Equal(t, 1, c.p.Len())
	resp, _ = c.do("GET", r2.url+"/sessions/"+long.ID, "")
	assert.Equal(t, http.StatusOK, resp.StatusCode)
}

func mustUint(t *testing.T, s string) uint64 {
	t.Helper()
	n, err := strconv.ParseUint(s, 10, 64)
	require.NoError(t, err)
	return n
}

// TestHealth reports each instance's role, offset and keys.
func TestHealth(t *testing.T) {
	c := newCluster(t)
	r, _ := c.replica("r", defaultCfg, false)
	resp, body := c.do("PUT", c.primary.url+"/kv/k", "v")
	require.Equal(t, http.StatusNoContent, resp.StatusCode, body)
	tok := mustUint(t, token(t, resp))
	for _, tc := range []struct {
		in   *instance
		role string
	}{{c.primary, "primary"}, {r, "replica"}} {
		require.Eventually(t, func() bool {
			resp, body := c.do("GET", tc.in.url+"/healthz", "")
			var h struct {
				Role   string
				Offset uint64
				Keys   int
				State  string
			}
			require.NoError(t, json.Unmarshal([]byte(body), &h))
			assert.Equal(t, http.StatusOK, resp.StatusCode)
			assert.Equal(t, tc.role, h.Role)
			if tc.role == "replica" {
				assert.Equal(t, string(replmap.StateStreaming), h.State)
			}
			return h.Offset == tok && h.Keys == 1
		}, 5*time.Second, 5*time.Millisecond)
	}
}

// TestBadRequests: what a client can get wrong, and a replica with
// nowhere to forward writes to.
func TestBadRequests(t *testing.T) {
	c := newCluster(t)
	r, _ := c.replica("r", defaultCfg, false)
	lone, _ := c.replica("lone", defaultCfg, true)
	for _, tc := range []struct {
		name, method, url, body string
		hdr                     []string
		code                    int
	}{
		{"negative ttl", "PUT", c.primary.url + "/kv/k?ttl=-1s", "v", nil, http.StatusBadRequest},
		{"bad ttl", "PUT", r.url + "/kv/k?ttl=soon", "v", nil, http.StatusBadRequest},
		{"bad batch", "POST", r.url + "/kv", `{"a":1}`, nil, http.StatusBadRequest},
		{"no batch", "POST", c.primary.url + "/kv", ``, nil, http.StatusBadRequest},
		{"bad cas", "POST", c.primary.url + "/cas/k", `[`, nil, http.StatusBadRequest},
		{"bad token", "GET", r.url + "/kv/k", "", []string{offsetHeader, "soon"}, http.StatusBadRequest},
		{"missing", "GET", r.url + "/kv/nothing", "", nil, http.StatusNotFound},
		{"no forwarding", "PUT", lone.url + "/kv/k", "v", nil, http.StatusServiceUnavailable},
		{"forwarded to a replica", "PUT", r.url + "/kv/k", "v", []string{forwardedHeader, "1"}, http.StatusServiceUnavailable},
		{"session too", "POST", lone.url + "/sessions", "", nil, http.StatusServiceUnavailable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := c.do(tc.method, tc.url, tc.body, tc.hdr...)
			assert.Equal(t, tc.code, resp.StatusCode, body)
			var e struct{ Error string }
			require.NoError(t, json.Unmarshal([]byte(body), &e), body)
			assert.NotEmpty(t, e.Error)
		})
	}
	assert.Zero(t, c.p.Len(), "nothing was written")
}

// TestRun runs the binary's run as a primary and a replica over TCP,
// writes through the replica, and stops both.
func TestRun(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	start := func(args ...string) (<-chan string, <-chan error) {
		pr, pw := io.Pipe()
		lines := make(chan string, 100)
		done := make(chan error, 1)
		go func() {
			err := run(ctx, args, pw)
			pw.Close()
			done <- err
		}()
		go func() {
			defer close(lines)
			sc := bufio.NewScanner(pr)
			for sc.Scan() {
				lines <- sc.Text()
			}
		}()
		return lines, done
	}
	addr := func(lines <-chan string, what string) string {
		for l := range lines {
			if strings.Contains(l, what) {
				return l[strings.LastIndex(l, " ")+1:]
			}
		}
		t.Fatalf("no %q line", what)
		return ""
	}
	plines, pdone := start("-http", "127.0.0.1:0", "-repl", "127.0.0.1:0")
	prepl := addr(plines, "replication on")
	phttp := addr(plines, "HTTP on")
	rlines, rdone := start("-http", "127.0.0.1:0", "-primary", prepl, "-primary-http", phttp, "-data", t.TempDir())
	rhttp := addr(rlines, "HTTP on")

	c := &cluster{t: t, client: &http.Client{Transport: http.DefaultTransport.(*http.Transport).Clone()}}
	defer c.client.CloseIdleConnections()
	resp, body := c.do("PUT", "http://"+rhttp+"/kv/k", "v")
	require.Equal(t, http.StatusNoContent, resp.StatusCode, body)
	resp, body = c.do("GET", "http://"+rhttp+"/kv/k", "", offsetHeader, token(t, resp))
	require.Equal(t, http.StatusOK, resp.StatusCode, body)
	assert.Equal(t, "v", value(t, body))

	cancel()
	require.NoError(t, <-pdone)
	require.NoError(t, <-rdone)
	assert.Equal(t, "service: primary stopped", addrLast(plines))
	assert.Equal(t, "service: replica stopped", addrLast(rlines))
}

// addrLast returns the last line of lines.
func addrLast(lines <-chan string) string {
	last := ""
	for l := range lines {
		last = l
	}
	return last
}

func TestFlags(t *testing.T) {
	var out strings.Builder
	require.ErrorIs(t, run(context.Background(), []string{"-h"}, &out), flag.ErrHelp)
	assert.Contains(t, out.String(), "-primary-http")
	for _, args := range [][]string{
		{"-wait", "0s"},
		{"-primary-http", "127.0.0.1:8080"},
		{"extra"},
	} {
		assert.Error(t, run(context.Background(), args, &out), args)
	}
}
