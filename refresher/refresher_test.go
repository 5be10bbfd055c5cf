package refresher_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/tokenkeeper/tokenkeeper/cache"
	"github.com/tokenkeeper/tokenkeeper/internal/redistest"
	"github.com/tokenkeeper/tokenkeeper/internal/testkit"
	"github.com/tokenkeeper/tokenkeeper/refresher"
	"github.com/tokenkeeper/tokenkeeper/upstream"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// source is a hand-written Source: it issues numbered tokens and fails as
// told.
type source struct {
	mu       sync.Mutex
	lifetime time.Duration
	calls    []time.Time
	fail     error           // returned instead of a token while set
	answer   *upstream.Token // returned instead of a fresh token while set
	block    chan struct{}   // when set, Token waits for it to close
	delay    time.Duration   // how long each call takes
	n        int
}

func (s *source) Token(ctx context.Context) (upstream.Token, error) {
	s.mu.Lock()
	s.calls = append(s.calls, time.Now())
	block, fail, answer, delay := s.block, s.fail, s.answer, s.delay
	s.n++
	n, lifetime := s.n, s.lifetime
	s.mu.Unlock()
	if delay > 0 {
		time.Sleep(delay) // an upstream that takes its time
	}
	if block != nil {
		<-block // deliberately deaf to ctx: a stuck leader
	}
	if fail != nil {
		return upstream.Token{}, fail
	}
	if answer != nil {
		a := *answer
		a.Sent = time.Now()
		return a, nil
	}
	return upstream.Token{Value: fmt.Sprintf("token-%d", n), Lifetime: lifetime, Sent: time.Now()}, nil
}

func (s *source) set(f func(s *source)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f(s)
}

func (s *source) Calls() []time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]time.Time(nil), s.calls...)
}

type timings struct {
	lifetime, margin, before, lockTTL time.Duration
	handoverAfter                     int // 0: the default
}

var fast = timings{lifetime: 2 * time.Second, margin: 300 * time.Millisecond, before: 800 * time.Millisecond, lockTTL: 600 * time.Millisecond}

type replica struct {
	name   string
	rdb    *redis.Client
	store  *cache.Store
	ref    *refresher.Refresher
	reg    *prometheus.Registry // the replica's metrics
	cancel context.CancelFunc
	done   chan struct{}
}

// start runs a replica (store and refresher) against addr until stop or
// the end of the test.
func start(t *testing.T, name, addr string, keys cache.Keys, src refresher.Source, tm timings) *replica {
	t.Helper()
	return startReplica(t, name, addr, keys, src, tm, false)
}

// startObserved runs a replica like start, with its heartbeat too.
func startObserved(t *testing.T, name, addr string, keys cache.Keys, src refresher.Source, tm timings) *replica {
	t.Helper()
	return startReplica(t, name, addr, keys, src, tm, true)
}

