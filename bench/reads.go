package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/redis/go-redis/v9"

	"github.com/tokenkeeper/tokenkeeper/cache"
)

// The three handlers of figure 1, each served by its own helper process
// (this binary, run as `serve-handler -kind ...`) with the same server
// setup.
const (
	kindTokenkeeper = "tokenkeeper" // the httpapi server over a cache.Store kept by a refresher
	kindStatic      = "static"      // (a) echo answering a constant JSON body of the same size
	kindNaive       = "naive"       // (b) echo reading the token from Redis on every request
	kindDressed     = "dressed"     // (a′) (a) wearing tokenkeeper's headers, on its server's limits
)

var kinds = []string{kindTokenkeeper, kindStatic, kindNaive, kindDressed}

// kindLabel names a handler in tables and the plot.
func kindLabel(k string) string {
	switch k {
	case kindStatic:
		return "(a) static echo"
	case kindNaive:
		return "(b) Redis per read"
	case kindDressed:
		return "(a′) dressed echo"
	default:
		return "tokenkeeper"
	}
}

// serveBare serves h on ln until ctx ends with net/http's defaults: no
// timeouts, no header limit beyond the default. The baselines run on it,
// and tokenkeeper runs on its own Serve (httpapi's limits, its
// connection wrapper): the gap between the two is all of what tokenkeeper
// does per request that a bare handler does not.
func serveBare(ctx context.Context, ln net.Listener, h http.Handler) error {
	return serveUntil(ctx, ln, &http.Server{Handler: h})
}

// serveSame serves h on ln until ctx ends with the limits httpapi's Serve
// applies (an answer within the refresh timeout, 30s, + 10s), for the
// harness's fake upstreams and the dressed baseline (a′).
func serveSame(ctx context.Context, ln net.Listener, h http.Handler) error {
	return serveUntil(ctx, ln, &http.Server{
		Handler: h, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 5 * time.Second,
		WriteTimeout: 40 * time.Second, IdleTimeout: 2 * time.Minute, MaxHeaderBytes: 16 << 10,
	})
}

// serveUntil runs srv on ln until ctx ends, then shuts it down.
func serveUntil(ctx context.Context, ln net.Listener, srv *http.Server) error {
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return srv.Shutdown(sctx)
}

// staticEcho is the baselines' echo handler: the token route answering a
// constant body of the size tokenkeeper's answers have, with header's
// values (the map's keys canonical, assigned as tokenkeeper assigns its
// own) on each answer.
func staticEcho(header http.Header) *echo.Echo {
	now := time.Now()
	body := tokenBody(nil, benchToken, now.Add(time.Hour).UnixMilli(), now.UnixMilli())
	e := echo.New()
	e.GET("/v1/tokens/:name", func(c echo.Context) error {
		h := c.Response().Header()
		for k, v := range header {
			h[k] = v
		}
		return c.JSONBlob(http.StatusOK, body)
	})
	return e
}

// tokenBody is an answer of the token route, as httpapi writes it, for a
// token that expires at exp (Unix milliseconds).
func tokenBody(b []byte, value string, exp, nowMs int64) []byte {
	b = append(b, `{"name":"liveness","token":"`...)
	b = append(b, value...) // benchToken needs no escaping
	b = append(b, `","expires_at":"`...)
	b = time.UnixMilli(exp).UTC().Truncate(time.Second).AppendFormat(b, time.RFC3339)
	b = append(b, `","expires_in":`...)
	b = strconv.AppendInt(b, max(exp-nowMs, 0)/1000, 10)
	return append(b, "}\n"...)
}

