package cache

import (
	"bytes"
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
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
	Token     string // hash holding the token
	Lock      string // leader lock (github.com/bsm/redislock)
	Events    string // pub/sub channel
	Replicas  string // hash of heartbeats, a field per replica
	Refreshes string // list of the last refresh attempts
	Auth      string // sorted set of the fleet's recent sign-ons
	// Devices prefixes the keys of per-device tokens: a hash per device,
	// Devices + the device's keyed digest, and its claim, + ":claim".
	Devices string
	// DeviceKey holds the secret the fleet digests device ids with.
	DeviceKey string
}

// KeysFor returns the keys of the token called name:
// tokenkeeper:{name}:token, :lock, :events, :replicas, :refreshes, :auth,
// :device:<digest> (per-device tokens) and :device-key.
func KeysFor(name string) Keys {
	p := "tokenkeeper:{" + name + "}:"
	return Keys{Token: p + "token", Lock: p + "lock", Events: p + "events",
		Replicas: p + "replicas", Refreshes: p + "refreshes", Auth: p + "auth",
		Devices: p + "device:", DeviceKey: p + "device-key"}
}

// redisClient is what the store needs of a go-redis client
// (*redis.Client, *redis.ClusterClient and redis.UniversalClient fit).
type redisClient interface {
	redis.Scripter
	HGet(ctx context.Context, key, field string) *redis.StringCmd
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
	// PollInterval is how often Run reads Redis to catch up on missed
	// events. Default: 2 seconds.
	PollInterval time.Duration
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

// Message is a message on the events channel. The store publishes
// MsgToken itself, from the write script, with the token as stored, which
// a replica adopts without reading Redis; any other type is a control
// message of another package (the refresher's protocol), whose content
// the store carries in Body without reading it.
type Message struct {
	// Type is MsgToken or a control message's type.
	Type string `json:"type"`
	// From is the instance that published it.
	From string `json:"from,omitempty"`
	// Fingerprint of the token stored (MsgToken), never the token.
	Fingerprint string `json:"fp,omitempty"`
	// Body is a control message's own content, opaque to the store.
	Body json.RawMessage `json:"body,omitempty"`
}

// MsgToken is the type of the message the write script publishes when it
// stores a token.
const MsgToken = "token"

// tokenEvent is MsgToken as the write script publishes it: the message,
// and the token as stored, so that a replica can adopt it without a read.
// Subscribers get the Message alone.
type tokenEvent struct {
	Message
	Tok *eventToken `json:"tok,omitempty"`
}

// eventToken is the token of a tokenEvent. The writer sets the first
// fields; the write script appends the last three, which only Redis
// knows, and closes the JSON object (so Tok must stay the last field).
type eventToken struct {
	Value  string `json:"v"` // as stored: sealed when KeyID is set
	KeyID  string `json:"k,omitempty"`
	Writer string `json:"w,omitempty"`
	AgeMS  int64  `json:"age"` // since the writer received it from the upstream

	ExpMS int64 `json:"exp,omitempty"` // when Redis expires it, on Redis's clock (Unix ms)
	NowMS int64 `json:"now,omitempty"` // Redis's clock when it stored it (Unix ms)
	Gen   int64 `json:"g,omitempty"`
}

// redisClock is a reading of Redis's clock (Unix ms) by a command sent
// at sent on this replica's clock.
type redisClock struct {
	sent time.Time
	ms   int64
}

// MinPollInterval is the shortest poll interval.
const MinPollInterval = 10 * time.Millisecond

// Store is one replica's view of the shared token. Create it with New and
// keep it current with Run. All methods are safe for concurrent use.
type Store struct {
	rdb redisClient
	cfg Config
	log *slog.Logger

	cur     atomic.Pointer[held]
	inRedis atomic.Bool
	sealErr atomic.Pointer[error] // last errNoKey or errDecrypt from Load, nil once a load succeeds
	loads   atomic.Uint64
	polled  atomic.Pointer[string] // the stored expiry Poll saw before the last good Load
	metrics *storeMetrics          // nil without Config.Registerer

	servable atomic.Bool // readiness as last logged by noteReadiness
	noRO     atomic.Bool // the server lacks EVALSHA_RO

	events    *Events
	ownEvents bool   // the store runs its events itself
	route     *route // the events channel's deliveries
	// readFailed tells pollEvery that the read an event asked for failed;
	// one slot: a second failure before it looks is the same news.
	readFailed chan struct{}
	behind     atomic.Bool                // Redis holds an older token than the copy in memory
	rtt        atomic.Int64               // recent longest round trip to Redis, in ns (noteRTT)
	clockRef   atomic.Pointer[redisClock] // Redis's clock as the last full read found it
	rttCap     time.Duration              // the client's read timeout: no answer comes later; 0 when unknown

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
	if cfg.Keys.Token == "" || cfg.Keys.Lock == "" || cfg.Keys.Events == "" {
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
	if cfg.PollInterval < MinPollInterval {
		return nil, fmt.Errorf("cache: poll interval %v is shorter than %v", cfg.PollInterval, MinPollInterval)
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
	s := &Store{rdb: rdb, cfg: cfg, log: cfg.Logger, subs: make(map[*Subscription]struct{}), rttCap: readTimeout(rdb),
		readFailed: make(chan struct{}, 1)}
	s.events, s.ownEvents = cfg.Events, cfg.Events == nil
	if s.ownEvents {
		s.events = NewEvents(rdb, EventsConfig{Logger: cfg.Logger})
	}
	var err error
	if s.route, err = s.events.join(cfg.Keys.Events); err != nil {
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

//go:embed lua/read.lua
var readLua string

//go:embed lua/write.lua
var writeLua string

// readScript (lua/read.lua) returns the token, its remaining
// milliseconds, its age in milliseconds, its writer, its key id, its
// generation and Redis's clock (Unix ms), read in one step so the
// remaining time belongs to the token read; {'!', error} when the key
// holds no hash; an empty token and Redis's clock when it holds none.
var readScript = redis.NewScript(readLua)

// writeScript (lua/write.lua) stores a token under the fence. KEYS: token, lock.
// ARGV: lock value, token, ttl ms, age ms, writer, channel, event (a
// tokenEvent's JSON without its two closing braces, which the script
// appends after the token's expiry, Redis's clock and the generation), key
// id (empty when the token is stored as it is), the publishing command
// (PUBLISH or SPUBLISH), the highest generation the writer knows.
// Returns {1, expiry ms, generation} when stored, {0} when fenced, {-1}
// when stale. The generation stored is one more than the key's or the
// writer's, whichever is higher.
// A token key of another type than a hash is overwritten: only the lock
// holder gets this far.
var writeScript = redis.NewScript(writeLua)

// unfencedScript is writeScript without its fence, for the simulator's
// planted bug plant.FenceOff alone.
var unfencedScript = redis.NewScript(strings.Replace(writeLua, "if redis.call('GET', KEYS[2]) ~= ARGV[1] then return {0} end", "", 1))

// Load reads the token from Redis and adopts it when it differs from the
// copy in memory. It reports whether Redis held a token. When Redis holds
// none, or cannot be reached, the copy in memory is kept.
func (s *Store) Load(ctx context.Context) (bool, error) { return s.load(ctx, false) }

// Resync is Load for when Redis has just refused the copy in memory as
// older than the token it holds (ErrStale): it adopts the stored token
// even if, estimated from here, it seems to expire sooner.
func (s *Store) Resync(ctx context.Context) (bool, error) { return s.load(ctx, true) }

func (s *Store) load(ctx context.Context, resync bool) (bool, error) {
	s.loads.Add(1)
	sent := s.cfg.Clock.Now()
	res, err := s.runRO(ctx, readScript, []string{s.cfg.Keys.Token}).Slice()
	if err != nil {
		return false, fmt.Errorf("cache: read token: %w", err)
	}
	s.noteRTT(sent)
	if len(res) == 2 {
		// The key holds something else than a token: no token, as far as
		// the fleet is concerned; the leader overwrites it under the lock.
		s.inRedis.Store(false)
		s.metrics.anomaly(anomalyWrongType)
		return false, fmt.Errorf("%w: %s is not a hash (%v); the leader overwrites it", ErrWrongType, s.cfg.Keys.Token, res[1])
	}
	if len(res) != 7 {
		return false, fmt.Errorf("cache: read token: unexpected answer of %d fields", len(res))
	}
	value, _ := res[0].(string)
	pttl, _ := res[1].(int64)
	age, _ := res[2].(int64)
	writer, _ := res[3].(string)
	keyID, _ := res[4].(string)
	gen, _ := res[5].(int64)
	if redisNow, _ := res[6].(int64); redisNow > 0 {
		s.clockRef.Store(&redisClock{sent: sent, ms: redisNow})
	}
	if value == "" || pttl <= 0 {
		s.lost(sent)
		return false, nil
	}
	s.inRedis.Store(true)
	if keyID != "" {
		if s.cfg.Keyring == nil {
			err := fmt.Errorf("%w %q: this replica has no encryption keys (TOKENKEEPER_ENCRYPTION_KEYS)", errNoKey, keyID)
			s.sealErr.Store(&err)
			return true, err
		}
		if value, err = s.cfg.Keyring.open(keyID, value, s.cfg.Keys.Token); err != nil {
			s.sealErr.Store(&err)
			return true, err
		}
	}
	s.sealErr.Store(nil)
	s.adoptRead(Token{
		Value:      value,
		Deadline:   sent.Add(time.Duration(pttl) * time.Millisecond),
		FetchedAt:  sent.Add(-time.Duration(age) * time.Millisecond),
		Writer:     writer,
		Generation: uint64(max(gen, 0)),
	}, sent, resync)
	return true, nil
}

// runRO runs a script that only reads with EVALSHA_RO, which Redis still
// serves while writes are paused (CLIENT PAUSE WRITE, during a failover)
// and on read-only replicas; a server older than Redis 7 that lacks it
// gets the script with EVALSHA from then on, and so does a user whose ACL
// lacks EVALSHA_RO.
func (s *Store) runRO(ctx context.Context, script *redis.Script, keys []string, args ...any) *redis.Cmd {
	if !s.noRO.Load() {
		cmd := script.RunRO(ctx, s.rdb, keys, args...)
		err := cmd.Err()
		switch {
		case err == nil:
			return cmd
		case strings.Contains(strings.ToLower(err.Error()), "unknown command"),
			// Redis-compatible servers that count TIME as a write.
			strings.Contains(err.Error(), "not allowed in read-only scripts"):
		case strings.HasPrefix(err.Error(), "NOPERM") && strings.Contains(strings.ToLower(err.Error()), "evalsha_ro"):
			s.log.Info("Redis refuses EVALSHA_RO to this user: reading with EVALSHA, which waits while writes are paused; grant +evalsha_ro +eval_ro")
		default:
			return cmd
		}
		s.noRO.Store(true)
	}
	return script.Run(ctx, s.rdb, keys, args...)
}

// lost records that Redis held no token at sent. When the last read found
// one and the copy in memory still had well over a second to live, the key
// was removed before its expiry (eviction under maxmemory, FLUSHALL, a
// restart without persistence, a failover to a replica that missed it):
// that is logged and counted, since an operator must fix its cause.
func (s *Store) lost(sent time.Time) {
	t := s.cur.Load()
	if t != nil && sent.Before(t.seen) {
		return // a later observation found a token
	}
	if !s.inRedis.Swap(false) {
		return
	}
	if t != nil && t.Deadline.Sub(sent) > time.Second {
		s.metrics.anomaly(anomalyTokenLost)
		s.log.Warn("the token vanished from Redis before its expiry: Redis evicted it (check maxmemory-policy: "+
			"use noeviction or a volatile-* policy), was flushed, or restarted empty; the leader writes it back from memory",
			"key", s.cfg.Keys.Token, "fingerprint", t.Fingerprint(), "expires_in", t.Remaining(sent).Round(time.Second))
	}
}

// LockLost records that the lock key vanished before its TTL ran out
// (eviction, flush, restart), which the refresher finds when a renewal is
// refused and nobody else holds the lock. It counts it and logs why it
// matters.
func (s *Store) LockLost() {
	s.metrics.anomaly(anomalyLockLost)
	s.log.Warn("the leader lock vanished from Redis before its TTL: Redis evicted it (check maxmemory-policy: "+
		"use noeviction or a volatile-* policy), was flushed, or restarted empty", "key", s.cfg.Keys.Lock)
}

// adoptRead adopts t, read from Redis by a command sent at seen, unless
// the copy in memory is a different token that expires later: Redis then
// holds an older token than one this replica has served (a failover to a
// replica that missed the last write, a restore from a snapshot), which no
// replica goes back to. Behind reports it, so that the leader writes the
// newer token back from memory.
func (s *Store) adoptRead(t Token, seen time.Time, resync bool) {
	if old := s.cur.Load(); !resync && !plant.On(plant.AdoptOlder) && old != nil && old.Value != t.Value && !seen.Before(old.seen) &&
		t.Deadline.Before(old.Deadline) && old.Remaining(s.cfg.Clock.Now()) > 0 {
		if !s.behind.Swap(true) {
			s.metrics.anomaly(anomalyTokenOlder)
			s.log.Warn("Redis holds an older token than this replica: keeping the newer one; the leader writes it back "+
				"(a failover to a replica that missed the last write, or a restore from an older snapshot)",
				"key", s.cfg.Keys.Token, "held", old.Fingerprint(), "held_generation", old.Generation,
				"in_redis", t.Fingerprint(), "in_redis_generation", t.Generation,
				"in_redis_expires_sooner_by", old.Deadline.Sub(t.Deadline).Round(time.Millisecond))
		}
		return
	}
	s.behind.Store(false)
	s.adopt(t, seen)
}

// readTimeout returns the read timeout of rdb, a go-redis client: a
// command is answered within it or fails. 0 when unknown or unbounded.
func readTimeout(rdb redisClient) time.Duration {
	var d time.Duration
	switch c := rdb.(type) {
	case *redis.ClusterClient:
		d = c.Options().ReadTimeout
	case interface{ Options() *redis.Options }:
		d = c.Options().ReadTimeout
	default:
		return 0
	}
	switch {
	case d == 0:
		return 3 * time.Second // go-redis's default
	case d < 0:
		return 0
	}
	return d
}

// noteRTT records the round trip of a command sent at sent: rtt keeps the
// longest, decaying by a quarter with each shorter one.
func (s *Store) noteRTT(sent time.Time) {
	d := int64(s.cfg.Clock.Now().Sub(sent))
	for {
		old := s.rtt.Load()
		v := max(d, old-old/4)
		if v == old || s.rtt.CompareAndSwap(old, v) {
			return
		}
	}
}

// rttCut is the longest recent round trip to Redis, bounded by the
// client's read timeout: a round trip that counted retries and
// reconnections is longer than any command's delay, which the read
// timeout bounds.
func (s *Store) rttCut() time.Duration {
	cut := time.Duration(s.rtt.Load())
	if s.rttCap > 0 {
		cut = min(cut, s.rttCap)
	}
	return cut
}

// Behind reports whether the last read of Redis found an older token than
// the copy in memory, which is kept.
func (s *Store) Behind() bool { return s.behind.Load() }

// adopt installs t, observed in Redis by a command sent at seen, as the
// copy in memory. Reads and writes run concurrently and their answers may
// come back in any order: a different token observed before the one held
// is older news and is dropped, so an answer that was slow to arrive never
// takes a replica back to the token it has just replaced. The same token
// seen again keeps the earlier of the two deadlines, so repeated reads
// never stretch it, and the higher generation.
func (s *Store) adopt(t Token, seen time.Time) {
	h := &held{Token: t, seen: seen}
	for {
		old := s.cur.Load()
		if old != nil && old.Value != t.Value && seen.Before(old.seen) {
			return
		}
		if old != nil && old.Value == t.Value {
			if !t.Deadline.Before(old.Deadline) && t.Generation <= old.Generation {
				return
			}
			if old.Deadline.Before(h.Deadline) {
				h.Deadline = old.Deadline
			}
			h.Generation = max(h.Generation, old.Generation)
			if old.seen.After(seen) {
				h.seen = old.seen
			}
		}
		if s.cur.CompareAndSwap(old, h) {
			if old == nil || old.Value != t.Value {
				s.log.Info("token adopted", "fingerprint", t.Fingerprint(), "generation", t.Generation,
					"expires_in", t.Remaining(s.cfg.Clock.Now()).Round(time.Second), "writer", t.Writer)
				s.noteReadiness()
			}
			return
		}
	}
}

// Write is a token offered for storage.
type Write struct {
	// LockValue is the full value of the writer's lock key (redislock's
	// token followed by its metadata).
	LockValue string
	// Value is the token.
	Value string
	// Deadline is when the token expires on the writer's local clock.
	Deadline time.Time
	// FetchedAt is when the writer received it from the upstream.
	FetchedAt time.Time
}

// Write stores w in Redis if the writer still holds the lock and w expires
// later than the stored token, then adopts it locally and publishes a
// change event, all in one step. It returns ErrFenced or ErrStale when
// refused, and wraps Redis errors otherwise.
func (s *Store) Write(ctx context.Context, w Write) (_ Token, err error) {
	defer func() { s.metrics.write(err) }()
	now := s.cfg.Clock.Now()
	ttl := w.Deadline.Sub(now)
	if err := checkValue(w.Value); err != nil {
		return Token{}, err
	}
	if ttl <= s.cfg.ServeMargin {
		return Token{}, fmt.Errorf("%w: %v left, not more than the serve margin %v",
			ErrInvalid, ttl.Round(time.Millisecond), s.cfg.ServeMargin)
	}
	age := now.Sub(w.FetchedAt)
	if w.FetchedAt.IsZero() || age < 0 {
		age = 0
	}
	t := Token{Value: w.Value, Deadline: w.Deadline, FetchedAt: now.Add(-age), Writer: s.cfg.Instance}
	stored, keyID := w.Value, ""
	if s.cfg.Keyring != nil {
		if keyID, stored, err = s.cfg.Keyring.seal(w.Value, s.cfg.Keys.Token); err != nil {
			return Token{}, fmt.Errorf("cache: encrypt token: %w", err)
		}
	}
	event, err := json.Marshal(tokenEvent{
		Message: Message{Type: MsgToken, From: s.cfg.Instance, Fingerprint: t.Fingerprint()},
		Tok:     &eventToken{Value: stored, KeyID: keyID, Writer: s.cfg.Instance, AgeMS: age.Milliseconds()},
	})
	if err == nil && !bytes.HasSuffix(event, []byte("}}")) {
		err = errors.New("it does not end with the token's object")
	}
	if err != nil {
		return Token{}, fmt.Errorf("cache: encode event: %w", err)
	}
	event = event[:len(event)-2] // the script closes it
	var known uint64
	if h := s.cur.Load(); h != nil {
		known = h.Generation
	}
	// Redis starts the token's time to live when the script runs, some
	// way into the round trip: the stored life is cut by the longest
	// recent round trip, so that no replica reading it dates it later
	// than it expires. The client may also send the script again after a
	// timeout or a broken connection (go-redis retries), with the same
	// time to live: the write gets no more than the client's read timeout
	// to be sent, and the stored life is cut by that whole budget.
	cut := s.rttCut()
	if s.rttCap > 0 && !plant.On(plant.WriteBudgetOff) {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, s.rttCap)
		defer cancel()
		cut = s.rttCap
	}
	storedTTL := max(ttl-cut, time.Millisecond)
	keys := []string{s.cfg.Keys.Token, s.cfg.Keys.Lock}
	args := []any{w.LockValue, stored, storedTTL.Milliseconds(), age.Milliseconds(), s.cfg.Instance,
		s.cfg.Keys.Events, string(event), keyID, s.events.publishCommand(), known}
	var res []any
	script := writeScript
	if plant.On(plant.FenceOff) {
		script = unfencedScript
	}
	if s.cfg.Replication.Replicas == 0 {
		res, err = script.Run(ctx, s.rdb, keys, args...).Slice()
	} else {
		var cmd *redis.Cmd
		err = s.replicated(ctx, func(p redis.Pipeliner) { cmd = script.Eval(ctx, p, keys, args...) })
		if cmd != nil && cmd.Err() != nil {
			err = cmd.Err()
		}
		if err == nil || errors.Is(err, errReplication) {
			res, _ = cmd.Slice()
		}
	}
	if err != nil && res == nil {
		return Token{}, fmt.Errorf("cache: write token: %w", err)
	}
	s.noteRTT(now)
	code, _ := res[0].(int64)
	switch code {
	case 1:
		if len(res) > 2 {
			g, _ := res[2].(int64)
			t.Generation = uint64(max(g, 0))
		}
		s.inRedis.Store(true)
		s.behind.Store(false)
		// Seen when the answer came: a read sent before then either ran
		// before the write (older news) or shows this token.
		s.adopt(t, s.cfg.Clock.Now())
		return t, nil
	case 0:
		return Token{}, ErrFenced
	case -1:
		return Token{}, ErrStale
	default:
		return Token{}, fmt.Errorf("cache: write token: unexpected answer %v", res)
	}
}

// maxValueBytes is the longest token the store accepts.
const maxValueBytes = 8 << 10

// checkValue refuses a token that could not be a credential: empty, over
// maxValueBytes, or holding a space or control character.
func checkValue(v string) error {
	switch {
	case v == "":
		return fmt.Errorf("%w: empty", ErrInvalid)
	case len(v) > maxValueBytes:
		return fmt.Errorf("%w: %d bytes, more than %d", ErrInvalid, len(v), maxValueBytes)
	}
	for i := 0; i < len(v); i++ {
		if c := v[i]; c <= ' ' || c == 0x7f {
			return fmt.Errorf("%w: a control or space character at byte %d", ErrInvalid, i)
		}
	}
	return nil
}

// Publish sends a control message to every replica, this one included.
func (s *Store) Publish(ctx context.Context, m Message) error {
	if m.From == "" {
		m.From = s.cfg.Instance
	}
	b, err := json.Marshal(m)
	if err != nil {
		return fmt.Errorf("cache: encode message: %w", err)
	}
	if err := s.events.publish(ctx, s.cfg.Keys.Events, b); err != nil {
		return fmt.Errorf("cache: publish: %w", err)
	}
	return nil
}

// Subscribe starts a subscription to the control messages Run receives.
// No message is dropped: each subscription queues its messages, without
// bound, until they are taken with Next, so a subscriber must keep taking
// them until it calls Close.
func (s *Store) Subscribe() *Subscription {
	sub := &Subscription{s: s, ready: make(chan struct{}, 1)}
	s.mu.Lock()
	s.subs[sub] = struct{}{}
	s.mu.Unlock()
	return sub
}

func (s *Store) broadcast(m Message) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for sub := range s.subs {
		sub.put(m)
	}
}

// Subscription is one subscriber's queue of control messages, in the order
// Run received them. Wait on Ready, then take messages with Next until it
// reports none. Its methods are safe for concurrent use.
type Subscription struct {
	s     *Store
	ready chan struct{} // holds one token while the queue may be non-empty

	mu     sync.Mutex
	queue  []Message // guarded by mu
	closed bool      // guarded by mu
}

// Ready returns a channel that receives when messages are waiting. One
// receive may stand for many messages: take them all with Next.
func (sub *Subscription) Ready() <-chan struct{} { return sub.ready }

// Next takes the oldest waiting message, or reports false when none waits.
func (sub *Subscription) Next() (Message, bool) {
	sub.mu.Lock()
	defer sub.mu.Unlock()
	if len(sub.queue) == 0 {
		return Message{}, false
	}
	m := sub.queue[0]
	sub.queue[0] = Message{}
	sub.queue = sub.queue[1:]
	return m, true
}

// Close ends the subscription and drops what it still holds.
func (sub *Subscription) Close() {
	sub.s.mu.Lock()
	delete(sub.s.subs, sub)
	sub.s.mu.Unlock()
	sub.mu.Lock()
	sub.closed, sub.queue = true, nil
	sub.mu.Unlock()
}

func (sub *Subscription) put(m Message) {
	sub.mu.Lock()
	if sub.closed {
		sub.mu.Unlock()
		return
	}
	sub.queue = append(sub.queue, m)
	sub.mu.Unlock()
	select {
	case sub.ready <- struct{}{}:
	default: // a token is already waiting
	}
}

// Run keeps the copy in memory current until ctx ends: it follows change
// events on the events channel, and reads Redis every PollInterval and
// after each (re)subscription. Redis being unreachable is logged, not
// returned: the copy in memory is kept. Run returns ctx's error.
func (s *Store) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	if s.ownEvents {
		wg.Go(func() { _ = s.events.Run(ctx) })
	}

	s.loadLogged(ctx)
	s.noteReadiness()

	// The catch-up poll runs beside the events: when Redis is slow, a poll
	// in flight must not hold back the read an event asks for. adopt keeps
	// their answers in order.
	wg.Go(func() { s.pollEvery(ctx) })

	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-s.route.ready:
		}
		for {
			d, ok := s.route.take()
			if !ok {
				break
			}
			if d.subscribed {
				// (Re)subscribed: events may have been missed meanwhile.
				s.metrics.subscription()
				s.log.Debug("subscribed to events", "channel", s.cfg.Keys.Events)
				s.loadLogged(ctx)
				continue
			}
			s.handle(ctx, d.payload)
		}
	}
}

