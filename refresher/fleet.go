package refresher

import (
	"go.opentelemetry.io/otel/trace"

	"context"
	"crypto/rand"
	_ "embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokenkeeper/tokenkeeper/cache"
	"github.com/tokenkeeper/tokenkeeper/clock"
)

// The fleet view: every replica beats once per period into the fleet's
// hash of live replicas (tokenkeeper:replicas, a field per instance,
// Beat), whatever the number of tokens it keeps; it writes its state for
// each token (ready, leader, fingerprint...) into that token's hash
// (tokenkeeper:{name}:replicas, a field per instance, Heartbeat) when the
// state changes, not periodically; and the leader pushes each refresh
// attempt onto a short list (tokenkeeper:{name}:refreshes). A replica's
// state for a token counts while its beat is fresh. Everything is dated on
// Redis's clock: readers turn those dates into ages, then into their own
// local times, so no two wall clocks are ever compared.

// historySize is how many refresh attempts are kept, in memory and in Redis.
const historySize = 20

// historyTTL is how long the Redis list of attempts outlives its last push.
const historyTTL = 24 * time.Hour

// Attempt is one refresh attempt by a leader. It never holds the token.
type Attempt struct {
	// At is when the attempt ended, on the reader's clock.
	At time.Time
	// By is the instance id of the leader that made it.
	By string
	// Outcome is "success", "superseded", "upstream_error", "redis_error"
	// or "fenced": the outcome label of tokenkeeper_refreshes_total.
	Outcome string
	// Took is the whole attempt; Upstream the upstream call alone (0 when
	// none was made: a token fetched earlier was stored, or the attempt
	// failed before calling).
	Took, Upstream time.Duration
	// Fingerprint names the token stored or adopted; empty on failure.
	Fingerprint string
	// ExpiresAt is when that token expires, on the reader's clock.
	ExpiresAt time.Time
	// Error says why the attempt failed; it holds no secret.
	Error string
	// RetryAfter is the delay the upstream asked for on failure (0: none),
	// which binds the next leader too.
	RetryAfter time.Duration
}

// Replica is one replica's last heartbeat.
type Replica struct {
	// Instance is the replica's id (TOKENKEEPER_INSTANCE_ID).
	Instance string
	// Version is the build it runs.
	Version string
	// Ready is whether it holds a servable token; Leader whether it holds
	// the lock.
	Ready, Leader bool
	// Fingerprint names the token it holds, and ExpiresAt its expiry on
	// the reader's clock; both empty when it holds none.
	Fingerprint string
	ExpiresAt   time.Time
	// LastEvent is when it last received a message on the events channel,
	// on the reader's clock (zero: none since it started), and
	// LastEventType that message's type (cache.MsgToken, or a control
	// message of this package: refresh, refreshed, released).
	LastEvent     time.Time
	LastEventType string
	// Seen is when it wrote this heartbeat, on the reader's clock.
	Seen time.Time
	// Problem is what keeps it from serving or leading, if anything it
	// knows of (for example a token it cannot decrypt).
	Problem string
	// Upstream is whether its last call to the upstream, made while
	// leading, worked: "ok", "failing", or "" when it has made none.
	// UpstreamError is the error of a failing one; it holds no secret.
	Upstream, UpstreamError string
	// AsideFor is how long it still stays out of elections after handing
	// leadership over (0: it stands as usual).
	AsideFor time.Duration
}

// Fleet is the fleet as Redis records it.
type Fleet struct {
	// Leader is the instance id of the lock holder; empty when none.
	Leader string
	// Replicas are those whose heartbeat is fresh, by instance id.
	Replicas []Replica
	// Refreshes are the last refresh attempts of any leader, newest first.
	Refreshes []Attempt
}

// fleetReader is what ReadFleet needs of a go-redis client.
type fleetReader interface {
	redis.Scripter
	Get(ctx context.Context, key string) *redis.StringCmd
}

// ReadFleet reads the fleet view from Redis: the lock holder, the
// replicas whose heartbeat has not expired (expired ones are removed) and
// the last refresh attempts, dated at now on the reader's clock. It needs
// no Refresher: `tokenkeeper status` uses it.
func ReadFleet(ctx context.Context, rdb fleetReader, keys cache.Keys, now time.Time) (Fleet, error) {
	var f Fleet
	var err error
	if f.Leader, err = readLeader(ctx, rdb, keys.Lock); err != nil {
		return f, err
	}
	if f.Replicas, err = readReplicas(ctx, rdb, keys, now); err != nil {
		return f, err
	}
	if f.Refreshes, err = readAttempts(ctx, rdb, keys.Refreshes, now); err != nil {
		return f, err
	}
	return f, nil
}

