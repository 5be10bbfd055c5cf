//go:build integration

package integration

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"
)

// Scenario 1. Three replicas over several cycles: every token is fetched once,
// on schedule, and served by every replica; no request fails.
func TestSteadyFleet(t *testing.T) {
	f := newFleet(t, 3, fast)
	const cycles = 3
	last := f.token(cycles + 1)
	f.waitServing(last.Token, f.replicas, 5*time.Second)
	res := f.finish()
	f.check(res, expect{})

	if got, want := res.stats.LivenessCalls, cycles+1; got != want {
		t.Errorf("upstream liveness calls = %d, want %d (one per cycle)", got, want)
	}
	for i, tk := range res.stats.Tokens {
		seen := map[string]bool{}
		for _, s := range served(res, tk.Token) {
			seen[s.replica] = true
		}
		for _, r := range f.replicas {
			if !seen[r.name] {
				t.Errorf("tok#%d was never served by %s", i+1, r.name)
			}
		}
	}
	for i := 1; i < len(res.stats.Tokens); i++ {
		f.figure(fmt.Sprintf("cycle_%d", i), res.stats.Tokens[i].IssuedAt.Sub(res.stats.Tokens[i-1].IssuedAt))
	}
}

// Scenario 2. The leader is killed (SIGKILL): another replica holds the lock
// within the lock TTL (plus its retry step), refreshes on schedule, and no
// request to a surviving replica fails.
func TestLeaderKilled(t *testing.T) {
	f := newFleet(t, 3, fast)
	t1 := f.token(1)
	old := f.currentLeader()
	sleepUntil(t1.IssuedAt.Add(3 * time.Second))

	killAt := time.Now()
	f.kill(old)
	leader, at := f.waitNewLeader(old, killAt, f.tm.LockTTL+5*time.Second)
	failover := at.Sub(killAt)
	f.figure("failover_sigkill", failover)
	if limit := f.tm.LockTTL + time.Second; failover > limit {
		t.Errorf("failover after SIGKILL took %v, want at most the lock TTL %v plus 1 s", failover, f.tm.LockTTL)
	}

	t2 := f.token(2)
	if t2.IssuedAt.Before(killAt) {
		t.Fatalf("tok#2 was issued before the kill; the schedule is off")
	}
	survivors := f.others(old)
	f.waitServing(t2.Token, survivors, 5*time.Second)
	if s, err := f.status(leader); err != nil || !s.IsLeader {
		t.Errorf("status of %s: is_leader=%v err=%v, want the new leader", leader.name, s.IsLeader, err)
	}
	res := f.finish()
	f.check(res, expect{down: []window{{replica: old.name, from: killAt, why: "killed"}}})
	if got := res.stats.LivenessCalls; got != 2 {
		t.Errorf("upstream liveness calls = %d, want 2 (the first token and one refresh)", got)
	}
}

