package main

// Figure 13: the read path with tracing off (the default) and on at a 1%
// sampling ratio, each as a ratio to the bare server (a) of figure 1,
// measured back to back in one run.

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strconv"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// The handlers of figure 13: (a), and tokenkeeper with tracing off and on.
const (
	kindTracedOff = "tokenkeeper"        // no TracerProvider: the default
	kindTraced1   = "tokenkeeper-traced" // an SDK sampling 1% of the requests
)

var tracingKinds = []string{kindStatic, kindTracedOff, kindTraced1}

// tracingEnv configures the traced helper as an operator would, with the
// standard variables the SDK reads: the sampler and its ratio. Requests
// from wrk carry no traceparent, so each is a root and the ratio decides.
var tracingEnv = []string{"OTEL_TRACES_SAMPLER=parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG=0.01"}

// tracingResult is figure 13, by concurrency index.
type tracingResult struct {
	Conc []int
	// Ratios to (a) within each round, medians of the rounds.
	RatioOff, Ratio1 []float64
	// Cells: by kind, by concurrency index (medians of the rounds).
	Cells map[string][]readCell
}

// discardExporter drops the spans: the figure measures what tracing costs
// the read path (sampling, the server span, the batch queue), not a
// collector's network.
type discardExporter struct{}

func (discardExporter) ExportSpans(context.Context, []sdktrace.ReadOnlySpan) error { return nil }
func (discardExporter) Shutdown(context.Context) error                             { return nil }

// benchTracerProvider is the traced helper's provider: the SDK's, with its
// sampler from the environment (tracingEnv) and a batch processor, as
// `tokenkeeper serve` builds it.
func benchTracerProvider() *sdktrace.TracerProvider {
	return sdktrace.NewTracerProvider(sdktrace.WithBatcher(discardExporter{}))
}

// measureTracing runs figure 13.
func measureTracing(ctx context.Context, work, self string, cfg readsConfig, say func(string, ...any)) (*tracingResult, error) {
	rs, err := startRedis(ctx, work, "redis-tracing")
	if err != nil {
		return nil, err
	}
	defer rs.Stop()
	client := &http.Client{Timeout: 2 * time.Second}
	urls := map[string]string{}
	var helpers []*proc
	defer func() {
		for _, p := range helpers {
			p.Stop(5 * time.Second)
		}
	}()
	for _, k := range []string{kindTracedOff, kindTraced1, kindStatic} {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		args := []string{"serve-handler", "-kind", kindTokenkeeper, "-listen", addr, "-redis", rs.Addr}
		var env []string
		switch k {
		case kindStatic:
			args[2] = kindStatic
		case kindTraced1:
			args = append(args, "-traced")
			env = tracingEnv
		}
		p, err := startProc(work, "tracing-"+k, env, self, args...)
		if err != nil {
			return nil, err
		}
		helpers = append(helpers, p)
		url := "http://" + addr + "/v1/tokens/liveness"
		urls[k] = url
		if err := waitServing(ctx, client, url, k, p); err != nil {
			return nil, err
		}
	}
	header := "Authorization: Bearer " + benchKey
	top := slices.Max(cfg.Conc)
	for _, k := range tracingKinds {
		if _, err := runWrk(ctx, urls[k], top, cfg.Warmup, header); err != nil {
			return nil, err
		}
	}
	res := &tracingResult{Conc: cfg.Conc, Cells: map[string][]readCell{}}
	type sample struct {
		rps      float64
		p50, p99 time.Duration
	}
	samples := map[string][][]sample{}
	for _, k := range tracingKinds {
		samples[k] = make([][]sample, len(cfg.Conc))
	}
	for round := range cfg.Rounds {
		for ci, c := range cfg.Conc {
			order := slices.Clone(tracingKinds)
			rot := (round + ci) % len(order) // no handler always runs first
			order = append(order[rot:], order[:rot]...)
			for _, k := range order {
				w, err := runWrk(ctx, urls[k], c, cfg.Duration, header)
				if err != nil {
					return nil, err
				}
				if w.Non2xx > 0 {
					return nil, fmt.Errorf("%s: %d answers other than 2xx", k, w.Non2xx)
				}
				samples[k][ci] = append(samples[k][ci], sample{w.RPS, w.P50, w.P99})
				say("  round %d c=%-4d %-28s %9.0f req/s  p50 %-9v p99 %v", round+1, c, tracingLabel(k), w.RPS, w.P50, w.P99)
			}
		}
	}
	for ci := range cfg.Conc {
		for _, k := range tracingKinds {
			s := samples[k][ci]
			res.Cells[k] = append(res.Cells[k], readCell{
				RPS: median(mapSlice(s, func(x sample) float64 { return x.rps })),
				P50: time.Duration(median(mapSlice(s, func(x sample) float64 { return float64(x.p50) }))),
				P99: time.Duration(median(mapSlice(s, func(x sample) float64 { return float64(x.p99) }))),
			})
		}
		a, off, on := samples[kindStatic][ci], samples[kindTracedOff][ci], samples[kindTraced1][ci]
		var ro, r1 []float64
		for i := range a {
			ro = append(ro, off[i].rps/a[i].rps)
			r1 = append(r1, on[i].rps/a[i].rps)
		}
		res.RatioOff = append(res.RatioOff, median(ro))
		res.Ratio1 = append(res.Ratio1, median(r1))
	}
	for _, p := range helpers {
		if p.Exited() {
			return nil, fmt.Errorf("%s exited during the runs:\n%s", p.name, p.Tail())
		}
	}
	return res, nil
}

// tracingLabel names a handler of figure 13.
func tracingLabel(k string) string {
	switch k {
	case kindStatic:
		return "(a) static echo"
	case kindTraced1:
		return "tokenkeeper, tracing at 1%"
	default:
		return "tokenkeeper, tracing off"
	}
}
