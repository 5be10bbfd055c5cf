package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokenkeeper/tokenkeeper"
)

// scaleResult is figure 11 for one fleet: N in-process replicas keeping a
// catalog of T tokens over one redis-server.
type scaleResult struct {
	N, T    int
	Skipped string // why the fleet was not run; empty when it was

	Start, Restart time.Duration // until every replica serves every token: first start, after a full restart

	PropP50, PropP99, PropMax time.Duration // the leader holding a new token to each other replica serving it
	PropSamples, PropWrites   int
	// PropLate counts the replicas, over all the refreshes, that did not
	// serve the new token within propWait: each is a sample of propWait
	// in the percentiles, a lower bound of its delay.
	PropLate       int
	AskP50, AskMax time.Duration // Keeper.Refresh asked of the leader, to its answer
	// CPU time per refresh: the harness's (every replica's work, and the
	// polling), per replica; redis-server's, for the whole fan-out.
	PropCPUPerReplica, PropRedisCPU time.Duration
	PropMix                         string // commands Redis ran during the refreshes

	RestSeconds     float64
	RestTotal       int64
	RestPerSec      float64 // commands per second, whole fleet
	PerReplica      float64 // commands per second per replica
	PerReplicaToken float64 // commands per second per replica per token
	// The at-rest load split, per replica per second. What every replica
	// sends as a follower, which the target judges: the PINGs through the
	// events connections, the lock checks (PTTL of a followed token's
	// lock), and the rest (the replica beat, the polls' MGET), summed in
	// Followers. Then the leaders' work (lock renewals: EVALSHA, GET,
	// PEXPIRE; their polls of the hash: HGET; balancing reads), and the
	// leaders' beats on the events channels (PUBLISH, SPUBLISH).
	PingPerReplica, LockChecksPerReplica, OthersPerReplica, FollowersPerReplica float64
	LeadersPerReplica, BeatsPerReplica                                          float64
	Mix                                                                         string
	Scans                                                                       int64 // KEYS, SCAN and the like, since redis-server started

	UsedMemory int64 // bytes, INFO memory used_memory, at rest
	Clients    int64 // INFO clients connected_clients, at rest

	Leaders, MostLed int // replicas leading at least one token; most tokens one replica leads
	RestMoves        int // changes of a token's leader seen during the window at rest
	// RestCores is the harness process's CPU time during the window at
	// rest over the window's length: the cores the fleet's own loops take
	// when nothing happens, which the fan-out of a refresh competes with.
	RestCores     float64
	RSSPerReplica int64 // KiB: the harness's resident set grown by the fleet, divided by N
}

// propWait is how long figure 11 waits for every replica to serve a
// refreshed token before it counts the ones that do not as late and goes
// on.
const propWait = 10 * time.Second

// scanCommands are the commands that walk the keyspace; no replica may
// send one.
var scanCommands = []string{"keys", "scan", "hscan", "sscan", "zscan"}

// seqSource hands out a new value on every call, so that a refresh can
// be told from the token before it.
type seqSource struct {
	name     string
	lifetime time.Duration
	seq      atomic.Int64
}

func (s *seqSource) Token(context.Context) (tokenkeeper.UpstreamToken, error) {
	n := s.seq.Add(1)
	return tokenkeeper.UpstreamToken{Value: benchToken + "." + s.name + "." + strconv.FormatInt(n, 10), Lifetime: s.lifetime, Sent: time.Now()}, nil
}

// scalePoolSize is the Redis pool of each replica of figure 11: go-redis
// sizes it ten per GOMAXPROCS, and a replica given one CPU (a Kubernetes
// limit of one core) has ten.
const scalePoolSize = 10

// scaleConns estimates how many connections a fleet of n replicas keeping
// t tokens opens to Redis: each replica's events subscription, and its
// client's pool, which keeps at least three idle connections
// (refresher.TuneRedis) and grows with its tokens' concurrent calls,
// measured at about two per token, up to the pool's size.
func scaleConns(n, t int) int { return n * (1 + min(scalePoolSize, 4+2*t)) }

// maxScaleStores bounds N·T in the harness's one process: every token of
// every replica is a store and a refresher, whose work the harness's cores
// must keep up with for the figures to be the fleet's and not the
// harness's: 100,000 (1,000 replicas keeping 100 tokens) on two cores.
const maxScaleStores = 100000