// Scenario 3. The leader is frozen (docker pause) while its upstream call is in
// flight, past the lock TTL: another replica takes the lock; when the old
// leader resumes, the token it fetched is fenced (never stored, never served)
// and it steps down.
func TestFrozenLeaderIsFenced(t *testing.T) {
	f := newFleet(t, 3, fast)
	f.token(1)
	old := f.currentLeader()

	// Make the fetch slow, ask the leader for one, and freeze the leader
	// once the upstream has the request.
	f.knobs(map[string]any{"latency": "2s"})
	before := f.stats().LivenessCalls
	forcedAt := time.Now()
	type answer struct {
		status int
		body   string
		err    error
	}
	forced := make(chan answer, 1)
	go func() {
		st, body, err := f.forceRefresh(old, 35*time.Second)
		forced <- answer{st, body, err}
	}()
	f.waitFor(3*time.Second, "the leader's upstream call in flight", func() (bool, string) {
		s := f.stats()
		return s.LivenessCalls > before, fmt.Sprintf("%d liveness calls", s.LivenessCalls)
	})
	pauseAt := time.Now()
	f.pause(old.c, old.name)
	f.knobs(map[string]any{"latency": "0s"})

	leader, at := f.waitNewLeader(old, pauseAt, f.tm.LockTTL+5*time.Second)
	f.figure("failover_frozen", at.Sub(pauseAt))
	if s, err := f.status(leader); err != nil || !s.IsLeader {
		t.Errorf("status of %s during the freeze: is_leader=%v err=%v, want the new leader", leader.name, s.IsLeader, err)
	}
	// The upstream answers the frozen leader during the freeze.
	stale := f.tokenAfter(forcedAt, 5*time.Second)
	f.note("stale token %s issued to the frozen leader", f.tl.tokenName(stale.Token))
	sleepUntil(pauseAt.Add(2*f.tm.LockTTL + time.Second))
	resumeAt := time.Now()
	f.unpause(old.c, old.name)

	f.waitFor(5*time.Second, old.name+" steps down", func() (bool, string) {
		s, err := f.status(old)
		return err == nil && !s.IsLeader, fmt.Sprintf("%+v %v", s, err)
	})
	if s, err := f.status(old); err == nil {
		t.Logf("status of %s after resuming: %s", old.name, s.raw)
		// Which fence stopped it: the write script, or the lost renewal
		// cancelling the fetch before any write.
		path := "other"
		switch {
		case strings.Contains(s.LastError, "fenced"):
			path = "write_fenced"
		case strings.Contains(s.LastError, "renewal"), strings.Contains(s.LastError, "lock"):
			path = "lock_lost_first"
		}
		f.figure("fence_path", path)
	}
	if h := f.leader.current(); h == old.name {
		t.Errorf("the lock is held by the resumed leader %s; want %s to keep it", old.name, leader.name)
	}
	// Redis keeps the newest token fetched by a leader that held the lock:
	// the newest issued before it was read, or one issued since (the
	// resumed replica re-sends the admin's request, which the new leader
	// may be answering with a fetch right now).
	var newest fakeToken
	for _, tk := range f.stats().Tokens {
		if tk.Token != stale.Token {
			newest = tk
		}
	}
	v, err := f.hostRDB.dump(tokenKey)
	legit := false
	for _, tk := range f.stats().Tokens {
		if tk.Token != stale.Token && !tk.IssuedAt.Before(newest.IssuedAt) && strings.Contains(v, tk.Token) {
			legit = true
		}
	}
	switch {
	case err != nil:
		t.Errorf("read %s: %v", tokenKey, err)
	case strings.Contains(v, stale.Token):
		t.Errorf("INVARIANT 4: Redis holds the token the fenced leader fetched")
	case !legit:
		t.Errorf("Redis does not hold %s, the newest legitimate token, nor one issued since (value %.80q)", f.tl.tokenName(newest.Token), v)
	}

	// The next refresh by the new leader reaches everyone, the old leader
	// too: the scheduled one, or the admin's request, which the resumed
	// replica sends again once leadership has changed hands.
	next := f.tokenAfter(resumeAt, f.tm.Lifetime)
	f.waitServing(next.Token, f.replicas, 5*time.Second)

	// The admin's forced refresh must not claim the fenced token. It may
	// fail, stay unanswered, or name a token the new leader fetched for it,
	// one more fetch (not scheduled, hence early).
	var a answer
	answered := false
	select {
	case a = <-forced:
		answered = true
	case <-time.After(f.tm.LockTTL):
	}
	extra := 1 // the fenced token
	if answered && a.status == http.StatusOK && !strings.Contains(a.body, fingerprint(stale.Token)) {
		extra++
	}
	res := f.finish()
	f.check(res, expect{
		down:         []window{{replica: old.name, from: pauseAt, to: resumeAt.Add(time.Second), why: "frozen"}},
		lag:          []lagWindow{{window{replica: old.name, from: pauseAt, to: resumeAt.Add(f.tm.Poll + time.Second)}, f.tm.Poll + time.Second}},
		extraFetches: extra,
	})
	if n := len(served(res, stale.Token)); n > 0 {
		t.Errorf("INVARIANT 4: the fenced token was served %d times", n)
	}
	if !answered {
		f.figure("forced_refresh_answer", fmt.Sprintf("none_after_%v", time.Since(resumeAt).Round(time.Second)))
		return
	}
	f.figure("forced_refresh_answer", a.status)
	t.Logf("the frozen leader's forced refresh answered %d %s (err %v)", a.status, a.body, a.err)
	if a.status == http.StatusOK {
		if strings.Contains(a.body, fingerprint(stale.Token)) {
			t.Errorf("INVARIANT 4: the frozen leader reported the fenced token as its refresh: %s", a.body)
		} else if !strings.Contains(a.body, fingerprint(next.Token)) {
			t.Errorf("the forced refresh answered %s, want the token the new leader fetched after the resume, %s (%s)", a.body, f.tl.tokenName(next.Token), fingerprint(next.Token))
		}
	}
}

