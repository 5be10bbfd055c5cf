package tokenkeeper

import (
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/trace"

	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tokenkeeper/tokenkeeper/cache"
	"github.com/tokenkeeper/tokenkeeper/clock"
	"github.com/tokenkeeper/tokenkeeper/httpapi"
	"github.com/tokenkeeper/tokenkeeper/internal/catalog"
	"github.com/tokenkeeper/tokenkeeper/upstream"
)

// Config configures a Keeper. Redis and one of Source or RDP are required;
// every other zero value takes the default documented on its field. Field
// names are what New's errors name (a command line maps them to its
// variables).
type Config struct {
	// Redis is the client every replica of the fleet shares a server
	// with. Required. New checks the timeouts of a go-redis client
	// (*redis.Client, failover or not, and *redis.ClusterClient): its
	// read and write timeouts must not exceed
	// half of LockTTL, so that a lock renewal as slow as that still lands
	// within the lease, unless it honours context deadlines
	// (ContextTimeoutEnabled): the Keeper bounds its lock commands by
	// context deadlines.
	// go-redis's defaults pass with the default LockTTL. The Keeper never
	// closes it.
	Redis Redis
	// RedisMode says what Redis stands behind the client: RedisSingle (one
	// server), RedisSentinel (a failover client following Sentinel) or
	// RedisCluster (a cluster client). With Sentinel or Cluster a leader
	// steps down at once when a failover replaces the master holding its
	// lock; with Cluster the events use sharded pub/sub, so they stay on
	// the shard of each token's slot. Default: RedisSingle.
	RedisMode RedisMode
	// RedisWait, when it names replicas, makes a new leader and every
	// token write wait until that many Redis replicas hold the write
	// (WAIT), so that a replica promoted by a failover has them. A short
	// wait is logged and counted, not fatal. Default: no wait.
	RedisWait RedisWait
	// SentinelMaster, with RedisSentinel, returns the run id of the master
	// Sentinel names now (the runid of SENTINEL MASTER): a replica leads
	// only on that server, so that after a partition heals the old
	// master's side stops leading before Sentinel demotes it. An error or
	// "" decides nothing. Default: none (the run id check alone).
	SentinelMaster func(ctx context.Context) (string, error)
	// Tokens is the catalog: the tokens the fleet keeps, each with its own
	// source, lock, leader and timings. Empty: the fleet keeps one token,
	// Name ("liveness"), from Source or RDP with the timings below, which
	// are also the defaults of every token's zero timings.
	Tokens []TokenConfig

	// Source fetches new tokens. Without Tokens, either Source or RDP is
	// required.
	Source Source
	// RDP configures the RDP liveness client as the Source, with sign-ons
	// capped fleet-wide at AuthPerMinute. Ignored when Source is set.
	RDP *upstream.Config
	// AuthPerMinute caps RDP sign-ons across the fleet. Default: 20.
	AuthPerMinute int

	// Instance names this replica in logs, the lock and the fleet view.
	// Default: hostname-pid.
	Instance string
	// Version names the build in this replica's heartbeat and, with
	// Commit (its revision) and the Go version, in GET /v1/status.
	// Default: "dev".
	Version, Commit string

	// ServeMargin: a token is not served within this of its expiry, and a
	// fetched token with less left is refused. Default: 1m.
	ServeMargin time.Duration
	// RefreshBefore is the advisory window: the leader refreshes when this
	// much of the token's life remains. Default: 15m.
	RefreshBefore time.Duration
	// LockTTL is the leader lock's time to live. Default: 10s; at least 300ms.
	LockTTL time.Duration
	// PollInterval bounds how long a replica can miss a new token whose
	// event was lost: every token written is served by every replica
	// within PollInterval and a round trip. A replica PINGs its events
	// connection every 5/8 of it; while those PINGs are answered no event
	// can be lost and it polls every RestPollInterval, otherwise every
	// PollInterval. Default: 2s.
	PollInterval time.Duration
	// RestPollInterval is how often a replica reads Redis while its
	// events connection is proven alive: insurance against what no PING
	// shows (a key evicted or flushed). Default: 5m; never shorter than
	// PollInterval.
	RestPollInterval time.Duration
	// RetryMin and RetryMax bound the backoff after a failed refresh.
	// Defaults: 1s and 60s.
	RetryMin, RetryMax time.Duration
	// HandoverAfter and HandoverCooldown are the leadership policy: see
	// refresher.Config. Defaults: 3 and 1m.
	HandoverAfter    int
	HandoverCooldown time.Duration

	// EncryptionKeys, when set, seal the tokens at rest in Redis with
	// AES-256-GCM: "id:base64,id:base64,..." (32-byte keys, standard or
	// URL base64). The first key seals; every key opens what it sealed,
	// so a key rotates by adding the new one first on every replica, then
	// dropping the old one once the tokens were refreshed. New's errors
	// never quote a key. Default: stored in clear.
	EncryptionKeys string
	// HTTP configures Handler.
	HTTP HTTPConfig

	// Clock is the time this replica runs on: every date it takes (a
	// token's deadline, a lease's end, the status page's times) and every
	// timer and ticker of its loops (election, renewals, refreshes, polls,
	// heartbeats, the replica count, the audit minutes). Tokens are still
	// dated from Redis's clock and the upstream's answers; the Clock only
	// measures time on this replica. Timeouts of single Redis and HTTP
	// calls stay on Go's own timers. A Clock's readings should carry Go's
	// monotonic clock, as clock.Real's do. Default: clock.Real().
	Clock clock.Clock

	// Logger receives the Keeper's logs. Default: slog.Default().
	Logger *slog.Logger
	// Registerer receives the Keeper's metrics (tokenkeeper_*), and
	// Gatherer is what GET /metrics serves. Default: none kept, and
	// /metrics serves the HTTP face's own with the Go collectors.
	Registerer prometheus.Registerer
	Gatherer   prometheus.Gatherer
	// TracerProvider receives the Keeper's OpenTelemetry spans: each
	// election won and refresh attempt, with its upstream calls, its
	// fenced write and WAIT; each adoption of a token by a replica, in the
	// trace of the write; each refresh request and device mint. When it
	// makes real spans (an SDK's, whatever its sampler), every HTTP request
	// also gets a server span; otherwise, the read path has nothing added.
	// Spans hold names, counts, outcomes and fingerprints, never a token,
	// key, secret or device id. Default: the global one
	// (otel.GetTracerProvider) as it is when New runs.
	TracerProvider trace.TracerProvider

	// single is set by applyDefaults when Tokens was empty: the catalog is
	// the one token of the fields above, and errors name those fields.
	single bool
}

