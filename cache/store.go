package cache

import (
	"github.com/tokenkeeper/tokenkeeper/internal/tracing"
	"go.opentelemetry.io/otel/trace"

	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/tokenkeeper/tokenkeeper/clock"
	"github.com/tokenkeeper/tokenkeeper/internal/plant"
)

// Errors returned by Store.Write. Check them with errors.Is.
var (
	// ErrFenced means the writer no longer holds the lock: another replica
	// leads now, or the lock expired while the writer was paused.
	ErrFenced = errors.New("cache: fenced: writer does not hold the lock")
	// ErrStale means Redis already holds a token that expires at the same
	// time or later than the one offered.
	ErrStale = errors.New("cache: stale: stored token expires later")
	// ErrInvalid means the token offered cannot be stored at all.
	ErrInvalid = errors.New("cache: invalid token")
	// ErrWrongType means the token's key holds a value of another type than
	// the hash the store writes (someone or something else wrote it). Load
	// treats the key as holding no token, so the leader overwrites it under
	// the lock; it is logged at Error and counted every time it is seen.
	ErrWrongType = errors.New("cache: the token key holds a foreign value")
)

// Keys names the Redis keys of one token; it is the one place they are
// named. All carry the same hash tag so a script touches one slot in Redis
// Cluster.
type Keys struct {
	Token string // hash holding the token
	// Stamp is a string holding the stored token's expiry (Redis ms),
	// written with the token and expiring with it: the replicas' polls
	// read every token's stamp in one MGET.
	Stamp    string
	Lock     string // leader lock (github.com/bsm/redislock)
	Events   string // pub/sub channel
	Replicas string // hash of each replica's state for this token, a field per replica
	// Fleet is the hash of the replicas alive, a field per replica, shared
	// by every token (so it carries no hash tag): each replica beats there
	// once per period, whatever the number of tokens it keeps.
	Fleet     string
	Refreshes string // list of the last refresh attempts
	Auth      string // sorted set of the fleet's recent sign-ons
	// Devices prefixes the keys of per-device tokens: a hash per device,
	// Devices + the device's keyed digest, and its claim, + ":claim".
	Devices string
	// DeviceKey holds the secret the fleet digests device ids with.
	DeviceKey string
}

// KeysFor returns the keys of the token called name:
// tokenkeeper:{name}:token, :exp (the stamp), :lock, :events, :replicas,
// :refreshes, :auth, :device:<digest> (per-device tokens) and :device-key,
// and the fleet's tokenkeeper:replicas.
func KeysFor(name string) Keys {
	p := "tokenkeeper:{" + name + "}:"
	return Keys{Token: p + "token", Stamp: p + "exp", Lock: p + "lock", Events: p + "events",
		Replicas: p + "replicas", Fleet: FleetKey, Refreshes: p + "refreshes", Auth: p + "auth",
		Devices: p + "device:", DeviceKey: p + "device-key"}
}

// FleetKey is the hash of the replicas alive (Keys.Fleet).
const FleetKey = "tokenkeeper:replicas"

// redisClient is what the store needs of a go-redis client
// (*redis.Client, *redis.ClusterClient and redis.UniversalClient fit).
type redisClient interface {
	redis.Scripter
	HGet(ctx context.Context, key, field string) *redis.StringCmd
	Pipeline() redis.Pipeliner
	Publish(ctx context.Context, channel string, message any) *redis.IntCmd
	Subscribe(ctx context.Context, channels ...string) *redis.PubSub
	SPublish(ctx context.Context, channel string, message any) *redis.IntCmd
	SSubscribe(ctx context.Context, channels ...string) *redis.PubSub
}