// Scenario 4. Redis restarts empty: the replicas keep serving, and the token
// returns to Redis from a replica's copy without an upstream call.
func TestRedisRestartedEmpty(t *testing.T) {
	f := newFleet(t, 3, fast)
	t1 := f.token(1)
	sleepUntil(t1.IssuedAt.Add(3 * time.Second))
	calls := f.stats().LivenessCalls

	downAt := time.Now()
	f.restartRedis()
	upAt := time.Now()
	f.figure("redis_down", upAt.Sub(downAt))
	reseeded := f.waitFor(2*f.tm.LockTTL+5*time.Second, "tok#1 back in Redis", func() (bool, string) {
		v, err := f.hostRDB.dump(tokenKey)
		return err == nil && strings.Contains(v, t1.Token), fmt.Sprintf("%.60q %v", v, err)
	})
	f.figure("reseed_after_redis_restart", reseeded.Sub(upAt))
	if got := f.stats().LivenessCalls; got != calls {
		t.Errorf("upstream liveness calls went from %d to %d across the Redis restart, want no new call", calls, got)
	}
	f.currentLeader()

	t2 := f.token(2)
	f.waitServing(t2.Token, f.replicas, 5*time.Second)
	res := f.finish()
	f.check(res, expect{
		// Pub/sub subscriptions die with Redis; a replica that has not yet
		// resubscribed catches up by polling.
		lag: []lagWindow{{window{from: downAt, why: "redis restarted"}, f.tm.Poll + time.Second}},
	})
	if got := res.stats.LivenessCalls; got != 2 {
		t.Errorf("upstream liveness calls = %d, want 2 (the first token and one scheduled refresh)", got)
	}
}

// Scenario 5. Redis is frozen for twice the lock TTL around the time the
// refresh falls due: replicas keep serving what they hold, leadership resumes
// afterwards, and the refresh costs one upstream fetch.
func TestRedisPaused(t *testing.T) {
	f := newFleet(t, 3, fast)
	t1 := f.token(1)
	pauseAt := t1.IssuedAt.Add(6 * time.Second)
	sleepUntil(pauseAt)
	f.pause(f.redis, "redis")
	sleepUntil(pauseAt.Add(2 * f.tm.LockTTL))
	resumeAt := time.Now()
	f.unpause(f.redis, "redis")

	leaderAt := f.waitFor(f.tm.LockTTL+5*time.Second, "a leader after Redis resumed", func() (bool, string) {
		h, err := f.hostRDB.lockHolder()
		return err == nil && f.byName(h) != nil, fmt.Sprintf("holder %q %v", h, err)
	})
	f.figure("leader_after_redis_resumed", leaderAt.Sub(resumeAt))

	t2 := f.token(2)
	f.waitServing(t2.Token, f.replicas, 5*time.Second)
	f.figure("refresh_after_redis_resumed", t2.IssuedAt.Sub(resumeAt))
	res := f.finish()
	f.check(res, expect{
		lag: []lagWindow{{window{from: pauseAt, to: resumeAt.Add(f.tm.LockTTL + f.tm.Poll), why: "redis frozen"}, f.tm.Poll + time.Second}},
	})
	if got := len(res.stats.issuedBetween(pauseAt, res.end)); got != 1 {
		t.Errorf("%d tokens fetched from the pause on, want 1", got)
	}
	if got := res.stats.LivenessCalls; got != 2 {
		t.Errorf("upstream liveness calls = %d, want 2", got)
	}
}

