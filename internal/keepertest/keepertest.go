// Package keepertest runs a fleet of in-process replicas
// (tokenkeeper.Keeper) for tests, on one Redis and the fake RDP, with
// lifetimes compressed to seconds.
package keepertest

import (
	"context"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokenkeeper/tokenkeeper"
	"github.com/tokenkeeper/tokenkeeper/internal/fakerdp"
	"github.com/tokenkeeper/tokenkeeper/internal/redistest"
	"github.com/tokenkeeper/tokenkeeper/refresher"
	"github.com/tokenkeeper/tokenkeeper/upstream"
)

// The fleet's compressed timings: a token lives 20s and is refreshed 5s
// before it expires; the lock lives 1s.
const (
	Lifetime   = 20 * time.Second
	Margin     = 2 * time.Second
	Before     = 5 * time.Second
	LockTTL    = time.Second
	RDPTimeout = time.Second
)

// ReaderKey is the key every replica of a Fleet accepts.
const ReaderKey = "reader-key-5b9e2c7f1a3d8e4b6c0f"

// Fleet is a Redis and a fake RDP that replicas share.
type Fleet struct {
	Redis  *redistest.Server
	RDP    *fakerdp.Server
	RDPURL string
}

// New returns a fleet on srv, with a fake RDP closed when the test ends.
func New(t *testing.T, srv *redistest.Server) *Fleet {
	t.Helper()
	fake := fakerdp.New(fakerdp.Config{Knobs: fakerdp.Knobs{TokenLifetime: Lifetime}})
	rdp := httptest.NewServer(fake)
	t.Cleanup(rdp.Close)
	return &Fleet{Redis: srv, RDP: fake, RDPURL: rdp.URL}
}

// Start runs a replica called name until the test ends, when it checks
// that Run returned cleanly.
func (f *Fleet) Start(t *testing.T, name string) *tokenkeeper.Keeper {
	t.Helper()
	return f.StartWith(t, name, nil)
}

// StartWith is Start with adjust, when set, changing the replica's
// configuration first.
func (f *Fleet) StartWith(t *testing.T, name string, adjust func(*tokenkeeper.Config)) *tokenkeeper.Keeper {
	t.Helper()
	opt := *f.Redis.Options
	refresher.TuneRedis(&opt, LockTTL)
	rdb := redis.NewClient(&opt)
	t.Cleanup(func() { rdb.Close() })
	cfg := tokenkeeper.Config{
		Redis: rdb, Instance: name,
		RDP: &upstream.Config{BaseURL: f.RDPURL, ClientID: fakerdp.ClientID, ClientSecret: fakerdp.ClientSecret,
			DefaultLifetime: Lifetime, Timeout: RDPTimeout},
		ServeMargin: Margin, RefreshBefore: Before, LockTTL: LockTTL, PollInterval: 200 * time.Millisecond,
		HTTP: tokenkeeper.HTTPConfig{ReaderKeys: []string{ReaderKey}},
	}
	if adjust != nil {
		adjust(&cfg)
	}
	k, err := tokenkeeper.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	Run(t, name, k)
	return k
}

// Run runs k until the returned stop is called or the test ends, and then
// checks that Run returned cleanly; stop may be called more than once.
func Run(t *testing.T, name string, k *tokenkeeper.Keeper) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- k.Run(ctx) }()
	stop = sync.OnceFunc(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("%s: Run: %v", name, err)
		}
	})
	t.Cleanup(stop)
	return stop
}
