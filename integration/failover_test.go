//go:build integration

package integration

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	tcexec "github.com/testcontainers/testcontainers-go/exec"
)

// The failover scenarios: the fleet on Redis Sentinel and Redis Cluster
// while Redis itself fails over, and on a single Redis restored from an
// older snapshot. Each asserts the invariants of check, and
// checkNeverBackwards (invariant 6: no replica goes back to an older token
// or generation), and prints the figures FIGURE failover, leader_gap,
// upstream_extra_fetches and gap_fleet_max / gap_replica_max (the longest
// read gaps).

// failoverSlack is what a leader may take after the lock it held on a lost
// master could have expired: a retry step of the election and the watch's
// polling.
const failoverSlack = 2 * time.Second

// resubscribe is how long after a master is lost a replica's events
// subscription may still sit on a dead connection: its health check pings
// every 5 s and gives up after two silent intervals. Polling covers the
// gap meanwhile (a lag of one poll interval).
const resubscribe = 10 * time.Second

// slowFailover is the window in which replicas may answer 503 because
// Redis failed over more slowly than old's serve deadline allowed: no
// token can be refreshed without a master. Empty when the fleet led again
// in time.
func slowFailover(f *fleet, old fakeToken, leaderAt time.Time) []window {
	deadline := f.serveDeadline(old)
	if leaderAt.Before(deadline.Add(-f.tm.Poll)) {
		return nil
	}
	f.figure("failover_outlasted_serve_deadline", leaderAt.Sub(deadline))
	return []window{{from: deadline.Add(-clockSlack), to: leaderAt.Add(resubscribe), why: "failover outlasted the serve deadline"}}
}

// Failover 1. Sentinel in steady state: several cycles, one upstream call
// each, every token served by every replica.
func TestSentinelSteady(t *testing.T) {
	t.Parallel()
	f := newFleet(t, 3, fast, withSentinel(0))
	const cycles = 3
	last := f.token(cycles + 1)
	f.waitServing(last.Token, f.replicas, 5*time.Second)
	res := f.finish()
	f.check(res, expect{})
	f.checkNeverBackwards(res)
	if got, want := res.stats.LivenessCalls, cycles+1; got != want {
		t.Errorf("upstream liveness calls = %d, want %d (one per cycle)", got, want)
	}
	// WAIT for one replica: the newest token is on a replica too.
	for _, r := range f.topo.replicas {
		var v string
		_ = f.on(r, func(c *redis.Client, ctx context.Context) error {
			m, err := c.HGetAll(ctx, tokenKey).Result()
			v = fmt.Sprint(m)
			return err
		})
		f.figure("replica_holds_newest_"+r.name, strings.Contains(v, last.Token))
	}
}

// Failover 2. Sentinel, the master SIGKILLed in steady state: a replica is
// promoted, the fleet has a leader again within the lock TTL after the
// failover, no read fails, and the next refresh is the only fetch.
func TestSentinelMasterKilled(t *testing.T) {
	t.Parallel()
	f := newFleet(t, 3, fast, withSentinel(0))
	t1 := f.token(1)
	f.currentLeader()
	sleepUntil(t1.IssuedAt.Add(3 * time.Second))
	old, err := f.sentinelMaster()
	f.must(err, "the sentinels' master")

	killAt := time.Now()
	f.killNode(f.topo.master)
	_, promoted := f.waitSentinelFailover(old, 20*time.Second)
	failover := promoted.Sub(killAt)
	f.figure("failover", failover)
	_, leaderAt := f.waitLeaderAgain(promoted, nil, f.tm.LockTTL+10*time.Second)
	f.figure("leader_gap", leaderAt.Sub(killAt))
	if limit := failover + f.tm.LockTTL + failoverSlack; leaderAt.Sub(killAt) > limit {
		t.Errorf("a leader again %v after the kill, want within the failover (%v) plus the lock TTL %v plus %v", leaderAt.Sub(killAt).Round(time.Millisecond), failover.Round(time.Millisecond), f.tm.LockTTL, failoverSlack)
	}

	t2 := f.token(2)
	f.waitServing(t2.Token, f.replicas, 5*time.Second)
	res := f.finish()
	f.check(res, expect{
		unready: slowFailover(f, t1, leaderAt),
		// Subscriptions die with the master; a replica not yet subscribed
		// again catches up by polling.
		lag:          []lagWindow{{window{from: killAt, to: leaderAt.Add(resubscribe), why: "master killed"}, f.tm.Poll + time.Second}},
		extraFetches: 1,
	})
	f.checkNeverBackwards(res)
	if got := res.stats.LivenessCalls; got > 3 {
		t.Errorf("upstream liveness calls = %d, want 2 (the first token and one refresh), at most one more for the failover", got)
	}
}

