package refresher

// Traces: the spans of the election and the refresh loop, and the span
// context the refresh-request protocol carries between replicas.

import (
	"context"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/tokenkeeper/tokenkeeper/internal/tracing"
)

// Span names.
const (
	spanAttempt  = "tokenkeeper.refresh"
	spanElection = "tokenkeeper.election"
	spanStepDown = "tokenkeeper.step_down"
	spanAsk      = "tokenkeeper.refresh_request"
)

// Why an attempt ran: the reason attribute of its span.
const (
	reasonScheduled = "scheduled" // the token's refresh came due
	reasonRequested = "requested" // a replica asked (Refresh: the admin's POST, a device's renewal)
	reasonMissing   = "missing"   // no servable token held
	reasonUnsaved   = "unsaved"   // storing a token fetched in an earlier attempt
	reasonReseed    = "reseed"    // writing the token in memory back into Redis
)

// Lock events, on the election span, the step-down span and the attempt
// span running when they happen.
const (
	eventLockWon        = "lock won"
	eventLockRenewed    = "lock renewed"
	eventRenewalFailed  = "lock renewal failed"
	eventLockLost       = "lock lost"
	eventLockHandedOver = "lock handed over"
	eventLockReleased   = "lock released"
)

// startSpan starts a span of the refresher, with the token's name and this
// replica's instance.
func (r *Refresher) startSpan(ctx context.Context, name string, opts ...trace.SpanStartOption) (context.Context, trace.Span) {
	opts = append(opts, trace.WithAttributes(tracing.Token.String(r.name), tracing.Instance.String(r.cfg.Instance)))
	return r.tracer.Start(ctx, name, opts...)
}

// setSpan makes span the one lock events are added to while it runs;
// nil ends that.
func (r *Refresher) setSpan(span trace.Span) {
	r.spanMu.Lock()
	r.span = span
	r.spanMu.Unlock()
}

// lockEvent adds a lock event to the attempt span running now, if any.
func (r *Refresher) lockEvent(name string, attrs ...attribute.KeyValue) {
	r.spanMu.Lock()
	defer r.spanMu.Unlock()
	if r.span != nil {
		r.span.AddEvent(name, trace.WithAttributes(attrs...))
	}
}

// reasonOf says why the attempt about to run runs.
func (r *Refresher) reasonOf(st *leaderState) string {
	tok, ok := r.store.Held()
	switch {
	case r.unsaved != nil:
		return reasonUnsaved
	case len(st.pending) > 0:
		return reasonRequested
	case !ok || !tok.ServableAt(r.cfg.Clock.Now(), r.store.ServeMargin()):
		return reasonMissing
	default:
		return reasonScheduled
	}
}

// startAttempt starts the span of an attempt: under the election's span
// for the first attempt of a term (a failover's trace shows the election
// and the refresh it led to), else a trace of its own linked to it, and
// linked to the spans of the refresh requests it answers.
func (r *Refresher) startAttempt(ctx context.Context, st *leaderState, reason string) (context.Context, trace.Span) {
	opts := []trace.SpanStartOption{trace.WithAttributes(
		tracing.Reason.String(reason), tracing.Attempt.Int(st.attempt+1))}
	if st.term.IsValid() && st.attempts == 0 {
		ctx = trace.ContextWithSpanContext(ctx, st.term)
	} else {
		opts = append(opts, trace.WithNewRoot())
		if st.term.IsValid() {
			opts = append(opts, trace.WithLinks(trace.Link{SpanContext: st.term,
				Attributes: []attribute.KeyValue{attribute.String("tokenkeeper.link", "election")}}))
		}
	}
	for _, id := range st.pending {
		if sc := st.asked[id]; sc.IsValid() {
			opts = append(opts, trace.WithLinks(requestLink(sc)))
		}
	}
	st.attempts++
	ctx, span := r.startSpan(ctx, spanAttempt, opts...)
	r.setSpan(span)
	return ctx, span
}

// endAttempt ends an attempt's span with its outcome.
func (r *Refresher) endAttempt(span trace.Span, outcome string, gen uint64, err error) {
	r.setSpan(nil)
	span.SetAttributes(tracing.Outcome.String(outcome))
	if gen > 0 {
		span.SetAttributes(tracing.Generation.Int64(int64(gen)))
	}
	tracing.Fail(span, err)
	span.End()
}

func requestLink(sc trace.SpanContext) trace.Link {
	return trace.Link{SpanContext: sc, Attributes: []attribute.KeyValue{attribute.String("tokenkeeper.link", "refresh request")}}
}

// startStepDown starts the span of a term's end, linked to the election's:
// the release announced to the fleet carries it, and the next leader's
// election links to it.
func (r *Refresher) startStepDown(ctx context.Context, term trace.SpanContext) (context.Context, trace.Span) {
	opts := []trace.SpanStartOption{trace.WithNewRoot()}
	if term.IsValid() {
		opts = append(opts, trace.WithLinks(trace.Link{SpanContext: term}))
	}
	return r.startSpan(ctx, spanStepDown, opts...)
}

// endTerm ends the step-down span with how the term ended: its reason and
// the lock event.
func (r *Refresher) endTerm(span trace.Span, reason endReason, ledFor time.Duration) {
	event := eventLockLost
	switch reason {
	case endHandedOver, endStepped, endMaster:
		event = eventLockHandedOver
	case endReleased:
		event = eventLockReleased
	}
	r.lockEvent(event)
	span.SetAttributes(attribute.String("tokenkeeper.end_reason", string(reason)), attribute.Int64("tokenkeeper.led_for_ms", ledFor.Milliseconds()))
	span.AddEvent(event)
	span.End()
}
