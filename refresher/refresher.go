package refresher

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bsm/redislock"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/tokenkeeper/tokenkeeper/cache"
	"github.com/tokenkeeper/tokenkeeper/clock"
	"github.com/tokenkeeper/tokenkeeper/internal/plant"
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
	// ErrUnavailable means Redis could not be reached to ask the leader.
	ErrUnavailable = errors.New("refresher: Redis unavailable")
)

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

// Config tunes a Refresher. Only Instance is required; zero values take
// the defaults below.
type Config struct {
	// Instance names this replica in the lock, logs and status. Required.
	Instance string
	// LockTTL is the leader lock's time to live. Default: 10s.
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
	// much of the token's life remains. Default: 15m.
	RefreshBefore time.Duration
	// Jitter is the most by which a refresh is moved earlier at random.
	// Default: RefreshBefore/10. Negative disables it.
	Jitter time.Duration
	// RetryMin and RetryMax bound the backoff between failed attempts.
	// Defaults: 1s and 60s. The backoff is the fleet's: a new leader goes on
	// from the failures its predecessors recorded in Redis.
	RetryMin, RetryMax time.Duration
	// HandoverAfter is how many refresh attempts in a row may fail (the
	// upstream failing, refusing or answering garbage) before the leader
	// hands leadership over: it releases the lock so that another replica,
	// which may reach the upstream, tries. An attempt refused for good
	// (400, 401 or 403 on sign-on: this replica's credentials) hands over
	// at once. Default: 3.
	HandoverAfter int
	// HandoverCooldown is how long a replica that handed over stays out of
	// elections, so that it is not re-elected ahead of one that has not
	// failed; it stands again sooner when the lock stays free for a lock
	// TTL (no other replica wants it). Default: 1m.
	HandoverCooldown time.Duration
	// Clock is the time the election, the refresh loop and the heartbeat
	// run on: dates and every timer. Default: clock.Real(). The timeouts
	// of single Redis calls (RedisTimeout and the like) stay on Go's own
	// timers, through context.WithTimeout: they bound I/O against the
	// Redis client's own socket timeouts, which no Clock moves, and date
	// nothing. A lock renewal's timeout is the lease left as the Clock
	// counts it.
	Clock clock.Clock
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
}

// MinLockTTL is the shortest lock TTL: a renewal gets half of it, a round
// trip to Redis and a retry included.
const MinLockTTL = 300 * time.Millisecond

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
	if cfg.Instance == "" {
		return nil, errors.New("refresher: instance id is required")
	}
	if cfg.LockTTL == 0 {
		cfg.LockTTL = 10 * time.Second
	}
	if cfg.LockTTL < MinLockTTL {
		return nil, fmt.Errorf("refresher: lock TTL %v is shorter than %v", cfg.LockTTL, MinLockTTL)
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
	if cfg.HandoverAfter == 0 {
		cfg.HandoverAfter = 3
	}
	if cfg.HandoverAfter < 0 {
		return nil, fmt.Errorf("refresher: handover after %d failures must be at least 1", cfg.HandoverAfter)
	}
	if cfg.HandoverCooldown == 0 {
		cfg.HandoverCooldown = time.Minute
	}
	if cfg.HandoverCooldown < 0 {
		return nil, fmt.Errorf("refresher: handover cooldown %v is negative", cfg.HandoverCooldown)
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.Real()
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
		stepDown: make(chan struct{}, 1),
		cfg:      cfg,
		rdb:      rdb,
		store:    store,
		src:      src,
		locker:   redislock.New(rdb),
		log:      cfg.Logger.With("instance", cfg.Instance),
	}
	var err error
	if r.metrics, err = newMetrics(cfg.Registerer, r); err != nil {
		return nil, err
	}
	return r, nil
}

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

// Run takes part in the election until ctx ends, leading whenever it holds
// the lock. On return it has released the lock if it held it. It returns
// ctx's error.
func (r *Refresher) Run(ctx context.Context) error {
	sub := r.store.Subscribe()
	defer sub.Close()
	wake := r.cfg.Clock.NewTimer(0)
	defer wake.Stop()
	var freeSince time.Time // while aside: since when the lock has been seen free
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-wake.C():
		case <-sub.Ready():
			// A released lock is worth trying at once; anything else waits
			// for the timer.
			if !drainFor(sub, msgReleased) {
				continue
			}
		}
		if err := r.store.Unreadable(); err != nil {
			// Leading would replace the token the rest of the fleet reads.
			r.log.Debug("not standing for election: the stored token is unreadable here", "error", err)
			wake.Reset(r.cfg.ElectEvery)
			continue
		}
		held := r.lockHeldFor(ctx)
		if held > 0 {
			// Another replica leads: its lock cannot come free before it
			// expires, unless released, which is announced. Sleeping until
			// then costs Redis one PTTL per lock period instead of a
			// failed Obtain every ElectEvery.
			freeSince = time.Time{}
			wake.Reset(held)
			continue
		}
		if now := r.cfg.Clock.Now(); now.Before(r.asideTill()) {
			// Handed over recently: let the others take the lock, and stand
			// again only when none has for a lock TTL.
			if freeSince.IsZero() {
				freeSince = now
			}
			if now.Sub(freeSince) < r.cfg.LockTTL {
				wake.Reset(r.cfg.ElectEvery)
				continue
			}
			r.log.Info("no other replica took the lock; standing for election again")
		}
		freeSince = time.Time{}
		value, err := newLockValue(r.cfg.Instance)
		if err != nil {
			return err
		}
		sent := r.cfg.Clock.Now()
		lock, err := r.locker.Obtain(ctx, r.store.Keys().Lock, r.cfg.LockTTL, &redislock.Options{Token: value})
		switch {
		case err == nil:
			r.setAside(time.Time{})
			r.lead(ctx, lock, sent)
		case errors.Is(err, redislock.ErrNotObtained), ctx.Err() != nil:
		default:
			r.log.Debug("election: cannot reach Redis", "error", err)
		}
		wake.Reset(r.cfg.ElectEvery)
	}
}