// runServeHandler is the helper process: it serves one kind of handler
// on -listen until SIGTERM; with -pprof, net/http/pprof on that address
// too, for profiling the read path under wrk.
func runServeHandler(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("serve-handler", flag.ContinueOnError)
	kind := fs.String("kind", kindTokenkeeper, "tokenkeeper, static or naive")
	listen := fs.String("listen", "127.0.0.1:0", "listen address")
	redisAddr := fs.String("redis", "", "redis-server address")
	pprofAddr := fs.String("pprof", "", "serve net/http/pprof on this address")
	traced := fs.Bool("traced", false, "tokenkeeper: trace with the SDK, its sampler from OTEL_TRACES_SAMPLER (figure 13)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *pprofAddr != "" {
		mux := http.NewServeMux()
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		pln, err := net.Listen("tcp", *pprofAddr)
		if err != nil {
			return err
		}
		go func() { _ = serveBare(ctx, pln, mux) }()
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	switch *kind {
	case kindTokenkeeper:
		limit, _ := strconv.ParseFloat(benchRateLimit, 64)
		r, err := startReplica(replicaConfig{
			Redis: &redis.Options{Addr: *redisAddr}, Instance: "bench",
			Source: &constSource{lifetime: time.Hour}, RateLimit: limit, Log: log,
		}.traced(*traced))
		if err != nil {
			return err
		}
		defer r.Stop()
		return r.keeper.Serve(ctx, ln) // the server `tokenkeeper serve` runs
	case kindStatic:
		return serveBare(ctx, ln, staticEcho(nil))
	case kindDressed:
		// What any server must do that answers as tokenkeeper does, and
		// nothing else: its response headers (the security headers, the
		// instance and the generation) and its server's timeouts and
		// header limit. tokenkeeper's gap to (a′) is its own work per read
		// (the key check, the rate limiter, the metrics, the token's
		// countdown); (a′)'s gap to (a) is net/http's for those headers
		// and timeouts.
		return serveSame(ctx, ln, staticEcho(http.Header{
			"X-Tokenkeeper-Instance":   {"bench"},
			"X-Content-Type-Options":   {"nosniff"},
			"X-Frame-Options":          {"DENY"},
			"Referrer-Policy":          {"no-referrer"},
			"Cache-Control":            {"no-store"},
			"X-Tokenkeeper-Generation": {"1"},
		}))
	case kindNaive:
		rdb := redis.NewClient(&redis.Options{Addr: *redisAddr})
		defer rdb.Close()
		key := cache.KeysFor("liveness").Token
		e := echo.New()
		e.GET("/v1/tokens/:name", func(c echo.Context) error {
			f, err := rdb.HMGet(c.Request().Context(), key, "v", "exp").Result()
			if err != nil {
				return c.JSONBlob(http.StatusServiceUnavailable, []byte(`{"error":{"code":"unavailable"}}`))
			}
			v, _ := f[0].(string)
			es, _ := f[1].(string)
			exp, _ := strconv.ParseInt(es, 10, 64)
			if v == "" {
				return c.JSONBlob(http.StatusServiceUnavailable, []byte(`{"error":{"code":"no_token"}}`))
			}
			return c.JSONBlob(http.StatusOK, tokenBody(make([]byte, 0, 256), v, exp, time.Now().UnixMilli()))
		})
		return serveBare(ctx, ln, e)
	default:
		return fmt.Errorf("unknown kind %q", *kind)
	}
}

// readCell is one handler at one concurrency: the median of the rounds.
type readCell struct {
	RPS      float64
	P50, P99 time.Duration
}

// readsResult is figures 1 and 2.
type readsResult struct {
	Conc  []int
	Cells map[string][]readCell // by kind, by concurrency index
	// Ratios by concurrency index, each the median of the ratios within
	// a round (the handlers ran back to back), which the machine's
	// changing load disturbs less than a ratio of medians.
	RatioA, RatioB, P99RatioA, CeilingAB []float64
	// RatioDressed is tokenkeeper's to (a′), CeilingDressed (a′)'s to (a):
	// the part of the gap to (a) that any server answering with
	// tokenkeeper's headers and limits pays.
	RatioDressed, CeilingDressed []float64
	// CPUPerRead is the server process's CPU time (user and system) per
	// request, by kind and concurrency index: the median of the rounds.
	// Less disturbed by other load on the machine than throughput.
	CPUPerRead map[string][]time.Duration
	// Profile is the CPU and allocation profile of the read path (text).
	Profile string
	// ProfileFiles are the CPU profiles behind Profile (pprof's gzipped
	// protobuf, in the work folder), by the name they are kept under in
	// bench/profiles.
	ProfileFiles map[string]string
	// Figure 2: Redis commands per read of tokenkeeper, background
	// (measured at rest) subtracted, and of the naive handler.
	CmdsPerRead, NaiveCmdsPerRead float64
	TKCommands                    int64   // commands counted during tokenkeeper's runs
	TKReads                       int64   // reads served in those runs
	TKRunSeconds                  float64 // length of those runs
	RestRate                      float64 // commands per second at rest, same setup
	TKCommandMix                  string
	BodyBytes                     int
}

// readsConfig sizes figures 1 and 2.
type readsConfig struct {
	Conc         []int
	Duration     time.Duration // of one wrk run
	Rounds       int           // each cell is the median of this many runs
	Warmup       time.Duration
	RestDuration time.Duration // quiet interval for the background rate
	// ProfileDuration is how long the read path is profiled under wrk
	// after the rounds (tokenkeeper's CPU and allocations, (a)'s CPU);
	// zero: not profiled.
	ProfileDuration time.Duration
}

// measureReads runs figures 1 and 2.
func measureReads(ctx context.Context, work, self string, cfg readsConfig, say func(string, ...any)) (*readsResult, error) {
	rs, err := startRedis(ctx, work, "redis-reads")
	if err != nil {
		return nil, err
	}
	defer rs.Stop()

	client := &http.Client{Timeout: 2 * time.Second}
	urls := map[string]string{}
	pprofURLs := map[string]string{}
	pids := map[string]int{}
	var helpers []*proc
	defer func() {
		for _, p := range helpers {
			p.Stop(5 * time.Second)
		}
	}()
	for _, k := range kinds { // tokenkeeper first: it stores the token the naive handler reads
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		pport, err := freePort()
		if err != nil {
			return nil, err
		}
		paddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(pport))
		pprofURLs[k] = "http://" + paddr + "/debug/pprof/"
		p, err := startProc(work, "handler-"+k, nil, self, "serve-handler", "-kind", k, "-listen", addr, "-redis", rs.Addr, "-pprof", paddr)
		if err != nil {
			return nil, err
		}
		helpers = append(helpers, p)
		pids[k] = p.Pid()
		url := "http://" + addr + "/v1/tokens/liveness"
		urls[k] = url
		if err := waitServing(ctx, client, url, k, p); err != nil {
			return nil, err
		}
	}

	// Same answer size from each, or the comparison is unfair.
	res := &readsResult{Conc: cfg.Conc, Cells: map[string][]readCell{}}
	for _, k := range kinds {
		n, err := answerSize(client, urls[k])
		if err != nil {
			return nil, fmt.Errorf("%s: %w", k, err)
		}
		if res.BodyBytes == 0 {
			res.BodyBytes = n
		} else if d := n - res.BodyBytes; d < -1 || d > 1 {
			return nil, fmt.Errorf("%s answers %d bytes, tokenkeeper %d: the baselines must answer the same size", k, n, res.BodyBytes)
		}
	}

	header := "Authorization: Bearer " + benchKey
	top := slices.Max(cfg.Conc)
	for _, k := range kinds {
		say("  warm-up %s", kindLabel(k))
		if _, err := runWrk(ctx, urls[k], top, cfg.Warmup, header); err != nil {
			return nil, err
		}
	}

	// Background: what the tokenkeeper helper (the only one with
	// background work) sends Redis at rest.
	time.Sleep(500 * time.Millisecond)
	before, err := rs.Commands(ctx)
	if err != nil {
		return nil, err
	}
	t0 := time.Now()
	time.Sleep(cfg.RestDuration)
	after, err := rs.Commands(ctx)
	if err != nil {
		return nil, err
	}
	res.RestRate = float64(after.Sub(before).Total()) / time.Since(t0).Seconds()

	type sample struct {
		rps      float64
		p50, p99 time.Duration
		cpu      time.Duration // the server's, per request
	}
	samples := map[string][][]sample{}
	for _, k := range kinds {
		samples[k] = make([][]sample, len(cfg.Conc))
	}
	var naiveCmds, naiveReads int64
	var naiveSecs float64
	tkMix := commandCounts{}
	for round := range cfg.Rounds {
		for ci, c := range cfg.Conc {
			order := slices.Clone(kinds)
			rot := (round + ci) % len(order) // no handler always runs first
			order = append(order[rot:], order[:rot]...)
			for _, k := range order {
				before, err := rs.Commands(ctx)
				if err != nil {
					return nil, err
				}
				t0 := time.Now()
				cpu0, err := cpuTime(pids[k])
				if err != nil {
					return nil, err
				}
				w, err := runWrk(ctx, urls[k], c, cfg.Duration, header)
				if err != nil {
					return nil, err
				}
				secs := time.Since(t0).Seconds()
				cpu1, err := cpuTime(pids[k])
				if err != nil {
					return nil, err
				}
				after, err := rs.Commands(ctx)
				if err != nil {
					return nil, err
				}
				delta := after.Sub(before)
				switch k {
				case kindTokenkeeper:
					res.TKCommands += delta.Total()
					res.TKReads += w.Requests
					res.TKRunSeconds += secs
					for name, n := range delta {
						tkMix[name] += n
					}
				case kindNaive:
					naiveCmds += delta.Total()
					naiveReads += w.Requests
					naiveSecs += secs
				}
				perReq := (cpu1 - cpu0) / time.Duration(max(w.Requests, 1))
				samples[k][ci] = append(samples[k][ci], sample{w.RPS, w.P50, w.P99, perReq})
				say("  round %d c=%-4d %-20s %9.0f req/s  p50 %-9v p99 %-9v CPU %v/req", round+1, c, kindLabel(k), w.RPS, w.P50, w.P99, perReq)
			}
		}
	}
	res.CPUPerRead = map[string][]time.Duration{}
	for _, k := range kinds {
		for ci := range cfg.Conc {
			s := samples[k][ci]
			res.CPUPerRead[k] = append(res.CPUPerRead[k], time.Duration(median(mapSlice(s, func(x sample) float64 { return float64(x.cpu) }))))
			res.Cells[k] = append(res.Cells[k], readCell{
				RPS: median(mapSlice(s, func(x sample) float64 { return x.rps })),
				P50: time.Duration(median(mapSlice(s, func(x sample) float64 { return float64(x.p50) }))),
				P99: time.Duration(median(mapSlice(s, func(x sample) float64 { return float64(x.p99) }))),
			})
		}
	}
	for ci := range cfg.Conc {
		tk, a, b, d := samples[kindTokenkeeper][ci], samples[kindStatic][ci], samples[kindNaive][ci], samples[kindDressed][ci]
		var ra, rb, rp, ab, rd, da []float64
		for i := range tk {
			ra = append(ra, tk[i].rps/a[i].rps)
			rb = append(rb, tk[i].rps/b[i].rps)
			rp = append(rp, float64(tk[i].p99)/float64(a[i].p99))
			ab = append(ab, a[i].rps/b[i].rps)
			rd = append(rd, tk[i].rps/d[i].rps)
			da = append(da, d[i].rps/a[i].rps)
		}
		res.RatioDressed = append(res.RatioDressed, median(rd))
		res.CeilingDressed = append(res.CeilingDressed, median(da))
		res.RatioA = append(res.RatioA, median(ra))
		res.RatioB = append(res.RatioB, median(rb))
		res.P99RatioA = append(res.P99RatioA, median(rp))
		res.CeilingAB = append(res.CeilingAB, median(ab))
	}
	if res.TKReads > 0 {
		res.CmdsPerRead = max(float64(res.TKCommands)-res.RestRate*res.TKRunSeconds, 0) / float64(res.TKReads)
	}
	if naiveReads > 0 {
		res.NaiveCmdsPerRead = max(float64(naiveCmds)-res.RestRate*naiveSecs, 0) / float64(naiveReads)
	}
	res.TKCommandMix = tkMix.String()
	if cfg.ProfileDuration > 0 {
		say("  profiling the read path (%v under wrk, %d connections)", cfg.ProfileDuration, top)
		if res.Profile, res.ProfileFiles, err = profileReads(ctx, work, self, urls, pprofURLs, top, cfg.ProfileDuration, header); err != nil {
			return nil, err
		}
	}
	for _, p := range helpers {
		if p.Exited() {
			return nil, fmt.Errorf("%s exited during the runs:\n%s", p.name, p.Tail())
		}
	}
	return res, nil
}

