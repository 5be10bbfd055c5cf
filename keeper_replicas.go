package tokenkeeper

import (
	"context"
	"time"

	"github.com/tokenkeeper/tokenkeeper/refresher"
)

// replicaCountEvery is how often a replica counts the live replicas of
// the fleet for the fleet-wide rate limit: as often as heartbeats are
// written, so that the count lags a joining or leaving replica by about
// two intervals.
var replicaCountEvery = 5 * time.Second

// LiveReplicas counts the replicas of the fleet view whose heartbeat is
// fresh and that hold a servable token (those a balancer sends requests
// to), reading Redis once. It counts at least one, this replica.
func (k *Keeper) LiveReplicas(ctx context.Context) (int, error) {
	reps, err := refresher.ReadReplicas(ctx, k.cfg.Redis, k.tokens[0].store.Keys())
	if err != nil {
		return 0, err
	}
	n := 0
	for _, r := range reps {
		if r.Ready {
			n++
		}
	}
	return max(n, 1), nil
}

// countReplicas tells the HTTP face, at once and then every
// replicaCountEvery until ctx ends, how many replicas share the
// fleet-wide rate limit. Without one configured it returns at once. A
// failed read keeps the last count: Redis is never asked on the read path.
func (k *Keeper) countReplicas(ctx context.Context) error {
	if k.cfg.HTTP.Security.FleetRateLimit <= 0 {
		return nil
	}
	every := replicaCountEvery
	tick := k.cfg.Clock.NewTicker(every)
	defer tick.Stop()
	for {
		// The count's Redis calls are bounded on Go's timers, as every
		// single Redis call is; the Clock paces the loop.
		rctx, cancel := context.WithTimeout(ctx, every)
		n, err := k.LiveReplicas(rctx)
		cancel()
		if err == nil {
			k.api.SetReplicas(n)
		} else if ctx.Err() == nil {
			k.log.Debug("counting the live replicas failed; the rate limit keeps its last share", "error", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C():
		}
	}
}