// Failover 3. Sentinel, the master SIGKILLed right after the leader wrote a
// new token that never reached the replicas (their replication link is cut
// first): the promoted replica holds the older token; no replica goes back
// to it, and Redis gets the newer one back from the fleet's memory, with at
// most one upstream call.
func TestSentinelMasterKilledBeforeReplication(t *testing.T) {
	t.Parallel()
	f := newFleet(t, 3, fast, withSentinel(0))
	t1 := f.token(1)
	leader := f.currentLeader()
	sleepUntil(t1.IssuedAt.Add(2 * time.Second))
	old, err := f.sentinelMaster()
	f.must(err, "the sentinels' master")

	// The replicas leave the master's network: replication stops, the
	// sentinels still reach them over core.
	cutAt := time.Now()
	for _, r := range f.topo.replicas {
		f.disconnectNode(r.c, r.name, f.topo.side)
	}
	st, body, err := f.forceRefresh(leader, 10*time.Second)
	f.note("forced refresh on %s: %d %v", leader.name, st, err)
	if err != nil || st != http.StatusOK {
		t.Fatalf("forced refresh on %s: %d %s %v", leader.name, st, body, err)
	}
	t2 := f.tokenAfter(cutAt, 5*time.Second)
	f.waitServing(t2.Token, f.replicas, 5*time.Second)
	for _, r := range f.topo.replicas {
		var v string
		f.must(f.on(r, func(c *redis.Client, ctx context.Context) error {
			m, err := c.HGetAll(ctx, tokenKey).Result()
			v = fmt.Sprint(m)
			return err
		}), "read the token on "+r.name)
		if strings.Contains(v, t2.Token) || !strings.Contains(v, t1.Token) {
			t.Fatalf("%s holds %.80q, want tok#1 and not tok#2: replication was not cut", r.name, v)
		}
	}
	calls := f.stats().LivenessCalls

	killAt := time.Now()
	f.killNode(f.topo.master)
	_, promoted := f.waitSentinelFailover(old, 20*time.Second)
	failover := promoted.Sub(killAt)
	f.figure("failover", failover)
	back, ok := f.waitRedisHoldsAtLeast(t2, failover+2*f.tm.LockTTL+10*time.Second)
	if ok {
		f.figure("newest_back_in_redis_after_promotion", back.Sub(promoted))
	}
	_, leaderAt := f.waitLeaderAgain(promoted, nil, f.tm.LockTTL+10*time.Second)
	f.figure("leader_gap", leaderAt.Sub(killAt))
	if x, ok, _ := f.redisHolds(); ok && x.Token != t2.Token {
		f.note("Redis holds %s, not tok#2", f.tl.tokenName(x.Token))
	}
	extra := f.stats().LivenessCalls - calls
	f.figure("upstream_calls_for_the_lost_write", extra)
	if extra > 1 {
		t.Errorf("%d upstream calls between the kill and the newest token back in Redis, want at most 1 (none: re-seeded from memory)", extra)
	}

	next := f.tokenAfter(t2.IssuedAt.Add(time.Second), f.tm.Lifetime)
	f.waitServing(next.Token, f.replicas, 5*time.Second)
	res := f.finish()
	f.check(res, expect{
		unready: slowFailover(f, t2, leaderAt),
		lag:     []lagWindow{{window{from: killAt, to: leaderAt.Add(resubscribe), why: "master killed"}, f.tm.Poll + time.Second}},
		// The forced refresh comes early, by design; the failover may cost
		// one more.
		extraFetches: 2,
	})
	f.checkNeverBackwards(res)
}