// maxScaleConns bounds the connections a fleet of figure 11 may need:
// they all go to one port of one loopback address, which the kernel's
// ephemeral port range (net.ipv4.ip_local_port_range) limits.
func maxScaleConns() int {
	limit := fdLimit() - 1000 // the harness's own files
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			lo, err1 := strconv.Atoi(f[0])
			hi, err2 := strconv.Atoi(f[1])
			if err1 == nil && err2 == nil {
				limit = min(limit, (hi-lo)*9/10)
			}
		}
	}
	return limit
}

// fdLimit is this process's limit of open files.
func fdLimit() int {
	var r syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &r); err != nil {
		return 1024
	}
	return int(r.Cur)
}

// raiseFileLimit lifts this process's limit of open files (inherited by
// the redis-servers it starts) as far as it may, for figure 11's fleets.
func raiseFileLimit() {
	var r syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &r) != nil {
		return
	}
	want := r
	want.Cur = max(r.Cur, min(r.Max, 1<<16))
	if syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want) == nil {
		return
	}
	want.Max = max(r.Max, 1<<16) // allowed to root
	want.Cur = want.Max
	_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want)
}

// measureScale runs figure 11 for n replicas keeping t tokens: it starts
// them, waits until every one serves every token, counts Redis's commands
// at rest over restD, refreshes writes tokens one after the other timing
// each replica's pick-up, then stops the whole fleet, starts it again and
// times its convergence.
// restProfile, when set (-restprofile), is where figure 11 writes the
// harness's CPU profile over each fleet's window at rest: what the fleet's
// own loops cost while nothing happens.
var restProfile string

// startRestProfile starts the CPU profile of a window (at rest, or the
// refreshes') of the fleet N x T when restProfile asks for it, and
// returns what stops it.
func startRestProfile(n, t int, window string) (stop func(), err error) {
	if restProfile == "" {
		return func() {}, nil
	}
	f, err := os.Create(fmt.Sprintf("%s-%dx%d%s", restProfile, n, t, window))
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("profile at rest: %w", err)
	}
	return sync.OnceFunc(func() { pprof.StopCPUProfile(); f.Close() }), nil
}

