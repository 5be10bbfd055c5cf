package refresher

// The election: standing for the lock, leading under it, renewing it,
// and stepping down.

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bsm/redislock"
	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/tokenkeeper/tokenkeeper/cache"
	"github.com/tokenkeeper/tokenkeeper/internal/plant"
	"github.com/tokenkeeper/tokenkeeper/internal/tracing"
)

// Run takes part in the election until ctx ends, leading whenever it holds
// the lock. On return it has released the lock if it held it. It returns
// ctx's error.
func (r *Refresher) Run(ctx context.Context) error {
	sub := r.store.Subscribe()
	defer sub.Close()
	wake := r.cfg.Clock.NewTimer(0)
	defer wake.Stop()
	var freeSince time.Time          // while aside: since when the lock has been seen free
	var releasedBy trace.SpanContext // the step-down span of the last release announced
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-wake.C():
		case <-sub.Ready():
			// A released lock is worth trying at once; anything else waits
			// for the timer.
			found, sc := drainReleased(sub)
			if !found {
				continue
			}
			releasedBy = sc
			r.store.ForgetLockHint() // announced before the release
			if d := r.releasedYield(); d > 0 {
				// Let a replica that leads fewer tokens take it first, and
				// the replicas that lead as few draw lots; then a PTTL
				// tells whether one did.
				wake.Reset(d)
				continue
			}
		}
		if err := r.store.Unreadable(); err != nil {
			// Leading would replace the token the rest of the fleet reads.
			r.log.Debug("not standing for election: the stored token is unreadable here", "error", err)
			wake.Reset(r.cfg.ElectEvery)
			continue
		}
		held := r.hintedHold()
		if held == 0 {
			held = r.lockHeldFor(ctx)
		}
		if held > 0 {
			// Another replica leads: its lock cannot come free before it
			// expires, unless released, which is announced. Sleeping until
			// then costs Redis nothing while the leader's beats announce its
			// lease, and one PTTL per lock period when none comes, instead
			// of a failed Obtain every ElectEvery.
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
			opts := []trace.SpanStartOption{trace.WithNewRoot(), trace.WithTimestamp(sent)}
			if releasedBy.IsValid() {
				// A handover: the step-down of the leader that released.
				opts = append(opts, trace.WithLinks(trace.Link{SpanContext: releasedBy,
					Attributes: []attribute.KeyValue{attribute.String("tokenkeeper.link", "released by")}}))
			}
			releasedBy = trace.SpanContext{}
			ectx, span := r.startSpan(ctx, spanElection, opts...)
			span.AddEvent(eventLockWon, trace.WithAttributes(attribute.Int64("tokenkeeper.lock_ttl_ms", r.cfg.LockTTL.Milliseconds())))
			r.lead(ectx, lock, sent, span)
		case errors.Is(err, redislock.ErrNotObtained), ctx.Err() != nil:
		default:
			r.log.Debug("election: cannot reach Redis", "error", err)
		}
		wake.Reset(r.cfg.ElectEvery)
	}
}

// releasedYield is how long this replica waits before trying a lock just
// released: ElectEvery/20 for each token it leads, at most ElectEvery/2,
// so that a replica leading fewer tokens wins the lock (Config.Leading),
// and a random part of another ElectEvery/20. Redis hands a message to
// the subscribers of a channel in the order they subscribed, so without
// it the same replica would hear every release first and, when a leader
// hands several tokens over at once, take them all, to hand them over
// again a round later. Half ElectEvery is within what a follower already
// waits for a lock it cannot see come free.
func (r *Refresher) releasedYield() time.Duration {
	if r.cfg.Leading == nil {
		return 0
	}
	n := max(min(r.cfg.Leading(), 10), 0)
	tier := r.cfg.ElectEvery / 20
	return time.Duration(n)*tier + time.Duration(r.rand.Int64N(int64(tier)+1))
}