// Scenario 6. The leader is cut off from Redis (network disconnect) while the
// others still reach it: another replica takes the lock and alone fetches the
// next token; the cut-off replica serves its copy until expiry minus the
// margin, then turns not-ready, and recovers once reconnected.
func TestLeaderPartitionedFromRedis(t *testing.T) {
	f := newFleet(t, 3, fast)
	t1 := f.token(1)
	cut := f.currentLeader()
	sleepUntil(t1.IssuedAt.Add(2 * time.Second))

	cutAt := time.Now()
	f.disconnect(cut, f.core)
	leader, at := f.waitNewLeader(cut, cutAt, f.tm.LockTTL+5*time.Second)
	f.figure("failover_partition", at.Sub(cutAt))

	t2 := f.token(2)
	f.waitServing(t2.Token, f.others(cut), 5*time.Second)
	if s, err := f.status(leader); err != nil || !s.IsLeader {
		t.Errorf("status of %s: is_leader=%v err=%v, want the new leader", leader.name, s.IsLeader, err)
	}
	unservable := f.serveDeadline(t1)
	notReadyAt := f.waitFor(time.Until(unservable)+5*time.Second, cut.name+" not ready", func() (bool, string) {
		st := f.readyz(cut)
		return st == http.StatusServiceUnavailable, fmt.Sprintf("/readyz %d", st)
	})
	f.figure("not_ready_after_serve_deadline", notReadyAt.Sub(unservable))
	if notReadyAt.Before(unservable.Add(-time.Second)) {
		t.Errorf("%s turned not-ready at %s, before tok#1's serve deadline %s", cut.name, f.tl.rel(notReadyAt), f.tl.rel(unservable))
	}

	reconnectAt := time.Now()
	f.connect(cut, f.core)
	recovered := f.waitFor(f.tm.Poll+f.tm.LockTTL+10*time.Second, cut.name+" serves the fleet's token again", func() (bool, string) {
		s := f.stats()
		current := s.Tokens[len(s.Tokens)-1].Token
		l, ok := f.rec.latest(cut.name)
		return ok && l.sent.After(reconnectAt) && l.token == current, l.outcome(f.tl.tokenNames())
	})
	f.figure("recovery_after_reconnect", recovered.Sub(reconnectAt))
	res := f.finish()
	f.check(res, expect{
		unready: []window{{replica: cut.name, from: unservable.Add(-500 * time.Millisecond), to: recovered, why: "cut off, token past its serve deadline"}},
		lag:     []lagWindow{{window{replica: cut.name, from: cutAt, to: recovered}, 0}},
	})

	// Exactly one fetch while cut off, and the cut-off replica served its
	// copy to the end.
	if got := res.stats.issuedBetween(cutAt, reconnectAt); len(got) != 1 {
		t.Errorf("%d tokens fetched while %s was cut off, want exactly 1", len(got), cut.name)
	}
	var lastT1 time.Time
	for _, s := range res.samples {
		if s.replica != cut.name || !s.ok() || s.sent.Before(cutAt) || s.sent.After(reconnectAt) {
			continue
		}
		if s.token != t1.Token {
			t.Errorf("%s, cut off, served %s at %s", cut.name, f.tl.tokenName(s.token), f.tl.rel(s.sent))
			break
		}
		lastT1 = s.sent
	}
	if lastT1.Before(unservable.Add(-time.Second)) {
		t.Errorf("INVARIANT 5: %s stopped serving tok#1 at %s, want until its serve deadline %s", cut.name, f.tl.rel(lastT1), f.tl.rel(unservable))
	}
}

