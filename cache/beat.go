package cache

// The leaders' beats: a replica that leads tokens tells the fleet so, over
// the events channels the fleet already follows, so that a follower at
// rest need ask Redis nothing.
//
// Every beatEvery (half the poll interval) a replica that leads tokens
// publishes one beat per subscription that carries them: one over plain
// pub/sub, where every channel shares a connection, naming every token it
// leads; one per led token over sharded pub/sub, where each channel has
// its own. A beat names each token with how long its lock's lease has
// left, as the leader counts it (Store.Lead).
//
// Over plain pub/sub every replica's subscription carries every leader's
// beats, and Redis delivers each to the whole fleet: L leaders beating
// every period would cost Redis L·N deliveries a period, for proofs one
// beat gives. So a leader that heard, since its own last tick, the beat
// of a leader whose instance name sorts before its own lets that one
// prove the fleet's subscriptions, and beats only when the leases it
// announced are half spent (quiet), so that the followers' hints never
// lapse while it leads. The leader first by name beats every period; when
// it stops, the next beats again at its next tick but one. The fleet
// publishes one proof a period, and each leader one beat per half lease.
// The order by name breaks the tie between leaders ticking at the same
// moment, which would otherwise each keep quiet for the other.
//
// A follower takes a beat for two things. It proves the subscription it
// came on alive, as a PONG does (follow): Redis hands a connection its
// messages in the order it ran their PUBLISH, so every message published
// before the beat has been delivered when it arrives. And it tells the
// follower's election that the lock cannot come free before the lease
// named ends (LockHint): a hint, never an authority; the lock in Redis
// decides, and the fenced write is unchanged.

import (
	"context"
	"encoding/json"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// MsgBeat is the type of a leader's beat on the events channel. Replicas
// that predate it hand it to their subscribers like any control message
// of another type, which ignore it.
const MsgBeat = "beat"

// beatPrefix starts every beat as json.Marshal writes a Message: follow
// tells a beat from the other messages by it without decoding them.
const beatPrefix = `{"type":"` + MsgBeat + `"`

// beatBody is a beat's Body: the tokens the sender leads, by name, with
// the milliseconds their locks' leases have left when it was sent.
type beatBody struct {
	Leases map[string]int64 `json:"l"`
}

// beatEvery is how often a leader beats: half the shortest poll interval,
// so that a beat reaches each follower before the follower would PING
// (pingEvery after its last proof: an eighth of the interval later).
func beatEvery(routes []*route) time.Duration {
	every := time.Second
	for i, r := range routes {
		if d := r.store.cfg.PollInterval / 2; i == 0 || d < every {
			every = d
		}
	}
	return max(every, time.Millisecond)
}

// Lead announces in this replica's beats that it holds the token's lock
// until until, by its own lease accounting; call it again at each
// renewal. The zero time stops the announcements: it returns once no
// beat naming the token can be published any more, so that a lock
// released after it is never announced as held.
func (s *Store) Lead(until time.Time) {
	e := s.events
	e.leaseMu.Lock()
	s.route.leaseUntil = until
	if until.IsZero() {
		s.route.announcedAt, s.route.announcedUntil = time.Time{}, time.Time{}
	}
	e.leaseMu.Unlock()
	if until.IsZero() {
		e.beating <- struct{}{} // waits for a beat in flight
		<-e.beating
	}
}

// LockHint returns the replica that last announced leading the token in a
// beat, and until when, on this replica's clock, its lease may last (the
// beat's arrival and the lease it named): before then the lock cannot
// come free unless released, which is announced. Empty when no beat
// announced one since ForgetLockHint.
func (s *Store) LockHint() (holder string, until time.Time) {
	r := s.route
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.hintFrom, r.hintUntil
}

// ForgetLockHint drops the hint LockHint returns: the lock was released.
func (s *Store) ForgetLockHint() {
	r := s.route
	r.mu.Lock()
	r.hintFrom, r.hintUntil = "", time.Time{}
	r.mu.Unlock()
}

// hint records that from announced holding the route's lock for left
// from at.
func (r *route) hint(from string, at time.Time, left time.Duration) {
	r.mu.Lock()
	r.hintFrom, r.hintUntil = from, at.Add(left)
	r.mu.Unlock()
}

// beatLoop publishes this replica's beats until ctx ends.
func (e *Events) beatLoop(ctx context.Context) {
	routes := e.routeList()
	if len(routes) == 0 {
		return
	}
	slices.SortFunc(routes, func(a, b *route) int { return strings.Compare(a.store.cfg.Keys.Events, b.store.cfg.Keys.Events) })
	every := beatEvery(routes)
	tick := e.clock.NewTicker(every)
	defer tick.Stop()
	last := e.clock.Now() // the previous tick
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C():
		}
		// A beat of a leader before this one by name, since the previous
		// tick, proves the subscriptions this one's would.
		h := e.heard.Load()
		heard := !e.sharded.Load() && h != 0 && h >= last.UnixNano()
		last = e.clock.Now()
		e.beat(ctx, routes, heard)
	}
}

