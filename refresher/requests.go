package refresher

// The refresh-request protocol: a replica asks the leader for a new
// token over the events channel, and the leader answers every request.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"slices"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/tokenkeeper/tokenkeeper/cache"
	"github.com/tokenkeeper/tokenkeeper/internal/fault"
	"github.com/tokenkeeper/tokenkeeper/internal/tracing"
)

// maxAnswered bounds the answers a leader keeps for repeated requests.
// Forgetting one costs at most an extra attempt: a requester also accepts
// any token fetched after it asked.
const maxAnswered = 256

// request takes a refresh request: answered again when already answered,
// else pending for the next attempt.
func (r *Refresher) request(ctx context.Context, st *leaderState, m message) {
	if reply, ok := st.answered[m.ID]; ok {
		r.publish(ctx, reply)
		return
	}
	if !slices.Contains(st.pending, m.ID) {
		r.log.InfoContext(ctx, "refresh requested", "by", m.From)
		st.pending = append(st.pending, m.ID)
		if sc := tracing.Extract(m.Trace); sc.IsValid() {
			st.asked[m.ID] = sc
			// A request that arrives during an attempt joins it.
			trace.SpanFromContext(ctx).AddLink(requestLink(sc))
		}
	}
}

// takeRequests takes the refresh requests waiting in the subscription.
func (r *Refresher) takeRequests(ctx context.Context, st *leaderState) {
	for cm, ok := st.sub.Next(); ok; cm, ok = st.sub.Next() {
		if m := decode(cm); m.Type == msgRefresh {
			r.request(ctx, st, m)
		}
	}
}

// answer sends reply to every pending request and remembers it.
func (r *Refresher) answer(ctx context.Context, st *leaderState, reply message) {
	for _, id := range st.pending {
		reply.ID = id
		r.publish(ctx, reply)
		if _, seen := st.answered[id]; !seen {
			st.order = append(st.order, id)
		}
		st.answered[id] = reply
	}
	st.pending = st.pending[:0]
	clear(st.asked)
	for len(st.order) > maxAnswered {
		delete(st.answered, st.order[0])
		st.order = st.order[1:]
	}
}

func (r *Refresher) publish(ctx context.Context, m message) {
	if err := r.sendMsg(ctx, m); err != nil {
		r.log.Debug("answering a refresh request failed; the requester asks again", "error", err)
	}
}

// joinQueued takes, after this leader stored the token of fingerprint fp,
// the refresh requests that Redis published before that token's event:
// they were sent before the token was stored, and it answers them, as a
// request that arrives during the upstream call joins it. Only a request
// sent after the token was stored costs another fetch. It waits for the
// event a Redis timeout at most (the requests seen until then came before
// it), and returns the requests that came after it, for the next attempt.
func (r *Refresher) joinQueued(ctx context.Context, st *leaderState, fp string) []message {
	wait := r.cfg.Clock.NewTimer(RedisTimeout(r.cfg.LockTTL))
	defer wait.Stop()
	var later []message
	seen := false
	for {
		for cm, ok := st.sub.Next(); ok; cm, ok = st.sub.Next() {
			switch m := decode(cm); {
			case m.Type == msgRefresh && seen:
				later = append(later, m)
			case m.Type == msgRefresh:
				r.request(ctx, st, m)
			case m.Type == cache.MsgToken && m.Fingerprint == fp:
				seen = true
			}
		}
		if seen {
			return later
		}
		select {
		case <-ctx.Done():
			return later
		case <-wait.C():
			return later
		case <-st.sub.Ready():
		}
	}
}

// refreshCall is a refresh request in flight on this replica; concurrent
// callers of Refresh wait for the same one.
type refreshCall struct {
	done    chan struct{} // closed when tok and err are set
	cancel  context.CancelFunc
	waiters int // guarded by Refresher.reqMu
	tok     cache.Token
	by      trace.SpanContext // the leader's attempt that answered, when its answer said
	err     error
}

// Refresh asks the leader, whichever replica it is, to fetch a new token
// now, and waits until it is stored and held by this replica or ctx ends.
// Concurrent calls on one replica share one request, and the leader lets
// requests that arrive while an attempt runs join it, so a burst of calls
// costs one upstream call.
//
// Every call gets an answer: the token; fault.ErrRefreshFailed when the
// leader's attempt failed (or a recent one did and the leader is backing
// off); fault.ErrNoLeader when no replica has led for two lock TTLs;
// fault.ErrUnavailable when Redis has failed for as long; or ctx's
// error. A lost message costs a resend, not the answer: the request is
// sent again every half lock TTL and whenever leadership changes, and a
// token fetched after the request counts as its answer.
//
// The request is traced: a span of its own under the caller's (the first
// caller's, when calls share a request), carried to the leader, whose
// attempt links to it; the answer carries the attempt's span, and every
// caller's span links to the attempt that answered it.
func (r *Refresher) Refresh(ctx context.Context) (cache.Token, error) {
	r.reqMu.Lock()
	c := r.req
	if c == nil {
		rctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		rctx, span := r.startSpan(rctx, spanAsk)
		c = &refreshCall{done: make(chan struct{}), cancel: cancel}
		r.req = c
		go func() {
			defer cancel()
			tok, by, err := r.ask(rctx)
			if by.IsValid() {
				span.AddLink(trace.Link{SpanContext: by, Attributes: []attribute.KeyValue{attribute.String("tokenkeeper.link", "answered by")}})
			}
			if err == nil {
				span.SetAttributes(tracing.Fingerprint.String(tok.Fingerprint()), tracing.Generation.Int64(int64(tok.Generation)))
			}
			tracing.Fail(span, err)
			span.End()
			r.reqMu.Lock()
			if r.req == c {
				r.req = nil
			}
			c.tok, c.err, c.by = tok, err, by
			r.reqMu.Unlock()
			close(c.done)
		}()
	}
	c.waiters++
	r.reqMu.Unlock()

	select {
	case <-c.done:
		if c.by.IsValid() {
			trace.SpanFromContext(ctx).AddLink(trace.Link{SpanContext: c.by,
				Attributes: []attribute.KeyValue{attribute.String("tokenkeeper.link", "answered by")}})
		}
		return c.tok, c.err
	case <-ctx.Done():
		r.reqMu.Lock()
		if c.waiters--; c.waiters == 0 {
			// Nobody waits any more: stop asking.
			c.cancel()
			if r.req == c {
				r.req = nil
			}
		}
		r.reqMu.Unlock()
		return cache.Token{}, ctx.Err()
	}
}

