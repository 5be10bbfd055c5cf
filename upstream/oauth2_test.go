package upstream_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tokenkeeper/tokenkeeper/internal/clocktest"
	"github.com/tokenkeeper/tokenkeeper/internal/fakerdp"
	"github.com/tokenkeeper/tokenkeeper/internal/rdptest"
	"github.com/tokenkeeper/tokenkeeper/upstream"
)

const (
	testClientID = "svc:reports" // ':' must be form-encoded in Basic
	testSecret   = "s3cr3t/+=&%-oauth2"
)

// seen is a token request as the test server read it.
type seen struct {
	Form                     url.Values
	Basic                    bool
	ID, Secret               string // from the Basic header, form-decoded
	Accept, CType            string
	Authorization            string
	Method, Path, RawQuery   string
	HasFormID, HasFormSecret bool
}

// tokenServer is an OAuth2 token endpoint whose answers a test writes, and
// which records every request.
type tokenServer struct {
	*httptest.Server
	mu   sync.Mutex
	reqs []seen
}

func newTokenServer(t *testing.T, h http.HandlerFunc) *tokenServer {
	t.Helper()
	ts := &tokenServer{}
	ts.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.ParseForm()
		s := seen{Form: r.PostForm, Accept: r.Header.Get("Accept"), CType: r.Header.Get("Content-Type"),
			Authorization: r.Header.Get("Authorization"), Method: r.Method, Path: r.URL.Path, RawQuery: r.URL.RawQuery}
		if u, p, ok := r.BasicAuth(); ok {
			s.Basic = true
			s.ID, _ = url.QueryUnescape(u)
			s.Secret, _ = url.QueryUnescape(p)
		}
		_, s.HasFormID = r.PostForm["client_id"]
		_, s.HasFormSecret = r.PostForm["client_secret"]
		ts.mu.Lock()
		ts.reqs = append(ts.reqs, s)
		ts.mu.Unlock()
		h(w, r)
	}))
	t.Cleanup(ts.Close)
	return ts
}

func (ts *tokenServer) seen() []seen {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	return append([]seen(nil), ts.reqs...)
}

// authenticated reports whether r carries the test credentials in the
// places style allows ("header", "body" or "" for either).
func authenticated(r *http.Request, style string) bool {
	u, p, basic := r.BasicAuth()
	u, _ = url.QueryUnescape(u)
	p, _ = url.QueryUnescape(p)
	inForm := r.PostForm.Get("client_id") == testClientID && r.PostForm.Get("client_secret") == testSecret
	inHeader := basic && u == testClientID && p == testSecret
	switch style {
	case "header":
		return inHeader && !r.PostForm.Has("client_secret")
	case "body":
		return inForm && !basic
	}
	return inHeader != inForm
}

// answer writes status and body as JSON.
func answer(w http.ResponseWriter, status int, body string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	io.WriteString(w, body)
}

// accepting answers with a token when the client authenticates with style,
// else 401 invalid_client.
func accepting(style, token string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !authenticated(r, style) {
			answer(w, 401, `{"error":"invalid_client","error_description":"Client authentication failed"}`)
			return
		}
		answer(w, 200, `{"access_token":"`+token+`","token_type":"Bearer","expires_in":3600}`)
	}
}

func discardLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// newSource returns an OAuth2 for ts with the test credentials; cfg's other
// fields are kept.
func newSource(t *testing.T, ts *tokenServer, cfg upstream.OAuth2Config) *upstream.OAuth2 {
	t.Helper()
	if cfg.TokenURL == "" {
		cfg.TokenURL = ts.URL + "/oauth2/token"
	}
	if cfg.ClientID == "" {
		cfg.ClientID = testClientID
	}
	if cfg.ClientSecret == "" {
		cfg.ClientSecret = testSecret
	}
	if cfg.Logger == nil {
		cfg.Logger = discardLogger()
	}
	o, err := upstream.NewOAuth2(cfg)
	if err != nil {
		t.Fatalf("NewOAuth2: %v", err)
	}
	return o
}

func TestOAuth2Token(t *testing.T) {
	ts := newTokenServer(t, accepting("", "tok-123"))
	clk := clocktest.New(rdptest.T0)
	o := newSource(t, ts, upstream.OAuth2Config{
		Scopes:         []string{"read", "write:all"},
		EndpointParams: url.Values{"audience": {"https://api.example/"}, "resource": {"urn:a", "urn:b"}},
		Clock:          clk,
	})
	tok, err := o.Token(context.Background())
	if err != nil {
		t.Fatalf("Token: %v", err)
	}
	if want := (upstream.Token{Value: "tok-123", Lifetime: time.Hour, Sent: rdptest.T0}); tok != want {
		t.Errorf("Token = %+v, want %+v", tok, want)
	}
	reqs := ts.seen()
	if len(reqs) != 1 {
		t.Fatalf("%d requests, want 1", len(reqs))
	}
	r := reqs[0]
	wantForm := url.Values{"grant_type": {"client_credentials"}, "scope": {"read write:all"},
		"audience": {"https://api.example/"}, "resource": {"urn:a", "urn:b"}}
	if !reflect.DeepEqual(r.Form, wantForm) {
		t.Errorf("form = %v, want %v", r.Form, wantForm)
	}
	if r.Method != "POST" || r.Path != "/oauth2/token" || r.CType != "application/x-www-form-urlencoded" || r.Accept != "application/json" {
		t.Errorf("request = %s %s, Content-Type %q, Accept %q; want POST /oauth2/token, a form, JSON accepted", r.Method, r.Path, r.CType, r.Accept)
	}
	// "auto" starts with HTTP Basic, the credentials form-encoded first.
	if !r.Basic || r.ID != testClientID || r.Secret != testSecret {
		t.Errorf("Basic = %t, %q; want the test credentials", r.Basic, r.ID)
	}
	wantAuth := "Basic " + base64.StdEncoding.EncodeToString([]byte(url.QueryEscape(testClientID)+":"+url.QueryEscape(testSecret)))
	if r.Authorization != wantAuth {
		t.Errorf("Authorization = %q, want %q", r.Authorization, wantAuth)
	}

	// No scopes, no params: only the grant type; a query in TokenURL is kept.
	o2 := newSource(t, ts, upstream.OAuth2Config{TokenURL: ts.URL + "/t?api-version=2"})
	if _, err := o2.Token(context.Background()); err != nil {
		t.Fatalf("Token: %v", err)
	}
	r = ts.seen()[1]
	if want := (url.Values{"grant_type": {"client_credentials"}}); !reflect.DeepEqual(r.Form, want) || r.RawQuery != "api-version=2" {
		t.Errorf("form, query = %v, %q; want %v, api-version=2", r.Form, r.RawQuery, want)
	}
}