// heardBeat records that a beat of a replica before this one by name
// arrived at at.
func (e *Events) heardBeat(at time.Time) {
	for {
		was := e.heard.Load()
		if at.UnixNano() <= was || e.heard.CompareAndSwap(was, at.UnixNano()) {
			return
		}
	}
}

// announceDue reports whether r's lease is to be announced at now: the
// followers' hint, the lease the last beat of this term named, is half
// spent (none was named yet: at once). Guarded by the Events' leaseMu.
func (r *route) announceDue(now time.Time) bool {
	return !now.Before(r.announcedAt.Add(r.announcedUntil.Sub(r.announcedAt) / 2))
}

// beat publishes one beat per subscription naming the tokens of routes
// this replica leads, if any, in one round trip. The round trip gets the
// client's own timeouts (half the lock TTL in a Keeper), as every other
// command does, not the beat's period: a beat cut short leaves its
// connection broken, and beats failing every period on a slow Redis would
// burn the pool's connections, so that the lock's renewal had to dial
// (three round trips) and could miss its lease. A slow beat delays the
// next (ticks meanwhile are dropped); the followers PING meanwhile.
//
// With quiet set (another leader's beat proved the subscriptions since
// the last tick), it publishes only when a lease it announced is half
// spent (announceDue), naming every token it leads all the same.
func (e *Events) beat(ctx context.Context, routes []*route, quiet bool) {
	e.beating <- struct{}{}
	defer func() { <-e.beating }()
	now := e.clock.Now()
	var led []*route
	due := !quiet
	e.leaseMu.Lock()
	leases := make(map[*route]int64)
	for _, r := range routes {
		if left := r.leaseUntil.Sub(now); left > 0 {
			led = append(led, r)
			leases[r] = left.Milliseconds()
			due = due || r.announceDue(now)
		}
	}
	if due {
		for _, r := range led {
			r.announcedAt, r.announcedUntil = now, r.leaseUntil
		}
	}
	e.leaseMu.Unlock()
	if len(led) == 0 || !due {
		return
	}
	groups := [][]*route{led} // plain pub/sub: one connection carries every channel
	if e.sharded.Load() {
		groups = groups[:0]
		for _, r := range led {
			groups = append(groups, []*route{r})
		}
	}
	pipe := led[0].store.rdb.Pipeline()
	for _, g := range groups {
		body := beatBody{Leases: make(map[string]int64, len(g))}
		for _, r := range g {
			body.Leases[r.store.name] = leases[r]
		}
		b, err := json.Marshal(body)
		if err != nil {
			return
		}
		m, err := json.Marshal(Message{Type: MsgBeat, From: g[0].store.cfg.Instance, Body: b})
		if err != nil {
			return
		}
		if e.sharded.Load() {
			pipe.SPublish(ctx, g[0].store.cfg.Keys.Events, m)
		} else {
			pipe.Publish(ctx, g[0].store.cfg.Keys.Events, m)
		}
	}
	if _, err := pipe.Exec(ctx); err != nil && ctx.Err() == nil {
		e.log.Debug("publishing this replica's beat failed; the followers PING meanwhile", "error", err)
		e.leaseMu.Lock()
		for _, r := range led {
			r.announcedAt, r.announcedUntil = time.Time{}, time.Time{} // announced at the next tick
		}
		e.leaseMu.Unlock()
	}
}

// beatWire is a beat as it arrives: a Message of type MsgBeat whose Body
// is a beatBody, decoded in one pass.
type beatWire struct {
	Type string   `json:"type"`
	From string   `json:"from"`
	Body beatBody `json:"body"`
}

// lease is one lease a beat names: the token's name and the milliseconds
// left.
type lease struct {
	name string
	ms   int64
}

