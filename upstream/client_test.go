package upstream_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokenkeeper/tokenkeeper/clock"
	"github.com/tokenkeeper/tokenkeeper/internal/clocktest"
	"github.com/tokenkeeper/tokenkeeper/internal/fakerdp"
	"github.com/tokenkeeper/tokenkeeper/internal/rdptest"
	"github.com/tokenkeeper/tokenkeeper/upstream"
)

const livenessPath = upstream.DefaultLivenessPath

func TestTokenV2(t *testing.T) {
	for _, method := range []string{"POST", "GET"} {
		t.Run(method, func(t *testing.T) {
			r := rdptest.New(t, fakerdp.Config{}, nil)
			c := r.Client(t, upstream.Config{LivenessMethod: method})
			ctx := context.Background()

			tok, err := c.Token(ctx)
			if err != nil {
				t.Fatalf("Token: %v", err)
			}
			if !strings.HasPrefix(tok.Value, fakerdp.LivenessPrefix) {
				t.Errorf("Value = %q, want prefix %q", tok.Value, fakerdp.LivenessPrefix)
			}
			if got, want := tok.Lifetime, time.Hour; got != want {
				t.Errorf("Lifetime = %v, want %v", got, want)
			}
			if got, want := tok.Sent, rdptest.T0; !got.Equal(want) {
				t.Errorf("Sent = %v, want %v", got, want)
			}

			// The access token (10m) is reused while valid with a margin.
			r.Clock.Advance(9 * time.Minute)
			tok2, err := c.Token(ctx)
			if err != nil {
				t.Fatalf("second Token: %v", err)
			}
			if tok2.Value == tok.Value {
				t.Errorf("second Token returned the first token again")
			}
			if got, want := r.Fake.Stats().AuthCalls.V2, 1; got != want {
				t.Errorf("auth calls within the access lifetime = %d, want %d", got, want)
			}

			r.Clock.Advance(time.Minute)
			if _, err := c.Token(ctx); err != nil {
				t.Fatalf("third Token: %v", err)
			}
			s := r.Fake.Stats()
			if got, want := s.AuthCalls, (fakerdp.AuthCalls{V2: 2}); got != want {
				t.Errorf("auth calls after expiry = %+v, want %+v", got, want)
			}
			if got, want := s.LivenessOK, 3; got != want {
				t.Errorf("liveness_ok = %d, want %d", got, want)
			}
		})
	}
}

func TestTokenV1RefreshAndFallback(t *testing.T) {
	r := rdptest.New(t, fakerdp.Config{}, nil)
	c := r.Client(t, upstream.Config{Auth: "v1"})
	ctx := context.Background()

	steps := []struct {
		name   string
		before func()
		want   fakerdp.AuthCalls
	}{
		{"first sign-on uses the password", func() {}, fakerdp.AuthCalls{V1Password: 1}},
		{"valid access token is reused", func() { r.Clock.Advance(time.Minute) }, fakerdp.AuthCalls{V1Password: 1}},
		{"expired access token is refreshed", func() { r.Clock.Advance(10 * time.Minute) }, fakerdp.AuthCalls{V1Password: 1, V1Refresh: 1}},
		{"rotated refresh token works", func() { r.Clock.Advance(10 * time.Minute) }, fakerdp.AuthCalls{V1Password: 1, V1Refresh: 2}},
		{"refused refresh falls back to the password", func() {
			r.Fake.Revoke()
			r.Clock.Advance(10 * time.Minute)
		}, fakerdp.AuthCalls{V1Password: 2, V1Refresh: 3}},
	}
	for _, s := range steps {
		s.before()
		tok, err := c.Token(ctx)
		if err != nil {
			t.Fatalf("%s: Token: %v", s.name, err)
		}
		if tok.Lifetime != time.Hour {
			t.Errorf("%s: Lifetime = %v, want %v", s.name, tok.Lifetime, time.Hour)
		}
		if got := r.Fake.Stats().AuthCalls; got != s.want {
			t.Errorf("%s: auth calls = %+v, want %+v", s.name, got, s.want)
		}
	}
}

