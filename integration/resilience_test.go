//go:build integration

package integration

import (
	"fmt"
	"net/http"
	"testing"
	"time"
)

// unreachableRDP is where the replica cut off from the upstream looks for
// it: the fake's host on a port nothing listens on, so that every call is
// refused at once, as behind an egress firewall that rejects.
const unreachableRDP = "http://rdp:1"

// heartbeatEvery is the replicas' heartbeat interval (not configurable; 5 s):
// the fleet view in /v1/status is at most that old.
const heartbeatEvery = 5 * time.Second

// handoverBudget is the longest a leader whose every upstream call is
// refused at once may take, from the refresh falling due, to hand over: the
// backoff ceilings between HandoverAfter attempts in a row (see
// the refresher's backoff), plus a second for the release and the watch to see it.
func (tm timings) handoverBudget() time.Duration {
	d := time.Second
	for n := 1; n < tm.HandoverAfter; n++ {
		d += min(tm.RetryMax, tm.RetryMin<<(n-1))
	}
	return d
}

// Scenario 10. A replica with no route to the upstream (broken egress or DNS
// on its node) holds the lock when the refresh falls due: it fails, hands
// over within its retries, and a healthy replica fetches the token before
// the current one's serve deadline. No client of any replica sees a failure,
// the upstream sees one call per cycle, and the fleet view names the cut-off
// replica's upstream as failing.
func TestBadUpstreamReplica(t *testing.T) {
	f := newFleet(t, 3, fast)
	f.token(1)
	cut := f.addReplica("cut", map[string]string{"RDP_BASE_URL": unreachableRDP})
	// Start from a fresh cycle, however long cut's container took to start
	// (on a loaded machine, longer than a cycle): the next token.
	before := len(f.stats().Tokens)
	t1 := f.token(before + 1)
	deadline := f.serveDeadline(t1)
	f.waitServing(t1.Token, []*replica{cut}, 5*time.Second)

	// Hand cut the lock: with the healthy followers frozen, the leader stops
	// gracefully and releases the lock; cut is the only candidate left.
	old := f.currentLeader()
	var frozen []*replica
	for _, r := range f.replicas {
		if r != old && r != cut {
			frozen = append(frozen, r)
		}
	}
	stopAt := time.Now()
	for _, r := range frozen {
		f.pause(r.c, r.name)
	}
	f.stopReplica(old, 10*time.Second)
	leader, leadAt := f.waitNewLeader(old, stopAt, f.tm.LockTTL+5*time.Second)
	if leader != cut {
		t.Fatalf("%s took the lock, want %s, the only replica neither frozen nor stopped", leader.name, cut.name)
	}
	f.figure("cut_leads_after_sigterm", leadAt.Sub(stopAt))
	var down []window
	for _, r := range frozen {
		f.unpause(r.c, r.name)
		down = append(down, window{replica: r.name, from: stopAt, to: time.Now().Add(time.Second), why: "frozen while cut takes the lock"})
	}
	f.restartReplica(old)
	ready := f.waitFor(15*time.Second, old.name+" ready again", func() (bool, string) {
		st := f.readyz(old)
		return st == http.StatusOK, fmt.Sprintf("/readyz %d", st)
	})
	down = append(down, window{replica: old.name, from: stopAt, to: ready, why: "stopped to hand cut the lock", graceful: true})

	// cut still leads when the refresh falls due.
	s, err := f.status(cut)
	if err != nil || !s.IsLeader || s.NextRefresh.IsZero() {
		t.Fatalf("status of %s: is_leader=%v next_refresh=%v err=%v, want the leader with a refresh planned (%s)", cut.name, s.IsLeader, s.NextRefresh, err, s.raw)
	}
	due := s.NextRefresh
	if time.Now().After(due) {
		t.Fatalf("the refresh fell due at %s, before %s led and the fleet was whole again: the schedule is off", f.tl.rel(due), cut.name)
	}
	f.note("%s plans the refresh for %s", cut.name, f.tl.rel(due))

	// It fails, hands over, and a healthy replica fetches the next token.
	var gone leaderChange
	f.waitFor(time.Until(deadline)+f.tm.LockTTL, cut.name+" hands over", func() (bool, string) {
		var ok bool
		gone, ok = f.leader.firstSince(leadAt, func(h string) bool { return h != cut.name })
		return ok, fmt.Sprintf("lock holder %q", f.leader.current())
	})
	handover := gone.at.Sub(due)
	f.figure("handover_after_due", handover)
	if limit := f.tm.handoverBudget(); handover > limit {
		t.Errorf("%s handed over %v after the refresh fell due, want at most %v (%d attempts refused at once, their backoff, the release)", cut.name, handover, limit, f.tm.HandoverAfter)
	}
	next, nextAt := f.waitNewLeader(cut, gone.at, f.tm.LockTTL+5*time.Second)
	f.figure("leader_after_handover", nextAt.Sub(gone.at))
	t2 := f.tokenAfter(leadAt, time.Until(deadline)+5*time.Second)
	f.figure("refresh_issued_ahead_of_serve_deadline", deadline.Sub(t2.IssuedAt))
	if !t2.IssuedAt.Before(deadline) {
		t.Errorf("the refresh was issued at %s, not before the previous token's serve deadline %s", f.tl.rel(t2.IssuedAt), f.tl.rel(deadline))
	}
	f.waitServing(t2.Token, f.replicas, 5*time.Second)
	if c, ok := f.leader.firstSince(gone.at, func(h string) bool { return h == cut.name }); ok {
		t.Errorf("%s took the lock again at %s after handing over at %s", cut.name, f.tl.rel(c.at), f.tl.rel(gone.at))
	}

	res := f.finish()
	f.check(res, expect{down: down})
	checkServedBy(f, res, f.others(cut), t1, deadline)
	f.figure("upstream_liveness_calls_ideal", before+2)
	if got := res.stats.LivenessCalls; got != before+2 {
		t.Errorf("upstream liveness calls = %d, want %d (the tokens before the handover and one refresh; %s's calls never reach it)", got, before+2, cut.name)
	}

	// The fleet view, as the new leader reports it, names cut's upstream as
	// failing. A heartbeat follows a change of leadership at once; allow two
	// intervals all the same.
	var view status
	seen, detail, ok := f.poll(2*heartbeatEvery+time.Second, "the fleet view shows "+cut.name+"'s upstream failing", func() (bool, string) {
		var err error
		view, err = f.status(next)
		if err != nil {
			return false, err.Error()
		}
		e, ok := view.replica(cut.name)
		return ok && e.Upstream == "failing", view.raw
	})
	if !ok {
		t.Errorf(`the fleet view (status of %s) has no "upstream":"failing" for %s; last answer: %s`, next.name, cut.name, detail)
	} else {
		e, _ := view.replica(cut.name)
		f.figure("fleet_view_failing_after_handover", seen.Sub(gone.at))
		t.Logf("fleet view of %s: upstream %q, upstream_error %q", cut.name, e.Upstream, e.UpstreamError)
		if e.UpstreamError == "" {
			t.Errorf("the fleet view names %s's upstream failing without an upstream_error", cut.name)
		}
		if n, ok := view.replica(next.name); !ok || n.Upstream == "failing" {
			t.Errorf("the fleet view shows the new leader %s as %+v (present %v), want its upstream not failing", next.name, n, ok)
		}
	}
}

