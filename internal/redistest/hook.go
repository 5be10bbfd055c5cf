package redistest

import (
	"context"

	"github.com/redis/go-redis/v9"
)

// OnCommand is a client hook (redis.Client.AddHook) that calls itself
// with each command the client sends, alone or in a pipeline, before
// sending it: a test counts the commands it cares about.
type OnCommand func(cmd redis.Cmder)

func (f OnCommand) DialHook(next redis.DialHook) redis.DialHook { return next }

func (f OnCommand) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		f(cmd)
		return next(ctx, cmd)
	}
}

func (f OnCommand) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		for _, c := range cmds {
			f(c)
		}
		return next(ctx, cmds)
	}
}
