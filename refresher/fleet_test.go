package refresher_test

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/tokenkeeper/tokenkeeper/cache"
	"github.com/tokenkeeper/tokenkeeper/internal/redistest"
	"github.com/tokenkeeper/tokenkeeper/internal/testkit"
	"github.com/tokenkeeper/tokenkeeper/refresher"
	"github.com/tokenkeeper/tokenkeeper/upstream"
)

// value returns the value of metric name in reg: of the child with labels
// (name, value pairs) for a vector, the count of observations for a
// histogram. The replicas of these tests register with a
// *testkit.Metrics, read with prometheus/testutil; the plain registries of
// realredis_test.go's replicas are read from what they gather, where -1
// means no such sample.
func value(t *testing.T, reg prometheus.Gatherer, name string, labels ...string) float64 {
	t.Helper()
	if m, ok := reg.(*testkit.Metrics); ok {
		v, err := m.Value(name, labels...)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	return gathered(t, reg, name, labels...)
}

// gathered returns the value of the sample of family name whose labels
// include want, or -1 when there is none.
func gathered(t *testing.T, reg prometheus.Gatherer, name string, want ...string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metric:
		for _, m := range mf.GetMetric() {
			got := map[string]string{}
			for _, lp := range m.GetLabel() {
				got[lp.GetName()] = lp.GetValue()
			}
			for i := 0; i+1 < len(want); i += 2 {
				if got[want[i]] != want[i+1] {
					continue metric
				}
			}
			switch {
			case m.GetCounter() != nil:
				return m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				return m.GetGauge().GetValue()
			case m.GetHistogram() != nil:
				return float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return -1
}

func replicaNames(rs []refresher.Replica) string {
	var names []string
	for _, r := range rs {
		names = append(names, r.Instance)
	}
	return strings.Join(names, ",")
}

// TestFleetView runs two replicas: both heartbeat into Redis, the fleet
// view names the leader and lists both as ready with the same token, the
// leader's refresh is recorded for every replica to see, and a replica
// that stops leaves the list at once.
func TestFleetView(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := newWorld(t)
		ctx := t.Context()
		src := w.source(hour)
		const upstreamTook = 200 * time.Millisecond
		src.delay = upstreamTook
		a := w.startObserved("a", src, timings{lifetime: hour})
		b := w.startObserved("b", src, timings{lifetime: hour})
		leader := oneLeader(t, []*replica{a, b}, time.Minute)

		var f refresher.Fleet
		w.tl.Until("both replicas ready in the fleet view", time.Minute, func() bool {
			var err error
			f, err = refresher.ReadFleet(ctx, w.admin, w.keys, time.Now())
			if err != nil || len(f.Replicas) != 2 {
				return false
			}
			for _, r := range f.Replicas {
				if !r.Ready || r.Fingerprint == "" || r.Leader != (r.Instance == leader.name) {
					return false
				}
			}
			return len(f.Refreshes) > 0
		})
		if f.Leader != leader.name {
			t.Errorf("fleet leader = %q, want %q", f.Leader, leader.name)
		}
		if got, want := replicaNames(f.Replicas), "a,b"; got != want {
			t.Errorf("replicas = %s, want %s", got, want)
		}
		now := w.tl.Now()
		for _, r := range f.Replicas {
			if r.Version != "v-test" {
				t.Errorf("%s: version = %q, want v-test", r.Instance, r.Version)
			}
			if age := now.Sub(r.Seen); age < 0 || age > heartbeatEvery {
				t.Errorf("%s: heartbeat seen %v ago, want within a heartbeat period (%v)", r.Instance, age, heartbeatEvery)
			}
			if left := r.ExpiresAt.Sub(now); left <= 0 || left > hour {
				t.Errorf("%s: token expires in %v, want within its hour", r.Instance, left)
			}
			if r.Fingerprint != f.Replicas[0].Fingerprint {
				t.Errorf("replicas hold different tokens: %s and %s", r.Fingerprint, f.Replicas[0].Fingerprint)
			}
		}
		first := f.Refreshes[len(f.Refreshes)-1]
		if first.By != leader.name || first.Outcome != refresher.OutcomeSuccess || first.Fingerprint == "" || first.Error != "" {
			t.Errorf("first refresh = %+v, want a success by %s", first, leader.name)
		}
		// The upstream call took its 200ms of fake time, the write none.
		if first.Took <= 0 || first.Upstream <= 0 || first.Upstream > first.Took ||
			math.Abs(float64(first.Upstream-upstreamTook)) > float64(time.Millisecond) {
			t.Errorf("first refresh took %v, upstream %v: want 0 < upstream (%v) <= took", first.Took, first.Upstream, upstreamTook)
		}

		// A follower's status shows the same fleet.
		follower := a
		if leader.name == "a" {
			follower = b
		}
		st, err := follower.ref.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(st.Replicas) != 2 || len(st.Refreshes) == 0 || st.Refreshes[0].By != leader.name {
			t.Errorf("follower status: replicas %s, refreshes %+v; want both and the leader's refresh", replicaNames(st.Replicas), st.Refreshes)
		}

		// A replica that stops is gone from the list at once.
		follower.stop()
		f, err = refresher.ReadFleet(ctx, w.admin, w.keys, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		if got := replicaNames(f.Replicas); got != leader.name {
			t.Errorf("after %s stopped, replicas = %s, want %s", follower.name, got, leader.name)
		}
	})
}

// TestHeartbeatsExpire writes the heartbeats of replicas that died without
// a word: readers drop one once it is older than its TTL on Redis's clock,
// not a millisecond sooner, and remove it, and remove one they cannot read.
func TestHeartbeatsExpire(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := newWorld(t)
		ctx := t.Context()
		rdb := w.admin
		replicas := w.keys.Replicas
		if !strings.HasSuffix(replicas, ":replicas") || !strings.Contains(replicas, "{") {
			t.Fatalf("heartbeat key %q lacks the hash tag or suffix", replicas)
		}
		// Written at 1 ms after the epoch, for 100 ms: long gone.
		if err := rdb.HSet(ctx, replicas, "ghost", `1 100 {"instance":"ghost","ready":true}`).Err(); err != nil {
			t.Fatal(err)
		}
		if err := rdb.HSet(ctx, replicas, "junk", `not a heartbeat`).Err(); err != nil {
			t.Fatal(err)
		}
		f, err := refresher.ReadFleet(ctx, rdb, w.keys, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		if len(f.Replicas) != 0 || f.Leader != "" {
			t.Errorf("fleet = %+v, want no replica and no leader", f)
		}
		if n, _ := rdb.HLen(ctx, replicas).Result(); n != 0 {
			t.Errorf("%d expired heartbeats left in Redis, want 0", n)
		}

		// Written now (Redis's clock is the fake one), for 100 ms.
		written := w.tl.Now()
		beat := fmt.Sprintf(`%d 100 {"instance":"recent","ready":true}`, written.UnixMilli())
		if err := rdb.HSet(ctx, replicas, "recent", beat).Err(); err != nil {
			t.Fatal(err)
		}
		for _, step := range []struct {
			after time.Duration
			want  string
		}{
			{0, "recent"},
			{100 * time.Millisecond, "recent"},
			{101 * time.Millisecond, ""},
		} {
			w.tl.Advance(written.Add(step.after).Sub(w.tl.Now()))
			f, err := refresher.ReadFleet(ctx, rdb, w.keys, time.Now())
			if err != nil {
				t.Fatal(err)
			}
			if got := replicaNames(f.Replicas); got != step.want {
				t.Errorf("%v after the heartbeat: replicas %q, want %q", step.after, got, step.want)
			}
			if step.want != "" && !f.Replicas[0].Seen.Equal(written) {
				t.Errorf("heartbeat seen at %v, want when written, %v", f.Replicas[0].Seen, written)
			}
		}
		if n, _ := rdb.HLen(ctx, replicas).Result(); n != 0 {
			t.Errorf("%d expired heartbeats left in Redis, want 0", n)
		}
	})
}

// TestRefreshMetricsAndHistory fails the upstream, then heals it: the
// failures are counted by outcome, in a row, and recorded with their
// error; the success that follows resets the count.
func TestRefreshMetricsAndHistory(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := newWorld(t)
		ctx := t.Context()
		src := w.source(hour)
		// It keeps leading through three failures: with the default (3) it
		// would hand over at the third, and a follower counts none in a row.
		a := w.startObserved("a", src, timings{lifetime: hour, handoverAfter: 5})
		w.tl.Until("a leads and has recorded its first refresh", time.Minute, func() bool {
			_, ok := a.store.Current()
			st, err := a.ref.Status(ctx)
			return a.ref.IsLeader() && ok && err == nil && len(st.Refreshes) > 0
		})
		if got := value(t, a.reg, "tokenkeeper_leader"); got != 1 {
			t.Errorf("tokenkeeper_leader = %v, want 1", got)
		}
		if got := value(t, a.reg, "tokenkeeper_leadership_changes_total", "change", "acquired"); got != 1 {
			t.Errorf("leadership acquired = %v, want 1", got)
		}
		if got := value(t, a.reg, "tokenkeeper_refreshes_total", "outcome", "success"); got != 1 {
			t.Errorf("successes = %v, want 1", got)
		}
		if got := value(t, a.reg, "tokenkeeper_token_writes_total", "result", "stored"); got != 1 {
			t.Errorf("stored writes = %v, want 1", got)
		}
		if got := value(t, a.reg, "tokenkeeper_upstream_fetches_total"); got != 1 {
			t.Errorf("upstream fetches = %v, want 1", got)
		}

		// The next refresh falls due within the token's hour, and fails.
		src.set(func(s *source) { s.fail = &upstream.Error{Op: "liveness", Status: 503, Retryable: true} })
		w.tl.Until("three failures in a row", hour, func() bool {
			return value(t, a.reg, "tokenkeeper_refresh_consecutive_failures") == 3
		})
		if got := value(t, a.reg, "tokenkeeper_refreshes_total", "outcome", "upstream_error"); got != 3 {
			t.Errorf("upstream errors = %v, want 3", got)
		}
		st, err := a.ref.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		last := st.Refreshes[0]
		if last.Outcome != refresher.OutcomeUpstreamError || !strings.Contains(last.Error, "503") || last.Fingerprint != "" {
			t.Errorf("last attempt = %+v, want an upstream_error naming the 503", last)
		}

		src.set(func(s *source) { s.fail = nil })
		w.tl.Until("the failures in a row reset", 5*time.Minute, func() bool {
			return value(t, a.reg, "tokenkeeper_refresh_consecutive_failures") == 0 &&
				value(t, a.reg, "tokenkeeper_refreshes_total", "outcome", "success") == 2
		})
		attempts := 0.0
		for _, o := range []string{refresher.OutcomeSuccess, refresher.OutcomeSuperseded, refresher.OutcomeUpstreamError,
			refresher.OutcomeRedisError, refresher.OutcomeFenced} {
			attempts += value(t, a.reg, "tokenkeeper_refreshes_total", "outcome", o)
		}
		if got := value(t, a.reg, "tokenkeeper_refresh_duration_seconds"); got != attempts || attempts != 5 {
			t.Errorf("refresh durations observed = %v, attempts = %v; want every attempt observed, 5", got, attempts)
		}
	})
}