// pollEvery polls every PollInterval until ctx ends. After a failed read,
// its own or the one an event asked for (readFailed), it also reads again
// sooner: an eighth of the interval after the failure, then a quarter,
// then half, the interval's own polls going on meanwhile. On a busy
// machine an event can arrive too late to be dated safely (adoptEvent)
// and the read it asks for can time out: waiting for the next poll would
// serve the previous token a whole interval longer.
func (s *Store) pollEvery(ctx context.Context) {
	every := s.cfg.PollInterval
	poll := s.cfg.Clock.NewTicker(every)
	defer poll.Stop()
	retry := s.cfg.Clock.NewTimer(every)
	retry.Stop()
	var backoff time.Duration // the last retry's wait; 0 while reads work
	failed := func() {
		if next := max(2*backoff, every/8); next < every {
			backoff = next
			retry.Reset(next)
		}
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.readFailed:
			if backoff == 0 {
				failed()
			}
			continue
		case <-poll.C():
		case <-retry.C():
		}
		if err := s.pollLogged(ctx); err != nil && ctx.Err() == nil {
			failed()
		} else {
			backoff = 0
			retry.Stop()
		}
		s.noteReadiness()
	}
}

func (s *Store) handle(ctx context.Context, payload string) {
	var ev tokenEvent
	if err := json.Unmarshal([]byte(payload), &ev); err != nil {
		s.log.Warn("ignoring malformed event", "error", err, "bytes", len(payload))
		return
	}
	if ev.Type == MsgToken && !s.adoptEvent(ev.Tok) && s.loadLogged(ctx) != nil {
		select {
		case s.readFailed <- struct{}{}:
		default: // pollEvery knows already
		}
	}
	s.broadcast(ev.Message)
}

