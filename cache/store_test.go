package cache_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokenkeeper/tokenkeeper/cache"
	"github.com/tokenkeeper/tokenkeeper/internal/clocktest"
	"github.com/tokenkeeper/tokenkeeper/internal/redistest"
	"github.com/tokenkeeper/tokenkeeper/internal/testkit"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// newClock is a hand-moved clock for tests.
func newClock() *clocktest.Fake { return clocktest.New(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)) }

// onFakeTime returns a Timeline and a piped miniredis whose clock (key
// expiry, TIME, PEXPIREAT) follows the Timeline's. It must be called inside
// synctest.Test. A real server's clock cannot be faked: tests on fake time
// use miniredis even when TOKENKEEPER_TEST_REDIS_URL names a real server.
func onFakeTime(t *testing.T) (*testkit.Timeline, *redistest.Server) {
	t.Helper()
	tl := testkit.NewTimeline(t)
	srv := redistest.NewPiped(t)
	tl.Clock.OnAdvance(srv.Mini.SetTime)
	return tl, srv
}

// redisTime returns Redis's clock.
func redisTime(t *testing.T, rdb *redis.Client) time.Time {
	t.Helper()
	now, err := rdb.Time(t.Context()).Result()
	if err != nil {
		t.Fatal(err)
	}
	return now
}

type fixture struct {
	srv  *redistest.Server
	rdb  *redis.Client
	keys cache.Keys
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	srv := redistest.New(t)
	return &fixture{srv: srv, rdb: srv.Client(t), keys: cache.KeysFor(redistest.Name(t))}
}

func (f *fixture) store(t *testing.T, cfg cache.Config) *cache.Store {
	t.Helper()
	if cfg.Keys == (cache.Keys{}) {
		cfg.Keys = f.keys
	}
	if cfg.Logger == nil {
		cfg.Logger = quiet
	}
	s, err := cache.New(f.srv.Client(t), cfg)
	if err != nil {
		t.Fatalf("cache.New: %v", err)
	}
	return s
}

// lock makes value the holder of the lock, as redislock would.
func (f *fixture) lock(t *testing.T, value string) {
	t.Helper()
	if err := f.rdb.Set(t.Context(), f.keys.Lock, value, time.Minute).Err(); err != nil {
		t.Fatalf("set lock: %v", err)
	}
}

// subscribed waits until n clients listen on the events channel.
func (f *fixture) subscribed(t *testing.T, n int) {
	t.Helper()
	testkit.Eventually(t, 10*time.Second, "subscriptions", func() bool {
		got, err := f.rdb.PubSubNumSub(t.Context(), f.keys.Events).Result()
		return err == nil && got[f.keys.Events] >= int64(n)
	})
}

func run(t *testing.T, s *cache.Store) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
}

