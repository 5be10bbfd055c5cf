package sim

import (
	"context"
	"fmt"
	"net/http"
	"sort"
	"testing/synctest"
	"time"

	"github.com/tokenkeeper/tokenkeeper/internal/fakerdp"
)

// Result is what one run found.
type Result struct {
	Schedule   Schedule
	Simulated  time.Duration // fake time run (less than Length when it stopped at a violation)
	FleetHours float64       // replicas × simulated hours
	Faults     int           // faults applied
	Violations []Violation
	LogLines   int
	LogTail    []string // the last log lines of the fleet (with no secret in them)
}

// Failed reports whether an invariant was broken.
func (r Result) Failed() bool { return len(r.Violations) > 0 }

// event is a fault starting or healing.
type event struct {
	at  time.Duration
	f   Fault
	end bool
}

// Run runs the fleet through s and checks every invariant at every Step,
// stopping at the first violation. It must be called inside a
// testing/synctest bubble (synctest.Test): every clock of the fleet is the
// bubble's. progress, when not nil, is told the simulated time of each
// Step as Run reaches it: a watchdog outside the bubble sees from it
// whether the bubble's time still moves (a goroutine that never blocks
// holds it still for good).
func Run(s Schedule, progress func(time.Duration)) Result {
	logs := &logScan{}
	w := newWorld(s, logs)
	defer w.close()
	res := Result{Schedule: s}
	for _, r := range w.replicas {
		if err := r.startKeeper(); err != nil {
			res.Violations = append(res.Violations, Violation{Invariant: "setup", Detail: err.Error()})
			return res
		}
	}
	var evs []event
	for _, f := range s.Faults {
		evs = append(evs, event{at: f.At, f: f})
		if f.Dur > 0 {
			evs = append(evs, event{at: f.End(), f: f, end: true})
		}
	}
	sort.SliceStable(evs, func(i, j int) bool { return evs[i].at < evs[j].at })
	var at time.Duration
	for ; at < s.Length; at += Step {
		if progress != nil {
			progress(at)
		}
		for len(evs) > 0 && evs[0].at <= at {
			e := evs[0]
			evs = evs[1:]
			if e.end {
				w.heal(e.f)
			} else {
				w.apply(e.f)
				res.Faults++
			}
		}
		if at%(30*time.Second) == 0 {
			w.snapshot()
		}
		w.roll()
		w.strikeRestores()
		w.strikeRestoreAtCall()
		w.askDevices()
		w.chk.step()
		if len(w.chk.viol) > 0 {
			break
		}
		time.Sleep(Step)
		synctest.Wait()
	}
	w.hookMu.Lock()
	seen := w.writesSeen
	w.hookMu.Unlock()
	w.chk.learn()
	if seen == 0 && len(w.chk.usable[0])+len(w.chk.usable[1]) > 0 && !res.Failed() && len(w.chk.viol) == 0 {
		// Tokens were issued, so written: the hook no longer knows the
		// write script's arguments, and invariant 9 checks nothing.
		w.chk.viol = append(w.chk.viol, Violation{Invariant: "setup", At: w.now(),
			Detail: "Redis's hook recognised no token write (has cache/lua/write.lua's signature changed? see writeArgs): invariant 9 would check nothing"})
	}
	res.Simulated = at
	res.FleetHours = float64(s.Replicas) * at.Hours()
	res.Violations = w.chk.viol
	logs.mu.Lock()
	res.LogLines = logs.lines
	res.LogTail = logs.tail[max(len(logs.tail)-tailLines, 0):]
	logs.mu.Unlock()
	return res
}

// knobs changes the knobs of the upstream a fault names.
func (w *world) knobs(f Fault, fn func(*fakerdp.Knobs)) { w.up[f.Replica%2].Update(fn) }