// ReadReplicas reads the replicas whose beat is fresh and that keep the
// token of keys, as ReadFleet does, without the leader and the attempts.
func ReadReplicas(ctx context.Context, rdb redis.Scripter, keys cache.Keys) ([]Replica, error) {
	return readReplicas(ctx, rdb, keys, time.Now())
}

// readLeader returns the instance id in the lock's value, or "".
func readLeader(ctx context.Context, rdb fleetReader, lockKey string) (string, error) {
	v, err := rdb.Get(ctx, lockKey).Result()
	if errors.Is(err, redis.Nil) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("refresher: read lock: %w", err)
	}
	return holderOf(v), nil
}

// The lock's value is this package's, not redislock's: "tk:", 16 random
// hex digits, ":", and the holder's instance id. The random part tells two
// terms of one replica apart, so a paused leader's write is fenced even
// when the same replica leads again.
const (
	lockPrefix   = "tk:"
	lockNonceLen = 16
)

// newLockValue returns a fresh lock value for instance.
func newLockValue(instance string) (string, error) {
	var b [lockNonceLen / 2]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("refresher: lock value: %w", err)
	}
	return lockPrefix + hex.EncodeToString(b[:]) + ":" + instance, nil
}

// holderOf returns the instance id in a lock value, or "" when it names
// none. It also reads the value replicas of earlier versions wrote (22
// random characters, then the instance id), so a fleet upgraded one
// replica at a time still sees its leader.
func holderOf(value string) string {
	if rest, ok := strings.CutPrefix(value, lockPrefix); ok && len(rest) > lockNonceLen && rest[lockNonceLen] == ':' {
		return rest[lockNonceLen+1:]
	}
	if len(value) > 22 {
		return value[22:]
	}
	return ""
}

//go:embed lua/beat.lua
var beatLua string

// beatScript writes one heartbeat. KEYS: hash. ARGV: instance, ttl ms,
// json. The field's value is "<written ms> <ttl ms> <json>".
var beatScript = redis.NewScript(beatLua)

//go:embed lua/alive.lua
var aliveLua string

// aliveScript writes one beat into the fleet's hash. KEYS: hash. ARGV:
// instance, ttl ms, json.
var aliveScript = redis.NewScript(aliveLua)

//go:embed lua/replicas.lua
var replicasLua string

// replicasScript returns Redis's time and the fresh heartbeats, removing
// the expired ones. KEYS: hash.
var replicasScript = redis.NewScript(replicasLua)

//go:embed lua/push.lua
var pushLua string

// pushScript records a refresh attempt. KEYS: list. ARGV: json, size, ttl ms.
var pushScript = redis.NewScript(pushLua)

//go:embed lua/forget.lua
var forgetLua string

// forgetScript removes one heartbeat. KEYS: hash. ARGV: instance.
var forgetScript = redis.NewScript(forgetLua)

//go:embed lua/attempts.lua
var attemptsLua string

// attemptsScript returns Redis's time and the recorded attempts. KEYS: list.
var attemptsScript = redis.NewScript(attemptsLua)

// heartbeat is a Replica on the wire. Times are ages in milliseconds at
// the moment of writing, so that no wall clock is stored.
type heartbeat struct {
	Instance      string `json:"instance"`
	Version       string `json:"version,omitempty"`
	Ready         bool   `json:"ready"`
	Leader        bool   `json:"leader"`
	Fingerprint   string `json:"fp,omitempty"`
	ExpiresInMS   int64  `json:"expires_in_ms,omitempty"`
	LastEventAgo  int64  `json:"last_event_ago_ms,omitempty"` // -1: none yet
	LastEventType string `json:"last_event,omitempty"`
	Problem       string `json:"problem,omitempty"`
	Upstream      string `json:"upstream,omitempty"`
	UpstreamError string `json:"upstream_error,omitempty"`
	AsideForMS    int64  `json:"aside_for_ms,omitempty"`
	// Fleet marks a state written on change, which counts while the
	// replica's beat in the fleet's hash is fresh; without it (replicas of
	// earlier versions) an entry counts while its own ttl runs.
	Fleet bool `json:"fleet,omitempty"`
}

