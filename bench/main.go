// Command bench measures tokenkeeper against the targets of its
// benchmark issue, in one run on one machine, and writes the results
// table (RESULTS.md), the read path's profile (profile-reads.txt, and the
// CPU profiles themselves in profiles/) and plots (throughput.png,
// propagation.png, redis-load.png).
//
//	go run ./bench            the full run (about twenty minutes); writes bench/RESULTS.md
//	go run ./bench -smoke     a short run that proves the harness works
//
// It needs wrk and redis-server on the PATH (`make bench` installs them)
// and the Go toolchain (it builds cmd/tokenkeeper and runs httpapi's
// benchmark). Every process it starts is ended before it exits. A figure
// that misses its target never fails the run; a harness that cannot
// measure does.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// config sizes every figure; full and smoke are the two sets.
type config struct {
	smoke bool

	reads readsConfig

	propN      []int
	propWrites int
	propGap    time.Duration

	failTTL                    time.Duration
	failReplicas, kills, terms int

	upstreamN       []int
	upLifetime, upD time.Duration

	restN             []int
	restSettle, restD time.Duration

	memRest, memLoad time.Duration
	memConc          int

	catN                []int
	catLifetime, catD   time.Duration
	catRestN            int
	catRestT            []int
	catSettle, catRestD time.Duration

	devN                    []int
	devices, devAsks        int
	devAccessLifetime, devD time.Duration

	devCost deviceCostConfig

	scaleN, scaleT []int
	scaleWrites    int
	// scaleRestD is figure 11's window at rest: in the full run two
	// periods of the replica beat (refresher.DefaultBeatEvery, 40 s), so
	// that it holds two beats of every replica whatever their phase (a 30 s
	// window held one or none, as the fleet's replicas beat in step).
	scaleRestD time.Duration

	benchtime string
}

var full = config{
	reads: readsConfig{Conc: []int{4, 32, 256}, Duration: 4 * time.Second, Rounds: 5,
		Warmup: 2 * time.Second, RestDuration: 10 * time.Second, ProfileDuration: 10 * time.Second},
	propN: []int{10, 100}, propWrites: 20, propGap: 50 * time.Millisecond,
	failTTL: 10 * time.Second, failReplicas: 3, kills: 3, terms: 3,
	upstreamN: []int{1, 10, 100}, upLifetime: 6 * time.Second, upD: 30 * time.Second,
	restN: []int{1, 10, 100}, restSettle: 5 * time.Second, restD: 20 * time.Second,
	memRest: 5 * time.Second, memLoad: 10 * time.Second, memConc: 64,
	catN: []int{1, 3, 10}, catLifetime: 6 * time.Second, catD: 30 * time.Second,
	catRestN: 3, catRestT: []int{1, 10}, catSettle: 5 * time.Second, catRestD: 20 * time.Second,
	devN: []int{1, 3, 10}, devices: 200, devAsks: 3, devAccessLifetime: 6 * time.Second, devD: 24 * time.Second,
	devCost: deviceCostConfig{Replicas: 3, UpstreamLatency: 20 * time.Millisecond, Mints: 200, Readers: 32, ReadD: 5 * time.Second,
		Hammers: 8, MintsPerMinute: 600, HammerD: 20 * time.Second},
	scaleN: []int{10, 100, 1000}, scaleT: []int{1, 10, 100}, scaleWrites: 10, scaleRestD: 80 * time.Second,
	benchtime: "1s",
}

