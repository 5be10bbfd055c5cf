package main

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// report gathers every figure and renders the results table.
type report struct {
	cfg      config
	started  time.Time
	took     time.Duration
	machine  string
	reads    *readsResult
	prop     []*propagationResult
	failover *failoverResult
	upstream []*upstreamResult
	rest     []*restResult
	catCalls []*catalogCalls
	catRest  []*catalogRest
	devices  []*devicesResult
	scale    []*scaleResult
	devCost  *deviceCostResult
	memory   *memoryResult
	allocs   *allocsResult
	tracing  *tracingResult
	errors   []string
}

type row struct {
	fig, what, value, target, ratio string
	met                             bool
	judged                          bool
}

func yesNo(r row) string {
	switch {
	case !r.judged:
		return "—"
	case r.met:
		return "yes"
	default:
		return "**no**"
	}
}

// rows builds the main table: one line per figure and setting.
func (r *report) rows() []row {
	var out []row
	if rd := r.reads; rd != nil {
		tk, a, b := rd.Cells[kindTokenkeeper], rd.Cells[kindStatic], rd.Cells[kindNaive]
		for i, c := range rd.Conc {
			ra, rb := rd.RatioA[i], rd.RatioB[i]
			out = append(out, row{
				fig: "1", what: fmt.Sprintf("read throughput against (a), %d connections", c),
				value:  fmtRPS(tk[i].RPS) + " req/s",
				target: "≥ 0.95× (a)",
				ratio:  fmt.Sprintf("%.2f× (a) %s req/s", ra, fmtRPS(a[i].RPS)),
				met:    ra >= 0.95, judged: true,
			})
			out = append(out, row{
				fig: "1", what: fmt.Sprintf("read throughput against (b), %d connections", c),
				value:  fmtRPS(tk[i].RPS) + " req/s",
				target: "≥ 3× (b)",
				ratio: fmt.Sprintf("%.1f× (b) %s req/s; (a) itself is %.1f× (b)",
					rb, fmtRPS(b[i].RPS), rd.CeilingAB[i]),
				met: rb >= 3, judged: true,
			})
			out = append(out, row{
				fig: "1", what: fmt.Sprintf("read throughput against (a′), %d connections", c),
				value:  fmtRPS(tk[i].RPS) + " req/s",
				target: "— (what tokenkeeper adds to any server with its headers and limits)",
				ratio: fmt.Sprintf("%.2f× (a′) %s req/s; (a′) itself is %.2f× (a)",
					rd.RatioDressed[i], fmtRPS(rd.Cells[kindDressed][i].RPS), rd.CeilingDressed[i]),
			})
			rp := rd.P99RatioA[i]
			out = append(out, row{
				fig: "1", what: fmt.Sprintf("read latency, %d connections", c),
				value:  fmt.Sprintf("p50 %s, p99 %s", fmtDur(tk[i].P50), fmtDur(tk[i].P99)),
				target: "p99 ≤ 1.5× (a)",
				ratio:  fmt.Sprintf("%.2f× (a) p99 %s; (b) p99 %s", rp, fmtDur(a[i].P99), fmtDur(b[i].P99)),
				met:    rp <= 1.5, judged: true,
			})
		}
		out = append(out, row{
			fig: "2", what: "Redis commands per token read",
			value: fmt.Sprintf("%.4f (%d commands in %.0f s of load, %s reads; %.1f/s at rest)",
				rd.CmdsPerRead, rd.TKCommands, rd.TKRunSeconds, fmtCount(rd.TKReads), rd.RestRate),
			target: "0",
			ratio:  fmt.Sprintf("(b) %.2f per read", rd.NaiveCmdsPerRead),
			met:    rd.CmdsPerRead < 0.001, judged: true,
		})
	}
	for _, p := range r.prop {
		out = append(out, row{
			fig: "3", what: fmt.Sprintf("propagation to %d replicas", p.N),
			value:  fmt.Sprintf("p50 %s, p99 %s, max %s", fmtDur(p.P50), fmtDur(p.P99), fmtDur(p.Max)),
			target: "p99 ≤ 50 ms",
			ratio:  fmt.Sprintf("%d samples; the write itself %s", p.Samples, fmtDur(p.WriteP50)),
			met:    p.P99 <= 50*time.Millisecond, judged: true,
		})
	}
	if f := r.failover; f != nil {
		if len(f.Kill) > 0 {
			mx, med := worst(f.Kill)
			lim := f.LockTTL + time.Second
			var take time.Duration
			for _, t := range f.Kill {
				take = max(take, t.Takeover)
			}
			out = append(out, row{
				fig: "4", what: "failover: leader SIGKILL → first token write",
				value:  fmt.Sprintf("max %s, median %s (%d trials; lock taken ≤ %s)", fmtDur(mx), fmtDur(med), len(f.Kill), fmtDur(take)),
				target: fmt.Sprintf("≤ lock TTL + 1 s = %s", fmtDur(lim)),
				ratio:  fmt.Sprintf("%.2f× lock TTL", float64(mx)/float64(f.LockTTL)),
				met:    mx <= lim, judged: true,
			})
		}
		if len(f.Term) > 0 {
			mx, med := worst(f.Term)
			out = append(out, row{
				fig: "4", what: "failover: leader SIGTERM → first token write",
				value:  fmt.Sprintf("max %s, median %s (%d trials)", fmtDur(mx), fmtDur(med), len(f.Term)),
				target: "≤ 1 s",
				ratio:  fmt.Sprintf("%.3f× lock TTL", float64(mx)/float64(f.LockTTL)),
				met:    mx <= time.Second, judged: true,
			})
		}
	}
	var up1 float64
	for _, u := range r.upstream {
		if u.N == 1 {
			up1 = u.PerToken
		}
	}
	for _, u := range r.upstream {
		ratio := "—"
		if up1 > 0 {
			ratio = fmt.Sprintf("%.2f× N=1", u.PerToken/up1)
		}
		out = append(out, row{
			fig: "5", what: fmt.Sprintf("upstream liveness calls per token, %d replicas", u.N),
			value: fmt.Sprintf("%.2f (%d calls, %d tokens in %.0f s of %v tokens)",
				u.PerToken, u.Calls, u.Tokens, u.Seconds, u.Lifetime),
			target: "exactly 1",
			ratio:  ratio,
			met:    u.Calls == u.Tokens, judged: true,
		})
	}
	// The fleet's load at rest is at most 2 commands a second per
	// replica, plus the leader's lock renewals, shared by the N: one
	// EVALSHA running GET and PEXPIRE every quarter of the default lock
	// TTL of 10 s.
	const restLeaderPerSec = 3 * 4 / 10.0
	var rest1 float64
	for _, s := range r.rest {
		if s.N == 1 {
			rest1 = s.PerReplica
		}
	}
	for _, s := range r.rest {
		ratio := "—"
		flat := true
		if rest1 > 0 {
			ratio = fmt.Sprintf("%.2f× N=1", s.PerReplica/rest1)
			flat = s.PerReplica <= rest1*1.2
		}
		bound := 2 + restLeaderPerSec/float64(s.N)
		out = append(out, row{
			fig: "6", what: fmt.Sprintf("Redis commands/s per replica at rest, %d replicas", s.N),
			value:  fmt.Sprintf("%.2f (%d commands in %.0f s)", s.PerReplica, s.Total, s.Seconds),
			target: fmt.Sprintf("≤ 2 + %.1f/N = %.2f, flat in N", restLeaderPerSec, bound),
			ratio:  ratio,
			met:    s.PerReplica <= bound && flat, judged: true,
		})
	}
	if m := r.memory; m != nil {
		out = append(out, row{
			fig: "7", what: "resident set of one replica at rest",
			value: fmtMiB(m.RestKiB), target: "≤ 30 MiB", ratio: "—",
			met: m.RestKiB <= 30<<10, judged: true,
		})
		out = append(out, row{
			fig: "7", what: fmt.Sprintf("resident set under load (%d connections)", m.Conc),
			value:  fmt.Sprintf("%s peak (%s req/s)", fmtMiB(max(m.LoadKiB, m.HWMKiB)), fmtRPS(m.Load.RPS)),
			target: "≤ 30 MiB",
			ratio:  fmt.Sprintf("%.2f× at rest", float64(max(m.LoadKiB, m.HWMKiB))/float64(m.RestKiB)),
			met:    max(m.LoadKiB, m.HWMKiB) <= 30<<10, judged: true,
		})
	}
	if a := r.allocs; a != nil {
		out = append(out, row{
			fig: "8", what: "allocations per read (handler path, in process)",
			value:  fmt.Sprintf("%.0f allocs/op (%.0f B/op, %.0f ns/op)", a.TKAllocs, a.TKBytes, a.TKNs),
			target: "≤ 2",
			ratio:  fmt.Sprintf("(a) static echo %.0f allocs/op, %.0f ns/op", a.StaticAllocs, a.StaticNs),
			met:    a.TKAllocs <= 2, judged: true,
		})
	}
	out = append(out, r.scaleRows()...)
	if d := r.devCost; d != nil {
		out = append(out, row{
			fig: "12", what: "per-device mint: overhead over the upstream's own latency",
			value:  fmt.Sprintf("p50 %s, p99 %s", fmtDur(d.OverheadP50), fmtDur(d.OverheadP99)),
			target: "—",
			ratio:  fmt.Sprintf("a new device's ask p50 %s, p99 %s, upstream %s per call", fmtDur(d.MintP50), fmtDur(d.MintP99), fmtDur(d.Cfg.UpstreamLatency)),
		})
		out = append(out, row{
			fig: "12", what: fmt.Sprintf("per-device repeat reads from Redis, %d at once over %d replicas", d.Cfg.Readers, d.Cfg.Replicas),
			value:  fmt.Sprintf("%s/s, p50 %s, p99 %s", fmtRPS(d.ReadRPS), fmtDur(d.ReadP50), fmtDur(d.ReadP99)),
			target: "—",
			ratio:  fmt.Sprintf("%s reads in %.0f s", fmtCount(d.Reads), d.ReadSeconds),
		})
		out = append(out, row{
			fig: "12", what: fmt.Sprintf("fleet-wide mint budget (%d a minute), %d replicas hammering", d.Cfg.MintsPerMinute, d.Cfg.Replicas),
			value:  fmt.Sprintf("%d minted, %s refused in %.1f s", d.Minted, fmtCount(d.Refused), d.HammerSeconds),
			target: "0.9–1.0× allowed",
			ratio:  fmt.Sprintf("%.3f× the %.0f allowed (burst + rate × time)", d.Accuracy, d.Allowed),
			met:    d.Accuracy >= 0.9 && d.Accuracy <= 1.0+1/d.Allowed, judged: true,
		})
	}
	if t := r.tracing; t != nil {
		for i, c := range t.Conc {
			a, off, on := t.Cells[kindStatic][i], t.Cells[kindTracedOff][i], t.Cells[kindTraced1][i]
			out = append(out, row{
				fig: "13", what: fmt.Sprintf("reads with tracing off (the default), %d connections", c),
				value:  fmt.Sprintf("%s req/s, p99 %s", fmtRPS(off.RPS), fmtDur(off.P99)),
				target: "as figure 1: ≥ 0.95× (a)",
				ratio:  fmt.Sprintf("%.2f× (a) %s req/s", t.RatioOff[i], fmtRPS(a.RPS)),
				met:    t.RatioOff[i] >= 0.95, judged: true,
			})
			out = append(out, row{
				fig: "13", what: fmt.Sprintf("reads with tracing at 1%% (server spans, SDK sampler), %d connections", c),
				value:  fmt.Sprintf("%s req/s, p99 %s", fmtRPS(on.RPS), fmtDur(on.P99)),
				target: "— (the cost, stated)",
				ratio:  fmt.Sprintf("%.2f× (a); %.2f× tracing off", t.Ratio1[i], t.Ratio1[i]/t.RatioOff[i]),
			})
		}
	}
	if r.cfg.smoke {
		for i := range out {
			out[i].judged = false
		}
	}
	return out
}