// Failover 4. Sentinel, the master and the leader partitioned from
// everything else while the sentinels promote a replica (split brain), then
// the partition heals: the old side's writes do not win, no replica goes
// back to an older token, none serves an expired one.
//
// With min-replicas-to-write 1 the old master refuses writes within a
// second or two, so the old leader cannot renew its lock: one token. Its
// lease still runs a lock TTL from its last renewal the old master took,
// and a refresh falling due in that time is fetched and then refused at
// the write (NOREPLICAS): at most one wasted fetch. Without it the old side keeps a leader, and refreshes on its
// own, until Sentinel demotes the old master, which happens well after the
// heal (Sentinel reads a returning instance's role every 10 s, then waits
// 8 s): while the split lasts each side serves its own token and fetches
// once per cycle, at most one extra fetch per cycle of the split.
func TestSentinelSplitBrain(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name        string
		minReplicas int
	}{
		{"min_replicas_to_write_1", 1},
		{"without_min_replicas", 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			splitBrain(t, tt.minReplicas)
		})
	}
}

func splitBrain(t *testing.T, minReplicas int) {
	f := newFleet(t, 3, fast, withSentinel(minReplicas))
	t1 := f.token(1)
	old := f.currentLeader()
	others := f.others(old)
	oldMaster, err := f.sentinelMaster()
	f.must(err, "the sentinels' master")
	// The partition spans the refresh (due 8 s before expiry) and heals
	// before tok#1's serve deadline.
	sleepUntil(t1.IssuedAt.Add(6 * time.Second))

	partAt := time.Now()
	f.note("partition: %s and %s alone", f.topo.master.name, old.name)
	for _, n := range append(append([]*redisNode{}, f.topo.replicas...), f.topo.sentinels...) {
		f.disconnectNode(n.c, n.name, f.topo.side)
	}
	for _, r := range others {
		f.disconnect(r, f.topo.side)
	}
	f.disconnect(old, f.core)
	_, promoted := f.waitSentinelFailover(oldMaster, 20*time.Second)
	f.figure("failover", promoted.Sub(partAt))
	_, leaderAt := f.waitLeaderAgain(promoted, old, f.tm.LockTTL+10*time.Second)
	f.figure("leader_gap", leaderAt.Sub(partAt))
	healAt := t1.IssuedAt.Add(15 * time.Second)
	if time.Now().After(healAt) {
		t.Fatalf("the new side had a leader only at %s, past the planned heal at %s", f.tl.rel(leaderAt), f.tl.rel(healAt))
	}
	sleepUntil(healAt)
	var oldSide string
	if s, ok := f.rec.latest(old.name); ok && s.ok() {
		oldSide = s.token
	}

	// Heal: the old master joins core (announcing its address there, so
	// that as a replica it is found on core), everyone rejoins everything.
	healAt = time.Now()
	f.note("heal")
	f.connectNode(f.topo.master.c, f.topo.master.name, f.core)
	coreIP := f.ipOn(f.topo.master, f.core)
	f.must(f.on(f.topo.master, func(c *redis.Client, ctx context.Context) error {
		return c.ConfigSet(ctx, "replica-announce-ip", coreIP).Err()
	}), "replica-announce-ip on the old master")
	f.connect(old, f.core)
	for _, r := range others {
		f.connect(r, f.topo.side)
	}
	for _, n := range append(append([]*redisNode{}, f.topo.replicas...), f.topo.sentinels...) {
		f.connectNode(n.c, n.name, f.topo.side)
	}
	demoted := f.waitFor(20*time.Second, "the old master replicates the new one", func() (bool, string) {
		r := f.role(f.topo.master)
		return r == "slave", "role " + r
	})
	f.figure("old_master_demoted_after_heal", demoted.Sub(healAt))

	// One token again, the one in Redis, on every replica.
	var final string
	converged := f.waitFor(f.tm.Poll+f.tm.LockTTL+10*time.Second, "every replica serves the token Redis holds", func() (bool, string) {
		x, ok, detail := f.redisHolds()
		if !ok {
			return false, detail
		}
		final = x.Token
		for _, r := range f.replicas {
			s, ok := f.rec.latest(r.name)
			if !ok || !s.sent.After(healAt) || s.token != x.Token {
				return false, fmt.Sprintf("Redis holds %s, %s answered %s", f.tl.tokenName(x.Token), r.name, s.outcome(f.tl.tokenNames()))
			}
		}
		return true, ""
	})
	f.figure("one_token_after_heal", converged.Sub(healAt))
	if oldSide != "" && oldSide != final {
		f.note("the old side served %s; the fleet settled on %s", f.tl.tokenName(oldSide), f.tl.tokenName(final))
	}
	res := f.finish()
	// The cut-off leader's side has no newer token than tok#1 (or one it
	// fetched itself): past tok#1's serve deadline it may answer 503 until
	// it reaches the fleet's token.
	deadline := f.serveDeadline(t1)
	var unready time.Duration
	for _, s := range res.samples {
		if s.replica == old.name && s.status == http.StatusServiceUnavailable {
			unready += readInterval
		}
	}
	f.figure("old_side_unready", unready)
	// A replica dates a token early, never late: by the write's budget
	// (serveDeadline), and by the longest recent round trip to Redis (at
	// most the client's read timeout, half the lock TTL), which a
	// partition makes long. So the cut-off side may stop serving tok#1 up
	// to that much more before its deadline.
	exp := expect{
		unready: []window{{replica: old.name, from: deadline.Add(-clockSlack - f.tm.LockTTL/2), to: converged, why: "cut off with the old master, tok#1 past its serve deadline (dated early by up to a Redis timeout)"}},
		lag: []lagWindow{
			// The cut-off leader serves what its side has until the fleet
			// is one again.
			{window{replica: old.name, from: partAt, to: converged, why: "partitioned with the old master"}, 0},
			// Subscriptions on the lost master die with the partition, and
			// those moved by the heal; a replica not yet subscribed again
			// catches up by polling.
			{window{from: partAt, to: converged.Add(resubscribe), why: "failover and heal"}, f.tm.Poll + time.Second},
		},
	}
	if minReplicas > 0 {
		// The old leader leads until its lease ends, a lock TTL after the
		// last renewal the old master accepted: if its refresh falls due
		// before then, it fetches, and the old master refuses the write.
		// Tokens are dated early by half the lock TTL (the write's
		// budget), so at these timings the refresh falls due about four
		// seconds after the partition, within that lease.
		exp.extraFetches = 1
	}
	if minReplicas == 0 {
		// Two leaders until the old master is demoted: each side serves its
		// own token (one of them older than the other's), one fetch per
		// cycle on each.
		exp.lag = append([]lagWindow{{window{from: partAt, to: converged, why: "split brain"}, 0}}, exp.lag...)
		cycle := f.tm.Lifetime - f.tm.RefreshBefore
		exp.extraFetches = int((converged.Sub(partAt) + cycle - 1) / cycle)
		f.figure("split_cycles", exp.extraFetches)
	}
	f.check(res, exp)
	f.checkNeverBackwards(res)
	// What the old side wrote is gone: no replica serves, after the fleet
	// settled, a token only the old side had.
	if oldSide != "" && oldSide != final {
		for _, s := range res.samples {
			if s.ok() && s.token == oldSide && s.sent.After(converged) {
				t.Errorf("%s served the old side's %s at %s, after the fleet settled on %s", s.replica, f.tl.tokenName(oldSide), f.tl.rel(s.sent), f.tl.tokenName(final))
				break
			}
		}
	}
}

