package sim

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"time"

	"github.com/tokenkeeper/tokenkeeper"
	"github.com/tokenkeeper/tokenkeeper/internal/fakerdp"
)

// The invariants, by the names a violation carries.
const (
	InvFresh     = "1-no-expired-or-overstated-token"
	InvBackwards = "2-no-going-backwards"
	InvCalls     = "3-upstream-calls-bounded"
	InvSignOns   = "4-sign-ons-within-budget"
	InvLiveness  = "5-serves-after-faults-heal"
	InvDevices   = "6-one-mint-per-device"
	InvSecrets   = "7-no-secret-in-logs"
	InvHandover  = "8-graceful-stop-hands-over"
	InvFenced    = "9-writes-fenced"
	InvPropagate = "10-followers-catch-up"
	InvRoll      = "11-a-rolling-change-serves-the-new-catalog"
)

// Bounds of the invariants, from the documented promises and the fleet's
// settings above.
const (
	// HealBound (invariant 5): once every fault has healed, every replica
	// that has run this long serves every token. The longest wait of the
	// fleet's own making: a backoff at RetryMax, a Retry-After of up to
	// 30s (the faults' longest), a full minute of sign-on budget, a lock
	// left to expire and an election (two lock TTLs), one upstream call
	// and one poll.
	HealBound = RetryMax + 30*time.Second + time.Minute + 2*LockTTL + UpTimeout + PollInterval

	// HandoverBound (invariant 8): a leader stopped gracefully releases its
	// locks and says so, and another replica leads each token within the
	// election's yield (a quarter of the lock TTL for the one other token
	// it may lead, plus up to an eighth at random), one election interval
	// and one step of the simulator. A lock left to expire instead takes
	// at least three quarters of LockTTL (it is renewed every quarter).
	HandoverBound = LockTTL/4 + LockTTL/8 + time.Second + Step

	// signOnWindow (invariant 4): sign-ons are counted over this sliding
	// window, a minute less the longest Redis latency a fault adds (the
	// budget's window runs on Redis's clock, between the budget's answer
	// and the call the sign-on is counted at).
	signOnWindow = time.Minute - 4*time.Second

	// PropagationBound (invariant 10): while nothing is wrong, every
	// replica serves the token Redis holds (or a newer one) this long after
	// it was stored. The README's promise: within milliseconds of the
	// event when the replica can date it, within a read of Redis when it
	// cannot, and otherwise no later than its next poll while Redis
	// answers; on fake time no core is busy, so the bound is a poll and
	// one step of the simulator.
	PropagationBound = PollInterval + Step

	// earlySlack (invariant 3): a call is early when the newest usable
	// token had more than RefreshBefore, its jitter (a tenth of it), and
	// this left: the leader's reckoning of the expiry runs early by up to
	// an upstream call and a Redis round trip.
	earlySlack = UpTimeout + 5*time.Second

	// NewTokenBound (invariant 11): a replica started with a token added to
	// the catalog serves it this long after it started, while nothing
	// else is wrong: an election interval (a tenth of the lock TTL, at
	// most a second) for the first replica to take the new token's lock,
	// a sign-on and a token call (each within UpTimeout), and a poll and a
	// step for the replicas that did not fetch it. TestRollingCatalogChange
	// waited for this on the wall clock (5 s each); here it is checked on
	// fake time.
	NewTokenBound = LockTTL/10 + 2*UpTimeout + PollInterval + Step
)

// earlyAllowance (invariant 3) is how many early upstream calls (see
// earlySlack) a fault may cause, stated per kind. A fault that destroys
// the only copy of a fetched token, or deposes a leader between its
// fetch and its write, may cost one token; an admin refresh is one by
// request. Upstream faults cost none: a refused, slow, late, expired or
// malformed answer issues no usable token. A Redis blip of the whole
// fleet shorter than the lock's life costs none either: the leader keeps
// the token it could not store and stores it when Redis is back. Redis
// restarting empty loses every token at once: a replica that takes a lock
// with nothing in memory (one just started) fetches each, one per upstream.
func earlyAllowance(k Kind) int {
	switch k {
	case RedisEmpty:
		return len(tokenNames)
	case AdminRefresh, Crash, Stop, Restart, Freeze, FreezeAtCall, HeldWrite, RedisCut, RedisRefuse, RedisLatency, RedisSlow,
		RedisRestoreOld, RedisRestoreAtCall, RedisFailover, ClientPause, EvictLock, EvictToken, ForeignValue:
		return 1
	}
	return 0
}