// RedisMode is the Redis topology behind Config.Redis.
type RedisMode string

// Redis topologies.
const (
	RedisSingle   RedisMode = "single"
	RedisSentinel RedisMode = "sentinel"
	RedisCluster  RedisMode = "cluster"
)

// RedisWait is how many Redis replicas a leader waits for after it is
// elected and after each token write, and for how long at most.
type RedisWait struct {
	// Replicas is how many replicas must acknowledge. Zero: no wait.
	Replicas int
	// Timeout bounds each wait. Default: 100ms.
	Timeout time.Duration
}

// TokenConfig is one token of the catalog (Config.Tokens).
type TokenConfig struct {
	// Name is the token's name in the routes and its Redis keys:
	// [a-z0-9][a-z0-9-]{0,39}, unique.
	Name string
	// Source fetches it; or RDP configures the RDP client, or OAuth2 a
	// client-credentials client of any OAuth2 token endpoint, as its
	// Source, with sign-ons capped fleet-wide at AuthPerMinute. One of
	// them is required.
	Source Source
	RDP    *upstream.Config
	OAuth2 *upstream.OAuth2Config
	// Optional tokens do not hold back readiness (GET /readyz).
	Optional bool
	// PerDevice, for an RDP token, keeps the RDP access token for the fleet
	// instead of one liveness token, and mints a liveness token per device
	// with it (Keeper.DeviceToken, GET /v1/tokens/{name}/devices/{device}).
	// The access token itself is never served.
	PerDevice bool
	// MintsPerMinute caps the per-device tokens the fleet mints a minute
	// (0: no cap), and MintsPerDeviceHour those one device causes an hour
	// (0: no cap). Past either, the device gets 429 with Retry-After.
	MintsPerMinute, MintsPerDeviceHour int
	// ServeMargin, RefreshBefore and AuthPerMinute are as Config's, which
	// are the defaults of a zero value.
	ServeMargin, RefreshBefore time.Duration
	AuthPerMinute              int
}