func TestHolderOf(t *testing.T) {
	tests := []struct {
		name, value, want string
	}{
		{"ours", "tk:0123456789abcdef:replica-1", "replica-1"},
		{"instance with colons", "tk:0123456789abcdef:host:8080", "host:8080"},
		{"an earlier version's", "abcdefghijklmnopqrstuvreplica-2", "replica-2"},
		{"too short", "tk:01:x", ""},
		{"empty", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := refresher.HolderOf(tt.value); got != tt.want {
				t.Errorf("HolderOf(%q) = %q, want %q", tt.value, got, tt.want)
			}
		})
	}
}

// TestStatesAtRest: at rest a replica writes its beat into the fleet's
// hash once per period and nothing per token, yet the fleet view goes on
// listing it for every token, dated by its beat.
func TestStatesAtRest(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := newWorld(t)
		ctx := t.Context()
		src := w.source(hour)
		rs := []*replica{w.startObserved("a", src, timings{lifetime: hour}), w.startObserved("b", src, timings{lifetime: hour})}
		oneLeader(t, rs, time.Minute)
		w.tl.Until("both replicas ready in the fleet view", time.Minute, func() bool {
			f, err := refresher.ReadFleet(ctx, w.admin, w.keys, time.Now())
			return err == nil && len(f.Replicas) == 2 && f.Replicas[0].Ready && f.Replicas[1].Ready
		})
		w.tl.Advance(heartbeatEvery) // any lazy write done
		states, err := w.admin.HGetAll(ctx, w.keys.Replicas).Result()
		if err != nil {
			t.Fatal(err)
		}
		beats, err := w.admin.HGetAll(ctx, w.keys.Fleet).Result()
		if err != nil {
			t.Fatal(err)
		}
		w.tl.Advance(10 * heartbeatEvery)
		after, err := w.admin.HGetAll(ctx, w.keys.Replicas).Result()
		if err != nil {
			t.Fatal(err)
		}
		for name, v := range states {
			if after[name] != v {
				t.Errorf("%s's state for the token was written again at rest:\n was %s\n now %s", name, v, after[name])
			}
		}
		beatsAfter, err := w.admin.HGetAll(ctx, w.keys.Fleet).Result()
		if err != nil {
			t.Fatal(err)
		}
		for _, name := range []string{"a", "b"} {
			if beats[name] == "" || beatsAfter[name] == beats[name] {
				t.Errorf("%s's beat was not renewed: was %q, now %q", name, beats[name], beatsAfter[name])
			}
		}
		f, err := refresher.ReadFleet(ctx, w.admin, w.keys, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		if got := replicaNames(f.Replicas); got != "a,b" {
			t.Fatalf("after %v at rest the fleet view lists %q, want a,b", 10*heartbeatEvery, got)
		}
		for _, r := range f.Replicas {
			if age := w.tl.Now().Sub(r.Seen); age < 0 || age > heartbeatEvery {
				t.Errorf("%s seen %v ago, want within a beat period (%v)", r.Instance, age, heartbeatEvery)
			}
		}
	})
}