func TestTokenReauthenticatesOnce(t *testing.T) {
	tests := []struct {
		name          string
		setup         func(*rdptest.RDP, *upstream.Client)
		wantErrStatus int // 0: success
		wantAuth      int
		wantLiveness  int
	}{
		{
			name: "revoked access token",
			setup: func(r *rdptest.RDP, c *upstream.Client) {
				if _, err := c.Token(context.Background()); err != nil {
					t.Fatalf("first Token: %v", err)
				}
				r.Fake.Revoke()
			},
			wantAuth:     2,
			wantLiveness: 3, // ok, 401, ok
		},
		{
			name: "401 even with a fresh access token",
			setup: func(r *rdptest.RDP, c *upstream.Client) {
				r.Fake.Set(fakerdp.Knobs{LivenessStatus: http.StatusUnauthorized})
			},
			wantErrStatus: http.StatusUnauthorized,
			wantAuth:      2,
			wantLiveness:  2,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := rdptest.New(t, fakerdp.Config{}, nil)
			c := r.Client(t, upstream.Config{})
			tt.setup(r, c)

			tok, err := c.Token(context.Background())
			if tt.wantErrStatus == 0 {
				if err != nil {
					t.Fatalf("Token: %v", err)
				}
			} else {
				var ue *upstream.Error
				if !errors.As(err, &ue) {
					t.Fatalf("Token error = %v, want *upstream.Error", err)
				}
				if ue.Status != tt.wantErrStatus || ue.Retryable || ue.Code != "token expired" {
					t.Errorf("error status, retryable, code = %d, %t, %q; want %d, false, \"token expired\"", ue.Status, ue.Retryable, ue.Code, tt.wantErrStatus)
				}
				if tok != (upstream.Token{}) {
					t.Errorf("Token = %+v with an error, want the zero Token", tok)
				}
			}
			s := r.Fake.Stats()
			if got, want := s.AuthCalls.V2, tt.wantAuth; got != want {
				t.Errorf("auth calls = %d, want %d", got, want)
			}
			if got, want := s.LivenessCalls, tt.wantLiveness; got != want {
				t.Errorf("liveness calls = %d, want %d", got, want)
			}
		})
	}
}

// body answers every request with status and body.
func body(status int, b string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		fmt.Fprint(w, b)
	}
}

// TestSignOnAcceptsFractionalExpiresIn: an auth answer's expires_in may be
// a number with a fraction or a string holding one, in auth v2 as in v1,
// as the liveness answer's may.
func TestSignOnAcceptsFractionalExpiresIn(t *testing.T) {
	for _, auth := range []upstream.AuthVersion{upstream.AuthV2, upstream.AuthV1} {
		for _, tt := range []struct {
			expiresIn string
			want      time.Duration
		}{
			{`20.0`, 20 * time.Second},
			{`20.5`, 20500 * time.Millisecond},
			{`"20.0"`, 20 * time.Second},
			{`20`, 20 * time.Second},
		} {
			t.Run(string(auth)+" "+tt.expiresIn, func(t *testing.T) {
				path := "/auth/oauth2/" + string(auth) + "/token"
				r := rdptest.New(t, fakerdp.Config{}, map[string]http.HandlerFunc{
					path: body(200, `{"access_token":"access-abc","token_type":"Bearer","expires_in":`+tt.expiresIn+`}`)})
				c := r.Client(t, upstream.Config{Auth: auth})
				tok, err := c.SignOn(context.Background())
				if err != nil {
					t.Fatalf("SignOn: %v", err)
				}
				if tok.Value != "access-abc" || tok.Lifetime != tt.want {
					t.Errorf("SignOn = %q for %v, want access-abc for %v", tok.Value, tok.Lifetime, tt.want)
				}
			})
		}
	}
}

