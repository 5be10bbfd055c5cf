package refresher

import (
	"context"
	"crypto/rand"
	"encoding/hex"
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
	"github.com/tokenkeeper/tokenkeeper/cache"
	"github.com/tokenkeeper/tokenkeeper/upstream"
)

// Errors of Refresh. Check them with errors.Is.
var (
	// ErrNoLeader means no replica holds the lock at the moment.
	ErrNoLeader = errors.New("refresher: no leader")
	// ErrRefreshFailed means the leader tried and failed; the wrapped
	// message says why.
	ErrRefreshFailed = errors.New("refresher: refresh failed")
	// ErrBadToken means the upstream answered a token that must not be
	// stored.
	ErrBadToken = errors.New("refresher: unusable token")
)

// Source fetches a new token from the upstream.
type Source interface {
	Token(ctx context.Context) (upstream.Token, error)
}

// RedisClient is what the refresher needs of a go-redis client.
type RedisClient interface {
	redis.Scripter
	Get(ctx context.Context, key string) *redis.StringCmd
	PTTL(ctx context.Context, key string) *redis.DurationCmd
}

// Config tunes a Refresher. Only Instance is required; zero values take
// the defaults below.
type Config struct {
	// Instance names this replica in the lock, logs and status. Required.
	Instance string
	// LockTTL is the leader lock's time to live. Default: 10s.
	LockTTL time.Duration
	// RenewEvery is how often the leader renews the lock. It must be
	// shorter than half of LockTTL. Default: LockTTL/3.
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
	// much of the token's life remains. Default: 15m.
	RefreshBefore time.Duration
	// Jitter is the most by which a refresh is moved earlier at random.
	// Default: RefreshBefore/10. Negative disables it.
	Jitter time.Duration
	// RetryMin and RetryMax bound the backoff between failed attempts.
	// Defaults: 1s and 60s.
	RetryMin, RetryMax time.Duration
	// Now is the clock. Default: time.Now.
	Now func() time.Time
	// Logger receives leadership and refresh logs. Default: slog.Default().
	Logger *slog.Logger
	// Version names the build in this replica's heartbeat (fleet.go).
	Version string
	// HeartbeatEvery is how often Heartbeat writes this replica's
	// heartbeat; one expires after three intervals. Default: 5s.
	HeartbeatEvery time.Duration
	// Registerer receives the refresher's metrics (metrics.go). Default:
	// none, no metrics are kept.
	Registerer prometheus.Registerer
}

// Refresher runs the election and, while leading, the refresh loop.
// Create it with New and start it with Run; its other methods are safe to
// call concurrently with Run.
type Refresher struct {
	cfg    Config
	rdb    RedisClient
	store  *cache.Store
	src    Source
	locker *redislock.Client
	log    *slog.Logger

	leading atomic.Bool

	mu          sync.Mutex
	lastRefresh time.Time
	nextRefresh time.Time
	lastErr     string
	fetches     uint64

	metrics *metrics   // nil without Config.Registerer
	fleet   fleetState // heartbeats and recent attempts (fleet.go)
}

