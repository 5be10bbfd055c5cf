package main

import (
	"context"
	"errors"
	"net"
	"runtime/debug"
	"strings"

	"runtime"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/redis/go-redis/v9"
)

// version is the build's version: set with -ldflags "-X main.version=v1.2.3",
// else the module version Go recorded, else "dev".
var version string

func buildVersion() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "dev"
}

// newRegistry returns the replica's metrics registry: Go and process
// metrics, tokenkeeper_replica_info, and Redis errors counted by a hook on
// rdb. The packages register their own families in it (cache, refresher,
// upstream, httpapi).
func newRegistry(cfg Config, rdb redis.UniversalClient) *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	info := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "tokenkeeper_replica_info",
		Help:        "Always 1; its labels name this replica (TOKENKEEPER_INSTANCE_ID) and its build.",
		ConstLabels: prometheus.Labels{"replica": cfg.Instance, "version": buildVersion(), "commit": buildCommit(), "go_version": runtime.Version()},
	})
	info.Set(1)
	reg.MustRegister(info)
	errs := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "tokenkeeper_redis_errors_total",
		Help: "Redis calls of this replica that failed (a missing key is not a failure), by command (\"dial\" for connections).",
	}, []string{"command"})
	// The commands a replica sends; others appear when they fail.
	for _, c := range []string{"dial", "evalsha", "eval", "get", "publish", "subscribe", "spublish", "ssubscribe", "ping"} {
		errs.WithLabelValues(c)
	}
	reg.MustRegister(errs)
	rdb.AddHook(redisErrorHook{errs: errs})
	return reg
}

// redisErrorHook counts failed Redis calls. It sees every command of the
// client, the pub/sub connection's dials included.
type redisErrorHook struct{ errs *prometheus.CounterVec }

func (h redisErrorHook) DialHook(next redis.DialHook) redis.DialHook {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		conn, err := next(ctx, network, addr)
		if err != nil && ctx.Err() == nil {
			h.errs.WithLabelValues("dial").Inc()
		}
		return conn, err
	}
}

func (h redisErrorHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		h.count(ctx, cmd, err)
		return err
	}
}

func (h redisErrorHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		err := next(ctx, cmds)
		for _, cmd := range cmds {
			h.count(ctx, cmd, cmd.Err())
		}
		return err
	}
}

func (h redisErrorHook) count(ctx context.Context, cmd redis.Cmder, err error) {
	switch {
	case err == nil, errors.Is(err, redis.Nil), ctx.Err() != nil:
	// go-redis retries a script with EVAL after NOSCRIPT: not a failure.
	case strings.HasPrefix(err.Error(), "NOSCRIPT"):
	// The connection handshake (HELLO, CLIENT SETINFO) may be refused by
	// older servers; go-redis carries on without it.
	case strings.EqualFold(cmd.Name(), "client"), strings.EqualFold(cmd.Name(), "hello"):
	default:
		h.errs.WithLabelValues(strings.ToLower(cmd.Name())).Inc()
	}
}