func TestTokenFailures(t *testing.T) {
	tests := []struct {
		name    string
		auth    upstream.AuthVersion
		knobs   fakerdp.Knobs
		routes  map[string]http.HandlerFunc
		cfg     upstream.Config
		wantOp  upstream.Op
		wantSt  int
		wantRe  bool
		wantRA  time.Duration
		wantCd  string
		wantIs  error
		wantIs2 error
	}{
		// Liveness failures.
		{name: "liveness 500", knobs: fakerdp.Knobs{LivenessStatus: 500},
			wantOp: "liveness", wantSt: 500, wantRe: true, wantCd: "Internal Server Error"},
		{name: "liveness 503 with Retry-After seconds", knobs: fakerdp.Knobs{LivenessStatus: 503, RetryAfter: 7 * time.Second},
			wantOp: "liveness", wantSt: 503, wantRe: true, wantRA: 7 * time.Second, wantCd: "Service Unavailable"},
		{name: "liveness 429 with Retry-After seconds", knobs: fakerdp.Knobs{LivenessStatus: 429, RetryAfter: 1500 * time.Millisecond},
			wantOp: "liveness", wantSt: 429, wantRe: true, wantRA: 2 * time.Second, wantCd: "Too Many Requests"},
		{name: "liveness 429 with Retry-After date", routes: map[string]http.HandlerFunc{
			livenessPath: func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Retry-After", rdptest.T0.Add(90*time.Second).Format(http.TimeFormat))
				w.WriteHeader(http.StatusTooManyRequests)
			}},
			wantOp: "liveness", wantSt: 429, wantRe: true, wantRA: 90 * time.Second},
		{name: "liveness 403", knobs: fakerdp.Knobs{LivenessStatus: 403},
			wantOp: "liveness", wantSt: 403, wantCd: "Forbidden"},
		{name: "liveness 404", knobs: fakerdp.Knobs{LivenessStatus: 404},
			wantOp: "liveness", wantSt: 404, wantCd: "Not Found"},
		{name: "HTML page with 200", knobs: fakerdp.Knobs{HTML: true},
			wantOp: "liveness", wantSt: 200, wantRe: true, wantIs: upstream.ErrMalformed},
		{name: "HTML page with 502", knobs: fakerdp.Knobs{HTML: true, LivenessStatus: 502},
			wantOp: "liveness", wantSt: 502, wantRe: true},
		{name: "malformed JSON", knobs: fakerdp.Knobs{Malformed: true},
			wantOp: "liveness", wantSt: 200, wantRe: true, wantIs: upstream.ErrMalformed},
		{name: "expired token", knobs: fakerdp.Knobs{Expired: true},
			wantOp: "liveness", wantSt: 200, wantRe: true, wantIs: upstream.ErrInvalidExpiry},
		{name: "body over MaxBodyBytes", routes: map[string]http.HandlerFunc{
			livenessPath: body(200, `{"token":"abc","pad":"`+strings.Repeat("x", 2000)+`"}`)},
			cfg:    upstream.Config{MaxBodyBytes: 1000},
			wantOp: "liveness", wantSt: 200, wantRe: true, wantIs: upstream.ErrMalformed},
		{name: "body over the default 64 KiB", routes: map[string]http.HandlerFunc{
			livenessPath: body(200, `{"token":"abc","pad":"`+strings.Repeat("x", 70<<10)+`"}`)},
			wantOp: "liveness", wantSt: 200, wantRe: true, wantIs: upstream.ErrMalformed},
		{name: "control character in token", routes: map[string]http.HandlerFunc{
			livenessPath: body(200, `{"token":"abc\u0007def","expiresIn":3600}`)},
			wantOp: "liveness", wantSt: 200, wantRe: true, wantIs: upstream.ErrInvalidToken},
		{name: "space in token", routes: map[string]http.HandlerFunc{
			livenessPath: body(200, `{"token":"abc def"}`)},
			wantOp: "liveness", wantSt: 200, wantRe: true, wantIs: upstream.ErrInvalidToken},
		{name: "token over 8 KiB", routes: map[string]http.HandlerFunc{
			livenessPath: body(200, `{"token":"`+strings.Repeat("a", 8<<10+1)+`"}`)},
			wantOp: "liveness", wantSt: 200, wantRe: true, wantIs: upstream.ErrInvalidToken},
		{name: "empty token", routes: map[string]http.HandlerFunc{
			livenessPath: body(200, `{"token":"","expiresIn":3600}`)},
			wantOp: "liveness", wantSt: 200, wantRe: true, wantIs: upstream.ErrInvalidToken},
		{name: "absurd expires_in", routes: map[string]http.HandlerFunc{
			livenessPath: body(200, `{"token":"abc","expires_in":86401}`)},
			wantOp: "liveness", wantSt: 200, wantRe: true, wantIs: upstream.ErrInvalidExpiry},
		{name: "zero expiresIn", routes: map[string]http.HandlerFunc{
			livenessPath: body(200, `{"token":"abc","expiresIn":0}`)},
			wantOp: "liveness", wantSt: 200, wantRe: true, wantIs: upstream.ErrInvalidExpiry},
		{name: "negative expiresIn as string", routes: map[string]http.HandlerFunc{
			livenessPath: body(200, `{"token":"abc","expiresIn":"-5"}`)},
			wantOp: "liveness", wantSt: 200, wantRe: true, wantIs: upstream.ErrInvalidExpiry},
		{name: "timeout", knobs: fakerdp.Knobs{Latency: 2 * time.Second}, cfg: upstream.Config{Timeout: 20 * time.Millisecond},
			wantOp: "auth", wantRe: true, wantIs: context.DeadlineExceeded},
		{name: "liveness timeout", routes: map[string]http.HandlerFunc{
			livenessPath: func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() }},
			cfg:    upstream.Config{Timeout: 20 * time.Millisecond},
			wantOp: "liveness", wantRe: true, wantIs: context.DeadlineExceeded},

		// Auth v2 failures.
		{name: "v2 wrong secret", cfg: upstream.Config{ClientSecret: "wrong"},
			wantOp: "auth", wantSt: 401, wantCd: "invalid_client"},
		{name: "v2 403", knobs: fakerdp.Knobs{AuthStatus: 403},
			wantOp: "auth", wantSt: 403, wantCd: "access_denied"},
		{name: "v2 500", knobs: fakerdp.Knobs{AuthStatus: 500},
			wantOp: "auth", wantSt: 500, wantRe: true, wantCd: "server_error"},
		{name: "v2 429 with Retry-After", knobs: fakerdp.Knobs{AuthStatus: 429, RetryAfter: 3 * time.Second},
			wantOp: "auth", wantSt: 429, wantRe: true, wantRA: 3 * time.Second, wantCd: "server_error"},
		{name: "v2 HTML page with 200", routes: map[string]http.HandlerFunc{
			"/auth/oauth2/v2/token": func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "text/html")
				fmt.Fprint(w, "<html>maintenance</html>")
			}},
			wantOp: "auth", wantRe: true, wantIs: upstream.ErrMalformed},
		{name: "v2 absurd expires_in", routes: map[string]http.HandlerFunc{
			"/auth/oauth2/v2/token": body(200, `{"access_token":"abc","expires_in":100000}`)},
			wantOp: "auth", wantRe: true, wantIs: upstream.ErrInvalidExpiry},
		{name: "v2 absurd fractional expires_in", routes: map[string]http.HandlerFunc{
			"/auth/oauth2/v2/token": body(200, `{"access_token":"abc","expires_in":100000.5}`)},
			wantOp: "auth", wantRe: true, wantIs: upstream.ErrInvalidExpiry},
		{name: "v2 negative fractional expires_in", routes: map[string]http.HandlerFunc{
			"/auth/oauth2/v2/token": body(200, `{"access_token":"abc","expires_in":-1.5}`)},
			wantOp: "auth", wantRe: true, wantIs: upstream.ErrInvalidExpiry},
		{name: "v2 expires_in not a number", routes: map[string]http.HandlerFunc{
			"/auth/oauth2/v2/token": body(200, `{"access_token":"abc","expires_in":"soon"}`)},
			wantOp: "auth", wantRe: true, wantIs: upstream.ErrMalformed},
		{name: "v2 fractional expires_in, no access token", routes: map[string]http.HandlerFunc{
			"/auth/oauth2/v2/token": body(200, `{"expires_in":20.0}`)},
			wantOp: "auth", wantRe: true, wantIs: upstream.ErrMalformed},

		// Auth v1 failures.
		{name: "v1 wrong password", auth: "v1", cfg: upstream.Config{Password: "wrong"},
			wantOp: "auth", wantSt: 400, wantCd: "invalid_grant"},
		{name: "v1 wrong app key", auth: "v1", cfg: upstream.Config{ClientID: "other-app"},
			wantOp: "auth", wantSt: 401, wantCd: "invalid_client"},
		{name: "v1 503", auth: "v1", knobs: fakerdp.Knobs{AuthStatus: 503},
			wantOp: "auth", wantSt: 503, wantRe: true, wantCd: "server_error"},
		{name: "v1 HTML page with 200", auth: "v1", routes: map[string]http.HandlerFunc{
			"/auth/oauth2/v1/token": body(200, "<html>maintenance</html>")},
			wantOp: "auth", wantSt: 200, wantRe: true, wantIs: upstream.ErrMalformed},
		{name: "v1 expires_in not a number", auth: "v1", routes: map[string]http.HandlerFunc{
			"/auth/oauth2/v1/token": body(200, `{"access_token":"abc","expires_in":"soon"}`)},
			wantOp: "auth", wantSt: 200, wantRe: true, wantIs: upstream.ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := rdptest.New(t, fakerdp.Config{Knobs: tt.knobs}, tt.routes)
			cfg := tt.cfg
			cfg.Auth = tt.auth
			c := r.Client(t, cfg)

			tok, err := c.Token(context.Background())
			t.Log(err)
			if tok != (upstream.Token{}) {
				t.Errorf("Token = %+v, want the zero Token", tok)
			}
			var ue *upstream.Error
			if !errors.As(err, &ue) {
				t.Fatalf("error = %v, want *upstream.Error", err)
			}
			if ue.Op != tt.wantOp || ue.Status != tt.wantSt || ue.Code != tt.wantCd {
				t.Errorf("Op, Status, Code = %q, %d, %q; want %q, %d, %q", ue.Op, ue.Status, ue.Code, tt.wantOp, tt.wantSt, tt.wantCd)
			}
			if got, want := upstream.IsRetryable(err), tt.wantRe; got != want {
				t.Errorf("IsRetryable = %t, want %t (%v)", got, want, err)
			}
			if got, want := upstream.RetryAfter(err), tt.wantRA; got != want {
				t.Errorf("RetryAfter = %v, want %v", got, want)
			}
			if tt.wantIs != nil && !errors.Is(err, tt.wantIs) {
				t.Errorf("error = %v, want errors.Is %v", err, tt.wantIs)
			}
		})
	}
}