// Config tunes a Store. The zero value works, with the defaults below.
type Config struct {
	// Keys names the Redis keys. Default: KeysFor("liveness").
	Keys Keys
	// ServeMargin is how long before its deadline a token stops being
	// served. Default: 1 minute.
	ServeMargin time.Duration
	// PollInterval bounds how long a lost event goes unnoticed: while
	// the events' subscription is in doubt the store is polled this
	// often, and its PINGs (5/8 of it apart) prove it alive otherwise
	// (poll.go). Default: 2 seconds.
	PollInterval time.Duration
	// RestPollInterval is how often the store is polled while its events
	// are proven alive: insurance against what no PING shows (a key
	// evicted or flushed). Default: 5 minutes; never shorter than
	// PollInterval.
	RestPollInterval time.Duration
	// Instance names this replica in the events it publishes.
	Instance string
	// Clock dates reads (deadlines) and runs the poll. Default:
	// clock.Real(), whose monotonic reading makes deadlines immune to
	// wall-clock changes.
	Clock clock.Clock
	// Logger receives the store's logs. Default: slog.Default().
	Logger *slog.Logger
	// Keyring, when set, encrypts the token at rest in Redis. A token
	// encrypted with a key the keyring lacks is never adopted: Load
	// returns errNoKey and the copy in memory is kept. Default: none, the
	// token is stored as it is.
	Keyring *Keyring
	// Registerer receives the store's metrics (see metrics.go). Default:
	// none, no metrics are kept.
	Registerer prometheus.Registerer
	// Events carries the store's events, shared with the replica's other
	// stores. Default: the store subscribes on its own, over plain
	// pub/sub, while it runs.
	Events *Events
	// Replication, when it names replicas, makes each write wait until
	// that many replicas of the Redis master have it (WAIT), so that a
	// replica promoted by a failover holds it. Default: no wait.
	Replication Replication
	// TracerProvider receives a span for each token adopted from a change
	// event, in the trace of the write that published it; the fenced
	// write's own span is made only under a span of the caller's (a
	// refresh attempt). Default: the global one.
	TracerProvider trace.TracerProvider
}

// Replication is how many replicas a write waits for, and how long.
type Replication struct {
	// Replicas is how many replicas must acknowledge a write. Zero: no
	// wait.
	Replicas int
	// Timeout bounds the wait. A write that fewer replicas acknowledged in
	// time still stands; it is logged and counted. Default: 100ms.
	Timeout time.Duration
}

// redisClock is a reading of Redis's clock (Unix ms) by a command sent
// at sent on this replica's clock and answered rtt later: Redis read its
// clock somewhere in that round trip, so that relating an instant on
// Redis's clock to sent dates it early by up to rtt, never late.
type redisClock struct {
	sent time.Time
	ms   int64
	rtt  time.Duration
}

// DefaultRestPollInterval is Config.RestPollInterval's default.
const DefaultRestPollInterval = 5 * time.Minute

// Store is one replica's view of the shared token. Create it with New and
// keep it current with Run. All methods are safe for concurrent use.
type Store struct {
	rdb    redisClient
	cfg    Config
	log    *slog.Logger
	tracer trace.Tracer
	name   string // the token's name, in spans

	cur     atomic.Pointer[held]
	inRedis atomic.Bool
	sealErr atomic.Pointer[error] // last errNoKey or errDecrypt from Load, nil once a load succeeds
	loads   atomic.Uint64
	polled  atomic.Pointer[string] // the stored expiry Poll saw before the last good Load
	metrics *storeMetrics          // nil without Config.Registerer

	servable atomic.Bool // readiness as last logged by noteReadiness
	noRO     atomic.Bool // the server lacks EVALSHA_RO

	events    *Events
	ownEvents bool                       // the store runs its events itself
	route     *route                     // the events channel's deliveries
	often     atomic.Bool                // polled every PollInterval whatever the events prove (PollOften)
	behind    atomic.Bool                // Redis holds an older token than the copy in memory
	rtt       atomic.Int64               // recent longest round trip to Redis, in ns (noteRTT)
	clockRef  atomic.Pointer[redisClock] // Redis's clock as the last full read found it
	rttCap    time.Duration              // the client's read timeout: no answer comes later; 0 when unknown

	mu   sync.Mutex
	subs map[*Subscription]struct{} // guarded by mu
}

