package refresher_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/tokenkeeper/tokenkeeper/internal/fault"

	"github.com/bsm/redislock"
	"github.com/redis/go-redis/v9"

	"github.com/tokenkeeper/tokenkeeper/cache"
	"github.com/tokenkeeper/tokenkeeper/refresher"
	"github.com/tokenkeeper/tokenkeeper/upstream"
)

// A replica that cannot fetch (no route to the upstream, or a stale
// secret) and wins the election hands leadership over, so the healthy
// replicas refresh; it is not re-elected ahead of them, and the fleet view
// shows it failing.
func TestFailingLeaderHandsOver(t *testing.T) {
	tests := []struct {
		name string
		err  error
	}{
		{"no route", &upstream.Error{Op: "auth", Retryable: true, Err: errors.New("dial tcp: connection refused")}},
		{"stale secret", &upstream.Error{Op: "auth", Status: 401, Code: "invalid_client"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				w := newWorld(t)
				// Ten-minute tokens: a few refreshes in a short run of steps
				// (the heartbeats look every 200ms).
				tm := timings{lifetime: 10 * time.Minute, before: 2 * time.Minute}
				bad := w.source(tm.lifetime)
				bad.fail = tt.err
				cut := w.startObserved("cut", bad, tm)
				w.tl.Advance(0) // its first election, due at once
				if got := value(t, cut.reg, "tokenkeeper_leadership_changes_total", "change", "acquired"); got != 1 {
					t.Fatalf("cut took the lead %v times, want 1: it stands first", got)
				}

				good := w.source(tm.lifetime)
				healthy := []*replica{w.startObserved("a", good, tm), w.startObserved("b", good, tm)}
				all := []*replica{healthy[0], healthy[1], cut}
				w.tl.Until("a healthy replica fetched a token and every replica serves it", time.Minute, func() bool {
					for _, r := range all {
						if _, ok := r.store.Current(); !ok {
							return false
						}
					}
					return len(good.Calls()) > 0
				})
				// While it sits out, the fleet view shows it failing.
				st, err := healthy[0].ref.Status(t.Context())
				if err != nil {
					t.Fatal(err)
				}
				var seen bool
				for _, r := range st.Replicas {
					if r.Instance == "cut" {
						seen = true
						if r.Upstream != "failing" || r.UpstreamError == "" || r.AsideFor <= 0 || r.AsideFor > handoverCooldown {
							t.Errorf("fleet view of cut: upstream %q (%q), aside for %v; want failing with its error, aside", r.Upstream, r.UpstreamError, r.AsideFor)
						}
					}
				}
				if !seen {
					t.Error("cut is missing from the fleet view")
				}
				// The next refreshes are made by the healthy replicas too,
				// after the failing one's cooldown as well.
				for range 2 {
					before := len(good.Calls())
					w.tl.Until("the next refresh", tm.lifetime, func() bool {
						if cut.ref.IsLeader() {
							t.Fatal("the failing replica was re-elected ahead of the healthy ones")
						}
						return len(good.Calls()) > before
					})
				}
				if n := len(bad.Calls()); n > 3 {
					t.Errorf("the failing replica called the upstream %d times, want at most 3 (it hands over after 3 failures)", n)
				}
				if got := value(t, cut.reg, "tokenkeeper_leadership_changes_total", "change", "handed_over"); got < 1 {
					t.Errorf("cut's handed_over changes = %v, want at least 1", got)
				}
			})
		})
	}
}

// When the upstream is down for everyone, changes of leader do not restart
// the backoff: a fleet whose leaders hand over after every failure calls
// the upstream about as often as one replica alone.
func TestHandoversKeepTheFleetsBackoff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		down := &upstream.Error{Op: "liveness", Status: 503, Retryable: true}
		tm := timings{lifetime: hour, handoverAfter: 1}

		w := newWorld(t)
		alone := w.source(hour)
		alone.fail = down
		w.start("alone", alone, tm)

		w2 := w.other() // another token, on the same time and Redis
		shared := w2.source(hour)
		shared.fail = down
		for i := range 3 {
			w2.start(fmt.Sprintf("r%d", i), shared, tm)
		}
		// Each fleet has run the same while: measure both over one window.
		took := w.tl.Until("a dozen calls by the lone replica", hour, func() bool { return len(alone.Calls()) >= 12 })
		one, three := len(alone.Calls()), len(shared.Calls())
		t.Logf("upstream calls while down, over %v of fake time: one replica %d, three replicas handing over after each failure %d", took, one, three)
		if three > 2*one+3 {
			t.Fatalf("three replicas made %d calls while one made %d: handovers restart the backoff", three, one)
		}
	})
}