// dated sets the answer's Date header to date, or leaves it out when date is
// "" (net/http would otherwise add one from the real clock), then calls h.
func dated(date string, h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if date == "" {
			w.Header()["Date"] = nil
		} else {
			w.Header().Set("Date", date)
		}
		h(w, r)
	}
}

// TestTokenDatedFromSend has every answer arrive a while after the upstream
// wrote it: a token's life, and the access token's, must be counted from
// when the request was sent, so Sent+Lifetime is the true expiry rather than
// that plus the answer's delay.
func TestTokenDatedFromSend(t *testing.T) {
	const delay = 3 * time.Second // from the upstream's answer to its arrival
	for _, auth := range []upstream.AuthVersion{upstream.AuthV1, upstream.AuthV2} {
		t.Run(string(auth), func(t *testing.T) {
			clk := clocktest.New(rdptest.T0)
			fake := fakerdp.New(fakerdp.Config{Clock: clk, Knobs: fakerdp.Knobs{TokenLifetime: time.Minute}})
			// The Fake answers at once on the shared clock; the answer then
			// takes delay to come back.
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				rec := httptest.NewRecorder()
				fake.ServeHTTP(rec, r)
				clk.Advance(delay)
				for k, v := range rec.Header() {
					w.Header()[k] = v
				}
				w.WriteHeader(rec.Code)
				w.Write(rec.Body.Bytes())
			}))
			t.Cleanup(srv.Close)
			r := &rdptest.RDP{Fake: fake, Srv: srv, Clock: clk}
			c := r.Client(t, upstream.Config{Auth: auth})
			signOns := func() int {
				a := fake.Stats().AuthCalls
				return a.V1Password + a.V1Refresh + a.V2
			}

			// Sign-on sent at rdptest.T0, answered at rdptest.T0+3s; liveness sent at
			// rdptest.T0+3s, answered at rdptest.T0+6s.
			tok, err := c.Token(context.Background())
			if err != nil {
				t.Fatalf("Token: %v", err)
			}
			if got, want := tok.Sent, rdptest.T0.Add(delay); !got.Equal(want) {
				t.Errorf("Sent = %v, want %v (the liveness request's send time, before its answer at %v)", got, want, clk.Now())
			}
			issued := fake.Stats().Tokens
			if len(issued) != 1 {
				t.Fatalf("the Fake issued %d tokens, want 1", len(issued))
			}
			if got, want := tok.Sent.Add(tok.Lifetime), issued[0].ExpiresAt; !got.Equal(want) {
				t.Errorf("Sent+Lifetime = %v, want the true expiry %v", got, want)
			}

			// The access token (10m, sent at rdptest.T0) is reused until rdptest.T0+9m30s,
			// counted from the sign-on's send time, not its answer's arrival.
			clk.Advance(9*time.Minute + 29*time.Second - 2*delay) // rdptest.T0+9m29s
			if _, err := c.Token(context.Background()); err != nil {
				t.Fatalf("Token at 9m29s: %v", err)
			}
			if got, want := signOns(), 1; got != want {
				t.Errorf("sign-ons before rdptest.T0+9m30s = %d, want %d", got, want)
			}
			// Now rdptest.T0+9m32s: past the reuse limit, though not past it counted
			// from the sign-on answer's arrival (rdptest.T0+9m33s).
			if _, err := c.Token(context.Background()); err != nil {
				t.Fatalf("Token at 9m32s: %v", err)
			}
			if got, want := signOns(), 2; got != want {
				t.Errorf("sign-ons after rdptest.T0+9m30s = %d, want %d", got, want)
			}
		})
	}
}

