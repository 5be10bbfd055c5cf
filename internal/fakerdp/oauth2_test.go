package fakerdp_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
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

const formType = "application/x-www-form-urlencoded"

// basic returns an Authorization header with id and secret form-encoded
// first, as RFC 6749 §2.3.1 has clients send them.
func basic(id, secret string) http.Header {
	req, _ := http.NewRequest("POST", "/", nil)
	req.SetBasicAuth(url.QueryEscape(id), url.QueryEscape(secret))
	return http.Header{"Authorization": req.Header["Authorization"]}
}

// oauth2Answer is the endpoint's answer, success or error.
type oauth2Answer struct {
	AccessToken string `json:"access_token"`
	TokenType   string `json:"token_type"`
	ExpiresIn   any    `json:"expires_in"`
	Scope       string `json:"scope"`
	Error       string `json:"error"`
}

func TestOAuth2Endpoint(t *testing.T) {
	// Dedicated credentials with characters that Basic must carry encoded.
	const id, secret = "svc:reports", "s3cr3t/+=&%"
	r := rdptest.New(t, fakerdp.Config{OAuth2ClientID: id, OAuth2ClientSecret: secret}, nil)

	// Credentials in the Basic header, with an audience and two resources.
	form := url.Values{"grant_type": {"client_credentials"}, "scope": {"read write"},
		"audience": {"https://api.example"}, "resource": {"urn:a", "urn:b"}}
	var a oauth2Answer
	if st := do(t, r, "POST", fakerdp.OAuth2TokenPath, formType, form.Encode(), basic(id, secret), &a); st != 200 {
		t.Fatalf("header auth status = %d, want 200 (%+v)", st, a)
	}
	if !strings.HasPrefix(a.AccessToken, fakerdp.OAuth2Prefix) || a.TokenType != "Bearer" || a.ExpiresIn != 3600.0 || a.Scope != "read write" {
		t.Errorf("answer = %+v, want a %s token, Bearer, expires_in 3600, scope \"read write\"", a, fakerdp.OAuth2Prefix)
	}

	// Credentials in the form.
	form2 := url.Values{"grant_type": {"client_credentials"}, "client_id": {id}, "client_secret": {secret}}
	var b oauth2Answer
	if st := do(t, r, "POST", fakerdp.OAuth2TokenPath, formType, form2.Encode(), nil, &b); st != 200 {
		t.Fatalf("body auth status = %d, want 200 (%+v)", st, b)
	}
	if b.AccessToken == a.AccessToken || !strings.HasPrefix(b.AccessToken, fakerdp.OAuth2Prefix) {
		t.Errorf("second token = %q, want a new %s token", b.AccessToken, fakerdp.OAuth2Prefix)
	}

	s := r.Fake.Stats()
	if s.OAuth2Calls != 2 || s.OAuth2OK != 2 {
		t.Errorf("oauth2 calls, ok = %d, %d; want 2, 2", s.OAuth2Calls, s.OAuth2OK)
	}
	want := []fakerdp.OAuth2Request{
		{At: rdptest.T0, Auth: "header", ClientID: id, GrantType: "client_credentials", Scope: "read write",
			Audience: []string{"https://api.example"}, Resource: []string{"urn:a", "urn:b"}, Status: 200},
		{At: rdptest.T0, Auth: "body", ClientID: id, GrantType: "client_credentials", Status: 200},
	}
	if !reflect.DeepEqual(s.OAuth2Requests, want) {
		t.Errorf("oauth2 requests = %+v, want %+v", s.OAuth2Requests, want)
	}
	if len(s.OAuth2Tokens) != 2 || s.OAuth2Tokens[0].Token != a.AccessToken || s.OAuth2Tokens[1].Token != b.AccessToken ||
		!s.OAuth2Tokens[0].IssuedAt.Equal(rdptest.T0) || s.OAuth2Tokens[0].ExpiresAt.Sub(rdptest.T0) != time.Hour {
		t.Errorf("oauth2 tokens = %+v, want the two issued, at T0 for an hour", s.OAuth2Tokens)
	}
	if len(s.Tokens) != 0 || s.LivenessCalls != 0 || s.AuthCalls != (fakerdp.AuthCalls{}) {
		t.Errorf("liveness tokens, calls, auth calls = %d, %d, %+v; want none: the OAuth2 endpoint keeps its own log", len(s.Tokens), s.LivenessCalls, s.AuthCalls)
	}

	// Stats on the control API carry the OAuth2 log, without the secret.
	resp, err := r.Srv.Client().Get(r.Srv.URL + "/fake/v1/stats")
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var js map[string]any
	if err := json.Unmarshal(raw, &js); err != nil {
		t.Fatal(err)
	}
	if js["oauth2_calls"] != 2.0 || js["oauth2_ok"] != 2.0 {
		t.Errorf("stats JSON oauth2_calls, oauth2_ok = %v, %v; want 2, 2", js["oauth2_calls"], js["oauth2_ok"])
	}
	if reqs, _ := js["oauth2_requests"].([]any); len(reqs) != 2 || reqs[0].(map[string]any)["scope"] != "read write" {
		t.Errorf("stats JSON oauth2_requests = %v, want two, the first with scope \"read write\"", js["oauth2_requests"])
	}
	if strings.Contains(string(raw), secret) || strings.Contains(string(raw), url.QueryEscape(secret)) {
		t.Errorf("stats JSON contains the client secret: %s", raw)
	}
}