// markdown renders RESULTS.md.
func (r *report) markdown() string {
	var b strings.Builder
	title := "# tokenkeeper benchmark results"
	if r.cfg.smoke {
		title += " (SMOKE RUN: too short to judge; nothing here is a result)"
	}
	fmt.Fprintf(&b, "%s\n\n", title)
	fmt.Fprintf(&b, "- date: %s (took %s)\n", r.started.Format("2006-01-02 15:04 MST"), r.took.Round(time.Second))
	fmt.Fprintf(&b, "- machine: %s\n", r.machine)
	fmt.Fprintf(&b, "- command: `make bench` (`go run ./bench`); every figure measured in this one run. "+
		"The machine is shared and noisy: compare ratios within the run, not absolute numbers across runs.\n\n")

	rows := r.rows()
	met, judged := 0, 0
	b.WriteString("| # | figure | value | target | ratio to baseline | met? |\n|---|---|---|---|---|---|\n")
	for _, x := range rows {
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s |\n", x.fig, x.what, x.value, x.target, x.ratio, yesNo(x))
		if x.judged {
			judged++
			if x.met {
				met++
			}
		}
	}
	if judged > 0 {
		fmt.Fprintf(&b, "\n%d of %d targets met.\n", met, judged)
	}
	for _, e := range r.errors {
		fmt.Fprintf(&b, "\n**harness error** %s\n", e)
	}

	if rd := r.reads; rd != nil {
		b.WriteString("\n## 1. Reads, handler by handler\n\n")
		fmt.Fprintf(&b, "wrk (keep-alive, `--latency`, one thread) against one helper process per handler, each serving "+
			"`GET /v1/tokens/liveness` on loopback, over one real redis-server; answers of %d bytes. Each cell is the median of %d runs "+
			"of %v, the handlers interleaved; a ratio is the median of the ratios within each round, where the handlers ran back to back. "+
			"tokenkeeper is the server `tokenkeeper serve` runs (httpapi's Serve: its connection limits and timeouts, key check, rate "+
			"limiter, metrics, security headers, JSON) over a cache.Store kept by pub/sub and a leading refresher; (a) is a bare echo "+
			"handler answering a constant body from a net/http server with no timeouts and no header of its own; (a′) is (a) wearing "+
			"tokenkeeper's six response headers (the security headers, the instance, the generation) on a server with Serve's "+
			"timeouts and header limit, what any server answering as tokenkeeper does pays; (b) is the same bare "+
			"server running HMGET on the token key per request. CPU is the server process's user and system time per request "+
			"(/proc), which the machine's other load disturbs less than throughput.\n\n",
			rd.BodyBytes, r.cfg.reads.Rounds, r.cfg.reads.Duration)
		b.WriteString("| connections | handler | req/s | p50 | p99 | server CPU per request |\n|---|---|---|---|---|---|\n")
		for i, c := range rd.Conc {
			for _, k := range kinds {
				cell := rd.Cells[k][i]
				cpu := "—"
				if v := rd.CPUPerRead[k]; len(v) > i {
					cpu = fmtDur(v[i])
				}
				fmt.Fprintf(&b, "| %d | %s | %s | %s | %s | %s |\n", c, kindLabel(k), fmtRPS(cell.RPS), fmtDur(cell.P50), fmtDur(cell.P99), cpu)
			}
		}
		if rd.Profile != "" {
			b.WriteString("\nThe read path's CPU and allocation profiles, taken after the rounds under the largest concurrency, are in " +
				"[profile-reads.txt](profile-reads.txt) (top functions, text), with (a)'s CPU profile for comparison; " +
				"the CPU profiles themselves are in profiles/ (`go tool pprof -top profiles/reads-tokenkeeper.cpu.pb.gz`, " +
				"`profiles/reads-static-echo.cpu.pb.gz`). `go run ./bench -only 1 -out DIR` measures figure 1 alone and writes them to DIR/profiles.\n")
		}
		b.WriteString("\n![throughput against concurrency](throughput.png)\n")
		b.WriteString("\nNo handler on this HTTP stack can be faster than (a), so tokenkeeper's ratio to (b) is bounded by (a)'s own ratio " +
			"to (b), shown in the table's ratio column: on a machine where wrk, the server and redis-server share the cores, a Redis " +
			"round trip on loopback costs little more than the HTTP request around it.\n")
		fmt.Fprintf(&b, "\n**2.** INFO commandstats around tokenkeeper's load runs: %s. The same replica sends %.1f commands/s at rest "+
			"(its poll, lock renewal and leader check); that background, times the length of the runs, is subtracted. "+
			"A value under 0.001 counts as 0: no read sends a command.\n", orNone(rd.TKCommandMix), rd.RestRate)
	}
	if len(r.prop) > 0 {
		b.WriteString("\n## 3. Propagation\n\n")
		fmt.Fprintf(&b, "N replicas in one process (each its own Redis client, store and HTTP server) and a leader holding the lock; "+
			"the leader makes %d fenced writes in a row. Time from the start of the write to each replica's store serving the new token "+
			"(what its HTTP server answers; checked over HTTP after the last write).\n", r.prop[0].Writes)
	}
	if f := r.failover; f != nil {
		b.WriteString("\n## 4. Failover\n\n")
		fmt.Fprintf(&b, "%d `tokenkeeper serve` processes, a `tokenkeeper fake-rdp` process and a redis-server; lock TTL %v. "+
			"The leader gets the signal; the token in Redis is then moved into its refresh window (as when a refresh is due), so that "+
			"the next leader's first act is a token write, seen on the events channel. The lock's takeover is seen by keyspace "+
			"events. The stopped replica is restarted before the next trial.\n\n", f.Replicas, f.LockTTL)
		b.WriteString("| signal | old leader | new leader | lock taken | first token write |\n|---|---|---|---|---|\n")
		for _, t := range append(append([]failoverTrial{}, f.Kill...), f.Term...) {
			fmt.Fprintf(&b, "| %s | %s | %s | %s | %s |\n", t.Signal, t.OldLeader, t.NewLeader, fmtDur(t.Takeover), fmtDur(t.FirstWrite))
		}
	}
	if len(r.upstream) > 0 {
		b.WriteString("\n## 5. Upstream calls\n\n")
		fmt.Fprintf(&b, "N replicas in one process, each its own Redis client, store, refresher and RDP client (auth v2, the fleet-wide "+
			"sign-on budget), against one fake RDP issuing %v tokens (serve margin %v, refresh window %v, lock TTL 2 s). "+
			"Tokens stored are counted on the events channel; calls by the fake. Exactly one call per token stored means no "+
			"replica ever fetched a token that was not used.\n\n", r.upstream[0].Lifetime, r.upstream[0].Lifetime/6, r.upstream[0].Lifetime/3)
		b.WriteString("| replicas | liveness calls | tokens stored | auth calls | seconds |\n|---|---|---|---|---|\n")
		for _, u := range r.upstream {
			fmt.Fprintf(&b, "| %d | %d | %d | %d | %.0f |\n", u.N, u.Calls, u.Tokens, u.AuthCalls, u.Seconds)
		}
	}
	if len(r.rest) > 0 {
		b.WriteString("\n## 6. Redis load at rest\n\n")
		b.WriteString("N `tokenkeeper serve` processes with the default timings (lock TTL 10 s, poll 2 s) and a token fresh for an hour, " +
			"one redis-server; INFO commandstats over a quiet interval once all are ready. Redis counts the commands a script runs " +
			"as well as the EVALSHA that ran it, and so does this figure. The bound is 2 commands a second per replica (its poll " +
			"and heartbeat) plus the leader's lock renewals, 3 commands every 2.5 s, shared by the N.\n\n")
		b.WriteString("| replicas | seconds | commands | per replica per second | by command |\n|---|---|---|---|---|\n")
		for _, s := range r.rest {
			fmt.Fprintf(&b, "| %d | %.0f | %d | %.2f | %s |\n", s.N, s.Seconds, s.Total, s.PerReplica, s.Mix)
		}
	}
	r.catalogMarkdown(&b)
	r.devicesMarkdown(&b)
	r.scaleMarkdown(&b)
	r.deviceCostMarkdown(&b)
	if m := r.memory; m != nil {
		b.WriteString("\n## 7. Memory\n\n")
		fmt.Fprintf(&b, "VmRSS of one `tokenkeeper serve` process (with its redis-server and fake RDP): at rest %s; sampled every 100 ms "+
			"under wrk with %d connections, peak %s (VmHWM %s). The real binary served %s req/s (p50 %s, p99 %s) under that load.\n",
			fmtMiB(m.RestKiB), m.Conc, fmtMiB(m.LoadKiB), fmtMiB(m.HWMKiB), fmtRPS(m.Load.RPS), fmtDur(m.Load.P50), fmtDur(m.Load.P99))
	}
	if a := r.allocs; a != nil {
		b.WriteString("\n## 8. Allocations\n\n")
		fmt.Fprintf(&b, "`go test -run '^$' -bench '^BenchmarkTokenRead$/^(httpapi|static-echo)$' -benchmem -benchtime %s ./httpapi/`: "+
			"the token read through the whole handler (routing, key check, metrics, JSON) in process: %.0f allocs/op, %.0f B/op, "+
			"%.0f ns/op; the static echo handler: %.0f allocs/op, %.0f ns/op.\n", r.cfg.benchtime, a.TKAllocs, a.TKBytes, a.TKNs, a.StaticAllocs, a.StaticNs)
	}
	return b.String()
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

// describeMachine names the CPU, cores, memory and versions.
func describeMachine() string {
	model := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range splitLines(string(b)) {
			if v, ok := strings.CutPrefix(line, "model name"); ok {
				model = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	mem := "unknown memory"
	if kib, err := procStatusFile("/proc/meminfo", "MemTotal:"); err == nil {
		mem = fmt.Sprintf("%.1f GiB", float64(kib)/(1<<20))
	}
	redisV := "redis-server ?"
	if out, err := exec.Command("redis-server", "--version").Output(); err == nil {
		for f := range strings.FieldsSeq(string(out)) {
			if v, ok := strings.CutPrefix(f, "v="); ok {
				redisV = "redis-server " + v
			}
		}
	}
	wrkV := "wrk"
	if out, _ := exec.Command("wrk", "-v").CombinedOutput(); len(out) > 0 {
		wrkV = strings.TrimSpace(firstLine(string(out)))
		if i := strings.Index(wrkV, " ["); i > 0 {
			wrkV = wrkV[:i]
		}
	}
	return fmt.Sprintf("%d cores (%s), %s memory, %s/%s, %s, %s, %s",
		runtime.NumCPU(), model, mem, runtime.GOOS, runtime.GOARCH, runtime.Version(), redisV, wrkV)
}

func procStatusFile(path, field string) (int64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	for _, line := range splitLines(string(b)) {
		if v, ok := strings.CutPrefix(line, field); ok {
			return strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
		}
	}
	return 0, fmt.Errorf("%s: no %s", path, field)
}

func splitLines(s string) []string { return strings.Split(s, "\n") }

// fmtDur prints a duration with three significant figures in a fitting
// unit.
func fmtDur(d time.Duration) string {
	switch {
	case d <= 0:
		return "0"
	case d < time.Millisecond:
		return fmt.Sprintf("%.0f µs", float64(d)/float64(time.Microsecond))
	case d < 10*time.Millisecond:
		return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond))
	case d < time.Second:
		return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond))
	default:
		return fmt.Sprintf("%.2f s", d.Seconds())
	}
}