// TestOAuth2AuthStyles checks on the server where the credentials went.
func TestOAuth2AuthStyles(t *testing.T) {
	tests := []struct {
		name      string
		style     string
		server    string // the style the server accepts, "" either
		wantFirst []bool // per request over two Token calls: Basic used
		wantErr   bool
	}{
		{name: "header", style: "header", server: "", wantFirst: []bool{true, true}},
		{name: "body", style: "body", server: "", wantFirst: []bool{false, false}},
		{name: "header style, body-only server", style: "header", server: "body", wantFirst: []bool{true, true}, wantErr: true},
		{name: "body style, header-only server", style: "body", server: "header", wantFirst: []bool{false, false}, wantErr: true},
		{name: "auto, server takes either: Basic", style: "", server: "", wantFirst: []bool{true, true}},
		{name: "auto, header-only server", style: "auto", server: "header", wantFirst: []bool{true, true}},
		// Probe: Basic refused, then the form; the form is kept.
		{name: "auto, body-only server", style: "AUTO", server: "body", wantFirst: []bool{true, false, false}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ts := newTokenServer(t, accepting(tt.server, "tok"))
			var before atomic.Int32
			o := newSource(t, ts, upstream.OAuth2Config{AuthStyle: tt.style,
				BeforeAuth: func(context.Context) error { before.Add(1); return nil }})
			for i := range 2 {
				_, err := o.Token(context.Background())
				if (err != nil) != tt.wantErr {
					t.Fatalf("Token %d: error %v, want error %t", i, err, tt.wantErr)
				}
			}
			reqs := ts.seen()
			var got []bool
			for _, r := range reqs {
				got = append(got, r.Basic)
				if r.Basic && (r.HasFormSecret || r.HasFormID) {
					t.Errorf("Basic request also has credentials in the form: %v", r.Form)
				}
				if !r.Basic && (r.Form.Get("client_id") != testClientID || r.Form.Get("client_secret") != testSecret) {
					t.Errorf("form request lacks the credentials: has id %t, secret %t", r.HasFormID, r.HasFormSecret)
				}
			}
			if !reflect.DeepEqual(got, tt.wantFirst) {
				t.Errorf("Basic per request = %v, want %v", got, tt.wantFirst)
			}
			if int(before.Load()) != len(reqs) {
				t.Errorf("BeforeAuth calls = %d for %d requests, want one per request", before.Load(), len(reqs))
			}
		})
	}
}

// TestOAuth2AutoProbe: only a 400 or 401 to Basic makes "auto" try the
// form; a failing endpoint gets one request per call, and a style is kept
// only once it worked.
func TestOAuth2AutoProbe(t *testing.T) {
	var status atomic.Int32
	status.Store(503)
	ts := newTokenServer(t, func(w http.ResponseWriter, r *http.Request) {
		switch status.Load() {
		case 503:
			answer(w, 503, `{"error":"server_error"}`)
		case 400:
			answer(w, 400, `{"error":"invalid_request"}`)
		default:
			accepting("body", "tok")(w, r)
		}
	})
	o := newSource(t, ts, upstream.OAuth2Config{})
	ctx := context.Background()
	if _, err := o.Token(ctx); err == nil || !upstream.IsRetryable(err) {
		t.Fatalf("Token error = %v, want a retryable 503", err)
	}
	if n := len(ts.seen()); n != 1 {
		t.Errorf("a 503 made %d requests, want 1", n)
	}
	status.Store(400)
	_, err := o.Token(ctx)
	var ue *upstream.Error
	if !errors.As(err, &ue) || ue.Status != 400 || upstream.IsRetryable(err) {
		t.Errorf("Token error = %v, want the form request's 400", err)
	}
	if reqs := ts.seen(); len(reqs) != 3 || !reqs[1].Basic || reqs[2].Basic {
		t.Errorf("a 400 made %d requests, want 2: Basic then the form", len(reqs)-1)
	}
	status.Store(200)
	for range 2 {
		if _, err := o.Token(ctx); err != nil {
			t.Fatalf("Token: %v", err)
		}
	}
	if reqs := ts.seen(); len(reqs) != 6 || !reqs[3].Basic || reqs[4].Basic || reqs[5].Basic {
		t.Errorf("requests = %d, want 6: after the failed probe, Basic and the form, then the form alone", len(reqs))
	}
}