func TestOAuth2EndpointRefusals(t *testing.T) {
	good := url.Values{"grant_type": {"client_credentials"}}
	with := func(v url.Values, kv ...string) string {
		c := url.Values{}
		for k, vs := range v {
			c[k] = vs
		}
		for i := 0; i < len(kv); i += 2 {
			c.Set(kv[i], kv[i+1])
		}
		return c.Encode()
	}
	ownID, ownSecret := basic(fakerdp.ClientID, fakerdp.ClientSecret), basic(fakerdp.ClientID, "wrong")
	tests := []struct {
		name       string
		cfg        fakerdp.Config
		knobs      fakerdp.Knobs
		body       string
		header     http.Header
		wantStatus int
		wantError  string
		wantAuth   string
	}{
		{name: "default credentials are the RDP ones", body: good.Encode(), header: ownID, wantStatus: 200, wantAuth: "header"},
		{name: "wrong secret in the header", body: good.Encode(), header: ownSecret,
			wantStatus: 401, wantError: "invalid_client", wantAuth: "header"},
		{name: "wrong secret in the form", body: with(good, "client_id", fakerdp.ClientID, "client_secret", "wrong"),
			wantStatus: 401, wantError: "invalid_client", wantAuth: "body"},
		{name: "wrong client id", body: with(good, "client_id", "other", "client_secret", fakerdp.ClientSecret),
			wantStatus: 401, wantError: "invalid_client", wantAuth: "body"},
		{name: "no credentials", body: with(good, "client_id", fakerdp.ClientID),
			wantStatus: 401, wantError: "invalid_client", wantAuth: "none"},
		{name: "both methods", body: with(good, "client_id", fakerdp.ClientID, "client_secret", fakerdp.ClientSecret), header: ownID,
			wantStatus: 400, wantError: "invalid_request", wantAuth: "both"},
		{name: "password grant", body: with(good, "grant_type", "password"), header: ownID,
			wantStatus: 400, wantError: "unsupported_grant_type", wantAuth: "header"},
		{name: "no grant", body: "", header: ownID,
			wantStatus: 400, wantError: "unsupported_grant_type", wantAuth: "header"},
		{name: "RDP credentials refused when dedicated ones are set", cfg: fakerdp.Config{OAuth2ClientSecret: "dedicated"},
			body: good.Encode(), header: ownID, wantStatus: 401, wantError: "invalid_client", wantAuth: "header"},
		{name: "dedicated credentials", cfg: fakerdp.Config{OAuth2ClientSecret: "dedicated"},
			body: good.Encode(), header: basic(fakerdp.ClientID, "dedicated"), wantStatus: 200, wantAuth: "header"},
		{name: "refusal comes before the status knob", knobs: fakerdp.Knobs{LivenessStatus: 503},
			body: good.Encode(), header: ownSecret, wantStatus: 401, wantError: "invalid_client", wantAuth: "header"},
		{name: "AuthStatus is RDP's only", knobs: fakerdp.Knobs{AuthStatus: 500},
			body: good.Encode(), header: ownID, wantStatus: 200, wantAuth: "header"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := tt.cfg
			cfg.Knobs = tt.knobs
			r := rdptest.New(t, cfg, nil)
			var a oauth2Answer
			if st := do(t, r, "POST", fakerdp.OAuth2TokenPath, formType, tt.body, tt.header, &a); st != tt.wantStatus || a.Error != tt.wantError {
				t.Errorf("status, error = %d, %q; want %d, %q", st, a.Error, tt.wantStatus, tt.wantError)
			}
			s := r.Fake.Stats()
			if len(s.OAuth2Requests) != 1 || s.OAuth2Requests[0].Auth != tt.wantAuth || s.OAuth2Requests[0].Status != tt.wantStatus {
				t.Errorf("oauth2 requests = %+v, want one with auth %q and status %d", s.OAuth2Requests, tt.wantAuth, tt.wantStatus)
			}
			wantOK := 0
			if tt.wantStatus == 200 {
				wantOK = 1
			}
			if s.OAuth2Calls != 1 || s.OAuth2OK != wantOK || len(s.OAuth2Tokens) != wantOK {
				t.Errorf("oauth2 calls, ok, tokens = %d, %d, %d; want 1, %d, %d", s.OAuth2Calls, s.OAuth2OK, len(s.OAuth2Tokens), wantOK, wantOK)
			}
		})
	}

	t.Run("refused Basic says so", func(t *testing.T) {
		r := rdptest.New(t, fakerdp.Config{}, nil)
		req, _ := http.NewRequest("POST", r.Srv.URL+fakerdp.OAuth2TokenPath, strings.NewReader(good.Encode()))
		req.Header.Set("Content-Type", formType)
		req.SetBasicAuth(fakerdp.ClientID, "wrong")
		resp, err := r.Srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if got := resp.Header.Get("WWW-Authenticate"); !strings.HasPrefix(got, "Basic ") {
			t.Errorf("WWW-Authenticate = %q, want a Basic challenge", got)
		}
	})
	t.Run("GET", func(t *testing.T) {
		r := rdptest.New(t, fakerdp.Config{}, nil)
		if st := do(t, r, "GET", fakerdp.OAuth2TokenPath, "", "", ownID, nil); st != http.StatusMethodNotAllowed {
			t.Errorf("GET status = %d, want 405", st)
		}
	})
}