func (r *Refresher) asideTill() time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.asideUntil
}

func (r *Refresher) setAside(until time.Time) {
	r.mu.Lock()
	r.asideUntil = until
	r.mu.Unlock()
}

// drainFor takes every message waiting in sub and reports whether one was
// of type typ.
func drainFor(sub *cache.Subscription, typ string) bool {
	found := false
	for m, ok := sub.Next(); ok; m, ok = sub.Next() {
		found = found || m.Type == typ
	}
	return found
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

// endReason says why leadership ended, as logged and counted (changeOf).
type endReason string

// Why leadership ends.
const (
	endFenced     endReason = "fenced"
	endLost       endReason = "lock lost"
	endReleased   endReason = "released on shutdown"
	endHandedOver endReason = "handed over"
	endMaster     endReason = "Redis master changed"
	endStepped    endReason = "stepped down to spread leadership"
)

// lead runs leader-only work under a context that ends when the lock is
// lost or ctx ends, then releases the lock if ctx ended or this replica
// hands over. sent is when the Obtain that took the lock was sent.
func (r *Refresher) lead(ctx context.Context, lock *redislock.Lock, sent time.Time) {
	start := r.cfg.Clock.Now()
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var master string // the run id of the master the lock was obtained on; "" when not watched or unknown
	if r.cfg.WatchMaster {
		var err error
		if master, err = r.masterID(ctx); err != nil {
			r.log.Warn("cannot read the Redis master's run id: this term is not watched for a failover", "error", err)
		}
		if master != "" && r.notTheMaster(ctx, master) {
			r.releaseQuietly(ctx, lock)
			return
		}
	}
	if r.cfg.Replication.Replicas > 0 {
		if err := r.replicateLock(ctx, lock); errors.Is(err, redislock.ErrNotObtained) {
			r.log.Warn("the lock was lost right after the election; not leading")
			return
		}
	}
	r.leading.Store(true)
	r.log.Info("leadership acquired")
	r.metrics.leadership(changeAcquired)

	var wg sync.WaitGroup
	var masterChanged atomic.Bool
	wg.Add(1)
	go func() {
		defer wg.Done()
		if r.renew(lctx, cancel, lock, sent, master) {
			masterChanged.Store(true)
		}
	}()
	reason := r.work(lctx, lock.Token()+lock.Metadata())
	cancel()
	wg.Wait()
	r.leading.Store(false)
	r.metrics.follower()
	if masterChanged.Load() {
		reason = endMaster
	}

	if ctx.Err() != nil && !plant.On(plant.NoReleaseOnStop) || reason == endHandedOver || reason == endStepped || reason == endMaster {
		// Hand over at once instead of letting the lock expire.
		rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), max(RedisTimeout(r.cfg.LockTTL), time.Second))
		defer rcancel()
		if err := lock.Release(rctx); err != nil && !errors.Is(err, redislock.ErrLockNotHeld) {
			r.log.Warn("releasing the lock failed; another replica leads once it expires", "error", err)
		} else {
			if err := r.sendMsg(rctx, message{Type: msgReleased}); err != nil {
				r.log.Debug("announcing the release failed", "error", err)
			}
			if reason != endHandedOver && reason != endStepped && reason != endMaster {
				reason = endReleased
			}
		}
	}
	switch reason {
	case endHandedOver:
		r.setAside(r.cfg.Clock.Now().Add(r.cfg.HandoverCooldown))
	case endStepped:
		// Out of the election long enough for the replica it stepped down
		// for to take the lock (it stands when the release is announced),
		// and no longer: that replica's lock expires a lock TTL after it
		// took it at the earliest, so a failover of it never waits for
		// this aside to end.
		r.setAside(r.cfg.Clock.Now().Add(r.cfg.LockTTL))
	}
	r.log.Info("leadership ended", "reason", reason, "led_for", r.cfg.Clock.Now().Sub(start).Round(time.Millisecond))
	r.metrics.leadership(changeOf(reason))
}

// RedisTimeout is the longest a Redis command may take for a replica whose
// lock lives lockTTL: half of it. A renewal is sent a quarter TTL after the
// last good one was sent, so one that takes up to half the TTL still lands
// within the lease, and a leader keeps its lock while Redis's round trips
// stay under about half the lock TTL; a renewal that times out is retried
// while the lease lasts. Use it as the client's read and write timeouts
// when the Redis URL names none.
func RedisTimeout(lockTTL time.Duration) time.Duration { return lockTTL / 2 }

