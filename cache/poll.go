package cache

// The poll: the fallback that catches up a store whose events were lost.
// One loop per Events reads every due store's stamp in one round trip
// (one MGET; in Redis Cluster one per hash tag, pipelined, each going to
// its slot's master), and a store whose stamp changed reads its token in
// full.
//
// How often a store is polled depends on what its subscription proves.
// A proof is a moment before which every message published has reached
// the store: the sending of a PING whose PONG came back through the
// subscription, or the arrival of a leader's beat through it less the
// longest recent round trip (a message reaches a subscriber within one
// after Redis ran its PUBLISH; beat.go). While the last proof is at most
// provenFor(PollInterval) old, a lost event is not to be feared: the
// store is polled every RestPollInterval (minutes), as insurance against
// what no proof shows (a key evicted or flushed, a bug). When the proof
// lapses (no beat and a PING unanswered, a broken connection, a
// resubscription) the store is polled at once, then every PollInterval,
// until a poll sent after the doubt succeeds and a beat or a PING proves
// the subscription again.
//
// The bound: a token written at w is served by every replica by
// w + PollInterval + a round trip, lost event or not. The last proof
// before the write is some p <= w; a beat or a PING follows it within
// pingEvery (a PING goes when no beat came for that long), and if that
// one proves nothing, the proof lapses at p + provenFor, which the loop
// sees within pollStep, and polls: p + provenFor + pollStep =
// p + pingEvery + PollInterval/4 + PollInterval/8 <= w + PollInterval.
// A beat dated at its arrival less a round trip keeps p <= w while
// Redis's deliveries to this replica take no longer than its round
// trips; a replica whose own backlog holds them longer is late by that
// backlog, beyond which its events are late too.

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// pingEvery is how often a subscription carrying a store polled every
// poll is PINGed: 5/8 of it, so that with a PONG late by up to a quarter
// of it and the loop's step of an eighth, a lost event is caught within
// one poll interval.
func pingEvery(routes []*route) time.Duration {
	every := 2 * time.Second
	for i, r := range routes {
		if d := r.store.cfg.PollInterval * 5 / 8; i == 0 || d < every {
			every = d
		}
	}
	return every
}

// provenFor is how long an answered PING proves a subscription alive:
// its interval, and a quarter of the poll interval for its PONG to come.
func provenFor(poll time.Duration) time.Duration { return poll*5/8 + poll/4 }

// pollStep is how often the poll loop looks at its stores: an eighth of
// the shortest poll interval.
func (e *Events) pollStep() time.Duration {
	e.mu.Lock()
	defer e.mu.Unlock()
	step := time.Duration(0)
	for _, r := range e.routes {
		if d := r.store.cfg.PollInterval / 8; step == 0 || d < step {
			step = d
		}
	}
	return max(step, time.Millisecond)
}

// prove records a proof dated at: a PING sent at at was answered, or a
// beat arrived (dated its arrival less a round trip).
func (r *route) prove(at time.Time) {
	r.mu.Lock()
	again := r.proof.IsZero() && !r.lost.IsZero()
	if again {
		// The first proof since a doubt: the new subscription stands
		// now, and only a poll sent from now on covers what was
		// published before it stood (due).
		r.lost = r.store.cfg.Clock.Now()
	}
	if at.After(r.proof) {
		r.proof = at
	}
	r.mu.Unlock()
	if again {
		r.store.events.kickPoll() // the route fell due
	}
}

// doubt withdraws the route's proof at now: its connection broke or was
// replaced.
func (r *route) doubt(now time.Time) {
	r.mu.Lock()
	if !r.proof.IsZero() {
		r.proof, r.lost = time.Time{}, now
	}
	r.mu.Unlock()
}

// proven reports whether the route's events are proven alive at now, and
// otherwise since when they are in doubt (zero: never proven).
func (r *route) proven(now time.Time) (bool, time.Time) {
	r.mu.Lock()
	proof, lost := r.proof, r.lost
	r.mu.Unlock()
	if proof.IsZero() {
		return false, lost
	}
	lapse := proof.Add(provenFor(r.store.cfg.PollInterval))
	return now.Before(lapse), lapse
}