// New returns a Refresher, or an error naming the first impossible setting.
func New(cfg Config, rdb RedisClient, store *cache.Store, src Source) (*Refresher, error) {
	if rdb == nil || store == nil || src == nil {
		return nil, errors.New("refresher: Redis client, store and source are required")
	}
	if cfg.Instance == "" {
		return nil, errors.New("refresher: instance id is required")
	}
	if cfg.LockTTL == 0 {
		cfg.LockTTL = 10 * time.Second
	}
	if cfg.LockTTL < 100*time.Millisecond {
		return nil, fmt.Errorf("refresher: lock TTL %v is shorter than 100ms", cfg.LockTTL)
	}
	if cfg.RenewEvery == 0 {
		cfg.RenewEvery = cfg.LockTTL / 3
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
	if cfg.RefreshBefore == 0 {
		cfg.RefreshBefore = 15 * time.Minute
	}
	if cfg.RefreshBefore < 0 {
		return nil, fmt.Errorf("refresher: refresh window %v is negative", cfg.RefreshBefore)
	}
	if cfg.Jitter == 0 {
		cfg.Jitter = cfg.RefreshBefore / 10
	}
	if cfg.Jitter < 0 {
		cfg.Jitter = 0
	}
	if cfg.RetryMin == 0 {
		cfg.RetryMin = time.Second
	}
	if cfg.RetryMax == 0 {
		cfg.RetryMax = time.Minute
	}
	if cfg.RetryMin <= 0 || cfg.RetryMax < cfg.RetryMin {
		return nil, fmt.Errorf("refresher: retry backoff must satisfy 0 < min (%v) <= max (%v)", cfg.RetryMin, cfg.RetryMax)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.HeartbeatEvery == 0 {
		// Every replica beats, so this sets the fleet's Redis load at rest:
		// one script (EVALSHA, TIME, HSET, PEXPIRE) per beat.
		cfg.HeartbeatEvery = 5 * time.Second
	}
	if cfg.HeartbeatEvery < 10*time.Millisecond {
		return nil, fmt.Errorf("refresher: heartbeat interval %v is shorter than 10ms", cfg.HeartbeatEvery)
	}
	r := &Refresher{
		cfg:    cfg,
		rdb:    rdb,
		store:  store,
		src:    src,
		locker: redislock.New(rdb),
		log:    cfg.Logger.With("instance", cfg.Instance),
	}
	var err error
	if r.metrics, err = newMetrics(cfg.Registerer, r); err != nil {
		return nil, err
	}
	return r, nil
}

// IsLeader reports whether this replica leads now.
func (r *Refresher) IsLeader() bool { return r.leading.Load() }

// Fetches returns how many tokens this replica fetched from the upstream.
func (r *Refresher) Fetches() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.fetches
}

// Run takes part in the election until ctx ends, leading whenever it holds
// the lock. On return it has released the lock if it held it. It returns
// ctx's error.
func (r *Refresher) Run(ctx context.Context) error {
	msgs, stop := r.store.Subscribe()
	defer stop()
	wake := time.NewTimer(0)
	defer wake.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-wake.C:
		case m := <-msgs:
			// A released lock is worth trying at once; anything else waits
			// for the timer.
			if m.Type != cache.MsgReleased {
				continue
			}
		}
		if err := r.store.Unreadable(); err != nil {
			// Leading would replace the token the rest of the fleet reads.
			r.log.Debug("not standing for election: the stored token is unreadable here", "error", err)
			wake.Reset(r.cfg.ElectEvery)
			continue
		}
		if d := r.lockHeldFor(ctx); d > 0 {
			// Another replica leads: its lock cannot come free before it
			// expires, unless released, which is announced. Sleeping until
			// then costs Redis one PTTL per lock period instead of a
			// failed Obtain every ElectEvery.
			wake.Reset(d)
			continue
		}
		lock, err := r.locker.Obtain(ctx, r.store.Keys().Lock, r.cfg.LockTTL, &redislock.Options{Metadata: r.cfg.Instance})
		switch {
		case err == nil:
			r.lead(ctx, lock)
		case errors.Is(err, redislock.ErrNotObtained), ctx.Err() != nil:
		default:
			r.log.Debug("election: cannot reach Redis", "error", err)
		}
		wake.Reset(r.cfg.ElectEvery)
	}
}

// lockHeldFor returns how long the lock has left when another replica
// holds it (a millisecond more, to wake after it expires; at most the lock
// TTL), or 0 when it is free or its state is unknown.
func (r *Refresher) lockHeldFor(ctx context.Context) time.Duration {
	d, err := r.rdb.PTTL(ctx, r.store.Keys().Lock).Result()
	if err != nil || d <= 0 { // -2: no lock; -1: no expiry, left to Obtain
		return 0
	}
	return min(d+time.Millisecond, r.cfg.LockTTL)
}

// lead runs leader-only work under a context that ends when the lock is
// lost or ctx ends, then releases the lock if ctx ended.
func (r *Refresher) lead(ctx context.Context, lock *redislock.Lock) {
	start := r.cfg.Now()
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	r.leading.Store(true)
	r.log.Info("leadership acquired")
	r.metrics.leadership(changeAcquired)

	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		r.renew(lctx, cancel, lock)
	}()
	reason := r.work(lctx, lock.Token()+lock.Metadata())
	cancel()
	wg.Wait()
	r.leading.Store(false)
	r.metrics.follower()

	if ctx.Err() != nil {
		// Shutting down: hand over at once instead of letting the lock expire.
		rctx, rcancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer rcancel()
		if err := lock.Release(rctx); err != nil && !errors.Is(err, redislock.ErrLockNotHeld) {
			r.log.Warn("releasing the lock failed; another replica leads once it expires", "error", err)
		} else {
			if err := r.store.Publish(rctx, cache.Message{Type: cache.MsgReleased}); err != nil {
				r.log.Debug("announcing the release failed", "error", err)
			}
			reason = "released on shutdown"
		}
	}
	r.log.Info("leadership ended", "reason", reason, "led_for", r.cfg.Now().Sub(start).Round(time.Millisecond))
	r.metrics.leadership(changeOf(reason))
}

