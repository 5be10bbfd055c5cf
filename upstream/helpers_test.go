package upstream_test

import (
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/tokenkeeper/tokenkeeper/upstream"
)

// t0 is where every test clock starts.
var t0 = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

// clock is a hand-moved clock shared by a Fake and a Client.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func newClock() *clock { return &clock{now: t0} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// rdp is a Fake behind an httptest server, with routes that may replace
// some of the Fake's.
type rdp struct {
	fake  *upstream.Fake
	srv   *httptest.Server
	clock *clock
}

func newRDP(t *testing.T, cfg upstream.FakeConfig, routes map[string]http.HandlerFunc) *rdp {
	t.Helper()
	r := &rdp{clock: newClock()}
	if cfg.Now == nil {
		cfg.Now = r.clock.Now
	}
	r.fake = upstream.NewFake(cfg)
	mux := http.NewServeMux()
	mux.Handle("/", r.fake)
	for path, h := range routes {
		mux.HandleFunc(path, h)
	}
	r.srv = httptest.NewServer(mux)
	t.Cleanup(r.srv.Close)
	return r
}

// client returns a Client for r; cfg's zero credentials become the Fake's
// defaults for cfg.Auth.
func (r *rdp) client(t *testing.T, cfg upstream.Config) *upstream.Client {
	t.Helper()
	cfg.BaseURL = r.srv.URL
	if cfg.ClientID == "" {
		cfg.ClientID = upstream.FakeClientID
	}
	if cfg.Auth == "v1" {
		if cfg.Username == "" {
			cfg.Username = upstream.FakeUsername
		}
		if cfg.Password == "" {
			cfg.Password = upstream.FakePassword
		}
	} else if cfg.ClientSecret == "" {
		cfg.ClientSecret = upstream.FakeClientSecret
	}
	if cfg.Now == nil {
		cfg.Now = r.clock.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	c, err := upstream.New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return c
}
