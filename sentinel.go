package tokenkeeper

import (
	"context"
)

// followSentinel, in Sentinel mode with Config.SentinelMaster, asks the
// sentinels every poll interval which master they name, and when they name
// another than before, makes the events subscribe again. go-redis moves
// the client's commands to the new master as soon as a sentinel announces
// it, but not a subscription: left alone, it stays on the old master's
// connection until its health check gives up (about ten seconds), and the
// replica learns of new tokens only by polling meanwhile. The question
// goes to the sentinels, never to Redis. Otherwise it returns at once.
func (k *Keeper) followSentinel(ctx context.Context) error {
	if k.cfg.RedisMode != RedisSentinel || k.cfg.SentinelMaster == nil {
		return nil
	}
	tick := k.cfg.Clock.NewTicker(k.cfg.PollInterval)
	defer tick.Stop()
	var master string // the run id the sentinels named last; "" until they named one
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C():
		}
		qctx, cancel := context.WithTimeout(ctx, k.cfg.PollInterval)
		id, err := k.cfg.SentinelMaster(qctx)
		cancel()
		switch {
		case err != nil || id == "":
			// Nobody answered, or they are split: nothing learnt.
		case master == "":
			master = id
		case id != master:
			k.log.Info("the sentinels name a new Redis master; subscribing to the events there")
			master = id
			k.events.Resubscribe()
		}
	}
}