func startReplica(t *testing.T, name, addr string, keys cache.Keys, src refresher.Source, tm timings, heartbeat bool) *replica {
	t.Helper()
	reg := prometheus.NewRegistry()
	rdb := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, DialTimeout: 200 * time.Millisecond,
		ReadTimeout: 200 * time.Millisecond, WriteTimeout: 200 * time.Millisecond})
	store, err := cache.New(rdb, cache.Config{Keys: keys, ServeMargin: tm.margin, PollInterval: 200 * time.Millisecond,
		Instance: name, Logger: quiet, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	ref, err := refresher.New(refresher.Config{
		Instance: name, LockTTL: tm.lockTTL, RefreshBefore: tm.before, Jitter: 50 * time.Millisecond,
		RetryMin: 50 * time.Millisecond, RetryMax: 400 * time.Millisecond, Logger: quiet.With("r", name),
		Version: "v-test", HeartbeatEvery: 50 * time.Millisecond, Registerer: reg, HandoverAfter: tm.handoverAfter,
	}, rdb, store, src)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &replica{name: name, rdb: rdb, store: store, ref: ref, reg: reg, cancel: cancel, done: make(chan struct{})}
	parts := []func(context.Context) error{store.Run, ref.Run}
	if heartbeat {
		parts = append(parts, ref.Heartbeat)
	}
	var wg sync.WaitGroup
	for _, run := range parts {
		wg.Add(1)
		go func() { defer wg.Done(); run(ctx) }()
	}
	go func() { wg.Wait(); close(r.done) }()
	t.Cleanup(r.stop)
	return r
}

func (r *replica) stop() {
	r.cancel()
	<-r.done
	r.rdb.Close()
}

func leaders(rs []*replica) []*replica {
	var out []*replica
	for _, r := range rs {
		if r.ref.IsLeader() {
			out = append(out, r)
		}
	}
	return out
}

func oneLeader(t *testing.T, rs []*replica, within time.Duration) *replica {
	t.Helper()
	var l *replica
	testkit.Eventually(t, within, "one leader", func() bool {
		ls := leaders(rs)
		if len(ls) == 1 {
			l = ls[0]
			return true
		}
		return false
	})
	return l
}

func newRedis(t *testing.T) (string, cache.Keys) {
	t.Helper()
	srv := redistest.New(t)
	return srv.Addr, cache.KeysFor(redistest.Name(t))
}

func TestNewRejectsImpossibleSettings(t *testing.T) {
	srv := redistest.NewMini(t)
	rdb := srv.Client(t)
	store, err := cache.New(rdb, cache.Config{Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	src := &source{lifetime: time.Minute}
	tests := []struct {
		name string
		cfg  refresher.Config
	}{
		{"no instance", refresher.Config{}},
		{"renewal as long as TTL", refresher.Config{Instance: "a", LockTTL: time.Second, RenewEvery: time.Second}},
		{"renewal over half TTL", refresher.Config{Instance: "a", LockTTL: time.Second, RenewEvery: 600 * time.Millisecond}},
		{"tiny TTL", refresher.Config{Instance: "a", LockTTL: time.Millisecond}},
		{"retry max below min", refresher.Config{Instance: "a", RetryMin: time.Second, RetryMax: time.Millisecond}},
		{"negative window", refresher.Config{Instance: "a", RefreshBefore: -time.Second}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := refresher.New(tt.cfg, rdb, store, src); err == nil {
				t.Fatal("got nil error, want one")
			}
		})
	}
	if _, err := refresher.New(refresher.Config{Instance: "a"}, rdb, store, src); err != nil {
		t.Fatalf("defaults: %v", err)
	}
}

func TestNextRefresh(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name                   string
		fetched                time.Time
		lifetime               time.Duration
		before, jitter, margin time.Duration
		want                   time.Time
	}{
		{"hour token", t0, time.Hour, 15 * time.Minute, 0, time.Minute, t0.Add(45 * time.Minute)},
		{"with jitter", t0, time.Hour, 15 * time.Minute, 90 * time.Second, time.Minute, t0.Add(43*time.Minute + 30*time.Second)},
		{"shorter than window", t0, 10 * time.Minute, 15 * time.Minute, 0, time.Minute, t0.Add(270 * time.Second)},
		{"unknown fetch time", time.Time{}, time.Hour, 15 * time.Minute, 0, time.Minute, time.Time{}.Add(45 * time.Minute)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			base := tt.fetched
			tok := cache.Token{Value: "x", FetchedAt: tt.fetched, Deadline: base.Add(tt.lifetime)}
			got := refresher.NextRefresh(tok, tt.before, tt.jitter, tt.margin)
			if !got.Equal(tt.want) {
				t.Fatalf("got %v, want %v", got, tt.want)
			}
		})
	}
}

func TestBackoff(t *testing.T) {
	tests := []struct {
		n                int
		retryAfter       time.Duration
		wantMin, wantMax time.Duration
	}{
		{1, 0, time.Second, time.Second},
		{2, 0, time.Second, 2 * time.Second},
		{4, 0, time.Second, 8 * time.Second},
		{10, 0, time.Second, time.Minute},
		{100, 0, time.Second, time.Minute},
		{1, 30 * time.Second, 30 * time.Second, 30 * time.Second},
		{1, time.Hour, 10 * time.Minute, 10 * time.Minute},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("n=%d,retry-after=%v", tt.n, tt.retryAfter), func(t *testing.T) {
			for range 200 {
				got := refresher.Backoff(tt.n, time.Second, time.Minute, tt.retryAfter)
				if got < tt.wantMin || got > tt.wantMax {
					t.Fatalf("got %v, want within [%v, %v]", got, tt.wantMin, tt.wantMax)
				}
			}
		})
	}
}