func TestOAuth2Lifetimes(t *testing.T) {
	tests := []struct {
		name  string
		ctype string
		body  string
		want  time.Duration
	}{
		{"expires_in number", "application/json", `{"access_token":"t","expires_in":90}`, 90 * time.Second},
		{"expires_in fraction", "application/json", `{"access_token":"t","expires_in":1.5}`, 1500 * time.Millisecond},
		{"expires_in string", "application/json", `{"access_token":"t","expires_in":"600"}`, 10 * time.Minute},
		{"expires_in missing", "application/json", `{"access_token":"t","token_type":"Bearer"}`, 33 * time.Minute},
		{"expires_in null", "application/json", `{"access_token":"t","expires_in":null}`, 33 * time.Minute},
		{"expires_in of 24h", "application/json", `{"access_token":"t","expires_in":86400}`, 24 * time.Hour},
		{"no Content-Type", "", `{"access_token":"t","expires_in":60}`, time.Minute},
		{"form answer", "application/x-www-form-urlencoded; charset=utf-8", `access_token=t&expires_in=120&token_type=bearer`, 2 * time.Minute},
		{"form answer without expires_in", "application/x-www-form-urlencoded", `access_token=t`, 33 * time.Minute},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ts := newTokenServer(t, func(w http.ResponseWriter, r *http.Request) {
				if tt.ctype != "" {
					w.Header().Set("Content-Type", tt.ctype)
				} else {
					w.Header()["Content-Type"] = nil
				}
				io.WriteString(w, tt.body)
			})
			o := newSource(t, ts, upstream.OAuth2Config{DefaultLifetime: 33 * time.Minute})
			tok, err := o.Token(context.Background())
			if err != nil {
				t.Fatalf("Token: %v", err)
			}
			if tok.Value != "t" || tok.Lifetime != tt.want {
				t.Errorf("Token = %q, %v; want \"t\", %v", tok.Value, tok.Lifetime, tt.want)
			}
		})
	}
}

