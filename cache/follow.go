package cache

// Following Redis: the run loop, the poll, and the adoption of a token
// from its change event.

import (
	"context"
	_ "embed"
	"encoding/json"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/tokenkeeper/tokenkeeper/internal/plant"
	"github.com/tokenkeeper/tokenkeeper/internal/tracing"
)

// tokenEvent is MsgToken as the write script publishes it: the message,
// and the token as stored, so that a replica can adopt it without a read.
// Subscribers get the Message alone.
type tokenEvent struct {
	Message
	Tok *eventToken `json:"tok,omitempty"`
}

// eventToken is the token of a tokenEvent. The writer sets the first
// fields; the write script appends the last three, which only Redis
// knows, and closes the JSON object (so Tok must stay the last field).
type eventToken struct {
	Value  string `json:"v"` // as stored: sealed when KeyID is set
	KeyID  string `json:"k,omitempty"`
	Writer string `json:"w,omitempty"`
	AgeMS  int64  `json:"age"` // since the writer received it from the upstream

	ExpMS int64 `json:"exp,omitempty"` // when Redis expires it, on Redis's clock (Unix ms)
	NowMS int64 `json:"now,omitempty"` // Redis's clock when it stored it (Unix ms)
	Gen   int64 `json:"g,omitempty"`
}

// Run keeps the copy in memory current until ctx ends: it follows change
// events on the events channel, and reads Redis as it starts and after
// each (re)subscription; the events' poll (poll.go) catches up on what the
// events missed. Redis being unreachable is logged, not returned: the
// copy in memory is kept. Run returns ctx's error.
func (s *Store) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	if s.ownEvents {
		wg.Go(func() { _ = s.events.Run(ctx) })
	}

	s.loadLogged(ctx)
	s.noteReadiness()

	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-s.route.ready:
		}
		for {
			d, ok := s.route.take()
			if !ok {
				break
			}
			if d.subscribed {
				// (Re)subscribed: events may have been missed meanwhile.
				s.metrics.subscription()
				s.log.Debug("subscribed to events", "channel", s.cfg.Keys.Events)
				s.loadLogged(ctx)
				continue
			}
			s.handle(ctx, d.payload)
		}
	}
}

func (s *Store) handle(ctx context.Context, payload string) {
	var ev tokenEvent
	if err := json.Unmarshal([]byte(payload), &ev); err != nil {
		s.log.Warn("ignoring malformed event", "error", err, "bytes", len(payload))
		return
	}
	if ev.Type == MsgToken {
		old := s.cur.Load()
		how := "event"
		if !s.adoptEvent(ev.Tok) {
			how = "read"
			if s.loadLogged(ctx) != nil {
				s.route.failed.Store(true) // the poll reads again soon
				s.events.kickPoll()
			}
		}
		s.traceAdoption(ev, old, how)
	}
	s.broadcast(ev.Message)
}

// eventSkew is how far the two datings of a token event may disagree,
// beyond the imprecision of the reading of Redis's clock, before the
// store reads Redis instead (adoptEvent).
const eventSkew = 250 * time.Millisecond