// TestOneFetchPerLifetime runs fleets of 1, 3 and 10 replicas over several
// token lifetimes: one leader at a time, all replicas hold the same token,
// and the upstream sees one fetch per cycle whatever the fleet's size.
func TestOneFetchPerLifetime(t *testing.T) {
	for _, n := range []int{1, 3, 10} {
		t.Run(fmt.Sprintf("replicas=%d", n), func(t *testing.T) {
			t.Parallel() // each on its own keys
			addr, keys := newRedis(t)
			src := &source{lifetime: fast.lifetime}
			var rs []*replica
			for i := range n {
				rs = append(rs, start(t, fmt.Sprintf("r%d", i), addr, keys, src, fast))
			}
			oneLeader(t, rs, 5*time.Second)
			// Cycle k ends when token-k has been replaced.
			const cycles = 3
			testkit.Eventually(t, 10*time.Second, "three refreshes", func() bool { return len(src.Calls()) > cycles })
			// Every replica follows the latest token.
			want := fmt.Sprintf("token-%d", len(src.Calls()))
			for _, r := range rs {
				testkit.Eventually(t, time.Second, r.name+" holds "+want, func() bool {
					got, ok := r.store.Current()
					return ok && got.Value == want
				})
			}
			calls := src.Calls()
			for i := 1; i < len(calls); i++ {
				gap := calls[i].Sub(calls[i-1])
				// A cycle is lifetime - before - jitter: about 1.15s here.
				if gap < 900*time.Millisecond {
					t.Errorf("fetch %d came %v after the previous one: more than one fetch per cycle", i+1, gap)
				}
			}
			if ls := leaders(rs); len(ls) != 1 {
				t.Errorf("got %d leaders, want 1", len(ls))
			}
			t.Logf("replicas=%d fetches=%d over %v", n, len(calls), calls[len(calls)-1].Sub(calls[0]).Round(time.Millisecond))
		})
	}
}

func TestLeaderLoss(t *testing.T) {
	tests := []struct {
		name     string
		graceful bool
		within   time.Duration
	}{
		// A vanished leader's lock must expire first.
		{"vanished", false, fast.lockTTL + time.Second},
		{"graceful", true, time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := redistest.New(t)
			keys := cache.KeysFor(redistest.Name(t))
			src := &source{lifetime: 10 * time.Second}
			tm := fast
			tm.lifetime = 10 * time.Second
			tm.before = 2 * time.Second
			var rs []*replica
			var proxies []*redistest.Proxy
			for i := range 3 {
				p := redistest.NewProxy(t, srv.Addr)
				proxies = append(proxies, p)
				rs = append(rs, start(t, fmt.Sprintf("r%d", i), p.Addr, keys, src, tm))
			}
			old := oneLeader(t, rs, 5*time.Second)
			for _, r := range rs {
				testkit.Eventually(t, 2*time.Second, r.name+" ready", func() bool { _, ok := r.store.Current(); return ok })
			}

			var others []*replica
			for i, r := range rs {
				if r == old {
					if !tt.graceful {
						proxies[i].Cut() // gone: no release, no renewal
					}
					continue
				}
				others = append(others, r)
			}
			lost := time.Now()
			if tt.graceful {
				old.stop()
			}
			next := oneLeader(t, others, tt.within)
			took := time.Since(lost)
			t.Logf("%s: new leader %s after %v", tt.name, next.name, took.Round(time.Millisecond))
			for _, r := range others {
				if _, ok := r.store.Current(); !ok {
					t.Errorf("%s stopped serving during the handover", r.name)
				}
			}
			if got := len(src.Calls()); got != 1 {
				t.Errorf("upstream calls: got %d, want 1 (the handover needs no new token)", got)
			}
		})
	}
}