// A token fetched by a leader that lost its lock before storing it is not
// thrown away: the replica keeps it and stores it when it leads again,
// instead of fetching another.
func TestUnsavedTokenOutlivesTheTerm(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := newWorld(t)
		ctx := t.Context()
		src := w.source(hour)
		a := w.soloLeader(src)

		block := make(chan struct{})
		unblock := sync.OnceFunc(func() { close(block) })
		t.Cleanup(unblock) // before a stops, should the test fail first
		src.set(func(s *source) { s.block = block })
		a.refresh(ctx) // its answer does not matter here
		w.tl.Until("the leader is fetching", time.Minute, func() bool { return len(src.Calls()) == 2 })
		// A stranger holds the lock for a while: the leader steps down with
		// its fetch in flight; then the fetch returns.
		if err := w.admin.Set(ctx, w.keys.Lock, "tk:0123456789abcdef:nobody", 3*lockTTL).Err(); err != nil {
			t.Fatal(err)
		}
		w.tl.Until("the renewal refused", time.Minute, func() bool {
			st, _ := a.ref.Status(ctx)
			return strings.Contains(st.LastError, "lock renewal")
		})
		src.set(func(s *source) { s.block = nil })
		unblock()

		took := w.tl.Until("the fetched token is stored once a leads again", 3*lockTTL+time.Minute, func() bool {
			v, err := w.admin.HGet(ctx, w.keys.Token, "v").Result()
			return err == nil && v == "token-2"
		})
		if n := len(src.Calls()); n != 2 {
			t.Fatalf("upstream calls: got %d, want 2 (the fetched token stored, not fetched again)", n)
		}
		if took > 3*lockTTL+electEvery {
			t.Errorf("stored %v of fake time after the fetch returned, want once the stranger's lock (%v) expired", took, 3*lockTTL)
		}
	})
}

// Many concurrent refresh requests across the fleet all get an answer, and
// cost one upstream call: those that arrive while it runs join it.
func TestConcurrentRefreshesJoin(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := newWorld(t)
		ctx := t.Context()
		src := w.source(hour)
		rs := []*replica{w.start("a", src, timings{lifetime: hour}), w.start("b", src, timings{lifetime: hour}), w.start("c", src, timings{lifetime: hour})}
		oneLeader(t, rs, time.Minute)
		w.tl.Until("first token everywhere", time.Minute, func() bool {
			for _, r := range rs {
				if _, ok := r.store.Current(); !ok {
					return false
				}
			}
			return true
		})
		w.tl.Advance(5 * time.Minute)
		first, _ := rs[0].store.Current()
		calls := len(src.Calls())
		// An upstream call takes a while, as a real one does.
		src.set(func(s *source) { s.delay = 300 * time.Millisecond })

		// One request starts a fetch; the 49 others arrive while it runs.
		answers := []<-chan result{rs[0].refresh(ctx)}
		w.tl.Until("the fetch began", time.Minute, func() bool { return len(src.Calls()) == calls+1 })
		for i := 1; i < 50; i++ {
			answers = append(answers, rs[i%3].refresh(ctx))
		}
		for i, ch := range answers {
			res, _ := w.await(fmt.Sprintf("request %d answered", i), time.Minute, ch)
			switch {
			case res.err != nil:
				t.Errorf("Refresh %d: %v", i, res.err)
			case res.tok.Value == first.Value:
				t.Errorf("Refresh %d answered with the token held before the request", i)
			}
		}
		if n := len(src.Calls()) - calls; n != 1 {
			t.Errorf("upstream calls for 50 concurrent requests: got %d, want 1", n)
		}
	})
}

// publishBeforeWrite is a go-redis hook for a leader's client: the first
// script that carries value (the write that stores it) runs only after
// publish has run, so that Redis orders what publish sends before the
// token's event.
type publishBeforeWrite struct {
	value   string
	publish func(context.Context) error
	once    sync.Once
	err     error
}

