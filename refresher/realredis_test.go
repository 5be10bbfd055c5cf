//go:build realredis

// Tests against a private, real redis-server (internal/redistest.StartServer):
// they pause it, slow it down or fill its memory, which miniredis cannot
// imitate and which would disturb other tests sharing CI's server. Run
// them with: go test -tags realredis ./refresher/
package refresher_test

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/tokenkeeper/tokenkeeper/cache"
	"github.com/tokenkeeper/tokenkeeper/internal/redistest"
	"github.com/tokenkeeper/tokenkeeper/internal/testkit"
	"github.com/tokenkeeper/tokenkeeper/refresher"
)

// testLog sends a replica's logs (Info and above) to the test's log, and
// drops them once the test has ended.
func testLog(t *testing.T) *slog.Logger {
	w := &logWriter{t: t}
	t.Cleanup(w.close) // registered before any replica: runs after they stop
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

type logWriter struct {
	mu   sync.Mutex
	t    *testing.T
	done bool
}

func (w *logWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(strings.TrimSuffix(string(p), "\n"))
	}
	return len(p), nil
}

func (w *logWriter) close() {
	w.mu.Lock()
	w.done = true
	w.mu.Unlock()
}

// startReal runs a replica as start does, with the Redis client tuned as
// in production (refresher.TuneRedis).
func startReal(t *testing.T, log *slog.Logger, name, addr string, keys cache.Keys, src refresher.Source, tm timings) *replica {
	t.Helper()
	return startRealWith(t, log, name, &redis.Options{Addr: addr}, keys, src, tm, nil)
}

// startRealWith runs a replica on a client of opt (tuned as in
// production), with the short retries and poll of these tests; adjust, when
// set, changes the store's and the refresher's configurations first.
func startRealWith(t *testing.T, log *slog.Logger, name string, opt *redis.Options, keys cache.Keys, src refresher.Source, tm timings,
	adjust func(*cache.Config, *refresher.Config)) *replica {
	t.Helper()
	reg := prometheus.NewRegistry()
	opt.MaxRetries, opt.DialTimeout = -1, time.Second
	refresher.TuneRedis(opt, tm.lockTTL)
	rdb := redis.NewClient(opt)
	scfg := cache.Config{Keys: keys, ServeMargin: tm.margin, PollInterval: 200 * time.Millisecond,
		Instance: name, Logger: log.With("r", name), Registerer: reg}
	rcfg := refresher.Config{
		Instance: name, LockTTL: tm.lockTTL, RefreshBefore: tm.before, Jitter: 50 * time.Millisecond,
		RetryMin: 50 * time.Millisecond, RetryMax: 400 * time.Millisecond, Logger: log.With("r", name),
		Version: "v-test", Registerer: reg,
	}
	if adjust != nil {
		adjust(&scfg, &rcfg)
	}
	store, err := cache.New(rdb, scfg)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := refresher.New(withDefaults(rcfg), rdb, store, src)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &replica{name: name, rdb: rdb, store: store, ref: ref, reg: reg, cancel: cancel, done: make(chan struct{})}
	var wg sync.WaitGroup
	for _, run := range []func(context.Context) error{store.Run, ref.Run} {
		wg.Go(func() { run(ctx) })
	}
	go func() { wg.Wait(); close(r.done) }()
	t.Cleanup(r.stop)
	return r
}

// leadershipChanges counts the leaderships taken or ended across rs.
func leadershipChanges(t *testing.T, rs []*replica) float64 {
	t.Helper()
	n := 0.0
	for _, r := range rs {
		for _, change := range []string{"acquired", "lost", "fenced", "released", "handed_over"} {
			n += value(t, r.reg, "tokenkeeper_leadership_changes_total", "change", change)
		}
	}
	return n
}

// anomalies counts the anomalies of kind across rs.
func anomalies(t *testing.T, rs []*replica, kind string) float64 {
	t.Helper()
	n := 0.0
	for _, r := range rs {
		n += value(t, r.reg, "tokenkeeper_redis_anomalies_total", "kind", kind)
	}
	return n
}