// beatWire is a replica's beat in the fleet's hash.
type beatWire struct {
	Instance string `json:"instance"`
	Version  string `json:"version,omitempty"`
	// Leading is how many tokens the replica leads, when it says
	// (BeatConfig.Leading): a balancer counts every replica's leadership
	// from the beats alone. Earlier versions do not say.
	Leading *int `json:"leading,omitempty"`
}

// attemptWire is an Attempt on the wire.
type attemptWire struct {
	By          string  `json:"by"`
	Outcome     string  `json:"outcome"`
	Took        float64 `json:"took_s"`
	Upstream    float64 `json:"upstream_s"`
	Fingerprint string  `json:"fp,omitempty"`
	ExpiresInMS int64   `json:"expires_in_ms,omitempty"`
	Error       string  `json:"error,omitempty"`
	RetryAfter  float64 `json:"retry_after_s,omitempty"`
}

// splitStamped splits "<ms> <rest>" (and "<ms> <ttl> <rest>" when ttl).
func splitStamped(v string, ttl bool) (at int64, rest string, ok bool) {
	head, rest, ok := strings.Cut(v, " ")
	if !ok {
		return 0, "", false
	}
	if ttl {
		if _, rest, ok = strings.Cut(rest, " "); !ok {
			return 0, "", false
		}
	}
	at, err := strconv.ParseInt(head, 10, 64)
	return at, rest, err == nil
}

// scriptList runs s and returns Redis's time (the first element) and the rest.
func scriptList(ctx context.Context, rdb redis.Scripter, s *redis.Script, key string) (int64, []string, error) {
	res, err := s.Run(ctx, rdb, []string{key}).StringSlice()
	if err != nil {
		return 0, nil, err
	}
	if len(res) == 0 {
		return 0, nil, errors.New("empty answer")
	}
	now, err := strconv.ParseInt(res[0], 10, 64)
	if err != nil {
		return 0, nil, fmt.Errorf("bad time %q", res[0])
	}
	return now, res[1:], nil
}

func ms(d time.Duration) int64 { return d.Milliseconds() }

func fromMS(n int64) time.Duration { return time.Duration(n) * time.Millisecond }

func fromSeconds(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }

// Beats are the fleet's beats as one read found them: who is alive, and
// how many tokens each leads. A balancer reads it once a look, then the
// fleet views of the tokens it needs (Views).
type Beats struct {
	// Leading is, by instance, how many tokens each replica whose beat
	// is fresh leads, as its beat says; -1 when its beat does not say (a
	// replica of an earlier version).
	Leading map[string]int
	beats   map[string]time.Time // when each beat was written, on the reader's clock
	local   time.Time            // when the beats were read, on the reader's clock
}

// ReadBeats reads the fleet's beats from the hash key (cache.FleetKey).
func ReadBeats(ctx context.Context, rdb redis.Scripter, key string) (Beats, error) {
	f := Beats{local: time.Now()}
	var err error
	f.beats, f.Leading, err = readBeats(ctx, rdb, key, f.local)
	return f, err
}

// Complete reports whether every live replica's beat says how many tokens
// it leads.
func (f Beats) Complete() bool {
	for _, n := range f.Leading {
		if n < 0 {
			return false
		}
	}
	return true
}

// Views reads the replicas keeping each token of keys, in order, as
// ReadReplicas does, by f's beats.
func (f Beats) Views(ctx context.Context, rdb redis.Scripter, keys []cache.Keys) ([][]Replica, error) {
	views := make([][]Replica, len(keys))
	for i, k := range keys {
		var err error
		if views[i], err = readStates(ctx, rdb, k.Replicas, f.beats, f.local); err != nil {
			return nil, err
		}
	}
	return views, nil
}

// readBeats reads the fleet's beats: when each live replica last beat, on
// the reader's clock, whose time is local when the read is sent, and how
// many tokens it leads (-1: its beat does not say).
func readBeats(ctx context.Context, rdb redis.Scripter, fleet string, local time.Time) (map[string]time.Time, map[string]int, error) {
	beats, leading := map[string]time.Time{}, map[string]int{}
	if fleet == "" {
		return beats, leading, nil
	}
	now, vals, err := scriptList(ctx, rdb, replicasScript, fleet)
	if err != nil {
		return nil, nil, fmt.Errorf("refresher: read beats: %w", err)
	}
	for _, v := range vals {
		at, body, ok := splitStamped(v, true)
		var b beatWire
		if !ok || json.Unmarshal([]byte(body), &b) != nil || b.Instance == "" {
			continue
		}
		beats[b.Instance] = local.Add(-fromMS(now - at))
		leading[b.Instance] = -1
		if b.Leading != nil {
			leading[b.Instance] = max(*b.Leading, 0)
		}
	}
	return beats, leading, nil
}