func (h *publishBeforeWrite) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *publishBeforeWrite) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if strings.HasPrefix(cmd.Name(), "eval") && slices.Contains(cmd.Args(), any(h.value)) {
			h.once.Do(func() { h.err = h.publish(ctx) })
		}
		return next(ctx, cmd)
	}
}

func (h *publishBeforeWrite) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// A refresh request that Redis publishes after the leader's upstream call
// ended but before the token it fetched is stored (an admin's request that
// coincides with a scheduled refresh) is answered with that token: it was
// asked before the token was stored. It costs no second fetch.
func TestRequestBeforeTheWriteJoinsTheFetch(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := newWorld(t)
		ctx := t.Context()
		src := w.source(hour)
		leader, follower := w.pair(src)
		events := w.admin.Subscribe(ctx, w.keys.Events)
		defer events.Close()
		// The answers to refresh requests, kept; the rest (the leader's
		// beats, every second for the hour to come) dropped as they come,
		// so that Redis is never held up by this subscriber.
		msgs := make(chan *redis.Message, 16)
		go func() {
			for m := range events.Channel() {
				if strings.Contains(m.Payload, `"type":"refreshed"`) {
					msgs <- m
				}
			}
		}()
		h := &publishBeforeWrite{value: "token-2", publish: func(ctx context.Context) error {
			return follower.store.Publish(ctx, cache.Message{Type: "refresh", From: follower.name, Body: []byte(`{"id":"coincides"}`)})
		}}
		leader.rdb.AddHook(h)

		w.tl.Until("the scheduled refresh stored token-2", hour, func() bool { return leader.holds("token-2") })
		if h.err != nil {
			t.Fatalf("publishing the request: %v", h.err)
		}
		w.tl.Advance(time.Minute)
		if n := len(src.Calls()); n != 2 {
			t.Errorf("upstream calls: got %d, want 2 (the first token and the scheduled refresh, which the request joins)", n)
		}
		var answer string
		w.tl.Until("the request answered", time.Minute, func() bool {
			for {
				select {
				case m := <-msgs:
					var msg cache.Message
					if json.Unmarshal([]byte(m.Payload), &msg) == nil && msg.Type == "refreshed" && strings.Contains(string(msg.Body), `"coincides"`) {
						answer = string(msg.Body)
						return true
					}
				default:
					return false
				}
			}
		})
		if want := cache.Fingerprint("token-2"); !strings.Contains(answer, want) {
			t.Errorf("answer to the request: %s, want the fingerprint of token-2 (%s)", answer, want)
		}
	})
}

// A refresh asked with Redis unreachable (its network partitioned: every
// command times out) is answered with fault.ErrUnavailable (503 with Retry-After
// over HTTP) once it has been unreachable for two lock TTLs, not a generic
// failure, nor only when the caller gives up.
func TestRefreshWithoutRedis(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := newWorld(t)
		src := w.source(hour)
		a := w.soloLeader(src)
		a.link.Cut()
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
		defer cancel()
		res, took := w.await("Refresh answered", 5*time.Minute, a.refresh(ctx))
		if !errors.Is(res.err, fault.ErrUnavailable) {
			t.Fatalf("Refresh with Redis cut off: got %v, want fault.ErrUnavailable", res.err)
		}
		if ctx.Err() != nil {
			t.Fatalf("Refresh answered only when its context ended (%v of fake time)", took)
		}
		// Requests are sent every election period, each waiting at most the
		// Redis timeout, until the trouble has lasted two lock TTLs. A
		// replica woken by the Redis client's timeout reads the fake clock
		// up to a step behind (testkit.Timeline): an election period here.
		if within := 2*lockTTL + 2*(refresher.RedisTimeout(lockTTL)+2*electEvery); took < 2*lockTTL || took > within {
			t.Errorf("answered after %v of fake time, want after two lock TTLs, within %v", took, within)
		}
		if _, ok := a.store.Current(); !ok {
			t.Fatal("the held token stopped being served")
		}
	})
}

