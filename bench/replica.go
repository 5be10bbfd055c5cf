package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokenkeeper/tokenkeeper/cache"
	"github.com/tokenkeeper/tokenkeeper/httpapi"
	"github.com/tokenkeeper/tokenkeeper/refresher"
	"github.com/tokenkeeper/tokenkeeper/upstream"
)

// benchKey is the reader key every replica of the harness accepts.
const benchKey = "k7Qm2vX9pL4sN8rT1wY6zB3cF5hJ0dG2aE9uI4oP7xQ"

// benchToken is the token the constant source hands out: shaped like a
// JWT, the same one httpapi's BenchmarkTokenRead serves.
const benchToken = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJsaXZlbmVzcyJ9.c2lnbmF0dXJlLXNpZ25hdHVyZS1zaWduYXR1cmU"

// benchRateLimit is the per-key rate limit of the replicas under load: so
// high that wrk's one key is never refused, while the limiter still runs
// on every read as it does with the default limit.
const benchRateLimit = "1e9"

// replicaConfig configures an in-process replica. Zero durations take the
// tokenkeeper defaults.
type replicaConfig struct {
	Redis    *redis.Options
	Instance string
	// Source feeds the refresher; nil runs the replica without one (it
	// only follows the store, as a replica that never leads).
	Source                    refresher.Source
	LockTTL, RefreshBefore    time.Duration
	ServeMargin, PollInterval time.Duration
	RetryMin, RetryMax        time.Duration
	HTTP                      bool // serve the HTTP API on 127.0.0.1:0
	Log                       *slog.Logger
}

// replica is one tokenkeeper replica in the harness's process, wired as
// cmd/tokenkeeper's Program wires it: its own Redis client, a cache.Store,
// a refresher and the HTTP API.
type replica struct {
	rdb    *redis.Client
	store  *cache.Store
	ref    *refresher.Refresher
	api    *httpapi.Server
	ln     net.Listener
	cancel context.CancelFunc
	done   chan struct{}
}

// startReplica wires a replica and runs it until Stop.
func startReplica(cfg replicaConfig) (*replica, error) {
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	opt := *cfg.Redis
	opt.DialTimeout, opt.ReadTimeout, opt.WriteTimeout = 2*time.Second, time.Second, time.Second
	rdb := redis.NewClient(&opt)
	r := &replica{rdb: rdb, done: make(chan struct{})}
	fail := func(err error) (*replica, error) {
		rdb.Close()
		if r.ln != nil {
			r.ln.Close()
		}
		return nil, err
	}
	var err error
	r.store, err = cache.New(rdb, cache.Config{
		Keys: cache.KeysFor("liveness"), ServeMargin: cfg.ServeMargin, PollInterval: cfg.PollInterval,
		Instance: cfg.Instance, Logger: log,
	})
	if err != nil {
		return fail(err)
	}
	if cfg.Source != nil {
		r.ref, err = refresher.New(refresher.Config{
			Instance: cfg.Instance, LockTTL: cfg.LockTTL, RefreshBefore: cfg.RefreshBefore,
			RetryMin: cfg.RetryMin, RetryMax: cfg.RetryMax, Logger: log,
		}, rdb, r.store, cfg.Source)
		if err != nil {
			return fail(err)
		}
	}
	if cfg.HTTP {
		r.api, err = httpapi.New(httpapi.Config{Instance: cfg.Instance, ReaderKeys: []string{benchKey}, Logger: log}, r.store, nil)
		if err != nil {
			return fail(err)
		}
		if r.ln, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			return fail(err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	parts := 1
	finished := make(chan struct{}, 3)
	go func() { _ = r.store.Run(ctx); finished <- struct{}{} }()
	if r.ref != nil {
		parts++
		go func() { _ = r.ref.Run(ctx); finished <- struct{}{} }()
	}
	if r.api != nil {
		parts++
		go func() { _ = r.api.Serve(ctx, r.ln); finished <- struct{}{} }()
	}
	go func() {
		for range parts {
			<-finished
		}
		close(r.done)
	}()
	return r, nil
}

// URL is the replica's token URL; empty without HTTP.
func (r *replica) URL() string {
	if r.ln == nil {
		return ""
	}
	return "http://" + r.ln.Addr().String() + "/v1/tokens/liveness"
}

// Stop ends the replica (the leader releases its lock) and closes its
// client.
func (r *replica) Stop() {
	r.cancel()
	select {
	case <-r.done:
	case <-time.After(15 * time.Second):
	}
	r.rdb.Close()
}

// stopReplicas stops replicas in parallel.
func stopReplicas(rs []*replica) {
	done := make(chan struct{}, len(rs))
	for _, r := range rs {
		go func() { r.Stop(); done <- struct{}{} }()
	}
	for range rs {
		<-done
	}
}

// constSource hands out benchToken (or a numbered variant) with a fixed
// lifetime and counts its calls.
type constSource struct {
	lifetime time.Duration
	calls    atomic.Int64
}

func (s *constSource) Token(context.Context) (upstream.Token, error) {
	s.calls.Add(1)
	return upstream.Token{Value: benchToken, Lifetime: s.lifetime, Sent: time.Now()}, nil
}

// waitFor polls cond every step until it holds or d passes.
func waitFor(ctx context.Context, d, step time.Duration, what string, cond func() bool) error {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %v waiting for %s", d, what)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(step):
		}
	}
	return nil
}

// httpReady reports whether GET url answers 200.
func httpReady(client *http.Client, url string) bool {
	res, err := client.Get(url)
	if err != nil {
		return false
	}
	res.Body.Close()
	return res.StatusCode == http.StatusOK
}