// TuneRedis sets what the election needs of a Redis client for a lock of
// lockTTL on opt, leaving alone what opt already sets: read and write
// timeouts of RedisTimeout(lockTTL); deadlines honoured (a lock renewal
// must not outlive its lease); three spare connections, so that a renewal
// retried after a timeout (go-redis drops the connection) does not wait
// for a dial; and no CLIENT SETINFO, so that a new connection costs one
// round trip (HELLO) before the command.
func TuneRedis(opt *redis.Options, lockTTL time.Duration) {
	if opt.ReadTimeout == 0 {
		opt.ReadTimeout = RedisTimeout(lockTTL)
	}
	if opt.WriteTimeout == 0 {
		opt.WriteTimeout = RedisTimeout(lockTTL)
	}
	opt.ContextTimeoutEnabled = true
	opt.MinIdleConns = max(opt.MinIdleConns, 3)
	// A connection opened to retry after a timeout costs HELLO, and one
	// more round trip for CLIENT SETINFO: spare the second.
	opt.DisableIdentity = true
}

// leaseGuard is how long before the lock could expire, by the local clock,
// leadership ends: room for Redis's clock to run a little faster.
func (r *Refresher) leaseGuard() time.Duration {
	return max(r.cfg.LockTTL/10, 10*time.Millisecond)
}

// renew keeps the lock alive while ctx lasts. The lock lives at least
// LockTTL from the sending of the last command that set it; renewals are
// sent every RenewEvery from the sending of the last good one, a renewal
// that fails or times out is retried at once while that lease lasts, and
// leadership is cancelled a guard before the lease ends, never after,
// whether or not a renewal is still in flight (the Redis client need not
// honour deadlines). A renewal refused because the lock is no longer this
// replica's ends leadership at once. sent is when the lock was obtained.
//
// With master set (Config.WatchMaster), each good renewal is followed by a
// look at the master's run id: a different one means a failover replaced
// the server the lock was obtained on, and renew cancels leadership and
// reports true.
func (r *Refresher) renew(ctx context.Context, cancel context.CancelFunc, lock *redislock.Lock, sent time.Time, master string) (masterChanged bool) {
	guard := r.leaseGuard()
	leaseEnd := sent.Add(r.cfg.LockTTL - guard)
	expiry := r.cfg.Clock.NewTimer(leaseEnd.Sub(r.cfg.Clock.Now()))
	defer expiry.Stop()
	// The first renewal goes at once: it loads the renewal script into
	// Redis (EVALSHA, then EVAL) while the lease is young, so that later
	// renewals on a slow Redis take one round trip.
	tick := r.cfg.Clock.NewTimer(0)
	defer tick.Stop()
	stepDown := func(failed int) {
		r.log.Warn("lock renewals did not succeed in time; stepping down before the lock can expire", "failed_renewals", failed)
		r.setErr(fmt.Errorf("lock renewal: %d attempts failed within the lock TTL", failed))
		cancel()
	}
	failed := 0
	var slowest time.Duration // recent renewals' longest round trip, decaying
	for {
		select {
		case <-ctx.Done():
			return false
		case <-expiry.C():
			stepDown(failed)
			return false
		case <-tick.C():
		}
		sent := r.cfg.Clock.Now()
		timeout := r.renewTimeout(slowest)
		until := sent.Add(timeout)
		if leaseEnd.Before(until) {
			until = leaseEnd
		}
		// A timeout, not a deadline: until is on the Clock, which need
		// not be the one context deadlines are kept on.
		rctx, rcancel := context.WithTimeout(ctx, until.Sub(sent))
		done := make(chan error, 1)
		go func() { done <- lock.Refresh(rctx, r.cfg.LockTTL, nil) }()
		var err error
		select {
		case err = <-done:
			rcancel()
		case <-expiry.C():
			rcancel()
			stepDown(failed + 1)
			return false
		}
		switch {
		case err == nil && r.masterReplaced(ctx, master):
			cancel()
			return true
		case err == nil:
			failed = 0
			took := r.cfg.Clock.Now().Sub(sent)
			slowest = max(took, slowest-slowest/4)
			r.metrics.renewal(took)
			leaseEnd = sent.Add(r.cfg.LockTTL - guard)
			expiry.Reset(leaseEnd.Sub(r.cfg.Clock.Now()))
			tick.Reset(max(sent.Add(r.cfg.RenewEvery).Sub(r.cfg.Clock.Now()), 0))
		case ctx.Err() != nil:
			return false
		case errors.Is(err, redislock.ErrNotObtained):
			// The lock is not ours any more. Within the lease it cannot
			// have expired: its key was removed (evicted, flushed, an empty
			// restart) or overwritten.
			if r.cfg.Clock.Now().Before(leaseEnd) {
				r.store.LockLost()
			}
			r.log.Warn("lock renewal refused: the lock is no longer held; stepping down", "error", err)
			r.setErr(fmt.Errorf("lock renewal: %w", err))
			cancel()
			return false
		default:
			// Slow or unreachable Redis: try again while the lease lasts,
			// at once after a timeout, after a pause after a quick refusal
			// (a server that refuses connections answers at once).
			failed++
			if r.cfg.Clock.Now().Sub(sent) >= timeout {
				// Timed out: Redis may be slow throughout, not for a
				// spike. The retry may take twice as long, or half the
				// TTL (renewTimeout).
				slowest = max(slowest, timeout)
			}
			r.log.Warn("lock renewal failed; retrying while the lock lasts", "error", err, "attempt", failed,
				"lease_left", leaseEnd.Sub(r.cfg.Clock.Now()).Round(time.Millisecond))
			tick.Reset(max(sent.Add(r.renewRetryPause()).Sub(r.cfg.Clock.Now()), 0))
		}
	}
}