// On fake time: a lone leader whose upstream keeps failing backs off from
// RetryMin with full jitter, hands over after HandoverAfter failures,
// stays out of the election while the lock is free for less than a lock
// TTL, then stands again and tries once more. Every figure is fake time,
// exact: the Timeline stops at each deadline.
func TestBackoffAndHandoverOnFakeTime(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := newWorld(t)
		src := w.source(hour)
		src.fail = &upstream.Error{Op: "liveness", Status: 503, Retryable: true}
		rdb := w.srv.Client(t)
		store, err := cache.New(rdb, cache.Config{Keys: w.keys, Instance: "a", Logger: quiet, Clock: w.tl.Clock})
		if err != nil {
			t.Fatal(err)
		}
		// The defaults: lock TTL 10s, backoff from 1s to 1m, hand over after 3.
		ref, err := refresher.New(withDefaults(refresher.Config{Instance: "a", Logger: quiet, Clock: w.tl.Clock}), rdb, store, src)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan struct{})
		go func() { defer close(done); ref.Run(ctx) }()
		t.Cleanup(func() { cancel(); <-done })
		calls := func(n int) func() bool { return func() bool { return len(src.Calls()) >= n } }

		if took := w.tl.Until("the first attempt", time.Second, calls(1)); took != 0 {
			t.Errorf("first attempt after %v of fake time, want at once", took)
		}
		for n := 2; n <= 3; n++ {
			waited := w.tl.Until(fmt.Sprintf("attempt %d", n), time.Minute, calls(n))
			// Full jitter after the (n-1)-th failure: in [RetryMin, RetryMin*2^(n-2)].
			if ceiling := retryMin << (n - 2); waited < retryMin || waited > ceiling {
				t.Errorf("attempt %d came %v of fake time after the previous one, want within [%v, %v]", n, waited, retryMin, ceiling)
			}
		}
		if took := w.tl.Until("the handover", time.Second, func() bool { return !ref.IsLeader() }); took != 0 {
			t.Errorf("handed over %v of fake time after the third failure, want at once", took)
		}
		// Alone, it stands again once the lock has stayed free a lock TTL,
		// as seen by its elections every electEvery.
		away := w.tl.Until("leading again", 2*lockTTL, ref.IsLeader)
		if away < lockTTL || away > lockTTL+2*electEvery {
			t.Errorf("stood again after %v of fake time, want once the lock was free for the lock TTL %v", away, lockTTL)
		}
		// It goes on from the failures recorded: the backoff after the
		// third has passed, so it tries at once.
		before := len(src.Calls())
		if took := w.tl.Until("the fourth attempt", 2*time.Minute, calls(before+1)); took > retryMin<<2 {
			t.Errorf("fourth attempt %v of fake time after leading again, want within the backoff after 3 failures", took)
		}
		if n := len(src.Calls()); n != 4 {
			t.Errorf("upstream calls: got %d, want 4", n)
		}
	})
}

// An upstream whose tokens are due again as soon as they are stored (here:
// a life a millisecond past the serve margin) does not make the leader
// call it in a loop: after a good attempt, the next waits RetryMin unless
// a refresh is asked for.
func TestTokensDueAtOnceDoNotLoop(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := newWorld(t)
		src := w.source(hour)
		w.pair(src)
		calls := len(src.Calls())
		src.set(func(s *source) {
			s.answer = &upstream.Token{Value: "short-lived", Lifetime: serveMargin + time.Millisecond}
		})
		// The next refresh falls due within the hour's last 15 minutes.
		w.tl.Until("a short-lived token fetched", hour, func() bool { return len(src.Calls()) > calls })
		from := len(src.Calls())
		const span = 10 * retryMin
		w.tl.Advance(span)
		if n := len(src.Calls()) - from; n > int(span/retryMin)+1 {
			t.Errorf("upstream calls in %v of tokens due at once: %d, want at most one per RetryMin (%v)", span, n, retryMin)
		}
	})
}

