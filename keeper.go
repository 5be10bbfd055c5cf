package tokenkeeper

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokenkeeper/tokenkeeper/cache"
	"github.com/tokenkeeper/tokenkeeper/httpapi"
	"github.com/tokenkeeper/tokenkeeper/refresher"
	"github.com/tokenkeeper/tokenkeeper/upstream"
)

// Name is the name of the one token a Keeper keeps today: the liveness
// token. Current, Token and Refresh answer ErrUnknownToken for any other.
const Name = "liveness"

// Errors of the Keeper's methods. Check them with errors.Is.
var (
	// ErrUnknownToken means the name is not one the Keeper keeps.
	ErrUnknownToken = errors.New("tokenkeeper: unknown token")
	// ErrNoLeader means no replica leads at the moment (Refresh).
	ErrNoLeader = refresher.ErrNoLeader
	// ErrRefreshFailed means the leader tried and failed (Refresh).
	ErrRefreshFailed = refresher.ErrRefreshFailed
	// ErrUnavailable means Redis could not be reached (Refresh).
	ErrUnavailable = refresher.ErrUnavailable
)

// Token is a token as a replica holds it; Value is the credential.
type Token = cache.Token

// UpstreamToken is what a Source returns: the credential, its lifetime and
// when the request that obtained it was sent.
type UpstreamToken = upstream.Token

// Source fetches a new token from the upstream. The Keeper calls it from
// one replica of the fleet at a time (the leader), about once per token
// lifetime. An error that wraps an *upstream.Error says whether it is
// worth retrying; any other error is retried with backoff.
type Source interface {
	Token(ctx context.Context) (UpstreamToken, error)
}

// Redis is what a Keeper needs of a go-redis client: *redis.Client fits
// (redis.UniversalClient does too).
type Redis interface {
	redis.Scripter
	Get(ctx context.Context, key string) *redis.StringCmd
	PTTL(ctx context.Context, key string) *redis.DurationCmd
	HGet(ctx context.Context, key, field string) *redis.StringCmd
	Publish(ctx context.Context, channel string, message any) *redis.IntCmd
	Subscribe(ctx context.Context, channels ...string) *redis.PubSub
}

// Keeper is one replica of a fleet that shares one token through Redis:
// it serves the token from memory, takes part in the election, and while
// it leads fetches the next token before the current one expires. Create
// it with New, start it with Run, and mount Handler in an HTTP server (or
// call Serve). Its methods are safe for concurrent use.
type Keeper struct {
	cfg   Config
	log   *slog.Logger
	store *cache.Store
	ref   *refresher.Refresher
	api   *httpapi.Server
}

// New validates cfg, reporting every problem at once, and returns a
// Keeper. It makes no call to Redis or the upstream.
func New(cfg Config) (*Keeper, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	keys := cache.KeysFor(Name)
	store, err := cache.New(cfg.Redis, cache.Config{
		Keys: keys, ServeMargin: cfg.ServeMargin, PollInterval: cfg.PollInterval,
		Instance: cfg.Instance, Logger: cfg.Logger, Keyring: cfg.Keyring, Registerer: cfg.Registerer,
	})
	if err != nil {
		return nil, err
	}
	src := cfg.Source
	if src == nil {
		budget, err := refresher.NewAuthBudget(cfg.Redis, keys.Auth, cfg.AuthPerMinute)
		if err != nil {
			return nil, err
		}
		ucfg := *cfg.RDP
		ucfg.BeforeAuth = budget.Take
		if ucfg.Logger == nil {
			ucfg.Logger = cfg.Logger
		}
		if ucfg.Registerer == nil {
			ucfg.Registerer = cfg.Registerer
		}
		client, err := upstream.New(ucfg)
		if err != nil {
			return nil, err
		}
		src = client
	}
	ref, err := refresher.New(refresher.Config{
		Instance: cfg.Instance, LockTTL: cfg.LockTTL, RefreshBefore: cfg.RefreshBefore,
		RetryMin: cfg.RetryMin, RetryMax: cfg.RetryMax, Logger: cfg.Logger,
		HandoverAfter: cfg.HandoverAfter, HandoverCooldown: cfg.HandoverCooldown,
		Version: cfg.Version, Registerer: cfg.Registerer,
	}, cfg.Redis, store, src)
	if err != nil {
		return nil, err
	}
	k := &Keeper{cfg: cfg, log: cfg.Logger, store: store, ref: ref}
	h := cfg.HTTP
	k.api, err = httpapi.New(httpapi.Config{
		Instance: cfg.Instance, ReaderKeys: h.ReaderKeys, AdminKeys: h.AdminKeys, MetricsKeys: h.MetricsKeys,
		AllowAnonymous: h.AllowAnonymous, Logger: cfg.Logger, Registerer: cfg.Registerer, Gatherer: cfg.Gatherer,
		RateLimit: h.RateLimit, RateBurst: h.RateBurst,
	}, store, controller{k})
	if err != nil {
		return nil, err
	}
	return k, nil
}

// Instance is the name of this replica.
func (k *Keeper) Instance() string { return k.cfg.Instance }