// renewTimeout is how long a renewal may take, given the longest round
// trip of the recent ones (after a timeout, that timeout): twice that, at
// least an eighth of the lock TTL, at most RedisTimeout (half the TTL). On
// a Redis that answers in time a spike costs a quick retry, with most of
// the lease left for it; on one slow throughout, renewals soon get half
// the TTL, so the leader keeps its lock while round trips stay under
// about that.
func (r *Refresher) renewTimeout(slowest time.Duration) time.Duration {
	return min(max(2*slowest, r.cfg.LockTTL/8), RedisTimeout(r.cfg.LockTTL))
}

// renewRetryPause is the least time between the sending of a renewal that
// failed and of its retry: a twentieth of the lock TTL, between 5ms and
// 250ms, so that a Redis refusing connections is not asked in a loop.
func (r *Refresher) renewRetryPause() time.Duration {
	return min(max(r.cfg.LockTTL/20, 5*time.Millisecond), 250*time.Millisecond)
}

// masterReplaced reports whether the Redis master is no longer the server
// with run id master (a failover), logging it. An empty master, or a run
// id that cannot be read, reports false: the lock's own renewal decides.
func (r *Refresher) masterReplaced(ctx context.Context, master string) bool {
	if master == "" {
		return false
	}
	id, err := r.masterID(ctx)
	if err != nil {
		return false
	}
	if id != master {
		r.log.Warn("the Redis master changed (a failover): stepping down rather than trusting a lock the new master may have missed; the lock is released so that the next leader is elected at once",
			"was", master, "now", id)
		r.setErr(errors.New("the Redis master changed during this term"))
		return true
	}
	return r.notTheMaster(ctx, id)
}

// notTheMaster reports whether Config.MasterAuthority names another server
// than the one with run id id as the master, logging it.
func (r *Refresher) notTheMaster(ctx context.Context, id string) bool {
	if r.cfg.MasterAuthority == nil {
		return false
	}
	// Bounded well within a renewal's share of the lease.
	actx, cancel := context.WithTimeout(ctx, RedisTimeout(r.cfg.LockTTL)/2)
	defer cancel()
	want, err := r.cfg.MasterAuthority(actx)
	if err != nil || want == "" || want == id {
		return false
	}
	r.log.Warn("Sentinel names another Redis master than the one this replica writes to (a healed partition, before Sentinel demotes the old master): not leading on it",
		"writing_to", id, "sentinel_master", want)
	r.setErr(errors.New("the Redis server written to is not the master Sentinel names"))
	return true
}

// releaseQuietly releases lock, without a leadership to end.
func (r *Refresher) releaseQuietly(ctx context.Context, lock *redislock.Lock) {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), max(RedisTimeout(r.cfg.LockTTL), time.Second))
	defer cancel()
	if err := lock.Release(rctx); err != nil && !errors.Is(err, redislock.ErrLockNotHeld) {
		r.log.Debug("releasing a lock not to lead on failed", "error", err)
	}
}

// leaderState is the refresh loop's memory, owned by work.
type leaderState struct {
	lockValue string
	sub       *cache.Subscription
	attempt   int                // failed attempts in a row, fleet-wide
	failed    int                // failed attempts in a row in this term
	retryAt   time.Time          // no attempt before this
	pending   []string           // refresh request ids to answer
	answered  map[string]message // recent answers by request id, for repeated requests
	order     []string           // ids of answered, oldest first
	jitter    map[string]float64 // per token value: fraction of Jitter
	upstream  time.Duration      // time of the last attempt's upstream call; 0 if none
}

// maxAnswered bounds the answers a leader keeps for repeated requests.
// Forgetting one costs at most an extra attempt: a requester also accepts
// any token fetched after it asked.
const maxAnswered = 256

// request takes a refresh request: answered again when already answered,
// else pending for the next attempt.
func (r *Refresher) request(ctx context.Context, st *leaderState, m message) {
	if reply, ok := st.answered[m.ID]; ok {
		r.publish(ctx, reply)
		return
	}
	if !slices.Contains(st.pending, m.ID) {
		r.log.Info("refresh requested", "by", m.From)
		st.pending = append(st.pending, m.ID)
	}
}

// takeRequests takes the refresh requests waiting in the subscription.
func (r *Refresher) takeRequests(ctx context.Context, st *leaderState) {
	for cm, ok := st.sub.Next(); ok; cm, ok = st.sub.Next() {
		if m := decode(cm); m.Type == msgRefresh {
			r.request(ctx, st, m)
		}
	}
}

// answer sends reply to every pending request and remembers it.
func (r *Refresher) answer(ctx context.Context, st *leaderState, reply message) {
	for _, id := range st.pending {
		reply.ID = id
		r.publish(ctx, reply)
		if _, seen := st.answered[id]; !seen {
			st.order = append(st.order, id)
		}
		st.answered[id] = reply
	}
	st.pending = st.pending[:0]
	for len(st.order) > maxAnswered {
		delete(st.answered, st.order[0])
		st.order = st.order[1:]
	}
}