func fmtRPS(x float64) string { return fmtCount(int64(x + 0.5)) }

// fmtCount groups thousands: 123,456.
func fmtCount(n int64) string {
	s := strconv.FormatInt(n, 10)
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}

func fmtMiB(kib int64) string { return fmt.Sprintf("%.1f MiB", float64(kib)/1024) }

// catalogMarkdown writes figure 9: a catalog of tokens.
func (r *report) catalogMarkdown(b *strings.Builder) {
	if len(r.catCalls) > 0 {
		b.WriteString("\n## 9. A catalog of tokens\n\n")
		fmt.Fprintf(b, "N replicas in one process keep two tokens from one fake upstream: liveness (RDP, auth v2) and partner "+
			"(oauth2, client credentials), both of %v lifetime (serve margin %v, refresh window %v, lock TTL 2 s). A token "+
			"is refreshed once per lifetime minus the refresh window (and its jitter), so the ideal is about one call per "+
			"%v per token, whatever N.\n\n", r.catCalls[0].Lifetime, r.catCalls[0].Lifetime/6, r.catCalls[0].Lifetime/3,
			r.catCalls[0].Lifetime-r.catCalls[0].Lifetime/3)
		b.WriteString("| replicas | seconds | liveness calls | oauth2 calls | ideal per token (1 + seconds / (lifetime − window)) |\n|---|---|---|---|---|\n")
		for _, c := range r.catCalls {
			cycle := (c.Lifetime - c.Lifetime/3).Seconds()
			fmt.Fprintf(b, "| %d | %.0f | %d | %d | %.1f |\n", c.N, c.Seconds, c.LivenessCalls, c.OAuthCalls, 1+c.Seconds/cycle)
		}
	}
	if len(r.catRest) > 0 {
		b.WriteString("\nRedis load at rest with a catalog: N in-process replicas with the default timings (lock TTL 10 s, poll 2 s), " +
			"T tokens fresh for an hour, one redis-server; INFO commandstats over a quiet interval.\n\n")
		b.WriteString("| replicas | tokens | seconds | per replica per second | by command |\n|---|---|---|---|---|\n")
		for _, c := range r.catRest {
			fmt.Fprintf(b, "| %d | %d | %.0f | %.2f | %s |\n", c.N, c.Tokens, c.Seconds, c.PerReplica, c.Mix)
		}
	}
}

