package refresher

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"strings"

	"github.com/bsm/redislock"
	"github.com/redis/go-redis/v9"

	"github.com/tokenkeeper/tokenkeeper/cache"
)

//go:embed lua/confirm.lua
var confirmLua string

// confirmScript (lua/confirm.lua) renews the lock if it still holds the
// value given: a write of the leader's own, after which WAIT tells whether
// the replicas hold the lock. KEYS: lock. ARGV: value, ttl ms. Returns 1
// when renewed, 0 when the lock is not this value.
var confirmScript = redis.NewScript(confirmLua)

// replicateLock waits, after an election, until Config.Replication's
// replicas hold the lock. It returns redislock.ErrNotObtained when the
// lock is no longer this replica's; a short wait or an unreachable Redis
// is logged and leadership goes on (the fenced write still guards every
// token).
func (r *Refresher) replicateLock(ctx context.Context, lock *redislock.Lock) error {
	key := r.store.Keys().Lock
	var cmd *redis.Cmd
	err := cache.Replicated(ctx, r.rdb, key, r.cfg.Replication, func(p redis.Pipeliner) {
		cmd = confirmScript.Eval(ctx, p, []string{key}, lock.Token()+lock.Metadata(), r.cfg.LockTTL.Milliseconds())
	})
	if cmd != nil {
		if n, cerr := cmd.Int64(); cerr == nil && n == 0 {
			return redislock.ErrNotObtained
		}
	}
	if err != nil && ctx.Err() == nil {
		r.log.Warn("the new leader's lock may not have reached the Redis replicas; a failover now could elect a second leader, whose writes the fence still orders",
			"error", err)
	}
	return nil
}

// masterID returns the run id of the Redis server that holds the lock's
// key: the master a failover client speaks to, or in Redis Cluster the
// master of the key's slot.
func (r *Refresher) masterID(ctx context.Context) (string, error) {
	type infoer interface {
		Info(ctx context.Context, section ...string) *redis.StringCmd
	}
	var c infoer
	switch rdb := r.rdb.(type) {
	case *redis.ClusterClient:
		node, err := rdb.MasterForKey(ctx, r.store.Keys().Lock)
		if err != nil {
			return "", err
		}
		c = node
	case infoer:
		c = rdb
	default:
		return "", errors.New("refresher: watching the Redis master needs a client with INFO")
	}
	info, err := c.Info(ctx, "server").Result()
	if err != nil {
		return "", err
	}
	for line := range strings.SplitSeq(info, "\n") {
		if id, ok := strings.CutPrefix(strings.TrimSpace(line), "run_id:"); ok {
			return id, nil
		}
	}
	return "", fmt.Errorf("refresher: INFO server names no run_id")
}
