package refresher

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bsm/redislock"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel/trace"

	"github.com/tokenkeeper/tokenkeeper/cache"
	"github.com/tokenkeeper/tokenkeeper/clock"
	"github.com/tokenkeeper/tokenkeeper/internal/tracing"
	"github.com/tokenkeeper/tokenkeeper/upstream"
)

// Refresh's errors wrap fault.ErrNoLeader (no replica holds the lock at
// the moment), fault.ErrRefreshFailed (the leader tried and failed; the
// message says why) or fault.ErrUnavailable (Redis could not be reached
// to ask the leader).

// errBadToken means the upstream answered a token that must not be
// stored.
var errBadToken = errors.New("refresher: unusable token")

// Source fetches a new token from the upstream.
type Source interface {
	Token(ctx context.Context) (upstream.Token, error)
}

// redisClient is what the refresher needs of a go-redis client.
type redisClient interface {
	redis.Scripter
	Get(ctx context.Context, key string) *redis.StringCmd
	PTTL(ctx context.Context, key string) *redis.DurationCmd
}

// Config tunes a Refresher. Instance, LockTTL, RefreshBefore, RetryMin,
// RetryMax, HandoverAfter and HandoverCooldown are required: the front
// door (tokenkeeper.Config) owns their defaults and rules, and New trusts
// them, panicking on a value no Config can give. Other zero values take
// the defaults below.
type Config struct {
	// Instance names this replica in the lock, logs and status. Required.
	Instance string
	// LockTTL is the leader lock's time to live: at least 300ms, so that
	// a renewal (given half of it) holds a round trip and a retry.
	LockTTL time.Duration
	// RenewEvery is how often the leader renews the lock. It must be
	// shorter than half of LockTTL. Default: LockTTL/4.
	RenewEvery time.Duration
	// ElectEvery is how often a follower tries to take the lock when it
	// cannot tell when the lock comes free; one that sees the lock held
	// waits until it expires (or is released). Default: LockTTL/10,
	// between 50ms and 1s.
	ElectEvery time.Duration
	// CheckEvery is how often the leader looks at what the store's last
	// poll found, to put back a token Redis lost. It sends no command.
	// Default: 1s, or LockTTL/3 if shorter.
	CheckEvery time.Duration
	// RefreshBefore is the advisory window: the leader refreshes when this
	// much of the token's life remains.
	RefreshBefore time.Duration
	// Jitter is the most by which a refresh is moved earlier at random.
	// Default: RefreshBefore/10. Negative disables it.
	Jitter time.Duration
	// RetryMin and RetryMax bound the backoff between failed attempts,
	// 0 < RetryMin <= RetryMax. The backoff is the fleet's: a new leader goes on
	// from the failures its predecessors recorded in Redis.
	RetryMin, RetryMax time.Duration
	// HandoverAfter is how many refresh attempts in a row may fail (the
	// upstream failing, refusing or answering garbage) before the leader
	// hands leadership over: it releases the lock so that another replica,
	// which may reach the upstream, tries. An attempt refused for good
	// (400, 401 or 403 on sign-on: this replica's credentials) hands over
	// at once. At least 1.
	HandoverAfter int
	// HandoverCooldown is how long a replica that handed over stays out of
	// elections, so that it is not re-elected ahead of one that has not
	// failed; it stands again sooner when the lock stays free for a lock
	// TTL (no other replica wants it).
	HandoverCooldown time.Duration
	// Clock is the time the election, the refresh loop and the heartbeat
	// run on: dates and every timer. Default: clock.Real(). The timeouts
	// of single Redis calls (RedisTimeout and the like) stay on Go's own
	// timers, through context.WithTimeout: they bound I/O against the
	// Redis client's own socket timeouts, which no Clock moves, and date
	// nothing. A lock renewal's timeout is the lease left as the Clock
	// counts it. A Clock that also has a method Rand() *rand.Rand
	// (math/rand/v2, safe for concurrent use) is the source of the
	// refresher's random choices too (the refresh jitter, the backoff), so
	// that a simulated host's run follows its seed; any other Clock leaves
	// them to the process's generator.
	Clock clock.Clock
	// Logger receives leadership and refresh logs. Default: slog.Default().
	Logger *slog.Logger
	// Version names the build in this replica's heartbeat (fleet.go).
	Version string
	// HeartbeatEvery is how long Heartbeat waits before writing this
	// replica's state again after a failed write. Default: 5s.
	HeartbeatEvery time.Duration
	// Registerer receives the refresher's metrics (metrics.go). Default:
	// none, no metrics are kept.
	Registerer prometheus.Registerer
	// Replication, when it names replicas, makes a new leader wait until
	// that many replicas of the Redis master hold its lock (WAIT) before it
	// acts, so that a replica promoted by a failover knows who leads. A
	// short wait is logged, not fatal. Token writes wait as the store's
	// own Replication says. Default: no wait.
	Replication cache.Replication
	// WatchMaster makes the leader check, at every lock renewal, that the
	// Redis master holding its lock is still the server it was elected on
	// (its run id), and step down at once when a failover replaced it,
	// rather than trust a lock the new master may have missed. It costs
	// one INFO per renewal. For Sentinel and Cluster. Default: off.
	WatchMaster bool
	// MasterAuthority, with WatchMaster, names the run id of the server
	// that the topology's authority (Sentinel) holds to be the master now.
	// A leader whose server is not that one steps down, and a replica that
	// wins an election on it releases the lock at once: after a partition
	// heals, an old master keeps taking writes until Sentinel demotes it,
	// and its side must not lead meanwhile. An error or an empty answer
	// (no sentinel reachable) decides nothing. Default: none.
	MasterAuthority func(ctx context.Context) (string, error)
	// TracerProvider receives the spans of the election and of each
	// refresh attempt (tracing.go). Default: the global one.
	TracerProvider trace.TracerProvider
	// Leading, when set, tells how many tokens this replica leads (a
	// catalog's Keeper counts its refreshers). A lock released on purpose
	// (a hand-over, a stop) is tried within ElectEvery/20 by a replica that
	// leads none, at random, and later the more it leads (releasedYield),
	// so that the least busy replica takes it and leadership over a
	// catalog spreads as it moves.
	// An expired lock is tried as soon as ever. Default: none, no delay.
	Leading func() int
	// LockChecks, shared by a replica's Refreshers, reads their locks
	// together (LockChecks). Default: none, each reads its own.
	LockChecks *LockChecks
}