// realPair runs replicas a and b on addr and returns them, the leader and
// the follower, once the follower holds the first token.
func realPair(t *testing.T, log *slog.Logger, addr string, keys cache.Keys, src refresher.Source, tm timings) (rs []*replica, leader, follower *replica) {
	t.Helper()
	rs = []*replica{startReal(t, log, "a", addr, keys, src, tm), startReal(t, log, "b", addr, keys, src, tm)}
	leader = oneLeader(t, rs, 5*time.Second)
	follower = rs[0]
	if follower == leader {
		follower = rs[1]
	}
	testkit.Eventually(t, 3*time.Second, "first token", func() bool { _, ok := follower.store.Current(); return ok })
	return rs, leader, follower
}

// TestSlowRedisKeepsLeader slows Redis down to round trips of 100ms, with
// spikes past the client's read timeout: a renewal that times out is
// retried within the lease, so the leader keeps leading and the fleet
// keeps serving fresh tokens.
func TestSlowRedisKeepsLeader(t *testing.T) {
	log := testLog(t)
	srv := redistest.StartServer(t)
	proxy := redistest.NewProxy(t, srv.Addr)
	keys := cache.KeysFor(redistest.Name(t))
	// The refresh window leaves followers two seconds to read the new token
	// through the slow Redis: a read may meet a spike, time out, and be
	// retried by the next poll (200ms).
	tm := timings{lifetime: 4 * time.Second, margin: 300 * time.Millisecond, before: 2 * time.Second, lockTTL: time.Second}
	src := &source{lifetime: tm.lifetime}
	rs, leader, follower := realPair(t, log, proxy.Addr, keys, src, tm)
	changes := leadershipChanges(t, rs)

	// Round trips of 100ms (a second at the default 10s lock TTL, where a
	// fixed 1s read timeout lost the leader), with spikes of a third of the
	// lock TTL that last 200ms in every 800ms: renewals that meet one land
	// within their timeout (half the TTL) and the lease.
	const (
		base   = 100 * time.Millisecond
		spike  = 320 * time.Millisecond
		calm   = 600 * time.Millisecond
		burst  = 200 * time.Millisecond
		cycles = 5 // 4s
	)
	t.Logf("RedisTimeout %v; latency %v, with %v of %v in every %v, for %v",
		refresher.RedisTimeout(tm.lockTTL), base, burst, spike, calm+burst, cycles*(calm+burst))

	// Sample the follower every 10ms while Redis is slow.
	stop := make(chan struct{})
	type sample struct {
		at    time.Time
		tok   cache.Token
		ok    bool
		leads bool
	}
	var samples []sample
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case now := <-tick.C:
				tok, ok := follower.store.Current()
				samples = append(samples, sample{now, tok, ok, leader.ref.IsLeader()})
			}
		}
	}()
	slowFrom := time.Now()
	for range cycles {
		proxy.SetLatency(base)
		time.Sleep(calm) // holds the fault
		proxy.SetLatency(spike)
		time.Sleep(burst)
	}
	proxy.SetLatency(0)
	close(stop)
	<-sampled
	slowFor := time.Since(slowFrom)

	if got := leadershipChanges(t, rs); got != changes {
		t.Errorf("leadership changed while Redis was slow: %v leadership changes before, %v after", changes, got)
	}
	values := map[string]bool{}
	var gaps int
	var firstGap time.Time
	leaderless := 0
	for _, s := range samples {
		if !s.ok {
			if gaps == 0 {
				firstGap = s.at
			}
			gaps++
			continue
		}
		values[s.tok.Value] = true
		if !s.leads {
			leaderless++
		}
	}
	t.Logf("slow for %v: %d samples, %d distinct tokens served, %d samples without a servable token, %d with the first leader not leading, %d upstream calls in all",
		slowFor.Round(time.Millisecond), len(samples), len(values), gaps, leaderless, len(src.Calls()))
	if gaps > 0 {
		t.Errorf("the follower had no servable token in %d of %d samples, first at +%v",
			gaps, len(samples), firstGap.Sub(slowFrom).Round(time.Millisecond))
	}
	if leaderless > 0 {
		t.Errorf("the leader was not leading in %d of %d samples", leaderless, len(samples))
	}
	// A 3s token refreshed 1s before its end is replaced about every 2s.
	if len(values) < 2 {
		t.Errorf("served %d distinct tokens in %v, want at least 2: tokens were not refreshed", len(values), slowFor)
	}
}

