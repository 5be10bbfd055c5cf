package tokenkeeper

import (
	"context"
	"fmt"
	"strings"
	"time"
)

// Managed Redis services (ElastiCache, Memorystore, Azure Cache) and Valkey
// may rename or disable commands, and an ACL user may be refused some. The
// Keeper looks at start for the commands it runs (COMMAND INFO): one it
// needs and cannot find stops it with an error that names the command; one
// it uses only when present it does without, and says so once.

// redisCommand is a command tokenkeeper runs, and what it is for.
type redisCommand struct {
	name string
	use  string
}

// requiredCommands returns the commands the Keeper cannot work without,
// and optionalCommands those it does without (with what it loses), for
// its configuration.
func (k *Keeper) requiredCommands() []redisCommand {
	cmds := []redisCommand{
		{"evalsha", "the fenced write, the reads and the lock (Lua scripts)"},
		{"eval", "loading a script the server does not know yet"},
		{"get", "reading the lock's holder"},
		{"pttl", "reading how long the lock has left"},
		{"hget", "polling the token's expiry"},
		{"mget", "polling every token's expiry stamp at once"},
		{"ping", "checking connections"},
	}
	if k.cfg.RedisMode == RedisCluster {
		cmds = append(cmds, redisCommand{"cluster", "the cluster's slot map"})
	} else {
		cmds = append(cmds,
			redisCommand{"publish", "announcing a new token"},
			redisCommand{"subscribe", "receiving new tokens"})
	}
	if k.cfg.RedisWait.Replicas > 0 {
		cmds = append(cmds, redisCommand{"wait", "TOKENKEEPER_REDIS_WAIT_REPLICAS"})
	}
	for _, t := range k.tokens {
		if t.cfg.PerDevice {
			cmds = append(cmds, redisCommand{"incr", "counting per-device mints"}, redisCommand{"expire", "counting per-device mints"})
			break
		}
	}
	return cmds
}

func (k *Keeper) optionalCommands() []redisCommand {
	cmds := []redisCommand{
		{"evalsha_ro", "reads while Redis pauses writes (CLIENT PAUSE WRITE) wait for the pause to end"},
	}
	switch k.cfg.RedisMode {
	case RedisCluster:
		cmds = append(cmds,
			redisCommand{"spublish", "events fall back to PUBLISH, which every node of the cluster forwards"},
			redisCommand{"ssubscribe", "events fall back to SUBSCRIBE"},
			redisCommand{"info", "a leader cannot see a failover replace its master (run id); it relies on the lock's fencing alone"})
	case RedisSentinel:
		cmds = append(cmds,
			redisCommand{"info", "a leader cannot see a failover replace its master (run id); it relies on the lock's fencing alone"})
	}
	return cmds
}

// checkCommands asks Redis which of the commands the Keeper runs it knows,
// and returns ErrRedisCommand naming the required ones it lacks; it logs
// once each optional one it lacks. When Redis does not answer, or refuses
// COMMAND itself, it checks nothing and returns nil: the Keeper starts
// with Redis down, and the commands fail by themselves, logged, if absent.
func (k *Keeper) checkCommands(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, max(k.cfg.LockTTL/4, time.Second))
	defer cancel()
	required, optional := k.requiredCommands(), k.optionalCommands()
	all := append(append([]redisCommand{}, required...), optional...)
	args := []any{"command", "info"}
	for _, c := range all {
		args = append(args, c.name)
	}
	p := k.cfg.Redis.Pipeline()
	cmd := p.Do(ctx, args...)
	if _, err := p.Exec(ctx); err != nil {
		k.log.Info("cannot ask Redis which commands it has (COMMAND INFO); not checking them", "error", err)
		return nil
	}
	infos, err := cmd.Slice()
	switch {
	case err != nil:
		k.log.Info("cannot read Redis's list of commands; not checking them", "error", err)
		return nil
	case len(infos) != len(all):
		k.log.Info("Redis answered COMMAND INFO with another number of entries than commands asked; not checking them",
			"asked", len(all), "answered", len(infos))
		return nil
	}
	var missing []string
	for i, c := range all {
		if infos[i] != nil {
			continue
		}
		if i < len(required) {
			missing = append(missing, fmt.Sprintf("%s (%s)", strings.ToUpper(c.name), c.use))
			continue
		}
		k.log.Warn("Redis lacks an optional command; working without it", "command", strings.ToUpper(c.name), "consequence", c.use)
	}
	if len(missing) > 0 {
		return fmt.Errorf("%w: %s; it may be renamed (rename-command) or disabled by the service: restore it", ErrRedisCommand, strings.Join(missing, ", "))
	}
	return nil
}
