package cache

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/tokenkeeper/tokenkeeper/internal/tracing"
)

// errReplication means that fewer replicas than asked acknowledged a write
// in time. The write stands on the master; a failover before the replicas
// catch up may lose it.
var errReplication = errors.New("cache: the write reached fewer replicas than asked")

// Replicated runs the commands queue adds, then WAIT for rep.Replicas
// replicas, on one connection to the master that owns key (WAIT counts the
// writes of its own connection). In Redis Cluster that is the key's
// slot's master. It returns the pipeline's first error, or errReplication
// when too few replicas acknowledged; the queued commands hold their own
// results.
//
// Under a span of the caller's that records, it makes a span of its own,
// "redis WAIT", with the replicas asked for and those that acknowledged.
func Replicated(ctx context.Context, rdb any, key string, rep Replication, queue func(redis.Pipeliner)) (err error) {
	ctx, span := tracing.Child(ctx, "redis WAIT", trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(
		tracing.DBSystem.String("redis"), tracing.DBOperation.String("WAIT"),
		attribute.Int("tokenkeeper.replicas_wanted", rep.Replicas), attribute.Int64("tokenkeeper.wait_timeout_ms", rep.Timeout.Milliseconds())))
	defer func() {
		tracing.Fail(span, err)
		span.End()
	}()
	var pipe redis.Pipeliner
	switch c := rdb.(type) {
	case *redis.ClusterClient:
		node, err := c.MasterForKey(ctx, key)
		if err != nil {
			return fmt.Errorf("cache: find the master of %s: %w", key, err)
		}
		pipe = node.Pipeline()
	case interface{ Pipeline() redis.Pipeliner }:
		pipe = c.Pipeline()
	default:
		return errors.New("cache: waiting for replicas needs a Redis client with pipelines")
	}
	queue(pipe)
	wait := pipe.Do(ctx, "WAIT", rep.Replicas, max(rep.Timeout.Milliseconds(), 1))
	if _, err := pipe.Exec(ctx); err != nil {
		return err
	}
	acked, err := wait.Int64()
	if err != nil {
		return fmt.Errorf("cache: WAIT: %w", err)
	}
	span.SetAttributes(attribute.Int64("tokenkeeper.replicas_acked", acked))
	if acked < int64(rep.Replicas) {
		return fmt.Errorf("%w: %d of %d within %v", errReplication, acked, rep.Replicas, rep.Timeout)
	}
	return nil
}

// replicated is Replicated for the token's key, with a short wait logged
// and counted.
func (s *Store) replicated(ctx context.Context, queue func(redis.Pipeliner)) error {
	start := s.cfg.Clock.Now()
	err := Replicated(ctx, s.rdb, s.cfg.Keys.Token, s.cfg.Replication, queue)
	if errors.Is(err, errReplication) {
		s.metrics.anomaly(anomalyReplicationShort)
		s.log.Warn("the token write reached fewer Redis replicas than configured; a failover now could lose it (the leader writes it back from memory)",
			"error", err, "waited", s.cfg.Clock.Now().Sub(start).Round(time.Millisecond))
	}
	return err
}
