package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokenkeeper/tokenkeeper/cache"
	"github.com/tokenkeeper/tokenkeeper/httpapi"
	"github.com/tokenkeeper/tokenkeeper/refresher"
	"github.com/tokenkeeper/tokenkeeper/upstream"
)

// Program is one replica: the store, the refresher and the HTTP API wired
// together. Create it with NewProgram, start it with Run, and Close it.
type Program struct {
	cfg   Config
	log   *slog.Logger
	rdb   *redis.Client
	store *cache.Store
	ref   *refresher.Refresher
	api   *httpapi.Server
	ln    net.Listener
}

// NewProgram wires a replica and opens its listener, so Addr is known
// before Run. It makes no call to Redis or the upstream. A nil src means
// the RDP client configured by cfg.RDP.
func NewProgram(cfg Config, log *slog.Logger, src refresher.Source) (*Program, error) {
	opt := *cfg.Redis
	opt.DialTimeout = max(opt.DialTimeout, 2*time.Second)
	// A renewal may take a quarter of the lock TTL, so that it can be
	// retried before the lock expires; a URL's own timeouts win.
	if opt.ReadTimeout == 0 {
		opt.ReadTimeout = refresher.RedisTimeout(cfg.LockTTL)
	}
	if opt.WriteTimeout == 0 {
		opt.WriteTimeout = refresher.RedisTimeout(cfg.LockTTL)
	}
	rdb := redis.NewClient(&opt)
	p, err := newProgram(cfg, log, rdb, src)
	if err != nil {
		rdb.Close()
		return nil, err
	}
	return p, nil
}

func newProgram(cfg Config, log *slog.Logger, rdb *redis.Client, src refresher.Source) (*Program, error) {
	keys := cache.KeysFor("liveness")
	reg := newRegistry(cfg, rdb)
	store, err := cache.New(rdb, cache.Config{
		Keys: keys, ServeMargin: cfg.ServeMargin, PollInterval: cfg.PollInterval,
		Instance: cfg.Instance, Logger: log, Keyring: cfg.Keyring,
		Registerer: reg,
	})
	if err != nil {
		return nil, err
	}
	if src == nil {
		budget, err := refresher.NewAuthBudget(rdb, "tokenkeeper:{liveness}:auth", cfg.AuthPerMinute)
		if err != nil {
			return nil, err
		}
		ucfg := cfg.upstreamConfig()
		ucfg.BeforeAuth, ucfg.Logger = budget.Take, log
		ucfg.Registerer = reg
		client, err := upstream.New(ucfg)
		if err != nil {
			return nil, err
		}
		src = client
	}
	ref, err := refresher.New(refresher.Config{
		Instance: cfg.Instance, LockTTL: cfg.LockTTL, RefreshBefore: cfg.RefreshBefore,
		RetryMin: cfg.RetryMin, RetryMax: cfg.RetryMax, Logger: log,
		HandoverAfter: cfg.HandoverAfter, HandoverCooldown: cfg.HandoverCooldown,
		Version: buildVersion(), Registerer: reg,
	}, rdb, store, src)
	if err != nil {
		return nil, err
	}
	api, err := httpapi.New(httpapi.Config{
		Instance: cfg.Instance, ReaderKeys: cfg.APIKeys, AdminKeys: cfg.AdminKeys, MetricsKeys: cfg.MetricsKeys,
		AllowAnonymous: cfg.AllowAnonymous, Logger: log, Registerer: reg, Gatherer: reg,
		RateLimit: cfg.RateLimit, RateBurst: cfg.RateBurst,
	}, store, controller{ref})
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("TOKENKEEPER_LISTEN: %w", err)
	}
	return &Program{cfg: cfg, log: log, rdb: rdb, store: store, ref: ref, api: api, ln: ln}, nil
}

// Addr is the address the HTTP API listens on.
func (p *Program) Addr() string { return p.ln.Addr().String() }

// Run serves until ctx ends, then shuts down in order: the refresher
// releases the lock (so another replica leads at once) while the HTTP
// server finishes the requests in flight. It returns the first failure of
// a part, or nil after a clean stop.
func (p *Program) Run(ctx context.Context) error {
	// Leadership ends with ctx, so the lock is handed over at once; serving
	// goes on for the drain period with /readyz answering 503, so that load
	// balancers stop sending before the listener closes.
	lead, stopLeading := context.WithCancel(ctx)
	defer stopLeading()
	serve, stopServing := context.WithCancel(context.WithoutCancel(ctx))
	defer stopServing()
	p.log.Info("tokenkeeper starting", "instance", p.cfg.Instance, "listen", p.Addr(),
		"redis", p.cfg.Redis.Addr, "upstream", p.cfg.RDP.BaseURL)

	var wg sync.WaitGroup
	errs := make(chan error, 4)
	runPart := func(ctx context.Context, name string, f func(context.Context) error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(ctx); err != nil && !errors.Is(err, context.Canceled) {
				errs <- fmt.Errorf("%s: %w", name, err)
				stopLeading()
				stopServing()
			}
		}()
	}
	runPart(serve, "cache", p.store.Run)
	runPart(lead, "refresher", p.ref.Run)
	runPart(lead, "heartbeat", p.ref.Heartbeat)
	runPart(serve, "http", func(ctx context.Context) error { return p.api.Serve(ctx, p.ln) })

	select {
	case <-lead.Done():
	case <-serve.Done():
	}
	if serve.Err() == nil && p.cfg.ShutdownDrain > 0 {
		p.api.Drain()
		p.log.Info("draining: /readyz answers 503 while requests are still served", "for", p.cfg.ShutdownDrain)
		select {
		case <-time.After(p.cfg.ShutdownDrain):
		case <-serve.Done():
		}
	}
	stopServing()
	wg.Wait()
	close(errs)
	p.log.Info("tokenkeeper stopped", "instance", p.cfg.Instance)
	return <-errs
}

// Close releases what NewProgram opened. Call it after Run returns.
func (p *Program) Close() error {
	p.ln.Close()
	return p.rdb.Close()
}

// controller adapts the refresher to the HTTP API.
type controller struct{ ref *refresher.Refresher }

func (c controller) Status(ctx context.Context) (httpapi.Status, error) {
	s, err := c.ref.Status(ctx)
	out := httpapi.Status{
		Instance: s.Instance, Leader: s.Leader, IsLeader: s.IsLeader, Ready: s.Ready,
		TokenFingerprint: s.TokenFingerprint, ExpiresAt: s.ExpiresAt,
		LastRefresh: s.LastRefresh, NextRefresh: s.NextRefresh, LastError: s.LastError,
		Replicas: apiReplicas(s.Replicas), Refreshes: apiRefreshes(s.Refreshes),
	}
	if err != nil {
		// The replica's own view is still worth showing without Redis.
		out.LastError = err.Error()
	}
	return out, nil
}

func (c controller) Refresh(ctx context.Context) (cache.Token, error) {
	t, err := c.ref.Refresh(ctx)
	if errors.Is(err, refresher.ErrNoLeader) || errors.Is(err, refresher.ErrUnavailable) {
		return t, fmt.Errorf("%w: %w", httpapi.ErrUnavailable, err)
	}
	return t, err
}