func (r *Refresher) asideTill() time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.asideUntil
}

func (r *Refresher) setAside(until time.Time) {
	r.mu.Lock()
	r.asideUntil = until
	r.changes.Add(1)
	r.mu.Unlock()
}

// drainReleased takes every message waiting in sub and reports whether
// one announced a released lock, with the span of the step-down that sent
// it (invalid when untraced).
func drainReleased(sub *cache.Subscription) (bool, trace.SpanContext) {
	found, sc := false, trace.SpanContext{}
	for m, ok := sub.Next(); ok; m, ok = sub.Next() {
		if m.Type == msgReleased {
			found = true
			if s := tracing.Extract(decode(m).Trace); s.IsValid() {
				sc = s
			}
		}
	}
	return found, sc
}

// hintedHold returns how long the lock has left by the last beat of
// another replica that leads the token (a millisecond more, at most the
// lock TTL), or 0 when no beat announced a lease that lasts beyond now.
// A beat is a hint: when its lease has run out, lockHeldFor asks Redis.
func (r *Refresher) hintedHold() time.Duration {
	holder, until := r.store.LockHint()
	if holder == "" || holder == r.cfg.Instance {
		return 0
	}
	d := until.Sub(r.cfg.Clock.Now())
	if d <= 0 {
		return 0
	}
	return min(d+time.Millisecond, r.cfg.LockTTL)
}