// readReplicas reads the fleet's beats and the replicas' states for the
// token of keys, and dates them on the reader's clock, whose time is local
// when the reads are sent: the replicas whose beat is fresh and that keep
// the token (and those of earlier versions whose state has not expired).
func readReplicas(ctx context.Context, rdb redis.Scripter, keys cache.Keys, local time.Time) ([]Replica, error) {
	beats, _, err := readBeats(ctx, rdb, keys.Fleet, local)
	if err != nil {
		return nil, err
	}
	return readStates(ctx, rdb, keys.Replicas, beats, local)
}

// readStates reads the replicas' states in the hash key, keeping those
// whose replica beat (beats) or, from earlier versions, whose own ttl runs.
func readStates(ctx context.Context, rdb redis.Scripter, key string, beats map[string]time.Time, local time.Time) ([]Replica, error) {
	now, vals, err := scriptList(ctx, rdb, replicasScript, key)
	if err != nil {
		return nil, fmt.Errorf("refresher: read heartbeats: %w", err)
	}
	out := make([]Replica, 0, len(vals))
	for _, v := range vals {
		at, body, ok := splitStamped(v, true)
		var hb heartbeat
		if !ok || json.Unmarshal([]byte(body), &hb) != nil {
			continue
		}
		written := local.Add(-fromMS(now - at))
		r := hb.replica(written)
		if hb.Fleet {
			seen, alive := beats[hb.Instance]
			if !alive {
				continue
			}
			r.Seen = seen
			r.AsideFor = max(r.AsideFor-local.Sub(written), 0)
		}
		out = append(out, r)
	}
	sortReplicas(out)
	return out, nil
}

// replica is hb as written at seen, on the reader's clock.
func (hb heartbeat) replica(seen time.Time) Replica {
	r := Replica{
		Instance: hb.Instance, Version: hb.Version, Ready: hb.Ready, Leader: hb.Leader,
		Fingerprint: hb.Fingerprint, LastEventType: hb.LastEventType, Seen: seen, Problem: hb.Problem,
		Upstream: hb.Upstream, UpstreamError: hb.UpstreamError, AsideFor: fromMS(hb.AsideForMS),
	}
	if hb.ExpiresInMS > 0 {
		r.ExpiresAt = seen.Add(fromMS(hb.ExpiresInMS))
	}
	if hb.LastEventAgo >= 0 && hb.LastEventType != "" {
		r.LastEvent = seen.Add(-fromMS(hb.LastEventAgo))
	}
	return r
}

func sortReplicas(rs []Replica) {
	slices.SortFunc(rs, func(a, b Replica) int { return strings.Compare(a.Instance, b.Instance) })
}

// readAttempts reads the refresh history and dates it on the reader's
// clock, whose time is local when the read is sent.
func readAttempts(ctx context.Context, rdb redis.Scripter, key string, local time.Time) ([]Attempt, error) {
	now, vals, err := scriptList(ctx, rdb, attemptsScript, key)
	if err != nil {
		return nil, fmt.Errorf("refresher: read refresh history: %w", err)
	}
	out := make([]Attempt, 0, len(vals))
	for _, v := range vals {
		at, body, ok := splitStamped(v, false)
		var w attemptWire
		if !ok || json.Unmarshal([]byte(body), &w) != nil {
			continue
		}
		a := w.attempt(local.Add(-fromMS(now - at)))
		out = append(out, a)
	}
	return out, nil
}

func (w attemptWire) attempt(at time.Time) Attempt {
	a := Attempt{
		At: at, By: w.By, Outcome: w.Outcome, Took: fromSeconds(w.Took), Upstream: fromSeconds(w.Upstream),
		Fingerprint: w.Fingerprint, Error: w.Error, RetryAfter: fromSeconds(w.RetryAfter),
	}
	if w.ExpiresInMS > 0 {
		a.ExpiresAt = at.Add(fromMS(w.ExpiresInMS))
	}
	return a
}

// fleetState is what a Refresher keeps for the fleet view. Its fields are
// guarded by mu.
type fleetState struct {
	mu            sync.Mutex
	history       []Attempt // newest first, at most historySize
	lastEvent     time.Time
	lastEventType string

	// The fingerprint of the token held last, so that Heartbeat, which
	// looks at this replica's state five times a second, hashes each
	// token once.
	fpOf, fp string
}