// eventSkew is how far the two datings of a token event may disagree
// before the store reads Redis instead (adoptEvent).
const eventSkew = 250 * time.Millisecond

// adoptEvent adopts the token an event carries, without a read, when it
// can date it safely, and reports whether it did; when it did not, the
// caller reads Redis.
//
// The event holds when Redis expires the token and when it stored it, on
// Redis's clock; the last full read related Redis's clock to this
// replica's. Dated by that reading, the deadline is never late while
// Redis's clock is the one read: the event could not have been written
// before the reading, and a later token must expire later. Dated by the
// event's arrival (less the longest recent round trip), it is late by
// however long the event took to arrive beyond a round trip. The store
// takes the earlier of the two, and reads Redis instead when they
// disagree by more than eventSkew (the event was slow, or Redis's clock
// is another server's or was stepped: a failover), when Redis's clock
// ran faster than this replica's since the reading, or when the token is
// within the serve margin of its end. The next poll reads the token in
// full, which never moves its deadline later.
func (s *Store) adoptEvent(e *eventToken) bool {
	ref := s.clockRef.Load()
	if e == nil || e.Value == "" || e.ExpMS <= e.NowMS || ref == nil {
		return false
	}
	now := s.cfg.Clock.Now()
	ms := func(n int64) time.Duration { return time.Duration(n) * time.Millisecond }
	if ms(e.NowMS-ref.ms) > now.Sub(ref.sent)+time.Millisecond {
		return false // Redis's clock ran ahead of this replica's
	}
	// Redis's clock counts whole milliseconds: one more keeps it early.
	byRef := ref.sent.Add(ms(e.ExpMS-ref.ms) - time.Millisecond)
	byArrival := now.Add(ms(e.ExpMS-e.NowMS) - s.rttCut())
	if d := byArrival.Sub(byRef); d > eventSkew || d < -eventSkew {
		return false
	}
	t := Token{
		Value:      e.Value,
		Deadline:   byRef,
		FetchedAt:  ref.sent.Add(ms(e.NowMS - ref.ms - max(e.AgeMS, 0))),
		Writer:     e.Writer,
		Generation: uint64(max(e.Gen, 0)),
	}
	if byArrival.Before(byRef) {
		t.Deadline = byArrival
	}
	if t.Remaining(now) <= s.cfg.ServeMargin {
		return false
	}
	if e.KeyID != "" {
		if s.cfg.Keyring == nil {
			return false
		}
		v, err := s.cfg.Keyring.open(e.KeyID, e.Value, s.cfg.Keys.Token)
		if err != nil {
			return false
		}
		t.Value = v
	}
	if old := s.cur.Load(); old != nil && old.Value != t.Value && !plant.On(plant.AdoptOlder) &&
		(old.Generation > t.Generation || t.Deadline.Before(old.Deadline)) {
		return false // older than the token held: the read decides
	}
	s.inRedis.Store(true)
	s.sealErr.Store(nil)
	s.behind.Store(false)
	s.adopt(t, now)
	s.polled.Store(nil) // the next poll reads it in full
	return true
}