func (r *Refresher) publish(ctx context.Context, m message) {
	if err := r.sendMsg(ctx, m); err != nil {
		r.log.Debug("answering a refresh request failed; the requester asks again", "error", err)
	}
}

// work is the leader's loop. It returns why leadership ended.
func (r *Refresher) work(ctx context.Context, lockValue string) endReason {
	sub := r.store.Subscribe()
	defer sub.Close()
	check := r.cfg.Clock.NewTicker(r.cfg.CheckEvery)
	defer check.Stop()
	timer := r.cfg.Clock.NewTimer(0)
	defer timer.Stop()

	select {
	case <-r.stepDown: // asked during an earlier term
	default:
	}
	st := &leaderState{lockValue: lockValue, sub: sub, answered: make(map[string]message), jitter: make(map[string]float64)}
	defer r.abandon(ctx, st)
	if _, err := r.store.Load(ctx); err != nil && ctx.Err() == nil {
		r.log.Warn("leader cannot read Redis", "error", err)
	}
	r.inherit(ctx, st)
	for {
		if err := r.reseed(ctx, st); errors.Is(err, cache.ErrFenced) {
			return endFenced
		}
		due := r.due(st)
		r.mu.Lock()
		r.nextRefresh = due
		r.mu.Unlock()
		timer.Reset(max(due.Sub(r.cfg.Clock.Now()), 0))

		select {
		case <-ctx.Done():
			return endLost
		case <-check.C():
			// The store's own poll keeps InRedis current; reseed, at the
			// top of the loop, acts on it. No Redis command of its own.
			continue
		case <-sub.Ready():
			r.takeRequests(ctx, st)
			r.refuseDuringBackoff(ctx, st)
			continue
		case <-r.stepDown:
			r.log.Info("handing leadership over to spread it across the fleet", "aside_for", r.cfg.LockTTL)
			return endStepped
		case <-timer.C():
		}
		if r.cfg.Clock.Now().Before(due) {
			continue
		}
		err := r.attempt(ctx, st)
		switch {
		case errors.Is(err, cache.ErrFenced):
			return endFenced
		case r.handOver(st, err):
			r.log.Warn("handing leadership over: refreshes keep failing here; another replica may reach the upstream",
				"failed_attempts", st.failed, "error", err, "cooldown", r.cfg.HandoverCooldown)
			return endHandedOver
		}
	}
}

// handOver reports whether the leader should give up leadership after an
// attempt that returned err: the upstream failed HandoverAfter times in a
// row in this term, or refused this replica for good. Redis failures, the
// fleet's sign-on budget and fencing are no reason: another replica would
// meet them too.
func (r *Refresher) handOver(st *leaderState, err error) bool {
	if err == nil || errors.Is(err, errAuthBudget) || !isUpstreamFailure(err) {
		return false
	}
	return !upstream.IsRetryable(err) || st.failed >= r.cfg.HandoverAfter
}

// isUpstreamFailure reports whether err is the upstream's doing: a failed
// or refused call, or an answer that must not be stored.
func isUpstreamFailure(err error) bool {
	var ue *upstream.Error
	return errors.As(err, &ue) || errors.Is(err, ErrBadToken)
}

// inherit goes on from the fleet's failures: the attempts in a row that
// failed, as the previous leaders recorded them in Redis (or this replica
// remembers them), set the backoff of this term's first attempt, so that a
// change of leader does not restart the backoff and an upstream down for
// everyone sees no more calls than one leader would make.
func (r *Refresher) inherit(ctx context.Context, st *leaderState) {
	key := r.store.Keys().Refreshes
	hctx, cancel := context.WithTimeout(ctx, RedisTimeout(r.cfg.LockTTL))
	defer cancel()
	atts, err := readAttempts(hctx, r.rdb, key, r.cfg.Clock.Now())
	if err != nil {
		atts = r.fleet.recent()
	}
	n := 0
	for _, a := range atts {
		if a.Outcome != outcomeUpstreamError && a.Outcome != outcomeRedisError {
			break
		}
		n++
	}
	if n == 0 {
		return
	}
	last := atts[0]
	st.attempt = n
	st.retryAt = last.At.Add(backoff(n, r.cfg.RetryMin, r.cfg.RetryMax, last.RetryAfter))
	r.log.Info("going on from the fleet's failed refreshes", "failures_in_a_row", n, "last_by", last.By,
		"retry_in", max(st.retryAt.Sub(r.cfg.Clock.Now()), 0).Round(time.Millisecond))
}

// refuseDuringBackoff answers pending refresh requests at once while the
// leader backs off after failures, instead of keeping requesters waiting
// for an attempt the backoff forbids.
func (r *Refresher) refuseDuringBackoff(ctx context.Context, st *leaderState) {
	wait := st.retryAt.Sub(r.cfg.Clock.Now())
	if len(st.pending) == 0 || wait <= 0 {
		return
	}
	r.mu.Lock()
	last := r.lastErr
	r.mu.Unlock()
	msg := fmt.Sprintf("the last refresh failed (%s); the next attempt is in %v", last, wait.Round(time.Millisecond))
	r.answer(ctx, st, message{Type: msgRefreshed, Error: msg})
}

