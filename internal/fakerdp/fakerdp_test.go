package fakerdp_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/tokenkeeper/tokenkeeper/internal/fakerdp"
	"github.com/tokenkeeper/tokenkeeper/internal/rdptest"
	"github.com/tokenkeeper/tokenkeeper/upstream"
)

// do sends a request to r and decodes a JSON answer into out (when not nil).
func do(t *testing.T, r *rdptest.RDP, method, path, contentType, body string, header http.Header, out any) int {
	t.Helper()
	req, err := http.NewRequest(method, r.Srv.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := r.Srv.Client().Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("%s %s: %v in %q", method, path, err, b)
		}
	}
	return resp.StatusCode
}

func TestFakeKnobsAPI(t *testing.T) {
	r := rdptest.New(t, fakerdp.Config{}, nil)
	const js = "application/json"

	var got map[string]any
	if st := do(t, r, "GET", "/fake/v1/knobs", "", "", nil, &got); st != 200 {
		t.Fatalf("GET knobs status = %d, want 200", st)
	}
	want := map[string]any{
		"token_lifetime": "1h0m0s", "access_token_lifetime": "10m0s", "latency": "0s",
		"liveness_status": 0.0, "auth_status": 0.0, "retry_after": "0s",
		"malformed": false, "html": false, "expired": false, "expires_in_string": false,
		"expires_at": false, "clock_offset": "0s",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("GET knobs = %v, want %v", got, want)
	}

	got = nil
	st := do(t, r, "PUT", "/fake/v1/knobs", js, `{"token_lifetime":"10s","liveness_status":503,"retry_after":"2s","html":true}`, nil, &got)
	if st != 200 {
		t.Fatalf("PUT knobs status = %d, want 200", st)
	}
	want["token_lifetime"], want["liveness_status"], want["retry_after"], want["html"] = "10s", 503.0, "2s", true
	if !reflect.DeepEqual(got, want) {
		t.Errorf("PUT knobs answer = %v, want %v", got, want)
	}
	wantKnobs := fakerdp.Knobs{
		TokenLifetime: 10 * time.Second, AccessTokenLifetime: 10 * time.Minute,
		LivenessStatus: 503, RetryAfter: 2 * time.Second, HTML: true,
	}
	if got := r.Fake.Knobs(); got != wantKnobs {
		t.Errorf("Knobs() = %+v, want %+v", got, wantKnobs)
	}

	bad := []struct{ name, body string }{
		{"unparsable duration", `{"latency":"soon"}`},
		{"negative duration", `{"latency":"-1s"}`},
		{"not a status", `{"auth_status":42}`},
		{"unknown field", `{"latencyy":"1s"}`},
		{"unparsable clock offset", `{"clock_offset":"ahead"}`},
		{"not JSON", `latency=1s`},
	}
	for _, b := range bad {
		var e struct {
			Error struct{ Code, Message string } `json:"error"`
		}
		if st := do(t, r, "PUT", "/fake/v1/knobs", js, b.body, nil, &e); st != 400 || e.Error.Message == "" {
			t.Errorf("%s: PUT status, message = %d, %q; want 400 and a message", b.name, st, e.Error.Message)
		}
	}
	if got := r.Fake.Knobs(); got != wantKnobs {
		t.Errorf("Knobs() after bad PUTs = %+v, want %+v", got, wantKnobs)
	}
}