// Scenario 11. Redis answers slowly (the latency proxy holds back every
// answer and pub/sub message) from before a refresh falls due until the
// token's serve deadline: no client sees a failure, the refresh happens
// before that deadline, the fleet keeps a leader, and the upstream sees one
// call per cycle.
//
// The latency. In production Redis answered in 0.6 to 1.6 s with a 10 s lock
// TTL; the replicas' fixed 1 s read timeout failed the renewals, a single
// failed renewal ended leadership, and the fleet went down. Redis timeouts
// now follow the TTL (read timeout TTL/4 when this was written, TTL/2 now)
// and renewals are retried within
// the TTL. The suite's TTL, 3 s, leaves no latency that tells the two apart:
// the old code fails only when an answer takes longer than its 1 s timeout,
// which is also TTL/3, the bound of its renewals; TTL/4 is 750 ms, so any
// such latency fails the new code as well (measured on the old code: it
// kept its leader and refreshed on time at 150-400 ms and at 600-900 ms).
// Hence two cases:
//   - "compressed": the suite's timings, with the production latency
//     compressed as the TTL is (0.6-1.6 s of 10 s is 6-16 %; 150-400 ms of
//     3 s). The old code passed it too; it guards TTL/4 at a short TTL.
//   - "over_1s": a 7 s lock TTL, so that TTL/4 (1.75 s) exceeds the old
//     1 s, and 1.1-1.4 s per answer, the upper part of the production
//     report: every answer misses a 1 s read timeout, so the old fleet could
//     neither renew nor take the lock and ran out of token at the serve
//     deadline; with TTL/4 every answer arrives in time. The refresh window
//     grows from 8 s to 10 s so that a failover (one TTL) still fits between
//     the refresh and the serve deadline (10 s - 2 s margin > 7 s), and the
//     lifetime from 20 s to 24 s so that the refresh after the next one does
//     not fall due before the case ends.
func TestSlowRedis(t *testing.T) {
	over1s := fast
	over1s.LockTTL = 7 * time.Second
	over1s.RefreshBefore = 10 * time.Second
	// Four seconds more than the 20 s the others use, and the write's
	// budget (serveDeadline) more: each stored token is dated that much
	// early, which brings the refresh after the next one that much sooner.
	over1s.Lifetime = 24*time.Second + over1s.LockTTL/2
	tests := []struct {
		name   string
		tm     timings
		lo, hi time.Duration
	}{
		{"compressed", fast, 150 * time.Millisecond, 400 * time.Millisecond},
		{"over_1s", over1s, 1100 * time.Millisecond, 1400 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { slowRedis(t, tt.tm, tt.lo, tt.hi) })
	}
}

