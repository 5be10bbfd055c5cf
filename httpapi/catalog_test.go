package httpapi_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tokenkeeper/tokenkeeper/internal/fault"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tokenkeeper/tokenkeeper/cache"
	"github.com/tokenkeeper/tokenkeeper/httpapi"
	"github.com/tokenkeeper/tokenkeeper/internal/clocktest"
)

const (
	liveKey    = "scoped-reader-liveness-only"
	billingKey = "scoped-reader-billing-only"
	opsKey     = "scoped-admin-billing-only"
	liveOpsKey = "scoped-admin-liveness-only"
)

// catalogEnv serves three tokens: liveness and billing (required) and
// reports (optional), with keys limited to some of them.
type catalogEnv struct {
	tokens map[string]*fakeTokens
	ctl    *fakeController
	h      http.Handler
}

func newCatalogEnv(t *testing.T) *catalogEnv {
	t.Helper()
	ce := &catalogEnv{tokens: map[string]*fakeTokens{}, ctl: &fakeController{}}
	var served []httpapi.Token
	for _, name := range []string{"liveness", "billing", "reports"} {
		ft := &fakeTokens{}
		ft.set(cache.Token{Value: "value-of-" + name, Deadline: t0.Add(time.Hour)}, true)
		ce.tokens[name] = ft
		served = append(served, httpapi.Token{Name: name, Source: ft, Optional: name == "reports"})
	}
	ce.ctl.refresh = func(context.Context) (cache.Token, error) {
		return cache.Token{Value: "new", Deadline: t0.Add(time.Hour)}, nil
	}
	srv, err := httpapi.New(httpapi.Config{
		Instance:   "replica-1",
		ReaderKeys: []string{readerKey},
		AdminKeys:  []string{adminKey},
		Keys: []httpapi.Key{
			{Name: "mobile", Value: liveKey, Role: httpapi.RoleReader, Tokens: []string{"liveness"}},
			{Name: "billing", Value: billingKey, Tokens: []string{"billing", "reports"}},
			{Name: "ops", Value: opsKey, Role: httpapi.RoleAdmin, Tokens: []string{"billing"}},
			{Name: "live-ops", Value: liveOpsKey, Role: httpapi.RoleAdmin, Tokens: []string{"liveness"}},
		},
		Clock:          clocktest.New(t0),
		Registerer:     prometheus.NewRegistry(),
		RefreshTimeout: time.Second,
	}, served, ce.ctl)
	if err != nil {
		t.Fatal(err)
	}
	ce.h = srv.Handler()
	return ce
}

func (ce *catalogEnv) do(method, path, key string) *httptest.ResponseRecorder {
	r := httptest.NewRequest(method, path, nil)
	if key != "" {
		r.Header.Set("Authorization", "Bearer "+key)
	}
	w := httptest.NewRecorder()
	ce.h.ServeHTTP(w, r)
	return w
}

func TestScopedKeysReadTheirTokensOnly(t *testing.T) {
	ce := newCatalogEnv(t)
	tests := []struct {
		key, name string
		status    int
	}{
		{readerKey, "liveness", 200}, {readerKey, "billing", 200}, {readerKey, "reports", 200},
		{liveKey, "liveness", 200}, {liveKey, "billing", 404}, {liveKey, "reports", 404},
		{billingKey, "billing", 200}, {billingKey, "reports", 200}, {billingKey, "liveness", 404},
		{opsKey, "billing", 200}, {opsKey, "liveness", 404},
		// Out of scope and unknown answer alike: names cannot be probed.
		{liveKey, "no-such-token", 404},
		// Without a valid key, nothing about names.
		{"wrong-key", "billing", 401}, {"wrong-key", "no-such-token", 401},
	}
	for _, tt := range tests {
		w := ce.do(http.MethodGet, "/v1/tokens/"+tt.name, tt.key)
		if w.Code != tt.status {
			t.Errorf("key %s reading %s: status %d, want %d (%s)", tt.key, tt.name, w.Code, tt.status, w.Body)
			continue
		}
		if tt.status == 404 {
			checkError(t, w, 404, "not_found")
		}
		if tt.status == 200 {
			var b tokenBody
			decodeStrict(t, w.Body.Bytes(), &b)
			if b.Name != tt.name || b.Token != "value-of-"+tt.name {
				t.Errorf("key %s reading %s: got %+v", tt.key, tt.name, b)
			}
		}
	}
	unknown := ce.do(http.MethodGet, "/v1/tokens/no-such-token", liveKey).Body.String()
	outOfScope := ce.do(http.MethodGet, "/v1/tokens/billing", liveKey).Body.String()
	if unknown != outOfScope {
		t.Errorf("an unknown name answers %q but a name out of scope %q: a key could probe names", unknown, outOfScope)
	}
}

