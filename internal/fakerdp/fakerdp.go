// Package fakerdp is a fake of the LSEG/Refinitiv Data Platform's auth and
// liveness endpoints, and of a generic OAuth2 client-credentials token
// endpoint, for the tests, the demo and the compose stack. It is no part of
// the upstream client's API.
//
// Server speaks the same HTTP as RDP for the parts the client uses, and as
// an OAuth2 token endpoint for upstream.OAuth2, with knobs to inject
// failures, absolute expiries and a skewed clock (settable over HTTP: GET
// and PUT /fake/v1/knobs), and counters to check how often it was called.
package fakerdp

import (
	"cmp"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/tokenkeeper/tokenkeeper/clock"
	"github.com/tokenkeeper/tokenkeeper/upstream"
)

// Credentials the Server accepts unless Config says otherwise.
const (
	ClientID     = "tokenkeeper-demo"
	ClientSecret = "demo-secret"
	Username     = "demo"
	Password     = "demo"
)

// Defaults of Knobs and Config.
const (
	DefaultTokenLifetime        = 60 * time.Minute
	DefaultAccessTokenLifetime  = 10 * time.Minute
	DefaultRefreshTokenLifetime = 8 * time.Hour
	// LivenessPrefix starts every liveness token the Server issues.
	LivenessPrefix = "fake-liveness-"
	// fakeMaxLog bounds each of the Server's logs; older entries are dropped.
	fakeMaxLog = 10000
)

// Config configures a Server. Zero fields take their defaults.
type Config struct {
	// ClientID (the v1 app key too), ClientSecret, Username and Password are
	// the credentials accepted (defaults ClientID, ClientSecret,
	// Username, Password).
	ClientID, ClientSecret, Username, Password string
	// OAuth2ClientID and OAuth2ClientSecret are the client credentials the
	// generic OAuth2 token endpoint (OAuth2TokenPath) accepts (defaults: the
	// Config's ClientID and ClientSecret, after their own defaults).
	OAuth2ClientID, OAuth2ClientSecret string
	// LivenessPath is where the liveness endpoint answers
	// (default upstream.DefaultLivenessPath).
	LivenessPath string
	// RefreshTokenLifetime is how long a v1 refresh token is honoured
	// (default 8h).
	RefreshTokenLifetime time.Duration
	// Knobs are the initial knobs (see Knobs for their defaults).
	Knobs Knobs
	// Clock is the Server's time (default clock.Real()): token expiry,
	// stats times, and, moved by the ClockOffset knob, the Date header and
	// expiresAt of its answers. Latency waits on Go's timers, not on it.
	Clock clock.Clock
}

// Knobs steer the Server's answers. Zero values mean "behave well".
type Knobs struct {
	// TokenLifetime is the liveness token's expiresIn, and the OAuth2
	// token's expires_in, in whole seconds, at least 1 (default 60m).
	TokenLifetime time.Duration
	// AccessTokenLifetime is the lifetime of RDP access tokens, v1 and v2
	// (default 10m). It does not apply to the OAuth2 endpoint's tokens.
	AccessTokenLifetime time.Duration
	// Latency delays every auth, liveness and OAuth2 token answer (real
	// time).
	Latency time.Duration
	// LivenessStatus, when not 0, answers authorized liveness calls with this
	// status and a gateway-style JSON error (or the HTML page, with HTML).
	// It answers OAuth2 token calls whose client passed the credential check
	// too, with an OAuth2 error as AuthStatus does.
	LivenessStatus int
	// AuthStatus, when not 0, answers every RDP auth call (v1 and v2, not the
	// generic OAuth2 endpoint) with this status and an OAuth2 error (400
	// invalid_grant, 401 invalid_client, 403 access_denied, else
	// server_error).
	AuthStatus int
	// RetryAfter, when positive, adds Retry-After (seconds, rounded up) to
	// the error answers chosen by LivenessStatus and AuthStatus.
	RetryAfter time.Duration
	// Malformed answers liveness and OAuth2 token calls with 200 and
	// truncated JSON.
	Malformed bool
	// HTML answers liveness and OAuth2 token calls with an HTML page, status
	// 200 or LivenessStatus.
	HTML bool
	// Expired issues liveness tokens whose expiresAt is a minute in the past,
	// and OAuth2 tokens with expires_in -60.
	Expired bool
	// ExpiresInString sends expiresIn (liveness) and expires_in (auth v2,
	// OAuth2 endpoint) as strings. Auth v1 always does.
	ExpiresInString bool
	// ExpiresAt sends the liveness token's expiry as an absolute expiresAt
	// (RFC 3339, rounded down to the second) instead of expiresIn. Expired
	// takes precedence; ExpiresInString is then moot. The OAuth2 endpoint
	// ignores it: OAuth2 has no absolute expiry.
	ExpiresAt bool
	// ClockOffset skews the Server's wall clock as its clients see it: every
	// answer's Date header, and the expiresAt of ExpiresAt and Expired tokens,
	// are read from Clock plus ClockOffset (ahead when positive, behind when
	// negative). What the Server enforces and records stays on the unskewed
	// clock: access and refresh token expiry, and Stats, whose
	// Token.ExpiresAt is the true expiry.
	ClockOffset time.Duration
}