// devicesMarkdown writes figure 10: per-device tokens.
func (r *report) devicesMarkdown(b *strings.Builder) {
	if len(r.devices) == 0 {
		return
	}
	d := r.devices[0]
	b.WriteString("\n## 10. Per-device tokens\n\n")
	fmt.Fprintf(b, "N replicas in one process keep `liveness` per device against one fake RDP whose access tokens live %v "+
		"(refreshed %v before expiry). %d devices, each asked %d times through random replicas, spread over the run. "+
		"Latency is Keeper.DeviceToken's (Redis round trips included, no HTTP): a first ask mints, a repeat reads Redis.\n\n",
		d.AccessLifetime, d.AccessLifetime/3, d.Devices, d.Asks)
	b.WriteString("| replicas | seconds | liveness calls per device | sign-ons | access-token lifetimes | first ask p50 / p99 | repeat p50 / p99 |\n|---|---|---|---|---|---|---|\n")
	for _, x := range r.devices {
		fmt.Fprintf(b, "| %d | %.0f | %.2f | %d | %.1f | %s / %s | %s / %s |\n", x.N, x.Seconds,
			float64(x.LivenessCalls)/float64(x.Devices), x.SignOns, x.Seconds/x.AccessLifetime.Seconds(),
			fmtDur(x.FirstP50), fmtDur(x.FirstP99), fmtDur(x.RepeatP50), fmtDur(x.RepeatP99))
	}
}