// fingerprint is tok's fingerprint, remembered for the last token.
func (f *fleetState) fingerprint(tok cache.Token) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	if tok.Value != f.fpOf {
		f.fp = tok.Fingerprint()
	}
	// Kept as this copy of the value: a token read again from Redis is an
	// equal string in other memory, which a comparison would otherwise
	// walk byte by byte every look.
	f.fpOf = tok.Value
	return f.fp
}

func (f *fleetState) remember(a Attempt) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.history = append([]Attempt{a}, f.history[:min(len(f.history), historySize-1)]...)
}

func (f *fleetState) recent() []Attempt {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]Attempt(nil), f.history...)
}

func (f *fleetState) sawEvent(at time.Time, typ string) {
	f.mu.Lock()
	f.lastEvent, f.lastEventType = at, typ
	f.mu.Unlock()
}

func (f *fleetState) event() (time.Time, string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.lastEvent, f.lastEventType
}

// recordAttempt keeps a refresh attempt in memory and in Redis, and in the
// metrics. inARow is the failures in a row after it.
func (r *Refresher) recordAttempt(ctx context.Context, a Attempt, inARow int, sc trace.SpanContext) {
	r.fleet.remember(a)
	r.metrics.attempt(a, inARow, sc)
	w := attemptWire{
		By: a.By, Outcome: a.Outcome, Took: a.Took.Seconds(), Upstream: a.Upstream.Seconds(),
		Fingerprint: a.Fingerprint, Error: a.Error, RetryAfter: a.RetryAfter.Seconds(),
	}
	if !a.ExpiresAt.IsZero() {
		w.ExpiresInMS = max(ms(a.ExpiresAt.Sub(r.cfg.Clock.Now())), 1)
	}
	b, err := json.Marshal(w)
	if err != nil {
		return
	}
	refreshesKey := r.store.Keys().Refreshes
	// Recorded even when leadership has just ended (a fenced attempt, the
	// lock lost during the call): the fleet's history and the next leader's
	// backoff need it most then.
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), RedisTimeout(r.cfg.LockTTL))
	defer cancel()
	if err := pushScript.Run(pctx, r.rdb, []string{refreshesKey}, string(b), historySize, historyTTL.Milliseconds()).Err(); err != nil {
		r.log.Debug("recording the refresh attempt in Redis failed", "error", err)
	}
}

// self is this replica's heartbeat as of now.
func (r *Refresher) self() heartbeat {
	now := r.cfg.Clock.Now()
	hb := heartbeat{Instance: r.cfg.Instance, Version: r.cfg.Version, Leader: r.IsLeader(), LastEventAgo: -1}
	_, hb.Ready = r.store.Current()
	if tok, ok := r.store.Held(); ok {
		hb.Fingerprint = r.fleet.fingerprint(tok)
		hb.ExpiresInMS = max(ms(tok.Remaining(now)), 1)
	}
	if at, typ := r.fleet.event(); typ != "" {
		hb.LastEventType = typ
		hb.LastEventAgo = max(ms(now.Sub(at)), 0)
	}
	if err := r.store.Unreadable(); err != nil {
		hb.Problem = err.Error()
	}
	r.mu.Lock()
	hb.Upstream, hb.UpstreamError = r.upstreamState, r.upstreamErr
	aside := r.asideUntil
	r.mu.Unlock()
	if d := aside.Sub(now); d > 0 {
		hb.AsideForMS = ms(d)
	}
	return hb
}

// selfReplica is this replica's own view as a Replica, for Status when the
// heartbeats cannot be read.
func (r *Refresher) selfReplica() Replica {
	return r.self().replica(r.cfg.Clock.Now().Round(0))
}

// lazyWindow spreads the replicas' writes of a new token's fingerprint
// (or of the last event seen) into the fleet view: each writes at a random
// moment within it, so that a fleet of 1,000 adds 33 writes a second, not
// 1,000 at once, to a refresh.
const lazyWindow = 30 * time.Second

// stateTTL is how long a replica's state for a token lives in Redis
// unless written again; Heartbeat writes it again after half of it even
// when nothing changed. It counts meanwhile only while the replica's beat
// is fresh (Beat).
const stateTTL = 24 * time.Hour