func (k Knobs) normalized() Knobs {
	if k.TokenLifetime <= 0 {
		k.TokenLifetime = DefaultTokenLifetime
	}
	if k.AccessTokenLifetime <= 0 {
		k.AccessTokenLifetime = DefaultAccessTokenLifetime
	}
	k.Latency = max(k.Latency, 0)
	k.RetryAfter = max(k.RetryAfter, 0)
	return k
}

// Stats is what the Server saw since it started or was last reset.
type Stats struct {
	AuthCalls AuthCalls `json:"auth_calls"`
	// LivenessCalls counts every liveness request received.
	LivenessCalls int `json:"liveness_calls"`
	// LivenessOK counts liveness answers with status 200 and a well-formed,
	// unexpired token.
	LivenessOK int `json:"liveness_ok"`
	// Calls logs every liveness call.
	Calls []Call `json:"calls"`
	// Tokens logs every liveness token issued (Expired ones included).
	Tokens []Token `json:"tokens"`

	// OAuth2Calls counts every request to the generic OAuth2 token endpoint.
	OAuth2Calls int `json:"oauth2_calls"`
	// OAuth2OK counts its answers with status 200 and a well-formed,
	// unexpired token.
	OAuth2OK int `json:"oauth2_ok"`
	// OAuth2Requests logs every request to it, with what the client sent.
	OAuth2Requests []OAuth2Request `json:"oauth2_requests"`
	// OAuth2Tokens logs every token it issued (Expired ones included), apart
	// from Tokens, which holds liveness tokens only.
	OAuth2Tokens []Token `json:"oauth2_tokens"`
}

// AuthCalls counts auth requests received, refused ones included.
type AuthCalls struct {
	V1Password int `json:"v1_password"`
	V1Refresh  int `json:"v1_refresh"`
	V2         int `json:"v2"`
}

// Call is one call. Status 0 means the client went away before the
// answer.
type Call struct {
	At     time.Time `json:"at"`
	Op     string    `json:"op"`
	Status int       `json:"status"`
	// Access is the fingerprint of the access token a liveness call
	// presented ("" without one), so that tests can tell which calls
	// shared one.
	Access string `json:"access,omitempty"`
}

// Token is one issued liveness or OAuth2 token, timed on the Server's clock without
// ClockOffset: ExpiresAt is the true expiry, whatever the answer announced.
type Token struct {
	Token     string    `json:"token"`
	IssuedAt  time.Time `json:"issued_at"`
	ExpiresAt time.Time `json:"expires_at"`
}