// scaleBound is figure 11's bound on Redis's load at rest: commands per
// second per replica as a follower (PINGs, lock checks, the replica beat,
// polls), whatever the number of tokens; the leaders' work and their beats
// are stated apart.
const scaleBound = 0.1

// scaleRows are figure 11's lines of the main table.
func (r *report) scaleRows() []row {
	var out []row
	var scans int64
	ran := 0
	for _, x := range r.scale {
		if x.Skipped != "" {
			out = append(out, row{fig: "11", what: fmt.Sprintf("fleet of %d replicas keeping %d tokens", x.N, x.T),
				value: "not run", target: "—", ratio: x.Skipped})
			continue
		}
		ran++
		scans += x.Scans
		out = append(out, row{
			fig: "11", what: fmt.Sprintf("propagation after a refresh, %d replicas × %d tokens", x.N, x.T),
			value:  fmt.Sprintf("p50 %s, p99 %s, max %s%s", fmtDur(x.PropP50), fmtDur(x.PropP99), fmtDur(x.PropMax), lateNote(x.PropLate)),
			target: "p99 < 100 ms",
			ratio: fmt.Sprintf("%d samples of %d refreshes, each asked of the leader and answered in p50 %s, max %s; "+
				"CPU per refresh %s per replica, redis-server %s",
				x.PropSamples, x.PropWrites, fmtDur(x.AskP50), fmtDur(x.AskMax), fmtDur(x.PropCPUPerReplica), fmtDur(x.PropRedisCPU)),
			met: x.PropP99 < 100*time.Millisecond && x.PropLate == 0, judged: true,
		})
		out = append(out, row{
			fig: "11", what: fmt.Sprintf("Redis commands/s at rest per replica, %d replicas × %d tokens", x.N, x.T),
			value: fmt.Sprintf("%.3f as followers (PINGs %.3f, lock checks %.3f, replica beats and polls %.3f); besides: leaders' work %.3f, leaders' beats %.3f; %s/s in total",
				x.FollowersPerReplica, x.PingPerReplica, x.LockChecksPerReplica, x.OthersPerReplica, x.LeadersPerReplica, x.BeatsPerReplica,
				fmtCount(int64(x.RestPerSec+0.5))),
			target: fmt.Sprintf("≤ %g per replica, whatever T", scaleBound),
			ratio:  fmt.Sprintf("%.2f× the bound", x.FollowersPerReplica/scaleBound),
			met:    x.FollowersPerReplica <= scaleBound, judged: true,
		})
	}
	if ran > 0 {
		out = append(out, row{
			fig: "11", what: "commands that scan keys (KEYS, SCAN, HSCAN, SSCAN, ZSCAN), every fleet",
			value: fmt.Sprintf("%d", scans), target: "0", ratio: "INFO commandstats since each redis-server started",
			met: scans == 0, judged: true,
		})
	}
	return out
}

