package tokenkeeper

import (
	"github.com/tokenkeeper/tokenkeeper/internal/tracing"
	"go.opentelemetry.io/otel/trace"

	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tokenkeeper/tokenkeeper/cache"
	"github.com/tokenkeeper/tokenkeeper/httpapi"
	"github.com/tokenkeeper/tokenkeeper/internal/device"
	"github.com/tokenkeeper/tokenkeeper/refresher"
	"github.com/tokenkeeper/tokenkeeper/upstream"
)

// Name is the name of the one token a Keeper keeps without a catalog
// (Config.Tokens): the liveness token.
const Name = "liveness"

// Keeper is one replica of a fleet that shares tokens through Redis: it
// serves each token of its catalog from memory, takes part in each
// token's election, and while it leads one fetches that token's next
// value before the current one expires. Create it with New, start it with
// Run, and mount Handler in an HTTP server (or call Serve). Its methods
// are safe for concurrent use.
type Keeper struct {
	cfg    Config
	log    *slog.Logger
	tokens []*kept
	byName map[string]*kept
	api    *httpapi.Server
	events *cache.Events         // every token's events, over one subscription (or one per shard)
	locks  *refresher.LockChecks // the elections' lock checks, pipelined; nil in Cluster mode
}

// kept is one token of the catalog as this replica keeps it.
type kept struct {
	cfg     TokenConfig
	store   *cache.Store
	ref     *refresher.Refresher
	devices *device.Minter // per-device tokens only: store holds the access token
}

// New validates cfg, reporting every problem at once, and returns a
// Keeper. It makes no call to Redis or the upstream.
func New(cfg Config) (*Keeper, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	k := &Keeper{cfg: cfg, log: cfg.Logger, byName: make(map[string]*kept, len(cfg.Tokens)),
		events: cache.NewEvents(cfg.Redis, cache.EventsConfig{Sharded: cfg.RedisMode == RedisCluster, Logger: cfg.Logger, Clock: cfg.Clock})}
	if cfg.RedisMode != RedisCluster {
		// In a Cluster a pipeline waits for its slowest shard: a dead
		// master would hold every token's check, not its own tokens'.
		k.locks = refresher.NewLockChecks(cfg.Redis, cfg.LockTTL)
	}
	served := make([]httpapi.Token, 0, len(cfg.Tokens))
	for _, tc := range cfg.Tokens {
		t, err := k.keep(tc)
		if err != nil {
			return nil, fmt.Errorf("tokenkeeper: token %s: %w", tc.Name, err)
		}
		k.tokens = append(k.tokens, t)
		k.byName[tc.Name] = t
		st := httpapi.Token{Name: tc.Name, Optional: tc.Optional, Source: t.store}
		if t.devices != nil {
			st.Devices = deviceMinter{t.devices}
		}
		served = append(served, st)
	}
	acfg := cfg.HTTP.apiConfig()
	acfg.Instance, acfg.Logger, acfg.Registerer, acfg.Gatherer, acfg.Clock = cfg.Instance, cfg.Logger, cfg.Registerer, cfg.Gatherer, cfg.Clock
	var err error
	acfg.TracerProvider = serverTracing(cfg.TracerProvider)
	if k.api, err = httpapi.New(acfg, served, controller{k}); err != nil {
		return nil, err
	}
	return k, nil
}