func TestScopedAdminRefreshesItsTokensOnly(t *testing.T) {
	ce := newCatalogEnv(t)
	if w := ce.do(http.MethodPost, "/v1/tokens/billing/refresh", opsKey); w.Code != 200 {
		t.Errorf("ops refreshing billing: %d %s", w.Code, w.Body)
	}
	checkError(t, ce.do(http.MethodPost, "/v1/tokens/liveness/refresh", opsKey), 404, "not_found")
	checkError(t, ce.do(http.MethodPost, "/v1/tokens/billing/refresh", billingKey), 403, "forbidden")
	if w := ce.do(http.MethodPost, "/v1/tokens/liveness/refresh", adminKey); w.Code != 200 {
		t.Errorf("admin refreshing liveness: %d %s", w.Code, w.Body)
	}
	if got := ce.ctl.refreshes.Load(); got != 2 {
		t.Errorf("refreshes asked of the controller: %d, want 2", got)
	}
}

func TestListShowsTheKeysTokensWithoutValues(t *testing.T) {
	ce := newCatalogEnv(t)
	ce.tokens["reports"].set(cache.Token{}, false)
	type listing struct {
		Tokens []struct {
			Name      string `json:"name"`
			Ready     bool   `json:"ready"`
			Required  bool   `json:"required"`
			ExpiresAt string `json:"expires_at"`
			ExpiresIn int64  `json:"expires_in"`
		} `json:"tokens"`
	}
	tests := []struct {
		key  string
		want []string
	}{
		{readerKey, []string{"liveness", "billing", "reports"}},
		{liveKey, []string{"liveness"}},
		{billingKey, []string{"billing", "reports"}},
		{opsKey, []string{"billing"}},
	}
	for _, tt := range tests {
		w := ce.do(http.MethodGet, "/v1/tokens", tt.key)
		if w.Code != 200 {
			t.Fatalf("list with %s: %d %s", tt.key, w.Code, w.Body)
		}
		if body := w.Body.String(); strings.Contains(body, "value-of-") {
			t.Fatalf("the list holds a token value: %s", body)
		}
		var l listing
		decodeStrict(t, w.Body.Bytes(), &l)
		var names []string
		for _, tok := range l.Tokens {
			names = append(names, tok.Name)
			switch tok.Name {
			case "reports":
				if tok.Ready || tok.Required || tok.ExpiresAt != "" {
					t.Errorf("reports: got %+v, want not ready, optional, no expiry", tok)
				}
			default:
				if !tok.Ready || !tok.Required || tok.ExpiresIn != 3600 {
					t.Errorf("%s: got %+v, want ready, required, expires_in 3600", tok.Name, tok)
				}
			}
		}
		if !slices.Equal(names, tt.want) {
			t.Errorf("list with %s: %v, want %v", tt.key, names, tt.want)
		}
	}
	checkError(t, ce.do(http.MethodGet, "/v1/tokens", ""), 401, "unauthorized")
}

func TestReadinessFollowsRequiredTokens(t *testing.T) {
	ce := newCatalogEnv(t)
	ready := func(path string) int { return ce.do(http.MethodGet, path, "").Code }
	if got := ready("/readyz"); got != 200 {
		t.Fatalf("all servable: /readyz %d", got)
	}
	ce.tokens["reports"].set(cache.Token{}, false)
	if got := ready("/readyz"); got != 200 {
		t.Errorf("optional reports not servable: /readyz %d, want 200", got)
	}
	if got := ready("/readyz?token=reports"); got != 503 {
		t.Errorf("/readyz?token=reports: %d, want 503", got)
	}
	ce.tokens["billing"].set(cache.Token{Value: "v", Deadline: t0.Add(-time.Second)}, true)
	if got := ready("/readyz"); got != 503 {
		t.Errorf("billing expired: /readyz %d, want 503", got)
	}
	if got := ready("/readyz?token=liveness"); got != 200 {
		t.Errorf("/readyz?token=liveness: %d, want 200", got)
	}
	if got := ready("/readyz?token=no-such-token"); got != 503 {
		t.Errorf("/readyz?token=no-such-token: %d, want the 503 of a token not ready", got)
	}
}

