package httpapi

import (
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tokenkeeper/tokenkeeper/cache"
)

// auditTrail writes who received which token, and the admin actions, to a
// logger of its own. Reads are written one line each up to a number per
// key (or identity), token and minute; the rest of the minute's reads are
// counted and written as one line once it is over, so that a high read
// rate costs an atomic addition per read, not a write. Neither a token
// nor a key is ever written: a token by its fingerprint, a caller by its
// name.
type auditTrail struct {
	log     *slog.Logger
	perMin  int64                 // reads written alone per counter and minute; 0: none
	callers map[string][]*readers // by caller name, then token index; read-only after New
	fps     []atomic.Pointer[fingerprinted]
	names   []string // token names by index
}

// fingerprinted caches a token's fingerprint while the token stays.
type fingerprinted struct{ value, fp string }

// readers counts the reads of one caller and token in a minute.
type readers struct {
	mu     sync.Mutex             // held to end a minute
	minute atomic.Int64           // Unix minute counted now
	n      atomic.Int64           // reads in that minute
	fp     atomic.Pointer[string] // of the last token read
}

func newAuditTrail(log *slog.Logger, perMinute int, s *Server, g *guard) *auditTrail {
	switch {
	case perMinute == 0:
		perMinute = defaultAuditReadsPerMinute
	case perMinute < 0:
		perMinute = 0
	}
	a := &auditTrail{log: log, perMin: int64(perMinute), callers: map[string][]*readers{}}
	a.fps = make([]atomic.Pointer[fingerprinted], len(s.catalog.order))
	for _, t := range s.catalog.order {
		a.names = append(a.names, t.Name)
	}
	add := func(name string) {
		if a.callers[name] != nil {
			return
		}
		rs := make([]*readers, len(a.names))
		for i := range rs {
			rs[i] = &readers{}
		}
		a.callers[name] = rs
	}
	for _, ks := range []keySet{s.readerKeys, s.adminKeys, s.metricsKeys} {
		for _, n := range ks.names {
			add(n)
		}
	}
	for _, ks := range g.idents {
		for _, n := range ks.names {
			add(n)
		}
	}
	add(anonymousCaller)
	return a
}

// anonymousCaller names requests without a key in the audit trail.
const anonymousCaller = "anonymous"

// fingerprint returns tok's fingerprint, computed once per token value.
func (a *auditTrail) fingerprint(index int, tok cache.Token) *string {
	if f := a.fps[index].Load(); f != nil && f.value == tok.Value {
		return &f.fp
	}
	f := &fingerprinted{value: tok.Value, fp: tok.Fingerprint()}
	a.fps[index].Store(f)
	return &f.fp
}

// read records that caller received tok of the token at index, at now. A
// nil trail records nothing.
func (a *auditTrail) read(g *guard, r *http.Request, caller string, t *served, tok cache.Token, device bool, now time.Time) {
	if a == nil {
		return
	}
	if caller == "" {
		caller = anonymousCaller
	}
	rs := a.callers[caller]
	if rs == nil {
		return
	}
	c := rs[t.index]
	minute := now.Unix() / 60
	if c.minute.Load() != minute {
		a.roll(c, caller, t.index, minute)
	}
	fp := a.fingerprint(t.index, tok)
	c.fp.Store(fp)
	if c.n.Add(1) > a.perMin {
		return
	}
	a.log.Info("token handed out", "caller", caller, "token", t.Name, "fingerprint", *fp,
		"client", g.clientAddr(r), "per_device", device)
}

// roll ends the minute c counts if it is before minute, writing the line
// of the reads past the limit, and starts minute.
func (a *auditTrail) roll(c *readers, caller string, index int, minute int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	old := c.minute.Load()
	if old >= minute {
		return
	}
	n := c.n.Swap(0)
	c.minute.Store(minute)
	if n <= a.perMin || old == 0 {
		return
	}
	fp := ""
	if p := c.fp.Load(); p != nil {
		fp = *p
	}
	a.log.Info("tokens handed out", "caller", caller, "token", a.names[index], "reads", n,
		"written_alone", a.perMin, "minute", time.Unix(old*60, 0).UTC(), "last_fingerprint", fp)
}

// flush ends every minute before now's, so that the last minute of a
// quiet key is written too.
func (a *auditTrail) flush(now time.Time) {
	if a == nil {
		return
	}
	minute := now.Unix() / 60
	for caller, rs := range a.callers {
		for i, c := range rs {
			if m := c.minute.Load(); m != 0 && m < minute {
				a.roll(c, caller, i, minute)
			}
		}
	}
}

// admin records an admin action by caller on token (empty: none),
// its outcome, and the new token's fingerprint when there is one.
func (a *auditTrail) admin(g *guard, r *http.Request, caller, action, token, fingerprint string, err error) {
	if a == nil {
		return
	}
	outcome := "ok"
	if err != nil {
		outcome = "failed"
	}
	args := []any{"caller", caller, "action", action, "client", g.clientAddr(r), "outcome", outcome}
	if token != "" {
		args = append(args, "token", token)
	}
	if fingerprint != "" {
		args = append(args, "fingerprint", fingerprint)
	}
	a.log.Info("admin action", args...)
}

// startAudit writes the audit trail's minutes as they end, until the
// function it returns is called; that writes the minute under way and
// returns once done.
func (s *Server) startAudit() (stop func()) {
	a := s.guard.audit
	if a == nil {
		return func() {}
	}
	done, stopped := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(stopped)
		t := s.clock.NewTicker(time.Minute)
		defer t.Stop()
		for {
			select {
			case <-done:
				a.flush(s.now().Add(time.Minute))
				return
			case <-t.C():
				a.flush(s.now())
			}
		}
	}()
	return func() { close(done); <-stopped }
}

// fingerprintOf is tok's fingerprint, or "" when err says there is none.
func fingerprintOf(tok cache.Token, err error) string {
	if err != nil || tok.Value == "" {
		return ""
	}
	return tok.Fingerprint()
}