// Server is an in-memory RDP for tests, the demo and the compose stack. It
// serves, as an http.Handler:
//
//	POST /auth/oauth2/v2/token     client credentials
//	POST /auth/oauth2/v1/token     password (takeExclusiveSignOnControl) and refresh_token grants
//	POST|GET <LivenessPath>        bearer required; {"token":"fake-liveness-...","expiresIn":N}
//	                               (or "expiresAt":"<RFC 3339>" with the ExpiresAt knob)
//	POST /oauth2/token             generic client credentials (HTTP Basic or form fields);
//	                               {"access_token":"fake-oauth2-...","token_type":"Bearer","expires_in":N,"scope":...}
//	GET  /fake/v1/stats            Stats as JSON
//	GET  /fake/v1/knobs            the knobs as JSON, durations as Go duration strings
//	PUT  /fake/v1/knobs            replaces the knobs present in the JSON body
//	POST /fake/v1/reset            zeroes the counters and logs
//
// Every answer carries a Date header from the Server's clock plus ClockOffset,
// read when the answer is written (after Latency), as a real server's is.
//
// The OAuth2 endpoint honours the liveness knobs (see Knobs), so one Server's
// knobs fail its liveness and OAuth2 tokens alike. To fail one upstream and
// not the other, run two Servers: each has its own knobs and Stats.
//
// All methods are safe for concurrent use, during requests too.
type Server struct {
	cfg Config
	mux *http.ServeMux

	mu      sync.Mutex
	knobs   Knobs
	access  map[string]time.Time // access token -> expiry
	refresh map[string]time.Time // refresh token -> expiry
	stats   Stats
}

// New returns a Server configured by cfg.
func New(cfg Config) *Server {
	cfg.ClientID = cmp.Or(cfg.ClientID, ClientID)
	cfg.ClientSecret = cmp.Or(cfg.ClientSecret, ClientSecret)
	cfg.Username = cmp.Or(cfg.Username, Username)
	cfg.Password = cmp.Or(cfg.Password, Password)
	cfg.OAuth2ClientID = cmp.Or(cfg.OAuth2ClientID, cfg.ClientID)
	cfg.OAuth2ClientSecret = cmp.Or(cfg.OAuth2ClientSecret, cfg.ClientSecret)
	cfg.LivenessPath = cmp.Or(cfg.LivenessPath, upstream.DefaultLivenessPath)
	if cfg.RefreshTokenLifetime <= 0 {
		cfg.RefreshTokenLifetime = DefaultRefreshTokenLifetime
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.Real()
	}
	f := &Server{
		cfg:     cfg,
		mux:     http.NewServeMux(),
		knobs:   cfg.Knobs.normalized(),
		access:  make(map[string]time.Time),
		refresh: make(map[string]time.Time),
	}
	f.mux.HandleFunc("POST "+AuthV2Path, f.serveAuthV2)
	f.mux.HandleFunc("POST "+AuthV1Path, f.serveAuthV1)
	f.mux.HandleFunc(cfg.LivenessPath, f.serveLiveness)
	f.mux.HandleFunc("POST "+OAuth2TokenPath, f.serveOAuth2)
	f.mux.HandleFunc("GET /fake/v1/stats", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, f.Stats())
	})
	f.mux.HandleFunc("GET /fake/v1/knobs", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, knobsToWire(f.Knobs()))
	})
	f.mux.HandleFunc("PUT /fake/v1/knobs", f.servePutKnobs)
	f.mux.HandleFunc("POST /fake/v1/reset", func(w http.ResponseWriter, r *http.Request) {
		f.Reset()
		w.WriteHeader(http.StatusNoContent)
	})
	return f
}

// ServeHTTP implements http.Handler.
func (f *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	// Handlers that wait for Latency date their answer again (see wait).
	f.setDate(w, f.cfg.Clock.Now(), f.Knobs())
	f.mux.ServeHTTP(w, r)
}

// setDate sets the Date header to now on the clock the knobs skew.
func (f *Server) setDate(w http.ResponseWriter, now time.Time, k Knobs) {
	w.Header().Set("Date", now.Add(k.ClockOffset).UTC().Format(http.TimeFormat))
}

// Set replaces all knobs; zero lifetimes take their defaults.
func (f *Server) Set(k Knobs) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.knobs = k.normalized()
}

// Update changes the knobs in place with fn, atomically.
func (f *Server) Update(fn func(*Knobs)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	k := f.knobs
	fn(&k)
	f.knobs = k.normalized()
}

// Knobs returns the knobs in force, defaults filled in.
func (f *Server) Knobs() Knobs {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.knobs
}

