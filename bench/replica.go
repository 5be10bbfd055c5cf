package main

import (
	"go.opentelemetry.io/otel/trace"

	"cmp"
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokenkeeper/tokenkeeper"
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
	// Source, or RDP, feeds a full replica (tokenkeeper.Keeper). With
	// neither, the replica is a store that only follows Redis: the
	// propagation figures measure cache.Store alone, with no election.
	Source                    tokenkeeper.Source
	RDP                       *upstream.Config
	LockTTL, RefreshBefore    time.Duration
	ServeMargin, PollInterval time.Duration
	RetryMin, RetryMax        time.Duration
	HTTP                      bool    // serve the HTTP API on 127.0.0.1:0
	RateLimit                 float64 // per key; 0: none
	Log                       *slog.Logger
	// TracerProvider, when set, traces the replica (figure 13).
	TracerProvider trace.TracerProvider
}

// traced returns cfg with an SDK TracerProvider (benchTracerProvider) when
// on is set.
func (cfg replicaConfig) traced(on bool) replicaConfig {
	if on {
		cfg.TracerProvider = benchTracerProvider()
	}
	return cfg
}

// replica is one tokenkeeper replica in the harness's process: a
// tokenkeeper.Keeper, or a follower's store alone.
type replica struct {
	rdb     *redis.Client
	keeper  *tokenkeeper.Keeper // nil for a store alone
	store   *cache.Store        // set for a store alone
	ln      net.Listener
	handler http.Handler // the HTTP face
	cancel  context.CancelFunc
	done    chan struct{}
}

// startReplica builds a replica and runs it until Stop.
func startReplica(cfg replicaConfig) (*replica, error) {
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	opt := *cfg.Redis
	opt.DialTimeout = 2 * time.Second
	refresher.TuneRedis(&opt, cmp.Or(cfg.LockTTL, 10*time.Second))
	rdb := redis.NewClient(&opt)
	r := &replica{rdb: rdb, done: make(chan struct{})}
	fail := func(err error) (*replica, error) {
		rdb.Close()
		if r.ln != nil {
			r.ln.Close()
		}
		return nil, err
	}
	var handler http.Handler
	var run func(context.Context) error
	if cfg.Source != nil || cfg.RDP != nil {
		k, err := tokenkeeper.New(tokenkeeper.Config{
			Redis: rdb, Source: cfg.Source, RDP: cfg.RDP, Instance: cfg.Instance,
			ServeMargin: cfg.ServeMargin, RefreshBefore: cfg.RefreshBefore, LockTTL: cfg.LockTTL, PollInterval: cfg.PollInterval,
			RetryMin: cfg.RetryMin, RetryMax: cfg.RetryMax, Logger: log,
			HTTP:           tokenkeeper.HTTPConfig{ReaderKeys: []string{benchKey}, RateLimit: cfg.RateLimit},
			TracerProvider: cfg.TracerProvider,
		})
		if err != nil {
			return fail(err)
		}
		r.keeper, handler, run = k, k.Handler(), k.Run
	} else {
		store, err := cache.New(rdb, cache.Config{
			Keys: cache.KeysFor(tokenkeeper.Name), ServeMargin: cfg.ServeMargin, PollInterval: cfg.PollInterval,
			Instance: cfg.Instance, Logger: log,
		})
		if err != nil {
			return fail(err)
		}
		api, err := httpapi.New(httpapi.Config{Instance: cfg.Instance, ReaderKeys: []string{benchKey}, Logger: log, RateLimit: cfg.RateLimit}, []httpapi.Token{{Name: tokenkeeper.Name, Source: store}}, nil)
		if err != nil {
			return fail(err)
		}
		r.store, handler, run = store, api.Handler(), store.Run
	}
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	parts := 1
	finished := make(chan struct{}, 2)
	go func() { _ = run(ctx); finished <- struct{}{} }()
	if cfg.HTTP {
		var err error
		if r.ln, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			cancel()
			return fail(err)
		}
		parts++
		srv := &http.Server{Handler: handler, ReadHeaderTimeout: 5 * time.Second}
		go func() {
			go func() { <-ctx.Done(); srv.Close() }()
			_ = srv.Serve(r.ln)
			finished <- struct{}{}
		}()
	}
	r.handler = handler
	go func() {
		for range parts {
			<-finished
		}
		close(r.done)
	}()
	return r, nil
}

// Current returns the token the replica serves.
func (r *replica) Current() (cache.Token, bool) {
	if r.keeper != nil {
		t, ok := r.keeper.Current(tokenkeeper.Name)
		return cache.Token{Value: t.Value, Deadline: t.Deadline, FetchedAt: t.FetchedAt, Writer: t.Writer, Generation: t.Generation}, ok
	}
	return r.store.Current()
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

func (s *constSource) Token(context.Context) (tokenkeeper.UpstreamToken, error) {
	s.calls.Add(1)
	return tokenkeeper.UpstreamToken{Value: benchToken, Lifetime: s.lifetime, Sent: time.Now()}, nil
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