// TestStaleLeaderIsFenced has a leader lose its lock while stuck in a
// fetch; when the fetch returns, its write is refused and it steps down.
func TestStaleLeaderIsFenced(t *testing.T) {
	addr, keys := newRedis(t)
	block := make(chan struct{})
	src := &source{lifetime: 10 * time.Second, block: block}
	tm := fast
	tm.lockTTL = 3 * time.Second // renewals every 1s: the write comes first
	a := startObserved(t, "a", addr, keys, src, tm)
	testkit.Eventually(t, 5*time.Second, "a leads and fetches", func() bool { return a.ref.IsLeader() && len(src.Calls()) == 1 })

	// The lock passes to someone else while a is stuck.
	ctx := context.Background()
	if err := a.rdb.Set(ctx, keys.Lock, "tk:0123456789abcdef:other", time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	close(block)
	testkit.Eventually(t, 3*time.Second, "a steps down", func() bool { return !a.ref.IsLeader() })
	if n, err := a.rdb.Exists(ctx, keys.Token).Result(); err != nil || n != 0 {
		t.Fatalf("token key: got exists=%d err=%v, want nothing stored by the stale leader", n, err)
	}
	if _, ok := a.store.Current(); ok {
		t.Fatal("the fenced token is served")
	}
	if leader, _ := a.ref.Leader(ctx); leader != "other" {
		t.Fatalf("leader: got %q, want other", leader)
	}

	// It is all counted, and the fleet's history shows why.
	for _, c := range []struct {
		name   string
		labels []string
	}{
		{"tokenkeeper_token_writes_total", []string{"result", "fenced"}},
		{"tokenkeeper_refreshes_total", []string{"outcome", "fenced"}},
		{"tokenkeeper_leadership_changes_total", []string{"change", "fenced"}},
	} {
		if got := value(t, a.reg, c.name, c.labels...); got != 1 {
			t.Errorf("%s%v = %v, want 1", c.name, c.labels, got)
		}
	}
	if got := value(t, a.reg, "tokenkeeper_leader"); got != 0 {
		t.Errorf("tokenkeeper_leader = %v, want 0", got)
	}
	st, _ := a.ref.Status(ctx)
	if len(st.Refreshes) == 0 || st.Refreshes[0].Outcome != refresher.OutcomeFenced {
		t.Errorf("refreshes = %+v, want the fenced attempt first", st.Refreshes)
	} else if !strings.Contains(st.Refreshes[0].Error, "fenced") {
		t.Errorf("fenced attempt error = %q, want it to say fenced", st.Refreshes[0].Error)
	}
}

// TestReseedAfterDataLoss empties Redis under a running fleet: the leader
// writes its copy back within two seconds without asking the upstream.
func TestReseedAfterDataLoss(t *testing.T) {
	addr, keys := newRedis(t)
	src := &source{lifetime: 20 * time.Second}
	tm := fast
	tm.lifetime, tm.before = 20*time.Second, 5*time.Second
	rs := []*replica{start(t, "a", addr, keys, src, tm), start(t, "b", addr, keys, src, tm)}
	oneLeader(t, rs, 5*time.Second)
	ctx := context.Background()
	for _, r := range rs {
		testkit.Eventually(t, 2*time.Second, r.name+" holds the token", func() bool { _, ok := r.store.Current(); return ok })
	}
	if err := rs[0].rdb.Del(ctx, keys.Token, keys.Lock).Err(); err != nil {
		t.Fatal(err)
	}
	took := testkit.Eventually(t, 2*time.Second, "token back in Redis", func() bool {
		n, _ := rs[0].rdb.Exists(ctx, keys.Token).Result()
		return n == 1
	})
	t.Logf("re-seeded after %v", took.Round(time.Millisecond))
	if got := len(src.Calls()); got != 1 {
		t.Fatalf("upstream calls: got %d, want 1", got)
	}
	ttl, err := rs[0].rdb.PTTL(ctx, keys.Token).Result()
	if err != nil || ttl <= 0 || ttl > 20*time.Second {
		t.Fatalf("re-seeded expiry: got %v (err %v), want the remaining life of the held token", ttl, err)
	}
}

// TestUpstreamFailures: whatever the upstream does wrong, replicas keep
// serving the current token until it expires, retries back off, nothing
// bad is stored, and service returns by itself.
func TestUpstreamFailures(t *testing.T) {
	failures := []struct {
		name   string
		err    error
		answer *upstream.Token
	}{
		{"500", &upstream.Error{Op: "liveness", Status: 500, Retryable: true}, nil},
		{"429 with Retry-After", &upstream.Error{Op: "liveness", Status: 429, Retryable: true, RetryAfter: 300 * time.Millisecond}, nil},
		{"timeout", &upstream.Error{Op: "liveness", Retryable: true, Err: context.DeadlineExceeded}, nil},
		{"malformed", &upstream.Error{Op: "liveness", Status: 200, Retryable: true, Err: errors.New("malformed JSON")}, nil},
		{"already expired", nil, &upstream.Token{Value: "expired", Lifetime: -time.Second}},
		{"shorter than margin", nil, &upstream.Token{Value: "short", Lifetime: 100 * time.Millisecond}},
		{"control characters", nil, &upstream.Token{Value: "bad\ntoken", Lifetime: time.Minute}},
	}
	for _, tt := range failures {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel() // each on its own keys
			addr, keys := newRedis(t)
			src := &source{lifetime: fast.lifetime}
			rs := []*replica{start(t, "a", addr, keys, src, fast), start(t, "b", addr, keys, src, fast)}
			oneLeader(t, rs, 5*time.Second)
			testkit.Eventually(t, 2*time.Second, "first token", func() bool {
				_, ok := rs[1].store.Current()
				_, ok0 := rs[0].store.Current()
				return ok && ok0
			})
			first, _ := rs[0].store.Current()
			src.set(func(s *source) { s.fail, s.answer = tt.err, tt.answer })
			failedFrom := len(src.Calls())

			// Until the first token expires, it is served; after, nothing is.
			deadline := first.Deadline.Add(-fast.margin)
			for time.Now().Before(deadline.Add(-50 * time.Millisecond)) {
				for _, r := range rs {
					got, ok := r.store.Current()
					if !ok || got.Value != first.Value {
						t.Fatalf("%s: got %q, %v before expiry; want %q", r.name, got.Value, ok, first.Value)
					}
				}
				time.Sleep(10 * time.Millisecond)
			}
			testkit.Eventually(t, time.Second, "not ready after expiry", func() bool {
				for _, r := range rs {
					if _, ok := r.store.Current(); ok {
						return false
					}
				}
				return true
			})
			calls := src.Calls()[failedFrom:]
			if len(calls) < 2 {
				t.Fatalf("got %d attempts while failing, want retries", len(calls))
			}
			if len(calls) > 40 {
				t.Fatalf("got %d attempts in %v: no backoff", len(calls), fast.lifetime)
			}
			// Nothing bad reached Redis: it holds the first token or none.
			if v, err := rs[0].rdb.HGet(context.Background(), keys.Token, "v").Result(); err == nil && v != first.Value {
				t.Fatalf("Redis holds %q after the failures, want %q or nothing", v, first.Value)
			}

			src.set(func(s *source) { s.fail, s.answer = nil, nil })
			testkit.Eventually(t, 3*time.Second, "service returns", func() bool {
				for _, r := range rs {
					if _, ok := r.store.Current(); !ok {
						return false
					}
				}
				return true
			})
		})
	}
}