// HTTPConfig configures the HTTP face.
type HTTPConfig struct {
	// ReaderKeys may read the token; AdminKeys may also read the status
	// and ask for a refresh (without them the admin routes do not exist);
	// MetricsKeys, when set, guard /metrics.
	ReaderKeys, AdminKeys, MetricsKeys []string
	// Keys are further keys, each with a role and the tokens it may use.
	Keys []Key
	// AllowAnonymous lets requests without a key read the tokens. Without
	// it, ReaderKeys (or Keys, or Security.Identities, of role reader) are
	// required: admin keys read too, but do not open the read route alone.
	AllowAnonymous bool
	// AllowWeakKeys accepts reader and admin keys too weak to resist
	// guessing (less than 128 bits of estimated randomness); without it
	// they are refused.
	// For demos and tests only.
	AllowWeakKeys bool
	// RateLimit, when positive, is how many requests per second each key
	// may make to this replica, with bursts of RateBurst (default twice
	// the rate).
	RateLimit float64
	RateBurst int
	// Security holds client certificate identities, trusted proxies, the
	// throttling of failed authentication, the audit trail and a
	// fleet-wide rate limit per key, whose share the Keeper keeps current
	// from the fleet view.
	Security Security
}

// Defaults of Config, as its fields document them: the one place they
// are set, for the building blocks are always given every value.
const (
	// A token's own defaults are the catalog file's: one value whether
	// the token comes from a file or from a Config.
	defaultServeMargin   = catalog.DefaultServeMargin
	defaultRefreshBefore = catalog.DefaultRefreshBefore
	defaultAuthPerMinute = catalog.DefaultAuthPerMinute

	defaultLockTTL          = 10 * time.Second
	defaultPollInterval     = 2 * time.Second
	defaultRetryMin         = time.Second
	defaultRetryMax         = time.Minute
	defaultHandoverAfter    = 3
	defaultHandoverCooldown = time.Minute
)

// Limits on Config's timings.
const (
	// minLockTTL: a renewal gets half of the TTL, a round trip to Redis
	// and a retry included.
	minLockTTL = 300 * time.Millisecond
	// minPollInterval keeps the catch-up reads from loading Redis.
	minPollInterval = 10 * time.Millisecond
)

// FieldError is one problem of a Config, naming the field it concerns
// (for example "ServeMargin" or "RDP.Timeout"). Problem may name other
// fields the same way. A command line maps the names to its own.
type FieldError struct {
	Field   string
	Problem string
}

func (e *FieldError) Error() string { return "tokenkeeper: " + e.Field + ": " + e.Problem }

// Validate reports every problem of c's values at once, each a
// *FieldError, after filling in the defaults as New does. It does not ask
// for Redis or a Source, which only New needs, so a configuration can be
// checked before anything is connected.
func (c Config) Validate() error {
	c.applyDefaults()
	return errors.Join(c.check(false)...)
}

// WithDefaults returns c with the default of every field it leaves
// unset, as New takes it: what a command line shows as its defaults.
func (c Config) WithDefaults() Config {
	c.applyDefaults()
	return c
}

// setDefaults fills in the defaults and returns every problem of cfg at
// once, each naming its field.
func (c *Config) setDefaults() error {
	c.applyDefaults()
	errs := c.check(true)
	if c.Redis == nil {
		errs = append(errs, &FieldError{"Redis", "is required"})
	} else if err := checkRedisTimeouts(c.Redis, c.LockTTL); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func (c *Config) applyDefaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&c.ServeMargin, defaultServeMargin)
	def(&c.RefreshBefore, defaultRefreshBefore)
	def(&c.LockTTL, defaultLockTTL)
	def(&c.PollInterval, defaultPollInterval)
	def(&c.RestPollInterval, cache.DefaultRestPollInterval)
	def(&c.RetryMin, defaultRetryMin)
	def(&c.RetryMax, defaultRetryMax)
	def(&c.HandoverCooldown, defaultHandoverCooldown)
	if c.HandoverAfter == 0 {
		c.HandoverAfter = defaultHandoverAfter
	}
	if c.AuthPerMinute == 0 {
		c.AuthPerMinute = defaultAuthPerMinute
	}
	if c.Instance == "" {
		c.Instance = defaultInstance()
	}
	if c.RedisMode == "" {
		c.RedisMode = RedisSingle
	}
	if c.RedisWait.Replicas > 0 {
		def(&c.RedisWait.Timeout, 100*time.Millisecond)
	}
	if c.Version == "" {
		c.Version = "dev"
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.TracerProvider == nil {
		c.TracerProvider = otel.GetTracerProvider()
	}
	if c.Clock == nil {
		c.Clock = clock.Real()
	}
	if len(c.Tokens) == 0 {
		c.single = true
		c.Tokens = []TokenConfig{{Name: Name, Source: c.Source, RDP: c.RDP}}
	}
	for i := range c.Tokens {
		t := &c.Tokens[i]
		def(&t.ServeMargin, c.ServeMargin)
		def(&t.RefreshBefore, c.RefreshBefore)
		if t.AuthPerMinute == 0 {
			t.AuthPerMinute = c.AuthPerMinute
		}
	}
}