// Poll keeps the copy in memory current at the least cost to Redis: it
// reads the stored token's expiry (one HGET), and does a full Load only
// when that expiry differs from the one seen before the last successful
// Load, or Redis holds no token. Every write of a new token stores a later
// expiry, so an unchanged expiry means an unchanged token. It reports
// whether Redis held a token.
func (s *Store) Poll(ctx context.Context) (bool, error) {
	sent := s.cfg.Clock.Now()
	exp, err := s.rdb.HGet(ctx, s.cfg.Keys.Token, "exp").Result()
	switch {
	case err == nil:
		s.noteRTT(sent)
	case errors.Is(err, redis.Nil):
		s.noteRTT(sent)
		exp = ""
	case isWrongType(err):
		exp = "" // Load says what the key holds
	case err != nil:
		return false, fmt.Errorf("cache: poll token: %w", err)
	}
	if seen := s.polled.Load(); exp != "" && seen != nil && *seen == exp && s.inRedis.Load() && s.sealErr.Load() == nil {
		return true, nil
	}
	ok, err := s.Load(ctx)
	if ok && err == nil {
		s.polled.Store(&exp)
	} else {
		s.polled.Store(nil)
	}
	return ok, err
}

func (s *Store) loadLogged(ctx context.Context) error { return s.logRead(ctx, s.Load) }