// apply starts fault f.
func (w *world) apply(f Fault) {
	r := w.replicas[f.Replica%len(w.replicas)]
	ctx := context.Background()
	switch f.Kind {
	case Crash:
		r.stop(true)
	case Stop, Restart:
		w.expectHandover(r)
		r.stop(false)
		if f.Kind == Restart {
			r.startKeeper()
		}
	case Freeze:
		// Thawed after Dur exactly, not at the next step.
		if r.keeper() != nil {
			r.clock.freeze()
			time.AfterFunc(f.Dur, r.clock.thaw)
		}
	case FreezeAtCall:
		w.mu.Lock()
		w.freezeAt = &f
		w.mu.Unlock()
	case HeldWrite:
		w.hookMu.Lock()
		w.holdArmed = &f
		w.hookMu.Unlock()
	case RollCatalog:
		// Replicas stopped or crashed meanwhile start with the new
		// catalog too, when they start again.
		w.mu.Lock()
		w.catalog = 1 - w.catalog
		for i := range w.replicas {
			w.rolls = append(w.rolls, rollStep{at: time.Now().Add(time.Duration(i) * f.Arg), r: w.replicas[i]})
		}
		w.mu.Unlock()
	case Drift:
		// Arg an hour: 3.6 ms an hour is one part per million.
		r.clock.setDrift(int64(f.Arg / (3600 * time.Microsecond)))
	case ClientPause:
		w.mu.Lock()
		if w.paused == nil {
			p := make(chan struct{})
			w.paused = p
			time.AfterFunc(f.Dur, func() {
				w.mu.Lock()
				defer w.mu.Unlock()
				if w.paused == p {
					close(p)
					w.paused = nil
				}
			})
		}
		w.mu.Unlock()
	case RedisCut, RedisRefuse:
		if l := r.redis(); l != nil {
			l.set(map[Kind]linkState{RedisCut: linkCut, RedisRefuse: linkRefused}[f.Kind])
		}
	case RedisLatency:
		if l := r.redis(); l != nil {
			l.setLatency(f.Arg)
		}
	case UpCut:
		if l := r.upstream(); l != nil {
			l.set(linkCut)
		}
	case RedisEmpty:
		w.mini.FlushAll()
		w.resetConns()
		w.chk.lossAt = time.Now()
		w.chk.wipes = append(w.chk.wipes, time.Now())
	case RedisRestoreOld:
		// Armed: it strikes right after the next write of the token, when
		// the replica Redis fails over to has most likely missed it.
		ti := f.Replica % 2
		w.restores = append(w.restores, armedRestore{ti: ti, was: w.mini.HGet(keys(ti).Token, "v"), until: time.Now().Add(f.Dur)})
	case RedisFailover:
		// Armed likewise; the replica it fails over to has every write but
		// those of the last Arg.
		ti := f.Replica % 2
		w.restores = append(w.restores, armedRestore{ti: ti, was: w.mini.HGet(keys(ti).Token, "v"), until: time.Now().Add(f.Dur), lag: f.Arg, fresh: true})
	case RedisRestoreAtCall:
		w.mu.Lock()
		w.restoreAt = &armedRestore{ti: f.Replica % 2, until: time.Now().Add(f.Dur)}
		w.mu.Unlock()
	case EvictLock:
		for i := range tokenNames {
			w.mini.Del(keys(i).Lock)
		}
	case EvictToken:
		for i := range tokenNames {
			w.mini.Del(keys(i).Token)
		}
		w.chk.lossAt = time.Now()
	case ScriptFlush:
		w.admin.ScriptFlush(ctx)
	case ForeignValue:
		w.mini.Del(keys(f.Replica % 2).Token)
		w.mini.Set(keys(f.Replica%2).Token, "not a token")
		w.chk.lossAt = time.Now()
	case RedisSlow:
		w.mu.Lock()
		w.redisSlow = f.Arg
		w.mu.Unlock()
	case RedisBlipAtCall:
		w.mu.Lock()
		w.blip = &f
		w.mu.Unlock()
	case Up500:
		w.knobs(f, func(k *fakerdp.Knobs) { k.LivenessStatus = http.StatusInternalServerError })
	case Up429:
		w.knobs(f, func(k *fakerdp.Knobs) { k.LivenessStatus, k.RetryAfter = http.StatusTooManyRequests, f.Arg })
	case UpAuth500:
		w.up[0].Update(func(k *fakerdp.Knobs) { k.AuthStatus = http.StatusInternalServerError })
	case UpHang:
		w.knobs(f, func(k *fakerdp.Knobs) { k.Latency = 2 * UpTimeout })
	case UpSlow:
		w.mu.Lock()
		w.upLate[f.Replica%2] = f.Arg
		w.mu.Unlock()
	case UpExpired:
		w.knobs(f, func(k *fakerdp.Knobs) { k.Expired = true })
	case UpMalformd:
		w.knobs(f, func(k *fakerdp.Knobs) { k.Malformed = true })
	case UpSkew:
		w.knobs(f, func(k *fakerdp.Knobs) { k.ClockOffset = f.Arg })
	case UpRevoke:
		w.up[0].Revoke()
	case AdminRefresh:
		if k := r.keeper(); k != nil {
			name := tokenNames[w.rng.IntN(len(tokenNames))]
			go func() {
				ctx, cancel := context.WithTimeout(ctx, time.Minute)
				defer cancel()
				k.Refresh(ctx, name)
			}()
		}
	default:
		panic(fmt.Sprintf("sim: unknown fault kind %q", f.Kind))
	}
}

