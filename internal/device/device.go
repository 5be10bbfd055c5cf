// Package device mints per-device liveness tokens over one access token
// the fleet shares: a device asking on any replica gets the token stored
// for it in Redis until that token reaches the serve margin, then a new
// one; two replicas asked for the same new device at once make one
// upstream call (a short claim in Redis; the other waits for its result).
//
// Device ids never reach Redis or the logs in clear: each is replaced by
// a keyed digest (HMAC-SHA-256) under a secret the fleet keeps in Redis.
package device

import (
	"github.com/tokenkeeper/tokenkeeper/internal/tracing"
	"go.opentelemetry.io/otel/trace"

	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/tokenkeeper/tokenkeeper/internal/fault"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/tokenkeeper/tokenkeeper/cache"
	"github.com/tokenkeeper/tokenkeeper/clock"
	"github.com/tokenkeeper/tokenkeeper/internal/plant"
	"github.com/tokenkeeper/tokenkeeper/upstream"
)

// Minter.Token's errors wrap fault.ErrBadDevice (the device id is not 1
// to 128 of [A-Za-z0-9._:-]), fault.ErrUnavailable (no token can be
// minted now: the fleet holds no access token, or the upstream failed; a
// device that holds a token still gets it) or fault.ErrMintBudget (a mint
// budget is spent: the fleet's rate or the device's cap; the error is a
// *BudgetError, which says until when).

// BudgetError is a mint refused by a budget. It wraps fault.ErrMintBudget.
type BudgetError struct {
	// Fleet is true for the fleet-wide rate, false for the device's cap.
	Fleet bool
	// RetryAfter is when the budget allows a mint again.
	RetryAfter time.Duration
}

func (e *BudgetError) Error() string {
	which := "this device's hourly cap"
	if e.Fleet {
		which = "the fleet's mint rate"
	}
	return fmt.Sprintf("%v: %s; retry in %v", fault.ErrMintBudget, which, e.RetryAfter.Round(time.Millisecond))
}

func (e *BudgetError) Unwrap() error { return fault.ErrMintBudget }

// MaxIDLen is the longest device id.
const MaxIDLen = 128

// CheckID returns fault.ErrBadDevice, saying why, unless id is 1 to MaxIDLen of
// [A-Za-z0-9._:-]. The id itself is never repeated.
func CheckID(id string) error {
	switch {
	case id == "":
		return fmt.Errorf("%w: empty", fault.ErrBadDevice)
	case len(id) > MaxIDLen:
		return fmt.Errorf("%w: %d bytes, at most %d", fault.ErrBadDevice, len(id), MaxIDLen)
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if (c < 'a' || c > 'z') && (c < 'A' || c > 'Z') && (c < '0' || c > '9') && c != '.' && c != '_' && c != ':' && c != '-' {
			return fmt.Errorf("%w: byte %d is not one of A-Z a-z 0-9 . _ : -", fault.ErrBadDevice, i+1)
		}
	}
	return nil
}

// Redis is what a Minter needs of a go-redis client.
type Redis interface {
	redis.Scripter
	SetNX(ctx context.Context, key string, value any, expiration time.Duration) *redis.BoolCmd
	Get(ctx context.Context, key string) *redis.StringCmd
	MGet(ctx context.Context, keys ...string) *redis.SliceCmd
	Pipeline() redis.Pipeliner
}