// Scenario 7. The upstream fails for longer than the advisory window but less
// than the lifetime: no client sees a failure, the retries back off (and
// honour Retry-After), and one fetch succeeds when the upstream returns.
func TestUpstreamOutageWithinLifetime(t *testing.T) {
	f := newFleet(t, 3, fast)
	t1 := f.token(1)
	// The outage is longer than the advisory window and covers the time
	// tok#1's refresh falls due (+9.7 s to +10.5 s: 20 s less the write's
	// budget, the window and its jitter), so that the refresh and at least
	// one retry fail. It ends well before the fleet's serve deadline
	// (+16.5 s, tok#1 dated early by the write's budget): a failure just
	// before its end can hand leadership over (the third in a row), and the
	// next leader is elected and waits out Retry-After before it fetches.
	// An outage ending at +15 s left that no room when the refresh fell
	// due early in its jitter: the hand-over came at +14.9 s, the fetch
	// after the serve deadline, and a replica answered 503.
	outFrom := t1.IssuedAt.Add(2 * time.Second)
	outTo := f.serveDeadline(t1).Add(-f.tm.RetryMax - f.tm.HandoverCooldown - f.tm.ServeMargin/4)
	if outTo.Sub(outFrom) <= f.tm.RefreshBefore {
		t.Fatalf("outage of %v, want longer than the advisory window %v", outTo.Sub(outFrom), f.tm.RefreshBefore)
	}
	sleepUntil(outFrom)
	authBefore := f.stats().authCalls()
	f.knobs(map[string]any{"liveness_status": 503, "auth_status": 503, "retry_after": "1s"})
	sleepUntil(outTo)
	// Every auth call in the outage failed: a leader without an access
	// token fails there, before any liveness call.
	authFailed := f.stats().authCalls() - authBefore
	f.knobs(map[string]any{"liveness_status": 0, "auth_status": 0, "retry_after": "0s"})

	t2 := f.tokenAfter(outTo, f.tm.RetryMax+5*time.Second)
	f.figure("fetch_after_outage", t2.IssuedAt.Sub(outTo))
	f.waitServing(t2.Token, f.replicas, 5*time.Second)
	res := f.finish()
	f.check(res, expect{})

	var failed []time.Time
	for _, c := range res.stats.Calls {
		if c.Op == "liveness" && c.Status != http.StatusOK && !c.At.Before(outFrom) && c.At.Before(outTo.Add(500*time.Millisecond)) {
			failed = append(failed, c.At)
		}
	}
	f.figure("upstream_failed_calls", len(failed)+authFailed)
	if len(failed)+authFailed < 2 {
		t.Errorf("%d failed liveness and %d failed auth calls during the outage, want at least 2 in all (a refresh and its retries)", len(failed), authFailed)
	}
	var minGap, maxGap time.Duration
	for i := 1; i < len(failed); i++ {
		g := failed[i].Sub(failed[i-1])
		if i == 1 || g < minGap {
			minGap = g
		}
		maxGap = max(maxGap, g)
	}
	f.figure("retry_interval_min", minGap)
	f.figure("retry_interval_max", maxGap)
	if len(failed) > 1 && minGap < 900*time.Millisecond {
		t.Errorf("retries %v apart while the upstream asked for Retry-After 1 s", minGap)
	}
	if got := res.stats.issuedBetween(outTo, res.end); len(got) != 1 {
		t.Errorf("%d tokens fetched after the outage, want 1", len(got))
	}
}