// Refresher runs the election and, while leading, the refresh loop.
// Create it with New and start it with Run; its other methods are safe to
// call concurrently with Run.
type Refresher struct {
	cfg    Config
	rdb    redisClient
	store  *cache.Store
	src    Source
	locker *redislock.Client
	log    *slog.Logger
	tracer trace.Tracer
	name   string      // the token's name, in spans
	rand   *mrand.Rand // the refresh jitter and the backoff (Config.Clock)

	leading atomic.Bool
	// stepDown asks the leader's loop to hand over (StepDown); one slot,
	// a request made while one waits is the same request.
	stepDown chan struct{}

	// unsaved is a token fetched and not yet stored, kept across terms of
	// leadership. Owned by Run's goroutine.
	unsaved *upstream.Token

	mu            sync.Mutex // guards the fields below
	lastRefresh   time.Time
	nextRefresh   time.Time
	lastErr       string
	fetches       uint64
	upstreamState string    // "", upstreamOK or upstreamFailing: this replica's last try
	upstreamErr   string    // the error of the last failing try
	asideUntil    time.Time // having handed over, out of elections until then
	// changes counts the changes of the fields above that the fleet view
	// shows (upstreamState, upstreamErr, asideUntil), for Heartbeats.
	changes atomic.Uint64

	spanMu sync.Mutex // guards span
	span   trace.Span // the attempt running now, for lock events; nil when none

	reqMu sync.Mutex   // guards req
	req   *refreshCall // the refresh request this replica has in flight

	metrics *metrics   // nil without Config.Registerer
	fleet   fleetState // heartbeats and recent attempts (fleet.go)
}