// Config configures a Minter.
type Config struct {
	// Keys are the token's keys (cache.KeysFor): devices live under
	// Keys.Devices, the digest secret at Keys.DeviceKey.
	Keys cache.Keys
	// ServeMargin: a device's token is not handed out within this of its
	// expiry, and one minted with less left is refused. Required.
	ServeMargin time.Duration
	// Access returns the fleet's shared access token (the token's store).
	Access func() (cache.Token, bool)
	// RenewAccess asks for a new shared access token after the upstream
	// refused the current one (the leader fetches it).
	RenewAccess func(ctx context.Context) error
	// Mint asks the upstream for a new liveness token with access.
	Mint func(ctx context.Context, access string) (upstream.Token, error)
	// Claim is how long a replica minting for a device holds the device's
	// claim, and how long another waits for its result. Default: 10s.
	Claim time.Duration
	// Rate and Burst are the fleet-wide mint budget: mints per second,
	// with bursts of Burst (GCRA in Redis). Rate 0: no limit. Default
	// Burst: twice Rate, at least 1.
	Rate  float64
	Burst int
	// PerDevice caps the mints one device may cause per Window (default
	// one hour); 0: no cap.
	PerDevice int
	Window    time.Duration
	// Registerer receives the mint metrics (tokenkeeper_device_*).
	Registerer prometheus.Registerer
	// Clock is the time; default clock.Real().
	Clock clock.Clock
	// Logger receives one line per mint (device digest, token
	// fingerprint). Default: slog.Default().
	Logger *slog.Logger
	// TracerProvider receives a span of each mint (the device by its
	// digest's first 12 characters, never its id). Default: the global
	// one.
	TracerProvider trace.TracerProvider
}

// Minter hands out per-device tokens. Its methods are safe for concurrent
// use.
type Minter struct {
	rdb    Redis
	cfg    Config
	log    *slog.Logger
	tracer trace.Tracer

	met *metrics

	mu      sync.Mutex
	secret  []byte    // the fleet's digest key, once read
	checked time.Time // when secret was last checked against Redis

	fmu     sync.Mutex
	flights map[string]*flight     // by device digest
	unsaved map[string]cache.Token // tokens minted here and not stored yet, by device digest
	bg      context.Context        // ends when Run's context does: the work in the background stops
	stop    context.CancelFunc
	work    sync.WaitGroup // the flights and the stores of unsaved tokens
}