// New returns a Store over rdb. It does not contact Redis.
func New(rdb redisClient, cfg Config) (*Store, error) {
	if rdb == nil {
		return nil, errors.New("cache: nil Redis client")
	}
	if cfg.Keys == (Keys{}) {
		cfg.Keys = KeysFor("liveness")
	}
	if cfg.Keys.Token == "" || cfg.Keys.Stamp == "" || cfg.Keys.Lock == "" || cfg.Keys.Events == "" {
		return nil, errors.New("cache: every key must be named")
	}
	if cfg.ServeMargin == 0 {
		cfg.ServeMargin = time.Minute
	}
	if cfg.ServeMargin < 0 {
		return nil, fmt.Errorf("cache: serve margin %v is negative", cfg.ServeMargin)
	}
	if cfg.PollInterval == 0 {
		cfg.PollInterval = 2 * time.Second
	}
	if cfg.RestPollInterval == 0 {
		cfg.RestPollInterval = DefaultRestPollInterval
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.Real()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Replication.Replicas < 0 {
		return nil, fmt.Errorf("cache: %d replicas to wait for is negative", cfg.Replication.Replicas)
	}
	if cfg.Replication.Timeout == 0 {
		cfg.Replication.Timeout = 100 * time.Millisecond
	}
	if cfg.Replication.Timeout < 0 {
		return nil, fmt.Errorf("cache: replication timeout %v is negative", cfg.Replication.Timeout)
	}
	s := &Store{rdb: rdb, cfg: cfg, log: tracing.Logger(cfg.Logger), tracer: tracing.Tracer(cfg.TracerProvider),
		name: tracing.TokenName(cfg.Keys.Token), subs: make(map[*Subscription]struct{}), rttCap: ReadTimeout(rdb)}
	s.events, s.ownEvents = cfg.Events, cfg.Events == nil
	if s.ownEvents {
		s.events = NewEvents(rdb, EventsConfig{Logger: cfg.Logger, Clock: cfg.Clock})
	}
	var err error
	if s.route, err = s.events.join(cfg.Keys.Events, s); err != nil {
		return nil, err
	}
	if s.metrics, err = newStoreMetrics(cfg.Registerer, s); err != nil {
		return nil, err
	}
	return s, nil
}

// held is the token in memory and when the observation it came from was
// sent to Redis (a read's send, a write's send).
type held struct {
	Token
	seen time.Time
}

// Keys returns the Redis keys the store uses.
func (s *Store) Keys() Keys { return s.cfg.Keys }

// ServeMargin returns the configured serve margin.
func (s *Store) ServeMargin() time.Duration { return s.cfg.ServeMargin }

// Current returns the token if it may be served now: held, and more than
// the serve margin away from its deadline. It never touches Redis.
func (s *Store) Current() (Token, bool) {
	t := s.cur.Load()
	if t == nil || !t.ServableAt(s.cfg.Clock.Now(), s.cfg.ServeMargin) && !plant.On(plant.ServeExpired) {
		return Token{}, false
	}
	return t.Token, true
}

// Stamp identifies what a store holds: its token in memory and why the
// token in Redis is unreadable here. Two equal stamps mean neither changed
// in between; time passing changes neither, though it ends the token's
// servability (Current) and its life (Held).
type Stamp struct {
	cur  *held
	seal *error
}

// Stamp returns the store's stamp now.
func (s *Store) Stamp() Stamp { return Stamp{s.cur.Load(), s.sealErr.Load()} }

// Held returns the token in memory, servable or not, as long as it has
// not expired.
func (s *Store) Held() (Token, bool) {
	t := s.cur.Load()
	if t == nil || t.Remaining(s.cfg.Clock.Now()) <= 0 {
		return Token{}, false
	}
	return t.Token, true
}

// Unreadable returns why the token in Redis cannot be read by this replica
// (errNoKey, errDecrypt), or nil. Such a replica serves nothing new and
// should not lead: it would replace a token the rest of the fleet reads.
func (s *Store) Unreadable() error {
	if p := s.sealErr.Load(); p != nil {
		return *p
	}
	return nil
}

// InRedis reports whether the last read of Redis found a token there.
func (s *Store) InRedis() bool { return s.inRedis.Load() }

// Loads returns how many times the store has read Redis (for metrics and
// tests).
func (s *Store) Loads() uint64 { return s.loads.Load() }