// lostAt returns when the route's events were last proven again after a
// doubt (its connection broke or was replaced), or, until they are, when
// the doubt began; zero if never.
func (r *route) lostAt() time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.lost
}

// EventsProven reports whether the store's events are proven alive now:
// a PING through its subscription was answered recently enough that no
// event can have been lost. While they are, the store is polled every
// RestPollInterval instead of every PollInterval.
func (s *Store) EventsProven() bool {
	ok, _ := s.route.proven(s.cfg.Clock.Now())
	return ok
}

// PollOften keeps the store polled every PollInterval, whatever its
// events prove, while on is true: the leader of a token must notice
// within seconds that Redis lost it (an eviction publishes nothing), and
// reads the token's hash itself rather than its stamp.
func (s *Store) PollOften(on bool) {
	s.often.Store(on)
	s.events.kickPoll()
}

// kickPoll wakes the poll loop.
func (e *Events) kickPoll() {
	select {
	case e.kick <- struct{}{}:
	default:
	}
}

// due reports whether r is to be polled at now and, when it is not, the
// earliest moment it can fall due as time passes: its next poll, its
// retry, the lapse of its proof. Whatever else makes it due wakes the
// poll loop (kickPoll): a failed read, a doubt, the first proof after
// one, a store to be polled often.
func (r *route) due(now time.Time) (bool, time.Time) {
	s := r.store
	if r.failed.Swap(false) && r.backoff == 0 {
		r.retryLater(now)
	}
	if !r.retryAt.IsZero() && !now.Before(r.retryAt) {
		return true, time.Time{}
	}
	interval := s.cfg.PollInterval
	ok, since := r.proven(now)
	if lost := r.lostAt(); ok && r.goodPoll.Before(lost) {
		// Proven again since its connection was replaced (a leader's
		// beat can come before this loop saw the doubt), but what was
		// published before the new subscription stood may be lost for
		// good: in doubt until a poll sent after it stood succeeds.
		ok, since = false, lost
	}
	if !ok {
		r.doubted = now
	}
	// A proof counts once a poll sent after the last doubt succeeded:
	// what was published while in doubt may be lost for good (a
	// connection replaced, or a network that dropped it), and a PONG
	// proves only what came after.
	if ok && r.goodPoll.After(r.doubted) && !s.often.Load() {
		interval = max(s.cfg.RestPollInterval, s.cfg.PollInterval)
	}
	if now.Sub(r.lastPoll) >= interval {
		return true, time.Time{}
	}
	// In doubt since a moment after the last poll: at once.
	if !ok && !since.IsZero() && r.lastPoll.Before(since) && !now.Before(since) {
		return true, time.Time{}
	}
	next := r.lastPoll.Add(interval)
	if ok {
		next = earlier(next, since) // the proof lapses
	}
	if !r.retryAt.IsZero() {
		next = earlier(next, r.retryAt)
	}
	return false, next
}

