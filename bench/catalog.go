package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokenkeeper/tokenkeeper"
	"github.com/tokenkeeper/tokenkeeper/internal/fakerdp"
	"github.com/tokenkeeper/tokenkeeper/refresher"
	"github.com/tokenkeeper/tokenkeeper/upstream"
)

// catalogCalls is figure 9a for one fleet size: a catalog of two tokens,
// liveness (RDP) and partner (oauth2), from one fake upstream.
type catalogCalls struct {
	N                         int
	Lifetime                  time.Duration
	Seconds                   float64
	LivenessCalls, OAuthCalls int
}

// catalogRest is figure 9b for one catalog size: Redis commands at rest.
type catalogRest struct {
	N, Tokens  int
	Seconds    float64
	PerReplica float64 // commands per second per replica
	Mix        string
}

// catalogKeeper runs an in-process replica keeping tokens until ctx ends.
func catalogKeeper(ctx context.Context, rs *redisServer, name string, tokens []tokenkeeper.TokenConfig, lockTTL time.Duration) (func(), error) {
	_, stop, err := catalogKeeperOf(ctx, rs, name, tokens, lockTTL)
	return stop, err
}

// catalogKeeperOf is catalogKeeper that also returns the Keeper; tune,
// if given, adjusts the replica's Redis client options.
func catalogKeeperOf(ctx context.Context, rs *redisServer, name string, tokens []tokenkeeper.TokenConfig, lockTTL time.Duration, tune ...func(*redis.Options)) (*tokenkeeper.Keeper, func(), error) {
	opt := *rs.Options()
	refresher.TuneRedis(&opt, lockTTL)
	for _, f := range tune {
		f(&opt)
	}
	rdb := redis.NewClient(&opt)
	k, err := tokenkeeper.New(tokenkeeper.Config{
		Redis: rdb, Instance: name, Tokens: tokens, LockTTL: lockTTL,
		RetryMin: 200 * time.Millisecond, RetryMax: 2 * time.Second, Logger: slog.New(slog.DiscardHandler),
		HTTP: tokenkeeper.HTTPConfig{ReaderKeys: []string{benchKey}},
	})
	if err != nil {
		rdb.Close()
		return nil, nil, err
	}
	kctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { _ = k.Run(kctx); close(done) }()
	return k, func() { cancel(); <-done; rdb.Close() }, nil
}

// measureCatalogCalls runs n replicas keeping liveness and partner, each
// of the given lifetime, for d, and counts the upstream's calls of each.
func measureCatalogCalls(ctx context.Context, work string, n int, lifetime, d time.Duration) (*catalogCalls, error) {
	rs, err := startRedis(ctx, work, fmt.Sprintf("redis-catalog-%d", n))
	if err != nil {
		return nil, err
	}
	defer rs.Stop()
	fake := fakerdp.New(fakerdp.Config{Knobs: fakerdp.Knobs{TokenLifetime: lifetime}})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	fctx, stopFake := context.WithCancel(ctx)
	defer stopFake()
	go func() { _ = serveSame(fctx, ln, fake) }()
	base := "http://" + ln.Addr().String()
	tokens := []tokenkeeper.TokenConfig{
		{Name: "liveness", ServeMargin: lifetime / 6, RefreshBefore: lifetime / 3, RDP: &upstream.Config{
			BaseURL: base, ClientID: fakerdp.ClientID, ClientSecret: fakerdp.ClientSecret,
			DefaultLifetime: lifetime, Timeout: lifetime / 8,
		}},
		{Name: "partner", ServeMargin: lifetime / 6, RefreshBefore: lifetime / 3, OAuth2: &upstream.OAuth2Config{
			TokenURL: base + fakerdp.OAuth2TokenPath, ClientID: fakerdp.ClientID, ClientSecret: fakerdp.ClientSecret,
			Scopes: []string{"partner.read"}, DefaultLifetime: lifetime, Timeout: lifetime / 8,
		}},
	}
	var stops []func()
	defer func() {
		for _, stop := range stops {
			stop()
		}
	}()
	start := time.Now()
	for i := range n {
		stop, err := catalogKeeper(ctx, rs, fmt.Sprintf("replica-%d", i), tokens, 2*time.Second)
		if err != nil {
			return nil, err
		}
		stops = append(stops, stop)
	}
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-time.After(d - time.Since(start)):
	}
	secs := time.Since(start).Seconds()
	st := fake.Stats()
	return &catalogCalls{
		N: n, Lifetime: lifetime, Seconds: secs, LivenessCalls: st.LivenessCalls, OAuthCalls: st.OAuth2Calls,
	}, nil
}

// measureCatalogRest runs n replicas keeping t tokens fresh for an hour
// with the default timings (lock TTL 10s, poll 2s), and counts Redis
// commands over d once settle has passed.
func measureCatalogRest(ctx context.Context, work string, n, t int, settle, d time.Duration) (*catalogRest, error) {
	rs, err := startRedis(ctx, work, fmt.Sprintf("redis-catalog-rest-%d-%d", n, t))
	if err != nil {
		return nil, err
	}
	defer rs.Stop()
	var tokens []tokenkeeper.TokenConfig
	for i := range t {
		tokens = append(tokens, tokenkeeper.TokenConfig{Name: fmt.Sprintf("token-%d", i), Source: &constSource{lifetime: time.Hour}})
	}
	var stops []func()
	defer func() {
		for _, stop := range stops {
			stop()
		}
	}()
	for i := range n {
		stop, err := catalogKeeper(ctx, rs, fmt.Sprintf("replica-%d", i), tokens, 10*time.Second)
		if err != nil {
			return nil, err
		}
		stops = append(stops, stop)
	}
	time.Sleep(settle)
	before, err := rs.Commands(ctx)
	if err != nil {
		return nil, err
	}
	t0 := time.Now()
	time.Sleep(d)
	after, err := rs.Commands(ctx)
	if err != nil {
		return nil, err
	}
	secs := time.Since(t0).Seconds()
	delta := after.Sub(before)
	return &catalogRest{N: n, Tokens: t, Seconds: secs, PerReplica: float64(delta.Total()) / float64(n) / secs, Mix: delta.String()}, nil
}