// Violation is an invariant found broken.
type Violation struct {
	Invariant string
	At        time.Duration
	Detail    string
}

func (v Violation) String() string { return fmt.Sprintf("%s at %v: %s", v.Invariant, v.At, v.Detail) }

// issued is what the oracle knows of a token an upstream issued.
type issued struct {
	up      int // 0 rdp, 1 oauth
	idx     int // order among the usable tokens of its upstream
	at, exp time.Time
}

type servedKey struct {
	replica, generation, token int
}

// checker holds the oracle and checks the invariants at every step.
type checker struct {
	w        *world
	oracle   map[string]issued
	usable   [4][]issued // in order of issue
	seen     [4]int      // tokens of each upstream's log read so far
	last     map[servedKey]int
	newest   [2]int       // idx of the newest token any replica served
	newestAt [2]time.Time // when it was first served
	lossAt   time.Time    // the last Redis data-loss fault
	stored   [2]string    // the token Redis held at the last step
	storedAt [2]time.Time // since when
	wipes    []time.Time  // when Redis lost its whole data set (a restart empty, a restore)
	handover []pendingHandover
	viol     []Violation
	reads    int
	owner    map[string]int            // device token -> the device it was given to
	devSeen  map[int]map[string]issued // device -> the tokens it got
	devLast  map[int]issued            // device -> the newest token it got
	early    int                       // device tokens minted early
}

// deviceAnswer is a device token a replica handed out.
type deviceAnswer struct {
	device   int
	r        *replica
	value    string
	deadline time.Time // on the bubble's clock, converted with the offset at asked
	asked    time.Time
	at       time.Time
}

type pendingHandover struct {
	token    int
	from     string
	deadline time.Time
}

func newChecker(w *world) *checker {
	return &checker{w: w, oracle: map[string]issued{}, last: map[servedKey]int{}, newest: [2]int{-1, -1},
		owner: map[string]int{}, devSeen: map[int]map[string]issued{}, devLast: map[int]issued{}}
}

func (c *checker) fail(inv, format string, args ...any) {
	c.viol = append(c.viol, Violation{Invariant: inv, At: c.w.now(), Detail: fmt.Sprintf(format, args...)})
}

// learn reads the upstreams' logs of issued tokens.
func (c *checker) learn() {
	for up, f := range c.w.up {
		st := f.Stats()
		toks := st.Tokens
		if up == 1 {
			toks = st.OAuth2Tokens
		}
		for _, t := range toks[c.seen[up]:] {
			is := issued{up: up, idx: -1, at: t.IssuedAt, exp: t.ExpiresAt}
			if t.ExpiresAt.After(t.IssuedAt) {
				is.idx = len(c.usable[up])
				c.usable[up] = append(c.usable[up], is)
			}
			c.oracle[t.Token] = is
		}
		c.seen[up] = len(toks)
	}
}

// lookup returns what the oracle knows of v.
func (c *checker) lookup(v string) (issued, bool) {
	is, ok := c.oracle[v]
	if !ok {
		c.learn()
		is, ok = c.oracle[v]
	}
	return is, ok
}