// Heartbeat writes this replica's state for the token into Redis (the
// token's replicas hash) as Heartbeats does for several tokens, until ctx
// ends, then removes it. It returns ctx's error.
func (r *Refresher) Heartbeat(ctx context.Context) error {
	return Heartbeats(ctx, []*Refresher{r})
}

// heartbeatState is what Heartbeats keeps of one token's state in the
// fleet view. Owned by Heartbeats' loop.
type heartbeatState struct {
	r       *Refresher
	sub     *cache.Subscription
	sent    heartbeat // the last state written, or being written
	sentAt  time.Time
	retryAt time.Time // after a failed write: when to write again
	lazyAt  time.Time // when to write a new token or event seen
	writing bool      // a write is in flight
	// After a look that found nothing to write: what the replica's state
	// was made of then, and until when time alone cannot change it
	// (quietUntil). A look finding the same stamp before then skips
	// building the state (due).
	stamp      stateStamp
	quietUntil time.Time
}

// stateStamp is what this replica's state for a token is made of, but
// time: a change of it may change the state.
type stateStamp struct {
	store   cache.Stamp
	leader  bool
	changes uint64
}

func (r *Refresher) stamp() stateStamp {
	return stateStamp{store: r.store.Stamp(), leader: r.IsLeader(), changes: r.changes.Load()}
}

// heartbeatWritten is the end of one state write.
type heartbeatWritten struct {
	st  *heartbeatState
	at  time.Time
	err error
}

// Heartbeats writes this replica's state for each token of refs into Redis
// (each token's replicas hash) when it changes, looking in memory five
// times a second (at most lookBatch tokens a look, in turn, and each
// token at least once a second), and at least every half stateTTL, until
// ctx ends, then removes it. The state counts in the fleet view while the
// replica's beat (Beat) is fresh: at rest it costs Redis nothing. One loop
// looks at every token, so that a replica keeping many tokens wakes five
// times a second, not five times per token; each write goes on its own,
// so a slow Redis delays no other token's. Redis being unreachable is
// counted and logged at Debug, and the write retried after
// HeartbeatEvery, not returned. refs share one Clock. It returns ctx's
// error.
func Heartbeats(ctx context.Context, refs []*Refresher) error {
	if len(refs) == 0 {
		<-ctx.Done()
		return ctx.Err()
	}
	clk := refs[0].cfg.Clock
	every := 200 * time.Millisecond
	states := make([]*heartbeatState, len(refs))
	for i, r := range refs {
		every = min(every, r.cfg.HeartbeatEvery)
		states[i] = &heartbeatState{r: r, sub: r.store.Subscribe()}
		defer states[i].sub.Close()
	}
	written := make(chan heartbeatWritten, len(states)) // one write in flight per state at most
	var inflight sync.WaitGroup
	write := func(st *heartbeatState) {
		now := clk.Now()
		st.sent, st.sentAt, st.lazyAt, st.writing = st.r.self(), now, time.Time{}, true
		hb := st.sent
		inflight.Go(func() { written <- heartbeatWritten{st, now, st.r.writeState(ctx, hb)} })
	}
	for _, st := range states {
		write(st)
	}
	watch := clk.NewTicker(every)
	defer watch.Stop()
	// Each look takes the next batch of tokens, so that every token is
	// looked at at least once a second.
	looksPerSecond := max(int(time.Second/every), 1)
	batch := max(lookBatch, (len(states)+looksPerSecond-1)/looksPerSecond)
	next := 0
	for {
		select {
		case <-ctx.Done():
			inflight.Wait()
			var forgot sync.WaitGroup
			for _, st := range states {
				forgot.Go(func() {
					if err := forget(ctx, st.r.rdb, st.r.store.Keys().Replicas, st.r.cfg.Instance); err != nil {
						st.r.log.Debug("removing this replica's state failed; it expires by itself", "error", err)
					}
				})
			}
			forgot.Wait()
			return ctx.Err()
		case w := <-written:
			w.st.writing, w.st.retryAt = false, time.Time{}
			if w.err != nil && ctx.Err() == nil {
				w.st.retryAt = w.at.Add(w.st.r.cfg.HeartbeatEvery)
			}
		case <-watch.C():
			// Looking costs nothing: the state is known in memory.
			now := clk.Now()
			for range min(batch, len(states)) {
				st := states[next]
				next = (next + 1) % len(states)
				for m, ok := st.sub.Next(); ok; m, ok = st.sub.Next() {
					st.r.fleet.sawEvent(now, m.Type)
				}
				if !st.writing && st.due(now) {
					write(st)
				}
			}
		}
	}
}

