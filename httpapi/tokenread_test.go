package httpapi_test

import (
	"net/http"
	"net/http/httptest"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tokenkeeper/tokenkeeper/cache"
	"github.com/tokenkeeper/tokenkeeper/httpapi"
	"github.com/tokenkeeper/tokenkeeper/internal/clocktest"
)

// The server answers plain token reads on a short way of its own and the
// others through echo's route (tokenread.go). A GET with a body is never
// plain: doBothWays sends each request both ways.

// doWay sends r as it is (the short way), or with a one-byte body (echo's
// route).
func (ev *env) doWay(t *testing.T, r req, viaEcho bool) *httptest.ResponseRecorder {
	t.Helper()
	if viaEcho {
		r.body = "x"
	}
	return ev.do(t, r)
}

// answersAlike fails unless a and b have the same status, headers and
// body.
func answersAlike(t *testing.T, what string, a, b *httptest.ResponseRecorder) {
	t.Helper()
	if a.Code != b.Code {
		t.Errorf("%s: status %d one way, %d the other", what, a.Code, b.Code)
	}
	if a.Body.String() != b.Body.String() {
		t.Errorf("%s: body %q one way, %q the other", what, a.Body, b.Body)
	}
	ha, hb := a.Result().Header, b.Result().Header
	for k := range ha {
		if _, ok := hb[k]; !ok {
			t.Errorf("%s: header %s one way only (%q)", what, k, ha[k])
		}
	}
	for k, vb := range hb {
		if va := ha[k]; strings.Join(va, "\n") != strings.Join(vb, "\n") {
			t.Errorf("%s: header %s = %q one way, %q the other", what, k, va, vb)
		}
	}
}

func TestTokenReadBothWays(t *testing.T) {
	tests := []struct {
		name   string
		tok    cache.Token
		ok     bool
		r      req
		status int
	}{
		{"reader key", cache.Token{Value: tokenValue, Deadline: t0.Add(time.Hour), Generation: 7}, true, req{path: "/v1/tokens/liveness", header: bearer(readerKey)}, 200},
		{"admin key, X-API-Key", cache.Token{Value: tokenValue, Deadline: t0.Add(time.Hour)}, true, req{path: "/v1/tokens/liveness", header: apiKey(adminKey)}, 200},
		{"escapes", cache.Token{Value: "a\"b\\c\n\u2028é", Deadline: t0.Add(90*time.Second + 999*time.Millisecond)}, true, req{path: "/v1/tokens/liveness", header: bearer(readerKey)}, 200},
		{"no key", cache.Token{Value: tokenValue, Deadline: t0.Add(time.Hour)}, true, req{path: "/v1/tokens/liveness"}, 401},
		{"wrong key", cache.Token{Value: tokenValue, Deadline: t0.Add(time.Hour)}, true, req{path: "/v1/tokens/liveness", header: bearer("not-a-key")}, 401},
		{"unknown name", cache.Token{Value: tokenValue, Deadline: t0.Add(time.Hour)}, true, req{path: "/v1/tokens/other", header: bearer(readerKey)}, 404},
		{"no token", cache.Token{}, false, req{path: "/v1/tokens/liveness", header: bearer(readerKey)}, 503},
		{"expired", cache.Token{Value: tokenValue, Deadline: t0}, true, req{path: "/v1/tokens/liveness", header: bearer(readerKey)}, 503},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ev := newEnv(t, nil)
			ev.tokens.set(tt.tok, tt.ok)
			short := ev.doWay(t, tt.r, false)
			echo := ev.doWay(t, tt.r, true)
			if short.Code != tt.status {
				t.Errorf("status = %d, want %d (body %s)", short.Code, tt.status, short.Body)
			}
			answersAlike(t, "short way and echo's route", short, echo)
			if tt.status != 200 {
				return
			}
			var got tokenBody
			decodeStrict(t, short.Body.Bytes(), &got)
			want := tokenBody{Name: "liveness", Token: tt.tok.Value,
				ExpiresAt: tt.tok.Deadline.UTC().Truncate(time.Second).Format(time.RFC3339),
				ExpiresIn: int64(tt.tok.Deadline.Sub(t0) / time.Second)}
			if got != want {
				t.Errorf("body = %+v, want %+v", got, want)
			}
			wantGen := ""
			if tt.tok.Generation > 0 {
				wantGen = strconv.FormatUint(tt.tok.Generation, 10)
			}
			if got := short.Header().Get(httpapi.GenerationHeader); got != wantGen {
				t.Errorf("%s = %q, want %q", httpapi.GenerationHeader, got, wantGen)
			}
		})
	}
}