// A graceful stop's release and its announcement are one command each
// that no loop repeats: one sent on a pooled connection that outlived
// its server is tried again on another, while the error is the
// connection's. An answer from Redis, a lock no longer held and the end
// of the stop's time are final.
func TestHandOverTriesAnotherConnection(t *testing.T) {
	closed := fmt.Errorf("write: %w", io.ErrClosedPipe)
	for _, tc := range []struct {
		name  string
		errs  []error // what each try returns; the last repeats
		tries int
		want  error
	}{
		{"first try", []error{nil}, 1, nil},
		{"two stale connections", []error{closed, closed, nil}, 3, nil},
		{"never a live one", []error{closed}, 4, io.ErrClosedPipe},
		{"the lock moved on", []error{closed, redislock.ErrLockNotHeld}, 2, redislock.ErrLockNotHeld},
		{"a reply from Redis", []error{errorReply("NOPERM no permissions"), nil}, 1, errorReply("NOPERM no permissions")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tries := 0
			err := refresher.OnLiveConn(t.Context(), func(context.Context) error {
				tries++
				return tc.errs[min(tries, len(tc.errs))-1]
			})
			if tries != tc.tries || !errors.Is(err, tc.want) {
				t.Errorf("%d tries ending in %v, want %d ending in %v", tries, err, tc.tries, tc.want)
			}
		})
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	tries := 0
	refresher.OnLiveConn(ctx, func(context.Context) error { tries++; return closed })
	if tries != 1 {
		t.Errorf("%d tries after the stop's time ended, want 1", tries)
	}
}

// errorReply is an error Redis answered with, as go-redis returns one.
type errorReply string

func (e errorReply) Error() string { return string(e) }
func (errorReply) RedisError()     {}

var _ redis.Error = errorReply("")

// A leader holding a token it could not store tries to store it again
// after its backoff, not at once: a Redis that refuses at once (a
// connection refused, a closed pipe) would otherwise be asked in a loop
// as fast as it refuses, and the log filled as fast. (The long simulation
// sweep found that loop: on fake time it held the bubble's clock still.)
func TestUnsavedTokenStoreBacksOff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := newWorld(t)
		src := w.source(hour)
		a := w.soloLeader(src)

		// Token writes fail at once; past a thousand in a row, the hook
		// lets them through, so that a loop ends and the test reports it.
		var mu sync.Mutex
		refuse, writes := true, 0
		a.rdb.AddHook(refuseWrites{keys: w.keys, refuse: func() bool {
			mu.Lock()
			defer mu.Unlock()
			writes++
			return refuse && writes < 1000
		}})
		count := func() int { mu.Lock(); defer mu.Unlock(); return writes }
		a.refresh(t.Context())
		w.tl.Until("the fetched token's write refused", time.Minute, func() bool { return count() > 0 })
		from := count()
		const span = 10 * retryMin
		w.tl.Advance(span)
		if n := count() - from; n > int(span/retryMin)+1 {
			t.Errorf("writes of the unsaved token in %v: %d, want at most one per RetryMin (%v)", span, n, retryMin)
		}
		mu.Lock()
		refuse = false
		mu.Unlock()
		w.tl.Until("the unsaved token stored", retryMax+time.Minute, func() bool {
			v, err := w.admin.HGet(t.Context(), w.keys.Token, "v").Result()
			return err == nil && v == "token-2"
		})
		if n := len(src.Calls()); n != 2 {
			t.Errorf("upstream calls: %d, want 2 (the unsaved token stored, not fetched again)", n)
		}
	})
}

// refuseWrites fails, at once and as a broken connection would, every
// token write (a script on the token and lock keys) while refuse says so.
type refuseWrites struct {
	keys   cache.Keys
	refuse func() bool
}

func (refuseWrites) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h refuseWrites) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		args := cmd.Args()
		name := strings.ToLower(cmd.Name())
		if (name == "evalsha" || name == "eval") && len(args) > 4 && args[3] == h.keys.Token && args[4] == h.keys.Lock && h.refuse() {
			err := fmt.Errorf("write: %w", io.ErrClosedPipe)
			cmd.SetErr(err)
			return err
		}
		return next(ctx, cmd)
	}
}

func (refuseWrites) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// soloLeader starts one replica, a, on src (tokens of an hour), and moves
// the time five minutes past its first token: a leads, holding a token
// that is not due.
func (w *world) soloLeader(src *source) *replica {
	w.t.Helper()
	a := w.start("a", src, timings{lifetime: hour})
	w.tl.Until("first token", time.Minute, func() bool { _, ok := a.store.Current(); return ok })
	w.tl.Advance(5 * time.Minute)
	return a
}
