package tokenkeeper_test

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokenkeeper/tokenkeeper"
	"github.com/tokenkeeper/tokenkeeper/cache"
	"github.com/tokenkeeper/tokenkeeper/internal/keepertest"
	"github.com/tokenkeeper/tokenkeeper/internal/redistest"
	"github.com/tokenkeeper/tokenkeeper/refresher"
)

// hourSource issues tokens of an hour on the bubble's clock.
type hourSource struct {
	name  string
	calls int
}

func (s *hourSource) Token(context.Context) (tokenkeeper.UpstreamToken, error) {
	s.calls++
	return tokenkeeper.UpstreamToken{Value: fmt.Sprintf("%s-%d", s.name, s.calls), Lifetime: time.Hour, Sent: time.Now()}, nil
}

// catalogReplica is a Keeper of names over a link of srv, each token with a
// source of its own (the sources' counts are not what these tests check),
// running until stop or the test's end.
type catalogReplica struct {
	k    *tokenkeeper.Keeper
	link *redistest.Link
	stop func()
}

// startCatalogReplica starts instance over srv with the given lock TTL,
// hooks added to its Redis client.
func startCatalogReplica(t *testing.T, srv *redistest.Server, instance string, names []string, lockTTL time.Duration, hooks ...redis.Hook) *catalogReplica {
	t.Helper()
	link := srv.NewLink(t)
	opt := link.Options()
	refresher.TuneRedis(opt, lockTTL)
	rdb := redis.NewClient(opt)
	for _, h := range hooks {
		rdb.AddHook(h)
	}
	t.Cleanup(func() { rdb.Close() })
	var tokens []tokenkeeper.TokenConfig
	for _, n := range names {
		tokens = append(tokens, tokenkeeper.TokenConfig{Name: n, Source: &hourSource{name: n}})
	}
	k, err := tokenkeeper.New(tokenkeeper.Config{
		Redis: rdb, Instance: instance, Tokens: tokens, LockTTL: lockTTL,
		Logger: slog.New(slog.DiscardHandler),
		HTTP:   tokenkeeper.HTTPConfig{ReaderKeys: []string{keepertest.ReaderKey}},
	})
	if err != nil {
		t.Fatal(err)
	}
	return &catalogReplica{k: k, link: link, stop: keepertest.Run(t, instance, k)}
}

// TestCatalogFailoverWithinLockTTL kills (no release) a replica leading
// tokens of a catalog, at the default lock TTL, on fake time: every token
// has a leader again within the lock TTL plus a second, the README's
// failover promise, as with a single token. Before that, leadership of the
// three tokens spreads over the three replicas, whichever took them first.
func TestCatalogFailoverWithinLockTTL(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const lockTTL = 10 * time.Second // the default
		srv := redistest.NewPiped(t)
		names := []string{"token-a", "token-b", "token-c"}
		var rs []*catalogReplica
		for i := range 3 {
			rs = append(rs, startCatalogReplica(t, srv, fmt.Sprintf("r%d", i), names, lockTTL))
		}
		leaders := func(of []*catalogReplica) map[string]int {
			out := map[string]int{}
			for i, r := range of {
				for _, n := range names {
					if r.k.Leads(n) {
						out[n] = i
					}
				}
			}
			return out
		}
		spread := func() bool {
			l := leaders(rs)
			seen := map[int]bool{}
			for _, i := range l {
				seen[i] = true
			}
			return len(l) == len(names) && len(seen) == len(rs)
		}
		start := time.Now()
		for !spread() {
			if time.Since(start) > 5*time.Minute {
				t.Fatalf("leadership not spread 5m after start: %v", leaders(rs))
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Logf("one token led by each replica %v after start", time.Since(start))

		// r0 dies: its link is cut before it stops, so it releases nothing.
		victim := rs[0]
		victim.link.Cut()
		victim.stop()
		killed := time.Now()
		rest := rs[1:]
		for len(leaders(rest)) < len(names) {
			if time.Since(killed) > 5*time.Minute {
				t.Fatalf("tokens led 5m after the kill: %v", leaders(rest))
			}
			time.Sleep(10 * time.Millisecond)
		}
		took := time.Since(killed)
		t.Logf("every token led again %v after the kill", took)
		if limit := lockTTL + time.Second; took > limit {
			t.Errorf("every token led again %v after the leader died, want within the lock TTL plus a second (%v)", took, limit)
		}
	})
}

// viewReads counts the reads of a token's fleet view (a script on its
// replicas hash, tokenkeeper:{NAME}:replicas) a client sends: at rest,
// only the balancer sends them (a replica writes its own state there only
// when it changes). Its hook is redistest.OnCommand(h.count).
type viewReads struct{ n atomic.Int64 }

func (h *viewReads) count(cmd redis.Cmder) {
	args := cmd.Args()
	if name := cmd.Name(); (name == "evalsha" || name == "eval") && len(args) > 3 {
		if key, _ := args[3].(string); strings.HasSuffix(key, "}:replicas") {
			h.n.Add(1)
		}
	}
}