// TestTokenAbsoluteExpiry turns expiresAt answers into lifetimes with the
// upstream's and the local wall clocks apart. The upstream says its token
// lasts 45 minutes from its answer, which arrives 2 s after the request.
func TestTokenAbsoluteExpiry(t *testing.T) {
	const (
		delay = 2 * time.Second
		life  = 45 * time.Minute
	)
	tests := []struct {
		name        string
		upstreamAdv time.Duration // the upstream's wall clock minus the true time
		localAdv    time.Duration // the local wall clock minus the true time
		date        string        // "none", "garbage", or "" for the upstream's clock
		expiresIn   time.Duration // expiresAt minus the upstream's clock at its answer
		want        time.Duration
		wantErr     error
	}{
		{name: "clocks agree", expiresIn: life, want: life - time.Second},
		{name: "upstream clock 15s ahead", upstreamAdv: 15 * time.Second, expiresIn: life, want: life - time.Second},
		{name: "upstream clock 15s ahead, token expired by its clock", upstreamAdv: 15 * time.Second, expiresIn: -5 * time.Second,
			wantErr: upstream.ErrInvalidExpiry},
		{name: "local clock an hour ahead", localAdv: time.Hour, expiresIn: life, want: life - time.Second},
		{name: "local clock an hour behind", localAdv: -time.Hour, expiresIn: life, want: life - time.Second},
		{name: "no Date: local wall clock at send", date: "none", expiresIn: life, want: life + delay},
		{name: "unreadable Date: local wall clock at send", date: "garbage", expiresIn: life, want: life + delay},
		{name: "no Date, local clock an hour ahead: refused", date: "none", localAdv: time.Hour, expiresIn: life,
			wantErr: upstream.ErrInvalidExpiry},
		{name: "expiry within the Date's second", expiresIn: time.Second, wantErr: upstream.ErrInvalidExpiry},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk := clocktest.New(rdptest.T0) // the true time
			answer := func(w http.ResponseWriter, r *http.Request) {
				clk.Advance(delay)
				upstreamNow := clk.Now().Add(tt.upstreamAdv)
				switch tt.date {
				case "":
					w.Header().Set("Date", upstreamNow.Format(http.TimeFormat))
				case "none":
					w.Header()["Date"] = nil
				default:
					w.Header().Set("Date", tt.date)
				}
				body(200, `{"token":"abc","expiresAt":"`+upstreamNow.Add(tt.expiresIn).Format(time.RFC3339)+`"}`)(w, r)
			}
			r := rdptest.New(t, fakerdp.Config{Clock: clk}, map[string]http.HandlerFunc{livenessPath: answer})
			c := r.Client(t, upstream.Config{Clock: offsetClock{clk, tt.localAdv}})

			tok, err := c.Token(context.Background())
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("Token error = %v, want %v", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Token: %v", err)
			}
			if got := tok.Lifetime; got != tt.want {
				t.Errorf("Lifetime = %v, want %v", got, tt.want)
			}
			if got, want := tok.Sent, rdptest.T0.Add(tt.localAdv); !got.Equal(want) {
				t.Errorf("Sent = %v, want %v", got, want)
			}
			// On the local clock the token truly expires life after the
			// answer, which came delay after the request.
			if end, trueEnd := tok.Sent.Add(tok.Lifetime), tok.Sent.Add(delay+life); end.After(trueEnd) {
				t.Errorf("Sent+Lifetime = %v, after the true expiry %v", end, trueEnd)
			}
		})
	}
}