func TestFakeStatsAPI(t *testing.T) {
	r := rdptest.New(t, fakerdp.Config{}, nil)
	c := r.Client(t, upstream.Config{})
	tok, err := c.Token(context.Background())
	if err != nil {
		t.Fatalf("Token: %v", err)
	}
	r.Fake.Set(fakerdp.Knobs{LivenessStatus: 500})
	if _, err := c.Token(context.Background()); err == nil {
		t.Fatalf("Token with LivenessStatus 500 succeeded")
	}

	type stats struct {
		AuthCalls     map[string]int `json:"auth_calls"`
		LivenessCalls int            `json:"liveness_calls"`
		LivenessOK    int            `json:"liveness_ok"`
		Calls         []struct {
			At     string `json:"at"`
			Op     string `json:"op"`
			Status int    `json:"status"`
		} `json:"calls"`
		Tokens []struct {
			Token     string `json:"token"`
			IssuedAt  string `json:"issued_at"`
			ExpiresAt string `json:"expires_at"`
		} `json:"tokens"`
	}
	var s stats
	if st := do(t, r, "GET", "/fake/v1/stats", "", "", nil, &s); st != 200 {
		t.Fatalf("GET stats status = %d, want 200", st)
	}
	if got, want := s.AuthCalls, map[string]int{"v1_password": 0, "v1_refresh": 0, "v2": 1}; !reflect.DeepEqual(got, want) {
		t.Errorf("auth_calls = %v, want %v", got, want)
	}
	if s.LivenessCalls != 2 || s.LivenessOK != 1 {
		t.Errorf("liveness_calls, liveness_ok = %d, %d; want 2, 1", s.LivenessCalls, s.LivenessOK)
	}
	if len(s.Calls) != 2 || s.Calls[0].Op != "liveness" || s.Calls[0].Status != 200 || s.Calls[1].Status != 500 {
		t.Errorf("calls = %+v, want liveness 200 then 500", s.Calls)
	} else if at, err := time.Parse(time.RFC3339Nano, s.Calls[0].At); err != nil || !at.Equal(rdptest.T0) {
		t.Errorf("calls[0].at = %q, want %v", s.Calls[0].At, rdptest.T0)
	}
	if len(s.Tokens) != 1 || s.Tokens[0].Token != tok.Value {
		t.Fatalf("tokens = %+v, want the one issued", s.Tokens)
	}
	issued, err1 := time.Parse(time.RFC3339Nano, s.Tokens[0].IssuedAt)
	expires, err2 := time.Parse(time.RFC3339Nano, s.Tokens[0].ExpiresAt)
	if err1 != nil || err2 != nil || !issued.Equal(rdptest.T0) || expires.Sub(issued) != time.Hour {
		t.Errorf("issued_at, expires_at = %q, %q; want %v and an hour later", s.Tokens[0].IssuedAt, s.Tokens[0].ExpiresAt, rdptest.T0)
	}

	if st := do(t, r, "POST", "/fake/v1/reset", "", "", nil, nil); st != http.StatusNoContent {
		t.Fatalf("POST reset status = %d, want 204", st)
	}
	var raw map[string]any
	do(t, r, "GET", "/fake/v1/stats", "", "", nil, &raw)
	want := map[string]any{
		"auth_calls":     map[string]any{"v1_password": 0.0, "v1_refresh": 0.0, "v2": 0.0},
		"liveness_calls": 0.0, "liveness_ok": 0.0, "calls": []any{}, "tokens": []any{},
		"oauth2_calls": 0.0, "oauth2_ok": 0.0, "oauth2_requests": []any{}, "oauth2_tokens": []any{},
	}
	if !reflect.DeepEqual(raw, want) {
		t.Errorf("stats after reset = %v, want %v", raw, want)
	}
	if got := r.Fake.Knobs().LivenessStatus; got != 500 {
		t.Errorf("LivenessStatus after reset = %d, want 500 (reset keeps knobs)", got)
	}
}