// TestOAuth2EndpointKnobs: the knobs that fail the liveness route fail the
// OAuth2 route too.
func TestOAuth2EndpointKnobs(t *testing.T) {
	body := url.Values{"grant_type": {"client_credentials"}, "scope": {"s"}}.Encode()
	creds := basic(fakerdp.ClientID, fakerdp.ClientSecret)
	tests := []struct {
		name        string
		knobs       fakerdp.Knobs
		wantStatus  int
		wantRA      string
		wantType    string // Content-Type's media type
		wantBody    string // a prefix of the body
		wantExpires any    // expires_in of a success
		wantOK      int
		wantExpiry  time.Duration // of the logged token, from T0
	}{
		{name: "lifetime", knobs: fakerdp.Knobs{TokenLifetime: 90 * time.Second},
			wantStatus: 200, wantType: "application/json", wantExpires: 90.0, wantOK: 1, wantExpiry: 90 * time.Second},
		{name: "expires_in as a string", knobs: fakerdp.Knobs{ExpiresInString: true, TokenLifetime: time.Minute},
			wantStatus: 200, wantType: "application/json", wantExpires: "60", wantOK: 1, wantExpiry: time.Minute},
		{name: "expired", knobs: fakerdp.Knobs{Expired: true},
			wantStatus: 200, wantType: "application/json", wantExpires: -60.0, wantExpiry: -time.Minute},
		{name: "ExpiresAt is liveness only", knobs: fakerdp.Knobs{ExpiresAt: true},
			wantStatus: 200, wantType: "application/json", wantExpires: 3600.0, wantOK: 1, wantExpiry: time.Hour},
		{name: "503 with Retry-After", knobs: fakerdp.Knobs{LivenessStatus: 503, RetryAfter: 1500 * time.Millisecond},
			wantStatus: 503, wantRA: "2", wantType: "application/json", wantBody: `{"error":"server_error"`},
		{name: "429 with Retry-After", knobs: fakerdp.Knobs{LivenessStatus: 429, RetryAfter: 7 * time.Second},
			wantStatus: 429, wantRA: "7", wantType: "application/json", wantBody: `{"error":"server_error"`},
		{name: "401", knobs: fakerdp.Knobs{LivenessStatus: 401},
			wantStatus: 401, wantType: "application/json", wantBody: `{"error":"invalid_client"`},
		{name: "HTML with 200", knobs: fakerdp.Knobs{HTML: true},
			wantStatus: 200, wantType: "text/html", wantBody: "<html>"},
		{name: "HTML with 502", knobs: fakerdp.Knobs{HTML: true, LivenessStatus: 502},
			wantStatus: 502, wantType: "text/html", wantBody: "<html>"},
		{name: "malformed", knobs: fakerdp.Knobs{Malformed: true},
			wantStatus: 200, wantType: "application/json", wantBody: `{"access_token":"` + fakerdp.OAuth2Prefix},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := rdptest.New(t, fakerdp.Config{Knobs: tt.knobs}, nil)
			req, _ := http.NewRequest("POST", r.Srv.URL+fakerdp.OAuth2TokenPath, strings.NewReader(body))
			req.Header.Set("Content-Type", formType)
			req.Header["Authorization"] = creds["Authorization"]
			resp, err := r.Srv.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			raw, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tt.wantStatus || resp.Header.Get("Retry-After") != tt.wantRA ||
				!strings.HasPrefix(resp.Header.Get("Content-Type"), tt.wantType) {
				t.Errorf("status, Retry-After, Content-Type = %d, %q, %q; want %d, %q, %s",
					resp.StatusCode, resp.Header.Get("Retry-After"), resp.Header.Get("Content-Type"), tt.wantStatus, tt.wantRA, tt.wantType)
			}
			if !strings.HasPrefix(string(raw), tt.wantBody) {
				t.Errorf("body = %q, want it to start with %q", raw, tt.wantBody)
			}
			s := r.Fake.Stats()
			if s.OAuth2Calls != 1 || s.OAuth2OK != tt.wantOK || len(s.OAuth2Requests) != 1 || s.OAuth2Requests[0].Status != tt.wantStatus {
				t.Errorf("oauth2 calls, ok, requests = %d, %d, %+v; want 1, %d, one with status %d", s.OAuth2Calls, s.OAuth2OK, s.OAuth2Requests, tt.wantOK, tt.wantStatus)
			}
			if tt.wantExpires == nil {
				if len(s.OAuth2Tokens) != 0 {
					t.Errorf("oauth2 tokens = %+v, want none", s.OAuth2Tokens)
				}
				return
			}
			var a oauth2Answer
			if err := json.Unmarshal(raw, &a); err != nil {
				t.Fatalf("answer %q: %v", raw, err)
			}
			if a.ExpiresIn != tt.wantExpires {
				t.Errorf("expires_in = %#v, want %#v", a.ExpiresIn, tt.wantExpires)
			}
			if len(s.OAuth2Tokens) != 1 || s.OAuth2Tokens[0].Token != a.AccessToken || !s.OAuth2Tokens[0].ExpiresAt.Equal(rdptest.T0.Add(tt.wantExpiry)) {
				t.Errorf("oauth2 tokens = %+v, want the one issued, expiring at T0%+v", s.OAuth2Tokens, tt.wantExpiry)
			}
		})
	}

	t.Run("clock offset dates the answer", func(t *testing.T) {
		r := rdptest.New(t, fakerdp.Config{Knobs: fakerdp.Knobs{ClockOffset: -time.Hour}}, nil)
		req, _ := http.NewRequest("POST", r.Srv.URL+fakerdp.OAuth2TokenPath, strings.NewReader(body))
		req.Header.Set("Content-Type", formType)
		req.Header["Authorization"] = creds["Authorization"]
		resp, err := r.Srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if got, want := resp.Header.Get("Date"), rdptest.T0.Add(-time.Hour).Format(http.TimeFormat); got != want {
			t.Errorf("Date = %q, want %q", got, want)
		}
	})

	t.Run("latency", func(t *testing.T) {
		r := rdptest.New(t, fakerdp.Config{Knobs: fakerdp.Knobs{Latency: 2 * time.Second}}, nil)
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, "POST", r.Srv.URL+fakerdp.OAuth2TokenPath, strings.NewReader(body))
		req.Header.Set("Content-Type", formType)
		req.Header["Authorization"] = creds["Authorization"]
		start := time.Now()
		if resp, err := r.Srv.Client().Do(req); err == nil {
			resp.Body.Close()
			t.Fatalf("answer came in %v, want none within 50ms", time.Since(start))
		}
		// The request is logged with status 0 once the handler sees the client gone.
		deadline := time.Now().Add(2 * time.Second)
		for {
			s := r.Fake.Stats()
			if len(s.OAuth2Requests) == 1 {
				if s.OAuth2Requests[0].Status != 0 || s.OAuth2OK != 0 || len(s.OAuth2Tokens) != 0 {
					t.Errorf("stats = %+v, want one request with status 0 and no token", s)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the abandoned request was not logged")
			}
			time.Sleep(5 * time.Millisecond)
		}
	})

	t.Run("knobs set over the control API", func(t *testing.T) {
		r := rdptest.New(t, fakerdp.Config{}, nil)
		if st := do(t, r, "PUT", "/fake/v1/knobs", "application/json", `{"liveness_status":503,"retry_after":"3s"}`, nil, nil); st != 200 {
			t.Fatalf("PUT knobs status = %d", st)
		}
		var a oauth2Answer
		if st := do(t, r, "POST", fakerdp.OAuth2TokenPath, formType, body, creds, &a); st != 503 || a.Error != "server_error" {
			t.Errorf("status, error = %d, %q; want 503, server_error", st, a.Error)
		}
	})
}