// slowRedis is one case of TestSlowRedis: latency drawn from [lo, hi] per
// answer of Redis.
func slowRedis(t *testing.T, tm timings, lo, hi time.Duration) {
	f := newFleet(t, 3, tm, withLatencyProxy())
	t1 := f.token(1)
	deadline := t1.ExpiresAt.Add(-f.tm.ServeMargin)
	// The refresh falls due RefreshBefore before expiry as the leader dates
	// it (early by up to the write's budget, half the lock TTL:
	// serveDeadline), up to a tenth of it earlier (jitter). Slow from 2 s
	// before the earliest due until just past the serve deadline: a fleet
	// that cannot refresh while Redis is slow runs out of token.
	onAt := t1.ExpiresAt.Add(-f.tm.LockTTL/2 - f.tm.RefreshBefore - f.tm.RefreshBefore/10 - 2*time.Second)
	offAt := deadline.Add(500 * time.Millisecond)
	sleepUntil(onAt)
	f.setRedisLatency(lo, hi)
	sleepUntil(offAt)
	ps := f.setRedisLatency(0, 0)
	f.figure("redis_answers_delayed", ps.Delayed)
	f.figure("redis_delay_longest", ps.Longest)

	// Wait for a token newer than tok#1 on every replica (a fleet that cannot
	// work with Redis slow gets there only once it is quick again), then
	// judge below when it came.
	if _, detail, ok := f.poll(f.tm.LockTTL+5*time.Second, "a token newer than tok#1 served by every replica", func() (bool, string) {
		for _, r := range f.replicas {
			s, ok := f.rec.latest(r.name)
			if !ok || !s.ok() || s.token == t1.Token {
				return false, fmt.Sprintf("%s answered %s", r.name, s.outcome(f.tl.tokenNames()))
			}
		}
		return true, ""
	}); !ok {
		t.Errorf("no token newer than tok#1 reached every replica within %v of Redis answering quickly again (last: %s)", f.tm.LockTTL+5*time.Second, detail)
	}

	// The watch reads the lock's holder from Redis, around the proxy: a
	// replica whose answer timed out may hold the lock there without
	// knowing. The refresh deadline below is what catches a fleet whose
	// leaders cannot work.
	total, longest := f.leader.leaderless(onAt, offAt)
	f.figure("leaderless_while_slow", total)
	f.figure("leaderless_while_slow_longest", longest)
	if longest >= f.tm.LockTTL {
		t.Errorf("the fleet had no leader for %v in a row while Redis was slow, want less than the lock TTL %v", longest, f.tm.LockTTL)
	}
	f.figure("lock_changes_while_slow", len(f.leader.between(onAt, offAt)))

	res := f.finish()
	f.check(res, expect{
		// Every answer of Redis comes late: a follower hears of the new token
		// (a message, then a read) up to two delays after the leader serves it.
		lag: []lagWindow{{window{from: onAt, to: offAt.Add(f.tm.Poll), why: "redis slow"}, 2*hi + propagation}},
	})

	// The refresh is in time: the next token was issued, and reached every
	// replica, before tok#1's serve deadline.
	if fresh := res.stats.issuedBetween(onAt, res.end); len(fresh) == 0 {
		t.Errorf("no token was issued after Redis turned slow")
	} else {
		f.figure("refresh_issued_ahead_of_serve_deadline", deadline.Sub(fresh[0].IssuedAt))
		if !fresh[0].IssuedAt.Before(deadline) {
			t.Errorf("tok#2 was issued at %s, not before tok#1's serve deadline %s", f.tl.rel(fresh[0].IssuedAt), f.tl.rel(deadline))
		}
	}
	checkServedBy(f, res, f.replicas, t1, deadline)
	// The calls are counted up to the earliest the refresh after tok#2 can
	// fall due: a case that ends later, on a loaded machine, sees that
	// refresh too, which is on time, not extra. It is reckoned as onAt is
	// for tok#1, and earlier by two of Redis's slowest answers: tok#2 was
	// stored while Redis answered slowly, and a replica dates a token from
	// when it sent the read, which on a connection opened then waits for
	// two answers first (go-redis's HELLO, then CLIENT SETINFO). The
	// leader dates tok#2 early by up to that, and refreshes that early.
	cutoff := res.end
	if fresh := res.stats.issuedBetween(onAt, res.end); len(fresh) > 0 {
		cutoff = fresh[0].ExpiresAt.Add(-f.tm.LockTTL/2 - f.tm.RefreshBefore - f.tm.RefreshBefore/10 - 2*hi)
	}
	calls := 0
	for _, c := range res.stats.Calls {
		if c.Op == "liveness" && c.At.Before(cutoff) {
			calls++
		}
	}
	f.figure("upstream_liveness_calls_ideal", 2)
	if calls != 2 {
		t.Errorf("upstream liveness calls before %s = %d, want 2 (the first token and one refresh)", f.tl.rel(cutoff), calls)
	}
}

// checkServedBy fails the test unless every replica of rs served a token
// newer than old before deadline, and logs how long before.
func checkServedBy(f *fleet, res result, rs []*replica, old fakeToken, deadline time.Time) {
	f.t.Helper()
	at, ok := servedEverywhere(res, rs, old.Token)
	switch {
	case !ok:
		f.t.Errorf("%s: not every one served a token newer than %s", names(rs), f.tl.tokenName(old.Token))
	case !at.Before(deadline):
		f.t.Errorf("a token newer than %s reached all of %s at %s, not before the serve deadline %s", f.tl.tokenName(old.Token), names(rs), f.tl.rel(at), f.tl.rel(deadline))
	default:
		f.figure("refresh_served_ahead_of_serve_deadline", deadline.Sub(at))
	}
}