func TestTokenLifetimes(t *testing.T) {
	tests := []struct {
		name   string
		auth   upstream.AuthVersion
		knobs  fakerdp.Knobs
		routes map[string]http.HandlerFunc
		want   time.Duration
	}{
		{name: "expiresIn number", knobs: fakerdp.Knobs{TokenLifetime: 90 * time.Second}, want: 90 * time.Second},
		{name: "expiresIn string, v2 expires_in string", knobs: fakerdp.Knobs{ExpiresInString: true, TokenLifetime: 10 * time.Minute}, want: 10 * time.Minute},
		{name: "v1 expires_in string", auth: "v1", knobs: fakerdp.Knobs{TokenLifetime: 20 * time.Minute}, want: 20 * time.Minute},
		{name: "expires_at, less a second for the Date header's resolution", routes: map[string]http.HandlerFunc{
			livenessPath: dated(rdptest.T0.Format(http.TimeFormat),
				body(200, `{"livenessToken":"abc","expires_at":"`+rdptest.T0.Add(45*time.Minute).Format(time.RFC3339)+`"}`))},
			want: 45*time.Minute - time.Second},
		{name: "expiresAt from the Fake", knobs: fakerdp.Knobs{ExpiresAt: true, TokenLifetime: 20 * time.Minute},
			want: 20*time.Minute - time.Second},
		{name: "no expiry takes DefaultLifetime", routes: map[string]http.HandlerFunc{
			livenessPath: body(200, `{"access_token":"abc"}`)},
			want: 33 * time.Minute},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := rdptest.New(t, fakerdp.Config{Knobs: tt.knobs}, tt.routes)
			c := r.Client(t, upstream.Config{Auth: tt.auth, DefaultLifetime: 33 * time.Minute})
			tok, err := c.Token(context.Background())
			if err != nil {
				t.Fatalf("Token: %v", err)
			}
			if got := tok.Lifetime; got != tt.want {
				t.Errorf("Lifetime = %v, want %v", got, tt.want)
			}
		})
	}
}

// TestNoSecretsInErrors has upstreams echo credentials and tokens into
// their answers and checks that no error or log line repeats them.
func TestNoSecretsInErrors(t *testing.T) {
	const (
		secret   = "s3cr3t-client-XYZ"
		password = "p4ss-word-789"
		leaked   = "LEAKED-LIVENESS-TOKEN"
	)
	echoForm := func(status int) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			r.ParseForm()
			form := r.PostForm.Encode()
			body(status, fmt.Sprintf(`{"error":%q,"error_description":%q}`,
				"invalid_client "+r.PostForm.Get("client_secret")+r.PostForm.Get("password")+r.PostForm.Get("refresh_token"), form))(w, r)
		}
	}
	echoBearer := func(status int) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			a := r.Header.Get("Authorization")
			body(status, fmt.Sprintf(`{"error":{"code":%q,"message":%q}}`, a, a))(w, r)
		}
	}
	tests := []struct {
		name   string
		auth   upstream.AuthVersion
		routes map[string]http.HandlerFunc
	}{
		{"v2 refusal echoes the form", "v2", map[string]http.HandlerFunc{"/auth/oauth2/v2/token": echoForm(401)}},
		{"v2 5xx echoes the form", "v2", map[string]http.HandlerFunc{"/auth/oauth2/v2/token": echoForm(500)}},
		{"v2 200 truncated echo", "v2", map[string]http.HandlerFunc{
			"/auth/oauth2/v2/token": body(200, `{"access_token":"`+secret)}},
		{"v2 200 form echo", "v2", map[string]http.HandlerFunc{
			"/auth/oauth2/v2/token": func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "text/plain")
				fmt.Fprint(w, "error=%zz"+secret)
			}}},
		{"v1 refusal echoes the form", "v1", map[string]http.HandlerFunc{"/auth/oauth2/v1/token": echoForm(400)}},
		{"v1 200 truncated echo", "v1", map[string]http.HandlerFunc{
			"/auth/oauth2/v1/token": body(200, `{"access_token":"`+password)}},
		{"liveness 401 echoes the bearer", "v2", map[string]http.HandlerFunc{livenessPath: echoBearer(401)}},
		{"liveness 500 echoes the bearer", "v1", map[string]http.HandlerFunc{livenessPath: echoBearer(500)}},
		{"liveness truncated token", "v2", map[string]http.HandlerFunc{livenessPath: body(200, `{"token":"`+leaked)}},
		{"liveness token with a control character", "v2", map[string]http.HandlerFunc{
			livenessPath: body(200, `{"token":"`+leaked+`\u0001"}`)}},
		{"liveness token with a bad expiry", "v2", map[string]http.HandlerFunc{
			livenessPath: body(200, `{"token":"`+leaked+`","expiresIn":"`+leaked+`"}`)}},
		{"liveness HTML echo", "v2", map[string]http.HandlerFunc{
			livenessPath: body(502, `<html>`+leaked+`</html>`)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := rdptest.New(t, fakerdp.Config{ClientSecret: secret, Password: password}, tt.routes)
			var logs bytes.Buffer
			c := r.Client(t, upstream.Config{
				Auth: tt.auth, ClientSecret: secret, Password: password,
				Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
			})
			// Once with a fresh sign-on, once with the held tokens (v1: the
			// refresh grant after the access token expired).
			_, err1 := c.Token(context.Background())
			r.Clock.Advance(time.Hour)
			_, err2 := c.Token(context.Background())
			if err1 == nil || err2 == nil {
				t.Fatalf("Token errors = %v, %v; want two errors", err1, err2)
			}
			text := fmt.Sprintf("%v\n%+v\n%v\n%+v\n%s", err1, err1, err2, err2, logs.String())
			for _, s := range []string{secret, password, leaked, "fake-access-", "fake-refresh-", "fake-liveness-"} {
				if strings.Contains(text, s) {
					t.Errorf("errors or logs contain %q:\n%s", s, text)
				}
			}
		})
	}
}