// Failover 5. Cluster: the token's slot migrates to another master while the
// fleet reads, renews its lock and refreshes (MOVED and ASK redirections,
// TRYAGAIN while the slot's keys are split): no read fails, no extra fetch,
// no replica goes back.
func TestClusterSlotMigration(t *testing.T) {
	t.Parallel()
	f := newFleet(t, 3, fast, withCluster())
	t1 := f.token(1)
	any := f.topo.nodes[0]
	var slot int64
	f.must(f.on(any, func(c *redis.Client, ctx context.Context) error {
		var err error
		slot, err = c.ClusterKeySlot(ctx, tokenKey).Result()
		return err
	}), "CLUSTER KEYSLOT")
	src, ok := f.slotOwner(any, slot)
	if !ok {
		t.Fatalf("no owner of slot %d", slot)
	}
	var dst *redisNode
	for _, n := range f.topo.nodes {
		if n != src.node && f.role(n) == "master" {
			dst = n
			break
		}
	}
	srcID, dstID := src.id, f.nodeID(dst)
	dstIP := f.ipOn(dst, f.core)
	f.note("slot %d: %s -> %s", slot, src.node.name, dst.name)

	// Migrate around the refresh (due 8 s before expiry, up to 0.8 s
	// earlier), one key at a time.
	sleepUntil(t1.IssuedAt.Add(10500 * time.Millisecond))
	migAt := time.Now()
	f.must(f.on(dst, func(c *redis.Client, ctx context.Context) error {
		return c.Do(ctx, "CLUSTER", "SETSLOT", slot, "IMPORTING", srcID).Err()
	}), "SETSLOT IMPORTING")
	f.must(f.on(src.node, func(c *redis.Client, ctx context.Context) error {
		return c.Do(ctx, "CLUSTER", "SETSLOT", slot, "MIGRATING", dstID).Err()
	}), "SETSLOT MIGRATING")
	f.note("slot %d migrating", slot)
	moved := 0
	for {
		var keys []string
		f.must(f.on(src.node, func(c *redis.Client, ctx context.Context) error {
			var err error
			keys, err = c.ClusterGetKeysInSlot(ctx, int(slot), 1).Result()
			return err
		}), "GETKEYSINSLOT")
		if len(keys) == 0 {
			break
		}
		// redis-cli --cluster reshard moves a slot's keys in batches within
		// milliseconds; one at a time, a little apart, keeps the slot split
		// (ASK, TRYAGAIN) long enough to meet the fleet's work.
		time.Sleep(250 * time.Millisecond)
		f.must(f.on(src.node, func(c *redis.Client, ctx context.Context) error {
			return c.Do(ctx, "MIGRATE", dstIP, "6379", "", 0, 5000, "KEYS", keys[0]).Err()
		}), "MIGRATE "+keys[0])
		moved++
		f.note("migrated %s", keys[0])
	}
	for _, n := range append([]*redisNode{dst, src.node}, f.topo.nodes...) {
		if f.role(n) != "master" {
			continue
		}
		f.must(f.on(n, func(c *redis.Client, ctx context.Context) error {
			return c.Do(ctx, "CLUSTER", "SETSLOT", slot, "NODE", dstID).Err()
		}), "SETSLOT NODE on "+n.name)
	}
	doneAt := time.Now()
	f.note("slot %d owned by %s", slot, dst.name)
	f.figure("migration", doneAt.Sub(migAt))
	f.figure("keys_migrated", moved)
	if moved == 0 {
		t.Errorf("no key of slot %d was migrated", slot)
	}

	t2 := f.tokenAfter(t1.IssuedAt.Add(time.Second), f.tm.Lifetime)
	f.waitServing(t2.Token, f.replicas, 5*time.Second)
	if owner, ok := f.slotOwner(dst, slot); !ok || owner.node != dst {
		t.Errorf("slot %d is served by %+v, want %s", slot, owner, dst.name)
	}
	if _, ok := f.waitRedisHoldsAtLeast(t2, 5*time.Second); !ok {
		t.Errorf("tok#2 is not in Redis after the migration")
	}
	f.currentLeader()
	res := f.finish()
	f.check(res, expect{
		// An event published while the slot is split reaches no sharded
		// subscriber (they stay on the old owner until it hands the slot
		// over and ends their subscription); polling covers.
		lag: []lagWindow{{window{from: migAt, to: doneAt.Add(resubscribe), why: "slot migrating"}, f.tm.Poll + time.Second}},
	})
	f.checkNeverBackwards(res)
	if got := res.stats.LivenessCalls; got != 2 {
		t.Errorf("upstream liveness calls = %d, want 2 (the first token and one refresh)", got)
	}
}