// New returns a Minter. It makes no call to Redis.
func New(rdb Redis, cfg Config) (*Minter, error) {
	switch {
	case rdb == nil:
		return nil, errors.New("device: nil Redis client")
	case cfg.Keys.Devices == "" || cfg.Keys.DeviceKey == "":
		return nil, errors.New("device: Keys.Devices and Keys.DeviceKey are required")
	case cfg.ServeMargin <= 0:
		return nil, errors.New("device: ServeMargin must be positive")
	case cfg.Access == nil || cfg.Mint == nil || cfg.RenewAccess == nil:
		return nil, errors.New("device: Access, RenewAccess and Mint are required")
	}
	if cfg.Claim == 0 {
		cfg.Claim = 10 * time.Second
	}
	if cfg.Rate < 0 || cfg.Burst < 0 || cfg.PerDevice < 0 || cfg.Window < 0 {
		return nil, errors.New("device: Rate, Burst, PerDevice and Window must not be negative")
	}
	if cfg.Burst == 0 {
		cfg.Burst = max(1, int(2*cfg.Rate))
	}
	if cfg.Window == 0 {
		cfg.Window = time.Hour
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.Real()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	met, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	bg, stop := context.WithCancel(context.Background())
	return &Minter{rdb: rdb, cfg: cfg, log: tracing.Logger(cfg.Logger), met: met, tracer: tracing.Tracer(cfg.TracerProvider),
		flights: map[string]*flight{}, unsaved: map[string]cache.Token{}, bg: bg, stop: stop}, nil
}

// Run returns when ctx ends, once the Minter's work in the background
// (asks under way, stores of tokens kept unsaved) has stopped; asks after
// that fail with fault.ErrUnavailable. Without Run, that work ends by
// itself (an ask with its timeouts, an unsaved token at its serve margin).
func (m *Minter) Run(ctx context.Context) error {
	<-ctx.Done()
	m.fmu.Lock()
	m.stop()
	m.fmu.Unlock()
	m.work.Wait()
	return ctx.Err()
}

//go:embed read.lua
var readLua string

//go:embed store.lua
var storeLua string

//go:embed release.lua
var releaseLua string

//go:embed budget.lua
var budgetLua string

//go:embed hold.lua
var holdLua string

var (
	readScript    = redis.NewScript(readLua)
	storeScript   = redis.NewScript(storeLua)
	timeScript    = redis.NewScript("return redis.call('TIME')")
	releaseScript = redis.NewScript(releaseLua)
	budgetScript  = redis.NewScript(budgetLua)
	holdScript    = redis.NewScript(holdLua)
)

// errStoredLate is a store that reached Redis too late to leave the token
// any life by the token's deadline on Redis's clock (redisReading.latest):
// not stored.
var errStoredLate = errors.New("the store reached Redis after the token's deadline")

// Token returns the device's token: the one stored for it while it has
// more than the serve margin left, else a new one, minted once for the
// whole fleet.
func (m *Minter) Token(ctx context.Context, device string) (cache.Token, error) {
	if err := CheckID(device); err != nil {
		return cache.Token{}, err
	}
	secret, err := m.digestKey(ctx)
	if err != nil {
		return cache.Token{}, fmt.Errorf("%w: %w", fault.ErrUnavailable, err)
	}
	digest := digestOf(secret, device)
	f := m.join(ctx, digest)
	if f == nil {
		return cache.Token{}, fmt.Errorf("%w: stopping", fault.ErrUnavailable)
	}
	select {
	case <-f.done:
		return f.tok, f.err
	case <-ctx.Done():
		return cache.Token{}, ctx.Err()
	}
}

// flight is the asks for one device under way on this replica: the first
// does the work, the rest wait for its answer.
type flight struct {
	done chan struct{} // closed when tok and err are set
	tok  cache.Token
	err  error
}

// join returns the flight of asks for the device digest under way on this
// replica, or starts one. Asks for one device on one replica share one
// answer, whatever happens to Redis meanwhile: a store that failed (the
// replica was frozen past its budget, Redis was cut) must not make the
// next ask waiting here mint the device a second token. The flight runs
// to its end even when the asks that wait for it give up, so that a token
// minted is stored; it stops when Run returns. join returns nil once Run
// has been told to stop.
func (m *Minter) join(ctx context.Context, digest string) *flight {
	m.fmu.Lock()
	defer m.fmu.Unlock()
	if f, ok := m.flights[digest]; ok {
		return f
	}
	if m.bg.Err() != nil {
		return nil
	}
	f := &flight{done: make(chan struct{})}
	m.flights[digest] = f
	fctx, cancel := m.detach(ctx)
	m.work.Go(func() {
		defer cancel()
		f.tok, f.err = m.token(fctx, digest)
		m.fmu.Lock()
		delete(m.flights, digest)
		m.fmu.Unlock()
		close(f.done)
	})
	return f
}

// detach returns a context for work in the background on behalf of ctx:
// it keeps ctx's values, not its end, and ends when Run stops the
// Minter's background work or cancel is called.
func (m *Minter) detach(ctx context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	stop := context.AfterFunc(m.bg, cancel)
	return ctx, func() {
		stop()
		cancel()
	}
}

// token returns the device's token, stored or minted (Token's work).
func (m *Minter) token(ctx context.Context, digest string) (cache.Token, error) {
	if tok, ok := m.unsavedFor(digest); ok {
		m.met.hits.Inc()
		return tok, nil
	}
	key := m.cfg.Keys.Devices + digest
	claim := key + ":claim"
	deadline := m.cfg.Clock.Now().Add(m.cfg.Claim)
	for {
		if tok, ok, err := m.stored(ctx, key); err != nil || ok {
			if ok {
				m.met.hits.Inc()
			}
			return tok, err
		}
		owner := rand.Text()
		won, err := m.rdb.SetNX(ctx, claim, owner, m.cfg.Claim).Result()
		if err != nil {
			return cache.Token{}, fmt.Errorf("%w: claim: %w", fault.ErrUnavailable, err)
		}
		won = won || plant.On(plant.DeviceClaimOff)
		if won {
			// The claim is kept alive while this replica works: a slow
			// Redis or upstream must not let it lapse, and another replica
			// mint too, before the token is stored.
			release := m.hold(ctx, claim, owner)
			// A replica that held the claim until just now may have stored
			// the device's token since it was read above.
			tok, ok, err := m.stored(ctx, key)
			if err == nil && !ok {
				tok, err = m.mint(ctx, mintOf{key: key, claim: claim, owner: owner, digest: digest})
			}
			release()
			releaseScript.Run(context.WithoutCancel(ctx), m.rdb, []string{claim}, owner)
			return tok, err
		}
		// Another replica is minting for this device: wait for its token.
		if !m.cfg.Clock.Now().Before(deadline) {
			return cache.Token{}, fmt.Errorf("%w: another replica's mint for this device did not finish within %v", fault.ErrUnavailable, m.cfg.Claim)
		}
		if err := m.pause(ctx); err != nil {
			return cache.Token{}, err
		}
	}
}

// hold keeps owner's claim from expiring until the returned func is
// called (which waits for the keeping to end): it sets the claim's time
// to live back to Claim every third of it. A claim that lapsed all the
// same (Redis unreachable for longer) and was taken over is left alone.
func (m *Minter) hold(ctx context.Context, claim, owner string) (release func()) {
	ctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan struct{})
	t := m.cfg.Clock.NewTicker(m.cfg.Claim / 3)
	go func() {
		defer close(done)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C():
				err := holdScript.Run(ctx, m.rdb, []string{claim}, owner, m.cfg.Claim.Milliseconds()).Err()
				if err != nil && ctx.Err() == nil {
					m.log.Debug("keeping a device's mint claim", "error", err)
				}
			}
		}
	}()
	return func() {
		cancel()
		<-done
	}
}