// TestLeadershipSpreadsInRounds starts a replica alone with a catalog of
// twelve tokens, so that it takes every lock, then three more: within
// four balancing rounds (a round is three lock TTLs: balance.go) no
// replica leads more than one token more than another, where handing one
// token over per round would take nine. Every replica serves every token
// throughout. Then, at rest, a replica reads the fleet views at most once
// every balanceIdleMax (30) lock TTLs, and only those of the tokens it
// leads.
//
// Beside a replica of an earlier version, whose beat does not say how many
// tokens it leads, leadership spreads the same, counted from every token's
// view, which a look then reads.
func TestLeadershipSpreadsInRounds(t *testing.T) {
	t.Run("every beat says", func(t *testing.T) { testLeadershipSpreads(t, false) })
	t.Run("beside an earlier version", func(t *testing.T) { testLeadershipSpreads(t, true) })
}

func testLeadershipSpreads(t *testing.T, earlier bool) {
	synctest.Test(t, func(t *testing.T) {
		const lockTTL = 10 * time.Second
		srv := redistest.NewPiped(t)
		if earlier {
			// An earlier version's beat: no count of the tokens it leads.
			rdb := redis.NewClient(srv.NewLink(t).Options())
			t.Cleanup(func() { rdb.Close() })
			ctx, cancel := context.WithCancel(context.Background())
			t.Cleanup(cancel)
			go refresher.Beat(ctx, rdb, cache.FleetKey, refresher.BeatConfig{Instance: "earlier", Logger: slog.New(slog.DiscardHandler)})
		}
		var names []string
		for i := range 12 {
			names = append(names, fmt.Sprintf("token-%02d", i))
		}
		var keepers []*tokenkeeper.Keeper
		var reads []*viewReads
		start := func(i int) {
			h := &viewReads{}
			reads = append(reads, h)
			keepers = append(keepers, startCatalogReplica(t, srv, fmt.Sprintf("r%d", i), names, lockTTL, redistest.OnCommand(h.count)).k)
		}
		counts := func() []int {
			c := make([]int, len(keepers))
			for i, k := range keepers {
				for _, n := range names {
					if k.Leads(n) {
						c[i]++
					}
				}
			}
			return c
		}
		start(0)
		for counts()[0] < len(names) {
			time.Sleep(100 * time.Millisecond)
		}
		for i := 1; i < 4; i++ {
			start(i)
		}
		began := time.Now()
		for {
			time.Sleep(100 * time.Millisecond)
			for i, k := range keepers {
				for _, n := range names {
					if _, ok := k.Current(n); !ok && time.Since(began) > lockTTL {
						t.Fatalf("replica %d does not serve %s %v after the others started", i, n, time.Since(began))
					}
				}
			}
			c := counts()
			total := 0
			for _, n := range c {
				total += n
			}
			if total == len(names) && slices.Max(c)-slices.Min(c) <= 1 {
				t.Logf("leadership %v, %v after three replicas joined one leading every token", c, time.Since(began))
				break
			}
			if limit := 4 * 3 * lockTTL; time.Since(began) > limit {
				t.Fatalf("leadership %v, %v after three replicas joined one leading every token: not spread within four rounds (%v)", c, time.Since(began), limit)
			}
		}

		// At rest: past the balancer's first looks (1, 2, 4, ... lock
		// TTLs), each replica reads the views of the tokens it leads (the
		// beats say who leads how many), not all twelve, at most once per
		// 30 lock TTLs, and once more for the window's edge.
		spread := counts()
		time.Sleep(120 * lockTTL)
		const window = 60 * lockTTL
		before := make([]int64, len(reads))
		for i, h := range reads {
			before[i] = h.n.Load()
		}
		time.Sleep(window)
		if c := counts(); !slices.Equal(c, spread) {
			t.Fatalf("leadership moved at rest: %v, then %v", spread, c)
		}
		var most int64 // the most reads of a replica at rest
		for i, h := range reads {
			n := h.n.Load() - before[i]
			most = max(most, n)
			if earlier {
				// Each look reads every token's view, once in 30 lock TTLs.
				if limit := int64(len(names) * int(window/(30*lockTTL)+1)); n > limit {
					t.Errorf("replica %d read the fleet view of a token %d times in %v at rest, want at most %d", i, n, window, limit)
				}
				continue
			}
			if limit := int64(spread[i] * int(window/(30*lockTTL)+1)); n > limit {
				t.Errorf("replica %d, leading %d tokens, read the fleet view of a token %d times in %v at rest, want at most %d", i, spread[i], n, window, limit)
			}
		}
		// Every replica leads three and looks at least once in the window:
		// beside an earlier version, a look reads all twelve views to count.
		if earlier && most < int64(len(names)) {
			t.Errorf("beside an earlier version's beat, no replica read every token's view in %v at rest (most: %d reads): the counts did not come from the views", window, most)
		}
	})
}
