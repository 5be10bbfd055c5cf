package refresher_test

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/tokenkeeper/tokenkeeper/internal/fault"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/tokenkeeper/tokenkeeper/cache"
	"github.com/tokenkeeper/tokenkeeper/clock"
	"github.com/tokenkeeper/tokenkeeper/internal/redistest"
	"github.com/tokenkeeper/tokenkeeper/internal/testkit"
	"github.com/tokenkeeper/tokenkeeper/refresher"
	"github.com/tokenkeeper/tokenkeeper/upstream"
)

// The tests of this package run their replicas on fake time (world, below)
// with the production timings: the defaults of refresher.Config and
// cache.Config, written out here for the assertions. What they assert of
// time is fake time; no test measures the wall clock.
const (
	lockTTL          = 10 * time.Second
	renewEvery       = lockTTL / 4
	electEvery       = time.Second
	refreshBefore    = 15 * time.Minute
	jitter           = refreshBefore / 10
	retryMin         = time.Second
	retryMax         = time.Minute
	serveMargin      = time.Minute
	pollEvery        = 2 * time.Second
	heartbeatEvery   = 5 * time.Second
	handoverCooldown = time.Minute
	hour             = time.Hour // a token's usual life
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// source is a hand-written Source: it issues numbered tokens and fails as
// told.
type source struct {
	mu       sync.Mutex
	clk      clock.Clock // the time of calls and tokens; nil: the system clock
	lifetime time.Duration
	calls    []time.Time
	fail     error           // returned instead of a token while set
	answer   *upstream.Token // returned instead of a fresh token while set
	block    chan struct{}   // when set, Token waits for it to close
	delay    time.Duration   // how long each call takes, on clk
	n        int
}

func (s *source) clock() clock.Clock {
	if s.clk != nil {
		return s.clk
	}
	return clock.Real()
}

func (s *source) Token(ctx context.Context) (upstream.Token, error) {
	s.mu.Lock()
	sent := s.clock().Now()
	s.calls = append(s.calls, sent)
	block, fail, answer, delay := s.block, s.fail, s.answer, s.delay
	s.n++
	n, lifetime := s.n, s.lifetime
	s.mu.Unlock()
	if delay > 0 { // an upstream that takes its time
		select {
		case <-s.clock().NewTimer(delay).C():
		case <-ctx.Done():
			return upstream.Token{}, ctx.Err()
		}
	}
	if block != nil {
		<-block // deliberately deaf to ctx: a stuck leader
	}
	if fail != nil {
		return upstream.Token{}, fail
	}
	if answer != nil {
		a := *answer
		a.Sent = sent
		return a, nil
	}
	return upstream.Token{Value: fmt.Sprintf("token-%d", n), Lifetime: lifetime, Sent: sent}, nil
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

// timings tune a replica. lifetime is the source's tokens'; the others,
// left zero, take the production defaults (realredis_test.go's replicas
// set them all).
type timings struct {
	lifetime, margin, before, lockTTL time.Duration
	handoverAfter                     int // 0: the default
	// leading is Config.Leading: how many tokens the replica's Keeper
	// would say it leads; nil for none.
	leading func() int
}

type replica struct {
	name  string
	rdb   *redis.Client
	store *cache.Store
	ref   *refresher.Refresher
	// reg holds the replica's metrics: a *testkit.Metrics, or a plain
	// registry for realredis_test.go's replicas.
	reg prometheus.Gatherer
	// tl is the time the replica runs on, and link its way to Redis; nil
	// for replicas on the system clock (realredis_test.go).
	tl     *testkit.Timeline
	link   *redistest.Link
	cancel context.CancelFunc
	done   chan struct{}
}

// world is a test on fake time: a Timeline, a piped miniredis whose clock
// (key expiry, TIME, PEXPIREAT) follows the Timeline's, and the keys of
// one token. It must be made inside synctest.Test. Since a real server's
// clock cannot be faked, tests on a world use miniredis even when
// TOKENKEEPER_TEST_REDIS_URL names a real server.
type world struct {
	t     *testing.T
	tl    *testkit.Timeline
	srv   *redistest.Server
	keys  cache.Keys
	admin *redis.Client // the test's own client
}

func newWorld(t *testing.T) *world {
	t.Helper()
	tl := testkit.NewTimeline(t)
	srv := redistest.NewPiped(t)
	tl.Clock.OnAdvance(srv.Mini.SetTime)
	return &world{t: t, tl: tl, srv: srv, keys: cache.KeysFor(redistest.Name(t)), admin: srv.Client(t)}
}

// other returns a world on w's time and Redis for another token.
func (w *world) other() *world {
	o := *w
	o.keys = cache.KeysFor(redistest.Name(w.t))
	return &o
}

// source returns a source of tokens of lifetime on w's clock.
func (w *world) source(lifetime time.Duration) *source {
	return &source{clk: w.tl.Clock, lifetime: lifetime}
}

// start runs a replica (store and refresher) in w until it is stopped or
// the test ends.
func (w *world) start(name string, src refresher.Source, tm timings) *replica {
	w.t.Helper()
	return w.startReplica(name, src, tm, false)
}

// startObserved runs a replica like start, with its heartbeat too.
func (w *world) startObserved(name string, src refresher.Source, tm timings) *replica {
	w.t.Helper()
	return w.startReplica(name, src, tm, true)
}

func (w *world) startReplica(name string, src refresher.Source, tm timings, heartbeat bool) *replica {
	t := w.t
	t.Helper()
	link := w.srv.NewLink(t)
	// The client of production: a partition makes commands time out as
	// they would there.
	opt := link.Options()
	refresher.TuneRedis(opt, cmp.Or(tm.lockTTL, lockTTL))
	rdb := redis.NewClient(opt)
	reg := testkit.NewMetrics()
	store, err := cache.New(rdb, cache.Config{Keys: w.keys, ServeMargin: tm.margin, Instance: name,
		Clock: w.tl.Clock, Logger: quiet.With("r", name), Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	ref, err := refresher.New(withDefaults(refresher.Config{
		Instance: name, LockTTL: tm.lockTTL, RefreshBefore: tm.before, HandoverAfter: tm.handoverAfter,
		Clock: w.tl.Clock, Logger: quiet.With("r", name), Version: "v-test", Registerer: reg,
		Leading: tm.leading,
	}), rdb, store, src)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	r := &replica{name: name, rdb: rdb, store: store, ref: ref, reg: reg, tl: w.tl, link: link,
		cancel: cancel, done: make(chan struct{})}
	parts := []func(context.Context) error{store.Run, ref.Run}
	if heartbeat {
		parts = append(parts, ref.Heartbeat, func(ctx context.Context) error {
			return refresher.Beat(ctx, rdb, w.keys.Fleet, refresher.BeatConfig{Instance: name, Version: "v-test",
				Every: heartbeatEvery, Clock: w.tl.Clock, Logger: quiet})
		})
	}
	var wg sync.WaitGroup
	for _, run := range parts {
		wg.Go(func() { run(ctx) })
	}
	go func() { wg.Wait(); close(r.done) }()
	t.Cleanup(r.stop)
	return r
}

// pairHolding runs replicas a and b on src's hour-long tokens and returns
// them once one leads and both hold the first token.
func (w *world) pairHolding(src *source) []*replica {
	w.t.Helper()
	rs := []*replica{w.start("a", src, timings{lifetime: hour}), w.start("b", src, timings{lifetime: hour})}
	oneLeader(w.t, rs, time.Minute)
	w.tl.Until("both hold the first token", time.Minute, func() bool {
		_, a := rs[0].store.Current()
		_, b := rs[1].store.Current()
		return a && b
	})
	return rs
}

func (r *replica) stop() {
	r.cancel()
	<-r.done
	r.rdb.Close()
}

// holds reports whether r serves value.
func (r *replica) holds(value string) bool {
	got, ok := r.store.Current()
	return ok && got.Value == value
}

// result is what Refresh returned.
type result struct {
	tok cache.Token
	err error
}

// refresh calls Refresh on r in a goroutine: the answer comes on the
// channel. The test moves the time meanwhile (await).
func (r *replica) refresh(ctx context.Context) <-chan result {
	ch := make(chan result, 1)
	go func() {
		tok, err := r.ref.Refresh(ctx)
		ch <- result{tok, err}
	}()
	return ch
}

// await moves the time until ch delivers, and returns what it delivered
// and the fake time that took.
func (w *world) await(what string, limit time.Duration, ch <-chan result) (result, time.Duration) {
	w.t.Helper()
	var res result
	took := w.tl.Until(what, limit, func() bool {
		select {
		case res = <-ch:
			return true
		default:
			return false
		}
	})
	return res, took
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

// oneLeader waits until exactly one of rs leads, and returns it: within
// fake time for replicas on a Timeline, else within real time.
func oneLeader(t *testing.T, rs []*replica, within time.Duration) *replica {
	t.Helper()
	var l *replica
	cond := func() bool {
		ls := leaders(rs)
		if len(ls) == 1 {
			l = ls[0]
			return true
		}
		return false
	}
	if tl := rs[0].tl; tl != nil {
		tl.Until("one leader", within, cond)
	} else {
		testkit.Eventually(t, within, "one leader", cond)
	}
	return l
}

func TestNewRejectsImpossibleSettings(t *testing.T) {
	srv := redistest.NewMini(t)
	rdb := srv.Client(t)
	store, err := cache.New(rdb, cache.Config{Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	src := &source{lifetime: time.Minute}
	// Its own settings it checks, with an error.
	for _, tt := range []struct {
		name string
		cfg  refresher.Config
	}{
		{"renewal as long as TTL", refresher.Config{Instance: "a", LockTTL: time.Second, RenewEvery: time.Second}},
		{"renewal over half TTL", refresher.Config{Instance: "a", LockTTL: time.Second, RenewEvery: 600 * time.Millisecond}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := refresher.New(withDefaults(tt.cfg), rdb, store, src); err == nil {
				t.Fatal("got nil error, want one")
			}
		})
	}
	// What the front door sets and checks it trusts: a Config without
	// them is a programming error.
	for _, tt := range []struct {
		name string
		cfg  refresher.Config
	}{
		{"no instance", withDefaults(refresher.Config{})},
		{"no TTL", refresher.Config{Instance: "a", RefreshBefore: time.Minute, RetryMin: time.Second, RetryMax: time.Second, HandoverAfter: 1, HandoverCooldown: time.Second}},
		{"retry max below min", withDefaults(refresher.Config{Instance: "a", RetryMin: time.Second, RetryMax: time.Millisecond})},
		{"negative window", withDefaults(refresher.Config{Instance: "a", RefreshBefore: -time.Second})},
	} {
		t.Run(tt.name, func(t *testing.T) {
			defer func() {
				if recover() == nil {
					t.Fatal("New did not panic")
				}
			}()
			refresher.New(tt.cfg, rdb, store, src)
		})
	}
	if _, err := refresher.New(withDefaults(refresher.Config{Instance: "a"}), rdb, store, src); err != nil {
		t.Fatalf("defaults: %v", err)
	}
}

// withDefaults is cfg with the front door's defaults where it has none,
// as tokenkeeper.New gives them.
func withDefaults(cfg refresher.Config) refresher.Config {
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&cfg.LockTTL, 10*time.Second)
	def(&cfg.RefreshBefore, 15*time.Minute)
	def(&cfg.RetryMin, time.Second)
	def(&cfg.RetryMax, time.Minute)
	def(&cfg.HandoverCooldown, time.Minute)
	if cfg.HandoverAfter == 0 {
		cfg.HandoverAfter = 3
	}
	return cfg
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
// lifetimes of hour-long tokens: never more than one leader, every replica
// holds the newest token, and the upstream sees exactly one fetch per
// cycle (refreshBefore, less up to the jitter, before each token's end)
// whatever the fleet's size.
func TestOneFetchPerLifetime(t *testing.T) {
	for _, n := range []int{1, 3, 10} {
		t.Run(fmt.Sprintf("replicas=%d", n), func(t *testing.T) {
			t.Parallel() // each in its own bubble
			synctest.Test(t, func(t *testing.T) {
				w := newWorld(t)
				start := w.tl.Now()
				src := w.source(hour)
				var rs []*replica
				for i := range n {
					rs = append(rs, w.start(fmt.Sprintf("r%d", i), src, timings{lifetime: hour}))
				}
				// Cycle k ends when token-k has been replaced.
				const cycles = 3
				w.tl.Until("three refreshes", cycles*hour+hour, func() bool {
					if ls := leaders(rs); len(ls) > 1 {
						t.Fatalf("%d leaders at once at +%v", len(ls), w.tl.Now().Sub(start))
					}
					return len(src.Calls()) > cycles
				})
				// Every replica follows the latest token at once.
				want := fmt.Sprintf("token-%d", len(src.Calls()))
				for _, r := range rs {
					if !r.holds(want) {
						got, ok := r.store.Current()
						t.Errorf("%s serves %q (%v), want %s", r.name, got.Value, ok, want)
					}
				}
				calls := src.Calls()
				if !calls[0].Equal(start) {
					t.Errorf("first fetch at +%v, want at once", calls[0].Sub(start))
				}
				// The next fetch is due refreshBefore before the token's end,
				// less up to the jitter (and a millisecond of Redis's
				// rounding). The leader dates the token by Redis once it has
				// read it back, and Redis holds it with its life cut by the
				// write's budget (a Redis timeout), so the end it counts from
				// may be up to that much earlier.
				longest, shortest := hour-refreshBefore, hour-refreshBefore-jitter-refresher.RedisTimeout(lockTTL)-time.Millisecond
				for i := 1; i < len(calls); i++ {
					if gap := calls[i].Sub(calls[i-1]); gap < shortest || gap > longest {
						t.Errorf("fetch %d came %v after the previous one, want within [%v, %v]: one fetch per cycle", i+1, gap, shortest, longest)
					}
				}
				if ls := leaders(rs); len(ls) != 1 {
					t.Errorf("got %d leaders, want 1", len(ls))
				}
				t.Logf("replicas=%d fetches=%d over %v of fake time", n, len(calls), calls[len(calls)-1].Sub(calls[0]))
			})
		})
	}
}

// TestLeaderLoss takes the leader away: a leader that vanishes (its
// network partitioned) is replaced once its lock expires, within a lock
// TTL; one that stops announces the release and is replaced at once. The
// others serve throughout, and no new token is needed.
func TestLeaderLoss(t *testing.T) {
	tests := []struct {
		name     string
		graceful bool
		within   time.Duration // of fake time
	}{
		// A vanished leader's lock must expire first: it was renewed at
		// most a renewal period before the cut.
		{"vanished", false, lockTTL + time.Millisecond},
		// The release is announced: the next leader takes the lock at once.
		{"graceful", true, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				w := newWorld(t)
				src := w.source(hour)
				var rs []*replica
				for i := range 3 {
					rs = append(rs, w.start(fmt.Sprintf("r%d", i), src, timings{lifetime: hour}))
				}
				old := oneLeader(t, rs, time.Minute)
				w.tl.Until("every replica ready", time.Minute, func() bool {
					for _, r := range rs {
						if _, ok := r.store.Current(); !ok {
							return false
						}
					}
					return true
				})
				// Some time into the leadership: renewals have run.
				w.tl.Advance(time.Minute + 1234*time.Millisecond)

				var others []*replica
				for _, r := range rs {
					if r != old {
						others = append(others, r)
					}
				}
				if tt.graceful {
					old.stop()
				} else {
					old.link.Cut() // gone: no release, no renewal
				}
				took := w.tl.Until("a new leader", tt.within+time.Minute, func() bool {
					for _, r := range others {
						if _, ok := r.store.Current(); !ok {
							t.Fatalf("%s stopped serving during the handover", r.name)
						}
					}
					return len(leaders(others)) == 1
				})
				next := leaders(others)[0]
				t.Logf("%s: new leader %s after %v of fake time", tt.name, next.name, took)
				if took > tt.within {
					t.Errorf("new leader after %v of fake time, want within %v", took, tt.within)
				}
				if !tt.graceful && took < lockTTL-renewEvery {
					t.Errorf("new leader after %v of fake time, before the old leader's lock could expire (%v after its last renewal)", took, lockTTL)
				}
				if got := len(src.Calls()); got != 1 {
					t.Errorf("upstream calls: got %d, want 1 (the handover needs no new token)", got)
				}
			})
		})
	}
}

// TestStaleLeaderIsFenced has a leader lose its lock while stuck in a
// fetch; when the fetch returns, its write is refused and it steps down.
func TestStaleLeaderIsFenced(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := newWorld(t)
		ctx := t.Context()
		block := make(chan struct{})
		src := w.source(hour)
		src.block = block
		a := w.startObserved("a", src, timings{lifetime: hour})
		unblock := sync.OnceFunc(func() { close(block) })
		t.Cleanup(unblock) // before a stops, should the test fail first
		w.tl.Until("a leads and fetches", time.Minute, func() bool { return a.ref.IsLeader() && len(src.Calls()) == 1 })

		// The lock passes to someone else while a is stuck, and the fetch
		// returns before a's next renewal could notice: no time passes.
		if err := w.admin.Set(ctx, w.keys.Lock, "tk:0123456789abcdef:other", time.Minute).Err(); err != nil {
			t.Fatal(err)
		}
		unblock()
		w.tl.Settle()
		if a.ref.IsLeader() {
			t.Fatal("a still leads after its write was fenced")
		}
		if n, err := w.admin.Exists(ctx, w.keys.Token).Result(); err != nil || n != 0 {
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
	})
}

// TestReseedAfterDataLoss empties Redis under a running fleet: the leader
// writes its copy back, without asking the upstream, as soon as it finds
// the loss (its next renewal is refused, or the store's poll finds no
// token) and leads again.
func TestReseedAfterDataLoss(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := newWorld(t)
		ctx := t.Context()
		src := w.source(hour)
		rs := w.pairHolding(src)
		w.tl.Advance(10*time.Minute + 777*time.Millisecond)
		if err := w.admin.Del(ctx, w.keys.Token, w.keys.Lock).Err(); err != nil {
			t.Fatal(err)
		}
		// A renewal (every renewEvery) finds the loss at the latest; the
		// replica stands again an election period later.
		within := renewEvery + electEvery
		took := w.tl.Until("token back in Redis", time.Minute, func() bool {
			n, _ := w.admin.Exists(ctx, w.keys.Token).Result()
			return n == 1
		})
		t.Logf("re-seeded after %v of fake time", took)
		if took > within {
			t.Errorf("re-seeded after %v of fake time, want within %v", took, within)
		}
		if got := len(src.Calls()); got != 1 {
			t.Fatalf("upstream calls: got %d, want 1", got)
		}
		held, _ := rs[0].store.Held()
		want := held.Remaining(w.tl.Now())
		ttl, err := w.admin.PTTL(ctx, w.keys.Token).Result()
		if err != nil || ttl <= 0 || ttl > want+time.Millisecond || ttl < want-2*time.Millisecond {
			t.Fatalf("re-seeded expiry: got %v (err %v), want the remaining life of the held token, %v", ttl, err, want)
		}
	})
}