// TestFakeProtocol checks the Fake's answers on the wire.
func TestFakeProtocol(t *testing.T) {
	const form = "application/x-www-form-urlencoded"
	r := rdptest.New(t, fakerdp.Config{}, nil)
	v1 := url.Values{
		"grant_type": {"password"}, "username": {fakerdp.Username}, "password": {fakerdp.Password},
		"client_id": {fakerdp.ClientID}, "scope": {"trapi"}, "takeExclusiveSignOnControl": {"true"},
	}
	without := func(v url.Values, key string) string {
		c := url.Values{}
		for k, vs := range v {
			if k != key {
				c[k] = vs
			}
		}
		return c.Encode()
	}

	var auth map[string]any
	if st := do(t, r, "POST", "/auth/oauth2/v1/token", form, v1.Encode(), nil, &auth); st != 200 {
		t.Fatalf("v1 password grant status = %d, want 200 (%v)", st, auth)
	}
	if got, ok := auth["expires_in"].(string); !ok || got != "600" {
		t.Errorf("v1 expires_in = %#v, want the string \"600\"", auth["expires_in"])
	}
	access, _ := auth["access_token"].(string)

	tests := []struct {
		name, method, path, ctype, body string
		header                          http.Header
		wantStatus                      int
		wantError                       string // error, or error.message for gateway errors
	}{
		{"second session without exclusive sign-on", "POST", "/auth/oauth2/v1/token", form,
			without(v1, "takeExclusiveSignOnControl"), nil, 400, "access_denied"},
		{"v1 unknown refresh token", "POST", "/auth/oauth2/v1/token", form,
			url.Values{"grant_type": {"refresh_token"}, "refresh_token": {"nope"}, "client_id": {fakerdp.ClientID}}.Encode(), nil, 400, "invalid_grant"},
		{"v1 wrong password", "POST", "/auth/oauth2/v1/token", form,
			without(v1, "password") + "&password=x", nil, 400, "invalid_grant"},
		{"v2 wrong grant", "POST", "/auth/oauth2/v2/token", form,
			"grant_type=password&client_id=tokenkeeper-demo&client_secret=demo-secret", nil, 400, "unsupported_grant_type"},
		{"v2 wrong secret", "POST", "/auth/oauth2/v2/token", form,
			"grant_type=client_credentials&client_id=tokenkeeper-demo&client_secret=x&scope=trapi", nil, 401, "invalid_client"},
		{"liveness without bearer", "POST", upstream.DefaultLivenessPath, "", "", nil, 401, "token expired"},
		{"liveness with unknown bearer", "GET", upstream.DefaultLivenessPath, "", "", http.Header{"Authorization": {"Bearer nope"}}, 401, "token expired"},
		{"liveness with PUT", "PUT", upstream.DefaultLivenessPath, "", "", http.Header{"Authorization": {"Bearer " + access}}, 405, "Method Not Allowed"},
		{"liveness GET", "GET", upstream.DefaultLivenessPath, "", "", http.Header{"Authorization": {"Bearer " + access}}, 200, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got map[string]any
			if st := do(t, r, tt.method, tt.path, tt.ctype, tt.body, tt.header, &got); st != tt.wantStatus {
				t.Errorf("status = %d, want %d (%v)", st, tt.wantStatus, got)
			}
			e := got["error"]
			if m, ok := e.(map[string]any); ok {
				e = m["message"]
			}
			if tt.wantError == "" {
				if e != nil || !strings.HasPrefix(got["token"].(string), fakerdp.LivenessPrefix) || got["expiresIn"] != 3600.0 {
					t.Errorf("answer = %v, want a token with expiresIn 3600", got)
				}
			} else if e != tt.wantError {
				t.Errorf("error = %v, want %q", e, tt.wantError)
			}
		})
	}
}