func TestNewRejectsBadConfig(t *testing.T) {
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"})
	defer rdb.Close()
	tests := []struct {
		name string
		cfg  cache.Config
	}{
		{"negative margin", cache.Config{ServeMargin: -time.Second}},
		{"half keys", cache.Config{Keys: cache.Keys{Token: "a"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := cache.New(rdb, tt.cfg); err == nil {
				t.Fatal("got nil error, want one")
			}
		})
	}
	if _, err := cache.New(nil, cache.Config{}); err == nil {
		t.Fatal("nil client: got nil error, want one")
	}
	if _, err := cache.New(rdb, cache.Config{}); err != nil {
		t.Fatalf("zero config: %v", err)
	}
}

func TestKeysCarryOneHashTag(t *testing.T) {
	k := cache.KeysFor("liveness")
	want := cache.Keys{
		Token:     "tokenkeeper:{liveness}:token",
		Stamp:     "tokenkeeper:{liveness}:exp",
		Lock:      "tokenkeeper:{liveness}:lock",
		Events:    "tokenkeeper:{liveness}:events",
		Replicas:  "tokenkeeper:{liveness}:replicas",
		Fleet:     "tokenkeeper:replicas",
		Refreshes: "tokenkeeper:{liveness}:refreshes",
		Auth:      "tokenkeeper:{liveness}:auth",
		Devices:   "tokenkeeper:{liveness}:device:",
		DeviceKey: "tokenkeeper:{liveness}:device-key",
	}
	if k != want {
		t.Fatalf("got %+v, want %+v", k, want)
	}
}

func TestWriteIsFencedAndOrdered(t *testing.T) {
	f := newFixture(t)
	ctx := t.Context()
	s := f.store(t, cache.Config{ServeMargin: time.Second})
	f.lock(t, "holder-a")
	now := time.Now()

	if _, err := s.Write(ctx, cache.Write{LockValue: "holder-a", Value: "tok-1", Deadline: now.Add(10 * time.Minute)}); err != nil {
		t.Fatalf("first write: %v", err)
	}

	tests := []struct {
		name string
		w    cache.Write
		want error
	}{
		{"lost lock", cache.Write{LockValue: "holder-b", Value: "tok-2", Deadline: now.Add(20 * time.Minute)}, cache.ErrFenced},
		{"no lock value", cache.Write{Value: "tok-2", Deadline: now.Add(20 * time.Minute)}, cache.ErrFenced},
		{"expires earlier", cache.Write{LockValue: "holder-a", Value: "tok-2", Deadline: now.Add(5 * time.Minute)}, cache.ErrStale},
		{"empty", cache.Write{LockValue: "holder-a", Deadline: now.Add(20 * time.Minute)}, cache.ErrInvalid},
		{"control character", cache.Write{LockValue: "holder-a", Value: "tok\n2", Deadline: now.Add(20 * time.Minute)}, cache.ErrInvalid},
		{"space", cache.Write{LockValue: "holder-a", Value: "tok 2", Deadline: now.Add(20 * time.Minute)}, cache.ErrInvalid},
		{"too long", cache.Write{LockValue: "holder-a", Value: strings.Repeat("t", cache.MaxValueBytes+1), Deadline: now.Add(20 * time.Minute)}, cache.ErrInvalid},
		{"within margin", cache.Write{LockValue: "holder-a", Value: "tok-2", Deadline: now.Add(time.Second)}, cache.ErrInvalid},
		{"expired", cache.Write{LockValue: "holder-a", Value: "tok-2", Deadline: now.Add(-time.Second)}, cache.ErrInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := s.Write(ctx, tt.w)
			if !errors.Is(err, tt.want) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
			reader := f.store(t, cache.Config{ServeMargin: time.Second})
			if _, err := reader.Load(ctx); err != nil {
				t.Fatal(err)
			}
			got, ok := reader.Current()
			if !ok || got.Value != "tok-1" {
				t.Fatalf("stored token changed: got %q, %v; want tok-1", got.Value, ok)
			}
		})
	}

	if _, err := s.Write(ctx, cache.Write{LockValue: "holder-a", Value: "tok-3", Deadline: now.Add(30 * time.Minute)}); err != nil {
		t.Fatalf("later write: %v", err)
	}
	if got, _ := s.Current(); got.Value != "tok-3" {
		t.Fatalf("writer's copy: got %q, want tok-3", got.Value)
	}
}

// The write stores the token's expiry in Redis, on Redis's clock: its TTL
// is what the writer's clock left of the token's life, less what Redis's
// clock has seen pass since (the writer's clock does not move here).
// writeBudget is how long a write may take to be sent, the client's read
// timeout (redistest's clients wait a second): the stored life is cut by
// it, since go-redis may send the write again within it.
const writeBudget = time.Second

// got is what tok has left on clk.
func got(tok cache.Token, clk interface{ Now() time.Time }) time.Duration {
	return tok.Remaining(clk.Now())
}

