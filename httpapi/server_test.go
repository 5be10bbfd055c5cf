package httpapi_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokenkeeper/tokenkeeper/internal/fault"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tokenkeeper/tokenkeeper/cache"
	"github.com/tokenkeeper/tokenkeeper/httpapi"
	"github.com/tokenkeeper/tokenkeeper/internal/clocktest"
)

const (
	readerKey  = "reader-key-3b1f0c9a7e5d"
	readerKey2 = "second-reader-key-with-more-than-thirty-two-bytes-in-it"
	adminKey   = "admin-key-8c2e4a6f1d0b"
	metricsKey = "metrics-key-5e7a9c1b3d"
	tokenValue = "eyJhbGciOiJIUzI1NiJ9.liveness.sig"
)

// t0 is the tests' now.
var t0 = time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)

// env is a server under test with its fakes.
type env struct {
	tokens *fakeTokens
	ctl    *fakeController
	reg    *prometheus.Registry
	srv    *httpapi.Server
	h      http.Handler
}

// newEnv builds a server with reader and admin keys, a token valid for an
// hour at t0, and a private registry; mod adjusts the Config.
func newEnv(t *testing.T, mod func(*httpapi.Config)) *env {
	t.Helper()
	ev := &env{tokens: &fakeTokens{}, ctl: &fakeController{}, reg: prometheus.NewRegistry()}
	ev.tokens.set(cache.Token{Value: tokenValue, Deadline: t0.Add(time.Hour), Writer: "replica-1"}, true)
	cfg := httpapi.Config{
		Instance:       "replica-1",
		ReaderKeys:     []string{readerKey, readerKey2},
		AdminKeys:      []string{adminKey},
		Clock:          clocktest.New(t0),
		Registerer:     ev.reg,
		RefreshTimeout: time.Second,
		RetryAfter:     1500 * time.Millisecond,
	}
	if mod != nil {
		mod(&cfg)
	}
	srv, err := httpapi.New(cfg, httpapi.Single(ev.tokens), ev.ctl)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	ev.srv, ev.h = srv, srv.Handler()
	return ev
}

// req describes a request: its method, path and headers.
type req struct {
	method, path string
	header       map[string]string
	body         string
}

func (ev *env) do(t *testing.T, r req) *httptest.ResponseRecorder {
	t.Helper()
	if r.method == "" {
		r.method = http.MethodGet
	}
	var body io.Reader
	if r.body != "" {
		body = strings.NewReader(r.body)
	}
	hr := httptest.NewRequest(r.method, r.path, body)
	for k, v := range r.header {
		hr.Header.Set(k, v)
	}
	w := httptest.NewRecorder()
	ev.h.ServeHTTP(w, hr)
	return w
}

func bearer(key string) map[string]string { return map[string]string{"Authorization": "Bearer " + key} }
func apiKey(key string) map[string]string { return map[string]string{"X-API-Key": key} }