// TestUpstreamFailures: whatever the upstream does wrong, replicas keep
// serving the current token until it is due, and not after; retries back
// off (never sooner than the minimum backoff, or the Retry-After asked),
// nothing bad is stored, and service returns by itself.
func TestUpstreamFailures(t *testing.T) {
	failures := []struct {
		name       string
		err        error
		answer     *upstream.Token
		retryAfter time.Duration
	}{
		{"500", &upstream.Error{Op: "liveness", Status: 500, Retryable: true}, nil, 0},
		{"429 with Retry-After", &upstream.Error{Op: "liveness", Status: 429, Retryable: true, RetryAfter: 2 * time.Minute}, nil, 2 * time.Minute},
		{"timeout", &upstream.Error{Op: "liveness", Retryable: true, Err: context.DeadlineExceeded}, nil, 0},
		{"malformed", &upstream.Error{Op: "liveness", Status: 200, Retryable: true, Err: errors.New("malformed JSON")}, nil, 0},
		{"already expired", nil, &upstream.Token{Value: "expired", Lifetime: -time.Second}, 0},
		{"shorter than margin", nil, &upstream.Token{Value: "short", Lifetime: serveMargin / 2}, 0},
		{"control characters", nil, &upstream.Token{Value: "bad\ntoken", Lifetime: hour}, 0},
	}
	for _, tt := range failures {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel() // each in its own bubble
			synctest.Test(t, func(t *testing.T) {
				w := newWorld(t)
				src := w.source(hour)
				rs := []*replica{w.start("a", src, timings{lifetime: hour}), w.start("b", src, timings{lifetime: hour})}
				oneLeader(t, rs, time.Minute)
				w.tl.Until("first token", time.Minute, func() bool {
					_, a := rs[0].store.Current()
					_, b := rs[1].store.Current()
					return a && b
				})
				first, _ := rs[0].store.Current()
				src.set(func(s *source) { s.fail, s.answer = tt.err, tt.answer })
				failedFrom := len(src.Calls())

				// Until a replica's copy of the first token is due, it serves
				// it; from then on, nothing. Looked at after every step.
				w.tl.Until("the first token due everywhere", 2*hour, func() bool {
					now, due := w.tl.Now(), 0
					for _, r := range rs {
						held, _ := r.store.Held()
						got, ok := r.store.Current()
						switch {
						case held.Value != first.Value:
							t.Fatalf("%s holds %q, want %q", r.name, held.Value, first.Value)
						case now.Before(held.Deadline.Add(-serveMargin)) && (!ok || got.Value != first.Value):
							t.Fatalf("%s: got %q, %v before the serve margin; want %q", r.name, got.Value, ok, first.Value)
						case !now.Before(held.Deadline.Add(-serveMargin)) && ok:
							t.Fatalf("%s serves %q within the serve margin", r.name, got.Value)
						case !now.Before(held.Deadline.Add(-serveMargin)):
							due++
						}
					}
					return due == len(rs)
				})
				calls := src.Calls()[failedFrom:]
				if len(calls) < 2 {
					t.Fatalf("got %d attempts while failing, want retries", len(calls))
				}
				// Each retry waits its backoff, in [retryMin, retryMax], never
				// less than the Retry-After. A handover (after 3 failures, or
				// at once for a token that must not be stored) may add a lock
				// TTL and two election periods, for the lock to stay free while
				// the replica that failed first stays aside, and the jitter: the
				// next leader draws its own refresh time.
				shortest := max(retryMin, tt.retryAfter)
				longest := max(retryMax, tt.retryAfter) + jitter + lockTTL + 2*electEvery
				for i := 1; i < len(calls); i++ {
					if gap := calls[i].Sub(calls[i-1]); gap < shortest || gap > longest {
						t.Errorf("attempt %d while failing came %v after the previous one, want within [%v, %v]", i+1, gap, shortest, longest)
					}
				}
				// Nothing bad reached Redis: it holds the first token or none.
				if v, err := w.admin.HGet(t.Context(), w.keys.Token, "v").Result(); err == nil && v != first.Value {
					t.Fatalf("Redis holds %q after the failures, want %q or nothing", v, first.Value)
				}
				t.Logf("%d attempts while failing", len(calls))

				src.set(func(s *source) { s.fail, s.answer = nil, nil })
				w.tl.Until("service returns", longest, func() bool {
					_, a := rs[0].store.Current()
					_, b := rs[1].store.Current()
					return a && b
				})
			})
		})
	}
}

