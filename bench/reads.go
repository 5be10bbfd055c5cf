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
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/redis/go-redis/v9"

	"github.com/tokenkeeper/tokenkeeper/cache"
	"github.com/tokenkeeper/tokenkeeper/httpapi"
)

// The three handlers of figure 1, each served by its own helper process
// (this binary, run as `serve-handler -kind ...`) with the same server
// setup.
const (
	kindTokenkeeper = "tokenkeeper" // the httpapi server over a cache.Store kept by a refresher
	kindStatic      = "static"      // (a) echo answering a constant JSON body of the same size
	kindNaive       = "naive"       // (b) echo reading the token from Redis on every request
)

var kinds = []string{kindTokenkeeper, kindStatic, kindNaive}

// kindLabel names a handler in tables and the plot.
func kindLabel(k string) string {
	switch k {
	case kindStatic:
		return "(a) static echo"
	case kindNaive:
		return "(b) Redis per read"
	default:
		return "tokenkeeper"
	}
}

// Limits of httpapi.Server.Serve, repeated so the baselines get the same
// server: a baseline must differ from tokenkeeper only in its handler.
const (
	readHeaderTimeout = 5 * time.Second
	readTimeout       = 10 * time.Second
	writeTimeout      = httpapi.DefaultRefreshTimeout + 10*time.Second
	idleTimeout       = 2 * time.Minute
	maxHeaderBytes    = 16 << 10
)

// serveSame serves h on ln until ctx ends, with httpapi's limits.
func serveSame(ctx context.Context, ln net.Listener, h http.Handler) error {
	srv := &http.Server{
		Handler: h, ReadHeaderTimeout: readHeaderTimeout, ReadTimeout: readTimeout,
		WriteTimeout: writeTimeout, IdleTimeout: idleTimeout, MaxHeaderBytes: maxHeaderBytes,
	}
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

// Header values every handler sets, as httpapi does.
var (
	instanceValue = []string{"bench"}
	noStoreValue  = []string{"no-store"}
	nosniffValue  = []string{"nosniff"}
)

func setCommonHeaders(h http.Header) {
	h["X-Tokenkeeper-Instance"] = instanceValue
	h["X-Content-Type-Options"] = nosniffValue
	h["Cache-Control"] = noStoreValue
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
// on -listen until SIGTERM.
func runServeHandler(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("serve-handler", flag.ContinueOnError)
	kind := fs.String("kind", kindTokenkeeper, "tokenkeeper, static or naive")
	listen := fs.String("listen", "127.0.0.1:0", "listen address")
	redisAddr := fs.String("redis", "", "redis-server address")
	if err := fs.Parse(args); err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	var h http.Handler
	switch *kind {
	case kindTokenkeeper:
		limit, _ := strconv.ParseFloat(benchRateLimit, 64)
		r, err := startReplica(replicaConfig{
			Redis: &redis.Options{Addr: *redisAddr}, Instance: "bench",
			Source: &constSource{lifetime: time.Hour}, RateLimit: limit, Log: log,
		})
		if err != nil {
			return err
		}
		defer r.Stop()
		h = r.handler
	case kindStatic:
		now := time.Now()
		body := tokenBody(nil, benchToken, now.Add(time.Hour).UnixMilli(), now.UnixMilli())
		e := echo.New()
		e.GET("/v1/tokens/:name", func(c echo.Context) error {
			setCommonHeaders(c.Response().Header())
			return c.JSONBlob(http.StatusOK, body)
		})
		h = e
	case kindNaive:
		rdb := redis.NewClient(&redis.Options{Addr: *redisAddr})
		defer rdb.Close()
		key := cache.KeysFor("liveness").Token
		e := echo.New()
		e.GET("/v1/tokens/:name", func(c echo.Context) error {
			setCommonHeaders(c.Response().Header())
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
		h = e
	default:
		return fmt.Errorf("unknown kind %q", *kind)
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	return serveSame(ctx, ln, h)
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
		p, err := startProc(work, "handler-"+k, nil, self, "serve-handler", "-kind", k, "-listen", addr, "-redis", rs.Addr)
		if err != nil {
			return nil, err
		}
		helpers = append(helpers, p)
		url := "http://" + addr + "/v1/tokens/liveness"
		urls[k] = url
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
			return nil, fmt.Errorf("%w\n%s", err, p.Tail())
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
				w, err := runWrk(ctx, urls[k], c, cfg.Duration, header)
				if err != nil {
					return nil, err
				}
				secs := time.Since(t0).Seconds()
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
				samples[k][ci] = append(samples[k][ci], sample{w.RPS, w.P50, w.P99})
				say("  round %d c=%-4d %-20s %9.0f req/s  p50 %-9v p99 %v", round+1, c, kindLabel(k), w.RPS, w.P50, w.P99)
			}
		}
	}
	for _, k := range kinds {
		for ci := range cfg.Conc {
			s := samples[k][ci]
			res.Cells[k] = append(res.Cells[k], readCell{
				RPS: median(mapSlice(s, func(x sample) float64 { return x.rps })),
				P50: time.Duration(median(mapSlice(s, func(x sample) float64 { return float64(x.p50) }))),
				P99: time.Duration(median(mapSlice(s, func(x sample) float64 { return float64(x.p99) }))),
			})
		}
	}
	for ci := range cfg.Conc {
		tk, a, b := samples[kindTokenkeeper][ci], samples[kindStatic][ci], samples[kindNaive][ci]
		var ra, rb, rp, ab []float64
		for i := range tk {
			ra = append(ra, tk[i].rps/a[i].rps)
			rb = append(rb, tk[i].rps/b[i].rps)
			rp = append(rp, float64(tk[i].p99)/float64(a[i].p99))
			ab = append(ab, a[i].rps/b[i].rps)
		}
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