func earlier(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// retryLater schedules the next read after a failed one: an eighth of
// the poll interval after the first failure, then a quarter, then half,
// the interval's own polls going on meanwhile. On a busy machine an event
// can arrive too late to be dated safely (adoptEvent) and the read it
// asks for can time out: waiting for the next poll would serve the
// previous token a whole interval longer.
func (r *route) retryLater(now time.Time) {
	every := r.store.cfg.PollInterval
	if next := max(2*r.backoff, every/8); next < every {
		r.backoff = next
		r.retryAt = now.Add(next)
		return
	}
	r.retryAt = time.Time{}
}

// routeList returns the routes of every store following e, in no order.
func (e *Events) routeList() []*route {
	e.mu.Lock()
	defer e.mu.Unlock()
	routes := make([]*route, 0, len(e.routes))
	for _, r := range e.routes {
		routes = append(routes, r)
	}
	return routes
}

// pollLoop polls the stores as they fall due until ctx ends.
func (e *Events) pollLoop(ctx context.Context) {
	routes := e.routeList()
	start := e.clock.Now()
	for _, r := range routes {
		r.lastPoll, r.doubted = start, start // each store reads Redis as it starts
	}
	tick := e.clock.NewTicker(e.pollStep())
	defer tick.Stop()
	// The loop looks at its routes at the first tick after the earliest
	// moment one of them can fall due (wake), or at once when woken: at
	// rest, once a proof's lapse or a poll at minutes, not every tick
	// over every store a replica keeps.
	var wake time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C():
			if e.clock.Now().Before(wake) {
				continue
			}
		case <-e.kick:
		}
		now := e.clock.Now()
		var due []*route
		wake = time.Time{}
		for _, r := range routes {
			ok, next := r.due(now)
			switch {
			case ok:
				due = append(due, r)
			case wake.IsZero() || next.Before(wake):
				wake = next
			}
		}
		if len(due) > 0 {
			e.poll(ctx, due)
			wake = time.Time{} // the routes polled fall due again from now: look at the next tick
		}
	}
}

// poll reads the stamps of routes in one round trip (the hashes' expiry
// for the stores polled often) and lets each store act on its answer. It
// goes over the first store's client: a replica's stores share one.
func (e *Events) poll(ctx context.Context, routes []*route) {
	sent := e.clock.Now()
	rdb := routes[0].store.rdb
	_, cluster := rdb.(*redis.ClusterClient)
	pipe := rdb.Pipeline()
	groups := map[string][]int{} // hash tag ("" outside a cluster) -> indexes of routes
	var order []string
	hgets := make([]*redis.StringCmd, len(routes))
	for i, r := range routes {
		if r.store.often.Load() {
			hgets[i] = pipe.HGet(ctx, r.store.cfg.Keys.Token, "exp")
			continue
		}
		tag := ""
		if cluster {
			tag = hashTag(r.store.cfg.Keys.Stamp)
		}
		if _, ok := groups[tag]; !ok {
			order = append(order, tag)
		}
		groups[tag] = append(groups[tag], i)
	}
	stamps := make([]string, len(routes))
	found := make([]bool, len(routes))
	mgets := make([]*redis.SliceCmd, len(order))
	for g, tag := range order {
		keys := make([]string, len(groups[tag]))
		for j, i := range groups[tag] {
			keys[j] = routes[i].store.cfg.Keys.Stamp
		}
		mgets[g] = pipe.MGet(ctx, keys...)
	}
	_, _ = pipe.Exec(ctx) // each command's error is its own
	errs := make([]error, len(routes))
	for g, tag := range order {
		vals, err := mgets[g].Result()
		for j, i := range groups[tag] {
			if err != nil {
				errs[i] = err
				continue
			}
			if j < len(vals) {
				stamps[i], found[i] = vals[j].(string)
			}
		}
	}
	for i, c := range hgets {
		if c == nil {
			continue
		}
		v, err := c.Result()
		switch {
		case err == nil:
			stamps[i], found[i] = v, true
		case errors.Is(err, redis.Nil), isWrongType(err):
		default:
			errs[i] = err
		}
	}
	now := e.clock.Now()
	for i, r := range routes {
		r.lastPoll = now
		err := r.store.logRead(ctx, func(ctx context.Context) (bool, error) {
			return r.store.pollAnswer(ctx, stamps[i], found[i], sent, errs[i])
		})
		if err != nil && ctx.Err() == nil {
			r.retryLater(now)
		} else {
			r.backoff, r.retryAt = 0, time.Time{}
			r.goodPoll = sent
		}
		r.store.noteReadiness()
	}
}

// hashTag returns the hash tag of key (what stands between its first {
// and the next }), or key when it has none: keys of one tag share a slot.
func hashTag(key string) string {
	if i := strings.IndexByte(key, '{'); i >= 0 {
		if j := strings.IndexByte(key[i+1:], '}'); j > 0 {
			return key[i+1 : i+1+j]
		}
	}
	return key
}