// pair runs two replicas with hour-long tokens and returns the leader and
// the follower once the follower holds the first token.
func (w *world) pair(src *source) (leader, follower *replica) {
	w.t.Helper()
	rs := []*replica{w.start("a", src, timings{lifetime: hour}), w.start("b", src, timings{lifetime: hour})}
	leader = oneLeader(w.t, rs, time.Minute)
	follower = rs[0]
	if follower == leader {
		follower = rs[1]
	}
	w.tl.Until("first token", time.Minute, func() bool { _, ok := follower.store.Current(); return ok })
	w.tl.Advance(5*time.Minute + 321*time.Millisecond) // into the token's life
	return leader, follower
}

func TestRefreshThroughAnyReplica(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := newWorld(t)
		src := w.source(hour)
		_, follower := w.pair(src)
		before, _ := follower.store.Current()

		// The leader fetches at once: no time passes.
		res, took := w.await("Refresh answered", time.Minute, follower.refresh(t.Context()))
		if res.err != nil {
			t.Fatalf("Refresh: %v", res.err)
		}
		if took != 0 {
			t.Errorf("Refresh answered after %v of fake time, want at once", took)
		}
		got := res.tok
		if got.Value == before.Value {
			t.Fatal("Refresh returned the old token")
		}
		if !follower.holds(got.Value) {
			cur, _ := follower.store.Current()
			t.Fatalf("follower serves %q after Refresh, want %q", cur.Value, got.Value)
		}
		if n := len(src.Calls()); n != 2 {
			t.Fatalf("upstream calls: got %d, want 2", n)
		}

		src.set(func(s *source) { s.fail = &upstream.Error{Op: "auth", Status: 401, Code: "invalid_client"} })
		res, _ = w.await("Refresh with a failing upstream answered", time.Minute, follower.refresh(t.Context()))
		if !errors.Is(res.err, fault.ErrRefreshFailed) {
			t.Fatalf("Refresh with a failing upstream: got %v, want fault.ErrRefreshFailed", res.err)
		}
		if !follower.holds(got.Value) {
			t.Fatal("a failed refresh lost the current token")
		}
	})
}