func TestOAuth2Failures(t *testing.T) {
	at := func(d time.Duration) string { return rdptest.T0.Add(d).Format(http.TimeFormat) }
	type hdr = map[string]string
	tests := []struct {
		name    string
		status  int
		header  hdr
		body    string
		cfg     upstream.OAuth2Config
		wantSt  int
		wantCd  string
		wantRe  bool
		wantRA  time.Duration
		wantIs  error
		wantIn  string // in the error text
		wantOut string // not in the error text
	}{
		// Refusals: an operator must act.
		{name: "401 invalid_client", status: 401, body: `{"error":"invalid_client","error_description":"bad secret"}`,
			wantSt: 401, wantCd: "invalid_client", wantIn: "upstream: token: status 401: invalid_client", wantOut: "bad secret"},
		{name: "400 invalid_grant", status: 400, body: `{"error":"invalid_grant"}`, wantSt: 400, wantCd: "invalid_grant"},
		{name: "400 unauthorized_client", status: 400, body: `{"error":"unauthorized_client"}`, wantSt: 400, wantCd: "unauthorized_client"},
		{name: "400 invalid_scope", status: 400, body: `{"error":"invalid_scope"}`, wantSt: 400, wantCd: "invalid_scope"},
		{name: "403 access_denied", status: 403, body: `{"error":"access_denied"}`, wantSt: 403, wantCd: "access_denied"},
		{name: "401 without a body", status: 401, wantSt: 401},
		{name: "404", status: 404, body: `<html>not found</html>`, wantSt: 404},
		{name: "redirect is not followed", status: 302, header: hdr{"Location": "https://elsewhere.example/token"}, wantSt: 302},

		// Come back later.
		{name: "429 with Retry-After seconds", status: 429, header: hdr{"Retry-After": "7"}, body: `{"error":"slow_down"}`,
			wantSt: 429, wantCd: "slow_down", wantRe: true, wantRA: 7 * time.Second},
		{name: "503 with Retry-After date", status: 503, header: hdr{"Retry-After": at(90 * time.Second)},
			body: `{"error":"temporarily_unavailable"}`, wantSt: 503, wantCd: "temporarily_unavailable", wantRe: true, wantRA: 90 * time.Second},
		{name: "503 with a past Retry-After", status: 503, header: hdr{"Retry-After": at(-time.Minute)}, wantSt: 503, wantRe: true},
		{name: "Retry-After capped as the RDP Client's", status: 429, header: hdr{"Retry-After": "999999"},
			wantSt: 429, wantRe: true, wantRA: upstream.MaxLifetime},
		{name: "500 HTML page", status: 500, header: hdr{"Content-Type": "text/html"}, body: `<html><body>Oops</body></html>`,
			wantSt: 500, wantRe: true, wantOut: "Oops"},
		{name: "408", status: 408, wantSt: 408, wantRe: true},
		{name: "400 temporarily_unavailable", status: 400, body: `{"error":"temporarily_unavailable"}`,
			wantSt: 400, wantCd: "temporarily_unavailable", wantRe: true},
		{name: "gateway-style error", status: 502, body: `{"error":{"code":"502","message":"upstream down"}}`,
			wantSt: 502, wantCd: "upstream down", wantRe: true},

		// A 2xx that is no token: the endpoint misbehaves.
		{name: "200 HTML page", status: 200, header: hdr{"Content-Type": "text/html"}, body: `<html>maintenance</html>`,
			wantSt: 200, wantRe: true, wantIs: upstream.ErrMalformed},
		{name: "200 empty", status: 200, wantSt: 200, wantRe: true, wantIs: upstream.ErrMalformed},
		{name: "200 truncated JSON", status: 200, body: `{"access_token":"abc`, wantSt: 200, wantRe: true, wantIs: upstream.ErrMalformed, wantOut: "abc"},
		{name: "200 JSON array", status: 200, body: `["abc"]`, wantSt: 200, wantRe: true, wantIs: upstream.ErrMalformed},
		{name: "200 without access_token", status: 200, body: `{"token_type":"Bearer","expires_in":3600}`,
			wantSt: 200, wantRe: true, wantIs: upstream.ErrInvalidToken, wantIn: "no access_token"},
		{name: "200 access_token not a string", status: 200, body: `{"access_token":42}`,
			wantSt: 200, wantRe: true, wantIs: upstream.ErrMalformed},
		{name: "200 empty access_token", status: 200, body: `{"access_token":""}`, wantSt: 200, wantRe: true, wantIs: upstream.ErrInvalidToken},
		{name: "200 token with a space", status: 200, body: `{"access_token":"LEAK ME","expires_in":60}`,
			wantSt: 200, wantRe: true, wantIs: upstream.ErrInvalidToken, wantOut: "LEAK"},
		{name: "200 token with a control character", status: 200, body: `{"access_token":"LEAK\u0007ME","expires_in":60}`,
			wantSt: 200, wantRe: true, wantIs: upstream.ErrInvalidToken, wantOut: "LEAK"},
		{name: "200 token over 8 KiB", status: 200, body: `{"access_token":"` + strings.Repeat("a", 8<<10+1) + `"}`,
			wantSt: 200, wantRe: true, wantIs: upstream.ErrInvalidToken, wantOut: "aaaa"},
		{name: "200 expires_in 0", status: 200, body: `{"access_token":"LEAKME","expires_in":0}`,
			wantSt: 200, wantRe: true, wantIs: upstream.ErrInvalidExpiry, wantIn: "expires_in", wantOut: "LEAKME"},
		{name: "200 expires_in negative string", status: 200, body: `{"access_token":"t","expires_in":"-5"}`,
			wantSt: 200, wantRe: true, wantIs: upstream.ErrInvalidExpiry},
		{name: "200 expires_in over 24h", status: 200, body: `{"access_token":"t","expires_in":86401}`,
			wantSt: 200, wantRe: true, wantIs: upstream.ErrInvalidExpiry},
		{name: "200 expires_in not a number", status: 200, body: `{"access_token":"t","expires_in":"soon"}`,
			wantSt: 200, wantRe: true, wantIs: upstream.ErrMalformed},
		{name: "200 form answer with a bad expires_in", status: 200, header: hdr{"Content-Type": "application/x-www-form-urlencoded"},
			body: `access_token=t&expires_in=-1`, wantSt: 200, wantRe: true, wantIs: upstream.ErrInvalidExpiry},
		{name: "200 with an OAuth2 refusal", status: 200, body: `{"error":"invalid_client"}`,
			wantSt: 200, wantCd: "invalid_client", wantIs: upstream.ErrMalformed},
		{name: "200 with an unknown error", status: 200, body: `{"error":"weird","access_token":"t"}`,
			wantSt: 200, wantCd: "weird", wantRe: true, wantIs: upstream.ErrMalformed},
		{name: "200 body over MaxBodyBytes", status: 200, body: `{"access_token":"t","pad":"` + strings.Repeat("x", 2000) + `"}`,
			cfg: upstream.OAuth2Config{MaxBodyBytes: 1000}, wantSt: 200, wantRe: true, wantIs: upstream.ErrMalformed, wantIn: "over 1000 bytes"},
		{name: "200 body over the default 64 KiB", status: 200, body: `{"access_token":"t","pad":"` + strings.Repeat("x", 70<<10) + `"}`,
			wantSt: 200, wantRe: true, wantIs: upstream.ErrMalformed},
		{name: "error body over MaxBodyBytes keeps its status", status: 503, body: `{"error":"x","pad":"` + strings.Repeat("x", 2000) + `"}`,
			cfg: upstream.OAuth2Config{MaxBodyBytes: 1000}, wantSt: 503, wantRe: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ts := newTokenServer(t, func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "application/json")
				for k, v := range tt.header {
					w.Header().Set(k, v)
				}
				w.WriteHeader(tt.status)
				io.WriteString(w, tt.body)
			})
			cfg := tt.cfg
			cfg.AuthStyle = "header" // one request per call
			cfg.Clock = clocktest.New(rdptest.T0)
			o := newSource(t, ts, cfg)
			tok, err := o.Token(context.Background())
			if tok != (upstream.Token{}) {
				t.Errorf("Token = %+v, want the zero Token", tok)
			}
			var ue *upstream.Error
			if !errors.As(err, &ue) {
				t.Fatalf("error = %v, want *upstream.Error", err)
			}
			if ue.Op != upstream.OpToken || ue.Status != tt.wantSt || ue.Code != tt.wantCd {
				t.Errorf("Op, Status, Code = %q, %d, %q; want token, %d, %q", ue.Op, ue.Status, ue.Code, tt.wantSt, tt.wantCd)
			}
			if got := upstream.IsRetryable(err); got != tt.wantRe {
				t.Errorf("IsRetryable = %t, want %t (%v)", got, tt.wantRe, err)
			}
			if got := upstream.RetryAfter(err); got != tt.wantRA {
				t.Errorf("RetryAfter = %v, want %v", got, tt.wantRA)
			}
			if tt.wantIs != nil && !errors.Is(err, tt.wantIs) {
				t.Errorf("error = %v, want errors.Is %v", err, tt.wantIs)
			}
			text := err.Error()
			if tt.wantIn != "" && !strings.Contains(text, tt.wantIn) {
				t.Errorf("error %q lacks %q", text, tt.wantIn)
			}
			if tt.wantOut != "" && strings.Contains(text, tt.wantOut) {
				t.Errorf("error %q contains %q", text, tt.wantOut)
			}
			if n := len(ts.seen()); n != 1 {
				t.Errorf("%d requests, want 1", n)
			}
		})
	}
}