var smoke = config{
	smoke: true,
	reads: readsConfig{Conc: []int{8, 64}, Duration: time.Second, Rounds: 1,
		Warmup: time.Second, RestDuration: time.Second, ProfileDuration: time.Second},
	propN: []int{3, 10}, propWrites: 5, propGap: 20 * time.Millisecond,
	failTTL: time.Second, failReplicas: 2, kills: 1, terms: 1,
	upstreamN: []int{1, 5}, upLifetime: 3 * time.Second, upD: 7 * time.Second,
	restN: []int{1, 5}, restSettle: time.Second, restD: 3 * time.Second,
	memRest: time.Second, memLoad: 2 * time.Second, memConc: 16,
	catN: []int{1, 3}, catLifetime: 3 * time.Second, catD: 7 * time.Second,
	catRestN: 2, catRestT: []int{1, 2}, catSettle: time.Second, catRestD: 3 * time.Second,
	devN: []int{1, 3}, devices: 20, devAsks: 2, devAccessLifetime: 3 * time.Second, devD: 3 * time.Second,
	devCost: deviceCostConfig{Replicas: 3, UpstreamLatency: 5 * time.Millisecond, Mints: 20, Readers: 8, ReadD: time.Second,
		Hammers: 2, MintsPerMinute: 600, HammerD: time.Second},
	scaleN: []int{5}, scaleT: []int{1, 3}, scaleWrites: 3, scaleRestD: time.Second,
	benchtime: "2000x",
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "serve-handler" {
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		err := runServeHandler(ctx, os.Args[2:])
		stop()
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench serve-handler:", err)
			os.Exit(1)
		}
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:])
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string) int {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	smokeMode := fs.Bool("smoke", false, "short run with small fleets: proves the harness works, judges nothing")
	outDir := fs.String("out", "", "where RESULTS.md and throughput.png go (default bench/, or a temporary folder with -smoke)")
	only := fs.String("only", "", "comma-separated figures to run (1-13), for working on the harness; default all")
	scaleN := fs.String("scale-n", "", "comma-separated fleet sizes of figure 11, instead of the mode's")
	scaleT := fs.String("scale-t", "", "comma-separated catalog sizes of figure 11, instead of the mode's")
	cpuProfile := fs.String("cpuprofile", "", "write the harness process's CPU profile to this file (figures run in process: 3, 5, 6, 8 to 12)")
	fs.StringVar(&restProfile, "restprofile", "", "write the harness's CPU profiles over figure 11's windows at rest and of the refreshes to files named so, suffixed with N and T (not with -cpuprofile)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	cfg := full
	if *smokeMode {
		cfg = smoke
	}
	for _, o := range []struct {
		flag string
		to   *[]int
	}{{*scaleN, &cfg.scaleN}, {*scaleT, &cfg.scaleT}} {
		if o.flag == "" {
			continue
		}
		var xs []int
		for f := range strings.SplitSeq(o.flag, ",") {
			x, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil || x < 1 {
				fmt.Fprintf(os.Stderr, "bench: %q is not a positive whole number\n", f)
				return 2
			}
			xs = append(xs, x)
		}
		*o.to = xs
	}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err == nil {
			err = pprof.StartCPUProfile(f)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench: cpu profile:", err)
			return 1
		}
		defer func() { pprof.StopCPUProfile(); f.Close() }()
	}
	raiseFileLimit()
	if err := needTools("wrk", "redis-server", "go"); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	root, err := moduleRoot()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	if *outDir == "" {
		*outDir = filepath.Join(root, "bench")
		if cfg.smoke {
			*outDir = filepath.Join(os.TempDir(), "tokenkeeper-bench-smoke")
		}
	}
	if err := os.MkdirAll(*outDir, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	work, err := os.MkdirTemp("", "tokenkeeper-bench-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	defer stopAll() // runs before the work folder goes
	keepWork := false
	defer func() {
		if !keepWork {
			os.RemoveAll(work)
		}
	}()

	self, err := os.Executable()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	want := map[string]bool{}
	for f := range strings.SplitSeq(*only, ",") {
		if f = strings.TrimSpace(f); f != "" {
			want[f] = true
		}
	}
	runs := func(fig string) bool { return len(want) == 0 || want[fig] }

	start := time.Now()
	say := func(format string, a ...any) {
		fmt.Printf("[%6.1fs] "+format+"\n", append([]any{time.Since(start).Seconds()}, a...)...)
	}
	mode := "full"
	if cfg.smoke {
		mode = "smoke"
	}
	say("tokenkeeper benchmarks (%s run); processes' logs in %s", mode, work)

	rep := &report{cfg: cfg, started: start.UTC(), machine: describeMachine()}
	var errs []error
	fail := func(fig string, err error) {
		say("figure %s: HARNESS ERROR: %v", fig, err)
		errs = append(errs, fmt.Errorf("figure %s: %w", fig, err))
		rep.errors = append(rep.errors, fmt.Sprintf("figure %s: %v", fig, firstLine(err.Error())))
	}

	var bin string
	if runs("4") || runs("6") || runs("7") {
		say("building cmd/tokenkeeper")
		if bin, err = buildTokenkeeper(ctx, root, work); err != nil {
			fail("4/6/7", err)
		}
	}
	if runs("1") || runs("2") {
		say("figures 1 and 2: reads under wrk load, three handlers")
		if rep.reads, err = measureReads(ctx, work, self, cfg.reads, say); err != nil {
			fail("1/2", err)
		}
	}
	if runs("3") {
		for _, n := range cfg.propN {
			say("figure 3: propagation to %d replicas", n)
			r, err := measurePropagation(ctx, work, n, cfg.propWrites, cfg.propGap)
			if err != nil {
				fail("3", err)
				continue
			}
			say("  N=%d p50 %s p99 %s max %s", n, fmtDur(r.P50), fmtDur(r.P99), fmtDur(r.Max))
			rep.prop = append(rep.prop, r)
		}
	}
	if runs("4") && bin != "" {
		say("figure 4: failover of real processes (lock TTL %v)", cfg.failTTL)
		if rep.failover, err = measureFailover(ctx, work, bin, cfg.failTTL, cfg.failReplicas, cfg.kills, cfg.terms, say); err != nil {
			fail("4", err)
		}
	}
	if runs("5") {
		for _, n := range cfg.upstreamN {
			say("figure 5: upstream calls per token, %d replicas, %v tokens, for %v", n, cfg.upLifetime, cfg.upD)
			r, err := measureUpstream(ctx, work, n, cfg.upLifetime, cfg.upD)
			if err != nil {
				fail("5", err)
				continue
			}
			say("  N=%d: %d liveness calls, %d tokens stored", n, r.Calls, r.Tokens)
			rep.upstream = append(rep.upstream, r)
		}
	}
	if runs("6") && bin != "" {
		for _, n := range cfg.restN {
			say("figure 6: Redis commands at rest, %d replicas", n)
			r, err := measureRest(ctx, work, bin, n, cfg.restSettle, cfg.restD)
			if err != nil {
				fail("6", err)
				continue
			}
			say("  N=%d: %.2f commands/s per replica (%s)", n, r.PerReplica, r.Mix)
			rep.rest = append(rep.rest, r)
		}
	}
	if runs("7") && bin != "" {
		say("figure 7: resident set of a `tokenkeeper serve` process")
		if rep.memory, err = measureMemory(ctx, work, bin, cfg.memRest, cfg.memLoad, cfg.memConc); err != nil {
			fail("7", err)
		}
	}
	if runs("8") {
		say("figure 8: allocations per read (go test -bench BenchmarkTokenRead -benchmem ./httpapi/)")
		if rep.allocs, err = measureAllocs(ctx, root, cfg.benchtime); err != nil {
			fail("8", err)
		}
	}
	if runs("9") {
		for _, n := range cfg.catN {
			say("figure 9a: a catalog of two tokens (liveness, partner), %d replicas, %v tokens, for %v", n, cfg.catLifetime, cfg.catD)
			r, err := measureCatalogCalls(ctx, work, n, cfg.catLifetime, cfg.catD)
			if err != nil {
				fail("9", err)
				continue
			}
			say("  N=%d: %d liveness calls, %d oauth2 calls in %.0f s", n, r.LivenessCalls, r.OAuthCalls, r.Seconds)
			rep.catCalls = append(rep.catCalls, r)
		}
		for _, t := range cfg.catRestT {
			say("figure 9b: Redis commands at rest, %d replicas keeping %d tokens", cfg.catRestN, t)
			r, err := measureCatalogRest(ctx, work, cfg.catRestN, t, cfg.catSettle, cfg.catRestD)
			if err != nil {
				fail("9", err)
				continue
			}
			say("  T=%d: %.2f commands/s per replica (%s)", t, r.PerReplica, r.Mix)
			rep.catRest = append(rep.catRest, r)
		}
	}
	if runs("10") {
		for _, n := range cfg.devN {
			say("figure 10: per-device tokens, %d replicas, %d devices asked %d times over %v, %v access tokens", n, cfg.devices, cfg.devAsks, cfg.devD, cfg.devAccessLifetime)
			r, err := measureDevices(ctx, work, n, cfg.devices, cfg.devAsks, cfg.devAccessLifetime, cfg.devD)
			if err != nil {
				fail("10", err)
				continue
			}
			say("  N=%d: %d liveness calls, %d sign-ons; first ask p50 %s p99 %s, repeat p50 %s p99 %s", n, r.LivenessCalls, r.SignOns,
				fmtDur(r.FirstP50), fmtDur(r.FirstP99), fmtDur(r.RepeatP50), fmtDur(r.RepeatP99))
			rep.devices = append(rep.devices, r)
		}
	}
	if runs("12") {
		c := cfg.devCost
		say("figure 12: per-device costs, %d replicas, upstream latency %v", c.Replicas, c.UpstreamLatency)
		if rep.devCost, err = measureDeviceCosts(ctx, work, c); err != nil {
			fail("12", err)
		} else {
			d := rep.devCost
			say("  mint p50 %s p99 %s (overhead p50 %s p99 %s); repeat reads %.0f/s p99 %s; budget: %d minted, %.0f allowed (%.2f×), %d refused",
				fmtDur(d.MintP50), fmtDur(d.MintP99), fmtDur(d.OverheadP50), fmtDur(d.OverheadP99), d.ReadRPS, fmtDur(d.ReadP99),
				d.Minted, d.Allowed, d.Accuracy, d.Refused)
		}
	}
	if runs("13") {
		say("figure 13: reads with tracing off and at 1%%, against (a)")
		if rep.tracing, err = measureTracing(ctx, work, self, cfg.reads, say); err != nil {
			fail("13", err)
		} else {
			for i, c := range rep.tracing.Conc {
				say("  c=%d: tracing off %.2f× (a), at 1%% %.2f× (a)", c, rep.tracing.RatioOff[i], rep.tracing.Ratio1[i])
			}
		}
	}
	if runs("11") {
		for _, n := range cfg.scaleN {
			for _, t := range cfg.scaleT {
				say("figure 11: fleet scale, %d replicas keeping %d tokens", n, t)
				r, err := measureScale(ctx, work, n, t, cfg.scaleWrites, cfg.scaleRestD, say)
				if err != nil {
					fail("11", fmt.Errorf("fleet of %d replicas keeping %d tokens: %w", n, t, err))
					continue
				}
				if r.Skipped != "" {
					say("  N=%d T=%d not run: %s", n, t, r.Skipped)
				}
				rep.scale = append(rep.scale, r)
			}
		}
	}
	stopAll()
	rep.took = time.Since(start)

	md := rep.markdown()
	fmt.Println()
	fmt.Println(md)
	resultsPath := filepath.Join(*outDir, "RESULTS.md")
	if err := os.WriteFile(resultsPath, []byte(md), 0o644); err != nil {
		errs = append(errs, err)
	}
	if rep.reads != nil {
		title := "GET /v1/tokens/liveness, one replica, keep-alive (wrk); " + rep.started.Format("2006-01-02") + ", " + shortMachine()
		if err := plotThroughput(rep.reads, title, filepath.Join(*outDir, "throughput.png")); err != nil {
			errs = append(errs, err)
		}
		if rep.reads.Profile != "" {
			head := fmt.Sprintf("Read path profile, %s, %s. Written by `make bench` with RESULTS.md.\n\n", rep.started.Format("2006-01-02 15:04 MST"), rep.machine)
			if err := os.WriteFile(filepath.Join(*outDir, "profile-reads.txt"), []byte(head+rep.reads.Profile), 0o644); err != nil {
				errs = append(errs, err)
			}
		}
		if err := keepProfiles(rep.reads.ProfileFiles, filepath.Join(*outDir, "profiles"), profilesReadme(rep)); err != nil {
			errs = append(errs, err)
		}
	}
	if len(rep.scale) > 0 {
		machine := "; " + rep.started.Format("2006-01-02") + ", " + shortMachine()
		if err := plotPropagation(rep.scale, "propagation after a refresh"+machine, filepath.Join(*outDir, "propagation.png")); err != nil {
			errs = append(errs, err)
		}
		if err := plotRedisLoad(rep.scale, "Redis load at rest"+machine, filepath.Join(*outDir, "redis-load.png")); err != nil {
			errs = append(errs, err)
		}
	}
	say("wrote %s and the plots", resultsPath)
	if len(errs) > 0 {
		keepWork = true
		fmt.Fprintf(os.Stderr, "bench: the harness failed (logs kept in %s):\n%v\n", work, errors.Join(errs...))
		return 1
	}
	return 0
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}

// keepProfiles copies the profiles in files (by the name to keep each
// under) into dir, with readme as its README.md.
func keepProfiles(files map[string]string, dir, readme string) error {
	if len(files) == 0 {
		return nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for name, src := range files {
		b, err := os.ReadFile(src)
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			return err
		}
	}
	return os.WriteFile(filepath.Join(dir, "README.md"), []byte(readme), 0o644)
}

// profilesReadme describes the read path's CPU profiles of the run: when,
// where, under which load, and the read ratios they go with.
func profilesReadme(rep *report) string {
	rd := rep.reads
	var b strings.Builder
	b.WriteString("# Read path CPU profiles\n\n")
	fmt.Fprintf(&b, "Taken %s on %s, after figure 1's rounds, each for %v under wrk with %d connections: "+
		"`reads-tokenkeeper.cpu.pb.gz` is the tokenkeeper helper (the server `tokenkeeper serve` runs), "+
		"`reads-static-echo.cpu.pb.gz` the bare echo handler (a) it is measured against.\n\n",
		rep.started.Format("2006-01-02 15:04 MST"), rep.machine, rep.cfg.reads.ProfileDuration, slices.Max(rd.Conc))
	if la, err := os.ReadFile("/proc/loadavg"); err == nil {
		f := strings.Fields(string(la))
		if len(f) >= 3 {
			fmt.Fprintf(&b, "Load average when they were written: %s %s %s (on a shared machine, other work runs beside the benchmark).\n\n", f[0], f[1], f[2])
		}
	}
	b.WriteString("The same run's read throughput against (a):")
	for i, c := range rd.Conc {
		sep := ","
		if i == 0 {
			sep = ""
		}
		fmt.Fprintf(&b, "%s %.2f× at %d connections", sep, rd.RatioA[i], c)
	}
	b.WriteString(".\n\nRegenerate them with `make bench` (every figure, with RESULTS.md), or figure 1 alone with " +
		"`cd bench && go run . -only 1 -out DIR`, which writes them to DIR/profiles. Read them with " +
		"`go tool pprof -top reads-tokenkeeper.cpu.pb.gz` (or `-peek`, `-http=:0`): they carry their symbols.\n")
	return b.String()
}