// lookBatch is how many tokens one look of Heartbeats takes at most, more
// when a second of looks would not cover every token: five looks a second
// over each token's state cost a replica keeping a hundred tokens little,
// but touch each token's memory 500 times a second.
const lookBatch = 20

// due reports whether st's state is to be written at now. While neither
// the stamp of what the state is made of changed nor time could have
// changed it since a look found nothing to write, it answers without
// building the state: a replica keeping 100 tokens looks at each every
// second, and building one touches the token's memory.
func (st *heartbeatState) due(now time.Time) bool {
	stamp := st.r.stamp() // before the state: a change while it is built shows at the next look
	if st.retryAt.IsZero() && st.lazyAt.IsZero() && now.Before(st.quietUntil) && stamp == st.stamp {
		return false
	}
	cur := st.r.self()
	if due := st.dueWith(cur, now); due || !st.retryAt.IsZero() || !st.lazyAt.IsZero() {
		st.quietUntil = time.Time{}
		return due
	}
	// Time changes the state where a deadline passes: the token's
	// servability (readiness), its life (its fingerprint), the hand-over's
	// aside, the rewrite after half stateTTL.
	quiet := st.sentAt.Add(stateTTL / 2)
	if cur.ExpiresInMS > 0 {
		left := fromMS(cur.ExpiresInMS)
		if cur.Ready {
			left -= st.r.store.ServeMargin()
		}
		quiet = earlier(quiet, now.Add(left))
	}
	if cur.AsideForMS > 0 {
		quiet = earlier(quiet, now.Add(fromMS(cur.AsideForMS)))
	}
	st.stamp, st.quietUntil = stamp, quiet
	return false
}

