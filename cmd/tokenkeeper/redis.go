package main

import (
	"context"
	"crypto/tls"
	"errors"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokenkeeper/tokenkeeper"
)

// parseRedis reads TOKENKEEPER_REDIS_MODE and TOKENKEEPER_REDIS_URL (with
// its TLS settings) into c: go-redis's ParseURL reads the URL of a single
// server, ParseFailoverURL that of Sentinel, ParseClusterURL that of a
// cluster. The URL is never echoed: it may carry a password.
func parseRedis(v *values, c *Config, readFile func(string) ([]byte, error)) {
	c.RedisMode = tokenkeeper.RedisMode(v.str("TOKENKEEPER_REDIS_MODE"))
	u := v.str("TOKENKEEPER_REDIS_URL")
	if u == "" {
		v.fail("TOKENKEEPER_REDIS_URL is required (example redis://redis:6379/0)")
		return
	}
	var (
		tlsConf *tls.Config
		err     error
	)
	switch c.RedisMode {
	case tokenkeeper.RedisSingle:
		if c.Redis, err = redis.ParseURL(u); err == nil {
			tlsConf = c.Redis.TLSConfig
		}
	case tokenkeeper.RedisSentinel:
		if c.RedisFailover, err = redis.ParseFailoverURL(u); err == nil {
			tlsConf = c.RedisFailover.TLSConfig
			if c.RedisFailover.MasterName == "" {
				v.fail("TOKENKEEPER_REDIS_URL: sentinel mode needs master_name in the URL (example redis://sentinel-1:26379?addr=sentinel-2:26379&master_name=mymaster)")
			}
		}
	case tokenkeeper.RedisCluster:
		if c.RedisCluster, err = redis.ParseClusterURL(u); err == nil {
			tlsConf = c.RedisCluster.TLSConfig
		}
	default:
		return // the front door names the modes (RedisMode)
	}
	if err != nil {
		v.fail("TOKENKEEPER_REDIS_URL: not a valid redis:// or rediss:// URL for %s mode", c.RedisMode)
		return
	}
	redisTLS(v, tlsConf, readFile)
}

// parseRedisWait reads TOKENKEEPER_REDIS_WAIT_REPLICAS and _TIMEOUT.
func parseRedisWait(v *values, c *Config) {
	c.RedisWait = tokenkeeper.RedisWait{
		Replicas: v.integer("TOKENKEEPER_REDIS_WAIT_REPLICAS"),
		Timeout:  v.duration("TOKENKEEPER_REDIS_WAIT_TIMEOUT"),
	}
}

// newRedis returns the client of c's topology, with its timeouts and spare
// connections following from the lock TTL (tokenkeeper.TuneRedis) where the
// URL sets none, and the hooks of newRegistry to come. maxRetries, when
// not zero, replaces the URL's.
func (c Config) newRedis(maxRetries int) redis.UniversalClient {
	// The election's needs, worked out on the options of a single server
	// and carried over to the other topologies' options.
	tune := func(read, write *time.Duration, dial *time.Duration, ctxTimeout *bool, idle *int, noIdentity *bool, retries *int) {
		o := redis.Options{ReadTimeout: *read, WriteTimeout: *write, MinIdleConns: *idle}
		tokenkeeper.TuneRedis(&o, c.LockTTL)
		*read, *write, *ctxTimeout, *idle, *noIdentity = o.ReadTimeout, o.WriteTimeout, o.ContextTimeoutEnabled, o.MinIdleConns, o.DisableIdentity
		*dial = max(*dial, 2*time.Second)
		if maxRetries != 0 {
			*retries = maxRetries
		}
	}
	switch c.RedisMode {
	case tokenkeeper.RedisSentinel:
		o := *c.RedisFailover
		tune(&o.ReadTimeout, &o.WriteTimeout, &o.DialTimeout, &o.ContextTimeoutEnabled, &o.MinIdleConns, &o.DisableIdentity, &o.MaxRetries)
		return redis.NewFailoverClient(&o)
	case tokenkeeper.RedisCluster:
		o := *c.RedisCluster
		tune(&o.ReadTimeout, &o.WriteTimeout, &o.DialTimeout, &o.ContextTimeoutEnabled, &o.MinIdleConns, &o.DisableIdentity, &o.MaxRetries)
		// go-redis reloads the slot map on MOVED or READONLY answers, and
		// otherwise every minute: a master that died answers nothing, so
		// without a shorter reload the fleet would keep dialling it long
		// after its replica was promoted. A third of the lock TTL lets a
		// leader be elected again within about a TTL of the promotion.
		o.ClusterStateReloadInterval = c.LockTTL / 3
		// A dead node answers no dial: five dial attempts (go-redis's
		// default) to it hold a command, or the slot map's reload, for
		// five dial timeouts, longer than a lock lives. One attempt,
		// unless the URL asks for more (dialer_retries).
		if o.DialerRetries == 0 {
			o.DialerRetries = 1
		}
		return redis.NewClusterClient(&o)
	default:
		o := *c.Redis
		tune(&o.ReadTimeout, &o.WriteTimeout, &o.DialTimeout, &o.ContextTimeoutEnabled, &o.MinIdleConns, &o.DisableIdentity, &o.MaxRetries)
		return redis.NewClient(&o)
	}
}