func measureScale(ctx context.Context, work string, n, t, writes int, restD time.Duration, say func(string, ...any)) (*scaleResult, error) {
	res := &scaleResult{N: n, T: t}
	if n*t > maxScaleStores {
		res.Skipped = fmt.Sprintf("N·T = %s stores and refreshers in the harness's one process, over the %s it runs (on %d cores); "+
			"one process cannot keep up with them", fmtCount(int64(n*t)), fmtCount(maxScaleStores), runtime.NumCPU())
		return res, nil
	}
	if conns, limit := scaleConns(n, t), maxScaleConns(); conns > limit {
		res.Skipped = fmt.Sprintf("needs about %s connections to Redis (a subscription and a pool per replica, the pool growing "+
			"with its tokens), over the %s this machine allows to one address (open files, ephemeral ports)",
			fmtCount(int64(conns)), fmtCount(int64(limit)))
		return res, nil
	}
	rs, err := startRedis(ctx, work, fmt.Sprintf("redis-scale-%d-%d", n, t), "--maxclients", strconv.Itoa(max(10000, fdLimit()-64)),
		"--tcp-backlog", "4096") // a fleet dials at once: with Redis's default of 511, connections wait for SYN retries
	if err != nil {
		return nil, err
	}
	defer rs.Stop()

	sources := make([]*seqSource, t)
	tokens := make([]tokenkeeper.TokenConfig, t)
	names := make([]string, t)
	for i := range t {
		names[i] = fmt.Sprintf("token-%d", i)
		sources[i] = &seqSource{name: names[i], lifetime: time.Hour}
		tokens[i] = tokenkeeper.TokenConfig{Name: names[i], Source: sources[i]}
	}
	keepers := make([]*tokenkeeper.Keeper, n)
	stops := make([]func(), n)
	stopFleet := func() {
		var wg sync.WaitGroup
		for i, stop := range stops {
			if stop != nil {
				wg.Go(stop)
				stops[i] = nil
			}
		}
		wg.Wait()
	}
	defer stopFleet()
	startFleet := func() error {
		for i := range n {
			k, stop, err := catalogKeeperOf(ctx, rs, fmt.Sprintf("replica-%d", i), tokens, scaleLockTTL,
				func(o *redis.Options) { o.PoolSize = scalePoolSize })
			if err != nil {
				return err
			}
			keepers[i], stops[i] = k, stop
		}
		return nil
	}
	allServe := func() bool {
		for _, k := range keepers {
			for _, name := range names {
				if _, ok := k.Current(name); !ok {
					return false
				}
			}
		}
		return true
	}

	runtime.GC()
	rss0, _ := rssKiB(os.Getpid())
	t0 := time.Now()
	if err := startFleet(); err != nil {
		return nil, err
	}
	if err := waitFor(ctx, 120*time.Second, 10*time.Millisecond, "every replica serving every token", allServe); err != nil {
		return nil, err
	}
	res.Start = time.Since(t0)
	say("  N=%d T=%d: every replica serves every token %s after the first start", n, t, fmtDur(res.Start))

	// Every token led by someone, then a quiet interval.
	if err := waitFor(ctx, 30*time.Second, 50*time.Millisecond, "a leader for every token", func() bool {
		for _, name := range names {
			if leaderOf(keepers, name) < 0 {
				return false
			}
		}
		return true
	}); err != nil {
		return nil, err
	}
	// At rest is after the fleet settled, not while it still spreads
	// leadership or writes what it adopted: the balancer stops once no
	// replica leads two tokens more than another, and hands over at most
	// every three lock TTLs (balance.go), so leadership so spread and
	// unchanged for three lock TTLs is settled; and a replica spreads the
	// state writes of a token it adopted over 30 s (refresher's
	// lazyWindow), counted from the first start.
	leadership := func() []int {
		ls := make([]int, t)
		for i, name := range names {
			ls[i] = leaderOf(keepers, name)
		}
		return ls
	}
	settled, err := settle(ctx, n, scaleLockTTL, t0.Add(scaleLazyWindow), leadership, say)
	if err != nil {
		return nil, err
	}
	if !settled {
		say("  N=%d T=%d: leadership still moving after %v; measuring at rest anyway", n, t, settleCap)
	}
	led := map[int]int{}
	for _, l := range leadership() {
		led[l]++
	}
	res.Leaders = len(led)
	for _, c := range led {
		res.MostLed = max(res.MostLed, c)
	}
	runtime.GC()
	if rss1, err := rssKiB(os.Getpid()); err == nil {
		res.RSSPerReplica = max(rss1-rss0, 0) / int64(n)
	}
	// Just collected: the windows at rest and of the refreshes end before
	// the next collection (scaleGCPercent).
	defer debug.SetGCPercent(debug.SetGCPercent(scaleGCPercent))

	before, err := rs.Commands(ctx)
	if err != nil {
		return nil, err
	}
	stopProfile, err := startRestProfile(n, t, "")
	if err != nil {
		return nil, err
	}
	defer func() { stopProfile() }() // on an early return; the one running
	r0 := time.Now()
	rc0, err := cpuTime(os.Getpid())
	if err != nil {
		return nil, err
	}
	// Leadership sampled every second: a token that changed leader in the
	// window cost the fleet an election (its followers' lock checks).
	was := leadership()
	for time.Since(r0) < restD {
		time.Sleep(min(time.Second, restD-time.Since(r0)))
		now := leadership()
		for i := range now {
			if now[i] != was[i] {
				res.RestMoves++
			}
		}
		was = now
	}
	stopProfile()
	after, err := rs.Commands(ctx)
	if err != nil {
		return nil, err
	}
	res.RestSeconds = time.Since(r0).Seconds()
	rc1, err := cpuTime(os.Getpid())
	if err != nil {
		return nil, err
	}
	res.RestCores = (rc1 - rc0).Seconds() / res.RestSeconds
	delta := after.Sub(before)
	res.RestTotal = delta.Total()
	res.RestPerSec = float64(res.RestTotal) / res.RestSeconds
	res.PerReplica = res.RestPerSec / float64(n)
	res.PerReplicaToken = res.PerReplica / float64(t)
	perReplica := func(c int64) float64 { return float64(c) / res.RestSeconds / float64(n) }
	leaders := delta["get"] + 2*delta["pexpire"] + delta["hget"] + 3*delta["hgetall"] + delta["hdel"]
	beats := delta["publish"] + delta["spublish"]
	res.PingPerReplica = perReplica(delta["ping"])
	res.LeadersPerReplica = perReplica(leaders)
	res.BeatsPerReplica = perReplica(beats)
	res.LockChecksPerReplica = perReplica(delta["pttl"])
	res.OthersPerReplica = perReplica(res.RestTotal - delta["ping"] - leaders - beats - delta["pttl"])
	res.FollowersPerReplica = res.PingPerReplica + res.LockChecksPerReplica + res.OthersPerReplica
	res.Mix = delta.String()
	if res.UsedMemory, err = rs.infoInt(ctx, "memory", "used_memory"); err != nil {
		return nil, err
	}
	if res.Clients, err = rs.infoInt(ctx, "clients", "connected_clients"); err != nil {
		return nil, err
	}
	say("  N=%d T=%d: at rest %.0f commands/s (%.3f per replica: as followers %.3f (PINGs %.3f, lock checks %.3f, replica beats and polls %.3f); leaders' work %.3f, leaders' beats %.3f), used_memory %s, %d clients; %d replicas lead, at most %d tokens each; %d changes of leader in the window; the harness used %.2f cores at rest",
		n, t, res.RestPerSec, res.PerReplica, res.FollowersPerReplica, res.PingPerReplica, res.LockChecksPerReplica, res.OthersPerReplica,
		res.LeadersPerReplica, res.BeatsPerReplica,
		fmtMiB(res.UsedMemory/1024), res.Clients, res.Leaders, res.MostLed, res.RestMoves, res.RestCores)

	// Propagation: a refresh on the token's leader, every replica polled
	// until it serves a different value, counted from when the leader
	// does (its write answered): the refresh request's own way to the
	// leader is not propagation.
	var lat, asks []time.Duration
	seen := make([]time.Duration, n)
	cpu0, err1 := cpuTime(os.Getpid())
	rcpu0, err2 := cpuTime(rs.proc.Pid())
	cmds0, err3 := rs.Commands(ctx)
	if err := errors.Join(err1, err2, err3); err != nil {
		return nil, err
	}
	if stopProfile, err = startRestProfile(n, t, "-refreshes"); err != nil {
		return nil, err
	}
	for w := range writes {
		name := names[w%t]
		li := leaderOf(keepers, name)
		if li < 0 {
			return nil, fmt.Errorf("write %d: no leader for %s", w, name)
		}
		old, _ := keepers[li].Current(name)
		for i := range seen {
			seen[i] = -1
		}
		refreshed := make(chan error, 1)
		start := time.Now()
		go func() {
			_, err := keepers[li].Refresh(ctx, name)
			asked := time.Since(start)
			if err == nil {
				asks = append(asks, asked) // read after <-refreshed
			}
			refreshed <- err
		}()
		left := n
		deadline := start.Add(propWait)
		for left > 0 && time.Now().Before(deadline) {
			for i, k := range keepers {
				if seen[i] >= 0 {
					continue
				}
				if tok, ok := k.Current(name); ok && newer(tok, old) {
					seen[i] = time.Since(start)
					left--
				}
			}
			if left > 0 {
				time.Sleep(time.Millisecond) // the replicas share the harness's cores with this loop
			}
		}
		if err := <-refreshed; err != nil {
			return nil, fmt.Errorf("refresh %d of %s: %w", w, name, err)
		}
		if seen[li] < 0 {
			return nil, fmt.Errorf("refresh %d of %s: its leader did not serve the new token within %v", w, name, propWait)
		}
		if left > 0 {
			say("  N=%d T=%d: refresh %d of %s: %d of %d replicas did not serve the new token within %v", n, t, w, name, left, n, propWait)
			res.PropLate += left
		}
		for i, d := range seen {
			if d < 0 {
				d = propWait // not served by then: a lower bound
			}
			if i != li {
				lat = append(lat, max(d-seen[li], 0))
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	stopProfile()
	cpu1, err1 := cpuTime(os.Getpid())
	rcpu1, err2 := cpuTime(rs.proc.Pid())
	cmds1, err3 := rs.Commands(ctx)
	if err := errors.Join(err1, err2, err3); err != nil {
		return nil, err
	}
	res.PropMix = cmds1.Sub(cmds0).String()
	res.PropCPUPerReplica = (cpu1 - cpu0) / time.Duration(writes*n)
	res.PropRedisCPU = (rcpu1 - rcpu0) / time.Duration(writes)
	slices.Sort(lat)
	res.PropWrites, res.PropSamples = writes, len(lat)
	res.PropP50, res.PropP99, res.PropMax = quantile(lat, 0.5), quantile(lat, 0.99), lat[len(lat)-1]
	slices.Sort(asks)
	res.AskP50, res.AskMax = quantile(asks, 0.5), asks[len(asks)-1]
	say("  N=%d T=%d: propagation p50 %s p99 %s max %s (%d refreshes, %d replicas late, answered p50 %s max %s); CPU per refresh: %s per replica, redis-server %s",
		n, t, fmtDur(res.PropP50), fmtDur(res.PropP99), fmtDur(res.PropMax), writes, res.PropLate, fmtDur(res.AskP50), fmtDur(res.AskMax),
		fmtDur(res.PropCPUPerReplica), fmtDur(res.PropRedisCPU))

	// A full restart: the tokens stay in Redis.
	stopFleet()
	t1 := time.Now()
	if err := startFleet(); err != nil {
		return nil, err
	}
	if err := waitFor(ctx, 120*time.Second, 10*time.Millisecond, "every replica serving every token after a restart", allServe); err != nil {
		return nil, err
	}
	res.Restart = time.Since(t1)
	say("  N=%d T=%d: after a full restart, every replica serves every token in %s", n, t, fmtDur(res.Restart))

	all, err := rs.Commands(ctx)
	if err != nil {
		return nil, err
	}
	for _, c := range scanCommands {
		res.Scans += all[c]
	}
	return res, nil
}

// leaderOf is the index of the replica that leads name, or -1.
func leaderOf(keepers []*tokenkeeper.Keeper, name string) int {
	for i, k := range keepers {
		if k.Leads(name) {
			return i
		}
	}
	return -1
}

// newer reports whether tok is another token than old. The generation
// tells, an integer compared where the value is hundreds of bytes: the
// loop that asks every replica every millisecond shares the fleet's cores,
// and what it costs them shows in the propagation it measures. Without a
// generation (a token never stored) the value tells.
func newer(tok, old tokenkeeper.Token) bool {
	if tok.Generation != 0 && old.Generation != 0 {
		return tok.Generation != old.Generation
	}
	return tok.Value != old.Value
}

// scaleGCPercent is the harness's GOGC while a fleet of figure 11 runs.
// A fleet's thousand heaps are one heap here (about 2 GB at 1,000 × 100),
// whose every collection marks all of it on the harness's two cores: at
// the default of 100, a cycle of 3 to 5 s every 40 s or so, during which
// the replicas' goroutines pay the marking as they allocate and a PONG or
// a beat comes seconds late. That stall has no counterpart in a fleet,
// where each replica collects its few megabytes on its own CPU; with it,
// figure 11 measured the harness's collector, in the followers' doubt
// (their proofs lapsing, so they poll) and in the tail of propagation. Set
// to 400 once a collection has just ended, before the window at rest
// (measureScale), it puts the next minutes later, after the window and the
// refreshes. The fleet starts and settles at the default, so that the
// resident set is measured as before.
const scaleGCPercent = 400

// scaleLockTTL is figure 11's lock TTL, and scaleLazyWindow the time over
// which a replica spreads the state writes of a token it adopted
// (refresher's lazyWindow).
const (
	scaleLockTTL    = 10 * time.Second
	scaleLazyWindow = 30 * time.Second
)

// settleCap is how long settle waits at most.
const settleCap = 10 * time.Minute

// settle waits until leadership over the n replicas is spread as the
// balancer spreads it (no replica leads two tokens more than another) and
// leaders (each token's leader) has not changed for three lock TTLs, and
// not before notBefore, for settleCap at most; it reports whether
// leadership settled, saying every minute how far it is.
func settle(ctx context.Context, n int, lockTTL time.Duration, notBefore time.Time, leaders func() []int, say func(string, ...any)) (bool, error) {
	start := time.Now()
	give := start.Add(settleCap)
	prev, since := leaders(), start
	spread := func(ls []int) (leading, most int, even bool) {
		led := make([]int, n)
		for _, l := range ls {
			if l >= 0 {
				led[l]++
			}
		}
		for _, c := range led {
			if c > 0 {
				leading++
			}
		}
		return leading, slices.Max(led), slices.Max(led)-slices.Min(led) <= 1
	}
	next := start.Add(time.Minute)
	for {
		_, _, even := spread(prev)
		if even && time.Since(since) >= 3*lockTTL && !time.Now().Before(notBefore) {
			return true, nil
		}
		if !time.Now().Before(give) {
			return false, nil
		}
		select {
		case <-ctx.Done():
			return false, ctx.Err()
		case <-time.After(time.Second):
		}
		if cur := leaders(); !slices.Equal(cur, prev) {
			prev, since = cur, time.Now()
		}
		if time.Now().After(next) {
			leading, most, _ := spread(prev)
			say("    leadership after %v: %d replicas lead, at most %d tokens each", time.Since(start).Round(time.Second), leading, most)
			next = next.Add(time.Minute)
		}
	}
}