// answerSize fetches url once and returns the body's length.
func answerSize(client *http.Client, url string) (int, error) {
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	req.Header.Set("Authorization", "Bearer "+benchKey)
	res, err := client.Do(req)
	if err != nil {
		return 0, err
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		return 0, err
	}
	if res.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("status %d: %s", res.StatusCode, b)
	}
	if !strings.Contains(string(b), benchToken) {
		return 0, errors.New("the answer does not hold the token")
	}
	return len(b), nil
}

func mapSlice[T, U any](s []T, f func(T) U) []U {
	out := make([]U, len(s))
	for i, v := range s {
		out[i] = f(v)
	}
	return out
}

// median of xs (the mean of the middle two for an even count).
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// quantile of sorted xs, nearest rank.
func quantile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(q*float64(len(sorted))+0.999999) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

// cpuTime is the CPU time (user and system) the process pid has used.
func cpuTime(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The fields after the command name, which is in parentheses and may
	// hold spaces: utime and stime are the 12th and 13th of them.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: unexpected %q", pid, b)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: unexpected %q", pid, b)
	}
	u, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("/proc/%d/stat: %w", pid, err)
	}
	const ticksPerSecond = 100 // USER_HZ on Linux
	return time.Duration(u+st) * time.Second / ticksPerSecond, nil
}