// New returns a Refresher, or an error naming the first impossible setting.
func New(cfg Config, rdb redisClient, store *cache.Store, src Source) (*Refresher, error) {
	if rdb == nil || store == nil || src == nil {
		return nil, errors.New("refresher: Redis client, store and source are required")
	}
	if cfg.Instance == "" || cfg.LockTTL <= 0 || cfg.RefreshBefore <= 0 || cfg.RetryMin <= 0 || cfg.RetryMax < cfg.RetryMin ||
		cfg.HandoverAfter < 1 || cfg.HandoverCooldown <= 0 {
		panic("refresher: Config lacks what the front door sets: Instance, LockTTL, RefreshBefore, 0 < RetryMin <= RetryMax, HandoverAfter, HandoverCooldown")
	}
	if cfg.RenewEvery == 0 {
		cfg.RenewEvery = cfg.LockTTL / 4
	}
	if cfg.RenewEvery <= 0 || cfg.RenewEvery*2 >= cfg.LockTTL {
		return nil, fmt.Errorf("refresher: lock renewal every %v must be shorter than half the lock TTL %v", cfg.RenewEvery, cfg.LockTTL)
	}
	if cfg.ElectEvery == 0 {
		cfg.ElectEvery = min(max(cfg.LockTTL/10, 50*time.Millisecond), time.Second)
	}
	if cfg.ElectEvery < 0 {
		return nil, fmt.Errorf("refresher: election interval %v is negative", cfg.ElectEvery)
	}
	if cfg.CheckEvery == 0 {
		cfg.CheckEvery = min(time.Second, cfg.LockTTL/3)
	}
	if cfg.CheckEvery < 0 {
		return nil, fmt.Errorf("refresher: check interval %v is negative", cfg.CheckEvery)
	}
	if cfg.Jitter == 0 {
		cfg.Jitter = cfg.RefreshBefore / 10
	}
	if cfg.Jitter < 0 {
		cfg.Jitter = 0
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.Real()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.HeartbeatEvery == 0 {
		cfg.HeartbeatEvery = 5 * time.Second
	}
	if cfg.HeartbeatEvery < 10*time.Millisecond {
		return nil, fmt.Errorf("refresher: heartbeat interval %v is shorter than 10ms", cfg.HeartbeatEvery)
	}
	r := &Refresher{
		stepDown: make(chan struct{}, 1),
		cfg:      cfg,
		rdb:      rdb,
		store:    store,
		src:      src,
		locker:   redislock.New(rdb),
		log:      tracing.Logger(cfg.Logger).With("instance", cfg.Instance),
		tracer:   tracing.Tracer(cfg.TracerProvider),
		name:     tracing.TokenName(store.Keys().Token),
		rand:     mrand.New(processRand{}),
	}
	if c, ok := cfg.Clock.(interface{ Rand() *mrand.Rand }); ok {
		r.rand = c.Rand()
	}
	var err error
	if r.metrics, err = newMetrics(cfg.Registerer, r); err != nil {
		return nil, err
	}
	return r, nil
}

// processRand is the process's generator (math/rand/v2's top-level
// functions) as a Source.
type processRand struct{}

func (processRand) Uint64() uint64 { return mrand.Uint64() }

// StepDown asks this replica, when it leads, to release the lock and stay
// out of the election for a lock TTL, long enough for a replica standing
// for it to take it: a replica that leads several tokens uses it to spread
// leadership over the fleet after an election gave it more than its share.
// If no other replica takes the lock, it stands again then. A refresh
// under way finishes first. It does not block; it reports whether this
// replica led when asked.
func (r *Refresher) StepDown() bool {
	if !r.leading.Load() {
		return false
	}
	select {
	case r.stepDown <- struct{}{}:
	default:
	}
	return true
}

// IsLeader reports whether this replica leads now.
func (r *Refresher) IsLeader() bool { return r.leading.Load() }

// Fetches returns how many tokens this replica fetched from the upstream.
func (r *Refresher) Fetches() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.fetches
}

// Status is the fleet as this replica sees it. It never holds the token.
type Status struct {
	Instance         string
	Leader           string // instance id of the lock holder; "" when none or unknown
	IsLeader         bool
	Ready            bool // this replica holds a servable token
	TokenFingerprint string
	Generation       uint64    // of the token held (cache.Token.Generation)
	ExpiresAt        time.Time // wall-clock reading of the local deadline
	LastRefresh      time.Time // last successful refresh by this replica, or the token's fetch time
	NextRefresh      time.Time // when the leader plans the next fetch (estimated elsewhere)
	LastError        string
	// Replicas are the replicas whose heartbeat is fresh, by instance id
	// (only this one when Redis cannot be read); Refreshes the last
	// refresh attempts of any leader, newest first (this replica's own
	// when Redis cannot be read).
	Replicas  []Replica
	Refreshes []Attempt
}

// Status reports this replica's view. It reads the lock holder and the
// fleet view (heartbeats, last attempts) from Redis; when Redis cannot be
// reached, Leader is empty, the fleet view is this replica's own, and err
// says why.
func (r *Refresher) Status(ctx context.Context) (Status, error) {
	now := r.cfg.Clock.Now()
	s := Status{Instance: r.cfg.Instance, IsLeader: r.IsLeader()}
	if tok, ok := r.store.Held(); ok {
		s.TokenFingerprint, s.Generation = tok.Fingerprint(), tok.Generation
		s.ExpiresAt = now.Add(tok.Remaining(now)).Round(0)
		s.LastRefresh = tok.FetchedAt.Round(0)
		s.NextRefresh = nextRefreshAt(tok, r.cfg.RefreshBefore, 0, r.store.ServeMargin()).Round(0)
	}
	_, s.Ready = r.store.Current()
	r.mu.Lock()
	if s.IsLeader {
		if !r.lastRefresh.IsZero() {
			s.LastRefresh = r.lastRefresh.Round(0)
		}
		s.NextRefresh = r.nextRefresh.Round(0)
	}
	s.LastError = r.lastErr
	r.mu.Unlock()
	leader, err := r.Leader(ctx)
	s.Leader = leader
	if ferr := r.fleetStatus(ctx, &s, err == nil); err == nil {
		err = ferr
	}
	return s, err
}

// Leader returns the instance id of the current lock holder, or "" when
// the lock is free.
func (r *Refresher) Leader(ctx context.Context) (string, error) {
	return readLeader(ctx, r.rdb, r.store.Keys().Lock)
}