// TestHeartbeatsWriteEachTokenOnItsOwn runs one heartbeat loop for a
// replica keeping two tokens, the first over a link that answers nothing:
// its write hangs until its timeout, and the second token's state is in
// the fleet view meanwhile, within a look (a fifth of a second) and the
// round trip. One loop looks at every token; no token's write waits for
// another's.
func TestHeartbeatsWriteEachTokenOnItsOwn(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		stuck := newWorld(t)
		w := stuck.other()
		src := w.source(hour)
		a := stuck.start("a", src, timings{lifetime: hour})
		b := w.start("a", src, timings{lifetime: hour})
		oneLeader(t, []*replica{a}, time.Minute)
		oneLeader(t, []*replica{b}, time.Minute)
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		go refresher.Beat(ctx, w.admin, w.keys.Fleet, refresher.BeatConfig{Instance: "a", Version: "v-test",
			Every: heartbeatEvery, Clock: w.tl.Clock, Logger: quiet})
		a.link.Cut()
		start := time.Now()
		done := make(chan error, 1)
		go func() { done <- refresher.Heartbeats(ctx, []*refresher.Refresher{a.ref, b.ref}) }()
		var reps []refresher.Replica
		w.tl.Until("the second token's state in the fleet view", time.Minute, func() bool {
			var err error
			reps, err = refresher.ReadReplicas(ctx, w.admin, w.keys)
			return err == nil && len(reps) == 1 && reps[0].Leader
		})
		if took := time.Since(start); took > time.Second {
			t.Errorf("the second token's state written %v after the loop started, want within a second: the first token's stuck write (up to %v) held it", took, refresher.RedisTimeout(lockTTL))
		}
		if got, _ := refresher.ReadReplicas(ctx, w.admin, stuck.keys); len(got) != 0 {
			t.Errorf("the first token's state was written over a link that answers nothing: %+v", got)
		}
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("Heartbeats returned %v, want context.Canceled", err)
		}
	})
}