// profileReads profiles tokenkeeper's helper (CPU, then allocations) and
// the static baseline's (CPU) while wrk loads each with conns
// connections for d, and returns the top functions of each as text, and
// the CPU profiles' files by the name they are kept under.
func profileReads(ctx context.Context, work, self string, urls, pprofURLs map[string]string, conns int, d time.Duration, header string) (string, map[string]string, error) {
	var out strings.Builder
	files := map[string]string{}
	secs := int(d / time.Second)
	for _, p := range []struct{ kind, profile, flags, what, keep string }{
		{kindTokenkeeper, "profile", "-top -nodecount=40", "CPU, flat", "reads-tokenkeeper.cpu.pb.gz"},
		{kindTokenkeeper, "profile", "-top -cum -nodecount=60", "CPU, cumulative", ""},
		{kindTokenkeeper, "allocs", "-top -sample_index=alloc_objects -nodecount=25", "allocations (objects)", ""},
		{kindStatic, "profile", "-top -cum -nodecount=40", "CPU, cumulative", "reads-static-echo.cpu.pb.gz"},
	} {
		file := filepath.Join(work, "profile-"+p.kind+"-"+p.profile+".pb.gz")
		if p.keep != "" {
			files[p.keep] = file
		}
		wrkDone := make(chan error, 1)
		go func() {
			_, err := runWrk(ctx, urls[p.kind], conns, d+time.Second, header)
			wrkDone <- err
		}()
		time.Sleep(500 * time.Millisecond)
		err := fetchTo(ctx, fmt.Sprintf("%s%s?seconds=%d", pprofURLs[p.kind], p.profile, secs), file, d+10*time.Second)
		if werr := <-wrkDone; err == nil {
			err = werr
		}
		if err != nil {
			return "", nil, fmt.Errorf("profile of %s: %w", p.kind, err)
		}
		args := append([]string{"tool", "pprof"}, strings.Fields(p.flags)...)
		cmd := exec.CommandContext(ctx, "go", append(args, self, file)...)
		top, err := cmd.Output()
		if err != nil {
			return "", nil, fmt.Errorf("go tool pprof %s: %w", p.flags, err)
		}
		fmt.Fprintf(&out, "=== %s: %s (go tool pprof %s), %d s under wrk -c %d\n\n%s\n", kindLabel(p.kind), p.what, p.flags, secs, conns, trimPprof(string(top)))
	}
	return out.String(), files, nil
}

// trimPprof drops the lines of a pprof report that name the local files.
func trimPprof(s string) string {
	var keep []string
	for line := range strings.SplitSeq(s, "\n") {
		if strings.HasPrefix(line, "File: ") || strings.HasPrefix(line, "Build ID: ") {
			continue
		}
		keep = append(keep, line)
	}
	return strings.Join(keep, "\n")
}

// fetchTo saves the body of GET url into file.
func fetchTo(ctx context.Context, url, file string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, res.Status)
	}
	f, err := os.Create(file)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, res.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// waitServing waits until the handler p started, kind k, answers a token
// read at url with 200.
func waitServing(ctx context.Context, client *http.Client, url, k string, p *proc) error {
	ok := func() bool {
		req, _ := http.NewRequest(http.MethodGet, url, nil)
		req.Header.Set("Authorization", "Bearer "+benchKey)
		res, err := client.Do(req)
		if err != nil {
			return false
		}
		res.Body.Close()
		return res.StatusCode == http.StatusOK
	}
	if err := waitFor(ctx, 20*time.Second, 50*time.Millisecond, k+" handler serving", ok); err != nil {
		return fmt.Errorf("%w\n%s", err, p.Tail())
	}
	return nil
}