// Run keeps the token until ctx ends: it follows Redis, takes part in the
// election and refreshes while leading, and writes this replica's
// heartbeat. When ctx ends it releases the lock if it held it (another
// replica leads within milliseconds) and returns nil; it returns early
// with the error of a part that failed.
func (k *Keeper) Run(ctx context.Context) error {
	// The store follows Redis until Run returns, so that the token stays
	// current while leadership is handed over.
	follow, stopFollowing := context.WithCancel(context.WithoutCancel(ctx))
	defer stopFollowing()
	var wg sync.WaitGroup
	errs := make(chan error, 3)
	part := func(ctx context.Context, name string, f func(context.Context) error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(ctx); err != nil && !errors.Is(err, context.Canceled) {
				errs <- fmt.Errorf("%s: %w", name, err)
			}
		}()
	}
	lead, stopLeading := context.WithCancel(ctx)
	defer stopLeading()
	part(follow, "cache", k.store.Run)
	part(lead, "refresher", k.ref.Run)
	part(lead, "heartbeat", k.ref.Heartbeat)
	var err error
	select {
	case <-ctx.Done():
	case err = <-errs:
	}
	stopLeading()
	stopFollowing()
	wg.Wait()
	return err
}

// Current returns the named token if this replica may serve it now. It
// never touches Redis.
func (k *Keeper) Current(name string) (Token, bool) {
	if name != Name {
		return Token{}, false
	}
	return k.store.Current()
}

// Token returns the named token, waiting until this replica holds a
// servable one or ctx ends.
func (k *Keeper) Token(ctx context.Context, name string) (Token, error) {
	if name != Name {
		return Token{}, fmt.Errorf("%w: %q", ErrUnknownToken, name)
	}
	sub := k.store.Subscribe()
	defer sub.Close()
	tick := time.NewTicker(k.cfg.PollInterval)
	defer tick.Stop()
	for {
		if t, ok := k.store.Current(); ok {
			return t, nil
		}
		select {
		case <-ctx.Done():
			return Token{}, ctx.Err()
		case <-sub.Ready():
			for _, ok := sub.Next(); ok; _, ok = sub.Next() {
			}
		case <-tick.C:
		}
	}
}

// Refresh asks the leader, whichever replica it is, to fetch a new token
// now and returns it once this replica holds it. See ErrNoLeader,
// ErrRefreshFailed and ErrUnavailable.
func (k *Keeper) Refresh(ctx context.Context, name string) (Token, error) {
	if name != Name {
		return Token{}, fmt.Errorf("%w: %q", ErrUnknownToken, name)
	}
	return k.ref.Refresh(ctx)
}

// Status is the fleet as this replica sees it. It never holds a token.
type Status = refresher.Status

// Status reports the fleet as this replica sees it: the leader, every
// replica's heartbeat, the last refreshes. Without Redis it reports this
// replica's own view, and an error saying why.
func (k *Keeper) Status(ctx context.Context) (Status, error) { return k.ref.Status(ctx) }

// IsLeader reports whether this replica leads now.
func (k *Keeper) IsLeader() bool { return k.ref.IsLeader() }

// Handler is the HTTP face: GET /v1/tokens/liveness, /healthz, /readyz,
// /metrics, and with admin keys /v1/status, /status and POST
// /v1/tokens/liveness/refresh. Mount it in any server or router.
func (k *Keeper) Handler() http.Handler { return k.api.Handler() }

// Serve serves Handler on ln with the limits a public listener needs
// (header, read and idle timeouts; JSON answers to malformed requests)
// until ctx ends, then finishes the requests in flight.
func (k *Keeper) Serve(ctx context.Context, ln net.Listener) error { return k.api.Serve(ctx, ln) }

// Drain makes /readyz answer 503 while requests are still served, so load
// balancers stop sending before the server stops.
func (k *Keeper) Drain() { k.api.Drain() }

// controller adapts the Keeper to the HTTP API's admin routes.
type controller struct{ k *Keeper }

func (c controller) Status(ctx context.Context) (httpapi.Status, error) {
	s, err := c.k.ref.Status(ctx)
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
	t, err := c.k.ref.Refresh(ctx)
	if errors.Is(err, refresher.ErrNoLeader) || errors.Is(err, refresher.ErrUnavailable) {
		return t, fmt.Errorf("%w: %w", httpapi.ErrUnavailable, err)
	}
	return t, err
}

// APIFleet turns the fleet as Redis records it (refresher.ReadFleet) into
// the shape GET /v1/status answers with.
func APIFleet(f refresher.Fleet) ([]httpapi.Replica, []httpapi.Refresh) {
	return apiReplicas(f.Replicas), apiRefreshes(f.Refreshes)
}

// apiReplicas turns the refresher's fleet view into the HTTP API's.
func apiReplicas(rs []refresher.Replica) []httpapi.Replica {
	out := make([]httpapi.Replica, 0, len(rs))
	for _, r := range rs {
		out = append(out, httpapi.Replica{
			Instance: r.Instance, Version: r.Version, Ready: r.Ready, Leader: r.Leader,
			TokenFingerprint: r.Fingerprint, ExpiresAt: r.ExpiresAt,
			LastEventAt: r.LastEvent, LastEvent: r.LastEventType, SeenAt: r.Seen, Problem: r.Problem,
			Upstream: r.Upstream, UpstreamError: r.UpstreamError,
		})
	}
	return out
}

// apiRefreshes turns the refresher's last attempts into the HTTP API's.
func apiRefreshes(as []refresher.Attempt) []httpapi.Refresh {
	out := make([]httpapi.Refresh, 0, len(as))
	for _, a := range as {
		out = append(out, httpapi.Refresh{
			At: a.At, By: a.By, Outcome: a.Outcome,
			DurationSeconds: a.Took.Seconds(), UpstreamSeconds: a.Upstream.Seconds(),
			TokenFingerprint: a.Fingerprint, ExpiresAt: a.ExpiresAt, Error: a.Error,
		})
	}
	return out
}

// defaultInstance names a replica after its host and process.
func defaultInstance() string {
	host, _ := os.Hostname()
	return fmt.Sprintf("%s-%d", host, os.Getpid())
}
