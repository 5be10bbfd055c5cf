package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"sync"
	"time"
)

// Proxy forwards every TCP connection it accepts to one target and holds
// back what the target sends by a delay drawn for each chunk from
// [Min, Max]. What the client sends goes through at once: a command reaches
// Redis on time and its answer (or a pub/sub message) arrives late, as when
// Redis answers slowly. Chunks keep their order, so a short delay drawn after
// a long one waits for it. With Min and Max zero (the start) nothing is held.
//
// Create it with New, start it with Run; SetLatency and Stats are safe to
// call at any time.
type Proxy struct {
	target string
	log    *slog.Logger

	mu      sync.Mutex // guards the fields below
	latency Latency
	stats   Stats
}

// Latency is the range the delay of each chunk is drawn from.
type Latency struct {
	Min time.Duration
	Max time.Duration
}

// Stats counts what the proxy did since it started.
type Stats struct {
	Conns   int           // connections accepted
	Chunks  int           // chunks the target sent
	Delayed int           // of which held back
	Longest time.Duration // longest delay drawn
}

// New returns a proxy to target (host:port), latency off.
func New(target string, log *slog.Logger) *Proxy {
	return &Proxy{target: target, log: log}
}

// SetLatency changes the delay of the chunks that arrive from now on.
func (p *Proxy) SetLatency(l Latency) error {
	if l.Min < 0 || l.Max < l.Min {
		return fmt.Errorf("latency: want 0 <= min (%v) <= max (%v)", l.Min, l.Max)
	}
	p.mu.Lock()
	p.latency = l
	p.mu.Unlock()
	p.log.Info("latency set", "min", l.Min, "max", l.Max)
	return nil
}

// Stats returns the counters and the latency now set.
func (p *Proxy) Stats() (Stats, Latency) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stats, p.latency
}

// draw counts a chunk and returns how long to hold it.
func (p *Proxy) draw() time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.stats.Chunks++
	l := p.latency
	d := l.Min
	if l.Max > l.Min {
		d += mrand.N(l.Max - l.Min + 1)
	}
	if d > 0 {
		p.stats.Delayed++
		p.stats.Longest = max(p.stats.Longest, d)
	}
	return d
}

// Run accepts connections on ln until ctx ends (it returns nil) or ln
// fails (it returns why), then closes ln and every connection and returns
// once all of them are done.
func (p *Proxy) Run(ctx context.Context, ln net.Listener) error {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		p.mu.Lock()
		p.stats.Conns++
		p.mu.Unlock()
		wg.Go(func() { p.serve(ctx, c) })
	}
}

// serve forwards one connection until either side closes it or ctx ends;
// then both are closed and chunks still held are dropped.
func (p *Proxy) serve(ctx context.Context, client net.Conn) {
	defer client.Close()
	var d net.Dialer
	up, err := d.DialContext(ctx, "tcp", p.target)
	if err != nil {
		p.log.Warn("dial target", "target", p.target, "error", err)
		return
	}
	defer up.Close()
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(cctx, func() { client.Close(); up.Close() })
	defer stop()

	var wg sync.WaitGroup
	wg.Go(func() {
		defer cancel()
		_, _ = io.Copy(up, client)
	})
	wg.Go(func() { p.hold(cctx, cancel, client, up) })
	wg.Wait()
}

// chunk is what the target sent in one read, and when to pass it on.
type chunk struct {
	b   []byte
	due time.Time
}

// hold copies src to dst, each chunk after its delay, in order, and calls
// done when it stops: src ended and what it held is sent, dst failed, or ctx
// ended. At most 64 chunks wait; when that many do, hold stops reading src
// until one is sent, so TCP slows the target down instead of the proxy
// buffering without bound.
func (p *Proxy) hold(ctx context.Context, done func(), dst io.Writer, src io.Reader) {
	q := make(chan chunk, 64)
	var wg sync.WaitGroup
	defer done()
	defer wg.Wait()
	wg.Go(func() {
		defer done()
		t := time.NewTimer(0)
		defer t.Stop()
		for c := range q {
			if d := time.Until(c.due); d > 0 {
				t.Reset(d)
				select {
				case <-ctx.Done():
					return
				case <-t.C:
				}
			}
			if _, err := dst.Write(c.b); err != nil {
				return
			}
		}
	})
	defer close(q)
	for {
		buf := make([]byte, 32<<10)
		n, err := src.Read(buf)
		if n > 0 {
			select {
			case q <- chunk{b: buf[:n], due: time.Now().Add(p.draw())}:
			case <-ctx.Done():
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// latencyJSON is the control API's body: durations as Go writes them.
type latencyJSON struct {
	Min string `json:"min"`
	Max string `json:"max"`
}

type statsJSON struct {
	latencyJSON
	Conns   int    `json:"conns"`
	Chunks  int    `json:"chunks"`
	Delayed int    `json:"delayed"`
	Longest string `json:"longest"`
}

// Handler is the control API:
//
//	GET /latency   {"min","max","conns","chunks","delayed","longest"}
//	PUT /latency   {"min":"150ms","max":"400ms"} sets the range ("0s" both: off)
//	               and answers as GET; 400 when the body is not a valid range
func (p *Proxy) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /latency", p.getLatency)
	mux.HandleFunc("PUT /latency", func(w http.ResponseWriter, r *http.Request) {
		var body latencyJSON
		if err := json.NewDecoder(io.LimitReader(r.Body, 1<<10)).Decode(&body); err != nil {
			http.Error(w, "body: "+err.Error(), http.StatusBadRequest)
			return
		}
		minD, err1 := time.ParseDuration(body.Min)
		maxD, err2 := time.ParseDuration(body.Max)
		if err := errors.Join(err1, err2); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		if err := p.SetLatency(Latency{Min: minD, Max: maxD}); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		p.getLatency(w, r)
	})
	return mux
}

func (p *Proxy) getLatency(w http.ResponseWriter, _ *http.Request) {
	s, l := p.Stats()
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(statsJSON{
		latencyJSON: latencyJSON{Min: l.Min.String(), Max: l.Max.String()},
		Conns:       s.Conns, Chunks: s.Chunks, Delayed: s.Delayed, Longest: s.Longest.String(),
	})
}