// pair runs two replicas with 30-second tokens and returns the leader and
// the follower once the follower holds the first token.
func pair(t *testing.T, src *source) (leader, follower *replica, keys cache.Keys) {
	t.Helper()
	addr, keys := newRedis(t)
	tm := fast
	tm.lifetime, tm.before = 30*time.Second, 5*time.Second
	rs := []*replica{start(t, "a", addr, keys, src, tm), start(t, "b", addr, keys, src, tm)}
	leader = oneLeader(t, rs, 5*time.Second)
	follower = rs[0]
	if follower == leader {
		follower = rs[1]
	}
	testkit.Eventually(t, 2*time.Second, "first token", func() bool { _, ok := follower.store.Current(); return ok })
	return leader, follower, keys
}

func TestRefreshThroughAnyReplica(t *testing.T) {
	src := &source{lifetime: 30 * time.Second}
	_, follower, _ := pair(t, src)
	before, _ := follower.store.Current()

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	got, err := follower.ref.Refresh(ctx)
	if err != nil {
		t.Fatalf("Refresh: %v", err)
	}
	if got.Value == before.Value {
		t.Fatal("Refresh returned the old token")
	}
	if cur, _ := follower.store.Current(); cur.Value != got.Value {
		t.Fatalf("follower serves %q after Refresh, want %q", cur.Value, got.Value)
	}
	if n := len(src.Calls()); n != 2 {
		t.Fatalf("upstream calls: got %d, want 2", n)
	}

	src.set(func(s *source) { s.fail = &upstream.Error{Op: "auth", Status: 401, Code: "invalid_client"} })
	if _, err := follower.ref.Refresh(ctx); !errors.Is(err, refresher.ErrRefreshFailed) {
		t.Fatalf("Refresh with a failing upstream: got %v, want ErrRefreshFailed", err)
	}
	if cur, ok := follower.store.Current(); !ok || cur.Value != got.Value {
		t.Fatal("a failed refresh lost the current token")
	}
}