// lockHeldFor returns how long the lock has left when another replica
// holds it (a millisecond more, to wake after it expires; at most the lock
// TTL), or 0 when it is free or its state is unknown.
func (r *Refresher) lockHeldFor(ctx context.Context) time.Duration {
	var d time.Duration
	var err error
	if r.cfg.LockChecks != nil {
		d, err = r.cfg.LockChecks.pttl(ctx, r.store.Keys().Lock)
	} else {
		d, err = r.rdb.PTTL(ctx, r.store.Keys().Lock).Result()
	}
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
//
// election is the span of the election won: it ends when leadership
// begins, or when this replica does not lead after all. The refresh
// loop runs outside it (a term lasts hours), its first attempt under it.
func (r *Refresher) lead(ctx context.Context, lock *redislock.Lock, sent time.Time, election trace.Span) {
	start := r.cfg.Clock.Now()
	defer election.End()
	term := election.SpanContext()
	lctx, cancel := context.WithCancel(trace.ContextWithSpanContext(ctx, trace.SpanContext{}))
	defer cancel()
	var master string // the run id of the master the lock was obtained on; "" when not watched or unknown
	if r.cfg.WatchMaster {
		var err error
		if master, err = r.masterID(ctx); err != nil {
			r.log.Warn("cannot read the Redis master's run id: this term is not watched for a failover", "error", err)
		}
		if master != "" && r.notTheMaster(ctx, master) {
			election.SetAttributes(attribute.Bool("tokenkeeper.led", false))
			election.AddEvent(eventLockReleased)
			r.releaseQuietly(ctx, lock)
			return
		}
	}
	if r.cfg.Replication.Replicas > 0 {
		if err := r.replicateLock(ctx, lock); errors.Is(err, redislock.ErrNotObtained) {
			election.SetAttributes(attribute.Bool("tokenkeeper.led", false))
			election.AddEvent(eventLockLost)
			r.log.WarnContext(ctx, "the lock was lost right after the election; not leading")
			return
		}
	}
	r.leading.Store(true)
	r.store.Lead(sent.Add(r.cfg.LockTTL))
	r.log.InfoContext(ctx, "leadership acquired")
	election.SetAttributes(attribute.Bool("tokenkeeper.led", true))
	election.End()
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
	reason := r.work(lctx, lock.Token()+lock.Metadata(), term)
	cancel()
	wg.Wait()
	r.store.Lead(time.Time{}) // no beat announces the lock from here on
	r.leading.Store(false)
	r.metrics.follower()
	if masterChanged.Load() {
		reason = endMaster
	}

	sdCtx, stepDown := r.startStepDown(context.WithoutCancel(ctx), term)
	if ctx.Err() != nil && !plant.On(plant.NoReleaseOnStop) || reason == endHandedOver || reason == endStepped || reason == endMaster {
		// Hand over at once instead of letting the lock expire.
		rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), max(RedisTimeout(r.cfg.LockTTL), time.Second))
		defer rcancel()
		if err := onLiveConn(rctx, lock.Release); err != nil && !errors.Is(err, redislock.ErrLockNotHeld) {
			r.log.Warn("releasing the lock failed; another replica leads once it expires", "error", err)
		} else {
			announce := func(ctx context.Context) error {
				return r.sendMsg(ctx, message{Type: msgReleased, Trace: tracing.Inject(sdCtx)})
			}
			if err := onLiveConn(rctx, announce); err != nil {
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
	ledFor := r.cfg.Clock.Now().Sub(start)
	r.endTerm(stepDown, reason, ledFor)
	r.log.Info("leadership ended", "reason", reason, "led_for", ledFor.Round(time.Millisecond))
	r.metrics.leadership(changeOf(reason))
}

// onLiveConn runs f, and again, up to three more times, while it fails
// on its connection at once. A pooled connection that outlived its server
// (Redis restarted, or a connection reset) fails its next command with a
// closed pipe or a reset, which go-redis does not retry but drops the
// connection for, so the next try takes another. The hand-over on a stop
// is one release and one announcement that no later loop repeats: without
// this, a stale connection costs the fleet the lock's expiry. The release
// is a compare-and-delete, and the announcement is idempotent, so a try
// that reached Redis and lost its answer does no harm when repeated. An
// answer from Redis (an error reply) and the end of ctx are final.
func onLiveConn(ctx context.Context, f func(context.Context) error) error {
	err := f(ctx)
	for range 3 {
		var reply redis.Error
		if err == nil || errors.As(err, &reply) || errors.Is(err, redislock.ErrLockNotHeld) || ctx.Err() != nil {
			break
		}
		err = f(ctx)
	}
	return err
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
		r.lockEvent(eventLockLost, attribute.Int("tokenkeeper.failed_renewals", failed))
		r.log.Warn("lock renewals did not succeed in time; stepping down before the lock can expire", "failed_renewals", failed)
		r.setErr(fmt.Errorf("lock renewal: %d attempts failed within the lock TTL", failed))
		cancel()
	}
	failed := 0
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
		until := sent.Add(RedisTimeout(r.cfg.LockTTL))
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
			r.metrics.renewal(r.cfg.Clock.Now().Sub(sent))
			r.lockEvent(eventLockRenewed, attribute.Int64("tokenkeeper.round_trip_ms", r.cfg.Clock.Now().Sub(sent).Milliseconds()))
			leaseEnd = sent.Add(r.cfg.LockTTL - guard)
			r.store.Lead(sent.Add(r.cfg.LockTTL))
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
			r.store.Lead(time.Time{})
			r.lockEvent(eventLockLost)
			r.log.Warn("lock renewal refused: the lock is no longer held; stepping down", "error", err)
			r.setErr(fmt.Errorf("lock renewal: %w", err))
			cancel()
			return false
		default:
			// Slow or unreachable Redis: try again while the lease lasts,
			// at once after a timeout, after a pause after a quick refusal
			// (a server that refuses connections answers at once).
			failed++
			r.lockEvent(eventRenewalFailed, attribute.Int("tokenkeeper.failed_renewals", failed))
			r.log.Warn("lock renewal failed; retrying while the lock lasts", "error", err, "attempt", failed,
				"lease_left", leaseEnd.Sub(r.cfg.Clock.Now()).Round(time.Millisecond))
			tick.Reset(max(sent.Add(r.renewRetryPause()).Sub(r.cfg.Clock.Now()), 0))
		}
	}
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
