package refresher

// Leading: the refresh loop a leader runs under its lock, the backoff,
// the handover and the fenced store of each new token.

import (
	"context"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/tokenkeeper/tokenkeeper/cache"
	"github.com/tokenkeeper/tokenkeeper/internal/plant"
	"github.com/tokenkeeper/tokenkeeper/internal/tracing"
	"github.com/tokenkeeper/tokenkeeper/upstream"
)

// leaderState is the refresh loop's memory, owned by work.
type leaderState struct {
	lockValue string
	sub       *cache.Subscription
	attempt   int       // failed attempts in a row, fleet-wide
	failed    int       // failed attempts in a row in this term
	retryAt   time.Time // no attempt before this
	// calmUntil, after a good attempt, is when the next may come unless
	// a refresh is asked for: a token that comes back due at once (a
	// life barely past the serve margin, a clock that jumped) must not
	// make the leader call the upstream in a loop.
	calmUntil time.Time
	pending   []string           // refresh request ids to answer
	answered  map[string]message // recent answers by request id, for repeated requests
	order     []string           // ids of answered, oldest first
	jitter    map[string]float64 // per token value: fraction of Jitter
	upstream  time.Duration      // time of the last attempt's upstream call; 0 if none

	term     trace.SpanContext            // the span of the election that began this term
	attempts int                          // attempts made in this term
	asked    map[string]trace.SpanContext // the span of each pending request, by id
}