// step checks every invariant that can be checked now.
func (c *checker) step() {
	now := time.Now()
	w := c.w
	// quiet: no fault active for HealBound. A rolling catalog change is
	// not a fault the fleet may break its promises under: the fleet keeps
	// serving (invariants 5, 10 and 11) while it rolls.
	quiet := true
	for _, f := range w.s.Faults {
		if f.Kind != RollCatalog && w.start.Add(f.At).Before(now) && now.Sub(w.start.Add(f.End())) < HealBound {
			quiet = false
		}
	}
	for _, r := range w.replicas {
		r.mu.Lock()
		k, gen, started, catalog := r.k, r.generation, r.startedAt, r.catalog
		r.mu.Unlock()
		if k == nil || r.clock.isFrozen() {
			continue // a frozen replica answers nobody
		}
		if catalog == 1 {
			c.checkAdded(r, k.Current, gen, started, now, quiet)
		}
		for ti, name := range tokenNames {
			tok, ok := k.Current(name)
			if !ok {
				if quiet && now.Sub(started) >= HealBound {
					c.fail(InvLiveness, "%s does not serve %s %v after every fault healed and %v after it started", r.name, name, HealBound, now.Sub(started).Round(time.Second))
				}
				continue
			}
			// The deadline is a reading of the replica's clock.
			c.checkServed(r, gen, ti, tok.Value, tok.Deadline.Add(-r.clock.get()), now)
		}
	}
	c.checkPropagation(now, quiet)
	// Invariant 8: pending handovers.
	kept := c.handover[:0]
	for _, h := range c.handover {
		led := false
		for _, r := range w.replicas {
			if k := r.keeper(); k != nil && k.Leads(tokenNames[h.token]) {
				led = true
			}
		}
		switch {
		case led:
		case now.After(h.deadline):
			c.fail(InvHandover, "%s stopped gracefully leading %s, and no replica led it %v later", h.from, tokenNames[h.token], HandoverBound)
		default:
			kept = append(kept, h)
		}
	}
	c.handover = kept
	c.checkDevices()
	c.checkSignOns(now)
	if s := int(w.now() / Step); s%60 == 0 {
		c.checkCalls(now)
	}
	if c.reads++; c.reads%7 == 0 {
		c.httpRead(now)
	}
	for _, v := range w.logs.take() {
		c.fail(InvSecrets, "%s", v)
	}
	w.hookMu.Lock()
	breaches := w.breaches
	w.breaches = nil
	w.hookMu.Unlock()
	for _, b := range breaches {
		c.fail(InvFenced, "%s", b)
	}
}

// checkAdded checks the token a RollingCatalog added, at a replica that
// runs the catalog with it: invariants 1 and 2 as for the other tokens,
// 5, and 11: while nothing else is wrong, it serves the token
// NewTokenBound after it started.
func (c *checker) checkAdded(r *replica, current func(string) (tokenkeeper.Token, bool), gen int, started, now time.Time, quiet bool) {
	tok, ok := current(addedToken)
	if !ok {
		switch {
		case quiet && now.Sub(started) >= HealBound:
			c.fail(InvLiveness, "%s does not serve %s %v after every fault healed and %v after it started", r.name, addedToken, HealBound, now.Sub(started).Round(time.Second))
		case quiet && now.Sub(started) >= NewTokenBound:
			c.fail(InvRoll, "%s started with %s added to its catalog and does not serve it %v later", r.name, addedToken, now.Sub(started).Round(time.Second))
		}
		return
	}
	deadline := tok.Deadline.Add(-r.clock.get())
	is, known := c.lookup(tok.Value)
	switch {
	case !known || is.up != addedUp:
		c.fail(InvFresh, "%s serves as %s a token its upstream never issued", r.name, addedToken)
		return
	case !c.fresh(r, addedToken, is, deadline, now):
		return
	}
	key := servedKey{r.idx, gen, addedUp}
	if prev, had := c.last[key]; had && is.idx < prev {
		c.fail(InvBackwards, "%s went back from %s #%d to #%d", r.name, addedToken, prev, is.idx)
	}
	c.last[key] = is.idx
}

// fresh checks invariant 1 for the token is that r serves as name, dated
// to expire at deadline: not expired, and its expiry not overstated by
// more than r's clock drifted since it could have dated it.
func (c *checker) fresh(r *replica, name string, is issued, deadline, now time.Time) bool {
	switch {
	case !now.Before(is.exp):
		c.fail(InvFresh, "%s serves %s #%d, expired %v ago", r.name, name, is.idx, now.Sub(is.exp))
		return false
	case deadline.After(is.exp.Add(r.clock.driftedSince(is.at.Add(-UpTimeout)))):
		c.fail(InvFresh, "%s serves %s #%d as expiring %v later than it does%s", r.name, name, is.idx, deadline.Sub(is.exp), drifted(r, is))
		return false
	}
	return true
}