// keep builds the store and refresher of one token, on its own keys, with
// its metrics labelled with its name (token="liveness" without a catalog).
func (k *Keeper) keep(tc TokenConfig) (*kept, error) {
	cfg := k.cfg
	reg := cfg.Registerer
	if reg != nil {
		reg = prometheus.WrapRegistererWith(prometheus.Labels{"token": tc.Name}, reg)
	}
	log := cfg.Logger
	if !cfg.single {
		log = log.With("token", tc.Name)
	}
	keys := cache.KeysFor(tc.Name)
	var keyring *cache.Keyring
	if cfg.EncryptionKeys != "" {
		var err error
		if keyring, err = cache.ParseKeyring(cfg.EncryptionKeys); err != nil {
			return nil, err
		}
	}
	store, err := cache.New(cfg.Redis, cache.Config{
		Keys: keys, ServeMargin: tc.ServeMargin, PollInterval: cfg.PollInterval, RestPollInterval: cfg.RestPollInterval,
		Instance: cfg.Instance, Logger: log, Keyring: keyring, Registerer: reg,
		Events: k.events, Replication: cache.Replication(cfg.RedisWait), Clock: cfg.Clock,
		TracerProvider: cfg.TracerProvider,
	})
	if err != nil {
		return nil, err
	}
	src, err := source(tc, cfg, keys, log, reg)
	if err != nil {
		return nil, err
	}
	var minter *device.Minter
	if tc.PerDevice {
		client, ok := src.(*upstream.Client)
		if !ok {
			return nil, errors.New("per-device tokens need RDP, not a Source of their own")
		}
		src = accessSource{client}
		minter, err = device.New(cfg.Redis, device.Config{
			Keys: keys, ServeMargin: tc.ServeMargin, Access: store.Current, Mint: client.Mint,
			RenewAccess: func(ctx context.Context) error { _, err := k.Refresh(ctx, tc.Name); return err },
			Rate:        float64(tc.MintsPerMinute) / 60, PerDevice: tc.MintsPerDeviceHour,
			Logger: log, Registerer: reg, Clock: cfg.Clock, TracerProvider: cfg.TracerProvider,
		})
		if err != nil {
			return nil, err
		}
	}
	ref, err := refresher.New(refresher.Config{
		Instance: cfg.Instance, LockTTL: cfg.LockTTL, RefreshBefore: tc.RefreshBefore,
		RetryMin: cfg.RetryMin, RetryMax: cfg.RetryMax, Logger: log,
		HandoverAfter: cfg.HandoverAfter, HandoverCooldown: cfg.HandoverCooldown,
		Version: cfg.Version, Registerer: reg,
		Replication: cache.Replication(cfg.RedisWait), WatchMaster: cfg.RedisMode != RedisSingle,
		MasterAuthority: cfg.SentinelMaster, Clock: cfg.Clock, TracerProvider: cfg.TracerProvider,
		Leading: k.leading, LockChecks: k.locks,
	}, cfg.Redis, store, src)
	if err != nil {
		return nil, err
	}
	return &kept{cfg: tc, store: store, ref: ref, devices: minter}, nil
}

// source returns tc's Source: its own, or a client of its upstream with
// sign-ons capped fleet-wide, on cfg's Clock unless it has its own.
func source(tc TokenConfig, cfg Config, keys cache.Keys, log *slog.Logger, reg prometheus.Registerer) (refresher.Source, error) {
	if tc.Source != nil {
		return ownSource{tc.Source}, nil
	}
	budget, err := refresher.NewAuthBudget(cfg.Redis, keys.Auth, tc.AuthPerMinute)
	if err != nil {
		return nil, err
	}
	if tc.OAuth2 != nil {
		ocfg := *tc.OAuth2
		ocfg.BeforeAuth = budget.Take
		if ocfg.Logger == nil {
			ocfg.Logger = log
		}
		if ocfg.Registerer == nil {
			ocfg.Registerer = reg
		}
		if ocfg.Clock == nil {
			ocfg.Clock = cfg.Clock
		}
		if ocfg.TracerProvider == nil {
			ocfg.TracerProvider = cfg.TracerProvider
		}
		return upstream.NewOAuth2(ocfg)
	}
	ucfg := *tc.RDP
	ucfg.BeforeAuth = budget.Take
	if ucfg.Logger == nil {
		ucfg.Logger = log
	}
	if ucfg.Registerer == nil {
		ucfg.Registerer = reg
	}
	if ucfg.Clock == nil {
		ucfg.Clock = cfg.Clock
	}
	if ucfg.TracerProvider == nil {
		ucfg.TracerProvider = cfg.TracerProvider
	}
	return upstream.New(ucfg)
}