// work is the leader's loop. It returns why leadership ended.
func (r *Refresher) work(ctx context.Context, lockValue string, term trace.SpanContext) endReason {
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
	st := &leaderState{lockValue: lockValue, sub: sub, answered: make(map[string]message), jitter: make(map[string]float64),
		term: term, asked: make(map[string]trace.SpanContext)}
	defer r.abandon(ctx, st)
	// The leader must see within a poll interval that Redis lost the
	// token (an eviction publishes nothing), whatever the events prove.
	r.store.PollOften(true)
	defer r.store.PollOften(false)
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
	return errors.As(err, &ue) || errors.Is(err, errBadToken)
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
	st.retryAt = last.At.Add(backoff(r.rand, n, r.cfg.RetryMin, r.cfg.RetryMax, last.RetryAfter))
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
		// Storing it needs no upstream call, but a store that failed
		// waits for its backoff: a Redis that refuses at once would
		// otherwise be asked again and again, as fast as it refuses.
		if now.Before(st.retryAt) {
			return st.retryAt
		}
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
			f = r.rand.Float64()
			st.jitter[tok.Value] = f
		}
		at = nextRefreshAt(tok, r.cfg.RefreshBefore, time.Duration(f*float64(r.cfg.Jitter)), r.store.ServeMargin())
	}
	if at.Before(st.retryAt) {
		at = st.retryAt
	}
	if len(st.pending) == 0 && at.Before(st.calmUntil) {
		at = st.calmUntil
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
// random duration in [min, min(max, min*2^(n-1))], drawn from rnd, and
// never less than retryAfter (capped at 10 minutes).
func backoff(rnd *mrand.Rand, n int, minWait, maxWait, retryAfter time.Duration) time.Duration {
	ceiling := maxWait
	if n < 31 {
		if c := minWait << (n - 1); c > 0 && c < maxWait {
			ceiling = c
		}
	}
	d := minWait
	if ceiling > minWait {
		d += time.Duration(rnd.Int64N(int64(ceiling - minWait + 1)))
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
	ctx, span := r.startAttempt(ctx, st, reasonReseed)
	written, err := r.store.Write(ctx, cache.Write{LockValue: st.lockValue, Value: tok.Value, Deadline: tok.Deadline, FetchedAt: tok.FetchedAt,
		Generation: tok.Generation})
	switch {
	case err == nil:
		r.log.InfoContext(ctx, "token re-seeded into Redis from memory", "fingerprint", tok.Fingerprint(),
			"expires_in", tok.Remaining(r.cfg.Clock.Now()).Round(time.Second))
	case errors.Is(err, cache.ErrStale):
		_, _ = r.store.Resync(ctx)
	case ctx.Err() == nil:
		r.log.DebugContext(ctx, "re-seeding failed", "error", err)
	}
	span.SetAttributes(tracing.Fingerprint.String(tok.Fingerprint()))
	r.endAttempt(span, outcomeOf(err, err == nil), written.Generation, err)
	return err
}

// attempt fetches (or reuses an unsaved) token and stores it, recording
// the outcome, backing off on failure and answering the refresh requests
// pending, and those that arrived during its upstream call: they join it.
func (r *Refresher) attempt(ctx context.Context, st *leaderState) error {
	start := r.cfg.Clock.Now()
	ctx, span := r.startAttempt(ctx, st, r.reasonOf(st))
	tok, stored, err := r.fetchAndStore(ctx, st)
	if ctx.Err() != nil && !errors.Is(err, cache.ErrFenced) {
		r.endAttempt(span, "abandoned", 0, ctx.Err())
		return ctx.Err()
	}
	took := r.cfg.Clock.Now().Sub(start)
	outcome := outcomeOf(err, stored)
	span.SetAttributes(attribute.Int64("tokenkeeper.upstream_ms", st.upstream.Milliseconds()))
	if err == nil {
		span.SetAttributes(tracing.Fingerprint.String(tok.Fingerprint()))
	}
	r.endAttempt(span, outcome, tok.Generation, err)
	reply := message{Type: msgRefreshed, Trace: tracing.Inject(ctx)}
	var retryAfter time.Duration
	if err != nil {
		st.attempt++
		st.failed++
		retryAfter = upstream.RetryAfter(err)
		wait := backoff(r.rand, st.attempt, r.cfg.RetryMin, r.cfg.RetryMax, retryAfter)
		if !upstream.IsRetryable(err) && !errors.Is(err, cache.ErrFenced) {
			wait = max(wait, r.cfg.RetryMax)
		}
		st.retryAt = r.cfg.Clock.Now().Add(wait)
		r.setErr(err)
		held, servable := r.store.Current()
		r.log.WarnContext(ctx, "refresh failed", "outcome", outcome, "error", err, "attempt", st.attempt, "retry_in", wait.Round(time.Millisecond),
			"took", took.Round(time.Millisecond), "upstream_took", st.upstream.Round(time.Millisecond),
			"serving", servable, "fingerprint", held.Fingerprint())
		reply.Error = err.Error()
	} else {
		st.attempt, st.failed = 0, 0
		st.retryAt = time.Time{}
		st.calmUntil = r.cfg.Clock.Now().Add(r.cfg.RetryMin)
		r.mu.Lock()
		r.lastRefresh = r.cfg.Clock.Now()
		r.lastErr = ""
		r.mu.Unlock()
		if stored {
			r.log.InfoContext(ctx, "token refreshed", "outcome", outcome, "fingerprint", tok.Fingerprint(), "took", took.Round(time.Millisecond),
				"upstream_took", st.upstream.Round(time.Millisecond), "expires_in", tok.Remaining(r.cfg.Clock.Now()).Round(time.Second))
		} else {
			r.log.InfoContext(ctx, "refresh superseded: another leader stored a later token", "outcome", outcome,
				"fingerprint", tok.Fingerprint(), "took", took.Round(time.Millisecond), "expires_in", tok.Remaining(r.cfg.Clock.Now()).Round(time.Second))
		}
		reply.Fingerprint = tok.Fingerprint()
	}
	a := Attempt{At: r.cfg.Clock.Now().Round(0), By: r.cfg.Instance, Outcome: outcome, Took: took, Upstream: st.upstream,
		Error: reply.Error, RetryAfter: retryAfter}
	if err == nil {
		a.Fingerprint, a.ExpiresAt = tok.Fingerprint(), r.cfg.Clock.Now().Add(tok.Remaining(r.cfg.Clock.Now())).Round(0)
	}
	r.recordAttempt(ctx, a, st.attempt, span.SpanContext())
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
	r.changes.Add(1)
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
		r.log.InfoContext(ctx, "storing the token fetched earlier instead of fetching another", "fingerprint", cache.Fingerprint(r.unsaved.Value))
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
		return cache.Token{}, false, fmt.Errorf("%w: %w", errBadToken, err)
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