// TestRedisRoundTripsUnderHalfTheLockTTL slows Redis down for good, to
// round trips between a quarter and 40% of the lock TTL: the leader keeps
// its lock throughout (the README's bound: round trips under about half
// the lock TTL), the follower keeps a servable token, and the renewal
// metric shows how close the round trips come to the bound.
func TestRedisRoundTripsUnderHalfTheLockTTL(t *testing.T) {
	log := testLog(t)
	srv := redistest.StartServer(t)
	proxy := redistest.NewProxy(t, srv.Addr)
	keys := cache.KeysFor(redistest.Name(t))
	const lockTTL = 2 * time.Second
	tm := timings{lifetime: 20 * time.Second, margin: time.Second, before: 5 * time.Second, lockTTL: lockTTL}
	src := &source{lifetime: tm.lifetime}
	rs, leader, follower := realPair(t, log, proxy.Addr, keys, src, tm)
	changes := leadershipChanges(t, rs)

	const steps = 8 // 6.4s
	worst := 0.0
	for i := range steps {
		proxy.SetLatency([]time.Duration{lockTTL / 4, lockTTL * 2 / 5}[i%2])
		time.Sleep(800 * time.Millisecond) // holds the fault
		if !leader.ref.IsLeader() {
			t.Fatalf("the leader lost its lock %d steps into round trips of %v to %v", i+1, lockTTL/4, lockTTL*2/5)
		}
		if _, ok := follower.store.Current(); !ok {
			t.Fatalf("the follower holds no servable token %d steps into the slow Redis", i+1)
		}
		worst = max(worst, value(t, leader.reg, "tokenkeeper_lock_renewal_seconds"))
	}
	proxy.SetLatency(0)
	if got := leadershipChanges(t, rs); got != changes {
		t.Errorf("leadership changed while Redis was slow: %v changes before, %v after", changes, got)
	}
	if ttl := value(t, leader.reg, "tokenkeeper_lock_ttl_seconds"); ttl != lockTTL.Seconds() {
		t.Errorf("tokenkeeper_lock_ttl_seconds = %v, want %v", ttl, lockTTL.Seconds())
	}
	if worst < (lockTTL / 4).Seconds() {
		t.Errorf("tokenkeeper_lock_renewal_seconds reached %vs at most, want at least the round trip %v", worst, lockTTL/4)
	}
	t.Logf("slowest renewal seen by the metric: %.3fs of a %v lock TTL", worst, lockTTL)
}

// TestRefreshSurvivesClientPauseWrite asks for a refresh while Redis
// refuses writes for 1.5s (CLIENT PAUSE WRITE): the refresh must come
// through once writes resume, long before the caller's deadline.
func TestRefreshSurvivesClientPauseWrite(t *testing.T) {
	log := testLog(t)
	srv := redistest.StartServer(t)
	keys := cache.KeysFor(redistest.Name(t))
	tm := timings{lifetime: 30 * time.Second, margin: 300 * time.Millisecond, before: 5 * time.Second, lockTTL: time.Second}
	src := &source{lifetime: tm.lifetime}
	rs, _, follower := realPair(t, log, srv.Addr, keys, src, tm)
	before, _ := follower.store.Current()
	admin := srv.Client(t)

	const pause = 1500 * time.Millisecond
	bound := pause + 3*tm.lockTTL
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	type result struct {
		tok cache.Token
		err error
	}
	answered := make(chan result, 1)
	// Pause first, so that the request meets the pause, then ask at once.
	paused := time.Now()
	if err := admin.Do(context.Background(), "CLIENT", "PAUSE", pause.Milliseconds(), "WRITE").Err(); err != nil {
		t.Fatalf("CLIENT PAUSE: %v", err)
	}
	go func() { tok, err := follower.ref.Refresh(ctx); answered <- result{tok, err} }()
	res := <-answered
	took := time.Since(paused)
	t.Logf("Refresh answered %v after the pause began (bound: pause %v + 3 lock TTLs = %v; caller's deadline 20s); leader now %v; %d upstream calls",
		took.Round(time.Millisecond), pause, bound, leaderNames(rs), len(src.Calls()))
	if res.err != nil {
		t.Fatalf("Refresh: %v after %v", res.err, took.Round(time.Millisecond))
	}
	if res.tok.Value == before.Value {
		t.Fatalf("Refresh returned the old token %q", res.tok.Value)
	}
	if took > bound {
		t.Fatalf("Refresh took %v, want at most %v", took.Round(time.Millisecond), bound)
	}
	testkit.Eventually(t, 3*time.Second, "the follower serves the new token", func() bool {
		cur, ok := follower.store.Current()
		return ok && cur.Value == res.tok.Value
	})
}