func TestOAuth2NoAnswer(t *testing.T) {
	t.Run("timeout", func(t *testing.T) {
		ts := newTokenServer(t, func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() })
		o := newSource(t, ts, upstream.OAuth2Config{Timeout: 50 * time.Millisecond})
		start := time.Now()
		_, err := o.Token(context.Background())
		var ue *upstream.Error
		if !errors.As(err, &ue) || ue.Op != upstream.OpToken || ue.Status != 0 || !ue.Retryable || !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("error = %v, want a retryable token error with DeadlineExceeded", err)
		}
		if took := time.Since(start); took > 2*time.Second {
			t.Errorf("took %v, want about the 50ms limit", took)
		}
		if n := len(ts.seen()); n != 1 {
			t.Errorf("%d requests, want 1 (no probe after a timeout)", n)
		}
	})
	t.Run("slow body", func(t *testing.T) {
		ts := newTokenServer(t, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(200)
			io.WriteString(w, `{"access_token":"t",`)
			w.(http.Flusher).Flush()
			<-r.Context().Done()
		})
		o := newSource(t, ts, upstream.OAuth2Config{Timeout: 100 * time.Millisecond})
		_, err := o.Token(context.Background())
		var ue *upstream.Error
		if !errors.As(err, &ue) || ue.Status != 200 || !ue.Retryable {
			t.Errorf("error = %v, want a retryable error with status 200", err)
		}
	})
	t.Run("caller's context", func(t *testing.T) {
		ts := newTokenServer(t, accepting("", "t"))
		o := newSource(t, ts, upstream.OAuth2Config{})
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		_, err := o.Token(ctx)
		if !errors.Is(err, context.Canceled) || !upstream.IsRetryable(err) {
			t.Errorf("error = %v, want retryable context.Canceled", err)
		}
	})
	t.Run("connection refused, the URL's query left out", func(t *testing.T) {
		ts := newTokenServer(t, accepting("", "t"))
		o := newSource(t, ts, upstream.OAuth2Config{TokenURL: ts.URL + "/token?key=QUERYSECRET"})
		ts.Close()
		_, err := o.Token(context.Background())
		var ue *upstream.Error
		if !errors.As(err, &ue) || ue.Status != 0 || !ue.Retryable {
			t.Fatalf("error = %v, want a retryable error without status", err)
		}
		if text := err.Error(); strings.Contains(text, "QUERYSECRET") || !strings.Contains(text, ts.URL+"/token") {
			t.Errorf("error %q: want the endpoint without its query", text)
		}
	})
}

// TestOAuth2DatedFromSend has every answer arrive a while after the
// request: the token's life is counted from when its request was sent.
func TestOAuth2DatedFromSend(t *testing.T) {
	const delay = 3 * time.Second
	clk := clocktest.New(rdptest.T0)
	var issued []time.Time // when the server issued each token, on clk
	var mu sync.Mutex
	ts := newTokenServer(t, func(w http.ResponseWriter, r *http.Request) {
		clk.Advance(delay) // the request takes delay to arrive
		mu.Lock()
		issued = append(issued, clk.Now())
		mu.Unlock()
		if !authenticated(r, "body") {
			clk.Advance(delay)
			answer(w, 401, `{"error":"invalid_client"}`)
			return
		}
		answer(w, 200, `{"access_token":"t","expires_in":60}`)
		clk.Advance(delay) // and the answer as long to come back
	})
	o := newSource(t, ts, upstream.OAuth2Config{Clock: clk, AuthStyle: "body"})
	tok, err := o.Token(context.Background())
	if err != nil {
		t.Fatalf("Token: %v", err)
	}
	if !tok.Sent.Equal(rdptest.T0) || tok.Lifetime != time.Minute {
		t.Errorf("Sent, Lifetime = %v, %v; want %v (before the answer at %v), 1m", tok.Sent, tok.Lifetime, rdptest.T0, clk.Now())
	}
	if end := tok.Sent.Add(tok.Lifetime); !end.Before(issued[0].Add(time.Minute)) {
		t.Errorf("Sent+Lifetime = %v, not before the true expiry %v", end, issued[0].Add(time.Minute))
	}

	// With an "auto" probe the token is dated from the request that got it.
	o = newSource(t, ts, upstream.OAuth2Config{Clock: clk})
	start := clk.Now()
	if tok, err = o.Token(context.Background()); err != nil {
		t.Fatalf("Token: %v", err)
	}
	if want := start.Add(2 * delay); !tok.Sent.Equal(want) {
		t.Errorf("Sent = %v, want %v: when the form request was sent, after the refused Basic one", tok.Sent, want)
	}
}

