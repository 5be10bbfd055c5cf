// Package redistest gives tests a Redis to talk to: the real server named
// by TOKENKEEPER_TEST_REDIS_URL when it is set (CI sets it), or else an
// in-process miniredis whose key expiry follows the clock; and, for tests
// on fake time in a testing/synctest bubble, a miniredis reached over
// in-memory connections (NewPiped) with links a test can cut (Link).
package redistest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
)

// EnvURL names the variable that points the tests at a real Redis.
const EnvURL = "TOKENKEEPER_TEST_REDIS_URL"

// Server is a Redis that tests may use.
type Server struct {
	// Addr is host:port.
	Addr string
	// Options connect a client to it.
	Options *redis.Options
	// Mini is the in-process server, nil when a real server is used.
	Mini *miniredis.Miniredis
}

// Real reports whether the tests talk to a real redis-server.
func Real() bool { return os.Getenv(EnvURL) != "" }

// New returns the server the tests should use. Keys must be unique per
// test (see Name), since a real server is shared by every test.
func New(t testing.TB) *Server {
	t.Helper()
	if u := os.Getenv(EnvURL); u != "" {
		opt, err := redis.ParseURL(u)
		if err != nil {
			t.Fatalf("%s: %v", EnvURL, err)
		}
		c := redis.NewClient(opt)
		defer c.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := c.Ping(ctx).Err(); err != nil {
			t.Fatalf("%s=%s: %v", EnvURL, u, err)
		}
		return &Server{Addr: opt.Addr, Options: opt}
	}
	return NewMini(t)
}

// NewMini returns an in-process miniredis, closed when the test ends.
func NewMini(t testing.TB) *Server {
	t.Helper()
	m := miniredis.NewMiniRedis()
	m.ClockTTL(true)
	if err := m.Start(); err != nil {
		t.Fatalf("miniredis: %v", err)
	}
	t.Cleanup(m.Close)
	return &Server{Addr: m.Addr(), Options: &redis.Options{Addr: m.Addr()}, Mini: m}
}

// Client returns a new client of s, closed when the test ends.
func (s *Server) Client(t testing.TB) *redis.Client {
	t.Helper()
	return clientOf(t, s.Options)
}

// Name returns a name unique to this run, for keys of one test.
func Name(t testing.TB) string {
	t.Helper()
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	return "test-" + hex.EncodeToString(b[:])
}