func TestWriteSetsExpiryInRedis(t *testing.T) {
	f := newFixture(t)
	ctx := t.Context()
	clk := newClock()
	s := f.store(t, cache.Config{ServeMargin: time.Second, Clock: clk})
	f.lock(t, "holder")
	before := redisTime(t, f.rdb)
	if _, err := s.Write(ctx, cache.Write{LockValue: "holder", Value: "tok", Deadline: clk.Now().Add(90 * time.Second)}); err != nil {
		t.Fatal(err)
	}
	ttl, err := f.rdb.PTTL(ctx, f.keys.Token).Result()
	if err != nil {
		t.Fatal(err)
	}
	passed := redisTime(t, f.rdb).Sub(before)
	// Redis keeps times in whole milliseconds (TIME is cut to them in the
	// script, PTTL rounds): two of them on top of what passed, and the
	// write's budget (the client's read timeout), which a retried send
	// may take.
	if want := 90*time.Second - writeBudget; ttl > want || ttl < want-passed-2*time.Millisecond {
		t.Fatalf("PTTL: got %v, want 90s less the write's budget %v and the %v Redis saw pass", ttl, writeBudget, passed)
	}
}

func TestDeadlineFollowsRedisNotWallClock(t *testing.T) {
	f := newFixture(t)
	ctx := t.Context()
	base := newClock()
	writer := f.store(t, cache.Config{ServeMargin: time.Second, Clock: base})
	f.lock(t, "holder")
	written := redisTime(t, f.rdb)
	if _, err := writer.Write(ctx, cache.Write{LockValue: "holder", Value: "tok", Deadline: base.Now().Add(10 * time.Minute)}); err != nil {
		t.Fatal(err)
	}

	for _, skew := range []time.Duration{-3 * time.Hour, 0, 3 * time.Hour} {
		t.Run(skew.String(), func(t *testing.T) {
			clk := clocktest.New(base.Now().Add(skew))
			r := f.store(t, cache.Config{ServeMargin: time.Minute, Clock: clk})
			if _, err := r.Load(ctx); err != nil {
				t.Fatal(err)
			}
			passed := redisTime(t, f.rdb).Sub(written)
			tok, ok := r.Current()
			if !ok {
				t.Fatal("got no servable token right after load")
			}
			// What Redis had left of the 10 minutes (less the write's
			// budget), whatever the skew.
			if want := 10*time.Minute - writeBudget; got(tok, clk) > want || got(tok, clk) < want-passed-2*time.Millisecond {
				t.Fatalf("remaining: got %v, want 10m less the write's budget %v and the %v Redis saw pass, whatever the skew", got(tok, clk), writeBudget, passed)
			}
			left := tok.Remaining(clk.Now())
			clk.Advance(left - time.Minute - time.Millisecond)
			if _, ok := r.Current(); !ok {
				t.Fatal("stopped serving more than the margin before the deadline")
			}
			clk.Advance(time.Millisecond)
			if _, ok := r.Current(); ok {
				t.Fatal("still serving within the serve margin of the deadline")
			}
			if _, ok := r.Held(); !ok {
				t.Fatal("Held: dropped a token that has not expired")
			}
			clk.Advance(time.Minute)
			if _, ok := r.Held(); ok {
				t.Fatal("Held: kept a token past its deadline")
			}
		})
	}
}

