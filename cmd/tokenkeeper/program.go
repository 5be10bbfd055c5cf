package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"time"

	"github.com/redis/go-redis/v9"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/tokenkeeper/tokenkeeper"
)

// Program is one replica: a tokenkeeper.Keeper with its own Redis client,
// metrics registry and listener. Create it with NewProgram, start it with
// Run, and Close it.
type Program struct {
	cfg            Config
	log            *slog.Logger
	rdb            redis.UniversalClient
	closeSentinels func() error // nil outside Sentinel mode
	keeper         *tokenkeeper.Keeper
	ln             net.Listener
	audit          io.Closer
	traces         *sdktrace.TracerProvider // nil when tracing is off
}

// NewProgram builds a replica and opens its listener, so Addr is known
// before Run. It makes no call to Redis or the upstream. A nil src means
// the RDP client configured by cfg.RDP.
func NewProgram(cfg Config, log *slog.Logger, src tokenkeeper.Source) (*Program, error) {
	audit, auditFile, err := openAudit(cfg.AuditLog)
	if err != nil {
		return nil, err
	}
	// Timeouts and connections follow from the lock TTL; a URL's own
	// timeouts win.
	rdb := cfg.newRedis(0)
	sentinelMaster, closeSentinels := cfg.sentinelMaster()
	closeAll := func() {
		rdb.Close()
		if closeSentinels != nil {
			closeSentinels()
		}
		auditFile.Close()
	}
	reg := newRegistry(cfg, rdb)
	traces, err := newTracerProvider(context.Background(), cfg.Instance)
	if err != nil {
		closeAll()
		return nil, err
	}
	if traces != nil {
		closeAll = func(close func()) func() {
			return func() { close(); shutdownTraces(traces) }
		}(closeAll)
		log.Info("tracing on: spans go to the exporter the OTEL_* variables name")
	}
	kcfg := cfg.keeperConfig()
	if traces != nil {
		kcfg.TracerProvider = traces
	}
	kcfg.HTTP.Security.Audit = audit
	kcfg.Redis, kcfg.Logger, kcfg.Registerer, kcfg.Gatherer = rdb, log, reg, reg
	kcfg.SentinelMaster = sentinelMaster
	if src != nil {
		kcfg.Source, kcfg.RDP = src, nil
	}
	k, err := tokenkeeper.New(kcfg)
	if err != nil {
		closeAll()
		return nil, err
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		closeAll()
		return nil, fmt.Errorf("TOKENKEEPER_LISTEN: %w", err)
	}
	tln, err := listenTLS(cfg, log, ln)
	if err != nil {
		ln.Close()
		closeAll()
		return nil, err
	}
	ln = tln
	auditConfiguration(audit, cfg, ln.Addr().String())
	return &Program{cfg: cfg, log: log, rdb: rdb, closeSentinels: closeSentinels, keeper: k, ln: ln, audit: auditFile, traces: traces}, nil
}

// Addr is the address the HTTP API listens on.
func (p *Program) Addr() string { return p.ln.Addr().String() }

// Run serves until ctx ends, then shuts down in order: the keeper releases
// the lock (so another replica leads at once) while the HTTP server goes
// on for the drain period with /readyz answering 503, then finishes the
// requests in flight. It returns the first failure of a part, or nil after
// a clean stop.
func (p *Program) Run(ctx context.Context) error {
	serve, stopServing := context.WithCancel(context.WithoutCancel(ctx))
	defer stopServing()
	p.log.Info("tokenkeeper starting", "instance", p.cfg.Instance, "listen", p.Addr(),
		"redis_mode", p.cfg.RedisMode, "redis", p.cfg.redisAddrs(), "upstream", p.cfg.RDP.BaseURL)

	keep, stopKeeping := context.WithCancel(ctx)
	defer stopKeeping()
	kept := make(chan error, 1)
	go func() { kept <- p.keeper.Run(keep) }()
	served := make(chan error, 1)
	go func() { served <- p.keeper.Serve(serve, p.ln) }()

	var err error
	select {
	case <-ctx.Done():
	case err = <-kept:
		kept <- err
	case err = <-served:
		served <- err
	}
	// A clean stop drains from its first moment: /readyz answers 503
	// before the lock is handed over, so no balancer learns of the new
	// leader before it learns this replica is going.
	draining := err == nil && ctx.Err() != nil && p.cfg.ShutdownDrain > 0
	if draining {
		p.keeper.Drain()
	}
	stopKeeping()
	if kerr := <-kept; err == nil && kerr != nil {
		err = fmt.Errorf("keeper: %w", kerr)
	}
	if draining && err == nil {
		p.log.Info("draining: /readyz answers 503 while requests are still served", "for", p.cfg.ShutdownDrain)
		select {
		case <-time.After(p.cfg.ShutdownDrain):
		case err = <-served:
			served <- err
		}
	}
	stopServing()
	if serr := <-served; err == nil && serr != nil {
		err = fmt.Errorf("http: %w", serr)
	}
	p.log.Info("tokenkeeper stopped", "instance", p.cfg.Instance)
	return err
}

// Close releases what NewProgram opened. Call it after Run returns.
func (p *Program) Close() error {
	p.ln.Close()
	p.audit.Close()
	err := p.rdb.Close()
	if p.closeSentinels != nil {
		err = errors.Join(err, p.closeSentinels())
	}
	if p.traces != nil {
		shutdownTraces(p.traces)
	}
	return err
}

// shutdownTraces sends the spans still batched, for 5 seconds at most.
func shutdownTraces(tp *sdktrace.TracerProvider) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = tp.Shutdown(ctx)
}
