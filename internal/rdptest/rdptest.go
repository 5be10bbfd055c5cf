// Package rdptest runs the fake RDP (fakerdp) behind an httptest server for
// tests, on a fake clock shared with the upstream client it hands out.
package rdptest

import (
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/tokenkeeper/tokenkeeper/internal/clocktest"
	"github.com/tokenkeeper/tokenkeeper/internal/fakerdp"
	"github.com/tokenkeeper/tokenkeeper/upstream"
)

// T0 is where every test clock starts.
var T0 = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

// RDP is a fake RDP behind an httptest server, with routes that may
// replace some of the fake's.
type RDP struct {
	Fake  *fakerdp.Server
	Srv   *httptest.Server
	Clock *clocktest.Fake
}

// New starts a fake RDP, closed when the test ends. Its clock is Clock
// unless cfg sets one.
func New(t *testing.T, cfg fakerdp.Config, routes map[string]http.HandlerFunc) *RDP {
	t.Helper()
	r := &RDP{Clock: clocktest.New(T0)}
	if cfg.Clock == nil {
		cfg.Clock = r.Clock
	}
	r.Fake = fakerdp.New(cfg)
	mux := http.NewServeMux()
	mux.Handle("/", r.Fake)
	for path, h := range routes {
		mux.HandleFunc(path, h)
	}
	r.Srv = httptest.NewServer(mux)
	t.Cleanup(r.Srv.Close)
	return r
}

// Client returns an upstream client of r on r's clock; cfg's zero
// credentials become the fake's defaults for cfg.Auth.
func (r *RDP) Client(t *testing.T, cfg upstream.Config) *upstream.Client {
	t.Helper()
	cfg.BaseURL = r.Srv.URL
	if cfg.ClientID == "" {
		cfg.ClientID = fakerdp.ClientID
	}
	if cfg.Auth == upstream.AuthV1 {
		if cfg.Username == "" {
			cfg.Username = fakerdp.Username
		}
		if cfg.Password == "" {
			cfg.Password = fakerdp.Password
		}
	} else if cfg.ClientSecret == "" {
		cfg.ClientSecret = fakerdp.ClientSecret
	}
	if cfg.Clock == nil {
		cfg.Clock = r.Clock
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	c, err := upstream.New(cfg)
	if err != nil {
		t.Fatalf("upstream.New: %v", err)
	}
	return c
}