// redisAddrs names the servers c's client starts from, for the logs.
func (c Config) redisAddrs() []string {
	switch c.RedisMode {
	case tokenkeeper.RedisSentinel:
		return c.RedisFailover.SentinelAddrs
	case tokenkeeper.RedisCluster:
		return c.RedisCluster.Addrs
	default:
		return []string{c.Redis.Addr}
	}
}

// errRedisTLSNeedsRediss is redisTLS's complaint about a redis:// URL.
var errRedisTLSNeedsRediss = errors.New("TOKENKEEPER_REDIS_TLS_CA, _CERT and _KEY need a rediss:// TOKENKEEPER_REDIS_URL")

// sentinelMaster returns, in Sentinel mode, a function that asks every
// sentinel at once for the master of c's master name and returns the run
// id most of those that answered name (a sentinel cut off with an old
// master still names it), or "" when they are split evenly; and a function
// that closes the sentinels' clients. Outside Sentinel mode both are nil.
func (c Config) sentinelMaster() (func(context.Context) (string, error), func() error) {
	if c.RedisMode != tokenkeeper.RedisSentinel || c.RedisFailover == nil {
		return nil, nil
	}
	fo := c.RedisFailover
	// The bounds of the Keeper's own Redis commands.
	var tuned redis.Options
	tokenkeeper.TuneRedis(&tuned, c.LockTTL)
	timeout := tuned.ReadTimeout
	clients := make([]*redis.SentinelClient, len(fo.SentinelAddrs))
	for i, addr := range fo.SentinelAddrs {
		clients[i] = redis.NewSentinelClient(&redis.Options{
			Addr: addr, Username: fo.SentinelUsername, Password: fo.SentinelPassword, TLSConfig: fo.TLSConfig,
			DialTimeout: timeout, ReadTimeout: timeout, WriteTimeout: timeout, ContextTimeoutEnabled: true,
			MaxRetries: -1, DisableIdentity: true,
		})
	}
	ask := func(ctx context.Context) (string, error) {
		ids := make([]string, len(clients))
		errs := make([]error, len(clients))
		var wg sync.WaitGroup
		for i, sc := range clients {
			wg.Go(func() {
				m, err := sc.Master(ctx, fo.MasterName).Result()
				ids[i], errs[i] = m["runid"], err
			})
		}
		wg.Wait()
		votes := map[string]int{}
		for i, id := range ids {
			if errs[i] == nil && id != "" {
				votes[id]++
			}
		}
		best, n, tie := "", 0, false
		for id, v := range votes {
			switch {
			case v > n:
				best, n, tie = id, v, false
			case v == n:
				tie = true
			}
		}
		if n == 0 {
			return "", errors.Join(errs...)
		}
		if tie {
			return "", nil
		}
		return best, nil
	}
	closeAll := func() error {
		var errs []error
		for _, sc := range clients {
			errs = append(errs, sc.Close())
		}
		return errors.Join(errs...)
	}
	return ask, closeAll
}