// stored returns the device's stored token if it may be handed out.
func (m *Minter) stored(ctx context.Context, key string) (cache.Token, bool, error) {
	sent := m.cfg.Clock.Now()
	res, err := readScript.Run(ctx, m.rdb, []string{key}).Slice()
	if errors.Is(err, redis.Nil) {
		return cache.Token{}, false, nil
	}
	if err != nil {
		return cache.Token{}, false, fmt.Errorf("%w: read: %w", fault.ErrUnavailable, err)
	}
	value, _ := res[0].(string)
	pttl, _ := res[1].(int64)
	tok := cache.Token{Value: value, Deadline: sent.Add(time.Duration(pttl) * time.Millisecond)}
	return tok, tok.ServableAt(m.cfg.Clock.Now(), m.cfg.ServeMargin), nil
}

// mint asks the upstream for the device's token with the shared access
// token, once more after renewing it if the upstream refuses it, and
// stores the token for its lifetime.
func (m *Minter) mint(ctx context.Context, d mintOf) (_ cache.Token, err error) {
	key, digest := d.key, d.digest
	ctx, span := m.tracer.Start(ctx, "tokenkeeper.device.mint", trace.WithAttributes(
		tracing.Token.String(tracing.TokenName(m.cfg.Keys.Token)), tracing.Device.String(digest[:12])))
	defer func() {
		tracing.Fail(span, err)
		span.End()
	}()
	access, ok := m.cfg.Access()
	if !ok {
		return cache.Token{}, fmt.Errorf("%w: the fleet holds no access token", fault.ErrUnavailable)
	}
	if err := m.spend(ctx, key); err != nil {
		return cache.Token{}, err
	}
	// Before the mint: what the store will bound the token's life by on
	// Redis's clock (redisReading.latest).
	var clk redisReading
	if !plant.On(plant.DeviceStoreUncut) && !plant.On(plant.DeviceStoreUnbounded) {
		if clk, err = m.readRedisClock(ctx, d); err != nil {
			return cache.Token{}, err
		}
	}
	start := m.cfg.Clock.Now()
	defer func() { m.met.latency.Observe(m.cfg.Clock.Now().Sub(start).Seconds()) }()
	ut, err := m.cfg.Mint(ctx, access.Value)
	if upstream.IsUnauthorized(err) {
		if access, err = m.renew(ctx, access); err != nil {
			return cache.Token{}, err
		}
		ut, err = m.cfg.Mint(ctx, access.Value)
	}
	if err != nil {
		m.met.mints.WithLabelValues("error").Inc()
		return cache.Token{}, fmt.Errorf("%w: %w", fault.ErrUnavailable, err)
	}
	m.met.mints.WithLabelValues("ok").Inc()
	tok := cache.Token{Value: ut.Value, Deadline: ut.Sent.Add(ut.Lifetime), FetchedAt: ut.Sent}
	span.SetAttributes(tracing.Fingerprint.String(tok.Fingerprint()))
	left := tok.Deadline.Sub(m.cfg.Clock.Now())
	if left <= m.cfg.ServeMargin {
		m.countMint(ctx)
		return cache.Token{}, fmt.Errorf("%w: the upstream's token has %v left, not more than the serve margin", fault.ErrUnavailable, left.Round(time.Millisecond))
	}
	theirs, ok := m.keep(ctx, d, tok, clk)
	m.countMint(ctx)
	if ok {
		m.log.InfoContext(ctx, "another replica minted this device's token meanwhile; handing out that one", "device", digest[:12],
			"caller", CallerFrom(ctx), "fingerprint", theirs.Fingerprint(), "discarded", tok.Fingerprint())
		return theirs, nil
	}
	m.log.InfoContext(ctx, "device token minted", "device", digest[:12], "caller", CallerFrom(ctx),
		"fingerprint", tok.Fingerprint(), "expires_in", left.Round(time.Second))
	return tok, nil
}