func TestNoTokensInLogs(t *testing.T) {
	for _, auth := range []upstream.AuthVersion{upstream.AuthV1, upstream.AuthV2} {
		t.Run(string(auth), func(t *testing.T) {
			r := rdptest.New(t, fakerdp.Config{}, nil)
			var logs bytes.Buffer
			c := r.Client(t, upstream.Config{
				Auth:   auth,
				Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
			})
			for range 2 {
				if _, err := c.Token(context.Background()); err != nil {
					t.Fatalf("Token: %v", err)
				}
				r.Fake.Revoke() // forces the 401 re-auth and the v1 fallback
				r.Clock.Advance(time.Hour)
			}
			if logs.Len() == 0 {
				t.Fatalf("no log lines at Debug")
			}
			for _, s := range []string{fakerdp.ClientSecret, "password=", "fake-access-", "fake-refresh-", "fake-liveness-"} {
				if strings.Contains(logs.String(), s) {
					t.Errorf("logs contain %q:\n%s", s, logs.String())
				}
			}
		})
	}
}

func TestTokenContextDone(t *testing.T) {
	r := rdptest.New(t, fakerdp.Config{}, nil)
	c := r.Client(t, upstream.Config{})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	tok, err := c.Token(ctx)
	if !errors.Is(err, context.Canceled) || !upstream.IsRetryable(err) {
		t.Errorf("Token error = %v, want retryable context.Canceled", err)
	}
	if tok != (upstream.Token{}) {
		t.Errorf("Token = %+v, want the zero Token", tok)
	}
}

// TestTokenConcurrent runs Token calls while knobs change; it is for -race.
func TestTokenConcurrent(t *testing.T) {
	r := rdptest.New(t, fakerdp.Config{}, nil)
	c := r.Client(t, upstream.Config{})
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			for range 5 {
				c.Token(context.Background())
				r.Fake.Update(func(k *fakerdp.Knobs) { k.ExpiresInString = i%2 == 0 })
				r.Fake.Stats()
			}
		})
	}
	wg.Wait()
	if got, want := r.Fake.Stats().LivenessCalls, 40; got != want {
		t.Errorf("liveness calls = %d, want %d", got, want)
	}
}