// abandon answers the refresh requests still pending when leadership ends,
// telling the requesters to ask the next leader, so that none waits for an
// answer that will never come.
func (r *Refresher) abandon(ctx context.Context, st *leaderState) {
	r.takeRequests(ctx, st)
	if len(st.pending) == 0 {
		return
	}
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), max(RedisTimeout(r.cfg.LockTTL), time.Second))
	defer cancel()
	r.answer(pctx, st, message{Type: msgRefreshed, Retry: true,
		Error: "leadership ended before the refresh was done; ask the next leader"})
}

// due returns when the next fetch should happen.
func (r *Refresher) due(st *leaderState) time.Time {
	now := r.cfg.Clock.Now()
	if r.unsavedNewer() {
		// Storing it needs no upstream call: no backoff applies.
		return now
	}
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
		at = nextRefreshAt(tok, r.cfg.RefreshBefore, time.Duration(f*float64(r.cfg.Jitter)), r.store.ServeMargin())
	}
	if at.Before(st.retryAt) {
		at = st.retryAt
	}
	return at
}

// unsavedNewer reports whether this replica holds a fetched token that was
// never stored, is still servable and expires later than the one held: it
// is stored before anything is fetched. One that is not is dropped.
func (r *Refresher) unsavedNewer() bool {
	u := r.unsaved
	if u == nil {
		return false
	}
	deadline := u.Sent.Add(u.Lifetime)
	held, ok := r.store.Held()
	switch {
	case !r.cfg.Clock.Now().Before(deadline.Add(-r.store.ServeMargin())):
		r.unsaved = nil
	case ok && !deadline.After(held.Deadline):
		r.unsaved = nil
	default:
		return true
	}
	return false
}

// nextRefreshAt returns when a token should be refreshed: refreshBefore plus
// jitter before its deadline, but never before half of its servable life
// has passed, so a token that lives shorter than the window does not cause
// a fetch loop.
func nextRefreshAt(tok cache.Token, refreshBefore, jitter, margin time.Duration) time.Time {
	at := tok.Deadline.Add(-refreshBefore - jitter)
	if !tok.FetchedAt.IsZero() {
		floor := tok.FetchedAt.Add(tok.Deadline.Sub(tok.FetchedAt.Add(margin)) / 2)
		if at.Before(floor) {
			at = floor
		}
	}
	return at
}

// backoff returns the wait after the n-th failure in a row (n >= 1): a
// random duration in [min, min(max, min*2^(n-1))], and never less than
// retryAfter (capped at 10 minutes).
func backoff(n int, minWait, maxWait, retryAfter time.Duration) time.Duration {
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

// reseed writes the leader's copy back when Redis has lost the token, or
// holds an older one (a failover to a replica that missed the last write,
// a restore from an older snapshot): no upstream call. When Redis refuses
// it as older than what it holds after all (the copy's deadline and the
// stored one were too close to tell apart from here), the stored token is
// taken instead.
func (r *Refresher) reseed(ctx context.Context, st *leaderState) error {
	if r.store.InRedis() && !r.store.Behind() {
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
			"expires_in", tok.Remaining(r.cfg.Clock.Now()).Round(time.Second))
	case errors.Is(err, cache.ErrStale):
		_, _ = r.store.Resync(ctx)
	case ctx.Err() == nil:
		r.log.Debug("re-seeding failed", "error", err)
	}
	return err
}

// attempt fetches (or reuses an unsaved) token and stores it, recording
// the outcome, backing off on failure and answering the refresh requests
// pending, and those that arrived during its upstream call: they join it.
func (r *Refresher) attempt(ctx context.Context, st *leaderState) error {
	start := r.cfg.Clock.Now()
	tok, stored, err := r.fetchAndStore(ctx, st)
	if ctx.Err() != nil && !errors.Is(err, cache.ErrFenced) {
		return ctx.Err()
	}
	took := r.cfg.Clock.Now().Sub(start)
	outcome := outcomeOf(err, stored)
	reply := message{Type: msgRefreshed}
	var retryAfter time.Duration
	if err != nil {
		st.attempt++
		st.failed++
		retryAfter = upstream.RetryAfter(err)
		wait := backoff(st.attempt, r.cfg.RetryMin, r.cfg.RetryMax, retryAfter)
		if !upstream.IsRetryable(err) && !errors.Is(err, cache.ErrFenced) {
			wait = max(wait, r.cfg.RetryMax)
		}
		st.retryAt = r.cfg.Clock.Now().Add(wait)
		r.setErr(err)
		held, servable := r.store.Current()
		r.log.Warn("refresh failed", "outcome", outcome, "error", err, "attempt", st.attempt, "retry_in", wait.Round(time.Millisecond),
			"took", took.Round(time.Millisecond), "upstream_took", st.upstream.Round(time.Millisecond),
			"serving", servable, "fingerprint", held.Fingerprint())
		reply.Error = err.Error()
	} else {
		st.attempt, st.failed = 0, 0
		st.retryAt = time.Time{}
		r.mu.Lock()
		r.lastRefresh = r.cfg.Clock.Now()
		r.lastErr = ""
		r.mu.Unlock()
		if stored {
			r.log.Info("token refreshed", "outcome", outcome, "fingerprint", tok.Fingerprint(), "took", took.Round(time.Millisecond),
				"upstream_took", st.upstream.Round(time.Millisecond), "expires_in", tok.Remaining(r.cfg.Clock.Now()).Round(time.Second))
		} else {
			r.log.Info("refresh superseded: another leader stored a later token", "outcome", outcome,
				"fingerprint", tok.Fingerprint(), "took", took.Round(time.Millisecond), "expires_in", tok.Remaining(r.cfg.Clock.Now()).Round(time.Second))
		}
		reply.Fingerprint = tok.Fingerprint()
	}
	a := Attempt{At: r.cfg.Clock.Now().Round(0), By: r.cfg.Instance, Outcome: outcome, Took: took, Upstream: st.upstream,
		Error: reply.Error, RetryAfter: retryAfter}
	if err == nil {
		a.Fingerprint, a.ExpiresAt = tok.Fingerprint(), r.cfg.Clock.Now().Add(tok.Remaining(r.cfg.Clock.Now())).Round(0)
	}
	r.recordAttempt(ctx, a, st.attempt)
	var later []message
	if err == nil && stored {
		later = r.joinQueued(ctx, st, tok.Fingerprint())
	}
	r.answer(ctx, st, reply)
	for _, m := range later {
		r.request(ctx, st, m)
	}
	return err
}

