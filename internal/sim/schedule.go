package sim

import (
	"fmt"
	"math/rand/v2"
	"sort"
	"strings"
	"time"
)

// Kind is a kind of fault (or of client action) in a Schedule.
type Kind string

// The faults the simulator injects. Each lasts Fault.Dur from Fault.At;
// those that name a replica act on Fault.Replica.
const (
	// Replicas.
	Crash        Kind = "crash"                  // the replica dies without a word (its locks are not released), restarts after Dur
	Stop         Kind = "stop"                   // graceful stop (locks released), restart after Dur
	Restart      Kind = "restart"                // graceful stop and immediate restart
	RollCatalog  Kind = "rolling-catalog-change" // every replica in turn, Arg apart, stopped gracefully and started with a changed catalog: a token added (or, the next time, removed again)
	FreezeAtCall Kind = "freeze-at-call"         // armed for Dur: the replica making the next token call to upstream Replica%2 (the leader) freezes for Arg (5 to 12 s) while the call is in flight
	Drift        Kind = "clock-drift"            // the replica's clock runs fast or slow by Arg an hour (up to 3.6 s: 1000 ppm), its timers with it, for Dur
	Freeze       Kind = "freeze"                 // a GC pause or SIGSTOP for Dur: its timers and I/O stall, then its queued writes go out late (within their deadlines)
	HeldWrite    Kind = "write-at-takeover"      // armed for Dur: the next write of token Replica%2 by its lock's holder reaches Redis and waits there while the writer freezes for Arg (12 to 25 s); it runs right after another replica takes the lock (or as the writer resumes)

	// Links of one replica.
	RedisCut     Kind = "redis-cut"     // replica↔Redis partition: nothing arrives, commands time out
	RedisRefuse  Kind = "redis-refuse"  // replica↔Redis connections reset and refused
	RedisLatency Kind = "redis-latency" // replica↔Redis: every answer is late by Arg
	UpCut        Kind = "upstream-cut"  // replica↔upstreams partition: calls hang until their timeout

	// Redis, for the whole fleet.
	RedisEmpty         Kind = "redis-restart-empty"   // every key lost, every connection reset
	RedisRestoreOld    Kind = "redis-restore-old"     // armed for Dur: right after token Replica%2 is next written, the data set goes back to the last snapshot before that write
	EvictLock          Kind = "evict-lock"            // every token's lock key deleted
	EvictToken         Kind = "evict-token"           // every token's token key deleted
	ScriptFlush        Kind = "script-flush"          // SCRIPT FLUSH
	ForeignValue       Kind = "foreign-value"         // a string where a token's hash is
	RedisSlow          Kind = "redis-slow"            // every replica's answers late by Arg
	RedisBlipAtCall    Kind = "redis-blip-at-call"    // Redis unreachable for the whole fleet for Arg from the next upstream call
	RedisRestoreAtCall Kind = "redis-restore-at-call" // armed for Dur: a second after the next call to upstream Replica%2, Redis restarts from its last snapshot, older than the token that call fetched
	RedisFailover      Kind = "redis-failover"        // armed for Dur: Arg after token Replica%2 is next written, Redis fails over to a replica that missed that write (and the others since)
	ClientPause        Kind = "client-pause-write"    // CLIENT PAUSE WRITE for Dur: every write (and every EVAL, EVALSHA, PUBLISH) waits

	// Upstreams (Replica picks which: even the RDP fake, odd the OAuth2 one).
	Up500      Kind = "upstream-500"       // 500 to every token call
	Up429      Kind = "upstream-429"       // 429 with Retry-After Arg
	UpAuth500  Kind = "upstream-auth-500"  // the RDP sign-on answers 500
	UpHang     Kind = "upstream-hang"      // answers later than the client's timeout
	UpSlow     Kind = "upstream-slow"      // answers arrive Arg (2 to 9.5 s) after the upstream issued them, within the timeout
	UpExpired  Kind = "upstream-expired"   // tokens already expired
	UpMalformd Kind = "upstream-malformed" // truncated JSON
	UpSkew     Kind = "upstream-skew"      // the upstream's clock (Date, expiresAt) off by Arg
	UpRevoke   Kind = "upstream-revoke"    // every access token revoked (one instant)

	// Clients.
	AdminRefresh Kind = "admin-refresh" // an admin asks a replica for a refresh of a token
)

// allKinds are the kinds Generate draws from, with their weights.
// redis-blip-at-call weighs most: it is the one fault that leaves a leader
// holding a token it could not store (the unsaved-token memory), and it
// strikes only when an upstream call falls within its arming; at the
// weight of the others, the planted unsaved-forgotten took 116 seeds.
var allKinds = []struct {
	k Kind
	w int
}{
	{Crash, 3}, {Stop, 3}, {Restart, 2}, {RollCatalog, 2}, {Freeze, 4}, {FreezeAtCall, 3}, {HeldWrite, 3}, {Drift, 2},
	{RedisCut, 3}, {RedisRefuse, 2}, {RedisLatency, 2}, {UpCut, 2},
	{RedisEmpty, 2}, {RedisRestoreOld, 3}, {EvictLock, 2}, {EvictToken, 2}, {ScriptFlush, 2}, {ForeignValue, 2},
	{RedisSlow, 2}, {RedisBlipAtCall, 8}, {RedisRestoreAtCall, 2}, {RedisFailover, 2}, {ClientPause, 2},
	{Up500, 3}, {Up429, 2}, {UpAuth500, 2}, {UpHang, 2}, {UpSlow, 3}, {UpExpired, 2}, {UpMalformd, 2}, {UpSkew, 2}, {UpRevoke, 1},
	{AdminRefresh, 3},
}

