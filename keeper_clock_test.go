package tokenkeeper_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokenkeeper/tokenkeeper"
	"github.com/tokenkeeper/tokenkeeper/clock"
	"github.com/tokenkeeper/tokenkeeper/internal/keepertest"
	"github.com/tokenkeeper/tokenkeeper/internal/redistest"
	"github.com/tokenkeeper/tokenkeeper/internal/testkit"
	"github.com/tokenkeeper/tokenkeeper/refresher"
)

// skewedClock is a replica's own clock: off from the fleet's fake time by
// a fixed offset, with the same timers.
type skewedClock struct {
	clock.Clock
	off time.Duration
}

func (s skewedClock) Now() time.Time { return s.Clock.Now().Add(s.off) }

// hourTokens hands out hour-long tokens, each dated on the clock of the
// replica that asks, and counts the calls of the whole fleet.
type hourTokens struct {
	mu    sync.Mutex
	calls int
}

func (h *hourTokens) on(clk clock.Clock) tokenkeeper.Source { return skewedSource{h, clk} }

type skewedSource struct {
	h   *hourTokens
	clk clock.Clock
}

func (s skewedSource) Token(context.Context) (tokenkeeper.UpstreamToken, error) {
	s.h.mu.Lock()
	defer s.h.mu.Unlock()
	s.h.calls++
	return tokenkeeper.UpstreamToken{Value: fmt.Sprintf("token-%d", s.h.calls), Lifetime: time.Hour, Sent: s.clk.Now()}, nil
}

func (h *hourTokens) count() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.calls
}

// Two Keepers run on fake time, each on its own clock: the leader's an
// hour behind the fleet's, the follower's on it. Everything they time
// (the lease and its renewals, the refresh window, the poll, expires_in)
// follows their Clock, so hours of tokens pass in moments, one fetch per
// token, and the skewed leader keeps its lock throughout.
func TestKeeperRunsOnItsClock(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tl := testkit.NewTimeline(t)
		srv := redistest.NewPiped(t)
		tl.Clock.OnAdvance(srv.Mini.SetTime)
		tokens := &hourTokens{}
		start := func(name string, clk clock.Clock) *tokenkeeper.Keeper {
			t.Helper()
			opt := *srv.Options
			refresher.TuneRedis(&opt, 10*time.Second)
			rdb := redis.NewClient(&opt)
			k, err := tokenkeeper.New(tokenkeeper.Config{
				Redis: rdb, Instance: name, Source: tokens.on(clk), Clock: clk, Logger: slog.New(slog.DiscardHandler),
				HTTP: tokenkeeper.HTTPConfig{ReaderKeys: []string{keepertest.ReaderKey}},
			})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- k.Run(ctx) }()
			t.Cleanup(func() {
				cancel()
				if err := <-done; err != nil {
					t.Errorf("%s: Run: %v", name, err)
				}
				rdb.Close()
			})
			return k
		}

		behind := skewedClock{tl.Clock, -time.Hour}
		leader := start("behind", behind)
		tl.Until("the first replica leads and serves", time.Minute, func() bool {
			_, ok := leader.Current(tokenkeeper.Name)
			return ok && leader.IsLeader()
		})
		fetched := tl.Now()
		follower := start("on-time", tl.Clock)
		tl.Until("the second replica serves the token", 10*time.Second, func() bool {
			_, ok := follower.Current(tokenkeeper.Name)
			return ok
		})

		// The advisory window opens 15m before expiry, up to 1.5m earlier
		// at random: no fetch before 43m30s.
		tl.Advance(fetched.Add(43 * time.Minute).Sub(tl.Now()))
		if got := tokens.count(); got != 1 {
			t.Fatalf("fetches within the first token's 43m: %d, want 1", got)
		}
		for _, k := range []*tokenkeeper.Keeper{leader, follower} {
			// 43m of the hour gone, on each replica's own clock, less the
			// write's budget (the Redis client's read timeout, a quarter of
			// the lock TTL), by which the stored life is cut since go-redis
			// may send the write again within it.
			budget := int64(refresher.RedisTimeout(10 * time.Second).Seconds())
			if got, want := expiresIn(t, k), int64((17 * time.Minute).Seconds()); got < want-1-budget || got > want {
				t.Errorf("%s: expires_in %d, want %d", k.Instance(), got, want)
			}
		}
		for n := 2; n <= 4; n++ {
			want := fmt.Sprintf("token-%d", n)
			tl.Until("both replicas serve "+want, time.Hour, func() bool {
				a, _ := leader.Current(tokenkeeper.Name)
				b, _ := follower.Current(tokenkeeper.Name)
				return a.Value == want && b.Value == want
			})
			if !leader.IsLeader() || follower.IsLeader() {
				t.Fatalf("after %s: leads: behind %v, on-time %v; want the skewed replica alone", want, leader.IsLeader(), follower.IsLeader())
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			tok, err := follower.Token(ctx, tokenkeeper.Name)
			cancel()
			if err != nil || tok.Value != want {
				t.Fatalf("Token: %q, %v; want %q", tok.Value, err, want)
			}
		}
		if got, elapsed := tokens.count(), tl.Now().Sub(fetched); got != 4 || elapsed > 3*time.Hour {
			t.Errorf("%d fetches in %v of fake time, want 4 within 3h", got, elapsed)
		}
	})
}

// expiresIn is the expires_in k's HTTP face answers with.
func expiresIn(t *testing.T, k *tokenkeeper.Keeper) int64 {
	t.Helper()
	req := httptest.NewRequest(http.MethodGet, "/v1/tokens/"+tokenkeeper.Name, nil)
	req.Header.Set("Authorization", "Bearer "+keepertest.ReaderKey)
	rec := httptest.NewRecorder()
	k.Handler().ServeHTTP(rec, req)
	var a struct {
		ExpiresIn int64 `json:"expires_in"`
	}
	if rec.Code != http.StatusOK {
		t.Fatalf("%s: GET: %d %s", k.Instance(), rec.Code, rec.Body)
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &a); err != nil {
		t.Fatal(err)
	}
	return a.ExpiresIn
}