// renew keeps the lock alive and cancels leadership when a renewal fails.
// Each attempt is bounded by RenewEvery, so leadership ends no later than
// 2*RenewEvery after the last good renewal: before the lock can expire.
func (r *Refresher) renew(ctx context.Context, cancel context.CancelFunc, lock *redislock.Lock) {
	tick := time.NewTicker(r.cfg.RenewEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		rctx, rcancel := context.WithTimeout(ctx, r.cfg.RenewEvery)
		err := lock.Refresh(rctx, r.cfg.LockTTL, nil)
		rcancel()
		if err != nil {
			if ctx.Err() == nil {
				r.log.Warn("lock renewal failed; stepping down", "error", err)
				r.setErr(fmt.Errorf("lock renewal: %w", err))
			}
			cancel()
			return
		}
	}
}

// leaderState is the refresh loop's memory, owned by work.
type leaderState struct {
	lockValue string
	attempt   int                // failed attempts in a row
	retryAt   time.Time          // no attempt before this
	unsaved   *upstream.Token    // fetched but not yet stored
	pending   []string           // refresh request ids to answer
	jitter    map[string]float64 // per token value: fraction of Jitter
	upstream  time.Duration      // time of the last attempt's upstream call; 0 if none
}

// work is the leader's loop. It returns why leadership ended.
func (r *Refresher) work(ctx context.Context, lockValue string) string {
	msgs, stop := r.store.Subscribe()
	defer stop()
	check := time.NewTicker(r.cfg.CheckEvery)
	defer check.Stop()
	timer := time.NewTimer(0)
	defer timer.Stop()

	st := &leaderState{lockValue: lockValue, jitter: make(map[string]float64)}
	defer r.abandon(ctx, st)
	if _, err := r.store.Load(ctx); err != nil && ctx.Err() == nil {
		r.log.Warn("leader cannot read Redis", "error", err)
	}
	for {
		if err := r.reseed(ctx, st); errors.Is(err, cache.ErrFenced) {
			return "fenced"
		}
		due := r.due(st)
		r.mu.Lock()
		r.nextRefresh = due
		r.mu.Unlock()
		timer.Reset(max(due.Sub(r.cfg.Now()), 0))

		select {
		case <-ctx.Done():
			return "lock lost"
		case <-check.C:
			// The store's own poll keeps InRedis current; reseed, at the
			// top of the loop, acts on it. No Redis command of its own.
			continue
		case m := <-msgs:
			if m.Type == cache.MsgRefresh {
				r.log.Info("refresh requested", "by", m.From)
				st.pending = append(st.pending, m.ID)
			}
			continue
		case <-timer.C:
		}
		if r.cfg.Now().Before(due) {
			continue
		}
		if err := r.attempt(ctx, st); errors.Is(err, cache.ErrFenced) {
			return "fenced"
		}
	}
}

// abandon answers the refresh requests still pending when leadership ends,
// so that no requester waits for an answer that will never come; it may
// ask again, and the next leader will serve it.
func (r *Refresher) abandon(ctx context.Context, st *leaderState) {
	if len(st.pending) == 0 {
		return
	}
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
	defer cancel()
	for _, id := range st.pending {
		m := cache.Message{Type: cache.MsgRefreshed, ID: id, Error: "leadership ended before the refresh was done; ask again"}
		if err := r.store.Publish(pctx, m); err != nil {
			r.log.Debug("answering a refresh request failed", "error", err)
		}
	}
	st.pending = nil
}

// due returns when the next fetch should happen.
func (r *Refresher) due(st *leaderState) time.Time {
	now := r.cfg.Now()
	var at time.Time
	tok, ok := r.store.Held()
	switch {
	case len(st.pending) > 0, !ok, !tok.ServableAt(now, r.store.ServeMargin()):
		at = now
	default:
		f, seen := st.jitter[tok.Value]
		if !seen {
			clear(st.jitter) // keep one entry: the current token
			f = mrand.Float64()
			st.jitter[tok.Value] = f
		}
		at = NextRefresh(tok, r.cfg.RefreshBefore, time.Duration(f*float64(r.cfg.Jitter)), r.store.ServeMargin())
	}
	if at.Before(st.retryAt) {
		at = st.retryAt
	}
	return at
}

