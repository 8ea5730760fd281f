package main

import (
	"context"
	"io"
	"net"
	"sync"
	"time"
)

// proxy forwards TCP connections to an upstream address. cut closes every
// forwarded connection and holds new ones, accepted but not forwarded,
// until heal: the replica sees its link drop and redials at once, and the
// held dial goes through the moment the link heals.
type proxy struct {
	l        net.Listener
	upstream string

	mu     sync.Mutex
	isCut  bool
	conns  map[net.Conn]struct{}
	held   []net.Conn
	change chan struct{} // closed and replaced when held grows
	wg     sync.WaitGroup
}

func newProxy(upstream string) (*proxy, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &proxy{l: l, upstream: upstream, conns: make(map[net.Conn]struct{}), change: make(chan struct{})}
	p.wg.Go(p.accept)
	return p, nil
}

func (p *proxy) addr() string { return p.l.Addr().String() }

func (p *proxy) accept() {
	for {
		c, err := p.l.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		if p.isCut {
			p.held = append(p.held, c)
			close(p.change)
			p.change = make(chan struct{})
			p.mu.Unlock()
			continue
		}
		p.mu.Unlock()
		p.forward(c)
	}
}

func (p *proxy) forward(c net.Conn) {
	u, err := net.Dial("tcp", p.upstream)
	if err != nil {
		c.Close()
		return
	}
	p.mu.Lock()
	p.conns[c], p.conns[u] = struct{}{}, struct{}{}
	p.mu.Unlock()
	pipe := func(dst, src net.Conn) {
		io.Copy(dst, src)
		dst.Close()
		src.Close()
		p.mu.Lock()
		delete(p.conns, dst)
		delete(p.conns, src)
		p.mu.Unlock()
	}
	p.wg.Go(func() { pipe(u, c) })
	p.wg.Go(func() { pipe(c, u) })
}

// cut closes every forwarded connection and holds new ones.
func (p *proxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.isCut = true
	for c := range p.conns {
		c.Close()
	}
}

// heal waits until a connection is being held (the replica has redialled;
// Redis replicas redial from a once-a-second cron), then forwards it and
// every later one. It returns the time it let the held connections go.
func (p *proxy) heal(ctx context.Context) (time.Time, error) {
	if err := p.waitHeld(ctx); err != nil {
		return time.Time{}, err
	}
	p.mu.Lock()
	healed := time.Now()
	held := p.held
	p.held, p.isCut = nil, false
	p.mu.Unlock()
	for _, c := range held {
		p.forward(c)
	}
	return healed, nil
}

func (p *proxy) close() {
	p.l.Close()
	p.mu.Lock()
	for c := range p.conns {
		c.Close()
	}
	for _, c := range p.held {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

// waitHeld returns once a connection is being held.
func (p *proxy) waitHeld(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for {
		p.mu.Lock()
		held, change := len(p.held) > 0, p.change
		p.mu.Unlock()
		if held {
			return nil
		}
		select {
		case <-change:
		case <-ctx.Done():
			return context.Cause(ctx)
		}
	}
}
