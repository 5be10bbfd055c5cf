//go:build realredis

package refresher_test

import (
	"context"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokenkeeper/tokenkeeper/cache"
	"github.com/tokenkeeper/tokenkeeper/internal/redistest"
	"github.com/tokenkeeper/tokenkeeper/internal/testkit"
	"github.com/tokenkeeper/tokenkeeper/refresher"
)

// master is where the replicas' clients connect: the address a failover
// client would get from Sentinel. A failover moves it and cuts the
// connections to the old master.
type master struct {
	addr atomic.Pointer[string]
}

func (m *master) set(addr string) { m.addr.Store(&addr) }

func (m *master) dial(ctx context.Context, network, _ string) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, network, *m.addr.Load())
}

// startReplicated runs a replica whose client follows m, with rep's wait
// and the master watched, as in Sentinel mode.
func startReplicated(t *testing.T, name string, m *master, keys cache.Keys, src refresher.Source, tm timings, rep cache.Replication) *replica {
	t.Helper()
	return startWatched(t, name, m, keys, src, tm, rep, nil)
}

// startWatched is startReplicated with authority as the Sentinel's word on
// the master (refresher.Config.MasterAuthority).
func startWatched(t *testing.T, name string, m *master, keys cache.Keys, src refresher.Source, tm timings, rep cache.Replication,
	authority func(context.Context) (string, error)) *replica {
	t.Helper()
	opt := &redis.Options{Addr: "master", Dialer: m.dial}
	return startRealWith(t, testLog(t), name, opt, keys, src, tm, func(s *cache.Config, r *refresher.Config) {
		s.Replication = rep
		r.Replication, r.WatchMaster, r.MasterAuthority = rep, true, authority
	})
}

// TestFailoverToAReplicaThatWaited runs two replicas on a master with one
// Redis replica, waiting for it after the election and each write. The
// replica holds the lock and the token as soon as the leader acts on them;
// then it is promoted, as Sentinel would, and the clients move to it: the
// leader sees a new run id at its next renewal and steps down at once,
// releasing the lock it still holds there, and a leader is elected again
// without an upstream call, while both replicas serve throughout.
func TestFailoverToAReplicaThatWaited(t *testing.T) {
	primary := redistest.StartServer(t)
	secondary := redistest.StartServer(t)
	ctx := t.Context()
	host, port, _ := net.SplitHostPort(primary.Addr)
	sc := redis.NewClient(&redis.Options{Addr: secondary.Addr})
	defer sc.Close()
	if err := sc.ReplicaOf(ctx, host, port).Err(); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 10*time.Second, "replication link up", func() bool {
		info, _ := sc.Info(ctx, "replication").Result()
		return containsLine(info, "master_link_status:up")
	})

	var m master
	m.set(primary.Addr)
	keys := cache.KeysFor(redistest.Name(t))
	tm := timings{lifetime: time.Minute, margin: 300 * time.Millisecond, before: 10 * time.Second, lockTTL: time.Second}
	src := &source{lifetime: tm.lifetime}
	rep := cache.Replication{Replicas: 1, Timeout: 200 * time.Millisecond}
	rs := []*replica{startReplicated(t, "a", &m, keys, src, tm, rep), startReplicated(t, "b", &m, keys, src, tm, rep)}
	leader := oneLeader(t, rs, 5*time.Second)
	testkit.Eventually(t, 5*time.Second, "both hold the token", func() bool {
		_, a := rs[0].store.Current()
		_, b := rs[1].store.Current()
		return a && b
	})
	held, _ := leader.store.Current()
	if got := sc.HGet(ctx, keys.Token, "v").Val(); got != held.Value {
		t.Fatalf("the Redis replica holds %q, want the token the leader wrote", cache.Fingerprint(got))
	}
	if got := anomalies(t, rs, "replication_short"); got != 0 {
		t.Fatalf("replication_short anomalies = %v, want 0 with the replica up", got)
	}

	// The failover: the replica becomes the master and the clients move.
	if err := sc.ReplicaOf(ctx, "no", "one").Err(); err != nil {
		t.Fatal(err)
	}
	m.set(secondary.Addr)
	pc := redis.NewClient(&redis.Options{Addr: primary.Addr})
	defer pc.Close()
	if err := pc.Do(ctx, "CLIENT", "KILL", "TYPE", "normal").Err(); err != nil {
		t.Fatal(err)
	}
	if err := pc.Do(ctx, "CLIENT", "KILL", "TYPE", "pubsub").Err(); err != nil {
		t.Fatal(err)
	}
	movedAt := time.Now()
	testkit.Eventually(t, 5*time.Second, "the leader steps down", func() bool {
		return value(t, leader.reg, "tokenkeeper_leadership_changes_total", "change", "master_changed") == 1
	})
	steppedDown := time.Since(movedAt)
	again := oneLeader(t, rs, 5*time.Second)
	t.Logf("stepped down %v after the move; %s leads again after %v", steppedDown.Round(time.Millisecond), again.name, time.Since(movedAt).Round(time.Millisecond))
	for _, r := range rs {
		if got, ok := r.store.Current(); !ok || got.Value != held.Value {
			t.Errorf("%s serves %s (%v), want the token written before the failover", r.name, got.Fingerprint(), ok)
		}
	}
	if got := len(src.Calls()); got != 1 {
		t.Errorf("upstream calls: %d, want 1 (the failover needs none)", got)
	}

	// Without a replica to wait for, writes stand and the short wait is
	// counted.
	if _, err := again.ref.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	// The fleet may take the token from Redis before the writer's wait
	// ends: the count comes when it does.
	testkit.Eventually(t, 5*time.Second, "the short wait counted", func() bool {
		return anomalies(t, rs, "replication_short") >= 1
	})
}