// TestOAuth2TwoServers: two Servers fail independently, which is how a test
// fails one upstream and not the other; upstream.OAuth2 and upstream.Client
// each see their own.
func TestOAuth2TwoServers(t *testing.T) {
	rdp := rdptest.New(t, fakerdp.Config{}, nil)
	generic := rdptest.New(t, fakerdp.Config{Clock: rdp.Clock}, nil)
	discard := slog.New(slog.NewTextHandler(io.Discard, nil))
	src, err := upstream.NewOAuth2(upstream.OAuth2Config{
		TokenURL: generic.Srv.URL + fakerdp.OAuth2TokenPath, ClientID: fakerdp.ClientID, ClientSecret: fakerdp.ClientSecret,
		Scopes: []string{"a", "b"}, EndpointParams: url.Values{"audience": {"aud"}}, Clock: rdp.Clock, Logger: discard,
	})
	if err != nil {
		t.Fatal(err)
	}
	live := rdp.Client(t, upstream.Config{})
	ctx := context.Background()

	generic.Fake.Set(fakerdp.Knobs{LivenessStatus: 503, RetryAfter: 4 * time.Second})
	if _, err := live.Token(ctx); err != nil {
		t.Errorf("liveness Token with the other server failing: %v", err)
	}
	_, err = src.Token(ctx)
	var ue *upstream.Error
	if !errors.As(err, &ue) || ue.Op != upstream.OpToken || ue.Status != 503 || !ue.Retryable || ue.RetryAfter != 4*time.Second {
		t.Errorf("OAuth2 Token error = %#v, want a retryable 503 after 4s", err)
	}

	generic.Fake.Set(fakerdp.Knobs{TokenLifetime: 5 * time.Minute})
	rdp.Fake.Set(fakerdp.Knobs{LivenessStatus: 500})
	tok, err := src.Token(ctx)
	if err != nil {
		t.Fatalf("OAuth2 Token: %v", err)
	}
	if !strings.HasPrefix(tok.Value, fakerdp.OAuth2Prefix) || tok.Lifetime != 5*time.Minute || !tok.Sent.Equal(rdptest.T0) {
		t.Errorf("OAuth2 Token = %s..., %v, %v; want a %s token for 5m sent at T0", tok.Value[:min(len(tok.Value), 12)], tok.Lifetime, tok.Sent, fakerdp.OAuth2Prefix)
	}
	if _, err := live.Token(ctx); err == nil {
		t.Errorf("liveness Token succeeded with its server failing")
	}
	s := generic.Fake.Stats()
	if s.OAuth2Calls != 2 || s.OAuth2OK != 1 || s.OAuth2Tokens[0].Token != tok.Value {
		t.Errorf("generic stats = %+v, want two calls, the second issuing the token", s)
	}
	last := s.OAuth2Requests[len(s.OAuth2Requests)-1]
	if last.Scope != "a b" || !reflect.DeepEqual(last.Audience, []string{"aud"}) || last.Auth != "header" {
		t.Errorf("last request = %+v, want scope \"a b\", audience aud, Basic auth", last)
	}
	if rs := rdp.Fake.Stats(); rs.OAuth2Calls != 0 || len(rs.OAuth2Tokens) != 0 {
		t.Errorf("RDP server saw OAuth2 calls: %+v", rs)
	}
}
