package refresher

import (
	"context"
	"time"

	"github.com/redis/go-redis/v9"
)

// LockChecks reads the locks of a replica's tokens for their elections in
// few round trips: the checks asked while one pipeline is in flight go
// together in the next. A follower that no leader's beat told of the
// lock's lease reads the lock's time to live once per lock period; a
// replica keeping a hundred tokens that all lack a hint (a fleet starting,
// no leader elected yet) would otherwise send a hundred commands through
// its pool, each waiting for a connection, where one pipeline does.
//
// Create it with NewLockChecks, run it with Run, and give it to each
// token's Refresher (Config.LockChecks). Its methods are safe for
// concurrent use. Not for a Redis Cluster client: a pipeline there waits
// for its slowest shard, so a dead master would hold every token's check.
type LockChecks struct {
	rdb     pipeliner
	timeout time.Duration
	asks    chan lockCheck
}

// pipeliner is what LockChecks needs of a Redis client.
type pipeliner interface{ Pipeline() redis.Pipeliner }

// lockCheck is one lock's check: its key, and where its answer goes.
type lockCheck struct {
	key    string
	answer chan lockAnswer // buffered: Run never waits for the asker
}

type lockAnswer struct {
	left time.Duration
	err  error
}

// NewLockChecks returns LockChecks over rdb, each pipeline bounded by
// RedisTimeout(lockTTL).
func NewLockChecks(rdb pipeliner, lockTTL time.Duration) *LockChecks {
	return &LockChecks{rdb: rdb, timeout: RedisTimeout(lockTTL), asks: make(chan lockCheck, 64)}
}

// maxLockBatch bounds one pipeline.
const maxLockBatch = 1000

// Run answers the checks until ctx ends, then returns ctx's error. Checks
// asked when it does not run wait for it, or for their own context.
func (l *LockChecks) Run(ctx context.Context) error {
	var batch []lockCheck
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case c := <-l.asks:
			batch = append(batch[:0], c)
		}
	more:
		for len(batch) < maxLockBatch {
			select {
			case c := <-l.asks:
				batch = append(batch, c)
			default:
				break more
			}
		}
		l.send(ctx, batch)
	}
}

// send reads the time to live of every lock of batch in one pipeline and
// answers each check.
func (l *LockChecks) send(ctx context.Context, batch []lockCheck) {
	pctx, cancel := context.WithTimeout(ctx, l.timeout)
	defer cancel()
	pipe := l.rdb.Pipeline()
	cmds := make([]*redis.DurationCmd, len(batch))
	for i, c := range batch {
		cmds[i] = pipe.PTTL(pctx, c.key)
	}
	_, _ = pipe.Exec(pctx) // each command carries its own error
	for i, c := range batch {
		left, err := cmds[i].Result()
		c.answer <- lockAnswer{left, err}
	}
}

// pttl returns the time to live of the lock at key as PTTL does, once Run
// has read it with the other checks asked meanwhile.
func (l *LockChecks) pttl(ctx context.Context, key string) (time.Duration, error) {
	c := lockCheck{key: key, answer: make(chan lockAnswer, 1)}
	select {
	case l.asks <- c:
	case <-ctx.Done():
		return 0, ctx.Err()
	}
	select {
	case a := <-c.answer:
		return a.left, a.err
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}
