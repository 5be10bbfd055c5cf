package tokenkeeper

// The Redis client a Keeper is given: what it needs of it, and its
// timeouts.

import (
	"context"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokenkeeper/tokenkeeper/refresher"
)

// Redis is what a Keeper needs of a go-redis client: *redis.Client fits
// (redis.UniversalClient does too).
type Redis interface {
	redis.Scripter
	Get(ctx context.Context, key string) *redis.StringCmd
	SetNX(ctx context.Context, key string, value any, expiration time.Duration) *redis.BoolCmd
	MGet(ctx context.Context, keys ...string) *redis.SliceCmd
	Pipeline() redis.Pipeliner
	PTTL(ctx context.Context, key string) *redis.DurationCmd
	HGet(ctx context.Context, key, field string) *redis.StringCmd
	Publish(ctx context.Context, channel string, message any) *redis.IntCmd
	Subscribe(ctx context.Context, channels ...string) *redis.PubSub
	SPublish(ctx context.Context, channel string, message any) *redis.IntCmd
	SSubscribe(ctx context.Context, channels ...string) *redis.PubSub
}

// TuneRedis sets on opt what a Keeper with lockTTL (0: the default) needs
// of its Redis client, leaving alone the timeouts opt already sets: read
// and write timeouts of half the lock TTL, so that a lock renewal lands
// within the lease; deadlines honoured; three spare connections, so that
// a renewal retried after a timeout does not wait for a dial; and no
// CLIENT SETINFO, so that a new connection costs one round trip before
// the command. For a failover or cluster client, tune a redis.Options and
// copy those fields over.
func TuneRedis(opt *redis.Options, lockTTL time.Duration) {
	if lockTTL <= 0 {
		lockTTL = defaultLockTTL
	}
	refresher.TuneRedis(opt, lockTTL)
}

// checkRedisTimeouts reports a go-redis client whose commands may outlast
// a lock renewal's budget, half of lockTTL: read or write timeouts longer
// than that, or none, without ContextTimeoutEnabled. A client of another
// kind is trusted.
func checkRedisTimeouts(rdb Redis, lockTTL time.Duration) error {
	var read, write time.Duration
	switch c := rdb.(type) {
	case interface{ Options() *redis.Options }:
		o := c.Options()
		if o.ContextTimeoutEnabled {
			return nil
		}
		read, write = o.ReadTimeout, o.WriteTimeout
	case interface{ Options() *redis.ClusterOptions }:
		o := c.Options()
		if o.ContextTimeoutEnabled {
			return nil
		}
		read, write = o.ReadTimeout, o.WriteTimeout
	default:
		return nil
	}
	limit := refresher.RedisTimeout(lockTTL)
	for _, t := range []struct {
		name string
		d    time.Duration
	}{{"ReadTimeout", read}, {"WriteTimeout", write}} {
		d := t.d // as the client took it: zero or less is none
		switch {
		case d <= 0:
			return &FieldError{"Redis", fmt.Sprintf("%s is off: set it to at most %v (half of LockTTL), or set ContextTimeoutEnabled, so that a lock renewal cannot outlast its lease", t.name, limit)}
		}
		if d > limit {
			return &FieldError{"Redis", fmt.Sprintf("%s %v is longer than half of LockTTL (%v): set it to at most that, or set ContextTimeoutEnabled, so that a lock renewal cannot outlast its lease", t.name, d, limit)}
		}
	}
	return nil
}
