package httpapi

import (
	"context"
	"crypto/sha256"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// The throttling of failed authentication slows failures and nothing
// else: a request with a valid key never reaches it. Guessing a key is
// made hopeless by the keys' strength (CheckKeyStrength), not by this;
// what this adds is that a client retrying a wrong key, or a guesser,
// costs the replica little: each failure past Security.AuthFailures is
// answered after a growing delay, and at most Security.AuthFailuresInFlight
// of them wait per client address (and per presented key) at once, the
// others being answered 429 at once.

// maxRemembered bounds the client addresses and keys whose failures are
// remembered; past it, those forgotten by now and with none waiting are
// dropped, and if none is, all are.
const maxRemembered = 100000

// failures are the failed authentications of one address or key.
type failures struct {
	last    time.Time // of the last failure
	count   int       // since the count last started again
	waiting int       // delayed failures waiting now
}

// failed answers a request that presented an unknown key: errUnauthorized,
// after a delay once its client address or key has failed
// g.failLimit times lately, or a 429 when too many of its failures already
// wait. It counts the failure in the metrics, and logs the first delayed
// failure of each run, naming the key by its digest's first bytes only.
func (g *guard) failed(r *http.Request, w *who) error {
	g.authFailed.Inc()
	if g.failLimit < 0 {
		return errUnauthorized
	}
	now := g.now()
	addr := g.clientAddr(r)
	hasKey := w.digest != ([sha256.Size]byte{}) // a key was there to digest

	g.mu.Lock()
	fa := remember(g, now, g.addrs, addr)
	var fk *failures
	if hasKey {
		fk = remember(g, now, g.keys, w.digest)
	}
	var full prometheus.Counter
	switch {
	case fa.waiting >= g.inFlight:
		full = g.throttledAddr
	case fk != nil && fk.waiting >= g.inFlight:
		full = g.throttledKey
	}
	delay, first, by := g.delay(fa), fa.count == g.failLimit+1, "address"
	if fk != nil {
		if d := g.delay(fk); d > delay {
			delay, by = d, "key"
		}
		if fk.count == g.failLimit+1 && !first {
			first, by = true, "key"
		}
	}
	if full == nil && delay > 0 {
		fa.waiting++
		if fk != nil {
			fk.waiting++
		}
	}
	g.mu.Unlock()

	if first {
		fp := keyFingerprint(&w.digest)
		g.log.Warn("httpapi: failed authentications throttled", "by", by, "client", addr, "key_digest", fp,
			"failures", g.failLimit, "max_delay", g.maxDelay, "in_flight", g.inFlight)
		if g.audit != nil {
			g.audit.log.Info("auth throttled", "by", by, "client", addr, "key_digest", fp,
				"failures", g.failLimit, "max_delay", g.maxDelay, "in_flight", g.inFlight)
		}
	}
	if full != nil {
		full.Inc()
		secs := int64((delay + time.Second - 1) / time.Second)
		return &apiError{status: http.StatusTooManyRequests, code: "too_many_failures",
			message:    "too many failed authentications from this client or with this key are waiting; retry after the delay in Retry-After",
			retryAfter: true, retryAfterValue: []string{strconv.FormatInt(max(secs, 1), 10)}}
	}
	if delay > 0 {
		g.wait(r.Context(), delay)
		g.mu.Lock()
		fa.waiting--
		if fk != nil {
			fk.waiting--
		}
		g.mu.Unlock()
	}
	return errUnauthorized
}

// delay is how long the latest failure counted in f waits:
// authFailureBaseDelay for the first past g.failLimit, doubling with
// each further one up to g.maxDelay.
func (g *guard) delay(f *failures) time.Duration {
	past := f.count - g.failLimit
	if past <= 0 {
		return 0
	}
	d := authFailureBaseDelay
	for i := 1; i < past && d < g.maxDelay; i++ {
		d *= 2
	}
	return min(d, g.maxDelay)
}

// wait returns after d on g's clock, or when ctx ends (the client left,
// or the server shuts down).
func (g *guard) wait(ctx context.Context, d time.Duration) {
	t := g.clock.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C():
	case <-ctx.Done():
	}
}

// remember counts a failure of id in m at now and returns its record; the
// count starts again after a window without failures. Call it with g.mu
// held.
func remember[K comparable](g *guard, now time.Time, m map[K]*failures, id K) *failures {
	f := m[id]
	if f == nil {
		if len(m) >= maxRemembered {
			for k, v := range m {
				if now.Sub(v.last) >= g.window && v.waiting == 0 {
					delete(m, k)
				}
			}
			if len(m) >= maxRemembered {
				clear(m)
			}
		}
		f = &failures{}
		m[id] = f
	} else if now.Sub(f.last) >= g.window {
		f.count = 0
	}
	f.last = now
	f.count++
	return f
}