func TestReloadNeverStretchesDeadline(t *testing.T) {
	f := newFixture(t)
	ctx := t.Context()
	s := f.store(t, cache.Config{ServeMargin: time.Second})
	f.lock(t, "holder")
	tok, err := s.Write(ctx, cache.Write{LockValue: "holder", Value: "tok", Deadline: time.Now().Add(time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if _, err := s.Load(ctx); err != nil {
			t.Fatal(err)
		}
	}
	got, _ := s.Held()
	if got.Deadline.After(tok.Deadline) {
		t.Fatalf("deadline moved later: got %v, want at most %v", got.Deadline, tok.Deadline)
	}
}

// Readers follow each write by its event alone: their clock never moves,
// so their poll never runs.
func TestReplicasFollowWrites(t *testing.T) {
	f := newFixture(t)
	ctx := t.Context()
	writer := f.store(t, cache.Config{ServeMargin: time.Second, Instance: "w"})
	still := newClock() // the readers' clock: their poll is never due
	var readers []*cache.Store
	for range 5 {
		r := f.store(t, cache.Config{ServeMargin: time.Second, Clock: still})
		run(t, r)
		readers = append(readers, r)
	}
	// Wait for the subscriptions: the first load of Run happens after it.
	f.subscribed(t, len(readers))
	f.lock(t, "holder")
	for i, v := range []string{"tok-1", "tok-2", "tok-3"} {
		if _, err := writer.Write(ctx, cache.Write{LockValue: "holder", Value: v, Deadline: time.Now().Add(time.Duration(i+1) * time.Minute)}); err != nil {
			t.Fatal(err)
		}
		for _, r := range readers {
			testkit.Eventually(t, 10*time.Second, "reader follows "+v, func() bool {
				got, ok := r.Current()
				return ok && got.Value == v
			})
		}
	}
}

// failingReads is a go-redis hook that fails the store's reads (its
// scripts and HGET) while on, as a Redis too slow to answer in time does,
// and counts the failures. The events subscription is left alone.
type failingReads struct {
	on    atomic.Bool
	fails atomic.Int64
}

func (h *failingReads) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *failingReads) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		name := cmd.Name()
		if h.on.Load() && (strings.HasPrefix(name, "eval") || name == "hget") {
			h.fails.Add(1)
			err := errors.New("i/o timeout (test)")
			cmd.SetErr(err)
			return err
		}
		return next(ctx, cmd)
	}
}

func (h *failingReads) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// An event that cannot be adopted asks for a read; when that read fails
// (a busy machine: the event came late, the read timed out), the store
// reads again within an eighth of its poll interval instead of serving
// the previous token for a whole interval.
func TestFailedEventReadIsRetriedSoon(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tl, srv := onFakeTime(t)
		ctx := t.Context()
		keys := cache.KeysFor("liveness")
		writer, err := cache.New(srv.Client(t), cache.Config{Keys: keys, ServeMargin: time.Second, Clock: tl.Clock, Logger: quiet})
		if err != nil {
			t.Fatal(err)
		}
		const poll = 8 * time.Second
		h := &failingReads{}
		h.on.Store(true)
		rdb := srv.Client(t)
		rdb.AddHook(h)
		reader, err := cache.New(rdb, cache.Config{Keys: keys, ServeMargin: time.Second, PollInterval: poll, Clock: tl.Clock, Logger: quiet})
		if err != nil {
			t.Fatal(err)
		}
		run(t, reader)
		tl.Settle() // subscribed; its first read failed, so it cannot date an event
		srv.Mini.Set(keys.Lock, "holder")
		before := h.fails.Load()
		if _, err := writer.Write(ctx, cache.Write{LockValue: "holder", Value: "tok-1", Deadline: tl.Now().Add(time.Minute)}); err != nil {
			t.Fatal(err)
		}
		tl.Settle()
		if h.fails.Load() == before {
			t.Fatal("the event asked for no read")
		}
		h.on.Store(false)
		tl.Advance(poll/8 - time.Millisecond)
		if _, ok := reader.Current(); ok {
			t.Fatal("the reader holds a token before it read again")
		}
		tl.Advance(time.Millisecond)
		if got, ok := reader.Current(); !ok || got.Value != "tok-1" {
			t.Fatalf("an eighth of the poll interval after the failed read, the reader holds %q (%v), want tok-1", got.Value, ok)
		}
	})
}