// NextRefresh returns when a token should be refreshed: refreshBefore plus
// jitter before its deadline, but never before half of its servable life
// has passed, so a token that lives shorter than the window does not cause
// a fetch loop.
func NextRefresh(tok cache.Token, refreshBefore, jitter, margin time.Duration) time.Time {
	at := tok.Deadline.Add(-refreshBefore - jitter)
	if !tok.FetchedAt.IsZero() {
		floor := tok.FetchedAt.Add(tok.Deadline.Sub(tok.FetchedAt.Add(margin)) / 2)
		if at.Before(floor) {
			at = floor
		}
	}
	return at
}

// Backoff returns the wait after the n-th failure in a row (n >= 1): a
// random duration in [min, min(max, min*2^(n-1))], and never less than
// retryAfter (capped at 10 minutes).
func Backoff(n int, minWait, maxWait, retryAfter time.Duration) time.Duration {
	ceiling := maxWait
	if n < 31 {
		if c := minWait << (n - 1); c > 0 && c < maxWait {
			ceiling = c
		}
	}
	d := minWait
	if ceiling > minWait {
		d += mrand.N(ceiling - minWait + 1)
	}
	return max(d, min(retryAfter, 10*time.Minute))
}

// reseed writes the leader's copy back when Redis has lost the token.
func (r *Refresher) reseed(ctx context.Context, st *leaderState) error {
	if r.store.InRedis() {
		return nil
	}
	tok, ok := r.store.Current()
	if !ok {
		return nil
	}
	_, err := r.store.Write(ctx, cache.Write{LockValue: st.lockValue, Value: tok.Value, Deadline: tok.Deadline, FetchedAt: tok.FetchedAt})
	switch {
	case err == nil:
		r.log.Info("token re-seeded into Redis from memory", "fingerprint", tok.Fingerprint(),
			"expires_in", tok.Remaining(r.cfg.Now()).Round(time.Second))
	case errors.Is(err, cache.ErrStale):
		_, _ = r.store.Load(ctx)
	case ctx.Err() == nil:
		r.log.Debug("re-seeding failed", "error", err)
	}
	return err
}

// attempt fetches (or reuses an unsaved) token and stores it, recording
// the outcome, backing off on failure and answering pending requests.
func (r *Refresher) attempt(ctx context.Context, st *leaderState) error {
	start := r.cfg.Now()
	tok, stored, err := r.fetchAndStore(ctx, st)
	if ctx.Err() != nil && !errors.Is(err, cache.ErrFenced) {
		return ctx.Err()
	}
	took := r.cfg.Now().Sub(start)
	outcome := outcomeOf(err, stored)
	reply := cache.Message{Type: cache.MsgRefreshed}
	if err != nil {
		st.attempt++
		wait := Backoff(st.attempt, r.cfg.RetryMin, r.cfg.RetryMax, upstream.RetryAfter(err))
		if !upstream.IsRetryable(err) && !errors.Is(err, cache.ErrFenced) {
			wait = max(wait, r.cfg.RetryMax)
		}
		st.retryAt = r.cfg.Now().Add(wait)
		r.setErr(err)
		held, servable := r.store.Current()
		r.log.Warn("refresh failed", "outcome", outcome, "error", err, "attempt", st.attempt, "retry_in", wait.Round(time.Millisecond),
			"took", took.Round(time.Millisecond), "upstream_took", st.upstream.Round(time.Millisecond),
			"serving", servable, "fingerprint", held.Fingerprint())
		reply.Error = err.Error()
	} else {
		st.attempt = 0
		st.retryAt = time.Time{}
		r.mu.Lock()
		r.lastRefresh = r.cfg.Now()
		r.lastErr = ""
		r.mu.Unlock()
		if stored {
			r.log.Info("token refreshed", "outcome", outcome, "fingerprint", tok.Fingerprint(), "took", took.Round(time.Millisecond),
				"upstream_took", st.upstream.Round(time.Millisecond), "expires_in", tok.Remaining(r.cfg.Now()).Round(time.Second))
		} else {
			r.log.Info("refresh superseded: another leader stored a later token", "outcome", outcome,
				"fingerprint", tok.Fingerprint(), "took", took.Round(time.Millisecond), "expires_in", tok.Remaining(r.cfg.Now()).Round(time.Second))
		}
		reply.Fingerprint = tok.Fingerprint()
	}
	a := Attempt{At: r.cfg.Now().Round(0), By: r.cfg.Instance, Outcome: outcome, Took: took, Upstream: st.upstream, Error: reply.Error}
	if err == nil {
		a.Fingerprint, a.ExpiresAt = tok.Fingerprint(), r.cfg.Now().Add(tok.Remaining(r.cfg.Now())).Round(0)
	}
	r.recordAttempt(ctx, a, st.attempt)
	for _, id := range st.pending {
		reply.ID = id
		if perr := r.store.Publish(ctx, reply); perr != nil {
			r.log.Debug("answering a refresh request failed", "error", perr)
		}
	}
	st.pending = st.pending[:0]
	return err
}