// adoptEvent adopts the token an event carries, without a read, when it
// can date it safely, and reports whether it did; when it did not, the
// caller reads Redis.
//
// The event holds when Redis expires the token and when it stored it, on
// Redis's clock; the last full read related Redis's clock to this
// replica's. Dated by that reading, the deadline is never late while
// Redis's clock is the one read: the event could not have been written
// before the reading, and a later token must expire later. Dated by the
// event's arrival (less the longest recent round trip), it is late by
// however long the event took to arrive beyond a round trip. The store
// takes the earlier of the two, and reads Redis instead when the arrival
// dates it later by more than eventSkew and the reading's own round trip
// (the event was slow, or Redis's clock is another server's, or was
// stepped, and behind), when Redis's clock ran faster than this replica's
// since the reading, or when the token is within the serve margin of its
// end. The reading's round trip is allowed for because the reading dates
// early by up to it: Redis read its clock somewhere in that round trip,
// and the reading counts from its start. A reading taken in a busy moment
// (a fleet starting, its Redis queueing every replica's first reads) is
// early by seconds, and the store keeps it until its next full read,
// which at rest comes only with a change: without the allowance the next
// event of every token it keeps would find the arrival later by more than
// eventSkew, and the store would read Redis at the moment its event
// should have spared it that, in the tail of the fleet's propagation. The
// reading's deadline, taken then, is early by up to that round trip; no
// read stretches it later. The arrival dating it
// earlier than the reading by more than eventSkew means no more than
// that the round trip subtracted is longer than the event took: the
// longest recent one, which at rest may date from a busy moment minutes
// ago (Redis's clock running ahead is refused before). The reading's
// deadline is taken then: never late while Redis's clock does not run
// ahead, and not early by a stale round trip; reading Redis instead would
// have every replica read at each refresh until its round trips were
// measured short again. The next poll reads the token in full, which
// never moves its deadline later.
func (s *Store) adoptEvent(e *eventToken) bool {
	ref := s.clockRef.Load()
	if e == nil || e.Value == "" || e.ExpMS <= e.NowMS || ref == nil {
		return false
	}
	now := s.cfg.Clock.Now()
	ms := func(n int64) time.Duration { return time.Duration(n) * time.Millisecond }
	if ms(e.NowMS-ref.ms) > now.Sub(ref.sent)+time.Millisecond {
		return false // Redis's clock ran ahead of this replica's
	}
	// Redis's clock counts whole milliseconds: one more keeps it early.
	byRef := ref.sent.Add(ms(e.ExpMS-ref.ms) - time.Millisecond)
	byArrival := now.Add(ms(e.ExpMS-e.NowMS) - s.rttCut())
	d := byArrival.Sub(byRef)
	if d > eventSkew+ref.rtt {
		return false
	}
	t := Token{
		Value:      e.Value,
		Deadline:   byRef,
		FetchedAt:  ref.sent.Add(ms(e.NowMS - ref.ms - max(e.AgeMS, 0))),
		Writer:     e.Writer,
		Generation: uint64(max(e.Gen, 0)),
	}
	if d < 0 && d >= -eventSkew {
		t.Deadline = byArrival
	}
	if t.Remaining(now) <= s.cfg.ServeMargin {
		return false
	}
	if e.KeyID != "" {
		if s.cfg.Keyring == nil {
			return false
		}
		v, err := s.cfg.Keyring.open(e.KeyID, e.Value, s.cfg.Keys.Token)
		if err != nil {
			return false
		}
		t.Value = v
	}
	if old := s.cur.Load(); old != nil && old.Value != t.Value && !plant.On(plant.AdoptOlder) &&
		(old.Generation > t.Generation || t.Deadline.Before(old.Deadline)) {
		return false // older than the token held: the read decides
	}
	s.inRedis.Store(true)
	s.sealErr.Store(nil)
	s.behind.Store(false)
	s.adopt(t, now)
	s.polled.Store(nil) // the next poll reads it in full
	return true
}

// noteReadiness logs when this replica starts or stops holding a servable
// token, the moment /readyz changes its answer.
func (s *Store) noteReadiness() {
	t, ok := s.Current()
	if s.servable.Swap(ok) == ok {
		return
	}
	if ok {
		s.log.Info("ready: holding a servable token", "fingerprint", t.Fingerprint(),
			"servable_for", (t.Remaining(s.cfg.Clock.Now()) - s.cfg.ServeMargin).Round(time.Millisecond))
		return
	}
	held, _ := s.Held()
	s.log.Warn("not ready: no servable token held; reads answer 503 until a new token arrives",
		"held_fingerprint", held.Fingerprint(), "in_redis", s.InRedis())
}

// traceAdoption records, after the change event ev was handled, the
// adoption of the token it announced when the token held changed from old
// to it: a span in the trace of the write that published it (the event's
// traceparent), with the time from Redis storing it to this replica
// holding it, and how (from the event, or by the read it asked for). A
// token this replica wrote, or adopted already (a poll came first), has
// none.
func (s *Store) traceAdoption(ev tokenEvent, old *held, how string) {
	cur := s.cur.Load()
	if cur == nil || cur == old || (old != nil && old.Value == cur.Value) || cur.Writer == s.cfg.Instance ||
		cur.Fingerprint() != ev.Fingerprint {
		return
	}
	now := s.cfg.Clock.Now()
	ctx := context.Background()
	if sc := tracing.Extract(ev.Trace); sc.IsValid() {
		ctx = trace.ContextWithRemoteSpanContext(ctx, sc)
	}
	attrs := []attribute.KeyValue{
		tracing.Token.String(s.name), tracing.Instance.String(s.cfg.Instance), tracing.Writer.String(cur.Writer),
		tracing.Fingerprint.String(ev.Fingerprint), tracing.Generation.Int64(int64(cur.Generation)),
		attribute.String("tokenkeeper.adopted_by", how),
	}
	if ref := s.clockRef.Load(); ref != nil && ev.Tok != nil && ev.Tok.NowMS > 0 {
		// Redis stored it at NowMS on its clock: that instant on this
		// replica's clock, by the last reading of Redis's.
		stored := ref.sent.Add(time.Duration(ev.Tok.NowMS-ref.ms) * time.Millisecond)
		attrs = append(attrs, tracing.Delay.Float64(float64(max(now.Sub(stored), 0).Microseconds())/1000))
	}
	_, span := s.tracer.Start(ctx, "tokenkeeper.adopt", trace.WithTimestamp(now), trace.WithAttributes(attrs...))
	span.End(trace.WithTimestamp(now))
}