// containsLine reports whether info (an INFO answer) has the line line.
func containsLine(info, line string) bool {
	for l := range strings.Lines(info) {
		if strings.TrimRight(l, "\r\n") == line {
			return true
		}
	}
	return false
}

// TestNoLeaderOnAMasterSentinelDisowns: after a partition heals, the old
// master takes writes until Sentinel demotes it. Replicas whose client
// still reaches it must not lead there: one that wins its lock releases it
// at once, and a leader whose server Sentinel stops naming steps down at
// its next renewal.
func TestNoLeaderOnAMasterSentinelDisowns(t *testing.T) {
	old := redistest.StartServer(t)
	other := redistest.StartServer(t)
	ctx := t.Context()
	runID := func(addr string) string {
		c := redis.NewClient(&redis.Options{Addr: addr})
		defer c.Close()
		info, err := c.Info(ctx, "server").Result()
		if err != nil {
			t.Fatal(err)
		}
		for l := range strings.Lines(info) {
			if id, ok := strings.CutPrefix(strings.TrimRight(l, "\r\n"), "run_id:"); ok {
				return id
			}
		}
		t.Fatal("no run_id")
		return ""
	}
	var named atomic.Pointer[string]
	disowned := runID(other.Addr)
	named.Store(&disowned)
	authority := func(context.Context) (string, error) { return *named.Load(), nil }

	var m master
	m.set(old.Addr)
	keys := cache.KeysFor(redistest.Name(t))
	tm := timings{lifetime: time.Minute, margin: 300 * time.Millisecond, before: 10 * time.Second, lockTTL: time.Second}
	src := &source{lifetime: tm.lifetime}
	rs := []*replica{startWatched(t, "a", &m, keys, src, tm, cache.Replication{}, authority),
		startWatched(t, "b", &m, keys, src, tm, cache.Replication{}, authority)}
	// Several election periods: nobody leads, nothing is fetched.
	for range 20 {
		if ls := leaders(rs); len(ls) > 0 {
			t.Fatalf("%s leads on a master Sentinel does not name", ls[0].name)
		}
		time.Sleep(50 * time.Millisecond) // watches real elections on a real server
	}
	if n := len(src.Calls()); n != 0 {
		t.Fatalf("upstream calls: %d, want none while no replica may lead", n)
	}

	// Sentinel names it: a leader, a token.
	owned := runID(old.Addr)
	named.Store(&owned)
	leader := oneLeader(t, rs, 5*time.Second)
	testkit.Eventually(t, 5*time.Second, "a token", func() bool { _, ok := leader.store.Current(); return ok })

	// And disowns it again: the leader steps down at its next renewal.
	named.Store(&disowned)
	testkit.Eventually(t, 5*time.Second, "the leader steps down", func() bool {
		return value(t, leader.reg, "tokenkeeper_leadership_changes_total", "change", "master_changed") == 1
	})
	if got := len(src.Calls()); got != 1 {
		t.Errorf("upstream calls: %d, want 1", got)
	}
}
