package redistest

import (
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Proxy forwards TCP connections to a Redis and can cut them all, as a
// network partition would, then let new ones through again.
type Proxy struct {
	Addr string

	ln     net.Listener
	target string

	mu    sync.Mutex
	cut   bool
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup

	latency   atomic.Int64 // delay of what Redis sends, in nanoseconds
	upLatency atomic.Int64 // delay of what clients send, in nanoseconds
}

// SetRequestLatency delays every chunk forwarded from a client to Redis by
// d, as SetLatency does the answers: a command runs d after it was sent.
func (p *Proxy) SetRequestLatency(d time.Duration) { p.upLatency.Store(int64(max(d, 0))) }

// SetLatency delays every chunk forwarded from Redis to a client by d,
// counted from when the proxy read it, as a slow link would: a round trip
// takes d longer. Chunks keep their order and do not queue behind one
// another's delay. 0, the default, forwards at once.
func (p *Proxy) SetLatency(d time.Duration) { p.latency.Store(int64(max(d, 0))) }

// NewProxy starts a proxy to target on a loopback port, closed when the
// test ends.
func NewProxy(t testing.TB, target string) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("proxy: %v", err)
	}
	p := &Proxy{Addr: ln.Addr().String(), ln: ln, target: target, conns: make(map[net.Conn]struct{})}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.close)
	return p
}

// Cut drops every connection and refuses new ones until Restore.
func (p *Proxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = true
	for c := range p.conns {
		c.Close()
	}
}

// Restore lets connections through again.
func (p *Proxy) Restore() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = false
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		if p.cut {
			p.mu.Unlock()
			c.Close()
			continue
		}
		up, err := net.Dial("tcp", p.target)
		if err != nil {
			p.mu.Unlock()
			c.Close()
			continue
		}
		p.conns[c] = struct{}{}
		p.conns[up] = struct{}{}
		p.mu.Unlock()
		p.wg.Add(2)
		go p.pipe(c, up, &p.latency)
		go p.pipe(up, c, &p.upLatency)
	}
}

func (p *Proxy) pipe(dst, src net.Conn, latency *atomic.Int64) {
	defer p.wg.Done()
	p.delay(dst, src, latency)
	dst.Close()
	src.Close()
	p.mu.Lock()
	delete(p.conns, dst)
	delete(p.conns, src)
	p.mu.Unlock()
}

func (p *Proxy) close() {
	p.ln.Close()
	p.Cut()
	p.wg.Wait()
}

// chunk is data read from Redis, due to be forwarded at due.
type chunk struct {
	data []byte
	due  time.Time
}

// delay copies src to dst, holding each chunk for the latency in force
// when it was read.
func (p *Proxy) delay(dst, src net.Conn, latency *atomic.Int64) {
	ch := make(chan chunk, 1024)
	go func() {
		defer close(ch)
		for {
			buf := make([]byte, 32*1024)
			n, err := src.Read(buf)
			if n > 0 {
				ch <- chunk{buf[:n], time.Now().Add(time.Duration(latency.Load()))}
			}
			if err != nil {
				return
			}
		}
	}()
	for c := range ch {
		if d := time.Until(c.due); d > 0 {
			time.Sleep(d)
		}
		if _, err := dst.Write(c.data); err != nil {
			src.Close()
			for range ch { // let the reader finish
			}
			return
		}
	}
}