func TestTokenAnswerBytes(t *testing.T) {
	// The answer, to the byte, and its whole header set, as the token
	// route has always written them.
	ev := newEnv(t, nil)
	ev.tokens.set(cache.Token{Value: "v.a\"l", Deadline: t0.Add(59*time.Minute + 30*time.Second + 500*time.Millisecond), Generation: 42}, true)
	const wantBody = `{"name":"liveness","token":"v.a\"l","expires_at":"2026-03-04T06:05:37Z","expires_in":3570}` + "\n"
	wantHeader := http.Header{
		"Cache-Control":            {"no-store"},
		"Content-Type":             {"application/json"},
		"Referrer-Policy":          {"no-referrer"},
		"X-Content-Type-Options":   {"nosniff"},
		"X-Frame-Options":          {"DENY"},
		"X-Tokenkeeper-Generation": {"42"},
		"X-Tokenkeeper-Instance":   {"replica-1"},
	}
	for _, viaEcho := range []bool{false, true} {
		for range 2 { // the answer as rendered, then as shared
			w := ev.doWay(t, req{path: "/v1/tokens/liveness", header: bearer(readerKey)}, viaEcho)
			if w.Code != 200 || w.Body.String() != wantBody {
				t.Errorf("through echo %v: %d %q, want 200 %q", viaEcho, w.Code, w.Body, wantBody)
			}
			if got := w.Result().Header; !reflect.DeepEqual(got, wantHeader) {
				t.Errorf("through echo %v: headers %v, want %v", viaEcho, got, wantHeader)
			}
		}
	}
}

