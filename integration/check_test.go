//go:build integration

package integration

import (
	"fmt"
	"maps"
	"math"
	"net/http"
	"slices"
	"strings"
	"time"
)

// Tolerances of the checks.
const (
	// propagation is how long after a newer token was first served anywhere
	// a replica may still serve the older one: pub/sub's 100 ms plus the
	// scheduling noise of a two-core machine running the whole fleet.
	propagation = 300 * time.Millisecond
	// clockSlack absorbs the time between a client's send and the replica's
	// decision when checking the serve margin.
	clockSlack = 250 * time.Millisecond
	// authPerMinute is the fleet-wide ceiling on auth calls, the default
	// of TOKENKEEPER_AUTH_CALLS_PER_MINUTE.
	authPerMinute = 20
)

// window is a stretch of time in which a scenario expects something unusual
// of one replica ("" = every replica). A zero to means "until the end". It
// covers the reads in flight at from, unless graceful: a graceful stop must
// finish the requests it already has.
type window struct {
	replica  string
	from, to time.Time
	why      string
	graceful bool
}

func (w window) covers(s sample) bool {
	if w.replica != "" && w.replica != s.replica {
		return false
	}
	start := s.recv
	if w.graceful {
		start = s.sent
	}
	return !start.Before(w.from) && (w.to.IsZero() || !s.sent.After(w.to))
}

// lagWindow lets a replica serve an older token for up to allow after a newer
// one was first served (0: without limit).
type lagWindow struct {
	window
	allow time.Duration
}

// expect is what a scenario tolerates beyond a healthy fleet.
type expect struct {
	// down: the replica may fail requests in any way (killed, frozen,
	// stopped, restarting).
	down []window
	// unready: the replica may answer 503 with Retry-After, nothing worse.
	unready []window
	// lag: the replica may serve an older token longer than propagation.
	lag []lagWindow
	// extraFetches is how many issued tokens may be extra: never served, or
	// fetched less than half a cycle after the one before.
	extraFetches int
}

// result is what a scenario observed: every read by every client, and the
// fake upstream's record.
type result struct {
	end     time.Time
	stats   fakeStats
	samples []sample
}

// finish stops the clients and returns what they saw, and logs the figures
// every scenario reports.
func (f *fleet) finish() result {
	f.t.Helper()
	f.rec.stop()
	res := result{end: time.Now(), samples: f.rec.all()}
	res.stats = f.stats()
	f.note("clients stopped")

	f.figure("upstream_liveness_calls", res.stats.LivenessCalls)
	f.figure("upstream_liveness_ok", res.stats.LivenessOK)
	f.figure("upstream_auth_calls", res.stats.authCalls())
	f.figure("requests", len(res.samples))
	failed := 0
	kinds := map[string]int{}
	for _, s := range res.samples {
		if !s.ok() {
			failed++
			kinds[s.outcome(nil)]++
		}
	}
	f.figure("failed_requests", failed)
	if failed > 0 {
		var parts []string
		for _, k := range slices.Sorted(maps.Keys(kinds)) {
			parts = append(parts, fmt.Sprintf("%s:%d", k, kinds[k]))
		}
		f.figure("failed_requests_by_kind", strings.Join(parts, ","))
	}

	// The longest time without a token: for the fleet (some replica answered)
	// and for the worst single replica's client.
	var fleetOK []time.Time
	perReplica := map[string][]time.Time{}
	for _, s := range res.samples {
		if s.ok() {
			fleetOK = append(fleetOK, s.recv)
			perReplica[s.replica] = append(perReplica[s.replica], s.recv)
		}
	}
	f.figure("gap_fleet_max", longestGap(fleetOK))
	var worst time.Duration
	var worstName string
	for _, r := range f.replicas {
		if g := longestGap(perReplica[r.name]); g > worst {
			worst, worstName = g, r.name
		}
	}
	f.figure("gap_replica_max", fmt.Sprintf("%v(%s)", worst.Round(time.Millisecond), worstName))
	return res
}

func longestGap(ts []time.Time) time.Duration {
	slices.SortFunc(ts, func(a, b time.Time) int { return a.Compare(b) })
	var g time.Duration
	for i := 1; i < len(ts); i++ {
		g = max(g, ts[i].Sub(ts[i-1]))
	}
	return g
}

// complaints collects failed checks by kind and reports a few of each.
type complaints struct {
	f      *fleet
	kinds  []string
	byKind map[string][]string
}