// TestOAuth2NoSecrets has endpoints echo what they got into their answers
// and checks that no error or log line repeats the secret or a token.
func TestOAuth2NoSecrets(t *testing.T) {
	const leaked = "LEAKED-TOKEN-XYZ"
	echo := func(status int) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			answer(w, status, fmt.Sprintf(`{"error":%q,"error_description":%q}`,
				"invalid_client "+r.PostForm.Get("client_secret")+r.Header.Get("Authorization"), r.PostForm.Encode()+r.Header.Get("Authorization")))
		}
	}
	tests := []struct {
		name  string
		style string
		h     http.HandlerFunc
	}{
		{"401 echoes the form", "body", echo(401)},
		{"401 echoes the Basic header", "header", echo(401)},
		{"500 echoes the form", "body", echo(500)},
		{"200 error echoes the Basic header", "header", echo(200)},
		{"auto probe, both echoed", "auto", echo(401)},
		{"200 echoes the form as the code", "body", func(w http.ResponseWriter, r *http.Request) {
			answer(w, 200, fmt.Sprintf(`{"error":%q}`, r.PostForm.Encode()))
		}},
		{"gateway error echoes the header", "header", func(w http.ResponseWriter, r *http.Request) {
			answer(w, 502, fmt.Sprintf(`{"error":{"code":%q,"message":%q}}`, r.Header.Get("Authorization"), r.Header.Get("Authorization")))
		}},
		{"truncated token", "body", func(w http.ResponseWriter, r *http.Request) {
			answer(w, 200, `{"access_token":"`+leaked)
		}},
		{"token with a control character", "body", func(w http.ResponseWriter, r *http.Request) {
			answer(w, 200, `{"access_token":"`+leaked+`\u0001"}`)
		}},
		{"token with a bad expiry", "body", func(w http.ResponseWriter, r *http.Request) {
			answer(w, 200, `{"access_token":"`+leaked+`","expires_in":"`+leaked+`"}`)
		}},
		{"HTML page echo", "body", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/html")
			w.WriteHeader(200)
			io.WriteString(w, "<html>"+leaked+r.PostForm.Encode()+"</html>")
		}},
	}
	basicValue := base64.StdEncoding.EncodeToString([]byte(url.QueryEscape(testClientID) + ":" + url.QueryEscape(testSecret)))
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ts := newTokenServer(t, tt.h)
			var logs bytes.Buffer
			o := newSource(t, ts, upstream.OAuth2Config{AuthStyle: tt.style,
				Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
			_, err := o.Token(context.Background())
			if err == nil {
				t.Fatal("Token succeeded, want an error")
			}
			text := fmt.Sprintf("%v\n%+v\n%#v\n%s", err, err, err, logs.String())
			for _, s := range []string{testSecret, url.QueryEscape(testSecret), basicValue, leaked} {
				if strings.Contains(text, s) {
					t.Errorf("error or logs contain %q:\n%s", s, text)
				}
			}
		})
	}

	t.Run("success logs a fingerprint only", func(t *testing.T) {
		ts := newTokenServer(t, accepting("body", leaked))
		var logs bytes.Buffer
		o := newSource(t, ts, upstream.OAuth2Config{
			Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
		for range 2 {
			if _, err := o.Token(context.Background()); err != nil {
				t.Fatalf("Token: %v", err)
			}
		}
		if !strings.Contains(logs.String(), "sha256:") {
			t.Errorf("logs name no token by fingerprint:\n%s", logs.String())
		}
		for _, s := range []string{testSecret, url.QueryEscape(testSecret), basicValue, leaked} {
			if strings.Contains(logs.String(), s) {
				t.Errorf("logs contain %q:\n%s", s, logs.String())
			}
		}
	})
}

func TestOAuth2BeforeAuth(t *testing.T) {
	ts := newTokenServer(t, accepting("", "t"))
	refused := &upstream.Error{Op: upstream.OpAuth, Retryable: true, RetryAfter: time.Second, Err: errors.New("budget")}
	var calls int
	o := newSource(t, ts, upstream.OAuth2Config{BeforeAuth: func(context.Context) error { calls++; return refused }})
	_, err := o.Token(context.Background())
	if err != refused {
		t.Fatalf("error = %v, want the BeforeAuth error as is", err)
	}
	if calls != 1 || len(ts.seen()) != 0 {
		t.Errorf("BeforeAuth calls, requests = %d, %d; want 1, 0", calls, len(ts.seen()))
	}

	// A refusal of the probe's second request stops it there.
	ts2 := newTokenServer(t, accepting("body", "t"))
	calls = 0
	o = newSource(t, ts2, upstream.OAuth2Config{BeforeAuth: func(context.Context) error {
		if calls++; calls == 2 {
			return refused
		}
		return nil
	}})
	if _, err := o.Token(context.Background()); err != refused {
		t.Fatalf("error = %v, want the BeforeAuth error as is", err)
	}
	if n := len(ts2.seen()); n != 1 {
		t.Errorf("%d requests, want 1: the probe's second was refused", n)
	}
}

func TestNewOAuth2(t *testing.T) {
	good := upstream.OAuth2Config{TokenURL: "https://idp.example/oauth2/token", ClientID: "id", ClientSecret: "hunter2"}
	with := func(f func(*upstream.OAuth2Config)) upstream.OAuth2Config { c := good; f(&c); return c }
	tests := []struct {
		name string
		cfg  upstream.OAuth2Config
		want []string // each in the error; none for success
	}{
		{"minimal", good, nil},
		{"everything", with(func(c *upstream.OAuth2Config) {
			c.Scopes, c.EndpointParams, c.AuthStyle = []string{"a", "b:c"}, url.Values{"audience": {"x"}}, "Body"
			c.DefaultLifetime, c.Timeout, c.MaxBodyBytes = time.Hour, time.Second, 1
			c.HTTPClient, c.Registerer = &http.Client{}, prometheus.NewRegistry()
		}), nil},
		{"empty: every required field named", upstream.OAuth2Config{}, []string{"TokenURL is required", "ClientID is required", "ClientSecret is required"}},
		{"relative URL", with(func(c *upstream.OAuth2Config) { c.TokenURL = "idp.example/token" }), []string{"TokenURL"}},
		{"ftp URL", with(func(c *upstream.OAuth2Config) { c.TokenURL = "ftp://idp.example/token" }), []string{"TokenURL"}},
		{"URL with user", with(func(c *upstream.OAuth2Config) { c.TokenURL = "https://u:hunter2@idp.example/token" }), []string{"TokenURL"}},
		{"URL with fragment", with(func(c *upstream.OAuth2Config) { c.TokenURL = "https://idp.example/token#x" }), []string{"TokenURL"}},
		{"scope with a space", with(func(c *upstream.OAuth2Config) { c.Scopes = []string{"ok", "a b", ""} }), []string{"Scopes[1]", "Scopes[2]"}},
		{"reserved params", with(func(c *upstream.OAuth2Config) {
			c.EndpointParams = url.Values{"scope": {"x"}, "client_secret": {"hunter2"}, "grant_type": {"password"}, "": {"x"}}
		}), []string{`"scope"`, `"client_secret"`, `"grant_type"`, "empty key"}},
		{"unknown auth style", with(func(c *upstream.OAuth2Config) { c.AuthStyle = "bearer" }), []string{"AuthStyle"}},
		{"negative lifetime", with(func(c *upstream.OAuth2Config) { c.DefaultLifetime = -time.Second }), []string{"DefaultLifetime"}},
		{"absurd lifetime", with(func(c *upstream.OAuth2Config) { c.DefaultLifetime = 25 * time.Hour }), []string{"DefaultLifetime"}},
		{"negative timeout", with(func(c *upstream.OAuth2Config) { c.Timeout = -1 }), []string{"Timeout"}},
		{"negative body cap", with(func(c *upstream.OAuth2Config) { c.MaxBodyBytes = -1 }), []string{"MaxBodyBytes"}},
		{"RootCAs with an HTTPClient", with(func(c *upstream.OAuth2Config) {
			c.HTTPClient, c.RootCAs = &http.Client{}, x509.NewCertPool()
		}), []string{"RootCAs"}},
		{"all at once", with(func(c *upstream.OAuth2Config) {
			c.TokenURL, c.ClientSecret, c.AuthStyle, c.Timeout = "nope", "", "x", -1
		}), []string{"TokenURL", "ClientSecret", "AuthStyle", "Timeout"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o, err := upstream.NewOAuth2(tt.cfg)
			if tt.want == nil {
				if err != nil || o == nil {
					t.Errorf("NewOAuth2 = %v, %v; want a source", o, err)
				}
				return
			}
			if err == nil {
				t.Fatalf("NewOAuth2 succeeded, want an error naming %q", tt.want)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not name %q", err, w)
				}
			}
			for _, line := range strings.Split(err.Error(), "\n") {
				if !strings.HasPrefix(line, "upstream: OAuth2Config.") {
					t.Errorf("error line %q lacks the prefix", line)
				}
			}
			if strings.Contains(err.Error(), "hunter2") {
				t.Errorf("error %q repeats a secret", err)
			}
		})
	}
}