func TestTokenReadMetricsBothWays(t *testing.T) {
	// Both ways count under the token route's label.
	ev := newEnv(t, nil)
	for _, viaEcho := range []bool{false, true} {
		ev.doWay(t, req{path: "/v1/tokens/liveness", header: bearer(readerKey)}, viaEcho)
		ev.doWay(t, req{path: "/v1/tokens/liveness", header: bearer("wrong")}, viaEcho)
	}
	body := ev.do(t, req{path: "/metrics"}).Body.String()
	for _, want := range []string{
		`tokenkeeper_http_requests_total{code="200",route="/v1/tokens/:name"} 2`,
		`tokenkeeper_http_requests_total{code="401",route="/v1/tokens/:name"} 2`,
		`tokenkeeper_http_request_duration_seconds_count{route="/v1/tokens/:name"} 4`,
		`tokenkeeper_token_reads_total 2`,
		`tokenkeeper_http_auth_failures_total 2`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

func TestTokenAnswerFollowsAdoption(t *testing.T) {
	// The answer is rendered once per token: each token the source
	// adopts (another value, deadline or generation) shows at the next
	// read, body and generation header alike.
	ev := newEnv(t, nil)
	steps := []struct {
		tok     cache.Token
		want    tokenBody
		wantGen string
	}{
		{cache.Token{Value: "first", Deadline: t0.Add(time.Hour), Generation: 1}, tokenBody{"liveness", "first", "2026-03-04T06:06:07Z", 3600}, "1"},
		{cache.Token{Value: "first", Deadline: t0.Add(time.Hour), Generation: 1}, tokenBody{"liveness", "first", "2026-03-04T06:06:07Z", 3600}, "1"},
		{cache.Token{Value: "second", Deadline: t0.Add(time.Hour), Generation: 2}, tokenBody{"liveness", "second", "2026-03-04T06:06:07Z", 3600}, "2"},
		{cache.Token{Value: "second", Deadline: t0.Add(2 * time.Hour), Generation: 2}, tokenBody{"liveness", "second", "2026-03-04T07:06:07Z", 7200}, "2"},
		{cache.Token{Value: "second", Deadline: t0.Add(2 * time.Hour), Generation: 3}, tokenBody{"liveness", "second", "2026-03-04T07:06:07Z", 7200}, "3"},
		{cache.Token{Value: "third", Deadline: t0.Add(30 * time.Minute)}, tokenBody{"liveness", "third", "2026-03-04T05:36:07Z", 1800}, ""},
	}
	for i, st := range steps {
		ev.tokens.set(st.tok, true)
		for _, viaEcho := range []bool{false, true} {
			w := ev.doWay(t, req{path: "/v1/tokens/liveness", header: bearer(readerKey)}, viaEcho)
			var got tokenBody
			decodeStrict(t, w.Body.Bytes(), &got)
			if got != st.want {
				t.Errorf("step %d (through echo %v): body = %+v, want %+v", i, viaEcho, got, st.want)
			}
			if gen := w.Header().Values(httpapi.GenerationHeader); strings.Join(gen, ",") != st.wantGen {
				t.Errorf("step %d (through echo %v): %s = %q, want %q", i, viaEcho, httpapi.GenerationHeader, gen, st.wantGen)
			}
		}
	}
}

func TestExpiresInNeverOverstates(t *testing.T) {
	// The rendered answer is shared by every read of a token; expires_in
	// is counted down per read: the whole seconds left at the read's
	// time, floored, so never more than the token has.
	clk := clocktest.New(t0)
	ev := newEnv(t, func(c *httpapi.Config) { c.Clock = clk })
	deadline := t0.Add(3*time.Second + 700*time.Millisecond)
	ev.tokens.set(cache.Token{Value: tokenValue, Deadline: deadline, Generation: 4}, true)
	step := 150 * time.Millisecond
	for now := t0; now.Before(deadline); now = now.Add(step) {
		left := deadline.Sub(now)
		for _, viaEcho := range []bool{false, true} {
			w := ev.doWay(t, req{path: "/v1/tokens/liveness", header: bearer(readerKey)}, viaEcho)
			if w.Code != 200 {
				t.Fatalf("%v before the deadline: status %d, want 200", left, w.Code)
			}
			var got tokenBody
			decodeStrict(t, w.Body.Bytes(), &got)
			if want := int64(left / time.Second); got.ExpiresIn != want {
				t.Errorf("%v before the deadline (through echo %v): expires_in = %d, want %d", left, viaEcho, got.ExpiresIn, want)
			}
			if time.Duration(got.ExpiresIn)*time.Second > left {
				t.Errorf("%v before the deadline: expires_in %d overstates", left, got.ExpiresIn)
			}
		}
		clk.Advance(step)
	}
	clk.Advance(deadline.Sub(clk.Now()))
	checkError(t, ev.do(t, req{path: "/v1/tokens/liveness", header: bearer(readerKey)}), 503, "no_token")
}

func TestTokenReadLimitsBothWays(t *testing.T) {
	// One bucket per key whichever way the reads go, refilled on the
	// configured clock.
	clk := clocktest.New(t0)
	ev := newEnv(t, func(c *httpapi.Config) {
		c.Clock = clk
		c.RateLimit = 1
		c.RateBurst = 3
	})
	read := func(viaEcho bool) *httptest.ResponseRecorder {
		return ev.doWay(t, req{path: "/v1/tokens/liveness", header: bearer(readerKey)}, viaEcho)
	}
	for i, viaEcho := range []bool{false, true, false} {
		if got := read(viaEcho).Code; got != http.StatusOK {
			t.Fatalf("read %d: status %d, want 200 within the burst", i+1, got)
		}
	}
	for _, viaEcho := range []bool{true, false} {
		w := read(viaEcho)
		checkError(t, w, http.StatusTooManyRequests, "rate_limited")
		if strings.Contains(w.Body.String(), tokenValue) {
			t.Fatal("a limited answer carries the token")
		}
	}
	clk.Advance(time.Second)
	if got := read(false).Code; got != http.StatusOK {
		t.Fatalf("a second later: status %d, want 200", got)
	}
	checkError(t, read(false), http.StatusTooManyRequests, "rate_limited")
}