func TestKeepsServingWhenRedisLosesDataOrDies(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tl, srv := onFakeTime(t)
		link := srv.NewLink(t)
		keys := cache.KeysFor("liveness")
		ctx := t.Context()
		s, err := cache.New(link.Client(t), cache.Config{Keys: keys, ServeMargin: time.Second, Clock: tl.Clock, Logger: quiet})
		if err != nil {
			t.Fatal(err)
		}
		srv.Mini.Set(keys.Lock, "holder")
		if _, err := s.Write(ctx, cache.Write{LockValue: "holder", Value: "tok", Deadline: tl.Now().Add(time.Minute)}); err != nil {
			t.Fatal(err)
		}

		srv.Mini.FlushAll()
		inRedis, err := s.Load(ctx)
		if err != nil || inRedis {
			t.Fatalf("after FLUSHALL: got inRedis=%v err=%v, want false, nil", inRedis, err)
		}
		if got, ok := s.Current(); !ok || got.Value != "tok" {
			t.Fatalf("after FLUSHALL: got %q, %v; want the held token", got.Value, ok)
		}

		link.Refuse() // Redis is gone
		if _, err := s.Load(ctx); err == nil {
			t.Fatal("Load with Redis down: got nil error")
		}
		if got, ok := s.Current(); !ok || got.Value != "tok" {
			t.Fatalf("with Redis down: got %q, %v; want the held token", got.Value, ok)
		}
	})
}

// subscribedPair returns a store "a" that publishes and a subscription
// to the messages store "b", running, receives.
func subscribedPair(t *testing.T) (*fixture, *cache.Store, *cache.Subscription) {
	t.Helper()
	f := newFixture(t)
	a := f.store(t, cache.Config{Instance: "a"})
	b := f.store(t, cache.Config{Instance: "b"})
	run(t, b)
	f.subscribed(t, 1)
	sub := b.Subscribe()
	t.Cleanup(sub.Close)
	return f, a, sub
}