// TestOAuth2Metrics: calls are timed as endpoint "token", in the RDP
// Client's histogram when both share a registry.
func TestOAuth2Metrics(t *testing.T) {
	r := rdptest.New(t, fakerdp.Config{}, nil)
	reg := prometheus.NewRegistry()
	c := r.Client(t, upstream.Config{Registerer: reg})
	own := &http.Client{Timeout: time.Second}
	var status atomic.Int32
	status.Store(200)
	ts := newTokenServer(t, func(w http.ResponseWriter, req *http.Request) {
		if s := status.Load(); s != 200 {
			answer(w, int(s), `{"error":"invalid_client"}`)
			return
		}
		accepting("", "t")(w, req)
	})
	o := newSource(t, ts, upstream.OAuth2Config{Registerer: reg, HTTPClient: own, TokenURL: ts.URL + "/token?x=1"})
	ctx := context.Background()
	if _, err := c.Token(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := o.Token(ctx); err != nil {
		t.Fatal(err)
	}
	status.Store(401)
	if _, err := o.Token(ctx); err == nil {
		t.Fatal("want the 401 to fail")
	}
	ts.Close()
	if _, err := o.Token(ctx); err == nil {
		t.Fatal("want a closed server to fail")
	}
	want := `
tokenkeeper_upstream_request_duration_seconds_count{code="200",endpoint="auth_v2"} 1
tokenkeeper_upstream_request_duration_seconds_count{code="200",endpoint="liveness"} 1
tokenkeeper_upstream_request_duration_seconds_count{code="200",endpoint="token"} 1
tokenkeeper_upstream_request_duration_seconds_count{code="401",endpoint="token"} 1
tokenkeeper_upstream_request_duration_seconds_count{code="error",endpoint="token"} 1
`
	got := countLines(t, reg)
	for _, line := range strings.Split(strings.TrimSpace(want), "\n") {
		if !strings.Contains(got, line) {
			t.Errorf("metrics lack %s\ngot:\n%s", line, got)
		}
	}
	if own.Transport != nil {
		t.Errorf("the caller's HTTPClient was modified")
	}
	// A second source on the same registry shares the histogram too.
	if _, err := upstream.NewOAuth2(upstream.OAuth2Config{TokenURL: "https://x.example/t", ClientID: "a", ClientSecret: "b", Registerer: reg}); err != nil {
		t.Errorf("second NewOAuth2 on one registry: %v", err)
	}
}

// TestOAuth2AgainstFake runs the source against fakerdp's OAuth2 endpoint.
func TestOAuth2AgainstFake(t *testing.T) {
	for _, style := range []string{"auto", "header", "body"} {
		t.Run(style, func(t *testing.T) {
			r := rdptest.New(t, fakerdp.Config{Knobs: fakerdp.Knobs{TokenLifetime: 20 * time.Minute, ExpiresInString: style == "body"}}, nil)
			o, err := upstream.NewOAuth2(upstream.OAuth2Config{
				TokenURL: r.Srv.URL + fakerdp.OAuth2TokenPath, ClientID: fakerdp.ClientID, ClientSecret: fakerdp.ClientSecret,
				Scopes: []string{"trapi"}, EndpointParams: url.Values{"resource": {"urn:x"}}, AuthStyle: style,
				Clock: r.Clock, Logger: discardLogger(),
			})
			if err != nil {
				t.Fatal(err)
			}
			tok, err := o.Token(context.Background())
			if err != nil {
				t.Fatalf("Token: %v", err)
			}
			s := r.Fake.Stats()
			if len(s.OAuth2Tokens) != 1 || tok.Value != s.OAuth2Tokens[0].Token || tok.Lifetime != 20*time.Minute ||
				!tok.Sent.Add(tok.Lifetime).Equal(s.OAuth2Tokens[0].ExpiresAt) {
				t.Errorf("Token = %v for %v; want the fake's token, expiring when the fake says", tok.Sent, tok.Lifetime)
			}
			wantAuth := style
			if style == "auto" {
				wantAuth = "header"
			}
			if q := s.OAuth2Requests[0]; q.Auth != wantAuth || q.Scope != "trapi" || !reflect.DeepEqual(q.Resource, []string{"urn:x"}) {
				t.Errorf("request = %+v, want auth %s, scope trapi, resource urn:x", q, wantAuth)
			}

			r.Fake.Set(fakerdp.Knobs{Expired: true})
			if _, err := o.Token(context.Background()); !errors.Is(err, upstream.ErrInvalidExpiry) || !upstream.IsRetryable(err) {
				t.Errorf("Token of an expired token: %v, want retryable ErrInvalidExpiry", err)
			}
			r.Fake.Set(fakerdp.Knobs{LivenessStatus: 401})
			if _, err := o.Token(context.Background()); upstream.IsRetryable(err) || !strings.Contains(fmt.Sprint(err), "invalid_client") {
				t.Errorf("Token with the fake refusing: %v, want invalid_client, not retryable", err)
			}
		})
	}
}

// TestOAuth2Concurrent runs Token calls, the first ones probing; it is for
// -race.
func TestOAuth2Concurrent(t *testing.T) {
	ts := newTokenServer(t, accepting("body", "t"))
	o := newSource(t, ts, upstream.OAuth2Config{})
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 5 {
				if _, err := o.Token(context.Background()); err != nil {
					t.Errorf("Token: %v", err)
				}
			}
		})
	}
	wg.Wait()
	// Each call probes at most once; after the first success, calls go
	// straight to the form.
	if n := len(ts.seen()); n < 40 || n > 48 {
		t.Errorf("%d requests for 40 calls, want 40 plus at most one probe per goroutine", n)
	}
}

func ExampleOAuth2_Token() {
	fake := fakerdp.New(fakerdp.Config{})
	srv := httptest.NewServer(fake)
	defer srv.Close()

	src, err := upstream.NewOAuth2(upstream.OAuth2Config{
		TokenURL:       srv.URL + fakerdp.OAuth2TokenPath,
		ClientID:       fakerdp.ClientID,
		ClientSecret:   fakerdp.ClientSecret,
		Scopes:         []string{"reports:read"},
		EndpointParams: url.Values{"audience": {"https://api.example"}},
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	tok, err := src.Token(context.Background())
	if err != nil {
		fmt.Println(err)
		return
	}
	req := fake.Stats().OAuth2Requests[0]
	fmt.Println(strings.HasPrefix(tok.Value, fakerdp.OAuth2Prefix), tok.Lifetime)
	fmt.Println(req.Auth, req.Scope, req.Audience)
	// Output:
	// true 1h0m0s
	// header reports:read [https://api.example]
}