// fetchAndStore returns the token now in Redis, and whether this call
// stored it.
func (r *Refresher) fetchAndStore(ctx context.Context, st *leaderState) (cache.Token, bool, error) {
	margin := r.store.ServeMargin()
	st.upstream = 0
	if st.unsaved != nil && r.cfg.Now().Before(st.unsaved.Received.Add(st.unsaved.Lifetime-margin)) {
		r.log.Info("storing the token fetched earlier instead of fetching another")
	} else {
		st.unsaved = nil
		began := r.cfg.Now()
		up, err := r.src.Token(ctx)
		st.upstream = r.cfg.Now().Sub(began)
		if err != nil {
			return cache.Token{}, false, err
		}
		r.mu.Lock()
		r.fetches++
		r.mu.Unlock()
		if up.Received.IsZero() {
			up.Received = r.cfg.Now()
		}
		// What must never be stored is refused by the store itself.
		st.unsaved = &up
	}
	up := st.unsaved
	t, err := r.store.Write(ctx, cache.Write{
		LockValue: st.lockValue,
		Value:     up.Value,
		Deadline:  up.Received.Add(up.Lifetime),
		FetchedAt: up.Received,
	})
	switch {
	case err == nil:
		st.unsaved = nil
		return t, true, nil
	case errors.Is(err, cache.ErrStale):
		// Someone stored a later token: nothing to do but adopt it.
		st.unsaved = nil
		if _, lerr := r.store.Load(ctx); lerr != nil {
			return cache.Token{}, false, lerr
		}
		held, _ := r.store.Held()
		return held, false, nil
	case errors.Is(err, cache.ErrInvalid):
		st.unsaved = nil
		return cache.Token{}, false, &upstream.Error{Op: "liveness", Retryable: true, Err: fmt.Errorf("%w: %w", ErrBadToken, err)}
	default:
		return cache.Token{}, false, err
	}
}

func (r *Refresher) setErr(err error) {
	r.mu.Lock()
	r.lastErr = err.Error()
	r.mu.Unlock()
}

// Status is the fleet as this replica sees it. It never holds the token.
type Status struct {
	Instance         string
	Leader           string // instance id of the lock holder; "" when none or unknown
	IsLeader         bool
	Ready            bool // this replica holds a servable token
	TokenFingerprint string
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
	now := r.cfg.Now()
	s := Status{Instance: r.cfg.Instance, IsLeader: r.IsLeader()}
	if tok, ok := r.store.Held(); ok {
		s.TokenFingerprint = tok.Fingerprint()
		s.ExpiresAt = now.Add(tok.Remaining(now)).Round(0)
		s.LastRefresh = tok.FetchedAt.Round(0)
		s.NextRefresh = NextRefresh(tok, r.cfg.RefreshBefore, 0, r.store.ServeMargin()).Round(0)
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

// Refresh asks the leader, whichever replica it is, to fetch a new token
// now, and waits until it is stored and held by this replica or ctx ends.
// It returns ErrNoLeader when no replica leads, and ErrRefreshFailed when
// the leader's attempt failed.
func (r *Refresher) Refresh(ctx context.Context) (cache.Token, error) {
	leader, err := r.Leader(ctx)
	if err != nil {
		return cache.Token{}, err
	}
	if leader == "" {
		return cache.Token{}, ErrNoLeader
	}
	var raw [8]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return cache.Token{}, err
	}
	id := hex.EncodeToString(raw[:])
	msgs, stop := r.store.Subscribe()
	defer stop()
	if err := r.store.Publish(ctx, cache.Message{Type: cache.MsgRefresh, ID: id}); err != nil {
		return cache.Token{}, err
	}
	for {
		select {
		case <-ctx.Done():
			return cache.Token{}, ctx.Err()
		case m := <-msgs:
			if m.Type != cache.MsgRefreshed || m.ID != id {
				continue
			}
			if m.Error != "" {
				return cache.Token{}, fmt.Errorf("%w: %s", ErrRefreshFailed, m.Error)
			}
			if tok, ok := r.store.Held(); ok && tok.Fingerprint() == m.Fingerprint {
				return tok, nil
			}
			if _, err := r.store.Load(ctx); err != nil {
				return cache.Token{}, err
			}
			tok, _ := r.store.Held()
			return tok, nil
		}
	}
}