func TestRefreshWithoutLeader(t *testing.T) {
	srv := redistest.NewMini(t)
	rdb := srv.Client(t)
	store, _ := cache.New(rdb, cache.Config{Logger: quiet})
	ref, err := refresher.New(refresher.Config{Instance: "a", LockTTL: 300 * time.Millisecond, Logger: quiet}, rdb, store, &source{})
	if err != nil {
		t.Fatal(err)
	}
	// No replica leads for two lock TTLs: the answer, within the caller's
	// deadline.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := ref.Refresh(ctx); !errors.Is(err, refresher.ErrNoLeader) {
		t.Fatalf("got %v, want ErrNoLeader", err)
	}
}

func TestAuthBudgetIsFleetWide(t *testing.T) {
	srv := redistest.New(t)
	key := "tokenkeeper:{" + redistest.Name(t) + "}:auth"
	var taken atomic.Int32
	var wg sync.WaitGroup
	for range 3 { // three replicas, one budget
		b, err := refresher.NewAuthBudget(srv.Client(t), key, 5)
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 4 {
				if err := b.Take(context.Background()); err == nil {
					taken.Add(1)
				} else if !errors.Is(err, refresher.ErrAuthBudget) || upstream.RetryAfter(err) <= 0 || !upstream.IsRetryable(err) {
					t.Errorf("got %v, want a retryable ErrAuthBudget with a Retry-After", err)
				}
			}
		}()
	}
	wg.Wait()
	if got := taken.Load(); got != 5 {
		t.Fatalf("calls allowed: got %d, want 5", got)
	}
	if _, err := refresher.NewAuthBudget(srv.Client(t), key, 0); err == nil {
		t.Fatal("zero budget: got nil error")
	}
}

// TestRefreshOutlivesTheLeader: a leader that loses its lock in the
// middle of a requested refresh tells the requester, which asks the next
// leader instead of waiting for its whole timeout; the request is answered
// with a new token.
func TestRefreshOutlivesTheLeader(t *testing.T) {
	src := &source{lifetime: 30 * time.Second}
	leader, follower, keys := pair(t, src)
	before, _ := follower.store.Current()

	block := make(chan struct{})
	src.set(func(s *source) { s.block = block })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	type result struct {
		tok cache.Token
		err error
	}
	answered := make(chan result, 1)
	go func() { tok, err := follower.ref.Refresh(ctx); answered <- result{tok, err} }()
	testkit.Eventually(t, 5*time.Second, "the leader is fetching", func() bool { return len(src.Calls()) == 2 })

	// A stranger holds the lock for a moment, so the leader's renewal is
	// refused while it is stuck; then the fetch returns.
	if err := leader.rdb.Set(context.Background(), keys.Lock, "tk:0123456789abcdef:nobody", 2*fast.lockTTL).Err(); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 5*time.Second, "renewal failure noticed", func() bool {
		st, _ := leader.ref.Status(context.Background())
		return strings.Contains(st.LastError, "lock renewal")
	})
	src.set(func(s *source) { s.block = nil })
	close(block)
	select {
	case res := <-answered:
		if res.err != nil {
			t.Fatalf("Refresh across a change of leader: %v", res.err)
		}
		if res.tok.Value == before.Value {
			t.Fatal("Refresh returned the token held before the request")
		}
	case <-ctx.Done():
		t.Fatal("the refresh request was never answered")
	}
}