func (c *complaints) add(kind, format string, args ...any) {
	if c.byKind == nil {
		c.byKind = map[string][]string{}
	}
	if _, ok := c.byKind[kind]; !ok {
		c.kinds = append(c.kinds, kind)
	}
	c.byKind[kind] = append(c.byKind[kind], fmt.Sprintf(format, args...))
}

func (c *complaints) report() {
	c.f.t.Helper()
	for _, k := range c.kinds {
		msgs := c.byKind[k]
		shown := msgs[:min(len(msgs), 5)]
		more := ""
		if len(msgs) > len(shown) {
			more = fmt.Sprintf("\n    ... and %d more", len(msgs)-len(shown))
		}
		c.f.t.Errorf("%s (%d):\n    %s%s", k, len(msgs), joinLines(shown), more)
	}
}

func joinLines(ss []string) string {
	out := ""
	for i, s := range ss {
		if i > 0 {
			out += "\n    "
		}
		out += s
	}
	return out
}

// check asserts the invariants over res, tolerating what exp names.
func (f *fleet) check(res result, exp expect) {
	f.t.Helper()
	tl := f.tl
	tl.learn(res.stats.Tokens)
	tokens := res.stats.Tokens
	index := map[string]int{}
	for i, tk := range tokens {
		index[tk.Token] = i
	}
	c := &complaints{f: f}

	// Invariant 2: every token served was issued, unexpired, outside the
	// serve margin, with an honest expiry; and each replica answers as
	// itself.
	for _, s := range res.samples {
		if s.status != 0 && s.instance != s.replica {
			c.add("answered under another instance id", "%s at %s: X-Tokenkeeper-Instance %q", s.replica, tl.rel(s.sent), s.instance)
		}
		if !s.ok() {
			continue
		}
		i, ok := index[s.token]
		if !ok {
			c.add("served a token the upstream never issued", "%s at %s: %s", s.replica, tl.rel(s.sent), tl.tokenName(s.token))
			continue
		}
		tk := tokens[i]
		switch {
		case !s.recv.Before(tk.ExpiresAt):
			c.add("INVARIANT 2: served an expired token", "%s answered tok#%d at %s, expired at %s", s.replica, i+1, tl.rel(s.recv), tl.rel(tk.ExpiresAt))
		case s.sent.After(tk.ExpiresAt.Add(-f.tm.ServeMargin + clockSlack)):
			c.add("INVARIANT 2: served a token inside the serve margin", "%s answered tok#%d at %s, %v before its expiry (margin %v)", s.replica, i+1, tl.rel(s.sent), tk.ExpiresAt.Sub(s.sent).Round(time.Millisecond), f.tm.ServeMargin)
		}
		// expires_at is whole seconds, and the token is dated early by up
		// to the write's budget (serveDeadline).
		if s.expiresAt.After(tk.ExpiresAt.Add(time.Second)) || s.expiresAt.Before(tk.ExpiresAt.Add(-3*time.Second-f.tm.LockTTL/2)) {
			c.add("reported an expiry the upstream did not give", "%s: tok#%d expires_at %s, upstream says %s", s.replica, i+1, s.expiresAt.Format(time.RFC3339Nano), tk.ExpiresAt.Format(time.RFC3339Nano))
		}
		if want := int(math.Ceil(s.expiresAt.Sub(s.recv).Seconds())); s.expiresIn < want-2 || s.expiresIn > want+1 {
			c.add("expires_in disagrees with expires_at", "%s at %s: expires_in %d, expires_at is %ds away", s.replica, tl.rel(s.recv), s.expiresIn, want)
		}
	}

	// Invariant 5: requests fail only where the scenario expects it.
	for _, s := range res.samples {
		if s.ok() || inAny(exp.down, s) {
			continue
		}
		if w, ok := firstCovering(exp.unready, s); ok {
			if s.status == http.StatusServiceUnavailable && s.retryAfter != "" && s.err == "" {
				continue
			}
			c.add("INVARIANT 5: a not-ready replica answered other than 503 with Retry-After", "%s at %s (%s): %s, Retry-After %q", s.replica, tl.rel(s.sent), w.why, s.outcome(tl.tokenNames()), s.retryAfter)
			continue
		}
		c.add("INVARIANT 5: a request failed", "%s at %s: %s", s.replica, tl.rel(s.sent), s.outcome(tl.tokenNames()))
	}

	// Invariant 1: once a newer token was served anywhere, older ones stop
	// within propagation.
	firstSeen := make([]time.Time, len(tokens))
	for _, s := range res.samples {
		if i, ok := index[s.token]; ok && s.ok() && (firstSeen[i].IsZero() || s.recv.Before(firstSeen[i])) {
			firstSeen[i] = s.recv
		}
	}
	// newerSeen[i]: when a token issued after token i was first served.
	newerSeen := make([]time.Time, len(tokens))
	var earliest time.Time
	for i := len(tokens) - 1; i >= 0; i-- {
		newerSeen[i] = earliest
		if !firstSeen[i].IsZero() && (earliest.IsZero() || firstSeen[i].Before(earliest)) {
			earliest = firstSeen[i]
		}
	}
	var lagMax time.Duration
	for _, s := range res.samples {
		i, ok := index[s.token]
		if !s.ok() || !ok || newerSeen[i].IsZero() {
			continue
		}
		lag := s.sent.Sub(newerSeen[i])
		if lag <= 0 {
			continue
		}
		allow := propagation
		if w, ok := firstLag(exp.lag, s); ok {
			if w.allow == 0 {
				continue
			}
			allow = w.allow
		}
		lagMax = max(lagMax, lag)
		if lag > allow {
			c.add("INVARIANT 1: served an older token after a newer one", "%s answered tok#%d at %s, %v after a newer token was first served (allowed %v)", s.replica, i+1, tl.rel(s.sent), lag.Round(time.Millisecond), allow)
		}
	}
	f.figure("stale_read_max", lagMax)

	// Invariant 3: one fetch per cycle. A token is extra when no client ever
	// saw it, or when it came less than half a cycle after the last one
	// served: a token never served is one wasted fetch, counted as itself,
	// not again as the reason the next one looks early.
	extra := 0
	var extras []string
	prev := -1 // the last token served before tokens[i]
	for i, tk := range tokens {
		served := !firstSeen[i].IsZero()
		if !served && tk.IssuedAt.After(res.end.Add(-2*time.Second)) {
			continue // fetched as the clients stopped
		}
		early := prev >= 0 && tk.IssuedAt.Sub(tokens[prev].IssuedAt) < f.tm.minSpacing()
		before := prev
		if served {
			prev = i
		}
		if served && !early {
			continue
		}
		extra++
		why := "never served"
		if early {
			why = fmt.Sprintf("%v after tok#%d", tk.IssuedAt.Sub(tokens[before].IssuedAt).Round(time.Millisecond), before+1)
			if !served {
				why += ", never served"
			}
		}
		extras = append(extras, fmt.Sprintf("tok#%d issued at %s: %s", i+1, tl.rel(tk.IssuedAt), why))
	}
	f.figure("upstream_extra_fetches", extra)
	if extra > exp.extraFetches {
		c.add("INVARIANT 3: more upstream fetches than cycles", "%d extra, %d tolerated: %v", extra, exp.extraFetches, extras)
	}
	if res.stats.LivenessOK != len(tokens) {
		c.add("fake upstream bookkeeping", "liveness_ok %d but %d tokens issued", res.stats.LivenessOK, len(tokens))
	}
	minutes := math.Ceil(res.end.Sub(f.start.Add(-30 * time.Second)).Minutes())
	if a := res.stats.authCalls(); float64(a) > minutes*authPerMinute {
		c.add("more auth calls than the vendor tolerates", "%d auth calls in %.0f started minutes", a, minutes)
	}
	c.report()
}

func inAny(ws []window, s sample) bool {
	_, ok := firstCovering(ws, s)
	return ok
}

func firstCovering(ws []window, s sample) (window, bool) {
	for _, w := range ws {
		if w.covers(s) {
			return w, true
		}
	}
	return window{}, false
}

func firstLag(ws []lagWindow, s sample) (lagWindow, bool) {
	for _, w := range ws {
		if w.covers(s) {
			return w, true
		}
	}
	return lagWindow{}, false
}

// served returns the reads that received token.
func served(res result, token string) []sample {
	var out []sample
	for _, s := range res.samples {
		if s.ok() && s.token == token {
			out = append(out, s)
		}
	}
	return out
}

// servedEverywhere returns when the last of rs first answered a token other
// than old, and false when one of them never did.
func servedEverywhere(res result, rs []*replica, old string) (time.Time, bool) {
	var last time.Time
	for _, r := range rs {
		i := slices.IndexFunc(res.samples, func(s sample) bool {
			return s.replica == r.name && s.ok() && s.token != old
		})
		if i < 0 {
			return time.Time{}, false
		}
		if at := res.samples[i].recv; at.After(last) {
			last = at
		}
	}
	return last, true
}