// scaleMarkdown writes figure 11: the fleet at scale.
func (r *report) scaleMarkdown(b *strings.Builder) {
	if len(r.scale) == 0 {
		return
	}
	b.WriteString("\n## 11. Fleet scale: N replicas keeping T tokens\n\n")
	b.WriteString("N replicas in the harness's process, each a tokenkeeper.Keeper with its own Redis client (a pool of " +
		strconv.Itoa(scalePoolSize) + ", as a replica given one CPU has), keeping a catalog of T " +
		"tokens (a source handing out hour-long tokens) with the default timings (lock TTL 10 s, poll 2 s), over one redis-server. " +
		"*start*: from the first replica's start to every replica serving every token; *restart*: the same after stopping the whole " +
		"fleet and starting it again (the tokens stay in Redis). *Propagation*: a refresh asked of a token's leader " +
		"(Keeper.Refresh), each replica polled until it serves the new value (10 s at most: a replica that does not is counted late, as 10 s, and the target is not met), counted from when the leader serves it (its " +
		"write answered; the request's own way to the leader, over the events channel, is given apart as *answered*); the " +
		"refreshes go round the tokens. *At rest*: INFO " +
		"commandstats over a quiet interval once leadership is spread (no replica leading two tokens more than another) and unchanged for three lock TTLs (Redis counts the commands a script runs as well as the " +
		"EVALSHA), per replica and split: *as followers*, what every replica sends whatever it leads, which the target judges: " +
		"*PINGs* through the events connections (sent only when no leader's beat proves the connection), *lock checks* (PTTL of a " +
		"followed token's lock, sent only when no leader's beat announces its lease) and *replica beats and polls*, the rest (the " +
		"replica beat, the polls' MGET); then *leaders*, the leaders' lock renewals, polls of " +
		"their tokens' hashes and balancing reads of the fleet view (GET, 2 × PEXPIRE, HGET, 3 × HGETALL, HDEL); *leaders' beats*, " +
		"the PUBLISH of the beats that tell the followers a leader lives. *Memory*: INFO used_memory at rest. *Leaders*: the replicas leading at least one token, and the most tokens one " +
		"replica leads; *changes of leader at rest*: how often a token's leader changed during the window at rest, sampled every second; *harness cores at rest*: the harness process's CPU time during that window over its length, what the fleet's own loops take while nothing happens (the refreshes' fan-out has what is left of the machine's cores). *CPU per refresh*: the harness process's CPU time during the refreshes divided by refreshes and N (each " +
		"replica's share of the fan-out, the polling included), and redis-server's per refresh. *RSS per replica*: the harness's resident set grown by the fleet, divided by N, once the heap is collected (one `tokenkeeper serve` " +
		"process with one token: figure 7). *GC*: a fleet's thousand heaps are one heap here, so the harness collects it before the window at rest and runs the window and the refreshes at GOGC=400: " +
		"at the default, collections of a 2 GB heap took 3 to 5 s of the two cores every 40 s or so, a stall no fleet has, which showed in the followers' doubt and propagation's tail. Figure 6 runs 100 real `tokenkeeper serve` processes.\n\n")
	b.WriteString("| N | T | start | restart | propagation p50 / p99 / max | commands/s at rest | per replica | as followers | PINGs | lock checks | replica beats and polls | leaders | leaders' beats | used_memory | clients | leaders (most tokens) | changes of leader at rest | harness cores at rest | RSS per replica |\n")
	b.WriteString("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, x := range r.scale {
		if x.Skipped != "" {
			fmt.Fprintf(b, "| %d | %d | not run: %s |  |  |  |  |  |  |  |  |  |  |  |  |  |  |  |  |\n", x.N, x.T, x.Skipped)
			continue
		}
		fmt.Fprintf(b, "| %d | %d | %s | %s | %s / %s / %s | %s | %.3f | %.3f | %.3f | %.3f | %.3f | %.3f | %.3f | %s | %d | %d (%d) | %d | %.2f | %s |\n", x.N, x.T,
			fmtDur(x.Start), fmtDur(x.Restart), fmtDur(x.PropP50), fmtDur(x.PropP99), fmtDur(x.PropMax),
			fmtCount(int64(x.RestPerSec+0.5)), x.PerReplica, x.FollowersPerReplica, x.PingPerReplica, x.LockChecksPerReplica,
			x.OthersPerReplica, x.LeadersPerReplica, x.BeatsPerReplica, fmtMiB(x.UsedMemory/1024), x.Clients,
			x.Leaders, x.MostLed, x.RestMoves, x.RestCores, fmtMiB(x.RSSPerReplica))
	}
	b.WriteString("\n![propagation against N](propagation.png)\n\n![Redis load against N·T](redis-load.png)\n")
	b.WriteString("\nBy command, at rest:\n\n")
	for _, x := range r.scale {
		if x.Skipped == "" {
			fmt.Fprintf(b, "- N=%d T=%d: %s\n", x.N, x.T, orNone(x.Mix))
		}
	}
	b.WriteString("\nBy command, during the refreshes (at-rest commands included):\n\n")
	for _, x := range r.scale {
		if x.Skipped == "" {
			fmt.Fprintf(b, "- N=%d T=%d, %d refreshes: %s\n", x.N, x.T, x.PropWrites, orNone(x.PropMix))
		}
	}
}

