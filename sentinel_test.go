package tokenkeeper_test

import (
	"context"
	"log/slog"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokenkeeper/tokenkeeper"
	"github.com/tokenkeeper/tokenkeeper/internal/keepertest"
	"github.com/tokenkeeper/tokenkeeper/internal/redistest"
	"github.com/tokenkeeper/tokenkeeper/internal/testkit"
)

// In Sentinel mode, when the sentinels name another master, the events
// subscribe again within a poll interval, instead of staying on the old
// master's connection until its health check gives up.
func TestSentinelSwitchResubscribes(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tl := testkit.NewTimeline(t)
		srv := redistest.NewPiped(t)
		tl.Clock.OnAdvance(srv.Mini.SetTime)
		var master atomic.Value
		master.Store("run-id-a")
		reg := testkit.NewMetrics()
		const poll = 2 * time.Second
		rdb := redis.NewClient(srv.Options)
		defer rdb.Close()
		k, err := tokenkeeper.New(tokenkeeper.Config{
			Redis: rdb, RedisMode: tokenkeeper.RedisSentinel, Instance: "r0", Clock: tl.Clock,
			SentinelMaster: func(context.Context) (string, error) { return master.Load().(string), nil },
			Source:         &hourSource{name: "liveness"}, PollInterval: poll,
			Logger: slog.New(slog.DiscardHandler), Registerer: reg,
			HTTP: tokenkeeper.HTTPConfig{ReaderKeys: []string{keepertest.ReaderKey}},
		})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- k.Run(ctx) }()
		defer func() { cancel(); <-done }()
		reconnects := func() float64 {
			v, err := reg.Value("tokenkeeper_event_subscription_reconnects_total")
			if err != nil {
				t.Fatal(err)
			}
			return v
		}
		tl.Advance(3 * poll) // subscribed, and the sentinels' master seen
		before := reconnects()

		master.Store("run-id-b")
		tl.Advance(poll)
		tl.Settle()
		if got := reconnects(); got != before+1 {
			t.Fatalf("subscriptions made again after the sentinels named a new master: %v, want 1", got-before)
		}
		tl.Advance(3 * poll)
		if got := reconnects(); got != before+1 {
			t.Errorf("subscriptions made again while the master stayed the same: %v, want none", got-before-1)
		}
	})
}