// mintOf is a mint for one device: its token's key, its claim and the
// claim's owner (the replica minting), and the device's digest.
type mintOf struct {
	key, claim, owner, digest string
}

// storeAttempts is how many times a new device token's store is sent at
// once before the replica gives up on it for a while: a store that
// failed (a connection reset, an answer later than its budget) is sent
// again at once, on another connection.
const storeAttempts = 3

// keep stores the device's new token in Redis for its lifetime. A token
// that cannot be stored is still good, but another ask would mint again:
// so the store is sent again, up to storeAttempts times while the
// device's claim is held, and then, if it still failed, the token is
// remembered on this replica (unsaved) and stored in the background. When
// the device holds another token to hand out (this replica lost its claim
// while frozen or slow, and another minted meanwhile), nothing is stored
// and keep returns that token, with ok.
func (m *Minter) keep(ctx context.Context, d mintOf, tok cache.Token, clk redisReading) (theirs cache.Token, ok bool) {
	var err error
	attempts := storeAttempts
	if plant.On(plant.DeviceStoreOnce) {
		attempts = 1
	}
	for attempt := 1; attempt <= attempts && ctx.Err() == nil; attempt++ {
		if theirs, ok, _, err = m.storeNew(ctx, d, tok, clk); err == nil {
			return theirs, ok
		}
		m.log.DebugContext(ctx, "storing a device's token", "device", d.digest[:12], "attempt", attempt, "error", err)
	}
	if plant.On(plant.DeviceStoreOnce) {
		return cache.Token{}, false
	}
	m.log.WarnContext(ctx, "a device's token could not be stored; this replica keeps it and tries again", "device", d.digest[:12], "error", err)
	m.remember(ctx, d, tok, clk)
	return cache.Token{}, false
}

// storeNew sends one store of the device's new token tok, and returns the
// token the device holds instead, if any (see keep). tried is false when
// tok has too little life left to be stored.
func (m *Minter) storeNew(ctx context.Context, d mintOf, tok cache.Token, clk redisReading) (theirs cache.Token, ok, tried bool, err error) {
	// Redis starts the stored life when the script runs, which may be as
	// late as the client's read timeout (a slow round trip, or go-redis
	// sending it again): each store gets that long to be sent, and the
	// stored life is cut by it, so that no replica reading it dates the
	// token late. A store that a slow link delivers later still, after
	// its sender gave up on it, is bounded by the token's deadline on
	// Redis's clock (redisReading.latest).
	budget := cache.ReadTimeout(m.rdb)
	if plant.On(plant.DeviceStoreUncut) {
		budget = 0
	}
	sent := m.cfg.Clock.Now()
	ttl := tok.Deadline.Sub(sent) - budget
	if ttl <= 0 {
		return cache.Token{}, false, false, nil // too short to store: the next ask mints again
	}
	if budget > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, budget)
		defer cancel()
	}
	held, left, err := m.store(ctx, d, tok.Value, ttl, clk.latest(tok))
	if err != nil {
		return cache.Token{}, false, true, err
	}
	theirs = cache.Token{Value: held, Deadline: sent.Add(left)}
	ok = held != "" && held != tok.Value && theirs.ServableAt(m.cfg.Clock.Now(), m.cfg.ServeMargin) && !plant.On(plant.DeviceClaimOff)
	return theirs, ok, true, nil
}