func TestCatalogAndKeysAreChecked(t *testing.T) {
	ft := &fakeTokens{}
	tests := []struct {
		name   string
		tokens []httpapi.Token
		keys   []httpapi.Key
	}{
		{"no tokens", nil, nil},
		{"unnamed", []httpapi.Token{{Source: ft}}, nil},
		{"twice", []httpapi.Token{{Name: "a", Source: ft}, {Name: "a", Source: ft}}, nil},
		{"scope names an unknown token", []httpapi.Token{{Name: "a", Source: ft}}, []httpapi.Key{{Name: "k", Value: "v", Tokens: []string{"b"}}}},
		{"unknown role", []httpapi.Token{{Name: "a", Source: ft}}, []httpapi.Key{{Name: "k", Value: "v", Role: "root"}}},
		{"empty key", []httpapi.Token{{Name: "a", Source: ft}}, []httpapi.Key{{Name: "k"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := httpapi.New(httpapi.Config{ReaderKeys: []string{readerKey}, Keys: tt.keys}, tt.tokens, nil)
			if err == nil {
				t.Fatal("New accepted it")
			}
			if strings.Contains(err.Error(), `"v"`) {
				t.Errorf("the error quotes a key: %v", err)
			}
		})
	}
}

// fakeDevices mints "device-token-<id>" or fails as told, and records
// who asked.
type fakeDevices struct {
	err    error
	caller *string
}

func (f fakeDevices) Token(ctx context.Context, dev string) (cache.Token, error) {
	if f.caller != nil {
		*f.caller = httpapi.CallerFrom(ctx)
	}
	if f.err != nil {
		return cache.Token{}, f.err
	}
	return cache.Token{Value: "device-token-" + dev, Deadline: t0.Add(10 * time.Minute)}, nil
}

func TestDeviceRoute(t *testing.T) {
	access := &fakeTokens{}
	access.set(cache.Token{Value: "the-shared-access-token", Deadline: t0.Add(time.Hour)}, true)
	shared := &fakeTokens{}
	shared.set(cache.Token{Value: "shared-value", Deadline: t0.Add(time.Hour)}, true)
	newServer := func(devs httpapi.Devices) http.Handler {
		srv, err := httpapi.New(httpapi.Config{ReaderKeys: []string{readerKey}, Clock: clocktest.New(t0), Registerer: prometheus.NewRegistry()},
			[]httpapi.Token{{Name: "liveness", Source: access, Devices: devs}, {Name: "shared", Source: shared}}, nil)
		if err != nil {
			t.Fatal(err)
		}
		return srv.Handler()
	}
	do := func(h http.Handler, path string) *httptest.ResponseRecorder {
		r := httptest.NewRequest(http.MethodGet, path, nil)
		r.Header.Set("Authorization", "Bearer "+readerKey)
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		return w
	}
	var caller string
	h := newServer(fakeDevices{caller: &caller})
	w := do(h, "/v1/tokens/liveness/devices/phone-1")
	if caller != "TOKENKEEPER_API_KEYS[0]" {
		t.Errorf("the caller passed on for the audit line: %q, want the key's setting and index", caller)
	}
	var body struct {
		Name, Device, Token, ExpiresAt string `json:",omitempty"`
		ExpiresIn                      int64  `json:"expires_in"`
	}
	if w.Code != 200 {
		t.Fatalf("device token: %d %s", w.Code, w.Body)
	}
	if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil || body.Token != "device-token-phone-1" || body.Device != "phone-1" || body.ExpiresIn != 600 {
		t.Errorf("device token: %s (%v)", w.Body, err)
	}
	// The shared access token is never served.
	w = do(h, "/v1/tokens/liveness")
	checkError(t, w, 400, "per_device")
	if strings.Contains(w.Body.String(), "the-shared-access-token") {
		t.Fatal("the access token was served")
	}
	checkError(t, do(h, "/v1/tokens/shared/devices/phone-1"), 404, "not_found")

	refusing := newServer(fakeDevices{err: fmt.Errorf("%w: byte 2 is not allowed", fault.ErrBadDevice)})
	w = do(refusing, "/v1/tokens/liveness/devices/a%20b")
	checkError(t, w, 400, "bad_device")
	limited := newServer(fakeDevices{err: &httpapi.LimitError{Reason: "the fleet's mint rate", RetryAfter: 1500 * time.Millisecond}})
	w = do(limited, "/v1/tokens/liveness/devices/phone-1")
	checkError(t, w, 429, "rate_limited")
	if got := w.Header().Get("Retry-After"); got != "2" {
		t.Errorf("Retry-After %q, want 2 (1.5s rounded up)", got)
	}
	down := newServer(fakeDevices{err: errors.New("no access token")})
	w = do(down, "/v1/tokens/liveness/devices/phone-1")
	checkError(t, w, 503, "no_token")
	if w.Header().Get("Retry-After") == "" {
		t.Error("503 without Retry-After")
	}
}

// TestStatusIsScoped: an admin key limited to some tokens sees in GET
// /v1/status only those tokens' leaders, fingerprints, refreshes and
// errors, as every other route shows it only its tokens.
func TestStatusIsScoped(t *testing.T) {
	ce := newCatalogEnv(t)
	refresh := func(name string) []httpapi.Refresh {
		return []httpapi.Refresh{{At: t0, By: "leader-of-" + name, Outcome: "success", TokenFingerprint: "sha256:fp-" + name}}
	}
	tokenStatus := func(name string) httpapi.TokenStatus {
		return httpapi.TokenStatus{Name: name, Leader: "leader-of-" + name, Ready: true, TokenFingerprint: "sha256:fp-" + name,
			ExpiresAt: t0.Add(time.Hour), LastError: "error-of-" + name, Refreshes: refresh(name)}
	}
	ce.ctl.status = httpapi.Status{
		Leader: "leader-of-liveness", Ready: true, TokenFingerprint: "sha256:fp-liveness", ExpiresAt: t0.Add(time.Hour),
		LastError: "error-of-liveness", Refreshes: refresh("liveness"),
		Replicas: []httpapi.Replica{{Instance: "replica-1", Version: "v1", Leader: true, Ready: true,
			TokenFingerprint: "sha256:fp-liveness", Problem: "problem-of-liveness", Upstream: httpapi.UpstreamOK}},
		Tokens: []httpapi.TokenStatus{tokenStatus("liveness"), tokenStatus("billing"), tokenStatus("reports")},
	}
	tests := []struct {
		name   string
		key    string
		tokens []string // in the answer
		first  string   // the token the top-level fields describe
	}{
		{"unscoped admin key", adminKey, []string{"liveness", "billing", "reports"}, "liveness"},
		{"admin key of liveness", liveOpsKey, []string{"liveness"}, "liveness"},
		{"admin key of billing", opsKey, []string{"billing"}, "billing"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := ce.do(http.MethodGet, "/v1/status", tt.key)
			if w.Code != http.StatusOK {
				t.Fatalf("GET /v1/status: %d %s", w.Code, w.Body)
			}
			var st httpapi.Status
			if err := json.Unmarshal(w.Body.Bytes(), &st); err != nil {
				t.Fatal(err)
			}
			var names []string
			for _, ts := range st.Tokens {
				names = append(names, ts.Name)
			}
			if !slices.Equal(names, tt.tokens) {
				t.Errorf("tokens %v, want %v", names, tt.tokens)
			}
			if st.Leader != "leader-of-"+tt.first || st.TokenFingerprint != "sha256:fp-"+tt.first || st.LastError != "error-of-"+tt.first ||
				len(st.Refreshes) != 1 || st.Refreshes[0].By != "leader-of-"+tt.first || st.ExpiresIn != 3600 {
				t.Errorf("the top-level fields do not describe %s: %+v", tt.first, st)
			}
			for _, name := range []string{"liveness", "billing", "reports"} {
				if slices.Contains(tt.tokens, name) {
					continue
				}
				for _, leak := range []string{"fp-" + name, "leader-of-" + name, "error-of-" + name, "problem-of-" + name} {
					if strings.Contains(w.Body.String(), leak) {
						t.Errorf("the answer holds %q, of a token outside the key's scope:\n%s", leak, w.Body)
					}
				}
			}
			if len(st.Replicas) != 1 || st.Replicas[0].Instance != "replica-1" || st.Replicas[0].Version != "v1" {
				t.Errorf("replicas %+v, want replica-1 at v1", st.Replicas)
			}
		})
	}
	// The Controller's answer is not changed for the next caller.
	if w := ce.do(http.MethodGet, "/v1/status", adminKey); !strings.Contains(w.Body.String(), "fp-reports") || !strings.Contains(w.Body.String(), "problem-of-liveness") {
		t.Errorf("after scoped answers, the unscoped one lost data:\n%s", w.Body)
	}
}