// TestRefreshWithoutLeader: when no replica leads for two lock TTLs, that
// is the answer, after those two lock TTLs of fake time.
func TestRefreshWithoutLeader(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := newWorld(t)
		rdb := w.srv.Client(t)
		store, err := cache.New(rdb, cache.Config{Keys: w.keys, Clock: w.tl.Clock, Logger: quiet})
		if err != nil {
			t.Fatal(err)
		}
		ref, err := refresher.New(withDefaults(refresher.Config{Instance: "a", Clock: w.tl.Clock, Logger: quiet}), rdb, store, w.source(hour))
		if err != nil {
			t.Fatal(err)
		}
		ch := make(chan result, 1)
		go func() {
			tok, err := ref.Refresh(t.Context())
			ch <- result{tok, err}
		}()
		res, took := w.await("Refresh answered", 5*time.Minute, ch)
		if !errors.Is(res.err, fault.ErrNoLeader) {
			t.Fatalf("got %v, want fault.ErrNoLeader", res.err)
		}
		if took < 2*lockTTL || took > 2*lockTTL+electEvery {
			t.Fatalf("answered after %v of fake time, want two lock TTLs (%v), give or take an election period", took, 2*lockTTL)
		}
	})
}

// TestAuthBudgetIsFleetWide: replicas share one budget of sign-ons in a
// sliding minute on Redis's clock; one refused is told when one frees up,
// and one does then.
func TestAuthBudgetIsFleetWide(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := newWorld(t)
		ctx := t.Context()
		key := w.keys.Auth
		var budgets []*refresher.AuthBudget
		for range 3 { // three replicas, one budget
			b, err := refresher.NewAuthBudget(w.srv.Client(t), key, 5)
			if err != nil {
				t.Fatal(err)
			}
			budgets = append(budgets, b)
		}
		var mu sync.Mutex
		taken := 0
		var waits []time.Duration
		var wg sync.WaitGroup
		for _, b := range budgets {
			wg.Go(func() {
				for range 4 {
					err := b.Take(ctx)
					mu.Lock()
					switch {
					case err == nil:
						taken++
					case errors.Is(err, refresher.ErrAuthBudget) && upstream.IsRetryable(err):
						waits = append(waits, upstream.RetryAfter(err))
					default:
						t.Errorf("got %v, want a retryable ErrAuthBudget", err)
					}
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		if taken != 5 {
			t.Fatalf("calls allowed: got %d, want 5", taken)
		}
		// All were taken at this instant: the first frees up a minute on.
		for _, d := range waits {
			if d != time.Minute {
				t.Errorf("Retry-After %v, want %v", d, time.Minute)
			}
		}
		w.tl.Advance(time.Minute - time.Millisecond)
		err := budgets[0].Take(ctx)
		if got := upstream.RetryAfter(err); !errors.Is(err, refresher.ErrAuthBudget) || got != time.Millisecond {
			t.Fatalf("a millisecond before the minute is out: got %v (Retry-After %v), want ErrAuthBudget with 1ms", err, got)
		}
		w.tl.Advance(time.Millisecond)
		if err := budgets[1].Take(ctx); err != nil {
			t.Fatalf("once the minute is out: got %v, want a sign-on", err)
		}
		if _, err := refresher.NewAuthBudget(w.srv.Client(t), key, 0); err == nil {
			t.Fatal("zero budget: got nil error")
		}
	})
}

// TestRefreshOutlivesTheLeader: a leader that loses its lock in the
// middle of a requested refresh tells the requester, which asks the next
// leader instead of waiting for its whole timeout; the request is answered
// with a new token.
func TestRefreshOutlivesTheLeader(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := newWorld(t)
		src := w.source(hour)
		leader, follower := w.pair(src)
		before, _ := follower.store.Current()

		block := make(chan struct{})
		unblock := sync.OnceFunc(func() { close(block) })
		t.Cleanup(unblock) // before the replicas stop, should the test fail first
		src.set(func(s *source) { s.block = block })
		answered := follower.refresh(t.Context())
		w.tl.Until("the leader is fetching", time.Minute, func() bool { return len(src.Calls()) == 2 })

		// A stranger holds the lock for a while, so the leader's renewal is
		// refused while it is stuck; then the fetch returns.
		if err := w.admin.Set(t.Context(), w.keys.Lock, "tk:0123456789abcdef:nobody", 2*lockTTL).Err(); err != nil {
			t.Fatal(err)
		}
		w.tl.Until("renewal failure noticed", time.Minute, func() bool {
			st, _ := leader.ref.Status(t.Context())
			return strings.Contains(st.LastError, "lock renewal")
		})
		src.set(func(s *source) { s.block = nil })
		unblock()
		// The stranger's lock expires, a replica leads and answers.
		res, took := w.await("the refresh request answered", 2*time.Minute, answered)
		if res.err != nil {
			t.Fatalf("Refresh across a change of leader: %v", res.err)
		}
		if res.tok.Value == before.Value {
			t.Fatal("Refresh returned the token held before the request")
		}
		if took > 2*lockTTL+electEvery {
			t.Errorf("answered %v of fake time after the fetch returned, want once the stranger's lock (%v) expired", took, 2*lockTTL)
		}
	})
}