// Scenario 8. The upstream fails past the token's expiry: replicas answer 503
// with Retry-After and turn not-ready at the serve deadline, never serve the
// expired token, and recover by themselves when the upstream returns.
func TestUpstreamOutagePastExpiry(t *testing.T) {
	f := newFleet(t, 3, fast)
	t1 := f.token(1)
	outFrom := t1.IssuedAt.Add(3 * time.Second)
	unservable := f.serveDeadline(t1)
	outTo := t1.ExpiresAt.Add(5 * time.Second)
	sleepUntil(outFrom)
	f.knobs(map[string]any{"liveness_status": 503, "auth_status": 503, "retry_after": "1s"})

	notReady := f.waitFor(time.Until(unservable)+5*time.Second, "every replica not ready", func() (bool, string) {
		for _, r := range f.replicas {
			if st := f.readyz(r); st != http.StatusServiceUnavailable {
				return false, fmt.Sprintf("%s /readyz %d", r.name, st)
			}
		}
		return true, ""
	})
	f.figure("not_ready_after_serve_deadline", notReady.Sub(unservable))
	sleepUntil(outTo)
	for _, r := range f.replicas {
		if st := f.readyz(r); st != http.StatusServiceUnavailable {
			t.Errorf("%s /readyz %d during the outage past expiry, want 503", r.name, st)
		}
	}
	f.knobs(map[string]any{"liveness_status": 0, "auth_status": 0, "retry_after": "0s"})

	t2 := f.tokenAfter(outTo, f.tm.RetryMax+5*time.Second)
	recovered := f.waitServing(t2.Token, f.replicas, 5*time.Second)
	f.waitFor(5*time.Second, "every replica ready", func() (bool, string) {
		for _, r := range f.replicas {
			if st := f.readyz(r); st != http.StatusOK {
				return false, fmt.Sprintf("%s /readyz %d", r.name, st)
			}
		}
		return true, ""
	})
	f.figure("recovery_after_outage", recovered.Sub(outTo))
	res := f.finish()
	f.check(res, expect{
		unready: []window{{from: unservable.Add(-clockSlack), to: recovered, why: "no servable token"}},
	})
	for _, r := range f.replicas {
		n := 0
		for _, s := range res.samples {
			if s.replica == r.name && s.status == http.StatusServiceUnavailable && s.retryAfter != "" {
				n++
			}
		}
		if n == 0 {
			t.Errorf("%s never answered 503 with Retry-After during the outage", r.name)
		}
	}
}

// Scenario 9. Every replica in turn, the leader first, is stopped with SIGTERM
// and started again: another replica leads within about a second of the
// leader's SIGTERM, and no replica fails a request while it is ready.
func TestRollingRestart(t *testing.T) {
	f := newFleet(t, 3, fast)
	f.token(1)
	first := f.currentLeader()
	order := append([]*replica{first}, f.others(first)...)

	var down []window
	for _, r := range order {
		wasLeader := f.leader.current() == r.name
		stopAt := time.Now()
		f.stopReplica(r, 10*time.Second)
		if wasLeader {
			_, at := f.waitNewLeader(r, stopAt, f.tm.LockTTL+5*time.Second)
			failover := at.Sub(stopAt)
			f.figure("failover_sigterm", failover)
			if failover > 1500*time.Millisecond {
				t.Errorf("failover after SIGTERM of the leader %s took %v, want about a second (the lock is released on shutdown)", r.name, failover)
			}
		}
		f.restartReplica(r)
		ready := f.waitFor(15*time.Second, r.name+" ready again", func() (bool, string) {
			st := f.readyz(r)
			return st == http.StatusOK, fmt.Sprintf("/readyz %d", st)
		})
		f.figure("restart_ready_"+r.name, ready.Sub(stopAt))
		down = append(down, window{replica: r.name, from: stopAt, to: ready, why: "restarting", graceful: true})
	}
	s := f.stats()
	next := f.token(len(s.Tokens) + 1)
	f.waitServing(next.Token, f.replicas, 5*time.Second)
	res := f.finish()
	var lag []lagWindow
	for _, w := range down {
		lag = append(lag, lagWindow{window{replica: w.replica, from: w.from, to: w.to.Add(f.tm.Poll)}, f.tm.Poll + time.Second})
	}
	f.check(res, expect{down: down, lag: lag})
}
