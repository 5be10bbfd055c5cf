package tokenkeeper

import (
	"context"
	"slices"
	"time"

	"github.com/tokenkeeper/tokenkeeper/cache"
	"github.com/tokenkeeper/tokenkeeper/refresher"
)

// Leadership over a catalog spreads after the election, not during it. A
// replica that sees a token's lock free takes it at once, so that a
// failover costs the lock's expiry and no more, whatever the number of
// tokens. Then, every lock TTL, a replica hands over in one go
// (refresher.StepDown) each token it leads to which a replica leading at
// least two fewer stands, counting those it hands over as it goes, up to
// its surplus over its share of the catalog (the tokens over the
// replicas, rounded up; one at least). It releases their locks, and the
// others take them within milliseconds, the replica leading fewest first
// (refresher's Config.Leading); no token goes unserved meanwhile. The
// counts come from the fleet's beats, which a replica rewrites within a
// second of the number of tokens it leads changing
// (refresher.BeatConfig.Leading), and who stands for a token from the
// fleet views of the tokens the replica leads, rewritten within a second
// of a replica gaining or losing a lock (a fifth of a second with up to
// 20 tokens): a look reads the beats and a few views, not every token's
// view, so a catalog of a hundred tokens costs no more than one of five.
// A fleet started one replica after another, the first taking every lock,
// spreads in a round or two, not one token per round.

// balance spreads leadership every lock TTL until ctx ends, looking less
// often (up to every balanceIdleMax lock TTLs) while it finds nothing to
// hand over and neither its own leadership nor the number of replicas it
// sees changes. A fleet of one token
// returns at once. After a hand-over it waits two lock TTLs before
// handing more over, so that the heartbeats show who took them, and so
// that a replica that died leading none (its heartbeat lives on for up
// to three heartbeat intervals) is handed few tokens: each comes back to
// a live replica after a lock TTL with no leader, and is served
// meanwhile. The replica that hands a token over stays out of its election
// for a lock TTL only (refresher.StepDown): a token handed round the fleet
// leaves no replica aside when its leader later dies.
func (k *Keeper) balance(ctx context.Context) error {
	if k.cfg.single {
		return nil
	}
	tick := k.cfg.Clock.NewTicker(k.cfg.LockTTL)
	defer tick.Stop()
	var quietUntil, idleUntil time.Time
	var idle time.Duration
	lastLed, lastSeen := -1, -1
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C():
		}
		now := k.cfg.Clock.Now()
		if led := k.leading(); led != lastLed {
			lastLed, idle, idleUntil = led, 0, time.Time{}
		}
		if now.Before(quietUntil) || now.Before(idleUntil) {
			continue
		}
		rctx, cancel := context.WithTimeout(ctx, k.cfg.LockTTL)
		surplus, seen := k.overLed(rctx)
		cancel()
		if seen >= 0 && seen != lastSeen {
			// The fleet grew or shrank (a fleet starting, replicas
			// becoming ready): look again within a lock TTL until it
			// stops changing.
			lastSeen, idle = seen, 0
		}
		stepped := false
		for _, t := range surplus {
			if t.ref.StepDown() {
				stepped = true
			}
		}
		if stepped {
			quietUntil = k.cfg.Clock.Now().Add(2 * k.cfg.LockTTL)
			continue
		}
		// Nothing to hand over: look again later and later while this
		// replica's leadership stays as it is, so that a fleet at rest does
		// not read every token's fleet view every lock TTL.
		idle = min(max(2*idle, k.cfg.LockTTL), balanceIdleMax*k.cfg.LockTTL)
		idleUntil = now.Add(idle)
	}
}

// balanceIdleMax is, in lock TTLs, the longest a replica goes without
// looking at the fleet's leadership while its own stays as it is (5
// minutes at the default lock TTL): the delay before a replica leading two
// tokens or more notices replicas that joined since, leading none. A
// replica that gains or loses a lock looks again within a lock TTL, and a
// lock released on a stop goes to the least busy replica without it.
const balanceIdleMax = 30

// leading returns how many tokens this replica leads now.
func (k *Keeper) leading() int {
	n := 0
	for _, t := range k.tokens {
		if t.ref.IsLeader() {
			n++
		}
	}
	return n
}

// overLed returns the tokens this replica should hand over, or none: each
// token it leads to which a replica leading at least two fewer stands (its
// heartbeat fresh, ready, not leading it, not out of the election after
// handing over), that replica counted as leading one more for the next,
// up to its surplus. It returns too how many other replicas it saw beating,
// -1 when it read nothing. A failed read decides nothing.
//
// It counts each replica's leadership from the fleet's beats, which say it
// (refresher.BeatConfig.Leading), and reads only the fleet views of the
// tokens it leads: one beat and a few views a look, whatever the size of
// the catalog. While a replica of an earlier version beats without saying,
// it counts from every token's view instead.
func (k *Keeper) overLed(ctx context.Context) ([]*kept, int) {
	led := k.leading()
	if led < 2 {
		return nil, -1
	}
	f, err := refresher.ReadBeats(ctx, k.cfg.Redis, cache.FleetKey)
	if err != nil {
		return nil, -1
	}
	delete(f.Leading, k.cfg.Instance)
	complete := f.Complete()
	// The views to read: the tokens this replica leads, or every token
	// while some beat does not say, to count from.
	var read []*kept
	for _, t := range k.tokens {
		if !complete || t.ref.IsLeader() {
			read = append(read, t)
		}
	}
	keys := make([]cache.Keys, len(read))
	for i, t := range read {
		keys[i] = t.store.Keys()
	}
	views, err := f.Views(ctx, k.cfg.Redis, keys)
	if err != nil {
		return nil, -1
	}
	leads := f.Leading // instance -> tokens it leads
	if !complete {
		leads = leadsIn(views, k.cfg.Instance)
	}
	// At most the surplus over this replica's share (the catalog over the
	// replicas, rounded up), or one: replicas shedding at once must not
	// swamp the one that leads fewest.
	share := (len(k.tokens) + len(leads)) / (len(leads) + 1)
	budget := max(led-share, 1)
	var out []*kept
	for i, t := range read {
		if len(out) == budget {
			break
		}
		if !t.ref.IsLeader() {
			continue
		}
		var standing []string // ready, sound, not aside, not leading it
		for _, r := range views[i] {
			if _, live := leads[r.Instance]; live && !r.Leader && r.Ready && r.Problem == "" && r.AsideFor == 0 {
				standing = append(standing, r.Instance)
			}
		}
		if len(standing) == 0 {
			continue
		}
		to := slices.MinFunc(standing, func(a, b string) int { return leads[a] - leads[b] })
		if leads[to]+2 > led {
			continue
		}
		k.log.Info("handing a token over to spread leadership", "token", t.cfg.Name, "to_replica_leading", leads[to], "leading", led)
		out = append(out, t)
		leads[to]++
		led--
	}
	return out, len(leads)
}

// leadsIn counts how many tokens each replica but self leads in views,
// every token's fleet view: for a fleet where some beat does not say.
func leadsIn(views [][]refresher.Replica, self string) map[string]int {
	leads := map[string]int{}
	for _, reps := range views {
		for _, r := range reps {
			if r.Instance == self {
				continue
			}
			leads[r.Instance] += 0
			if r.Leader {
				leads[r.Instance]++
			}
		}
	}
	return leads
}
