package refresher_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokenkeeper/tokenkeeper/cache"
	"github.com/tokenkeeper/tokenkeeper/clock/clocktest"
	"github.com/tokenkeeper/tokenkeeper/internal/redistest"
	"github.com/tokenkeeper/tokenkeeper/internal/testkit"
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
			addr, keys := newRedis(t)
			bad := &source{lifetime: fast.lifetime, fail: tt.err}
			cut := startObserved(t, "cut", addr, keys, bad, fast)
			testkit.Eventually(t, 5*time.Second, "cut leads", cut.ref.IsLeader)

			good := &source{lifetime: fast.lifetime}
			healthy := []*replica{startObserved(t, "a", addr, keys, good, fast), startObserved(t, "b", addr, keys, good, fast)}
			testkit.Eventually(t, 5*time.Second, "a healthy replica fetched a token and every replica serves it", func() bool {
				for _, r := range append(healthy, cut) {
					if _, ok := r.store.Current(); !ok {
						return false
					}
				}
				return len(good.Calls()) > 0
			})
			// The next refreshes are made by the healthy replicas too.
			for range 2 {
				before := len(good.Calls())
				testkit.Eventually(t, 2*fast.lifetime, "the next refresh", func() bool { return len(good.Calls()) > before })
				if cut.ref.IsLeader() {
					t.Fatal("the failing replica was re-elected ahead of the healthy ones")
				}
			}
			st, err := healthy[0].ref.Status(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			var seen bool
			for _, r := range st.Replicas {
				if r.Instance == "cut" {
					seen = true
					if r.Upstream != "failing" || r.UpstreamError == "" || r.AsideFor <= 0 {
						t.Errorf("fleet view of cut: upstream %q (%q), aside for %v; want failing with its error, aside", r.Upstream, r.UpstreamError, r.AsideFor)
					}
				}
			}
			if !seen {
				t.Error("cut is missing from the fleet view")
			}
			if got := value(t, cut.reg, "tokenkeeper_leadership_changes_total", "change", "handed_over"); got < 1 {
				t.Errorf("cut's handed_over changes = %v, want at least 1", got)
			}
		})
	}
}

// When the upstream is down for everyone, changes of leader do not restart
// the backoff: a fleet whose leaders hand over after every failure calls
// the upstream about as often as one replica alone.
func TestHandoversKeepTheFleetsBackoff(t *testing.T) {
	down := &upstream.Error{Op: "liveness", Status: 503, Retryable: true}
	tm := fast
	tm.handoverAfter = 1

	addr, keys := newRedis(t)
	alone := &source{lifetime: tm.lifetime, fail: down}
	start(t, "alone", addr, keys, alone, tm)

	addr2, keys2 := newRedis(t)
	shared := &source{lifetime: tm.lifetime, fail: down}
	for i := range 3 {
		start(t, fmt.Sprintf("r%d", i), addr2, keys2, shared, tm)
	}
	// Each fleet has run the same while: measure both over one window.
	testkit.Eventually(t, 10*time.Second, "a dozen calls by the lone replica", func() bool { return len(alone.Calls()) >= 12 })
	one, three := len(alone.Calls()), len(shared.Calls())
	t.Logf("upstream calls while down: one replica %d, three replicas handing over after each failure %d", one, three)
	if three > 2*one+3 {
		t.Fatalf("three replicas made %d calls while one made %d: handovers restart the backoff", three, one)
	}
}

// A token fetched by a leader that lost its lock before storing it is not
// thrown away: the replica keeps it and stores it when it leads again,
// instead of fetching another.
func TestUnsavedTokenOutlivesTheTerm(t *testing.T) {
	addr, keys := newRedis(t)
	src := &source{lifetime: 30 * time.Second}
	tm := fast
	tm.lifetime, tm.before = 30*time.Second, 5*time.Second
	a := start(t, "a", addr, keys, src, tm)
	testkit.Eventually(t, 5*time.Second, "first token", func() bool { _, ok := a.store.Current(); return ok })

	block := make(chan struct{})
	src.set(func(s *source) { s.block = block })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	go a.ref.Refresh(ctx)
	testkit.Eventually(t, 5*time.Second, "the leader is fetching", func() bool { return len(src.Calls()) == 2 })
	// A stranger holds the lock for a while: the leader steps down with
	// its fetch in flight; then the fetch returns.
	if err := a.rdb.Set(context.Background(), keys.Lock, "tk:0123456789abcdef:nobody", 3*tm.lockTTL).Err(); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 5*time.Second, "the renewal refused", func() bool {
		st, _ := a.ref.Status(context.Background())
		return strings.Contains(st.LastError, "lock renewal")
	})
	src.set(func(s *source) { s.block = nil })
	close(block)

	testkit.Eventually(t, 10*time.Second, "the fetched token is stored once a leads again", func() bool {
		v, err := a.rdb.HGet(context.Background(), keys.Token, "v").Result()
		return err == nil && v == "token-2"
	})
	if n := len(src.Calls()); n != 2 {
		t.Fatalf("upstream calls: got %d, want 2 (the fetched token stored, not fetched again)", n)
	}
}