// redisReading is a reading of the clock of the Redis server holding a
// device's token: its time in Unix milliseconds, and when on this
// replica's clock the answer came, later than Redis read it.
type redisReading struct {
	ms int64
	at time.Time
}

// readRedisClock reads the clock of the Redis server holding the device's
// token (a script on its key: in Redis Cluster, the master the store goes
// to).
func (m *Minter) readRedisClock(ctx context.Context, d mintOf) (redisReading, error) {
	t, err := timeScript.Eval(ctx, m.rdb, []string{d.key}).Int64Slice()
	if err != nil {
		return redisReading{}, fmt.Errorf("%w: reading Redis's clock: %w", fault.ErrUnavailable, err)
	}
	if len(t) != 2 {
		return redisReading{}, fmt.Errorf("%w: reading Redis's clock: %d fields, want 2", fault.ErrUnavailable, len(t))
	}
	return redisReading{ms: t[0]*1000 + t[1]/1000, at: m.cfg.Clock.Now()}, nil
}

// latest returns tok's deadline on Redis's clock, by the reading: the
// latest the stored token may expire. Dated from the answer's arrival,
// it is early by up to the reading's round trip, never late.
//
// The store's budget alone does not keep the stored life within the
// token's: a slow link can deliver a store to Redis after its sender gave
// up on it, and Redis then starts the life as late (the simulator found
// it: writes paused for 6 s against a budget of 1 s). 0 (no bound)
// without a reading: with the planted bugs that store the token uncut or
// unbounded.
func (r redisReading) latest(tok cache.Token) int64 {
	if r.at.IsZero() {
		return 0
	}
	return r.ms + tok.Deadline.Sub(r.at).Milliseconds() - 1
}

// unsavedRetry is how long a replica waits before it sends again the store
// of a device token it keeps unsaved.
const unsavedRetry = time.Second

// remember keeps tok, minted for the device of d but not stored, on this
// replica: the device's asks here get it, and it is stored in the
// background, once a second while it can be handed out, until a store
// is answered.
func (m *Minter) remember(ctx context.Context, d mintOf, tok cache.Token, clk redisReading) {
	m.fmu.Lock()
	defer m.fmu.Unlock()
	if m.bg.Err() != nil {
		return
	}
	m.unsaved[d.digest] = tok
	ctx, cancel := m.detach(ctx)
	t := m.cfg.Clock.NewTimer(unsavedRetry)
	m.work.Go(func() {
		defer m.forget(d.digest, tok)
		defer cancel()
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C():
			}
			if !tok.ServableAt(m.cfg.Clock.Now(), m.cfg.ServeMargin) {
				return
			}
			_, _, tried, err := m.storeNew(ctx, d, tok, clk)
			if !tried || err == nil {
				if err == nil {
					m.log.InfoContext(ctx, "a device's token kept unsaved is stored", "device", d.digest[:12], "fingerprint", tok.Fingerprint())
				}
				return
			}
			m.log.DebugContext(ctx, "storing a device's token kept unsaved", "device", d.digest[:12], "error", err)
			t.Reset(unsavedRetry)
		}
	})
}

// forget drops the device's unsaved token if it is still tok.
func (m *Minter) forget(digest string, tok cache.Token) {
	m.fmu.Lock()
	defer m.fmu.Unlock()
	if m.unsaved[digest].Value == tok.Value {
		delete(m.unsaved, digest)
	}
}

// unsavedFor returns the token this replica minted for the device and
// keeps unsaved, while it may be handed out.
func (m *Minter) unsavedFor(digest string) (cache.Token, bool) {
	m.fmu.Lock()
	defer m.fmu.Unlock()
	tok, ok := m.unsaved[digest]
	if !ok || !tok.ServableAt(m.cfg.Clock.Now(), m.cfg.ServeMargin) {
		return cache.Token{}, false
	}
	return tok, true
}