// Stats returns a copy of the counters and logs.
func (f *Server) Stats() Stats {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.stats
	s.Calls = append([]Call{}, s.Calls...)
	s.Tokens = append([]Token{}, s.Tokens...)
	s.OAuth2Requests = append([]OAuth2Request{}, s.OAuth2Requests...)
	for i, r := range s.OAuth2Requests {
		s.OAuth2Requests[i].Audience = append([]string(nil), r.Audience...)
		s.OAuth2Requests[i].Resource = append([]string(nil), r.Resource...)
	}
	s.OAuth2Tokens = append([]Token{}, s.OAuth2Tokens...)
	return s
}

// Reset zeroes the counters and logs; knobs and issued tokens stay.
func (f *Server) Reset() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.stats = Stats{}
}

// Revoke forgets every access and refresh token issued so far: a liveness
// call with one gets 401, a refresh grant with one gets invalid_grant.
func (f *Server) Revoke() {
	f.mu.Lock()
	defer f.mu.Unlock()
	clear(f.access)
	clear(f.refresh)
}

// wait sleeps for the Latency knob and reports whether the client is still
// there. After a sleep it dates the answer again, since the answer is written
// after it.
func (f *Server) wait(w http.ResponseWriter, r *http.Request) bool {
	d := f.Knobs().Latency
	if d <= 0 {
		return r.Context().Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		f.setDate(w, f.cfg.Clock.Now(), f.Knobs())
		return true
	case <-r.Context().Done():
		return false
	}
}

func (f *Server) serveAuthV2(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, upstream.DefaultMaxBodyBytes)
	formErr := r.ParseForm()
	f.mu.Lock()
	f.stats.AuthCalls.V2++
	f.mu.Unlock()
	if !f.wait(w, r) {
		return
	}
	k := f.Knobs()
	id, secret := r.PostForm.Get("client_id"), r.PostForm.Get("client_secret")
	if u, p, ok := r.BasicAuth(); ok {
		id, secret = u, p
	}
	switch {
	case k.AuthStatus != 0:
		writeAuthError(w, k.AuthStatus, k.RetryAfter)
	case formErr != nil:
		writeOAuthError(w, http.StatusBadRequest, "invalid_request", "Unreadable form.")
	case r.PostForm.Get("grant_type") != "client_credentials":
		writeOAuthError(w, http.StatusBadRequest, "unsupported_grant_type", "Unsupported grant type.")
	case !equal(id, f.cfg.ClientID) || !equal(secret, f.cfg.ClientSecret):
		writeOAuthError(w, http.StatusUnauthorized, "invalid_client", "Invalid Application Credential.")
	default:
		access, lifetime := f.issueAccess(k)
		var expiresIn any = seconds(lifetime)
		if k.ExpiresInString {
			expiresIn = strconv.FormatInt(seconds(lifetime), 10)
		}
		writeJSON(w, http.StatusOK, map[string]any{
			"access_token": access,
			"token_type":   "Bearer",
			"expires_in":   expiresIn,
			"scope":        r.PostForm.Get("scope"),
		})
	}
}