// Failover 6. Cluster: the master that owns the token's slot is SIGKILLed;
// its replica is promoted, the fleet leads again within the lock TTL after
// the failover, no read fails.
func TestClusterMasterKilled(t *testing.T) {
	t.Parallel()
	f := newFleet(t, 3, fast, withCluster())
	t1 := f.token(1)
	f.currentLeader()
	var slot int64
	f.must(f.on(f.topo.nodes[0], func(c *redis.Client, ctx context.Context) error {
		var err error
		slot, err = c.ClusterKeySlot(ctx, tokenKey).Result()
		return err
	}), "CLUSTER KEYSLOT")
	owner, ok := f.slotOwner(f.topo.nodes[0], slot)
	if !ok {
		t.Fatalf("no owner of slot %d", slot)
	}
	rep := f.replicaOf(owner.node)
	sleepUntil(t1.IssuedAt.Add(3 * time.Second))
	f.waitReplicaInSync(owner.node, rep)

	killAt := time.Now()
	f.killNode(owner.node)
	promoted := f.clusterFailover(rep)
	failover := promoted.Sub(killAt)
	f.figure("failover", failover)
	_, leaderAt := f.waitLeaderAgain(promoted, nil, f.tm.LockTTL+10*time.Second)
	f.figure("leader_gap", leaderAt.Sub(killAt))
	if limit := failover + f.tm.LockTTL + failoverSlack; leaderAt.Sub(killAt) > limit {
		t.Errorf("a leader again %v after the kill, want within the failover (%v) plus the lock TTL %v plus %v", leaderAt.Sub(killAt).Round(time.Millisecond), failover.Round(time.Millisecond), f.tm.LockTTL, failoverSlack)
	}

	t2 := f.token(2)
	f.waitServing(t2.Token, f.replicas, 5*time.Second)
	res := f.finish()
	f.check(res, expect{
		unready:      slowFailover(f, t1, leaderAt),
		lag:          []lagWindow{{window{from: killAt, to: leaderAt.Add(resubscribe), why: "master killed"}, f.tm.Poll + time.Second}},
		extraFetches: 1,
	})
	f.checkNeverBackwards(res)
	if got := res.stats.LivenessCalls; got > 3 {
		t.Errorf("upstream liveness calls = %d, want 2 (the first token and one refresh), at most one more for the failover", got)
	}
}