// ask sends one refresh request and waits for its answer; see Refresh. It
// also returns the span of the leader's attempt that answered, when the
// answer named one.
func (r *Refresher) ask(ctx context.Context) (tok cache.Token, by trace.SpanContext, err error) {
	asked := r.cfg.Clock.Now()
	before, _ := r.store.Held()
	var raw [8]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return cache.Token{}, by, err
	}
	id := hex.EncodeToString(raw[:])
	tp := tracing.Inject(ctx)
	sub := r.store.Subscribe()
	defer sub.Close()

	// Leadership may be vacant, or Redis unreachable or pausing writes,
	// through a failover: a leader steps down, its lock expires and
	// another is elected within about two lock TTLs of Redis answering
	// again. Only trouble that lasts longer is the answer.
	grace := 2 * r.cfg.LockTTL
	resend := r.cfg.Clock.NewTimer(0)
	defer resend.Stop()
	var troubleSince time.Time // since when no leader, or no Redis, was found
	var askedOf string         // the leader the request was last sent to
	for {
		select {
		case <-ctx.Done():
			return cache.Token{}, by, ctx.Err()
		case <-resend.C():
			now := r.cfg.Clock.Now()
			leader, err := r.send(ctx, id, tp)
			if err == nil {
				askedOf = leader
				troubleSince = time.Time{}
				resend.Reset(r.cfg.LockTTL / 2) // in case the request or its answer was lost
				continue
			}
			if ctx.Err() != nil {
				return cache.Token{}, by, ctx.Err()
			}
			if troubleSince.IsZero() {
				troubleSince = now
			}
			if now.Sub(troubleSince) >= grace {
				return cache.Token{}, by, err
			}
			resend.Reset(r.cfg.ElectEvery)
		case <-sub.Ready():
			for cm, ok := sub.Next(); ok; cm, ok = sub.Next() {
				m := decode(cm)
				switch {
				case m.Type == msgRefreshed && m.ID == id && m.Retry,
					m.Type == msgReleased:
					// Leadership changed hands: ask the next leader.
					resend.Reset(0)
				case m.Type == msgRefreshed && m.ID == id:
					if m.Error != "" && m.From != askedOf {
						// A failure from a leader that has since handed
						// over: the one asked last answers instead.
						continue
					}
					by = tracing.Extract(m.Trace)
					if m.Error != "" {
						return cache.Token{}, by, fmt.Errorf("%w: %s", fault.ErrRefreshFailed, m.Error)
					}
					tok, err := r.answered(ctx, m.Fingerprint)
					return tok, by, err
				case m.Type == cache.MsgToken:
					// A token fetched since the request answers it, even if
					// the leader's answer was lost.
					tok, ok := r.store.Held()
					if ok && tok.Fingerprint() == m.Fingerprint && tok.Value != before.Value && tok.FetchedAt.After(asked) {
						// The event names the write of the attempt that
						// stored it.
						return tok, tracing.Extract(m.Trace), nil
					}
				}
			}
		}
	}
}

// send publishes the refresh request id to the leader, if there is one.
// It returns the leader it asked.
func (r *Refresher) send(ctx context.Context, id, tp string) (string, error) {
	sctx, cancel := context.WithTimeout(ctx, RedisTimeout(r.cfg.LockTTL))
	defer cancel()
	leader, err := r.Leader(sctx)
	if err != nil {
		return "", fmt.Errorf("%w: %w", fault.ErrUnavailable, err)
	}
	if leader == "" {
		return "", fault.ErrNoLeader
	}
	if err := r.sendMsg(sctx, message{Type: msgRefresh, ID: id, Trace: tp}); err != nil {
		return "", fmt.Errorf("%w: %w", fault.ErrUnavailable, err)
	}
	return leader, nil
}

// answered returns the token a successful answer names, reading Redis if
// this replica has not adopted it yet.
func (r *Refresher) answered(ctx context.Context, fingerprint string) (cache.Token, error) {
	if tok, ok := r.store.Held(); ok && tok.Fingerprint() == fingerprint {
		return tok, nil
	}
	if _, err := r.store.Load(ctx); err != nil {
		return cache.Token{}, fmt.Errorf("%w: %w", fault.ErrUnavailable, err)
	}
	tok, _ := r.store.Held()
	return tok, nil
}