// checkServed checks a token a replica serves: invariants 1 and 2.
func (c *checker) checkServed(r *replica, gen, ti int, value string, deadline, now time.Time) {
	name := tokenNames[ti]
	is, ok := c.lookup(value)
	switch {
	case !ok:
		c.fail(InvFresh, "%s serves a %s token no upstream issued", r.name, name)
		return
	case is.up != ti:
		c.fail(InvFresh, "%s serves as %s a token of the other upstream", r.name, name)
		return
	case !c.fresh(r, name, is, deadline, now):
		return
	}
	key := servedKey{r.idx, gen, ti}
	prev, had := c.last[key]
	if had && is.idx < prev {
		c.fail(InvBackwards, "%s went back from %s #%d to #%d", r.name, name, prev, is.idx)
	}
	if (!had || is.idx != prev) && is.idx < c.newest[ti] &&
		now.Sub(c.newestAt[ti]) > PollInterval+2*LockTTL && c.lossAt.Before(c.newestAt[ti]) {
		c.fail(InvBackwards, "%s took %s #%d, older than #%d the fleet has served since %v ago", r.name, name, is.idx, c.newest[ti], now.Sub(c.newestAt[ti]).Round(time.Second))
	}
	c.last[key] = is.idx
	if is.idx > c.newest[ti] {
		c.newest[ti], c.newestAt[ti] = is.idx, now
	}
}

// since is when a's deadline could have been dated from, at the
// earliest: the token's issue less an upstream call's timeout, or the
// request, if that was earlier (its offset converted the deadline).
func (a deviceAnswer) since(is issued) time.Time {
	if t := is.at.Add(-UpTimeout); t.Before(a.asked) {
		return t
	}
	return a.asked
}

// drifted says, for a violation's detail, how far r's clock drifted
// since it could have dated is (the tolerance allowed), when it did.
func drifted(r *replica, is issued) string {
	if d := r.clock.driftedSince(is.at.Add(-UpTimeout)); d > 0 {
		return fmt.Sprintf(" (beyond the %v its clock drifted since)", d)
	}
	return ""
}

// checkPropagation checks invariant 10: while no fault has been active
// for HealBound, every replica that has run for PropagationBound serves,
// PropagationBound after a token was stored, that token or a newer one.
func (c *checker) checkPropagation(now time.Time, quiet bool) {
	w := c.w
	for ti, name := range tokenNames {
		v := w.mini.HGet(keys(ti).Token, "v")
		if v != c.stored[ti] {
			c.stored[ti], c.storedAt[ti] = v, now
		}
		is, ok := c.lookup(v)
		if !quiet || !ok || is.up != ti || now.Sub(c.storedAt[ti]) <= PropagationBound || !now.Before(is.exp.Add(-ServeMargin)) {
			continue
		}
		for _, r := range w.replicas {
			r.mu.Lock()
			k, started := r.k, r.startedAt
			r.mu.Unlock()
			if k == nil || r.clock.isFrozen() || now.Sub(started) <= PropagationBound {
				continue
			}
			tok, ok := k.Current(name)
			if got, known := c.lookup(tok.Value); !ok || !known || got.idx < is.idx {
				c.fail(InvPropagate, "%s does not serve %s #%d %v after it was stored (nothing wrong meanwhile)", r.name, name, is.idx, now.Sub(c.storedAt[ti]).Round(time.Millisecond))
			}
		}
	}
}

// checkDevices checks the device tokens handed out since the last step:
// invariant 1 for each, and invariant 6: no token is given to two
// devices, and a device gets a new token only once the last one it got is
// within the serve margin of its expiry (plus an upstream call's timeout
// and 5 s), but for one per device after each Redis data loss (the
// devices' tokens live in Redis).
func (c *checker) checkDevices() {
	w := c.w
	w.devMu.Lock()
	got := w.devGot
	w.devGot = nil
	w.devMu.Unlock()
	allowed := devices * len(c.wipes)
	for _, a := range got {
		is, ok := c.lookup(a.value)
		switch {
		case !ok || is.up != 2:
			c.fail(InvFresh, "%s gave device-%d a token its upstream never issued", a.r.name, a.device)
			continue
		case !a.at.Before(is.exp):
			c.fail(InvFresh, "%s gave device-%d a token expired %v before", a.r.name, a.device, a.at.Sub(is.exp))
			continue
		case a.deadline.After(is.exp.Add(a.r.clock.driftedSince(a.since(is)))):
			// (Converted with the offset when it was asked for, which
			// may be before the token was issued: the drift counts from
			// the earlier of the two.)
			c.fail(InvFresh, "%s gave device-%d a token dated %v later than it expires (beyond the %v its clock drifted since)", a.r.name, a.device, a.deadline.Sub(is.exp), a.r.clock.driftedSince(a.since(is)))
			continue
		}
		if d, ok := c.owner[a.value]; ok && d != a.device {
			c.fail(InvDevices, "%s gave device-%d the token of device-%d", a.r.name, a.device, d)
			continue
		}
		c.owner[a.value] = a.device
		seen := c.devSeen[a.device]
		if seen == nil {
			seen = map[string]issued{}
			c.devSeen[a.device] = seen
		}
		if _, ok := seen[a.value]; ok {
			continue
		}
		seen[a.value] = is
		if last, ok := c.devLast[a.device]; ok && last.exp.Sub(a.at) > ServeMargin+UpTimeout+5*time.Second {
			if c.early++; c.early > allowed {
				c.fail(InvDevices, "device-%d got a second token from %s while its first had %v left (early mints %d, allowed %d)",
					a.device, a.r.name, last.exp.Sub(a.at).Round(time.Second), c.early, allowed)
			}
		}
		if last, ok := c.devLast[a.device]; !ok || is.exp.After(last.exp) {
			c.devLast[a.device] = is
		}
	}
}