func (s *Store) pollLogged(ctx context.Context) error { return s.logRead(ctx, s.Poll) }

// logRead runs read, logs its failure and returns it.
func (s *Store) logRead(ctx context.Context, read func(context.Context) (bool, error)) error {
	_, err := read(ctx)
	switch {
	case err == nil, ctx.Err() != nil:
	case errors.Is(err, errNoKey), errors.Is(err, errDecrypt):
		s.log.Error("the token in Redis cannot be decrypted by this replica: not serving it; check TOKENKEEPER_ENCRYPTION_KEYS", "error", err)
	case errors.Is(err, ErrWrongType):
		s.log.Error("the token key in Redis holds a foreign value; it is treated as no token and overwritten by the leader: "+
			"find what writes to it (keys under tokenkeeper:{...} belong to tokenkeeper)", "error", err)
	default:
		if t, ok := s.Current(); ok {
			s.log.Warn("reading token from Redis failed; serving the copy in memory", "error", err,
				"fingerprint", t.Fingerprint(), "servable_for", (t.Remaining(s.cfg.Clock.Now()) - s.cfg.ServeMargin).Round(time.Millisecond))
		} else {
			s.log.Warn("reading token from Redis failed, and this replica holds no servable token: not serving", "error", err)
		}
	}
	return err
}

// noteReadiness logs when this replica starts or stops holding a servable
// token, the moment /readyz changes its answer.
func (s *Store) noteReadiness() {
	t, ok := s.Current()
	if s.servable.Swap(ok) == ok {
		return
	}
	if ok {
		s.log.Info("ready: holding a servable token", "fingerprint", t.Fingerprint(),
			"servable_for", (t.Remaining(s.cfg.Clock.Now()) - s.cfg.ServeMargin).Round(time.Millisecond))
		return
	}
	held, _ := s.Held()
	s.log.Warn("not ready: no servable token held; reads answer 503 until a new token arrives",
		"held_fingerprint", held.Fingerprint(), "in_redis", s.InRedis())
}

// isWrongType reports whether err is Redis's WRONGTYPE error.
func isWrongType(err error) bool {
	return err != nil && strings.HasPrefix(err.Error(), "WRONGTYPE")
}