// takeBeat acts on a beat that arrived at at on the subscription of
// routes (byName: the same routes, by token name), through the route of
// its channel: it proves routes alive, and hints the leases it names to
// their stores. It reports false when the payload is no beat.
//
// A beat reaches every replica about as often as a leader's lease is half
// spent, for each leader: at 100 leaders, some 20 times a second. So its
// cost is a parse of the form beat writes (parseBeat, without
// allocating; anything else goes through encoding/json), a look-up per
// lease it names, and a proof per route only when the proof moved on by
// proofStep since the last beat's (*proved, which a doubt resets): the
// routes' proofs are then at most proofStep older than they could be, a
// proof claiming less than it could, never more.
func (e *Events) takeBeat(payload string, via *route, routes []*route, byName map[string]*route, at time.Time, proved *time.Time, proofStep time.Duration) bool {
	if !strings.HasPrefix(payload, beatPrefix) {
		return false
	}
	var buf [4]lease
	from, leases, ok := parseBeat(payload, buf[:0])
	if !ok {
		var b beatWire
		if json.Unmarshal([]byte(payload), &b) != nil || b.Type != MsgBeat {
			return true // a malformed beat proves nothing
		}
		from = b.From
		for name, ms := range b.Body.Leases {
			leases = append(leases, lease{name, ms})
		}
	}
	// Published before it arrived, by up to the time a message takes from
	// Redis to here, which a round trip bounds: dated that much earlier,
	// the proof claims no message published after the beat.
	proof := at
	if via != nil {
		proof = at.Add(-via.store.rttCut())
	}
	if proved.IsZero() || !proof.Before(proved.Add(proofStep)) {
		for _, r := range routes {
			r.prove(proof)
		}
		*proved = proof
	}
	if len(routes) > 0 && from < routes[0].store.cfg.Instance {
		e.heardBeat(at)
	}
	for _, l := range leases {
		if r := byName[l.name]; r != nil && l.ms > 0 {
			r.hint(from, at, time.Duration(l.ms)*time.Millisecond)
		}
	}
	return true
}

// parseBeat decodes payload when it is a beat in the form beat publishes
// it (json.Marshal of a Message: no space, its fields in order, the
// leases' names sorted), appending its leases to leases. It reports false
// for any other form, escapes included, which encoding/json decodes
// instead.
func parseBeat(payload string, leases []lease) (string, []lease, bool) {
	rest, ok := strings.CutPrefix(payload, beatPrefix+`,"from":`)
	if !ok {
		return "", nil, false
	}
	from, rest, ok := cutJSONString(rest)
	if !ok {
		return "", nil, false
	}
	if rest, ok = strings.CutPrefix(rest, `,"body":{"l":{`); !ok {
		return "", nil, false
	}
	for first := true; !strings.HasPrefix(rest, "}"); first = false {
		if !first {
			if rest, ok = strings.CutPrefix(rest, ","); !ok {
				return "", nil, false
			}
		}
		var name string
		if name, rest, ok = cutJSONString(rest); !ok {
			return "", nil, false
		}
		if rest, ok = strings.CutPrefix(rest, ":"); !ok {
			return "", nil, false
		}
		n := 0
		for n < len(rest) && (rest[n] >= '0' && rest[n] <= '9' || n == 0 && rest[n] == '-') {
			n++
		}
		ms, err := strconv.ParseInt(rest[:n], 10, 64)
		if digits := strings.TrimPrefix(rest[:n], "-"); err != nil || len(digits) > 1 && digits[0] == '0' {
			return "", nil, false
		}
		leases, rest = append(leases, lease{name, ms}), rest[n:]
	}
	if rest != "}}}" {
		return "", nil, false
	}
	return from, leases, true
}

// cutJSONString cuts a JSON string from the front of s, reporting false
// unless it is one that needs no unescaping: a quote, printable UTF-8
// without backslash or quote, a quote.
func cutJSONString(s string) (value, rest string, ok bool) {
	if !strings.HasPrefix(s, `"`) {
		return "", "", false
	}
	end := strings.IndexByte(s[1:], '"')
	if end < 0 {
		return "", "", false
	}
	value = s[1 : 1+end]
	for i := 0; i < len(value); i++ {
		if c := value[i]; c < 0x20 || c == '\\' {
			return "", "", false
		}
	}
	if !utf8.ValidString(value) {
		return "", "", false
	}
	return value, s[2+end:], true
}