func (f *Server) serveAuthV1(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, upstream.DefaultMaxBodyBytes)
	formErr := r.ParseForm()
	form := r.PostForm
	grant := form.Get("grant_type")
	f.mu.Lock()
	switch grant {
	case "password":
		f.stats.AuthCalls.V1Password++
	case "refresh_token":
		f.stats.AuthCalls.V1Refresh++
	}
	f.mu.Unlock()
	if !f.wait(w, r) {
		return
	}
	k := f.Knobs()
	switch {
	case k.AuthStatus != 0:
		writeAuthError(w, k.AuthStatus, k.RetryAfter)
		return
	case formErr != nil:
		writeOAuthError(w, http.StatusBadRequest, "invalid_request", "Unreadable form.")
		return
	case grant != "password" && grant != "refresh_token":
		writeOAuthError(w, http.StatusBadRequest, "unsupported_grant_type", "Unsupported grant type.")
		return
	case !equal(form.Get("client_id"), f.cfg.ClientID):
		writeOAuthError(w, http.StatusUnauthorized, "invalid_client", "Invalid Application Credential.")
		return
	}

	now := f.cfg.Clock.Now()
	f.mu.Lock()
	if grant == "password" {
		if !equal(form.Get("username"), f.cfg.Username) || !equal(form.Get("password"), f.cfg.Password) {
			f.mu.Unlock()
			writeOAuthError(w, http.StatusBadRequest, "invalid_grant", "Invalid username or password.")
			return
		}
		if form.Get("takeExclusiveSignOnControl") != "true" && f.liveSessionLocked(now) {
			f.mu.Unlock()
			writeOAuthError(w, http.StatusBadRequest, "access_denied", "Session quota is reached.")
			return
		}
		clear(f.refresh) // the exclusive sign-on ends the other session
	} else {
		old := form.Get("refresh_token")
		if exp, ok := f.refresh[old]; !ok || !now.Before(exp) {
			f.mu.Unlock()
			writeOAuthError(w, http.StatusBadRequest, "invalid_grant", "Invalid refresh token.")
			return
		}
		delete(f.refresh, old)
	}
	refresh := "fake-refresh-" + rand.Text()
	f.refresh[refresh] = now.Add(f.cfg.RefreshTokenLifetime)
	f.mu.Unlock()

	access, lifetime := f.issueAccess(k)
	writeJSON(w, http.StatusOK, map[string]any{
		"access_token":  access,
		"refresh_token": refresh,
		"expires_in":    strconv.FormatInt(seconds(lifetime), 10),
		"scope":         cmp.Or(form.Get("scope"), upstream.DefaultScope),
		"token_type":    "Bearer",
	})
}

func (f *Server) liveSessionLocked(now time.Time) bool {
	for _, exp := range f.refresh {
		if now.Before(exp) {
			return true
		}
	}
	return false
}

// issueAccess records a new access token and prunes expired ones.
func (f *Server) issueAccess(k Knobs) (string, time.Duration) {
	now := f.cfg.Clock.Now()
	lifetime := time.Duration(seconds(k.AccessTokenLifetime)) * time.Second
	access := "fake-access-" + rand.Text()
	f.mu.Lock()
	defer f.mu.Unlock()
	for t, exp := range f.access {
		if !now.Before(exp) {
			delete(f.access, t)
		}
	}
	f.access[access] = now.Add(lifetime)
	return access, lifetime
}

func (f *Server) serveLiveness(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost && r.Method != http.MethodGet {
		w.Header().Set("Allow", "GET, POST")
		writeGatewayError(w, http.StatusMethodNotAllowed, 0)
		return
	}
	at := f.cfg.Clock.Now()
	f.mu.Lock()
	f.stats.LivenessCalls++
	f.mu.Unlock()
	access := ""
	if bearer, found := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); found {
		access = fingerprint(bearer)
	}
	status, ok := 0, false
	defer func() {
		f.mu.Lock()
		defer f.mu.Unlock()
		f.stats.Calls = appendCapped(f.stats.Calls, Call{At: at, Op: "liveness", Status: status, Access: access})
		if ok {
			f.stats.LivenessOK++
		}
	}()
	if !f.wait(w, r) {
		return
	}

	k := f.Knobs()
	now := f.cfg.Clock.Now()
	// Date and any expiresAt come from the same reading of the clock.
	f.setDate(w, now, k)
	switch {
	case !f.authorized(r, now):
		status = http.StatusUnauthorized
		writeGatewayError(w, status, 0)
	case k.HTML:
		status = cmp.Or(k.LivenessStatus, http.StatusOK)
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.WriteHeader(status)
		fmt.Fprintf(w, "<html><head><title>%d %s</title></head><body><h1>%[2]s</h1></body></html>\n",
			status, http.StatusText(status))
	case k.LivenessStatus != 0:
		status = k.LivenessStatus
		writeGatewayError(w, status, k.RetryAfter)
	case k.Malformed:
		status = http.StatusOK
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		fmt.Fprint(w, `{"token":"`+LivenessPrefix)
	default:
		status, ok = http.StatusOK, !k.Expired
		token := LivenessPrefix + rand.Text()
		body := map[string]any{"token": token}
		secs := seconds(k.TokenLifetime)
		expires := now.Add(time.Duration(secs) * time.Second)
		switch {
		case k.Expired:
			expires = now.Add(-time.Minute)
			body["expiresAt"] = expires.Add(k.ClockOffset).UTC().Format(time.RFC3339)
		case k.ExpiresAt:
			body["expiresAt"] = expires.Add(k.ClockOffset).UTC().Format(time.RFC3339)
		case k.ExpiresInString:
			body["expiresIn"] = strconv.FormatInt(secs, 10)
		default:
			body["expiresIn"] = secs
		}
		f.mu.Lock()
		f.stats.Tokens = appendCapped(f.stats.Tokens, Token{Token: token, IssuedAt: now, ExpiresAt: expires})
		f.mu.Unlock()
		writeJSON(w, status, body)
	}
}