// Instance is the name of this replica.
func (k *Keeper) Instance() string { return k.cfg.Instance }

// Run keeps the tokens until ctx ends: it follows Redis, takes part in
// each token's election and refreshes the tokens it leads, and writes
// this replica's heartbeats. When ctx ends it releases the locks it held
// (another replica leads within milliseconds) and returns nil; it returns
// early with the error of a part that failed.
func (k *Keeper) Run(ctx context.Context) error {
	// The stores follow Redis until Run returns, so that the tokens stay
	// current while leadership is handed over.
	follow, stopFollowing := context.WithCancel(context.WithoutCancel(ctx))
	defer stopFollowing()
	var wg sync.WaitGroup
	errs := make(chan error, 1) // the first part's failure; later ones are dropped
	part := func(ctx context.Context, name string, f func(context.Context) error) {
		wg.Go(func() {
			if err := f(ctx); err != nil && !errors.Is(err, context.Canceled) {
				select {
				case errs <- fmt.Errorf("%s: %w", name, err):
				default:
				}
			}
		})
	}
	lead, stopLeading := context.WithCancel(ctx)
	defer stopLeading()
	part(lead, "Redis", k.checkCommands)
	if k.locks != nil {
		part(lead, "lock checks", k.locks.Run)
	}
	part(follow, "events", k.events.Run)
	part(follow, "sentinel", k.followSentinel)
	refs := make([]*refresher.Refresher, 0, len(k.tokens))
	for _, t := range k.tokens {
		prefix := ""
		if !k.cfg.single {
			prefix = t.cfg.Name + ": "
		}
		part(follow, prefix+"cache", t.store.Run)
		part(lead, prefix+"refresher", t.ref.Run)
		if t.devices != nil {
			part(follow, prefix+"devices", t.devices.Run)
		}
		refs = append(refs, t.ref)
	}
	part(lead, "heartbeat", func(ctx context.Context) error { return refresher.Heartbeats(ctx, refs) })
	part(lead, "beat", func(ctx context.Context) error {
		return refresher.Beat(ctx, k.cfg.Redis, cache.FleetKey, refresher.BeatConfig{
			Instance: k.cfg.Instance, Version: k.cfg.Version, Clock: k.cfg.Clock, Logger: k.cfg.Logger,
			Timeout: refresher.RedisTimeout(k.cfg.LockTTL), Leading: k.leading})
	})
	part(lead, "replica count", k.countReplicas)
	part(lead, "balance", k.balance)
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

// Names lists the tokens the Keeper keeps, in the catalog's order.
func (k *Keeper) Names() []string {
	out := make([]string, len(k.tokens))
	for i, t := range k.tokens {
		out[i] = t.cfg.Name
	}
	return out
}

// Current returns the named token if this replica may serve it now. It
// never touches Redis.
func (k *Keeper) Current(name string) (Token, bool) {
	t := k.byName[name]
	if t == nil {
		return Token{}, false
	}
	tok, ok := t.store.Current()
	return tokenOf(tok), ok
}

// Token returns the named token, waiting until this replica holds a
// servable one or ctx ends.
func (k *Keeper) Token(ctx context.Context, name string) (Token, error) {
	t := k.byName[name]
	if t == nil {
		return Token{}, fmt.Errorf("%w: %q", ErrUnknownToken, name)
	}
	sub := t.store.Subscribe()
	defer sub.Close()
	tick := k.cfg.Clock.NewTicker(k.cfg.PollInterval)
	defer tick.Stop()
	for {
		if tok, ok := t.store.Current(); ok {
			return tokenOf(tok), nil
		}
		select {
		case <-ctx.Done():
			return Token{}, ctx.Err()
		case <-sub.Ready():
			for _, ok := sub.Next(); ok; _, ok = sub.Next() {
			}
		case <-tick.C():
		}
	}
}

// Refresh asks the leader of the named token, whichever replica it is, to
// fetch a new one now and returns it once this replica holds it. See
// ErrNoLeader, ErrRefreshFailed and ErrUnavailable.
func (k *Keeper) Refresh(ctx context.Context, name string) (Token, error) {
	t := k.byName[name]
	if t == nil {
		return Token{}, fmt.Errorf("%w: %q", ErrUnknownToken, name)
	}
	tok, err := t.ref.Refresh(ctx)
	return tokenOf(tok), err
}

// DeviceToken returns the named per-device token's token for device: the
// one stored for it while it has more than the serve margin left, else a
// new one, minted once for the whole fleet with the shared access token.
// See ErrBadDevice, ErrMintBudget and ErrUnavailable.
func (k *Keeper) DeviceToken(ctx context.Context, name, dev string) (Token, error) {
	t := k.byName[name]
	if t == nil || t.devices == nil {
		return Token{}, fmt.Errorf("%w: %q is not a per-device token", ErrUnknownToken, name)
	}
	tok, err := t.devices.Token(ctx, dev)
	return tokenOf(tok), err
}

// Status reports the fleet as this replica sees it, token by token, in
// the catalog's order: the leader, every replica's heartbeat, the last
// refreshes. Without Redis it reports this replica's own view, and an
// error saying why.
func (k *Keeper) Status(ctx context.Context) ([]Status, error) {
	out := make([]Status, 0, len(k.tokens))
	var errs []error
	for _, t := range k.tokens {
		s, err := t.ref.Status(ctx)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", t.cfg.Name, err))
		}
		ts := statusOf(s)
		ts.Name, ts.Optional, ts.PerDevice = t.cfg.Name, t.cfg.Optional, t.devices != nil
		if t.devices != nil {
			if ts.Mints, ts.MintBudget, err = t.devices.MintsLastMinute(ctx); err != nil {
				errs = append(errs, fmt.Errorf("%s: mint count: %w", t.cfg.Name, err))
			}
		}
		out = append(out, ts)
	}
	return out, errors.Join(errs...)
}