// TestEvictionIsReportedAndTokenNotWasted fills a Redis that evicts any
// key (maxmemory with allkeys-lru) until it drops the token or the lock:
// the replicas report the anomaly, the leader writes the token back from
// memory instead of fetching a new one, and the fleet serves it again.
func TestEvictionIsReportedAndTokenNotWasted(t *testing.T) {
	log := testLog(t)
	srv := redistest.StartServer(t, "--maxmemory", "2mb", "--maxmemory-policy", "allkeys-lru")
	keys := cache.KeysFor(redistest.Name(t))
	tm := timings{lifetime: 30 * time.Second, margin: 300 * time.Millisecond, before: 5 * time.Second, lockTTL: time.Second}
	src := &source{lifetime: tm.lifetime}
	rs := []*replica{startReal(t, log, "a", srv.Addr, keys, src, tm), startReal(t, log, "b", srv.Addr, keys, src, tm)}
	oneLeader(t, rs, 5*time.Second)
	for _, r := range rs {
		testkit.Eventually(t, 3*time.Second, r.name+" holds the first token", func() bool { _, ok := r.store.Current(); return ok })
	}
	first, _ := rs[0].store.Current()
	callsBefore := len(src.Calls())
	admin := srv.Client(t)
	ctx := context.Background()

	// Fill memory until Redis evicts the token. The lock, small and
	// renewed often, may go first: note whether it ever went missing.
	junk := strings.Repeat("x", 10*1024)
	var n int
	lockGone := false
	for n = 0; ; n++ {
		if n > 20000 {
			t.Fatalf("wrote %d junk keys of 10 KB and Redis still holds the token", n)
		}
		if err := admin.Set(ctx, fmt.Sprintf("junk:%d", n), junk, 0).Err(); err != nil {
			t.Fatalf("SET junk:%d: %v", n, err)
		}
		lock, err := admin.Exists(ctx, keys.Lock).Result()
		if err != nil {
			t.Fatal(err)
		}
		lockGone = lockGone || lock == 0
		token, err := admin.Exists(ctx, keys.Token).Result()
		if err != nil {
			t.Fatal(err)
		}
		if token == 0 {
			break
		}
	}
	stats, _ := admin.Info(ctx, "stats").Result()
	t.Logf("after %d junk keys of 10 KB the token was evicted; the lock was seen missing: %v (%s)", n+1, lockGone, infoField(stats, "evicted_keys"))

	testkit.Eventually(t, 5*time.Second, "token_lost reported", func() bool { return anomalies(t, rs, "token_lost") > 0 })
	testkit.Eventually(t, 5*time.Second, "the token back in Redis", func() bool {
		n, err := admin.Exists(ctx, keys.Token).Result()
		return err == nil && n == 1
	})
	for _, r := range rs {
		testkit.Eventually(t, 5*time.Second, r.name+" serves the token", func() bool { _, ok := r.store.Current(); return ok })
	}
	oneLeader(t, rs, 5*time.Second)
	calls := len(src.Calls()) - callsBefore
	cur, _ := rs[0].store.Current()
	if lockGone && anomalies(t, rs, "lock_lost") == 0 {
		t.Logf("note: the lock was evicted, yet no replica counted lock_lost")
	}
	t.Logf("anomalies: token_lost %v, lock_lost %v; upstream calls during the episode: %d (ideal 0); token before %q, after %q",
		anomalies(t, rs, "token_lost"), anomalies(t, rs, "lock_lost"), calls, first.Value, cur.Value)
	if calls > 2 {
		t.Errorf("%d upstream calls during the eviction, want at most 2: the leader should write the token back from memory", calls)
	}
}

// infoField returns the "name:value" line of an INFO answer.
func infoField(info, name string) string {
	for _, line := range strings.Split(info, "\n") {
		if strings.HasPrefix(line, name+":") {
			return strings.TrimSpace(line)
		}
	}
	return name + ": unknown"
}

// leaderNames names the replicas of rs that lead.
func leaderNames(rs []*replica) string {
	var names []string
	for _, r := range leaders(rs) {
		names = append(names, r.name)
	}
	return strings.Join(names, ",")
}
