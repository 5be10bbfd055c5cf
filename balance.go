package tokenkeeper

import (
	"context"
	"time"

	"github.com/tokenkeeper/tokenkeeper/cache"
	"github.com/tokenkeeper/tokenkeeper/refresher"
)

// Leadership over a catalog spreads after the election, not during it. A
// replica that sees a token's lock free takes it at once, so that a
// failover costs the lock's expiry and no more, whatever the number of
// tokens; then, every lock TTL, a replica that leads more tokens than
// another replica that stands for one of them by two or more hands that
// token over (refresher.StepDown): it releases the lock, the other takes
// it within milliseconds, and no token goes unserved meanwhile. The counts
// come from the heartbeats, which a replica rewrites within a fifth of a
// second of gaining or losing a lock.

// balance spreads leadership every lock TTL until ctx ends. A fleet of one
// token returns at once. After a hand-over it waits two lock TTLs before
// handing another token over, so that the heartbeats show who took it, and
// so that a replica that died leading none (its heartbeat lives on for up
// to three heartbeat intervals) is handed few tokens: each comes back to
// this replica after a lock TTL with no leader, and is served meanwhile.
// The replica that hands a token over stays out of its election for a
// lock TTL only (refresher.StepDown): a token handed round the fleet
// leaves no replica aside when its leader later dies.
func (k *Keeper) balance(ctx context.Context) error {
	if k.cfg.single {
		return nil
	}
	tick := time.NewTicker(k.cfg.LockTTL)
	defer tick.Stop()
	var quietUntil time.Time
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
		if time.Now().Before(quietUntil) {
			continue
		}
		rctx, cancel := context.WithTimeout(ctx, k.cfg.LockTTL)
		t := k.overLed(rctx)
		cancel()
		if t != nil && t.ref.StepDown() {
			quietUntil = time.Now().Add(2 * k.cfg.LockTTL)
		}
	}
}

// overLed returns a token this replica should hand over, or nil: one it
// leads while a replica that leads at least two fewer tokens stands for
// it (its heartbeat fresh, ready, not leading it, not out of the election
// after handing over). A failed read decides nothing.
func (k *Keeper) overLed(ctx context.Context) *kept {
	var led []*kept
	for _, t := range k.tokens {
		if t.ref.IsLeader() {
			led = append(led, t)
		}
	}
	if len(led) < 2 {
		return nil
	}
	leads := map[string]int{} // instance -> tokens it leads, by its heartbeats
	standing := make([][]string, len(k.tokens))
	keys := make([]cache.Keys, len(k.tokens))
	for i, t := range k.tokens {
		keys[i] = t.store.Keys()
	}
	views, err := refresher.ReadReplicasOf(ctx, k.cfg.Redis, keys)
	if err != nil {
		return nil
	}
	for i, reps := range views {
		for _, r := range reps {
			if r.Instance == k.cfg.Instance {
				continue
			}
			leads[r.Instance] += 0
			if r.Leader {
				leads[r.Instance]++
			} else if r.Ready && r.Problem == "" && r.AsideFor == 0 {
				standing[i] = append(standing[i], r.Instance)
			}
		}
	}
	for i, t := range k.tokens {
		if !t.ref.IsLeader() {
			continue
		}
		for _, other := range standing[i] {
			if leads[other]+2 <= len(led) {
				k.log.Info("handing a token over to spread leadership", "token", t.cfg.Name, "to_replica_leading", leads[other], "leading", len(led))
				return t
			}
		}
	}
	return nil
}