// TestFollowerAtRestAsksNothing: while the leader's beats announce its
// lease, a follower's election asks Redis nothing (no PTTL every lock
// period): at rest it reads only its store's rest polls.
func TestFollowerAtRestAsksNothing(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := newWorld(t)
		rs := w.pairHolding(w.source(hour))
		var follower *replica
		for _, r := range rs {
			if !r.ref.IsLeader() {
				follower = r
			}
		}
		w.tl.Advance(time.Minute)
		sent := follower.link.Writes()
		const rest = 30 * time.Minute
		w.tl.Advance(rest)
		// One MGET per rest poll (cache.DefaultRestPollInterval), and
		// nothing else.
		if got, most := follower.link.Writes()-sent, int64(rest/cache.DefaultRestPollInterval)+1; got > most {
			t.Fatalf("a follower at rest sent Redis %d writes in %v, want at most %d (its rest polls)", got, rest, most)
		}
		if len(leaders(rs)) != 1 || follower.ref.IsLeader() {
			t.Fatal("leadership changed at rest")
		}
	})
}

// TestReleasedLockGoesToTheLeastBusy steps a leader down with two
// followers standing, one whose Keeper leads ten other tokens and one
// leading none: the idle one takes the lock, the busy one yielding
// (Config.Leading). Then the busy one is the only one standing, and takes
// the next release within its yield.
func TestReleasedLockGoesToTheLeastBusy(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := newWorld(t)
		src := w.source(hour)
		a := w.start("a", src, timings{lifetime: hour})
		oneLeader(t, []*replica{a}, time.Minute)
		busy := w.start("busy", src, timings{lifetime: hour, leading: func() int { return 10 }})
		idle := w.start("idle", src, timings{lifetime: hour, leading: func() int { return 0 }})
		rs := []*replica{a, busy, idle}
		w.tl.Until("every replica holds the token", time.Minute, func() bool {
			for _, r := range rs {
				if _, ok := r.store.Current(); !ok {
					return false
				}
			}
			return true
		})
		a.ref.StepDown()
		w.tl.Until("a stepped down", time.Minute, func() bool { return !a.ref.IsLeader() })
		if l := oneLeader(t, rs, lockTTL); l != idle {
			t.Fatalf("%s took the released lock, want idle: busy leads ten other tokens", l.name)
		}
		idle.stop()
		released := time.Now()
		if l := oneLeader(t, rs[:2], lockTTL); l != busy {
			t.Fatalf("%s took the released lock, want busy: a stands aside", l.name)
		}
		// Within its yield, ElectEvery/2, and the round trips of a PTTL and
		// an Obtain.
		if took, limit := time.Since(released), electEvery/2+time.Second; took > limit {
			t.Errorf("busy took the lock %v after its release, want within its yield and round trips (%v)", took, limit)
		}
	})
}