// errorBody is the JSON of every error answer.
type errorBody struct {
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

// tokenBody is the JSON of the token route.
type tokenBody struct {
	Name      string `json:"name"`
	Token     string `json:"token"`
	ExpiresAt string `json:"expires_at"`
	ExpiresIn int64  `json:"expires_in"`
}

// decodeStrict decodes body into v, failing on unknown fields or trailing
// data.
func decodeStrict(t *testing.T, body []byte, v any) {
	t.Helper()
	dec := json.NewDecoder(strings.NewReader(string(body)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		t.Fatalf("decode %q: %v", body, err)
	}
	if dec.More() {
		t.Fatalf("decode %q: trailing data", body)
	}
}

// checkError checks an error answer: status, JSON content type and code.
func checkError(t *testing.T, w *httptest.ResponseRecorder, status int, code string) errorBody {
	t.Helper()
	if got := w.Code; got != status {
		t.Errorf("status = %d, want %d (body %s)", got, status, w.Body)
	}
	if got, want := w.Header().Get("Content-Type"), "application/json"; got != want {
		t.Errorf("Content-Type = %q, want %q", got, want)
	}
	var eb errorBody
	decodeStrict(t, w.Body.Bytes(), &eb)
	if eb.Error.Code != code {
		t.Errorf("error code = %q, want %q", eb.Error.Code, code)
	}
	if eb.Error.Message == "" {
		t.Errorf("error message is empty")
	}
	return eb
}

func TestTokenRoute(t *testing.T) {
	ev := newEnv(t, nil)
	tests := []struct {
		name   string
		header map[string]string
		path   string
		status int
		code   string // error code; "" for 200
	}{
		{"no key", nil, "/v1/tokens/liveness", 401, "unauthorized"},
		{"wrong bearer", bearer("not-a-key"), "/v1/tokens/liveness", 401, "unauthorized"},
		{"wrong X-API-Key", apiKey("not-a-key"), "/v1/tokens/liveness", 401, "unauthorized"},
		{"key prefix", bearer(readerKey[:len(readerKey)-1]), "/v1/tokens/liveness", 401, "unauthorized"},
		{"empty bearer", map[string]string{"Authorization": "Bearer "}, "/v1/tokens/liveness", 401, "unauthorized"},
		{"basic scheme", map[string]string{"Authorization": "Basic " + readerKey}, "/v1/tokens/liveness", 401, "unauthorized"},
		{"raw key in Authorization", map[string]string{"Authorization": readerKey}, "/v1/tokens/liveness", 401, "unauthorized"},
		{"reader bearer", bearer(readerKey), "/v1/tokens/liveness", 200, ""},
		{"reader bearer lower-case scheme", map[string]string{"Authorization": "bearer " + readerKey}, "/v1/tokens/liveness", 200, ""},
		{"second reader key, long", bearer(readerKey2), "/v1/tokens/liveness", 200, ""},
		{"reader X-API-Key", apiKey(readerKey), "/v1/tokens/liveness", 200, ""},
		{"wrong bearer, right X-API-Key", map[string]string{"Authorization": "Bearer nope", "X-API-Key": readerKey}, "/v1/tokens/liveness", 401, "unauthorized"},
		{"basic scheme, right X-API-Key", map[string]string{"Authorization": "Basic abc", "X-API-Key": readerKey}, "/v1/tokens/liveness", 200, ""},
		{"admin key reads", bearer(adminKey), "/v1/tokens/liveness", 200, ""},
		{"unknown name without key", nil, "/v1/tokens/other", 401, "unauthorized"},
		{"unknown name with wrong key", bearer("nope"), "/v1/tokens/other", 401, "unauthorized"},
		{"unknown name with key", bearer(readerKey), "/v1/tokens/other", 404, "not_found"},
		{"name in other case", bearer(readerKey), "/v1/tokens/Liveness", 404, "not_found"},
		{"trailing slash", bearer(readerKey), "/v1/tokens/liveness/", 404, "not_found"},
		{"no name", bearer(readerKey), "/v1/tokens/", 404, "not_found"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := ev.do(t, req{path: tt.path, header: tt.header})
			if tt.code != "" {
				checkError(t, w, tt.status, tt.code)
			} else if got := w.Code; got != tt.status {
				t.Fatalf("status = %d, want %d (body %s)", got, tt.status, w.Body)
			}
			if got, want := w.Header().Get("WWW-Authenticate") != "", tt.status == 401; got != want {
				t.Errorf("WWW-Authenticate present = %v, want %v", got, want)
			}
			if tt.status != 200 && strings.Contains(w.Body.String(), tokenValue) {
				t.Errorf("error answer holds the token: %s", w.Body)
			}
		})
	}
}

func TestTokenBody(t *testing.T) {
	tests := []struct {
		name      string
		value     string
		deadline  time.Time
		expiresAt string
		expiresIn int64
	}{
		{"whole hour", tokenValue, t0.Add(time.Hour), "2026-03-04T06:06:07Z", 3600},
		{"floors seconds", tokenValue, t0.Add(59*time.Second + 999*time.Millisecond), "2026-03-04T05:07:06Z", 59},
		{"just under a second", tokenValue, t0.Add(999 * time.Millisecond), "2026-03-04T05:06:07Z", 0},
		{"other zone shown in UTC", tokenValue, t0.Add(90 * time.Second).In(time.FixedZone("X", -7*3600)), "2026-03-04T05:07:37Z", 90},
		{"escapes", "a\"b\\c\n\t\x01\x1f</script>&é€😀\u2028", t0.Add(time.Minute), "2026-03-04T05:07:07Z", 60},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ev := newEnv(t, nil)
			ev.tokens.set(cache.Token{Value: tt.value, Deadline: tt.deadline}, true)
			w := ev.do(t, req{path: "/v1/tokens/liveness", header: bearer(readerKey)})
			if w.Code != 200 {
				t.Fatalf("status = %d, want 200 (body %s)", w.Code, w.Body)
			}
			if got, want := w.Header().Get("Content-Type"), "application/json"; got != want {
				t.Errorf("Content-Type = %q, want %q", got, want)
			}
			var got tokenBody
			decodeStrict(t, w.Body.Bytes(), &got)
			want := tokenBody{Name: "liveness", Token: tt.value, ExpiresAt: tt.expiresAt, ExpiresIn: tt.expiresIn}
			if got != want {
				t.Errorf("body = %+v, want %+v", got, want)
			}
			if _, err := time.Parse(time.RFC3339, got.ExpiresAt); err != nil {
				t.Errorf("expires_at %q is not RFC 3339: %v", got.ExpiresAt, err)
			}
		})
	}
}

func TestTokenBodyFollowsToken(t *testing.T) {
	// The encoded answer is cached per token: a new token, or the same
	// value with a new deadline, must show at once.
	ev := newEnv(t, nil)
	read := func() tokenBody {
		t.Helper()
		w := ev.do(t, req{path: "/v1/tokens/liveness", header: bearer(readerKey)})
		var b tokenBody
		decodeStrict(t, w.Body.Bytes(), &b)
		return b
	}
	steps := []struct {
		tok  cache.Token
		want tokenBody
	}{
		{cache.Token{Value: "first", Deadline: t0.Add(time.Hour)}, tokenBody{"liveness", "first", "2026-03-04T06:06:07Z", 3600}},
		{cache.Token{Value: "first", Deadline: t0.Add(time.Hour)}, tokenBody{"liveness", "first", "2026-03-04T06:06:07Z", 3600}},
		{cache.Token{Value: "second", Deadline: t0.Add(time.Hour)}, tokenBody{"liveness", "second", "2026-03-04T06:06:07Z", 3600}},
		{cache.Token{Value: "second", Deadline: t0.Add(2 * time.Hour)}, tokenBody{"liveness", "second", "2026-03-04T07:06:07Z", 7200}},
	}
	for i, st := range steps {
		ev.tokens.set(st.tok, true)
		if got := read(); got != st.want {
			t.Errorf("step %d: body = %+v, want %+v", i, got, st.want)
		}
	}
}