// authorized reports whether r carries a live access token.
func (f *Server) authorized(r *http.Request, now time.Time) bool {
	const prefix = "Bearer "
	h := r.Header.Get("Authorization")
	if len(h) <= len(prefix) || h[:len(prefix)] != prefix {
		return false
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	exp, ok := f.access[h[len(prefix):]]
	return ok && now.Before(exp)
}

// fingerprint names a credential without revealing it, as tokenkeeper's
// logs do: "sha256:" and the first 12 hex digits of its SHA-256.
func fingerprint(s string) string {
	sum := sha256.Sum256([]byte(s))
	return "sha256:" + hex.EncodeToString(sum[:6])
}

func appendCapped[T any](s []T, v T) []T {
	if len(s) >= fakeMaxLog {
		s = s[1:]
	}
	return append(s, v)
}

// seconds returns d in whole seconds, at least 1.
func seconds(d time.Duration) int64 {
	return max(int64(d/time.Second), 1)
}

func equal(a, b string) bool {
	return subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func writeRetryAfter(w http.ResponseWriter, d time.Duration) {
	if d > 0 {
		w.Header().Set("Retry-After", strconv.FormatInt(int64(math.Ceil(d.Seconds())), 10))
	}
}

// writeOAuthError answers as the RDP auth endpoints do.
func writeOAuthError(w http.ResponseWriter, status int, code, description string) {
	writeJSON(w, status, map[string]string{"error": code, "error_description": description})
}

func writeAuthError(w http.ResponseWriter, status int, retryAfter time.Duration) {
	writeRetryAfter(w, retryAfter)
	switch status {
	case http.StatusBadRequest:
		writeOAuthError(w, status, "invalid_grant", "Grant refused.")
	case http.StatusUnauthorized:
		writeOAuthError(w, status, "invalid_client", "Invalid Application Credential.")
	case http.StatusForbidden:
		writeOAuthError(w, status, "access_denied", "Access denied.")
	default:
		writeOAuthError(w, status, "server_error", http.StatusText(status))
	}
}

// writeGatewayError answers as the RDP API gateway does.
func writeGatewayError(w http.ResponseWriter, status int, retryAfter time.Duration) {
	writeRetryAfter(w, retryAfter)
	message := http.StatusText(status)
	if status == http.StatusUnauthorized {
		message = "token expired"
	}
	writeJSON(w, status, map[string]any{"error": map[string]string{
		"id":      rand.Text(),
		"code":    strconv.Itoa(status),
		"message": message,
		"status":  http.StatusText(status),
	}})
}

// fakeKnobsWire is Knobs on the control API. Nil fields are left alone
// by PUT.
type fakeKnobsWire struct {
	TokenLifetime       *string `json:"token_lifetime,omitempty"`
	AccessTokenLifetime *string `json:"access_token_lifetime,omitempty"`
	Latency             *string `json:"latency,omitempty"`
	LivenessStatus      *int    `json:"liveness_status,omitempty"`
	AuthStatus          *int    `json:"auth_status,omitempty"`
	RetryAfter          *string `json:"retry_after,omitempty"`
	Malformed           *bool   `json:"malformed,omitempty"`
	HTML                *bool   `json:"html,omitempty"`
	Expired             *bool   `json:"expired,omitempty"`
	ExpiresInString     *bool   `json:"expires_in_string,omitempty"`
	ExpiresAt           *bool   `json:"expires_at,omitempty"`
	// ClockOffset is the one duration that may be negative.
	ClockOffset *string `json:"clock_offset,omitempty"`
}

func knobsToWire(k Knobs) fakeKnobsWire {
	str := func(d time.Duration) *string { s := d.String(); return &s }
	return fakeKnobsWire{
		TokenLifetime:       str(k.TokenLifetime),
		AccessTokenLifetime: str(k.AccessTokenLifetime),
		Latency:             str(k.Latency),
		LivenessStatus:      &k.LivenessStatus,
		AuthStatus:          &k.AuthStatus,
		RetryAfter:          str(k.RetryAfter),
		Malformed:           &k.Malformed,
		HTML:                &k.HTML,
		Expired:             &k.Expired,
		ExpiresInString:     &k.ExpiresInString,
		ExpiresAt:           &k.ExpiresAt,
		ClockOffset:         str(k.ClockOffset),
	}
}

// apply sets the fields of k present in w.
func (w fakeKnobsWire) apply(k *Knobs) error {
	durations := []struct {
		name string
		in   *string
		out  *time.Duration
	}{
		{"token_lifetime", w.TokenLifetime, &k.TokenLifetime},
		{"access_token_lifetime", w.AccessTokenLifetime, &k.AccessTokenLifetime},
		{"latency", w.Latency, &k.Latency},
		{"retry_after", w.RetryAfter, &k.RetryAfter},
	}
	for _, d := range durations {
		if d.in == nil {
			continue
		}
		v, err := time.ParseDuration(*d.in)
		if err != nil || v < 0 {
			return fmt.Errorf("%s: want a non-negative Go duration such as \"90s\", got %q", d.name, *d.in)
		}
		*d.out = v
	}
	if w.ClockOffset != nil {
		v, err := time.ParseDuration(*w.ClockOffset)
		if err != nil {
			return fmt.Errorf("clock_offset: want a Go duration such as \"15s\" or \"-1h\", got %q", *w.ClockOffset)
		}
		k.ClockOffset = v
	}
	statuses := []struct {
		name string
		in   *int
		out  *int
	}{
		{"liveness_status", w.LivenessStatus, &k.LivenessStatus},
		{"auth_status", w.AuthStatus, &k.AuthStatus},
	}
	for _, s := range statuses {
		if s.in == nil {
			continue
		}
		if *s.in != 0 && (*s.in < 100 || *s.in > 599) {
			return fmt.Errorf("%s: want 0 or an HTTP status, got %d", s.name, *s.in)
		}
		*s.out = *s.in
	}
	for _, b := range []struct {
		in  *bool
		out *bool
	}{
		{w.Malformed, &k.Malformed}, {w.HTML, &k.HTML}, {w.Expired, &k.Expired},
		{w.ExpiresInString, &k.ExpiresInString}, {w.ExpiresAt, &k.ExpiresAt},
	} {
		if b.in != nil {
			*b.out = *b.in
		}
	}
	return nil
}

func (f *Server) servePutKnobs(w http.ResponseWriter, r *http.Request) {
	var wire fakeKnobsWire
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, upstream.DefaultMaxBodyBytes))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&wire); err != nil {
		writeJSON(w, http.StatusBadRequest, controlError(err))
		return
	}
	f.mu.Lock()
	k := f.knobs
	err := wire.apply(&k)
	if err == nil {
		f.knobs = k.normalized()
		k = f.knobs
	}
	f.mu.Unlock()
	if err != nil {
		writeJSON(w, http.StatusBadRequest, controlError(err))
		return
	}
	writeJSON(w, http.StatusOK, knobsToWire(k))
}

func controlError(err error) map[string]any {
	return map[string]any{"error": map[string]string{"code": "bad_request", "message": err.Error()}}
}

// RDP's auth endpoints, as the fake serves them.
const (
	AuthV1Path = "/auth/oauth2/v1/token"
	AuthV2Path = "/auth/oauth2/v2/token"
)