func earlier(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// dueWith reports whether st's state, cur at now, is to be written.
func (st *heartbeatState) dueWith(cur heartbeat, now time.Time) bool {
	switch {
	case !st.retryAt.IsZero():
		return !now.Before(st.retryAt)
	case cur.differs(st.sent), now.Sub(st.sentAt) >= stateTTL/2:
		return true
	case cur.Fingerprint != st.sent.Fingerprint:
		// A new token reaches every replica at once: their writes are
		// spread over lazyWindow rather than sent to Redis together with
		// the fan-out. A control message (a lock released, a refresh
		// asked) writes nothing of its own: the last event seen rides
		// along with the next write, or every release a balancer makes
		// would cost the whole fleet a write.
		if st.lazyAt.IsZero() {
			st.lazyAt = now.Add(mrand.N(max(lazyWindow, st.r.cfg.HeartbeatEvery)))
		}
		return !now.Before(st.lazyAt)
	}
	return false
}

// writeState writes hb, this replica's state for the token, into the
// token's replicas hash, and counts the write; it returns the write's
// error.
func (r *Refresher) writeState(ctx context.Context, hb heartbeat) error {
	hb.Fleet = true
	b, err := json.Marshal(hb)
	if err != nil {
		return err
	}
	bctx, cancel := context.WithTimeout(ctx, RedisTimeout(r.cfg.LockTTL))
	defer cancel()
	err = beatScript.Run(bctx, r.rdb, []string{r.store.Keys().Replicas}, r.cfg.Instance, stateTTL.Milliseconds(), string(b)).Err()
	if ctx.Err() != nil {
		return err
	}
	r.metrics.heartbeat(err)
	if err != nil {
		r.log.Debug("writing this replica's state failed", "error", err)
	}
	return err
}

// forget removes instance's field from the hash key, given a second
// after ctx ended: a replica's beat or its state for a token, as it stops.
func forget(ctx context.Context, rdb redis.Scripter, key, instance string) error {
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
	defer cancel()
	return forgetScript.Run(dctx, rdb, []string{key}, instance).Err()
}

// differs reports whether hb says something else than was that the fleet
// must see at once (readiness, leadership, trouble): not its ages, which
// readers date from the write, nor its token, which Heartbeat writes
// lazily.
func (hb heartbeat) differs(was heartbeat) bool {
	return hb.Ready != was.Ready || hb.Leader != was.Leader ||
		hb.Problem != was.Problem || hb.Upstream != was.Upstream || hb.UpstreamError != was.UpstreamError ||
		(hb.AsideForMS > 0) != (was.AsideForMS > 0) || hb.Version != was.Version
}

// BeatConfig tunes Beat.
type BeatConfig struct {
	// Instance and Version name the replica and its build.
	Instance, Version string
	// Every is how often the replica beats; a beat expires after three.
	// Default: DefaultBeatEvery.
	Every time.Duration
	// Clock paces the beats. Default: clock.Real().
	Clock clock.Clock
	// Logger receives the logs. Default: slog.Default().
	Logger *slog.Logger
	// Timeout bounds each write. Default: Every.
	Timeout time.Duration
	// Leading, when set, returns how many tokens the replica leads: the
	// beat carries it, and is rewritten within LeadingEvery of it
	// changing, so that a balancer counts the fleet's leadership from the
	// beats alone (ReadBeats). A replica whose leadership stays as
	// it is writes no more than without it.
	Leading func() int
}

// LeadingEvery is how often Beat looks whether the number of tokens the
// replica leads changed (BeatConfig.Leading).
const LeadingEvery = time.Second

// DefaultBeatEvery is how often a replica beats by default. Each beat is
// one script (EVALSHA, TIME, HSET: three commands as Redis counts them),
// so it sets the load a replica puts on Redis at rest: 0.075 commands a
// second.
const DefaultBeatEvery = 40 * time.Second

// Beat writes this replica's beat into the fleet's hash of live replicas
// (key, cache.FleetKey) every cfg.Every until ctx ends, then removes it:
// one write per replica per period, whatever the number of tokens it
// keeps, and one more within LeadingEvery of the number it leads changing
// (BeatConfig.Leading). A beat expires after three periods. Redis being unreachable is
// logged at Debug, not returned. It returns ctx's error.
func Beat(ctx context.Context, rdb redis.Scripter, key string, cfg BeatConfig) error {
	if cfg.Every <= 0 {
		cfg.Every = DefaultBeatEvery
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.Real()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = cfg.Every
	}
	ttl := 3 * cfg.Every
	step := cfg.Every // how often to look whether to beat
	if cfg.Leading != nil {
		step = min(step, LeadingEvery)
	}
	tick := cfg.Clock.NewTicker(step)
	defer tick.Stop()
	var wrote time.Time // when the last beat was written, or tried
	said := -1          // the count it carried
	for {
		now := cfg.Clock.Now()
		n := -1
		if cfg.Leading != nil {
			n = cfg.Leading()
		}
		if wrote.IsZero() || n != said || now.Sub(wrote) >= cfg.Every {
			// A beat that did not get through waits for the next period
			// or change: a replica cut off from Redis does not retry
			// every second.
			wrote, said = now, n
			if err := beatOnce(ctx, rdb, key, cfg, ttl, n); err != nil && ctx.Err() == nil {
				cfg.Logger.Debug("beat failed", "error", err)
			}
		}
		select {
		case <-ctx.Done():
			if err := forget(ctx, rdb, key, cfg.Instance); err != nil {
				cfg.Logger.Debug("removing the beat failed; it expires by itself", "error", err)
			}
			return ctx.Err()
		case <-tick.C():
		}
	}
}

// beatOnce writes one beat, saying leading unless it is negative.
func beatOnce(ctx context.Context, rdb redis.Scripter, key string, cfg BeatConfig, ttl time.Duration, leading int) error {
	w := beatWire{Instance: cfg.Instance, Version: cfg.Version}
	if leading >= 0 {
		w.Leading = &leading
	}
	b, err := json.Marshal(w)
	if err != nil {
		return err
	}
	bctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	return aliveScript.Run(bctx, rdb, []string{key}, cfg.Instance, ttl.Milliseconds(), string(b)).Err()
}

// fleetStatus fills the fleet view of s: from Redis when it answers, else
// this replica's own view and its own attempts. tryRedis false skips
// Redis, already known to be unreachable.
func (r *Refresher) fleetStatus(ctx context.Context, s *Status, tryRedis bool) error {
	refreshesKey := r.store.Keys().Refreshes
	var reps []Replica
	var err error
	if tryRedis {
		reps, err = readReplicas(ctx, r.rdb, r.store.Keys(), r.cfg.Clock.Now())
	}
	if tryRedis && err == nil {
		var atts []Attempt
		if atts, err = readAttempts(ctx, r.rdb, refreshesKey, r.cfg.Clock.Now()); err == nil {
			s.Replicas, s.Refreshes = reps, atts
			return nil
		}
	}
	s.Replicas = []Replica{r.selfReplica()}
	s.Refreshes = r.fleet.recent()
	return err
}