// joinQueued takes, after this leader stored the token of fingerprint fp,
// the refresh requests that Redis published before that token's event:
// they were sent before the token was stored, and it answers them, as a
// request that arrives during the upstream call joins it. Only a request
// sent after the token was stored costs another fetch. It waits for the
// event a Redis timeout at most (the requests seen until then came before
// it), and returns the requests that came after it, for the next attempt.
func (r *Refresher) joinQueued(ctx context.Context, st *leaderState, fp string) []message {
	wait := r.cfg.Clock.NewTimer(RedisTimeout(r.cfg.LockTTL))
	defer wait.Stop()
	var later []message
	seen := false
	for {
		for cm, ok := st.sub.Next(); ok; cm, ok = st.sub.Next() {
			switch m := decode(cm); {
			case m.Type == msgRefresh && seen:
				later = append(later, m)
			case m.Type == msgRefresh:
				r.request(ctx, st, m)
			case m.Type == cache.MsgToken && m.Fingerprint == fp:
				seen = true
			}
		}
		if seen {
			return later
		}
		select {
		case <-ctx.Done():
			return later
		case <-wait.C():
			return later
		case <-st.sub.Ready():
		}
	}
}

// Reachability of the upstream from this replica, in the fleet view.
const (
	upstreamOK      = "ok"
	upstreamFailing = "failing"
)