func TestControlMessagesReachSubscribers(t *testing.T) {
	f, a, sub := subscribedPair(t)
	ctx := t.Context()

	// A malformed payload is ignored, not fatal.
	if err := f.rdb.Publish(ctx, f.keys.Events, "{not json").Err(); err != nil {
		t.Fatal(err)
	}
	if err := a.Publish(ctx, cache.Message{Type: "ping", Body: json.RawMessage(`{"id":"r1"}`)}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-sub.Ready():
		m, ok := sub.Next()
		want := cache.Message{Type: "ping", From: "a", Body: json.RawMessage(`{"id":"r1"}`)}
		if !ok || !reflect.DeepEqual(m, want) {
			t.Fatalf("got %+v (%v), want %+v", m, ok, want)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no message within 5s")
	}
}

// A subscriber that does not read for a while loses nothing: a burst of
// control messages far larger than any buffer arrives whole and in order.
func TestSubscriberLosesNoMessage(t *testing.T) {
	_, a, sub := subscribedPair(t)
	ctx := t.Context()

	const n = 200
	for i := range n {
		if err := a.Publish(ctx, cache.Message{Type: "ping", Body: json.RawMessage(fmt.Sprintf(`{"id":"%d"}`, i))}); err != nil {
			t.Fatal(err)
		}
	}
	var got []string
	deadline := time.After(10 * time.Second)
	for len(got) < n {
		select {
		case <-sub.Ready():
			for m, ok := sub.Next(); ok; m, ok = sub.Next() {
				var body struct{ ID string }
				if err := json.Unmarshal(m.Body, &body); err != nil {
					t.Fatal(err)
				}
				got = append(got, body.ID)
			}
		case <-deadline:
			t.Fatalf("got %d of %d messages", len(got), n)
		}
	}
	for i, id := range got {
		if id != fmt.Sprint(i) {
			t.Fatalf("message %d is %q, want %q (order kept)", i, id, fmt.Sprint(i))
		}
	}
}

// A token key holding a foreign value (a plain string) is no token: reads
// say so by name instead of failing, and the lock holder's write replaces
// it, so the fleet does not stay down until someone deletes it.
func TestForeignValueIsOverwrittenUnderTheLock(t *testing.T) {
	f := newFixture(t)
	ctx := t.Context()
	s := f.store(t, cache.Config{Instance: "a"})
	if err := f.rdb.Set(ctx, f.keys.Token, "not-a-hash", time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	ok, err := s.Load(ctx)
	if ok || !errors.Is(err, cache.ErrWrongType) {
		t.Fatalf("Load of a foreign value: got %v, %v; want false, ErrWrongType", ok, err)
	}
	if s.InRedis() {
		t.Fatal("InRedis after a foreign value: got true, want false (so the leader writes)")
	}
	if _, err := s.Poll(ctx); !errors.Is(err, cache.ErrWrongType) {
		t.Fatalf("Poll of a foreign value: got %v, want ErrWrongType", err)
	}
	f.lock(t, "me")
	if _, err := s.Write(ctx, cache.Write{LockValue: "me", Value: "tok", Deadline: time.Now().Add(time.Hour)}); err != nil {
		t.Fatalf("Write over a foreign value: %v", err)
	}
	if ok, err := s.Load(ctx); !ok || err != nil {
		t.Fatalf("Load after the overwrite: got %v, %v; want true, nil", ok, err)
	}
	if got, ok := s.Current(); !ok || got.Value != "tok" {
		t.Fatalf("Current after the overwrite: got %q, %v", got.Value, ok)
	}
}

func TestFingerprintHidesTheToken(t *testing.T) {
	fp := cache.Fingerprint("secret-token-value")
	if fp == "" || fp == "secret-token-value" || len(fp) != len("sha256:")+12 {
		t.Fatalf("got %q, want sha256: and 12 hex digits", fp)
	}
	if cache.Fingerprint("") != "" {
		t.Fatal("fingerprint of nothing should be empty")
	}
}

// The log tells the truth about serving: a key that vanishes before its
// expiry is named as such, and when the held token passes the serve
// margin with Redis unreachable, one line marks the switch to not ready
// and later read failures no longer claim to serve the copy in memory.
func TestLogsSayWhenServingStops(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tl, srv := onFakeTime(t)
		keys := cache.KeysFor("liveness")
		link := srv.NewLink(t)
		var logs testkit.Buffer
		const poll = 2 * time.Second
		s, err := cache.New(link.Client(t), cache.Config{Keys: keys, ServeMargin: time.Second, PollInterval: poll, RestPollInterval: poll,
			Clock: tl.Clock, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
		if err != nil {
			t.Fatal(err)
		}
		srv.Mini.Set(keys.Lock, "holder")
		tok, err := s.Write(t.Context(), cache.Write{LockValue: "holder", Value: "tok", Deadline: tl.Now().Add(time.Minute)})
		if err != nil {
			t.Fatal(err)
		}
		run(t, s)
		says := func(what string) bool { return strings.Contains(logs.String(), what) }
		tl.Settle()
		if !says("ready: holding a servable token") {
			t.Fatalf("no ready line once running; logs:\n%s", logs.String())
		}

		srv.Mini.FlushAll()
		tl.Advance(poll)
		if !says("the token vanished from Redis before its expiry") {
			t.Fatalf("the loss is not named after a poll; logs:\n%s", logs.String())
		}

		link.Refuse() // Redis is gone
		tl.Advance(poll)
		if !says("serving the copy in memory") {
			t.Fatalf("a failed read does not say the copy in memory is served; logs:\n%s", logs.String())
		}
		if says("not ready") {
			t.Fatalf("not ready before the serve margin; logs:\n%s", logs.String())
		}
		// The first poll past the serve margin (1s before the deadline).
		tl.Advance(tok.Deadline.Add(-time.Second).Sub(tl.Now()) + poll)
		if !says("not ready: no servable token held") || !says("holds no servable token: not serving") {
			t.Fatalf("no switch to not ready past the serve margin; logs:\n%s", logs.String())
		}
		after := logs.String()[strings.Index(logs.String(), "not ready: no servable token held"):]
		if strings.Contains(after, "serving the copy in memory") {
			t.Error("after the switch to not ready, the log still claims to serve the copy in memory")
		}
		if _, ok := s.Current(); ok {
			t.Error("Current past the serve margin: got a token")
		}
	})
}

// heldAnswer is a go-redis hook that, once armed, holds back the answer
// of the next script that succeeds until released: the command has run in
// Redis, its answer is late.
type heldAnswer struct {
	armed   bool
	held    chan struct{} // closed once an answer is held
	release chan struct{}
}

func (h *heldAnswer) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *heldAnswer) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		if h.armed && err == nil && strings.HasPrefix(cmd.Name(), "eval") {
			h.armed = false
			close(h.held)
			<-h.release
		}
		return err
	}
}