func TestNew(t *testing.T) {
	v2 := upstream.Config{ClientID: "id", ClientSecret: "s"}
	v1 := upstream.Config{Auth: "v1", ClientID: "key", Username: "u", Password: "p"}
	with := func(c upstream.Config, f func(*upstream.Config)) upstream.Config { f(&c); return c }
	tests := []struct {
		name    string
		cfg     upstream.Config
		wantErr string // "" for success
	}{
		{"v2 minimal", v2, ""},
		{"v1 minimal", v1, ""},
		{"v2 without client id", upstream.Config{ClientSecret: "s"}, "RDP_CLIENT_ID is required for auth v2"},
		{"v2 without secret", upstream.Config{ClientID: "id"}, "RDP_CLIENT_SECRET is required for auth v2"},
		{"v1 without app key", with(v1, func(c *upstream.Config) { c.ClientID = "" }), "RDP_CLIENT_ID is required for auth v1"},
		{"v1 without username", with(v1, func(c *upstream.Config) { c.Username = "" }), "RDP_USERNAME is required for auth v1"},
		{"v1 without password", with(v1, func(c *upstream.Config) { c.Password = "" }), "RDP_PASSWORD is required for auth v1"},
		{"v1 needs no secret", v1, ""},
		{"unknown auth", with(v2, func(c *upstream.Config) { c.Auth = "v3" }), "RDP_AUTH"},
		{"relative base URL", with(v2, func(c *upstream.Config) { c.BaseURL = "api.refinitiv.com" }), "RDP_BASE_URL"},
		{"ftp base URL", with(v2, func(c *upstream.Config) { c.BaseURL = "ftp://x" }), "RDP_BASE_URL"},
		{"base URL with user", with(v2, func(c *upstream.Config) { c.BaseURL = "https://u:hunter2@x" }), "RDP_BASE_URL"},
		{"base URL with path prefix", with(v2, func(c *upstream.Config) { c.BaseURL = "http://fake:8081/rdp/" }), ""},
		{"relative liveness path", with(v2, func(c *upstream.Config) { c.LivenessPath = "liveness" }), "RDP_LIVENESS_PATH"},
		{"GET liveness", with(v2, func(c *upstream.Config) { c.LivenessMethod = "get" }), ""},
		{"PUT liveness", with(v2, func(c *upstream.Config) { c.LivenessMethod = "PUT" }), "RDP_LIVENESS_METHOD"},
		{"negative lifetime", with(v2, func(c *upstream.Config) { c.DefaultLifetime = -time.Second }), "TOKENKEEPER_TOKEN_LIFETIME"},
		{"absurd lifetime", with(v2, func(c *upstream.Config) { c.DefaultLifetime = 25 * time.Hour }), "TOKENKEEPER_TOKEN_LIFETIME"},
		{"negative timeout", with(v2, func(c *upstream.Config) { c.Timeout = -time.Second }), "Timeout"},
		{"negative body cap", with(v2, func(c *upstream.Config) { c.MaxBodyBytes = -1 }), "MaxBodyBytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := upstream.New(tt.cfg)
			if tt.wantErr == "" {
				if err != nil || c == nil {
					t.Errorf("New = %v, %v; want a client", c, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !strings.HasPrefix(err.Error(), "upstream: ") {
				t.Errorf("New error = %v, want one naming %q", err, tt.wantErr)
			}
			if err != nil && strings.Contains(err.Error(), "hunter2") {
				t.Errorf("New error %q repeats a password from the URL", err)
			}
		})
	}
}

func TestBeforeAuthGuardsEverySignOn(t *testing.T) {
	for _, auth := range []upstream.AuthVersion{upstream.AuthV1, upstream.AuthV2} {
		t.Run(string(auth), func(t *testing.T) {
			fake := fakerdp.New(fakerdp.Config{})
			srv := httptest.NewServer(fake)
			defer srv.Close()
			refused := &upstream.Error{Op: "auth", Retryable: true, RetryAfter: time.Second, Err: errors.New("budget")}
			var calls int
			c, err := upstream.New(upstream.Config{BaseURL: srv.URL, Auth: auth, ClientID: fakerdp.ClientID, ClientSecret: fakerdp.ClientSecret,
				Username: fakerdp.Username, Password: fakerdp.Password,
				BeforeAuth: func(context.Context) error { calls++; return refused }})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := c.Token(context.Background()); !errors.Is(err, refused) {
				t.Fatalf("got %v, want the BeforeAuth error", err)
			}
			if calls != 1 {
				t.Fatalf("BeforeAuth calls: got %d, want 1", calls)
			}
			st := fake.Stats()
			if got := st.AuthCalls.V1Password + st.AuthCalls.V1Refresh + st.AuthCalls.V2; got != 0 {
				t.Fatalf("sign-ons that reached the upstream: got %d, want 0", got)
			}
		})
	}
}

// TestHostileLivenessAnswers: a slow drip and a body of megabytes end in a
// classified, retryable error and no token, within the call's time limit.
func TestHostileLivenessAnswers(t *testing.T) {
	tests := []struct {
		name    string
		handler http.HandlerFunc
	}{
		{"slow drip", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusOK)
			for _, c := range []byte(`{"token":"abc","expiresIn":3600}`) {
				select {
				case <-r.Context().Done():
					return
				case <-time.After(100 * time.Millisecond):
				}
				w.Write([]byte{c})
				w.(http.Flusher).Flush()
			}
		}},
		{"megabytes", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			io.WriteString(w, `{"token":"`+strings.Repeat("a", 4<<20)+`","expiresIn":3600}`)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fake := fakerdp.New(fakerdp.Config{})
			mux := http.NewServeMux()
			mux.Handle("/auth/", fake)
			mux.Handle(upstream.DefaultLivenessPath, tt.handler)
			srv := httptest.NewServer(mux)
			defer srv.Close()
			c, err := upstream.New(upstream.Config{BaseURL: srv.URL, ClientID: fakerdp.ClientID, ClientSecret: fakerdp.ClientSecret,
				Timeout: 500 * time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			tok, err := c.Token(context.Background())
			if err == nil || tok.Value != "" {
				t.Fatalf("got token %d bytes, err %v; want no token and an error", len(tok.Value), err)
			}
			if !upstream.IsRetryable(err) {
				t.Fatalf("got %v, want a retryable error", err)
			}
			if took := time.Since(start); took > 3*time.Second {
				t.Fatalf("took %v, want about the 500ms limit", took)
			}
			t.Logf("%s: %v", tt.name, err)
		})
	}
}

// offsetClock is a clock d ahead of another.
type offsetClock struct {
	clock.Clock
	d time.Duration
}

func (o offsetClock) Now() time.Time { return o.Clock.Now().Add(o.d) }