// check returns every problem of c's values, and with needSource of
// tokens that have no source; the one place the rules between settings
// live.
func (c *Config) check(needSource bool) []error {
	var errs []error
	fail := func(field, format string, args ...any) {
		errs = append(errs, &FieldError{field, fmt.Sprintf(format, args...)})
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"ServeMargin", c.ServeMargin}, {"RefreshBefore", c.RefreshBefore}, {"LockTTL", c.LockTTL},
		{"PollInterval", c.PollInterval}, {"RestPollInterval", c.RestPollInterval}, {"RetryMin", c.RetryMin}, {"RetryMax", c.RetryMax},
		{"HandoverCooldown", c.HandoverCooldown},
	} {
		if d.v < 0 {
			fail(d.name, "%v must not be negative", d.v)
		}
	}
	if c.LockTTL > 0 && c.LockTTL < minLockTTL {
		fail("LockTTL", "%v must be at least %v", c.LockTTL, minLockTTL)
	}
	if c.PollInterval > 0 && c.PollInterval < minPollInterval {
		fail("PollInterval", "%v must be at least %v", c.PollInterval, minPollInterval)
	}
	if c.RetryMin > 0 && c.RetryMax < c.RetryMin {
		fail("RetryMax", "%v must not be shorter than RetryMin (%v)", c.RetryMax, c.RetryMin)
	}
	if c.HandoverAfter < 1 {
		fail("HandoverAfter", "%d must be at least 1", c.HandoverAfter)
	}
	switch c.RedisMode {
	case RedisSingle, RedisSentinel, RedisCluster:
	default:
		fail("RedisMode", "%q is not single, sentinel or cluster", c.RedisMode)
	}
	if c.RedisWait.Replicas < 0 {
		fail("RedisWait.Replicas", "%d must not be negative", c.RedisWait.Replicas)
	}
	if c.RedisWait.Timeout < 0 || c.RedisWait.Replicas > 0 && c.RedisWait.Timeout >= c.LockTTL/4 {
		fail("RedisWait.Timeout", "%v must be positive and shorter than a quarter of LockTTL (%v): a wait must fit in a renewal", c.RedisWait.Timeout, c.LockTTL/4)
	}
	if c.AuthPerMinute < 1 {
		fail("AuthPerMinute", "%d must be at least 1", c.AuthPerMinute)
	}
	seen := make(map[string]int, len(c.Tokens))
	for i, t := range c.Tokens {
		field := func(name string) string {
			if c.single {
				return name
			}
			return fmt.Sprintf("Tokens[%d].%s", i, name)
		}
		if j, dup := seen[t.Name]; dup {
			fail(field("Name"), "%q is also the name of Tokens[%d]", t.Name, j)
		}
		seen[t.Name] = i
		errs = append(errs, t.check(field, !c.single, needSource)...)
	}
	if !c.HTTP.readers() {
		fail("HTTP.ReaderKeys", "is required (or HTTP.AllowAnonymous)")
	}
	for i, id := range c.HTTP.Security.Identities {
		if err := apiIdentity(id).Check(); err != nil {
			fail(fmt.Sprintf("HTTP.Security.Identities[%d]", i), "%v", err)
		}
	}
	if c.EncryptionKeys != "" {
		if _, err := cache.ParseKeyring(c.EncryptionKeys); err != nil {
			fail("EncryptionKeys", "%s", strings.TrimPrefix(err.Error(), "cache: "))
		}
	}
	if !c.HTTP.AllowWeakKeys {
		errs = append(errs, c.HTTP.weakKeys()...)
	}
	return errs
}