// A control message reaches every replica at once; it makes none write its
// state (the last event rides along with the next write), or each lock a
// balancer releases would cost the whole fleet a write.
func TestControlMessagesWriteNoState(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := newWorld(t)
		ctx := t.Context()
		src := w.source(hour)
		a := w.startObserved("a", src, timings{lifetime: hour})
		b := w.startObserved("b", src, timings{lifetime: hour})
		oneLeader(t, []*replica{a, b}, time.Minute)
		w.tl.Until("both replicas' states written", time.Minute, func() bool {
			reps, err := refresher.ReadReplicas(ctx, w.admin, w.keys)
			return err == nil && len(reps) == 2 && reps[0].Fingerprint != "" && reps[1].Fingerprint != ""
		})
		w.tl.Advance(2 * time.Minute) // past every lazy write of the first token
		states := func() map[string]string {
			m, err := w.admin.HGetAll(ctx, w.keys.Replicas).Result()
			if err != nil {
				t.Fatal(err)
			}
			return m
		}
		before := states()
		if err := a.store.Publish(ctx, cache.Message{Type: "control-test"}); err != nil {
			t.Fatal(err)
		}
		w.tl.Advance(2 * time.Minute)
		after := states()
		for _, name := range []string{"a", "b"} {
			if before[name] == "" || after[name] != before[name] {
				t.Errorf("%s's state was %q before a control message and %q after, want it written once, before", name, before[name], after[name])
			}
		}
	})
}

