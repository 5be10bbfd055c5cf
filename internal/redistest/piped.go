package redistest

import (
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

// NewPiped returns an in-process miniredis that clients reach over
// in-memory connections (net.Pipe) instead of a port: the Redis of a test
// that runs in a testing/synctest bubble (testkit.Timeline), where a
// goroutine blocked on a socket would keep the bubble from ever settling.
// Its clients must be made inside the bubble, with Options (which carries
// the Dialer) or Client. Key expiry, TIME and PEXPIREAT follow the
// bubble's clock, and Mini.SetTime once it is called: a test on a fake
// clock calls Clock.OnAdvance(srv.Mini.SetTime). A real server's clock
// cannot be faked, so tests on fake time use this one whatever
// TOKENKEEPER_TEST_REDIS_URL says. Closed when the test ends.
func NewPiped(t testing.TB) *Server {
	t.Helper()
	m := miniredis.NewMiniRedis()
	m.ClockTTL(true)
	t.Cleanup(m.Close)
	opt := &redis.Options{
		// Never dialled. An IP, not a name: a client that looked a name up
		// would start the resolver inside the bubble, and the resolver is
		// shared by the whole process.
		Addr: "127.0.0.1:6379",
		Dialer: func(context.Context, string, string) (net.Conn, error) {
			return m.Dial()
		},
		// Nothing to negotiate with miniredis, and nothing to look up.
		MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled},
		// More connections than a test ever uses at once: a client that
		// waits for one takes a timer from a pool the whole process
		// shares, and a timer made in a bubble is fatal to use outside it.
		PoolSize: 64,
	}
	return &Server{Addr: opt.Addr, Options: opt, Mini: m}
}

// Link is a way to a piped server (NewPiped) that a test can break, as
// Proxy is for a server on a port: each replica of a test may have its
// own.
type Link struct {
	srv *Server

	mu      sync.Mutex
	state   linkState
	changed chan struct{}          // closed and replaced when state changes
	conns   map[*linkConn]struct{} // open connections

	writes atomic.Int64 // writes that went through
}

// Writes returns how many writes the link's clients sent through it: a
// command, or a pipeline of them, is one.
func (l *Link) Writes() int64 { return l.writes.Load() }

type linkState int

const (
	linkUp      linkState = iota
	linkCut               // a partition: traffic is dropped, nothing answers
	linkRefused           // the server is gone: connections closed, dials refused
)

// errRefused is what a refused link answers a dial.
var errRefused = errors.New("redistest: link refused: connection refused")

// NewLink returns a link to s, which must be piped (NewPiped).
func (s *Server) NewLink(t testing.TB) *Link {
	t.Helper()
	if s.Mini == nil || s.Options.Dialer == nil {
		t.Fatal("redistest: NewLink needs a piped server (NewPiped)")
	}
	return &Link{srv: s, changed: make(chan struct{}), conns: make(map[*linkConn]struct{})}
}

// Options returns client options that connect through l.
func (l *Link) Options() *redis.Options {
	opt := *l.srv.Options
	opt.Dialer = l.dial
	return &opt
}

// Client returns a new client that connects through l, tuned as Server's
// Client, closed when the test ends.
func (l *Link) Client(t testing.TB) *redis.Client {
	t.Helper()
	return clientOf(t, l.Options())
}

// Cut partitions the link, as a host that vanished or a network that drops
// packets: what clients send is lost, nothing comes back, and new
// connections are never made, so every command waits for its timeout (the
// client's read timeout, or its context). Restore heals it.
func (l *Link) Cut() { l.set(linkCut) }

// Refuse ends the link, as a server that died: open connections are
// closed and new ones refused, so commands fail at once. Restore heals it.
func (l *Link) Refuse() { l.set(linkRefused) }

// Restore lets traffic through again. Connections opened before a Cut may
// have lost data; the client notices and opens new ones.
func (l *Link) Restore() { l.set(linkUp) }

func (l *Link) set(s linkState) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.state = s
	close(l.changed)
	l.changed = make(chan struct{})
	if s == linkRefused {
		for c := range l.conns {
			c.Conn.Close()
		}
	}
}

func (l *Link) now() (linkState, <-chan struct{}) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.state, l.changed
}

func (l *Link) dial(ctx context.Context, _, _ string) (net.Conn, error) {
	for {
		state, changed := l.now()
		switch state {
		case linkRefused:
			return nil, errRefused
		case linkCut:
			// No answer to the handshake: wait for the dial's deadline.
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-changed:
				continue
			}
		}
		nc, err := l.srv.Mini.Dial()
		if err != nil {
			return nil, err
		}
		c := &linkConn{Conn: nc, l: l}
		l.mu.Lock()
		l.conns[c] = struct{}{}
		l.mu.Unlock()
		return c, nil
	}
}

// linkConn is a connection through a Link.
type linkConn struct {
	net.Conn
	l *Link
}

func (c *linkConn) Write(p []byte) (int, error) {
	if state, _ := c.l.now(); state == linkCut {
		return len(p), nil // lost on the way
	}
	c.l.writes.Add(1)
	return c.Conn.Write(p)
}

func (c *linkConn) Read(p []byte) (int, error) {
	for {
		n, err := c.Conn.Read(p)
		if state, _ := c.l.now(); err != nil || state != linkCut {
			return n, err
		}
		// Lost on the way: keep waiting, until the read deadline.
	}
}

func (c *linkConn) Close() error {
	c.l.mu.Lock()
	delete(c.l.conns, c)
	c.l.mu.Unlock()
	return c.Conn.Close()
}

// clientOf returns a client with opt, tuned as Server's Client: no
// retries, timeouts of a second. Closed when the test ends.
func clientOf(t testing.TB, opt *redis.Options) *redis.Client {
	t.Helper()
	o := *opt
	o.MaxRetries = -1
	o.DialTimeout = time.Second
	o.ReadTimeout = time.Second
	o.WriteTimeout = time.Second
	c := redis.NewClient(&o)
	t.Cleanup(func() { c.Close() })
	return c
}