// heal ends fault f.
func (w *world) heal(f Fault) {
	r := w.replicas[f.Replica%len(w.replicas)]
	switch f.Kind {
	case Drift:
		r.clock.setDrift(0)
	case Crash, Stop:
		r.startKeeper()
	case RedisCut, RedisRefuse:
		if l := r.redis(); l != nil {
			l.set(linkUp)
		}
	case RedisLatency:
		if l := r.redis(); l != nil {
			l.setLatency(0)
		}
	case UpCut:
		if l := r.upstream(); l != nil {
			l.set(linkUp)
		}
	case RedisSlow:
		w.mu.Lock()
		w.redisSlow = 0
		w.mu.Unlock()
	case RedisBlipAtCall:
		w.mu.Lock()
		w.blip = nil
		w.mu.Unlock()
	case FreezeAtCall:
		w.mu.Lock()
		w.freezeAt = nil
		w.mu.Unlock()
	case HeldWrite:
		w.hookMu.Lock()
		if w.holdArmed != nil && *w.holdArmed == f {
			w.holdArmed = nil
		}
		w.hookMu.Unlock()
	case Up500, Up429:
		w.knobs(f, func(k *fakerdp.Knobs) { k.LivenessStatus, k.RetryAfter = 0, 0 })
	case UpAuth500:
		w.up[0].Update(func(k *fakerdp.Knobs) { k.AuthStatus = 0 })
	case UpHang:
		w.knobs(f, func(k *fakerdp.Knobs) { k.Latency = 0 })
	case UpSlow:
		w.mu.Lock()
		w.upLate[f.Replica%2] = 0
		w.mu.Unlock()
	case UpExpired:
		w.knobs(f, func(k *fakerdp.Knobs) { k.Expired = false })
	case UpMalformd:
		w.knobs(f, func(k *fakerdp.Knobs) { k.Malformed = false })
	case UpSkew:
		w.knobs(f, func(k *fakerdp.Knobs) { k.ClockOffset = 0 })
	}
}

// rollStep is one restart of a RollingCatalog.
type rollStep struct {
	at time.Time
	r  *replica
}

// roll restarts, gracefully and with the new catalog, each replica whose
// turn in a RollingCatalog has come, unless it is down (it starts with
// the new catalog when it starts again) or runs it already.
func (w *world) roll() {
	w.mu.Lock()
	var due []*replica
	kept := w.rolls[:0]
	for _, s := range w.rolls {
		if time.Now().Before(s.at) {
			kept = append(kept, s)
		} else {
			due = append(due, s.r)
		}
	}
	w.rolls = kept
	catalog := w.catalog
	w.mu.Unlock()
	for _, r := range due {
		r.mu.Lock()
		stale := r.running && r.catalog != catalog
		r.mu.Unlock()
		if !stale {
			continue
		}
		w.expectHandover(r)
		r.stop(false)
		r.startKeeper()
	}
}

// expectHandover notes, for invariant 8, the tokens r leads as it is
// stopped gracefully, when nothing else is going on and another replica
// runs.
func (w *world) expectHandover(r *replica) {
	k := r.keeper()
	if k == nil {
		return
	}
	now := w.now()
	for _, f := range w.s.Faults {
		if f.Kind != RollCatalog && f.At <= now+HandoverBound && f.End()+HealBound > now && !(f.At == now && f.Replica == r.idx) {
			return
		}
	}
	others := false
	for _, o := range w.replicas {
		others = others || o != r && o.keeper() != nil
	}
	if !others {
		return
	}
	for ti, name := range tokenNames {
		if k.Leads(name) {
			w.chk.handover = append(w.chk.handover, pendingHandover{token: ti, from: r.name, deadline: time.Now().Add(HandoverBound)})
		}
	}
}

func (r *replica) redis() *redisLink {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.running {
		return nil
	}
	return r.rl
}

func (r *replica) upstream() *upLink {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.running {
		return nil
	}
	return r.ul
}

// resetConns closes every replica's connections, as a Redis restart does.
func (w *world) resetConns() {
	for _, r := range w.replicas {
		if l := r.redis(); l != nil {
			l.reset()
		}
	}
}

// snapshot is Redis's data set at one time, as an RDB file holds it:
// every key, with its absolute expiry.
type snapshot struct {
	at     time.Time
	cmds   [][]any
	tokens [2]string // each token's value then
}