// noteUpstream records whether this replica's call to the upstream worked.
// The fleet's sign-on budget says nothing of reachability.
func (r *Refresher) noteUpstream(err error) {
	if errors.Is(err, errAuthBudget) {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if err == nil {
		r.upstreamState, r.upstreamErr = upstreamOK, ""
		return
	}
	r.upstreamState, r.upstreamErr = upstreamFailing, err.Error()
}

// fetchAndStore returns the token now in Redis, and whether this call
// stored it. A token fetched and not stored (Redis failing, leadership
// lost) is kept by the replica, across terms, and stored before fetching
// another while it is the newest.
func (r *Refresher) fetchAndStore(ctx context.Context, st *leaderState) (cache.Token, bool, error) {
	st.upstream = 0
	if r.unsavedNewer() {
		r.log.Info("storing the token fetched earlier instead of fetching another", "fingerprint", cache.Fingerprint(r.unsaved.Value))
	} else {
		began := r.cfg.Clock.Now()
		up, err := r.src.Token(ctx)
		st.upstream = r.cfg.Clock.Now().Sub(began)
		// Requests that arrived during the call join it; later ones wait
		// for a token fetched after they asked.
		r.takeRequests(ctx, st)
		if ctx.Err() == nil {
			r.noteUpstream(err)
		}
		if err != nil {
			return cache.Token{}, false, err
		}
		r.mu.Lock()
		r.fetches++
		r.mu.Unlock()
		if up.Sent.IsZero() {
			// Its life counts from before the call: never later than true.
			up.Sent = began
		}
		if plant.On(plant.DatedFromArrival) {
			up.Sent = r.cfg.Clock.Now()
		}
		// What must never be stored is refused by the store itself.
		r.unsaved = &up
	}
	up := r.unsaved
	t, err := r.store.Write(ctx, cache.Write{
		LockValue: st.lockValue,
		Value:     up.Value,
		Deadline:  up.Sent.Add(up.Lifetime),
		FetchedAt: up.Sent,
	})
	switch {
	case err == nil:
		r.unsaved = nil
		return t, true, nil
	case errors.Is(err, cache.ErrStale):
		// Someone stored a later token: nothing to do but adopt it.
		r.unsaved = nil
		if _, lerr := r.store.Load(ctx); lerr != nil {
			return cache.Token{}, false, lerr
		}
		held, _ := r.store.Held()
		return held, false, nil
	case errors.Is(err, cache.ErrInvalid):
		r.unsaved = nil
		return cache.Token{}, false, fmt.Errorf("%w: %w", ErrBadToken, err)
	default:
		if plant.On(plant.UnsavedForgotten) {
			r.unsaved = nil
		}
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

// refreshCall is a refresh request in flight on this replica; concurrent
// callers of Refresh wait for the same one.
type refreshCall struct {
	done    chan struct{} // closed when tok and err are set
	cancel  context.CancelFunc
	waiters int // guarded by Refresher.reqMu
	tok     cache.Token
	err     error
}

// Refresh asks the leader, whichever replica it is, to fetch a new token
// now, and waits until it is stored and held by this replica or ctx ends.
// Concurrent calls on one replica share one request, and the leader lets
// requests that arrive while an attempt runs join it, so a burst of calls
// costs one upstream call.
//
// Every call gets an answer: the token; ErrRefreshFailed when the
// leader's attempt failed (or a recent one did and the leader is backing
// off); ErrNoLeader when no replica has led for two lock TTLs;
// ErrUnavailable when Redis has failed for as long; or ctx's
// error. A lost message costs a resend, not the answer: the request is
// sent again every half lock TTL and whenever leadership changes, and a
// token fetched after the request counts as its answer.
func (r *Refresher) Refresh(ctx context.Context) (cache.Token, error) {
	r.reqMu.Lock()
	c := r.req
	if c == nil {
		rctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		c = &refreshCall{done: make(chan struct{}), cancel: cancel}
		r.req = c
		go func() {
			defer cancel()
			tok, err := r.ask(rctx)
			r.reqMu.Lock()
			if r.req == c {
				r.req = nil
			}
			c.tok, c.err = tok, err
			r.reqMu.Unlock()
			close(c.done)
		}()
	}
	c.waiters++
	r.reqMu.Unlock()

	select {
	case <-c.done:
		return c.tok, c.err
	case <-ctx.Done():
		r.reqMu.Lock()
		if c.waiters--; c.waiters == 0 {
			// Nobody waits any more: stop asking.
			c.cancel()
			if r.req == c {
				r.req = nil
			}
		}
		r.reqMu.Unlock()
		return cache.Token{}, ctx.Err()
	}
}

// ask sends one refresh request and waits for its answer; see Refresh.
func (r *Refresher) ask(ctx context.Context) (cache.Token, error) {
	asked := r.cfg.Clock.Now()
	before, _ := r.store.Held()
	var raw [8]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return cache.Token{}, err
	}
	id := hex.EncodeToString(raw[:])
	sub := r.store.Subscribe()
	defer sub.Close()

	// Leadership may be vacant, or Redis unreachable or pausing writes,
	// through a failover: a leader steps down, its lock expires and
	// another is elected within about two lock TTLs of Redis answering
	// again. Only trouble that lasts longer is the answer.
	grace := 2 * r.cfg.LockTTL
	resend := r.cfg.Clock.NewTimer(0)
	defer resend.Stop()
	var troubleSince time.Time // since when no leader, or no Redis, was found
	var askedOf string         // the leader the request was last sent to
	for {
		select {
		case <-ctx.Done():
			return cache.Token{}, ctx.Err()
		case <-resend.C():
			now := r.cfg.Clock.Now()
			leader, err := r.send(ctx, id)
			if err == nil {
				askedOf = leader
				troubleSince = time.Time{}
				resend.Reset(r.cfg.LockTTL / 2) // in case the request or its answer was lost
				continue
			}
			if ctx.Err() != nil {
				return cache.Token{}, ctx.Err()
			}
			if troubleSince.IsZero() {
				troubleSince = now
			}
			if now.Sub(troubleSince) >= grace {
				return cache.Token{}, err
			}
			resend.Reset(r.cfg.ElectEvery)
		case <-sub.Ready():
			for cm, ok := sub.Next(); ok; cm, ok = sub.Next() {
				m := decode(cm)
				switch {
				case m.Type == msgRefreshed && m.ID == id && m.Retry,
					m.Type == msgReleased:
					// Leadership changed hands: ask the next leader.
					resend.Reset(0)
				case m.Type == msgRefreshed && m.ID == id:
					if m.Error != "" && m.From != askedOf {
						// A failure from a leader that has since handed
						// over: the one asked last answers instead.
						continue
					}
					if m.Error != "" {
						return cache.Token{}, fmt.Errorf("%w: %s", ErrRefreshFailed, m.Error)
					}
					return r.answered(ctx, m.Fingerprint)
				case m.Type == cache.MsgToken:
					// A token fetched since the request answers it, even if
					// the leader's answer was lost.
					tok, ok := r.store.Held()
					if ok && tok.Fingerprint() == m.Fingerprint && tok.Value != before.Value && tok.FetchedAt.After(asked) {
						return tok, nil
					}
				}
			}
		}
	}
}

// send publishes the refresh request id to the leader, if there is one.
// It returns the leader it asked.
func (r *Refresher) send(ctx context.Context, id string) (string, error) {
	sctx, cancel := context.WithTimeout(ctx, RedisTimeout(r.cfg.LockTTL))
	defer cancel()
	leader, err := r.Leader(sctx)
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	if leader == "" {
		return "", ErrNoLeader
	}
	if err := r.sendMsg(sctx, message{Type: msgRefresh, ID: id}); err != nil {
		return "", fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	return leader, nil
}

// answered returns the token a successful answer names, reading Redis if
// this replica has not adopted it yet.
func (r *Refresher) answered(ctx context.Context, fingerprint string) (cache.Token, error) {
	if tok, ok := r.store.Held(); ok && tok.Fingerprint() == fingerprint {
		return tok, nil
	}
	if _, err := r.store.Load(ctx); err != nil {
		return cache.Token{}, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	tok, _ := r.store.Held()
	return tok, nil
}