// shortMachine names the machine in a plot's title: cores and CPU.
func shortMachine() string {
	model := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range splitLines(string(b)) {
			if v, ok := strings.CutPrefix(line, "model name"); ok {
				model = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	return fmt.Sprintf("%d cores, %s", runtime.NumCPU(), model)
}

// deviceCostMarkdown writes figure 12: per-device tokens' costs.
func (r *report) deviceCostMarkdown(b *strings.Builder) {
	d := r.devCost
	if d == nil {
		return
	}
	c := d.Cfg
	b.WriteString("\n## 12. Per-device costs\n\n")
	fmt.Fprintf(b, "%d replicas in one process keep two per-device tokens from one fake RDP that answers every call after %v: "+
		"liveness without a budget, and metered with a fleet-wide budget of %d mints a minute (bursts of twice the rate per second). "+
		"*Mint*: %d new devices asked one after the other through the replicas in turn (Keeper.DeviceToken: the budget, the mint "+
		"lock, the upstream call, the store); the overhead is that less the upstream's %v. *Repeat reads*: %d goroutines asking for "+
		"those devices' stored tokens at random through random replicas for %v (each read is Redis round trips, no upstream). "+
		"*Budget*: %d goroutines per replica asking for new devices of metered for %v, pausing 2 ms after a refusal; allowed is the "+
		"burst plus the rate times the time from the first ask to the last mint. The fake saw %d liveness calls during the hammering.\n",
		c.Replicas, c.UpstreamLatency, c.MintsPerMinute, c.Mints, c.UpstreamLatency, c.Readers, c.ReadD, c.Hammers, c.HammerD,
		d.FakeCalls-d.FakeCalls0)
}

// lateNote names the replicas that did not serve a refreshed token within
// figure 11's wait, or nothing.
func lateNote(late int) string {
	if late == 0 {
		return ""
	}
	return fmt.Sprintf("; %d replica-refreshes not served within %v (each counted as %v)", late, propWait, propWait)
}