// snapshot records the data set, keeping twenty minutes of them.
func (w *world) snapshot() {
	ctx := context.Background()
	s := snapshot{at: time.Now()}
	for _, k := range w.mini.Keys() {
		pttl, err := w.admin.PTTL(ctx, k).Result()
		if err != nil {
			continue
		}
		switch w.mini.Type(k) {
		case "string":
			v, _ := w.mini.Get(k)
			s.cmds = append(s.cmds, []any{"SET", k, v})
		case "hash":
			m, _ := w.admin.HGetAll(ctx, k).Result()
			c := []any{"HSET", k}
			for f, v := range m {
				c = append(c, f, v)
			}
			s.cmds = append(s.cmds, c)
		case "zset":
			zs, _ := w.admin.ZRangeWithScores(ctx, k, 0, -1).Result()
			c := []any{"ZADD", k}
			for _, z := range zs {
				c = append(c, z.Score, z.Member)
			}
			s.cmds = append(s.cmds, c)
		case "list":
			l, _ := w.admin.LRange(ctx, k, 0, -1).Result()
			c := []any{"RPUSH", k}
			for _, v := range l {
				c = append(c, v)
			}
			s.cmds = append(s.cmds, c)
		default:
			continue
		}
		if pttl > 0 {
			s.cmds = append(s.cmds, []any{"PEXPIREAT", k, time.Now().Add(pttl).UnixMilli()})
		}
	}
	for i := range tokenNames {
		s.tokens[i] = w.mini.HGet(keys(i).Token, "v")
	}
	w.snapshots = append(w.snapshots, s)
	if len(w.snapshots) > 40 {
		w.snapshots = w.snapshots[1:]
	}
}

// armedRestore is a RedisRestoreOld waiting for the next write of its
// token.
type armedRestore struct {
	ti    int
	was   string
	until time.Time
	lag   time.Duration // strikes this long after the write
	fresh bool          // snapshots are taken every step while it is armed
	at    time.Time     // when it strikes, once the write happened
	taken int           // RedisRestoreAtCall: how many snapshots there were at the call
}

// strikeRestores restores an older data set for each armed restore whose
// token was written since it was armed.
func (w *world) strikeRestores() {
	kept := w.restores[:0]
	fresh := false
	now := time.Now()
	for _, a := range w.restores {
		switch {
		case a.at.IsZero() && w.mini.HGet(keys(a.ti).Token, "v") != a.was:
			a.at = now.Add(a.lag)
			fallthrough
		case !a.at.IsZero():
			if now.Before(a.at) {
				kept = append(kept, a)
				continue
			}
			w.restore(a.ti)
			w.chk.lossAt = now
			w.chk.wipes = append(w.chk.wipes, now)
		case now.Before(a.until):
			kept = append(kept, a)
			fresh = fresh || a.fresh
		}
	}
	w.restores = kept
	if fresh {
		w.snapshot()
	}
}

// strikeRestoreAtCall restores, a second after the upstream call an
// armed RedisRestoreAtCall waited for, the newest snapshot taken before
// that call.
func (w *world) strikeRestoreAtCall() {
	w.mu.Lock()
	a := w.restoreAt
	if a == nil || a.at.IsZero() && time.Now().Before(a.until) || !a.at.IsZero() && time.Now().Before(a.at) {
		w.mu.Unlock()
		return
	}
	w.restoreAt = nil
	taken := a.taken
	struck := !a.at.IsZero()
	w.mu.Unlock()
	if !struck {
		return // no call while it was armed
	}
	w.restoreFrom(taken)
	w.chk.lossAt = time.Now()
	w.chk.wipes = append(w.chk.wipes, time.Now())
}

// restore replaces the data set with an older one, and resets every
// connection, as a Redis restarted from an older RDB file or a failover
// to a replica that missed the last writes: the newest snapshot that holds
// another value of token ti than Redis does now (the write it missed), or
// the oldest kept.
func (w *world) restore(ti int) {
	if len(w.snapshots) == 0 {
		return
	}
	s := w.snapshots[0]
	cur := w.mini.HGet(keys(ti).Token, "v")
	for _, x := range w.snapshots {
		if x.tokens[ti] != cur && x.tokens[ti] != "" {
			s = x
		}
	}
	w.load(s)
}

// restoreFrom restores the newest of the first n snapshots (those taken
// before some moment), or the oldest kept.
func (w *world) restoreFrom(n int) {
	if len(w.snapshots) == 0 {
		return
	}
	w.load(w.snapshots[max(min(n, len(w.snapshots))-1, 0)])
}

// load replaces the data set with s and resets every connection.
func (w *world) load(s snapshot) {
	ctx := context.Background()
	w.mini.FlushAll()
	now := time.Now().UnixMilli()
	for _, c := range s.cmds {
		if c[0] == "PEXPIREAT" && c[2].(int64) <= now {
			w.mini.Del(c[1].(string))
			continue
		}
		w.admin.Do(ctx, c...)
	}
	w.resetConns()
}