// IsLeader reports whether this replica leads any token now.
func (k *Keeper) IsLeader() bool {
	for _, t := range k.tokens {
		if t.ref.IsLeader() {
			return true
		}
	}
	return false
}

// Leads reports whether this replica leads the named token now.
func (k *Keeper) Leads(name string) bool {
	t := k.byName[name]
	return t != nil && t.ref.IsLeader()
}

// Handler is the HTTP face: GET /v1/tokens, /v1/tokens/{name}, /healthz,
// /readyz, /metrics, and with admin keys /v1/status, /status and POST
// /v1/tokens/{name}/refresh. Mount it in any server or router.
func (k *Keeper) Handler() http.Handler { return k.api.Handler() }

// Serve serves Handler on ln with the limits a public listener needs
// (header, read and idle timeouts; JSON answers to malformed requests)
// until ctx ends, then finishes the requests in flight.
func (k *Keeper) Serve(ctx context.Context, ln net.Listener) error { return k.api.Serve(ctx, ln) }

// Drain makes /readyz answer 503 while requests are still served, so load
// balancers stop sending before the server stops.
func (k *Keeper) Drain() { k.api.Drain() }

// defaultInstance names a replica after its host and process.
func defaultInstance() string {
	host, _ := os.Hostname()
	return fmt.Sprintf("%s-%d", host, os.Getpid())
}

// serverTracing returns tp when it makes real spans, for the HTTP face's
// server spans, and nil otherwise: with tracing off the read path has no
// middleware at all.
func serverTracing(tp trace.TracerProvider) trace.TracerProvider {
	if tracing.Enabled(tp) {
		return tp
	}
	return nil
}
