package httpapi

import (
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/tokenkeeper/tokenkeeper/cache"
)

// The token read is the route every client calls, many times a second, so
// it takes the shortest way through the server that keeps every check:
//
//   - serveHTTP answers GET /v1/tokens/{name} itself (readToken), without
//     echo's router, context and middleware, when the request is plain:
//     no escaped path, no body. Anything else goes through echo to the
//     same handler (getToken), so the answers are the same either way.
//   - The answer is rendered once per token (answer), the first time a
//     read serves it, and shared by the reads that follow; a read writes
//     it as it is, with expires_in's countdown appended.
//   - Header values are shared, preallocated slices assigned to the header
//     map under their canonical keys: no canonicalisation, no allocation.
//     net/http still copies the map when the header is written (that is
//     not ours to avoid) and writes each header on the wire.
//   - The key check, the rate limiter, the audit trail and the metrics run
//     on every read, as on every other route.

// tokenRoute is the token route's path pattern: its metrics label.
const tokenRoute = "/v1/tokens/:name"

// tokensPrefix is the path of the token route up to the name.
const tokensPrefix = "/v1/tokens/"

// tokenReadName returns the name of the token r reads when r is a plain
// token read: GET /v1/tokens/{name} with a name holding no slash, a path
// without escapes and no body. Echo would route such a request to the
// token route with that name; readToken answers it as getToken would.
// Requests it refuses go through echo.
func tokenReadName(r *http.Request) (string, bool) {
	if r.Method != http.MethodGet || r.URL.RawPath != "" || r.ContentLength != 0 {
		return "", false
	}
	name, ok := strings.CutPrefix(r.URL.Path, tokensPrefix)
	if !ok || name == "" || strings.IndexByte(name, '/') >= 0 {
		return "", false
	}
	return name, true
}

// readToken answers a plain token read (tokenReadName) with what
// instrument and getToken do on echo's route: the clock read once, the
// handler's errors as JSON, a panic as a 500, and the route's metrics.
func (s *Server) readToken(w http.ResponseWriter, r *http.Request, name string) {
	start := time.Now()
	now := start
	if s.fakeClock {
		now = s.now()
	}
	status := 0 // the answer's status once it is written
	if err := s.callTokenRead(w, r, name, now, &status); err != nil {
		if status != 0 {
			s.log.Debug("httpapi: error after the answer began", "path", tokenRoute, "err", err)
		} else {
			status = s.writeErrorTo(w, tokenRoute, err)
		}
	}
	s.tokenMetrics.observe(status, time.Since(start))
}

// callTokenRead runs serveToken, turning a panic into errInternal as call
// does.
func (s *Server) callTokenRead(w http.ResponseWriter, r *http.Request, name string, now time.Time, status *int) (err error) {
	defer func() {
		if p := recover(); p != nil {
			if p == http.ErrAbortHandler {
				panic(p)
			}
			s.log.Error("httpapi: handler panicked", "route", tokenRoute, "panic", p)
			err = errInternal
		}
	}()
	return s.serveToken(w, r, name, now, status)
}

// serveToken answers a read of the token named name at now: the key is
// checked before the name, so that without a key no name can be told from
// another. On success it writes the answer, sets *status and returns nil;
// otherwise it writes nothing and returns the error to answer.
func (s *Server) serveToken(w http.ResponseWriter, r *http.Request, name string, now time.Time, status *int) error {
	t := s.catalog.byName[name]
	who, err := s.authorizeWho(r, grantReader|grantAdmin, s.anonymous, t, now)
	if err != nil {
		return err
	}
	if t.Devices != nil {
		return errPerDevice
	}
	tok, ok := t.current(now)
	if !ok {
		return errNoToken
	}
	a := t.answerFor(tok)
	h := w.Header()
	h["Content-Type"] = jsonContentType
	if a.generation != nil {
		h[generationHeader] = a.generation
	}
	bp := getBuf()
	b := a.appendTo((*bp)[:0], now)
	*status = http.StatusOK
	w.WriteHeader(http.StatusOK)
	if _, err := w.Write(b); err != nil {
		s.log.Debug("httpapi: write answer", "path", tokenRoute, "err", err)
	}
	*bp = b
	putBuf(bp)
	s.metrics.reads.Inc()
	s.guard.audit.read(s.guard, r, who.name, t, tok, false, now)
	return nil
}

// generationHeader names the generation of the token served
// (cache.Token.Generation): it only grows, so a client that sees it go
// down has been handed an older token than before.
const generationHeader = "X-Tokenkeeper-Generation"

// answer is the token route's answer for one token, rendered once: the
// body up to the value of expires_in, and the value of the generation
// header. expires_in is all of the answer that changes from one read to
// the next; appendTo adds it, counted down from the read's own time.
type answer struct {
	value      string
	deadline   time.Time
	gen        uint64
	head       []byte   // read-only once stored
	generation []string // the header's value, read-only; nil when unknown
}

// answerFor returns the answer for tok, rendering it when tok is not the
// token the last answer was rendered for (another value, deadline or
// generation). A token changes about once a lifetime: the first read that
// serves a new one renders its answer, and the reads that follow share it.
func (t *served) answerFor(tok cache.Token) *answer {
	if a := t.answer.Load(); a != nil && a.value == tok.Value && a.deadline.Equal(tok.Deadline) && a.gen == tok.Generation {
		return a
	}
	a := &answer{value: tok.Value, deadline: tok.Deadline, gen: tok.Generation}
	a.head = appendTokenJSON(nil, t.Name, tok.Value, tok.Deadline)
	if tok.Generation > 0 {
		a.generation = []string{strconv.FormatUint(tok.Generation, 10)}[:1:1]
	}
	t.answer.Store(a) // a racing store is harmless: each read uses the answer it checked or built
	return a
}

// appendTo appends the whole body to b for a read at now: the rendered
// head, expires_in (whole seconds left at now, floored, so never more than
// the token has) and the closing "}\n".
func (a *answer) appendTo(b []byte, now time.Time) []byte {
	b = append(b, a.head...)
	b = strconv.AppendInt(b, expiresIn(a.deadline, now), 10)
	return append(b, "}\n"...)
}