// renew returns an access token other than refused, which the upstream
// refused: the one the fleet holds once another replica has renewed it,
// or one this replica asks the leader for. A short claim in Redis makes
// the replicas that meet the refusal at once ask the leader once, not
// once each.
func (m *Minter) renew(ctx context.Context, refused cache.Token) (cache.Token, error) {
	claim := m.cfg.Keys.Devices + "renew"
	deadline := m.cfg.Clock.Now().Add(m.cfg.Claim)
	for {
		if cur, ok := m.cfg.Access(); ok && cur.Value != refused.Value {
			return cur, nil
		}
		owner := rand.Text()
		won, err := m.rdb.SetNX(ctx, claim, owner, m.cfg.Claim).Result()
		if err != nil {
			return cache.Token{}, fmt.Errorf("%w: renewing the access token: %w", fault.ErrUnavailable, err)
		}
		if won {
			m.log.Info("the upstream refused the shared access token; asking the leader for a new one", "access", refused.Fingerprint())
			err := m.cfg.RenewAccess(ctx)
			releaseScript.Run(context.WithoutCancel(ctx), m.rdb, []string{claim}, owner)
			if err != nil {
				return cache.Token{}, fmt.Errorf("%w: renewing the access token: %w", fault.ErrUnavailable, err)
			}
			if cur, ok := m.cfg.Access(); ok && cur.Value != refused.Value {
				return cur, nil
			}
			return cache.Token{}, fmt.Errorf("%w: the fleet holds no new access token", fault.ErrUnavailable)
		}
		if !m.cfg.Clock.Now().Before(deadline) {
			return cache.Token{}, fmt.Errorf("%w: the access token was not renewed within %v", fault.ErrUnavailable, m.cfg.Claim)
		}
		if err := m.pause(ctx); err != nil {
			return cache.Token{}, err
		}
	}
}

// pause waits a moment before a replica looks again at what another one
// is doing (minting for a device, renewing the access token), or until
// ctx ends.
func (m *Minter) pause(ctx context.Context) error {
	t := m.cfg.Clock.NewTimer(25 * time.Millisecond)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C():
		return nil
	}
}

// mintedKey is the key counting the fleet's mints in the minute of t.
func (m *Minter) mintedKey(t time.Time) string {
	return fmt.Sprintf("%sminted:%d", m.cfg.Keys.Devices, t.Unix()/60)
}

// countMint adds a mint to this minute's fleet-wide count.
func (m *Minter) countMint(ctx context.Context) {
	key := m.mintedKey(m.cfg.Clock.Now())
	pipe := m.rdb.Pipeline()
	pipe.Incr(ctx, key)
	pipe.Expire(ctx, key, 3*time.Minute)
	if _, err := pipe.Exec(ctx); err != nil {
		m.log.Debug("counting a mint", "error", err)
	}
}

// MintsLastMinute is how many tokens the fleet minted in the last whole
// minute and this one so far, and the fleet's budget a minute (0: none):
// the status page shows one against the other.
func (m *Minter) MintsLastMinute(ctx context.Context) (minted, budget int, err error) {
	now := m.cfg.Clock.Now()
	vals, err := m.rdb.MGet(ctx, m.mintedKey(now.Add(-time.Minute)), m.mintedKey(now)).Result()
	if err != nil {
		return 0, 0, err
	}
	for _, v := range vals {
		if s, ok := v.(string); ok {
			var n int
			fmt.Sscan(s, &n)
			minted += n
		}
	}
	return minted, int(m.cfg.Rate * 60), nil
}

// spend takes one mint from the fleet's rate and the device's cap, or
// returns a *BudgetError.
func (m *Minter) spend(ctx context.Context, key string) error {
	if m.cfg.Rate == 0 && m.cfg.PerDevice == 0 {
		return nil
	}
	interval := time.Duration(0)
	if m.cfg.Rate > 0 {
		interval = time.Duration(float64(time.Second) / m.cfg.Rate)
	}
	tolerance := interval * time.Duration(m.cfg.Burst)
	res, err := budgetScript.Run(ctx, m.rdb, []string{m.cfg.Keys.Devices + "rate", key + ":mints"},
		interval.Milliseconds(), tolerance.Milliseconds(), m.cfg.PerDevice, m.cfg.Window.Milliseconds()).Slice()
	if err != nil {
		return fmt.Errorf("%w: budget: %w", fault.ErrUnavailable, err)
	}
	if ok, _ := res[0].(int64); ok == 1 {
		return nil
	}
	wait, _ := res[1].(int64)
	which, _ := res[2].(string)
	m.met.refusals.WithLabelValues(which).Inc()
	return &BudgetError{Fleet: which == "fleet", RetryAfter: time.Duration(wait) * time.Millisecond}
}