// TestFakeClockOffset: with the ExpiresAt and ClockOffset knobs the Fake
// answers with an absolute expiry on a skewed clock, in its Date header and
// its expiresAt alike, while its stats keep the true expiry; the Client
// still gets a lifetime that does not outlast the token.
func TestFakeClockOffset(t *testing.T) {
	const life = 45 * time.Minute
	tests := []struct {
		name     string
		knobs    fakerdp.Knobs
		wantDate time.Time
		wantBody map[string]any
	}{
		{"expiresIn, upstream clock 15s ahead", fakerdp.Knobs{ClockOffset: 15 * time.Second},
			rdptest.T0.Add(15 * time.Second), map[string]any{"expiresIn": life.Seconds()}},
		{"expiresAt, clocks agree", fakerdp.Knobs{ExpiresAt: true},
			rdptest.T0, map[string]any{"expiresAt": rdptest.T0.Add(life).Format(time.RFC3339)}},
		{"expiresAt, upstream clock 15s ahead", fakerdp.Knobs{ExpiresAt: true, ClockOffset: 15 * time.Second},
			rdptest.T0.Add(15 * time.Second), map[string]any{"expiresAt": rdptest.T0.Add(15*time.Second + life).Format(time.RFC3339)}},
		{"expiresAt, upstream clock an hour behind", fakerdp.Knobs{ExpiresAt: true, ClockOffset: -time.Hour},
			rdptest.T0.Add(-time.Hour), map[string]any{"expiresAt": rdptest.T0.Add(-time.Hour + life).Format(time.RFC3339)}},
		{"Expired, upstream clock 15s ahead", fakerdp.Knobs{Expired: true, ExpiresAt: true, ClockOffset: 15 * time.Second},
			rdptest.T0.Add(15 * time.Second), map[string]any{"expiresAt": rdptest.T0.Add(15*time.Second - time.Minute).Format(time.RFC3339)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			knobs := tt.knobs
			knobs.TokenLifetime = life
			r := rdptest.New(t, fakerdp.Config{Knobs: knobs}, nil)

			// On the wire.
			var auth struct {
				AccessToken string `json:"access_token"`
			}
			form := "grant_type=client_credentials&client_id=" + fakerdp.ClientID + "&client_secret=" + fakerdp.ClientSecret
			if st := do(t, r, "POST", "/auth/oauth2/v2/token", "application/x-www-form-urlencoded", form, nil, &auth); st != 200 {
				t.Fatalf("sign-on status = %d, want 200", st)
			}
			req, _ := http.NewRequest("POST", r.Srv.URL+upstream.DefaultLivenessPath, nil)
			req.Header.Set("Authorization", "Bearer "+auth.AccessToken)
			resp, err := r.Srv.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var got map[string]any
			if err := json.NewDecoder(resp.Body).Decode(&got); err != nil {
				t.Fatal(err)
			}
			if got, want := resp.Header.Get("Date"), tt.wantDate.Format(http.TimeFormat); got != want {
				t.Errorf("Date = %q, want %q", got, want)
			}
			delete(got, "token")
			if !reflect.DeepEqual(got, tt.wantBody) {
				t.Errorf("answer = %v, want %v and a token", got, tt.wantBody)
			}
			tokens := r.Fake.Stats().Tokens
			wantExpiry := rdptest.T0.Add(life)
			if knobs.Expired {
				wantExpiry = rdptest.T0.Add(-time.Minute)
			}
			if len(tokens) != 1 || !tokens[0].ExpiresAt.Equal(wantExpiry) {
				t.Errorf("stats tokens = %+v, want one with the true expiry %v", tokens, wantExpiry)
			}
			if knobs.Expired {
				return
			}

			// Through the Client, whose clock is the true one.
			tok, err := r.Client(t, upstream.Config{}).Token(context.Background())
			if err != nil {
				t.Fatalf("Token: %v", err)
			}
			if end, trueEnd := tok.Sent.Add(tok.Lifetime), r.Fake.Stats().Tokens[1].ExpiresAt; end.After(trueEnd) || end.Before(trueEnd.Add(-time.Second)) {
				t.Errorf("Sent+Lifetime = %v, want within a second before the true expiry %v", end, trueEnd)
			}
		})
	}
}

// TestFakeClockKnobsAPI sets the absolute-expiry and clock-offset knobs
// through the control API; the offset alone of the durations may be negative.
func TestFakeClockKnobsAPI(t *testing.T) {
	r := rdptest.New(t, fakerdp.Config{}, nil)
	var got map[string]any
	if st := do(t, r, "PUT", "/fake/v1/knobs", "application/json", `{"expires_at":true,"clock_offset":"-1h"}`, nil, &got); st != 200 {
		t.Fatalf("PUT knobs status = %d, want 200 (%v)", st, got)
	}
	if got["expires_at"] != true || got["clock_offset"] != "-1h0m0s" {
		t.Errorf("PUT knobs answer = %v, want expires_at true and clock_offset -1h0m0s", got)
	}
	k := r.Fake.Knobs()
	if !k.ExpiresAt || k.ClockOffset != -time.Hour {
		t.Errorf("Knobs() = %+v, want ExpiresAt and ClockOffset -1h", k)
	}
	// A PUT of other knobs leaves these alone.
	if st := do(t, r, "PUT", "/fake/v1/knobs", "application/json", `{"latency":"0s"}`, nil, nil); st != 200 {
		t.Fatalf("second PUT status = %d, want 200", st)
	}
	if got := r.Fake.Knobs(); got != k {
		t.Errorf("Knobs() after an unrelated PUT = %+v, want %+v", got, k)
	}
	if st := do(t, r, "PUT", "/fake/v1/knobs", "application/json", `{"clock_offset":"15s","expires_at":false}`, nil, nil); st != 200 {
		t.Fatalf("third PUT status = %d, want 200", st)
	}
	if got := r.Fake.Knobs(); got.ExpiresAt || got.ClockOffset != 15*time.Second {
		t.Errorf("Knobs() = %+v, want ExpiresAt false and ClockOffset 15s", got)
	}
}