// Failover 7. A single Redis restarted from an older snapshot: it comes
// back holding tok#1 (older, still valid) while every replica serves tok#2.
// No replica goes back to tok#1, and tok#2 returns to Redis from the
// fleet's memory without an upstream call.
func TestRedisRestoredFromOlderSnapshot(t *testing.T) {
	t.Parallel()
	f := newFleet(t, 3, fast)
	t1 := f.token(1)
	leader := f.currentLeader()
	sleepUntil(t1.IssuedAt.Add(time.Second))
	f.must(f.hostRDB.do(func(c redis.UniversalClient, ctx context.Context) error { return c.Save(ctx).Err() }), "SAVE")
	f.note("SAVE (the snapshot holds tok#1)")
	if code, _, err := f.redis.Exec(context.Background(), []string{"sh", "-c", "test -s dump.rdb"}, tcexec.Multiplexed()); err != nil || code != 0 {
		t.Fatalf("no snapshot in Redis's directory after SAVE: exit %d %v", code, err)
	}

	st, body, err := f.forceRefresh(leader, 10*time.Second)
	if err != nil || st != http.StatusOK {
		t.Fatalf("forced refresh on %s: %d %s %v", leader.name, st, body, err)
	}
	t2 := f.token(2)
	f.waitServing(t2.Token, f.replicas, 5*time.Second)
	calls := f.stats().LivenessCalls

	// Stopped with SIGTERM, Redis saves nothing (no save points): it starts
	// again from the snapshot.
	downAt := time.Now()
	f.restartRedis()
	upAt := time.Now()
	f.figure("redis_down", upAt.Sub(downAt))
	var info string
	f.must(f.hostRDB.do(func(c redis.UniversalClient, ctx context.Context) error {
		var err error
		info, err = c.Info(ctx, "persistence").Result()
		return err
	}), "INFO persistence")
	if !strings.Contains(info, "rdb_last_load_keys_loaded:") || strings.Contains(info, "rdb_last_load_keys_loaded:0\r") {
		t.Fatalf("Redis did not load the snapshot: %q", info)
	}
	back, ok := f.waitRedisHoldsAtLeast(t2, 2*f.tm.LockTTL+5*time.Second)
	if ok {
		f.figure("newest_back_in_redis_after_restart", back.Sub(upAt))
	}
	if got := f.stats().LivenessCalls; got != calls {
		t.Errorf("upstream liveness calls went from %d to %d across the restore, want none: tok#2 is in every replica's memory", calls, got)
	}
	if x, ok, _ := f.redisHolds(); ok && x.Token != t2.Token {
		t.Errorf("Redis holds %s after the restore, want tok#2 written back", f.tl.tokenName(x.Token))
	}
	_, leaderAt := f.waitLeaderAgain(upAt, nil, 2*f.tm.LockTTL+5*time.Second)
	f.figure("leader_gap", leaderAt.Sub(downAt))

	t3 := f.token(3)
	f.waitServing(t3.Token, f.replicas, 5*time.Second)
	res := f.finish()
	f.check(res, expect{extraFetches: 1}) // the forced refresh, early by design
	f.checkNeverBackwards(res)
	if n := len(served(res, t1.Token)); n > 0 {
		for _, s := range served(res, t1.Token) {
			if s.sent.After(downAt) {
				t.Errorf("INVARIANT 6: tok#1 served again after the restore (%s at %s)", s.replica, f.tl.rel(s.sent))
				break
			}
		}
	}
}