// digestKey returns the fleet's digest secret, creating it on first use.
func (m *Minter) digestKey(ctx context.Context) ([]byte, error) {
	now := m.cfg.Clock.Now()
	m.mu.Lock()
	secret, checked := m.secret, m.checked
	m.mu.Unlock()
	if secret != nil && (now.Sub(checked) < secretCheckEvery || plant.On(plant.DeviceSecretKept)) {
		return secret, nil
	}
	// A replica that holds the secret writes it back if Redis lost it (a
	// restart, a flush, an older snapshot), so that a replica started
	// since does not make a new one: replicas digesting a device with two
	// secrets would each mint it a token. Whichever secret Redis holds
	// then is the fleet's. (No lock is held over the round trips.)
	mine := rand.Text() + rand.Text()
	if secret != nil {
		mine = string(secret)
	}
	if _, err := m.rdb.SetNX(ctx, m.cfg.Keys.DeviceKey, mine, 0).Result(); err != nil {
		if secret != nil {
			return secret, nil // checked again at the next ask
		}
		return nil, fmt.Errorf("device key: %w", err)
	}
	v, err := m.rdb.Get(ctx, m.cfg.Keys.DeviceKey).Result()
	if err != nil {
		if secret != nil {
			return secret, nil
		}
		return nil, fmt.Errorf("device key: %w", err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.checked.After(now) {
		return m.secret, nil // a later check won
	}
	m.secret, m.checked = []byte(v), now
	return m.secret, nil
}

// secretCheckEvery is how often a replica checks the digest secret it
// holds against Redis's, at most.
const secretCheckEvery = 10 * time.Second

// callerKey carries who asked, for the mint's audit line.
type callerKey struct{}

// WithCaller returns ctx carrying the name of whoever asked (an API key's
// name), which the audit line of a mint records.
func WithCaller(ctx context.Context, name string) context.Context {
	return context.WithValue(ctx, callerKey{}, name)
}

// CallerFrom returns the name WithCaller put in ctx, or "".
func CallerFrom(ctx context.Context) string {
	name, _ := ctx.Value(callerKey{}).(string)
	return name
}

// digestOf is the keyed digest that stands for a device id.
func digestOf(secret []byte, device string) string {
	h := hmac.New(sha256.New, secret)
	h.Write([]byte(device))
	return hex.EncodeToString(h.Sum(nil))
}

// store keeps a device's token for ttl, with a span under the mint's,
// unless the device holds the token to hand out (see store.lua): then it
// returns that token and how long it has left.
func (m *Minter) store(ctx context.Context, d mintOf, value string, ttl time.Duration, latest int64) (held string, left time.Duration, err error) {
	ctx, span := tracing.Child(ctx, "tokenkeeper.device.store", trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(tracing.DBSystem.String("redis"), tracing.DBOperation.String("EVAL")))
	defer func() {
		tracing.Fail(span, err)
		span.End()
	}()
	// EVAL, not EVALSHA: one round trip whatever Redis's script cache
	// holds (a flushed cache costs EVALSHA's NOSCRIPT and then EVAL, which
	// a slow Redis can make longer than the store's budget, every time),
	// and a mint is rare enough that sending the script costs nothing.
	run := storeScript.Eval
	if plant.On(plant.DeviceStoreOnce) {
		run = storeScript.Run
	}
	res, err := run(ctx, m.rdb, []string{d.key, d.claim}, value, ttl.Milliseconds(), d.owner, m.cfg.ServeMargin.Milliseconds(), latest).Slice()
	if err != nil {
		return "", 0, err
	}
	if stored, _ := res[0].(int64); stored == 2 {
		return "", 0, errStoredLate
	} else if stored == 1 || len(res) < 3 {
		return "", 0, nil
	}
	held, _ = res[1].(string)
	ms, _ := res[2].(int64)
	return held, time.Duration(ms) * time.Millisecond, nil
}