// weakKeys returns a problem for each reader or admin key too weak to
// resist guessing; the measure is httpapi's.
func (h HTTPConfig) weakKeys() []error {
	var errs []error
	const hint = "; allow weak keys only for a demo (HTTP.AllowWeakKeys)"
	for _, set := range []struct {
		field string
		keys  []string
	}{{"HTTP.ReaderKeys", h.ReaderKeys}, {"HTTP.AdminKeys", h.AdminKeys}} {
		for i, k := range set.keys {
			if err := httpapi.CheckKeyStrength(k); err != nil {
				errs = append(errs, &FieldError{set.field, fmt.Sprintf("key %d of %d %v%s", i+1, len(set.keys), err, hint)})
			}
		}
	}
	for i, k := range h.Keys {
		if k.Role == RoleMetrics {
			continue
		}
		if err := httpapi.CheckKeyStrength(k.Value); err != nil {
			name := k.Name
			if name == "" {
				name = fmt.Sprintf("%d of %d", i+1, len(h.Keys))
			}
			errs = append(errs, &FieldError{"HTTP.Keys", fmt.Sprintf("key %s %v%s", name, err, hint)})
		}
	}
	return errs
}

// check returns every problem of one token, each naming its field as
// field names it. own is false when its timings are Config's, checked
// there; needSource asks for a Source or RDP.
func (t TokenConfig) check(field func(string) string, own, needSource bool) []error {
	var errs []error
	fail := func(name, format string, args ...any) {
		errs = append(errs, &FieldError{field(name), fmt.Sprintf(format, args...)})
	}
	if !catalog.ValidName(t.Name) {
		fail("Name", "%q is not a token name: %s", t.Name, catalog.NameRule)
	}
	if own {
		for _, d := range []struct {
			name string
			v    time.Duration
		}{{"ServeMargin", t.ServeMargin}, {"RefreshBefore", t.RefreshBefore}} {
			if d.v < 0 {
				fail(d.name, "%v must not be negative", d.v)
			}
		}
		if t.AuthPerMinute < 1 {
			fail("AuthPerMinute", "%d must be at least 1", t.AuthPerMinute)
		}
	}
	var lifetime, timeout time.Duration
	prefix := "RDP."
	if t.PerDevice && t.RDP == nil {
		fail("PerDevice", "needs RDP: a device's token is an RDP liveness token")
	}
	switch {
	case t.Source != nil:
		return errs
	case t.RDP != nil && t.OAuth2 != nil:
		fail("OAuth2", "and RDP are two sources: give one")
		return errs
	case t.RDP != nil:
		lifetime, timeout = t.RDP.DefaultLifetime, t.RDP.Timeout
	case t.OAuth2 != nil:
		lifetime, timeout, prefix = t.OAuth2.DefaultLifetime, t.OAuth2.Timeout, "OAuth2."
	default:
		if needSource {
			fail("Source", "is required (or RDP, or OAuth2)")
		}
		return errs
	}
	if lifetime == 0 {
		lifetime = upstream.DefaultLifetime
	}
	if timeout == 0 {
		timeout = upstream.DefaultTimeout
	}
	if t.ServeMargin > 0 && t.ServeMargin >= lifetime {
		fail("ServeMargin", "%v must be shorter than %s (%v)", t.ServeMargin, field(prefix+"DefaultLifetime"), lifetime)
	} else if t.RefreshBefore > 0 && t.RefreshBefore+t.ServeMargin >= lifetime {
		fail("RefreshBefore", "%v plus %s (%v) must be shorter than %s (%v)", t.RefreshBefore, field("ServeMargin"), t.ServeMargin, field(prefix+"DefaultLifetime"), lifetime)
	}
	// A token's life counts from when its request was sent, and the answer
	// may take up to the timeout: with a margin no longer than that, a
	// token could arrive with less life than the margin and be refused
	// however often it is fetched.
	if t.ServeMargin > 0 && timeout > 0 && t.ServeMargin <= timeout {
		fail("ServeMargin", "%v must be longer than %s (%v): a token fetched with less life left than the margin is refused, so the margin must cover the longest upstream call", t.ServeMargin, field(prefix+"Timeout"), timeout)
	}
	return errs
}