func TestNoToken(t *testing.T) {
	tests := []struct {
		name string
		tok  cache.Token
		ok   bool
	}{
		{"none", cache.Token{}, false},
		{"offered but empty", cache.Token{Deadline: t0.Add(time.Hour)}, true},
		{"offered but expired", cache.Token{Value: tokenValue, Deadline: t0}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ev := newEnv(t, nil)
			ev.tokens.set(tt.tok, tt.ok)
			w := ev.do(t, req{path: "/v1/tokens/liveness", header: bearer(readerKey)})
			checkError(t, w, 503, "no_token")
			if got, want := w.Header().Get("Retry-After"), "2"; got != want {
				t.Errorf("Retry-After = %q, want %q", got, want)
			}
			w = ev.do(t, req{path: "/readyz"})
			checkError(t, w, 503, "not_ready")
			w = ev.do(t, req{path: "/healthz"})
			if w.Code != 200 {
				t.Errorf("healthz status = %d, want 200", w.Code)
			}
		})
	}
}

func TestHealthAndReady(t *testing.T) {
	ev := newEnv(t, nil)
	tests := []struct {
		name   string
		path   string
		status int
		body   string
	}{
		{"healthz", "/healthz", 200, `{"status":"ok"}`},
		{"readyz", "/readyz", 200, `{"status":"ready"}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := ev.do(t, req{path: tt.path})
			if w.Code != tt.status {
				t.Errorf("status = %d, want %d", w.Code, tt.status)
			}
			if got := strings.TrimSpace(w.Body.String()); got != tt.body {
				t.Errorf("body = %s, want %s", got, tt.body)
			}
		})
	}
}

func TestAnonymous(t *testing.T) {
	ev := newEnv(t, func(c *httpapi.Config) {
		c.ReaderKeys = nil
		c.AllowAnonymous = true
	})
	tests := []struct {
		name   string
		r      req
		status int
	}{
		{"token without key", req{path: "/v1/tokens/liveness"}, 200},
		{"token with wrong key", req{path: "/v1/tokens/liveness", header: bearer("nope")}, 401},
		{"token with admin key", req{path: "/v1/tokens/liveness", header: bearer(adminKey)}, 200},
		{"unknown name", req{path: "/v1/tokens/other"}, 404},
		{"status stays admin-only", req{path: "/v1/status"}, 401},
		{"refresh stays admin-only", req{method: "POST", path: "/v1/tokens/liveness/refresh"}, 401},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := ev.do(t, tt.r).Code; got != tt.status {
				t.Errorf("status = %d, want %d", got, tt.status)
			}
		})
	}
}

func TestAdminAuth(t *testing.T) {
	ev := newEnv(t, nil)
	ev.ctl.refresh = func(ctx context.Context) (cache.Token, error) {
		return cache.Token{Value: "new", Deadline: t0.Add(time.Hour)}, nil
	}
	routes := []req{
		{method: "GET", path: "/v1/status"},
		{method: "POST", path: "/v1/tokens/liveness/refresh"},
	}
	tests := []struct {
		name   string
		header map[string]string
		status int
		code   string
	}{
		{"no key", nil, 401, "unauthorized"},
		{"wrong key", bearer("nope"), 401, "unauthorized"},
		{"reader key", bearer(readerKey), 403, "forbidden"},
		{"reader X-API-Key", apiKey(readerKey), 403, "forbidden"},
		{"admin bearer", bearer(adminKey), 200, ""},
		{"admin X-API-Key", apiKey(adminKey), 200, ""},
	}
	for _, r := range routes {
		for _, tt := range tests {
			t.Run(r.method+" "+r.path+"/"+tt.name, func(t *testing.T) {
				r.header = tt.header
				w := ev.do(t, r)
				if tt.code != "" {
					checkError(t, w, tt.status, tt.code)
				} else if w.Code != tt.status {
					t.Errorf("status = %d, want %d (body %s)", w.Code, tt.status, w.Body)
				}
			})
		}
	}
	t.Run("refresh of unknown name", func(t *testing.T) {
		checkError(t, ev.do(t, req{method: "POST", path: "/v1/tokens/other/refresh"}), 401, "unauthorized")
		checkError(t, ev.do(t, req{method: "POST", path: "/v1/tokens/other/refresh", header: bearer(adminKey)}), 404, "not_found")
	})
}

func TestAdminOff(t *testing.T) {
	ev := newEnv(t, func(c *httpapi.Config) { c.AdminKeys = nil })
	for _, r := range []req{
		{method: "GET", path: "/v1/status"},
		{method: "POST", path: "/v1/status"},
		{method: "GET", path: "/v1/tokens/liveness/refresh", header: bearer(adminKey)},
		{method: "GET", path: "/v1/status", header: bearer(adminKey)},
		{method: "GET", path: "/v1/status", header: bearer(readerKey)},
		{method: "POST", path: "/v1/tokens/liveness/refresh"},
		{method: "POST", path: "/v1/tokens/liveness/refresh", header: bearer(adminKey)},
		{method: "POST", path: "/v1/tokens/liveness/refresh", header: bearer(readerKey)},
	} {
		t.Run(fmt.Sprint(r.method, " ", r.path, " ", r.header), func(t *testing.T) {
			checkError(t, ev.do(t, r), 404, "not_found")
		})
	}
	if got := ev.ctl.refreshes.Load(); got != 0 {
		t.Errorf("Refresh called %d times, want 0", got)
	}
	// A nil Controller is fine without admin keys.
	if _, err := httpapi.New(httpapi.Config{ReaderKeys: []string{readerKey}}, httpapi.Single(ev.tokens), nil); err != nil {
		t.Errorf("New without admin keys or Controller: %v", err)
	}
}

func TestStatus(t *testing.T) {
	ev := newEnv(t, nil)
	loc := time.FixedZone("Y", 2*3600)
	ev.ctl.status = httpapi.Status{
		Leader:           "replica-2",
		Ready:            true,
		TokenFingerprint: cache.Fingerprint(tokenValue),
		ExpiresAt:        t0.Add(10*time.Minute + 900*time.Millisecond).In(loc),
		ExpiresIn:        12345, // overwritten
		LastRefresh:      t0.Add(-50 * time.Minute).In(loc),
		LastError:        "",
		Replicas: []httpapi.Replica{
			{Instance: "replica-1", Ready: true, Upstream: httpapi.UpstreamFailing, UpstreamError: "upstream: dial tcp 10.0.0.9:443: connect: connection refused"},
			{Instance: "replica-2", Ready: true, Leader: true, Upstream: httpapi.UpstreamOK},
			{Instance: "replica-3"},
		},
	}
	w := ev.do(t, req{path: "/v1/status", header: bearer(adminKey)})
	if w.Code != 200 {
		t.Fatalf("status = %d, want 200 (body %s)", w.Code, w.Body)
	}
	if strings.Contains(w.Body.String(), tokenValue) {
		t.Errorf("status holds the token: %s", w.Body)
	}
	var got map[string]any
	decodeStrict(t, w.Body.Bytes(), &got)
	want := map[string]any{
		"instance":          "replica-1",
		"leader":            "replica-2",
		"is_leader":         false,
		"ready":             true,
		"token_fingerprint": cache.Fingerprint(tokenValue),
		"expires_at":        "2026-03-04T05:16:07Z",
		"expires_in":        float64(600),
		"last_refresh":      "2026-03-04T04:16:07Z",
		"replicas": []any{
			// upstream and upstream_error are left out when empty.
			map[string]any{"instance": "replica-1", "ready": true, "leader": false,
				"upstream": "failing", "upstream_error": "upstream: dial tcp 10.0.0.9:443: connect: connection refused"},
			map[string]any{"instance": "replica-2", "ready": true, "leader": true, "upstream": "ok"},
			map[string]any{"instance": "replica-3", "ready": false, "leader": false},
		},
		"refreshes":    []any{},
		"generated_at": "2026-03-04T05:06:07Z",
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("status = %v\nwant %v", got, want)
	}
	if got, want := w.Header().Get("Cache-Control"), "no-store"; got != want {
		t.Errorf("Cache-Control = %q, want %q", got, want)
	}

	errTests := []struct {
		name   string
		err    error
		status int
		code   string
	}{
		{"unavailable", fmt.Errorf("no leader: %w", fault.ErrUnavailable), 503, "unavailable"},
		{"failed", errors.New("boom"), 500, "status_failed"},
	}
	for _, tt := range errTests {
		t.Run(tt.name, func(t *testing.T) {
			ev := newEnv(t, nil)
			ev.ctl.statusErr = tt.err
			eb := checkError(t, ev.do(t, req{path: "/v1/status", header: bearer(adminKey)}), tt.status, tt.code)
			if !strings.Contains(eb.Error.Message, tt.err.Error()) {
				t.Errorf("message %q does not hold %q", eb.Error.Message, tt.err)
			}
		})
	}
}

func TestRefresh(t *testing.T) {
	newTok := cache.Token{Value: "fresh-token", Deadline: t0.Add(time.Hour + 1500*time.Millisecond)}
	tests := []struct {
		name    string
		refresh func(ctx context.Context) (cache.Token, error) // nil: block until ctx ends
		status  int
		code    string
		retry   bool
	}{
		{"ok", func(ctx context.Context) (cache.Token, error) { return newTok, nil }, 200, "", false},
		{"timeout", nil, 504, "timeout", false},
		{"controller reports deadline", func(ctx context.Context) (cache.Token, error) {
			return cache.Token{}, fmt.Errorf("wait: %w", context.DeadlineExceeded)
		}, 504, "timeout", false},
		{"upstream failed", func(ctx context.Context) (cache.Token, error) {
			return cache.Token{}, errors.New("upstream: 500 from RDP")
		}, 502, "refresh_failed", false},
		{"no leader", func(ctx context.Context) (cache.Token, error) {
			return cache.Token{}, fmt.Errorf("no leader elected: %w", fault.ErrUnavailable)
		}, 503, "unavailable", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ev := newEnv(t, func(c *httpapi.Config) { c.RefreshTimeout = 20 * time.Millisecond })
			ev.ctl.refresh = tt.refresh
			w := ev.do(t, req{method: "POST", path: "/v1/tokens/liveness/refresh", header: bearer(adminKey)})
			if got := ev.ctl.refreshes.Load(); got != 1 {
				t.Errorf("Refresh called %d times, want 1", got)
			}
			if got, want := w.Header().Get("Retry-After") != "", tt.retry; got != want {
				t.Errorf("Retry-After present = %v, want %v", got, want)
			}
			if got := w.Header().Get("Retry-After"); tt.retry && got != "2" {
				t.Errorf("Retry-After = %q, want 2 (Config.RetryAfter 1.5s rounded up)", got)
			}
			if strings.Contains(w.Body.String(), newTok.Value) {
				t.Errorf("answer holds the token: %s", w.Body)
			}
			if tt.code != "" {
				checkError(t, w, tt.status, tt.code)
				return
			}
			if w.Code != tt.status {
				t.Fatalf("status = %d, want %d (body %s)", w.Code, tt.status, w.Body)
			}
			var got struct {
				Name        string `json:"name"`
				ExpiresAt   string `json:"expires_at"`
				ExpiresIn   int64  `json:"expires_in"`
				Fingerprint string `json:"fingerprint"`
			}
			decodeStrict(t, w.Body.Bytes(), &got)
			if got.Name != "liveness" || got.ExpiresAt != "2026-03-04T06:06:08Z" || got.ExpiresIn != 3601 || got.Fingerprint != newTok.Fingerprint() {
				t.Errorf("answer = %+v, want liveness, 2026-03-04T06:06:08Z, 3601, %s", got, newTok.Fingerprint())
			}
		})
	}
}

func TestRefreshGetsTimeoutContext(t *testing.T) {
	ev := newEnv(t, func(c *httpapi.Config) { c.RefreshTimeout = 3 * time.Second })
	var left time.Duration
	ev.ctl.refresh = func(ctx context.Context) (cache.Token, error) {
		dl, ok := ctx.Deadline()
		if !ok {
			return cache.Token{}, errors.New("no deadline")
		}
		left = time.Until(dl)
		return cache.Token{Value: "x", Deadline: t0.Add(time.Hour)}, nil
	}
	if w := ev.do(t, req{method: "POST", path: "/v1/tokens/liveness/refresh", header: bearer(adminKey)}); w.Code != 200 {
		t.Fatalf("status = %d, want 200 (body %s)", w.Code, w.Body)
	}
	if left <= 2*time.Second || left > 3*time.Second {
		t.Errorf("Refresh ctx has %v left, want about 3s", left)
	}
}

func TestRouterErrors(t *testing.T) {
	ev := newEnv(t, nil)
	tests := []struct {
		name   string
		r      req
		status int
		code   string
		allow  string
	}{
		{"unknown route", req{path: "/nope"}, 404, "not_found", ""},
		{"root", req{path: "/"}, 404, "not_found", ""},
		{"unknown route with key", req{path: "/v2/tokens/liveness", header: bearer(adminKey)}, 404, "not_found", ""},
		{"POST token", req{method: "POST", path: "/v1/tokens/liveness", header: bearer(readerKey)}, 405, "method_not_allowed", "GET"},
		{"DELETE token", req{method: "DELETE", path: "/v1/tokens/liveness"}, 405, "method_not_allowed", "GET"},
		{"PUT healthz", req{method: "PUT", path: "/healthz"}, 405, "method_not_allowed", "GET"},
		{"GET refresh", req{path: "/v1/tokens/liveness/refresh", header: bearer(adminKey)}, 405, "method_not_allowed", "POST"},
		{"body too large", req{method: "POST", path: "/v1/tokens/liveness/refresh", header: bearer(adminKey), body: strings.Repeat("x", 5000)}, 413, "payload_too_large", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := ev.do(t, tt.r)
			checkError(t, w, tt.status, tt.code)
			if tt.allow != "" && !strings.Contains(w.Header().Get("Allow"), tt.allow) {
				t.Errorf("Allow = %q, want it to hold %s", w.Header().Get("Allow"), tt.allow)
			}
		})
	}
	if got := ev.ctl.refreshes.Load(); got != 0 {
		t.Errorf("Refresh called %d times, want 0", got)
	}
}

func TestPanicAnswers500(t *testing.T) {
	ev := newEnv(t, nil)
	ev.tokens.panic = true
	checkError(t, ev.do(t, req{path: "/v1/tokens/liveness", header: bearer(readerKey)}), 500, "internal")
}

func TestErrorsNeverEchoInput(t *testing.T) {
	ev := newEnv(t, nil)
	secret := "s3cr3t-Attempt-Value-0042"
	tests := []struct {
		name string
		r    req
	}{
		{"bearer on token", req{path: "/v1/tokens/liveness", header: bearer(secret)}},
		{"X-API-Key on token", req{path: "/v1/tokens/liveness", header: apiKey(secret)}},
		{"basic on token", req{path: "/v1/tokens/liveness", header: map[string]string{"Authorization": "Basic " + secret}}},
		{"bearer on status", req{path: "/v1/status", header: bearer(secret)}},
		{"bearer on refresh", req{method: "POST", path: "/v1/tokens/liveness/refresh", header: bearer(secret)}},
		{"key in name, no key", req{path: "/v1/tokens/" + secret}},
		{"key in name, valid key", req{path: "/v1/tokens/" + secret, header: bearer(readerKey)}},
		{"key in unknown route", req{path: "/" + secret, header: bearer(secret)}},
		{"key in refresh name", req{method: "POST", path: "/v1/tokens/" + secret + "/refresh", header: bearer(adminKey)}},
		{"key in query", req{path: "/v1/tokens/liveness?key=" + secret}},
		{"key on 405", req{method: "PATCH", path: "/v1/tokens/liveness", header: bearer(secret)}},
		{"metrics key wrong", req{path: "/v1/tokens/liveness", header: apiKey(secret)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := ev.do(t, tt.r)
			if w.Code < 400 {
				t.Fatalf("status = %d, want an error", w.Code)
			}
			var eb errorBody
			decodeStrict(t, w.Body.Bytes(), &eb)
			if strings.Contains(w.Body.String(), secret) {
				t.Errorf("body holds the submitted value: %s", w.Body)
			}
			for k, vs := range w.Header() {
				for _, v := range vs {
					if strings.Contains(v, secret) {
						t.Errorf("header %s holds the submitted value: %s", k, v)
					}
				}
			}
		})
	}
}

func TestCommonHeaders(t *testing.T) {
	ev := newEnv(t, nil)
	ev.ctl.refresh = func(ctx context.Context) (cache.Token, error) {
		return cache.Token{Value: "n", Deadline: t0.Add(time.Hour)}, nil
	}
	for _, r := range []req{
		{path: "/v1/tokens/liveness", header: bearer(readerKey)},
		{path: "/v1/tokens/liveness"},
		{path: "/v1/tokens/other", header: bearer(readerKey)},
		{path: "/v1/status", header: bearer(adminKey)},
		{method: "POST", path: "/v1/tokens/liveness/refresh", header: bearer(adminKey)},
		{method: "POST", path: "/v1/tokens/liveness/refresh", header: bearer(readerKey)},
		{path: "/healthz"},
		{path: "/readyz"},
		{path: "/metrics"},
		{path: "/nope"},
		{method: "PUT", path: "/healthz"},
		{method: "OPTIONS", path: "/healthz"},
	} {
		t.Run(r.method+" "+r.path, func(t *testing.T) {
			w := ev.do(t, r)
			for _, h := range []struct{ name, want string }{
				{"X-Tokenkeeper-Instance", "replica-1"},
				{"X-Content-Type-Options", "nosniff"},
				{"X-Frame-Options", "DENY"},
				{"Referrer-Policy", "no-referrer"},
				{"Cache-Control", "no-store"},
			} {
				if got := w.Header().Values(h.name); len(got) != 1 || got[0] != h.want {
					t.Errorf("%s = %q, want [%q] (status %d)", h.name, got, h.want, w.Code)
				}
			}
		})
	}
}

func TestMetrics(t *testing.T) {
	ev := newEnv(t, nil)
	for range 3 {
		ev.do(t, req{path: "/v1/tokens/liveness", header: bearer(readerKey)})
	}
	ev.do(t, req{path: "/v1/tokens/liveness"})
	ev.do(t, req{path: "/nope/" + readerKey})
	ev.do(t, req{method: "PUT", path: "/healthz"})

	w := ev.do(t, req{path: "/metrics"})
	if w.Code != 200 {
		t.Fatalf("status = %d, want 200", w.Code)
	}
	body := w.Body.String()
	for _, want := range []string{
		`tokenkeeper_http_requests_total{code="200",route="/v1/tokens/:name"} 3`,
		`tokenkeeper_http_requests_total{code="401",route="/v1/tokens/:name"} 1`,
		`tokenkeeper_http_requests_total{code="404",route="unmatched"} 1`,
		`tokenkeeper_http_requests_total{code="405",route="/healthz"} 1`,
		`tokenkeeper_http_request_duration_seconds_count{route="/v1/tokens/:name"} 4`,
		`tokenkeeper_token_reads_total 3`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %s\n%s", want, body)
		}
	}
	if strings.Contains(body, readerKey) || strings.Contains(body, tokenValue) {
		t.Errorf("metrics hold a key or the token")
	}
}

func TestMetricsKeys(t *testing.T) {
	ev := newEnv(t, func(c *httpapi.Config) { c.MetricsKeys = []string{metricsKey} })
	tests := []struct {
		name   string
		header map[string]string
		status int
	}{
		{"no key", nil, 401},
		{"wrong key", bearer("nope"), 401},
		{"reader key", bearer(readerKey), 403},
		{"metrics key", bearer(metricsKey), 200},
		{"metrics X-API-Key", apiKey(metricsKey), 200},
		{"admin key", bearer(adminKey), 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := ev.do(t, req{path: "/metrics", header: tt.header}).Code; got != tt.status {
				t.Errorf("status = %d, want %d", got, tt.status)
			}
		})
	}
	t.Run("metrics key does not read the token", func(t *testing.T) {
		checkError(t, ev.do(t, req{path: "/v1/tokens/liveness", header: bearer(metricsKey)}), 401, "unauthorized")
	})
}

func TestNew(t *testing.T) {
	tokens := &fakeTokens{}
	ctl := &fakeController{}
	tests := []struct {
		name    string
		cfg     httpapi.Config
		tokens  httpapi.Tokens
		ctl     httpapi.Controller
		wantErr string // "" for success
	}{
		{"reader keys", httpapi.Config{ReaderKeys: []string{readerKey}}, tokens, ctl, ""},
		{"anonymous", httpapi.Config{AllowAnonymous: true}, tokens, ctl, ""},
		{"empty reader key", httpapi.Config{ReaderKeys: []string{readerKey, ""}}, tokens, ctl, "TOKENKEEPER_API_KEYS: key 2 of 2 is empty"},
		{"padded reader key", httpapi.Config{ReaderKeys: []string{" a"}}, tokens, ctl, "TOKENKEEPER_API_KEYS: key 1 of 1 has leading or trailing white space"},
		{"control char in key", httpapi.Config{ReaderKeys: []string{"a\nb"}}, tokens, ctl, "TOKENKEEPER_API_KEYS: key 1 of 1 contains a control character"},
		{"empty admin key", httpapi.Config{ReaderKeys: []string{readerKey}, AdminKeys: []string{""}}, tokens, ctl, "TOKENKEEPER_ADMIN_KEYS: key 1 of 1 is empty"},
		{"empty metrics key", httpapi.Config{ReaderKeys: []string{readerKey}, MetricsKeys: []string{""}}, tokens, ctl, "TOKENKEEPER_METRICS_KEYS: key 1 of 1 is empty"},
		{"admin keys without controller", httpapi.Config{ReaderKeys: []string{readerKey}, AdminKeys: []string{adminKey}}, tokens, nil, "TOKENKEEPER_ADMIN_KEYS"},
		{"nil tokens", httpapi.Config{ReaderKeys: []string{readerKey}}, nil, ctl, "has no source"},
		{"negative refresh timeout", httpapi.Config{ReaderKeys: []string{readerKey}, RefreshTimeout: -1}, tokens, ctl, "RefreshTimeout"},
		{"negative retry after", httpapi.Config{ReaderKeys: []string{readerKey}, RetryAfter: -1}, tokens, ctl, "RetryAfter"},
		{"negative shutdown timeout", httpapi.Config{ReaderKeys: []string{readerKey}, ShutdownTimeout: -1}, tokens, ctl, "ShutdownTimeout"},
		{"control char in instance", httpapi.Config{ReaderKeys: []string{readerKey}, Instance: "a\r\nb"}, tokens, ctl, "instance"},
		{"registerer not a gatherer", httpapi.Config{ReaderKeys: []string{readerKey}, Registerer: prometheus.WrapRegistererWithPrefix("x_", prometheus.NewRegistry())}, tokens, ctl, "Gatherer"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := httpapi.New(tt.cfg, httpapi.Single(tt.tokens), tt.ctl)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("New: %v, want no error", err)
			case tt.wantErr != "" && err == nil:
				t.Fatalf("New: no error, want one holding %q", tt.wantErr)
			case tt.wantErr != "" && !strings.Contains(err.Error(), tt.wantErr):
				t.Fatalf("New: %v, want it to hold %q", err, tt.wantErr)
			}
		})
	}
}

func TestSharedRegistry(t *testing.T) {
	reg := prometheus.NewRegistry()
	tokens := &fakeTokens{}
	tokens.set(cache.Token{Value: tokenValue, Deadline: time.Now().Add(time.Hour)}, true)
	var handlers []http.Handler
	for range 2 {
		srv, err := httpapi.New(httpapi.Config{ReaderKeys: []string{readerKey}, Registerer: reg}, httpapi.Single(tokens), nil)
		if err != nil {
			t.Fatalf("New on a shared registry: %v", err)
		}
		handlers = append(handlers, srv.Handler())
	}
	for _, h := range handlers {
		r := httptest.NewRequest("GET", "/v1/tokens/liveness", nil)
		r.Header.Set("X-API-Key", readerKey)
		h.ServeHTTP(httptest.NewRecorder(), r)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "tokenkeeper_token_reads_total" {
			if got := mf.GetMetric()[0].GetCounter().GetValue(); got != 2 {
				t.Errorf("reads = %v, want 2", got)
			}
			return
		}
	}
	t.Errorf("tokenkeeper_token_reads_total not gathered")
}

func TestConcurrentReads(t *testing.T) {
	ev := newEnv(t, nil)
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			for j := range 200 {
				if i == 0 && j%10 == 0 {
					ev.tokens.set(cache.Token{Value: fmt.Sprint("tok-", j), Deadline: t0.Add(time.Duration(j+1) * time.Minute)}, true)
					continue
				}
				r := httptest.NewRequest("GET", "/v1/tokens/liveness", nil)
				r.Header.Set("Authorization", "Bearer "+readerKey)
				w := httptest.NewRecorder()
				ev.h.ServeHTTP(w, r)
				var b tokenBody
				if err := json.Unmarshal(w.Body.Bytes(), &b); err != nil || w.Code != 200 {
					t.Errorf("read: status %d, %v: %s", w.Code, err, w.Body)
					return
				}
				if !strings.HasPrefix(b.Token, "tok-") && b.Token != tokenValue {
					t.Errorf("read token %q", b.Token)
				}
			}
		})
	}
	wg.Wait()
}

func TestServe(t *testing.T) {
	ev := newEnv(t, func(c *httpapi.Config) { c.ShutdownTimeout = 5 * time.Second })
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- ev.srv.Serve(ctx, ln) }()

	base := "http://" + ln.Addr().String()
	client := &http.Client{Timeout: 5 * time.Second}
	get := func(path, key string) (*http.Response, []byte) {
		t.Helper()
		r, _ := http.NewRequest("GET", base+path, nil)
		if key != "" {
			r.Header.Set("Authorization", "Bearer "+key)
		}
		res, err := client.Do(r)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		defer res.Body.Close()
		body, _ := io.ReadAll(res.Body)
		return res, body
	}
	if res, _ := get("/healthz", ""); res.StatusCode != 200 {
		t.Errorf("healthz status = %d, want 200", res.StatusCode)
	}
	res, body := get("/v1/tokens/liveness", readerKey)
	if res.StatusCode != 200 {
		t.Fatalf("token status = %d, want 200 (body %s)", res.StatusCode, body)
	}
	var tb tokenBody
	decodeStrict(t, body, &tb)
	if tb.Token != tokenValue {
		t.Errorf("token = %q, want %q", tb.Token, tokenValue)
	}
	if got := res.Header.Get("X-Tokenkeeper-Instance"); got != "replica-1" {
		t.Errorf("X-Tokenkeeper-Instance = %q, want replica-1", got)
	}

	// A refresh waiting when ctx ends is answered 503 and does not hold up
	// the shutdown.
	ev.ctl.started = make(chan struct{})
	refreshed := make(chan int, 1)
	go func() {
		r, _ := http.NewRequest("POST", base+"/v1/tokens/liveness/refresh", nil)
		r.Header.Set("Authorization", "Bearer "+adminKey)
		res, err := client.Do(r)
		if err != nil {
			refreshed <- -1
			return
		}
		res.Body.Close()
		refreshed <- res.StatusCode
	}()
	<-ev.ctl.started
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Serve: %v, want nil after ctx ends", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return after ctx ended")
	}
	if got := <-refreshed; got != 503 {
		t.Errorf("refresh in flight at shutdown: status %d, want 503", got)
	}
	if _, err := client.Get(base + "/healthz"); err == nil {
		t.Errorf("server still answers after shutdown")
	}
}

func TestServeListenerClosed(t *testing.T) {
	ev := newEnv(t, nil)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln.Close()
	if err := ev.srv.Serve(t.Context(), ln); err == nil {
		t.Errorf("Serve on a closed listener: nil error, want one")
	}
}

func TestMetricsRegistries(t *testing.T) {
	// other is a registry of the caller's own, with a metric of its own.
	other := prometheus.NewRegistry()
	other.MustRegister(prometheus.NewGauge(prometheus.GaugeOpts{Name: "caller_gauge", Help: "h"}))
	tests := []struct {
		name    string
		reg     prometheus.Registerer
		gath    prometheus.Gatherer
		want    []string
		notWant []string
	}{
		{"private", nil, nil, []string{"tokenkeeper_http_requests_total", "go_goroutines"}, []string{"caller_gauge"}},
		{"gatherer only: both served", nil, other, []string{"tokenkeeper_http_requests_total", "go_goroutines", "caller_gauge"}, nil},
		{"registerer only", other, nil, []string{"tokenkeeper_http_requests_total", "caller_gauge"}, []string{"go_goroutines"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, err := httpapi.New(httpapi.Config{ReaderKeys: []string{readerKey}, Registerer: tt.reg, Gatherer: tt.gath}, httpapi.Single(&fakeTokens{}), nil)
			if err != nil {
				t.Fatal(err)
			}
			srv.Handler().ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", "/healthz", nil))
			w := httptest.NewRecorder()
			srv.Handler().ServeHTTP(w, httptest.NewRequest("GET", "/metrics", nil))
			body := w.Body.String()
			for _, m := range tt.want {
				if !strings.Contains(body, m) {
					t.Errorf("/metrics lacks %s", m)
				}
			}
			for _, m := range tt.notWant {
				if strings.Contains(body, m) {
					t.Errorf("/metrics has %s", m)
				}
			}
		})
	}
}