func (h *heldAnswer) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// A read whose answer arrives after a newer token was written must not
// take the replica back to the token it replaced: with Redis slow, reads
// and writes overlap all the time.
func TestLateReadNeverTakesTheTokenBack(t *testing.T) {
	f := newFixture(t)
	ctx := t.Context()
	f.lock(t, "holder")
	h := &heldAnswer{held: make(chan struct{}), release: make(chan struct{})}
	rdb := f.srv.Client(t)
	rdb.AddHook(h)
	s, err := cache.New(rdb, cache.Config{ServeMargin: time.Second, Keys: f.keys, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	if _, err := s.Write(ctx, cache.Write{LockValue: "holder", Value: "tok-1", Deadline: now.Add(time.Minute)}); err != nil {
		t.Fatal(err)
	}

	h.armed = true
	loaded := make(chan error, 1)
	go func() {
		_, err := s.Load(ctx)
		loaded <- err
	}()
	<-h.held // the read has seen tok-1; its answer is on its way
	if _, err := s.Write(ctx, cache.Write{LockValue: "holder", Value: "tok-2", Deadline: now.Add(2 * time.Minute)}); err != nil {
		t.Fatal(err)
	}
	close(h.release)
	if err := <-loaded; err != nil {
		t.Fatal(err)
	}
	if got, ok := s.Current(); !ok || got.Value != "tok-2" {
		t.Fatalf("after the late read: serving %q (%v), want tok-2", got.Value, ok)
	}
	// A read sent after the write sees tok-2 and keeps it.
	if _, err := s.Load(ctx); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.Current(); got.Value != "tok-2" {
		t.Fatalf("after a fresh read: serving %q, want tok-2", got.Value)
	}
}

// TestSlowWriteNeverStretchesTheToken: Redis starts a token's time to live
// when the write runs, which a slow link delays; the store cuts the
// stored life by the round trips it has seen, so that a replica reading
// the token never dates it later than it expires.
func TestSlowWriteNeverStretchesTheToken(t *testing.T) {
	srv := redistest.New(t)
	proxy := redistest.NewProxy(t, srv.Addr)
	opt := *srv.Options
	opt.Addr = proxy.Addr
	rdb := redis.NewClient(&opt)
	defer rdb.Close()
	direct := srv.Client(t)
	ctx := t.Context()
	keys := cache.KeysFor(redistest.Name(t))
	s, err := cache.New(rdb, cache.Config{Keys: keys, ServeMargin: time.Second, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	if err := direct.Set(ctx, keys.Lock, "holder", time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	const oneWay = 150 * time.Millisecond
	proxy.SetRequestLatency(oneWay)
	if _, err := s.Load(ctx); err != nil { // a round trip seen: the link is slow
		t.Fatal(err)
	}
	deadline := time.Now().Add(time.Minute)
	if _, err := s.Write(ctx, cache.Write{LockValue: "holder", Value: "tok-1", Deadline: deadline}); err != nil {
		t.Fatal(err)
	}
	pttl, err := direct.PTTL(ctx, keys.Token).Result()
	if err != nil {
		t.Fatal(err)
	}
	if stored := time.Now().Add(pttl); stored.After(deadline) {
		t.Fatalf("Redis dates the token %v later than it expires", stored.Sub(deadline).Round(time.Millisecond))
	}
}