// Many concurrent refresh requests across the fleet all get an answer, and
// cost one upstream call (two when a replica's request arrives after the
// first call returned).
func TestConcurrentRefreshesJoin(t *testing.T) {
	addr, keys := newRedis(t)
	src := &source{lifetime: 30 * time.Second}
	tm := fast
	tm.lifetime, tm.before = 30*time.Second, 5*time.Second
	rs := []*replica{start(t, "a", addr, keys, src, tm), start(t, "b", addr, keys, src, tm), start(t, "c", addr, keys, src, tm)}
	oneLeader(t, rs, 5*time.Second)
	for _, r := range rs {
		testkit.Eventually(t, 5*time.Second, "first token everywhere", func() bool { _, ok := r.store.Current(); return ok })
	}
	first, _ := rs[0].store.Current()
	calls := len(src.Calls())
	// An upstream call takes a while, as a real one does: requests that
	// arrive meanwhile join it.
	src.set(func(s *source) { s.delay = 300 * time.Millisecond })

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, 50)
	for i := range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tok, err := rs[i%3].ref.Refresh(ctx)
			if err == nil && tok.Value == first.Value {
				err = errors.New("answered with the token held before the request")
			}
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("Refresh: %v", err)
		}
	}
	if n := len(src.Calls()) - calls; n < 1 || n > 2 {
		t.Errorf("upstream calls for 50 concurrent requests: got %d, want 1 or 2", n)
	}
}

// A refresh asked with Redis unreachable is answered promptly with
// ErrUnavailable (503 with Retry-After over HTTP), not a generic failure.
func TestRefreshWithoutRedis(t *testing.T) {
	srv := redistest.New(t)
	proxy := redistest.NewProxy(t, srv.Addr)
	src := &source{lifetime: 30 * time.Second}
	tm := fast
	tm.lifetime, tm.before = 30*time.Second, 5*time.Second
	a := start(t, "a", proxy.Addr, keysFor(t), src, tm)
	testkit.Eventually(t, 5*time.Second, "first token", func() bool { _, ok := a.store.Current(); return ok })
	proxy.Cut()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	began := time.Now()
	if _, err := a.ref.Refresh(ctx); !errors.Is(err, refresher.ErrUnavailable) {
		t.Fatalf("Refresh with Redis cut off: got %v, want ErrUnavailable", err)
	}
	if took := time.Since(began); ctx.Err() != nil {
		t.Fatalf("Refresh answered only when its context ended (%v)", took)
	}
	if _, ok := a.store.Current(); !ok {
		t.Fatal("the held token stopped being served")
	}
}

func keysFor(t *testing.T) cache.Keys { return cache.KeysFor(redistest.Name(t)) }

// On a fake clock: a lone leader whose upstream keeps failing backs off
// from RetryMin with full jitter, hands over after HandoverAfter failures,
// stays out of the election while the lock is free for less than a lock
// TTL, then stands again and tries once more. No wall-clock duration is
// asserted: every figure is fake time.
func TestBackoffAndHandoverOnFakeTime(t *testing.T) {
	srv := redistest.NewMini(t)
	keys := keysFor(t)
	clk := clocktest.New(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC))
	src := &source{lifetime: time.Hour, fail: &upstream.Error{Op: "liveness", Status: 503, Retryable: true}}
	rdb := srv.Client(t)
	store, err := cache.New(rdb, cache.Config{Keys: keys, Instance: "a", Logger: quiet, Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	const (
		lockTTL  = 10 * time.Second
		retryMin = time.Second
	)
	ref, err := refresher.New(refresher.Config{Instance: "a", LockTTL: lockTTL, RetryMin: retryMin, RetryMax: time.Minute,
		HandoverAfter: 3, Logger: quiet, Clock: clk}, rdb, store, src)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); ref.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })

	// advanceUntil moves the fake time in steps of 50ms until cond holds,
	// letting the loop react between steps; it returns the fake time spent.
	advanceUntil := func(what string, limit time.Duration, cond func() bool) time.Duration {
		t.Helper()
		start := clk.Now()
		for !cond() {
			if clk.Now().Sub(start) > limit {
				t.Fatalf("%s: not within %v of fake time", what, limit)
			}
			clk.Advance(50 * time.Millisecond)
			testkit.Eventually(t, 5*time.Second, "the loop settles", func() bool { return clk.Waiters() > 0 })
			time.Sleep(time.Millisecond) // not time passing: lets the loop's goroutines, and Redis, take the step
		}
		return clk.Now().Sub(start)
	}
	calls := func(n int) func() bool { return func() bool { return len(src.Calls()) >= n } }

	advanceUntil("the first attempt", time.Second, calls(1))
	for n := 2; n <= 3; n++ {
		waited := advanceUntil(fmt.Sprintf("attempt %d", n), time.Minute, calls(n))
		// Full jitter after the (n-1)-th failure: in [RetryMin, RetryMin*2^(n-2)].
		if ceiling := retryMin << (n - 2); waited < retryMin || waited > ceiling+100*time.Millisecond {
			t.Errorf("attempt %d came %v of fake time after the previous one, want within [%v, %v]", n, waited, retryMin, ceiling)
		}
	}
	advanceUntil("the handover", time.Second, func() bool { return !ref.IsLeader() })
	// Alone, it stands again once the lock has stayed free a lock TTL.
	away := advanceUntil("leading again", 2*lockTTL, ref.IsLeader)
	if away < lockTTL {
		t.Errorf("stood again after %v of fake time, want the lock free for at least the lock TTL %v", away, lockTTL)
	}
	before := len(src.Calls())
	advanceUntil("the fourth attempt", 2*time.Minute, calls(before+1))
	if n := len(src.Calls()); n != 4 {
		t.Errorf("upstream calls: got %d, want 4", n)
	}
}