// Fault is one fault of a Schedule.
type Fault struct {
	At, Dur time.Duration // from the start of the run
	Kind    Kind
	Replica int           // which replica (or upstream), when the kind names one
	Arg     time.Duration // the kind's parameter (a latency, a Retry-After, a skew)
}

// End is when the fault heals.
func (f Fault) End() time.Duration { return f.At + f.Dur }

func (f Fault) String() string {
	return fmt.Sprintf("{At: %v, Dur: %v, Kind: %q, Replica: %d, Arg: %v}", f.At, f.Dur, f.Kind, f.Replica, f.Arg)
}

// Schedule is one run of the simulator: the fleet's size, how long it
// runs, and the faults. Everything else is drawn from Seed.
type Schedule struct {
	Seed     uint64
	Replicas int
	Length   time.Duration
	Faults   []Fault
}

// GoString writes s as a Go literal, for a regression test.
func (s Schedule) GoString() string {
	var b strings.Builder
	fmt.Fprintf(&b, "sim.Schedule{Seed: %d, Replicas: %d, Length: %d /* %v */, Faults: []sim.Fault{\n", s.Seed, s.Replicas, int64(s.Length), s.Length)
	for _, f := range s.Faults {
		fmt.Fprintf(&b, "\t{At: %d, Dur: %d, Kind: %q, Replica: %d, Arg: %d}, // %v for %v\n", int64(f.At), int64(f.Dur), f.Kind, f.Replica, int64(f.Arg), f.At, f.Dur)
	}
	b.WriteString("}}")
	return b.String()
}

// Window is the span of fake time over which Generate spreads one burst
// of faults: they start in its first half and have all healed before its
// last quarter, which is quiet.
const Window = 20 * time.Minute

// Generate draws a schedule from seed: 2 to 6 replicas, and in every
// Window of length up to four faults at once, of any kinds.
func Generate(seed uint64, length time.Duration) Schedule {
	rng := rand.New(rand.NewPCG(seed, 0x5eed))
	s := Schedule{Seed: seed, Replicas: 2 + rng.IntN(5), Length: length}
	total := 0
	for _, k := range allKinds {
		total += k.w
	}
	// The first minutes are quiet: the fleet comes up.
	for w := time.Duration(0); w+Window <= length; w += Window {
		n := rng.IntN(5)
		for range n {
			x := rng.IntN(total)
			var kind Kind
			for _, k := range allKinds {
				if x -= k.w; x < 0 {
					kind = k.k
					break
				}
			}
			at := w + 2*time.Minute + time.Duration(rng.Int64N(int64(Window/2-2*time.Minute)))
			f := Fault{At: at.Truncate(time.Second), Kind: kind, Replica: rng.IntN(s.Replicas)}
			f.Dur, f.Arg = shape(rng, kind)
			s.Faults = append(s.Faults, f)
		}
	}
	sort.SliceStable(s.Faults, func(i, j int) bool { return s.Faults[i].At < s.Faults[j].At })
	return s
}

// shape draws a fault's duration and parameter; every fault heals within
// Window/4.
func shape(rng *rand.Rand, k Kind) (dur, arg time.Duration) {
	sec := func(lo, hi int) time.Duration { return time.Duration(lo+rng.IntN(hi-lo+1)) * time.Second }
	switch k {
	case AdminRefresh, UpRevoke, EvictLock, EvictToken, ScriptFlush, ForeignValue, RedisEmpty:
		return 0, 0
	case Restart:
		return 0, 0
	case RedisLatency, RedisSlow:
		return sec(5, 240), time.Duration(50+rng.IntN(3000)) * time.Millisecond
	case RedisRestoreOld, RedisRestoreAtCall:
		return sec(60, 300), 0
	case RedisFailover:
		return sec(60, 300), time.Duration(rng.IntN(3000)) * time.Millisecond
	case FreezeAtCall:
		// About the lock's life left (7.5 to 10 s) and the call's timeout
		// (10 s): a call that outlasts its timeout fails, and a freeze
		// within the lock's life changes nothing; in between, the replica
		// resumes with its answer, deposed.
		return sec(60, 300), time.Duration(5000+rng.IntN(7000)) * time.Millisecond
	case RollCatalog:
		// Each restart after the last one's handover (HandoverBound);
		// the roll of six replicas heals within Window/4.
		arg = sec(8, 40)
		return 6 * arg, arg
	case HeldWrite:
		// Longer than the lock's life (10 s) and an election: the lock
		// changes hands while the write waits.
		return sec(60, 300), time.Duration(12000+rng.IntN(13000)) * time.Millisecond
	case Drift:
		return sec(60, 300), time.Duration(rng.IntN(7201)-3600) * time.Millisecond
	case Freeze:
		// From a long GC pause to a stop of several lock TTLs.
		return time.Duration(200+rng.IntN(40000)) * time.Millisecond, 0
	case ClientPause:
		return time.Duration(100+rng.IntN(15000)) * time.Millisecond, 0
	case RedisBlipAtCall:
		return sec(60, 300), time.Duration(500+rng.IntN(2500)) * time.Millisecond
	case Up429:
		return sec(5, 300), sec(1, 30)
	case UpSlow:
		return sec(5, 300), time.Duration(2000+rng.IntN(7500)) * time.Millisecond
	case UpSkew:
		return sec(30, 300), time.Duration(rng.IntN(600)-300) * time.Second

	}
	return sec(1, 300), 0
}