// A beat says how many tokens its replica leads, and says it again within
// LeadingEvery of the number changing, so that a balancer reads every
// replica's count from the beats alone; while the number stays, it costs
// no write more than a beat a period. A beat of an earlier version, which
// does not say, leaves the leadership read incomplete.
func TestBeatsSayHowManyTokensTheReplicaLeads(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := newWorld(t)
		ctx := t.Context()
		rdb := w.srv.Client(t)
		var writes atomic.Int64 // scripts on the fleet's hash: beats
		rdb.AddHook(redistest.OnCommand(func(cmd redis.Cmder) {
			if args := cmd.Args(); len(args) > 3 && strings.HasPrefix(cmd.Name(), "eval") && args[3] == w.keys.Fleet {
				writes.Add(1)
			}
		}))
		var leading atomic.Int64
		const every = 40 * time.Second
		go refresher.Beat(ctx, rdb, w.keys.Fleet, refresher.BeatConfig{Instance: "a", Every: every,
			Clock: w.tl.Clock, Logger: quiet, Leading: func() int { return int(leading.Load()) }})
		read := func() refresher.Beats {
			f, err := refresher.ReadBeats(ctx, w.admin, w.keys.Fleet)
			if err != nil {
				t.Fatal(err)
			}
			return f
		}
		w.tl.Until("the first beat", time.Minute, func() bool {
			n, ok := read().Leading["a"]
			return ok && n == 0
		})

		before := writes.Load()
		w.tl.Advance(10 * every)
		if n := writes.Load() - before; n < 9 || n > 10 {
			t.Errorf("%d beats in %v with the leadership unchanged, want one a period (9 or 10)", n, 10*every)
		}
		leading.Store(3)
		if took := w.tl.Until("the new count in the beat", time.Minute, func() bool { return read().Leading["a"] == 3 }); took > refresher.LeadingEvery {
			t.Errorf("the beat said the new count %v after it changed, want within %v", took, refresher.LeadingEvery)
		}
		if f := read(); !f.Complete() {
			t.Errorf("the beats read %v, want complete", f.Leading)
		}

		go refresher.Beat(ctx, w.admin, w.keys.Fleet, refresher.BeatConfig{Instance: "old", Every: every,
			Clock: w.tl.Clock, Logger: quiet})
		w.tl.Until("the beat that does not say", time.Minute, func() bool {
			_, ok := read().Leading["old"]
			return ok
		})
		if l := read(); l.Complete() || l.Leading["old"] != -1 || l.Leading["a"] != 3 {
			t.Errorf("the leadership read %v, complete %v: want a replica's count as its beat says, and -1 for one whose beat does not say, so incomplete", l.Leading, l.Complete())
		}
	})
}

// A replica's state for a token changes with time alone where a deadline
// passes: a follower whose token's servability ends, nothing else
// happening (no leader, no event, no refresh), shows not ready in the
// fleet view within a look of that moment, though its looks at rest skip
// building a state that cannot have changed.
func TestStateFollowsTimeAtRest(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := newWorld(t)
		ctx := t.Context()
		// A lock no replica can take, and a token written under it.
		w.srv.Mini.Set(w.keys.Lock, "holder")
		w.srv.Mini.SetTTL(w.keys.Lock, 24*time.Hour)
		writer, err := cache.New(w.admin, cache.Config{Keys: w.keys, Clock: w.tl.Clock, Logger: quiet})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := writer.Write(ctx, cache.Write{LockValue: "holder", Value: "only", Deadline: w.tl.Now().Add(10 * time.Minute)}); err != nil {
			t.Fatal(err)
		}
		b := w.startObserved("b", w.source(hour), timings{lifetime: hour})
		ready := func(want bool) func() bool {
			return func() bool {
				f, err := refresher.ReadFleet(ctx, w.admin, w.keys, time.Now())
				return err == nil && len(f.Replicas) == 1 && f.Replicas[0].Ready == want
			}
		}
		w.tl.Until("the follower ready in the fleet view", time.Minute, ready(true))
		tok, ok := b.store.Current()
		if !ok {
			t.Fatal("the follower serves no token")
		}
		w.tl.Advance(5 * time.Minute) // at rest: many looks, nothing to write
		if !ready(true)() {
			t.Fatal("the follower's state says not ready while its token is servable")
		}
		w.tl.Advance(tok.Deadline.Add(-b.store.ServeMargin()).Sub(w.tl.Now()))
		if _, ok := b.store.Current(); ok {
			t.Fatal("the follower still serves its token at the end of its servability")
		}
		if took := w.tl.Until("the follower not ready in the fleet view", time.Minute, ready(false)); took > time.Second {
			t.Errorf("the fleet view said not ready %v after the token's servability ended, want within a look (a second)", took)
		}
	})
}