// askDevices has, now and then, two replicas asked at once for the token
// of one device, as two clients of one device would.
func (w *world) askDevices() {
	if w.rng.IntN(3) != 0 {
		return
	}
	d := w.rng.IntN(devices)
	for range 2 {
		r := w.replicas[w.rng.IntN(len(w.replicas))]
		k := r.keeper()
		if k == nil || r.clock.isFrozen() {
			continue
		}
		off, asked := r.clock.get(), time.Now()
		w.devWG.Add(1)
		go func() {
			defer w.devWG.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			tok, err := k.DeviceToken(ctx, deviceToken, fmt.Sprintf("device-%d", d))
			if err != nil {
				return
			}
			w.devMu.Lock()
			w.devGot = append(w.devGot, deviceAnswer{device: d, r: r, value: tok.Value, deadline: tok.Deadline.Add(-off), asked: asked, at: time.Now()})
			w.devMu.Unlock()
		}()
	}
}

// checkSignOns checks invariant 4: sign-ons in any sliding window stay
// within the budget, plus a budget for each Redis data-loss fault in the
// window (the budget is kept in Redis).
func (c *checker) checkSignOns(now time.Time) {
	w := c.w
	allowed := AuthPerMinute
	for _, at := range c.wipes {
		if now.Sub(at) < time.Minute {
			allowed += AuthPerMinute
		}
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	for up, calls := range w.signOns {
		n := 0
		for i := len(calls) - 1; i >= 0 && now.Sub(calls[i]) < signOnWindow; i-- {
			n++
		}
		if n > allowed {
			c.fail(InvSignOns, "%d sign-ons at the %s upstream within %v, budget %d", n, upNames[up], signOnWindow, allowed)
		}
		// Forget what no window reaches any more.
		j := 0
		for j < len(calls) && now.Sub(calls[j]) > 2*time.Minute {
			j++
		}
		w.signOns[up] = calls[j:]
	}
}

// checkCalls checks invariant 3: the upstream calls that issued a usable
// token while the newest one had well over RefreshBefore left, against
// what the faults so far and the admin refreshes allow.
func (c *checker) checkCalls(now time.Time) {
	c.learn()
	w := c.w
	allowed := 0
	for _, f := range w.s.Faults {
		if !w.start.Add(f.At).After(now) {
			allowed += earlyAllowance(f.Kind)
		}
	}
	early := 0
	var last string
	for up := range tokenNames { // device tokens are minted on demand
		toks := c.usable[up]
		for i := 1; i < len(toks); i++ {
			newest := toks[i-1].exp
			for _, p := range toks[:i] {
				if p.exp.After(newest) {
					newest = p.exp
				}
			}
			if left := newest.Sub(toks[i].at); left > RefreshBefore+RefreshBefore/10+earlySlack {
				early++
				last = fmt.Sprintf("%s #%d issued at %v with %v left on #%d", tokenNames[up], i, toks[i].at.Sub(w.start), left.Round(time.Second), i-1)
			}
		}
	}
	if early > allowed {
		c.fail(InvCalls, "%d early upstream calls, the faults and admin refreshes so far allow %d (last: %s)", early, allowed, last)
	}
}

// httpRead reads a token over a replica's HTTP face, as a client does,
// with the right key or, now and then, a wrong one.
func (c *checker) httpRead(now time.Time) {
	w := c.w
	r := w.replicas[w.rng.IntN(len(w.replicas))]
	k := r.keeper()
	ti := w.rng.IntN(len(tokenNames))
	wrong := w.rng.IntN(5) == 0
	if k == nil || r.clock.isFrozen() {
		return
	}
	key := readerKey
	if wrong {
		key = wrongKey
	}
	req := httptest.NewRequest(http.MethodGet, "/v1/tokens/"+tokenNames[ti], nil)
	req.Header.Set("Authorization", "Bearer "+key)
	rec := httptest.NewRecorder()
	k.Handler().ServeHTTP(rec, req)
	body := rec.Body.String()
	if wrong {
		if rec.Code != http.StatusUnauthorized || strings.Contains(body, fakerdp.LivenessPrefix) || strings.Contains(body, fakerdp.OAuth2Prefix) {
			c.fail(InvFresh, "a wrong key read %s at %s: status %d", tokenNames[ti], r.name, rec.Code)
		}
		return
	}
	if rec.Code != http.StatusOK {
		return // not servable there now: invariant 5 says when it must be
	}
	var ans struct {
		Token     string `json:"token"`
		ExpiresIn int64  `json:"expires_in"`
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &ans); err != nil {
		c.fail(InvFresh, "%s answered a read of %s with malformed JSON: %v", r.name, tokenNames[ti], err)
		return
	}
	is, ok := c.lookup(ans.Token)
	switch {
	case !ok || is.up != ti:
		c.fail(InvFresh, "%s answered a read of %s with a token its upstream never issued", r.name, tokenNames[ti])
	case !now.Before(is.exp):
		c.fail(InvFresh, "%s answered a read of %s with #%d, expired %v ago", r.name, tokenNames[ti], is.idx, now.Sub(is.exp))
	case time.Duration(ans.ExpiresIn)*time.Second > is.exp.Sub(now)+r.clock.driftedSince(is.at.Add(-UpTimeout)):
		c.fail(InvFresh, "%s answered %s #%d with expires_in %ds, but it has %v left", r.name, tokenNames[ti], is.idx, ans.ExpiresIn, is.exp.Sub(now))
	}
}

// logScan receives every log line of every replica and finds secrets in
// them: any token an upstream issued (they all start with the fake's
// prefixes), the client secret and the API keys.
type logScan struct {
	mu    sync.Mutex
	found []string
	lines int
	tail  []string // the last lines, for a failure's report
}

// tailLines is how many of the last log lines a Result keeps.
const tailLines = 300

var secretMarks = []string{fakerdp.LivenessPrefix, fakerdp.OAuth2Prefix, "fake-access-", "fake-refresh-"}

func (l *logScan) Write(p []byte) (int, error) {
	line := string(p)
	var found []string
	for _, s := range []string{clientSecret, readerKey, adminKey, wrongKey} {
		if strings.Contains(line, s) {
			found = append(found, "a log line holds a secret: "+redact(line, s))
		}
	}
	for _, m := range secretMarks {
		for rest := line; ; {
			i := strings.Index(rest, m)
			if i < 0 {
				break
			}
			rest = rest[i+len(m):]
			n := 0
			for n < len(rest) && (rest[n] >= 'A' && rest[n] <= 'Z' || rest[n] >= '0' && rest[n] <= '9') {
				n++
			}
			if n >= 8 {
				found = append(found, "a log line holds a token: "+redact(line, m+rest[:n]))
			}
		}
	}
	l.mu.Lock()
	l.lines++
	l.found = append(l.found, found...)
	if len(found) == 0 {
		if len(l.tail) >= 2*tailLines {
			l.tail = append(l.tail[:0], l.tail[len(l.tail)-tailLines:]...)
		}
		l.tail = append(l.tail, strings.TrimSpace(line))
	}
	l.mu.Unlock()
	return len(p), nil
}

func redact(line, secret string) string {
	return strings.TrimSpace(strings.ReplaceAll(line, secret, "<REDACTED>"))
}

func (l *logScan) take() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	f := l.found
	l.found = nil
	return f
}
