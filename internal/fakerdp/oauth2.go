package fakerdp

import (
	"cmp"
	"crypto/rand"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/tokenkeeper/tokenkeeper/upstream"
)

// The generic OAuth2 token endpoint, as the Server serves it.
const (
	// OAuth2TokenPath is where the Server answers client-credentials grants
	// as a generic OAuth2 token endpoint (RFC 6749 §4.4), for
	// upstream.OAuth2.
	OAuth2TokenPath = "/oauth2/token"
	// OAuth2Prefix starts every token the OAuth2 endpoint issues, so that it
	// is told apart from a liveness token (LivenessPrefix) or an RDP access
	// token.
	OAuth2Prefix = "fake-oauth2-"
)

// The client authentications an OAuth2Request records.
const (
	OAuth2AuthHeader = "header" // HTTP Basic
	OAuth2AuthBody   = "body"   // client_id and client_secret form fields
	OAuth2AuthBoth   = "both"   // both at once, refused (RFC 6749 §2.3)
	OAuth2AuthNone   = "none"   // neither
)

// OAuth2Request is one request to the OAuth2 token endpoint, as the Server
// read it. It holds no secret. Status 0 means the client went away before
// the answer.
type OAuth2Request struct {
	At time.Time `json:"at"`
	// Auth is how the client authenticated: OAuth2AuthHeader,
	// OAuth2AuthBody, OAuth2AuthBoth or OAuth2AuthNone.
	Auth string `json:"auth"`
	// ClientID is the client id it sent (from the header when both were
	// sent).
	ClientID  string `json:"client_id"`
	GrantType string `json:"grant_type"`
	// Scope is the scope form field as sent (space-separated scopes).
	Scope string `json:"scope"`
	// Audience and Resource are the audience and resource form fields, in
	// order (each may repeat).
	Audience []string `json:"audience,omitempty"`
	Resource []string `json:"resource,omitempty"`
	Status   int      `json:"status"`
}

// serveOAuth2 answers a client-credentials grant. Client authentication,
// form and grant type are checked first, as a real endpoint does; the knobs
// then apply as on the liveness route: HTML, LivenessStatus (with
// RetryAfter), Malformed, then a token of TokenLifetime (Expired,
// ExpiresInString), all after Latency.
func (f *Server) serveOAuth2(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, upstream.DefaultMaxBodyBytes)
	formErr := r.ParseForm()
	form := r.PostForm
	id, secret, auth := clientAuth(r)
	rec := OAuth2Request{
		At:        f.cfg.Clock.Now(),
		Auth:      auth,
		ClientID:  id,
		GrantType: form.Get("grant_type"),
		Scope:     form.Get("scope"),
		Audience:  form["audience"],
		Resource:  form["resource"],
	}
	f.mu.Lock()
	f.stats.OAuth2Calls++
	f.mu.Unlock()
	ok := false
	defer func() {
		f.mu.Lock()
		defer f.mu.Unlock()
		f.stats.OAuth2Requests = appendCapped(f.stats.OAuth2Requests, rec)
		if ok {
			f.stats.OAuth2OK++
		}
	}()
	if !f.wait(w, r) {
		return
	}

	k := f.Knobs()
	now := f.cfg.Clock.Now()
	f.setDate(w, now, k)
	switch {
	case formErr != nil:
		rec.Status = http.StatusBadRequest
		writeOAuthError(w, rec.Status, "invalid_request", "Unreadable form.")
	case auth == OAuth2AuthBoth:
		rec.Status = http.StatusBadRequest
		writeOAuthError(w, rec.Status, "invalid_request", "More than one client authentication method.")
	case rec.GrantType != "client_credentials":
		rec.Status = http.StatusBadRequest
		writeOAuthError(w, rec.Status, "unsupported_grant_type", "Unsupported grant type.")
	case auth == OAuth2AuthNone || !equal(id, f.cfg.OAuth2ClientID) || !equal(secret, f.cfg.OAuth2ClientSecret):
		rec.Status = http.StatusUnauthorized
		if auth == OAuth2AuthHeader {
			// RFC 6749 §5.2: a refused Basic authentication says so.
			w.Header().Set("WWW-Authenticate", `Basic realm="fakerdp"`)
		}
		writeOAuthError(w, rec.Status, "invalid_client", "Client authentication failed.")
	case k.HTML:
		rec.Status = cmp.Or(k.LivenessStatus, http.StatusOK)
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.WriteHeader(rec.Status)
		fmt.Fprintf(w, "<html><head><title>%d %s</title></head><body><h1>%[2]s</h1></body></html>\n",
			rec.Status, http.StatusText(rec.Status))
	case k.LivenessStatus != 0:
		rec.Status = k.LivenessStatus
		writeAuthError(w, rec.Status, k.RetryAfter)
	case k.Malformed:
		rec.Status = http.StatusOK
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(rec.Status)
		fmt.Fprint(w, `{"access_token":"`+OAuth2Prefix)
	default:
		rec.Status, ok = http.StatusOK, !k.Expired
		token := OAuth2Prefix + rand.Text()
		secs := seconds(k.TokenLifetime)
		if k.Expired {
			secs = -60
		}
		var expiresIn any = secs
		if k.ExpiresInString {
			expiresIn = strconv.FormatInt(secs, 10)
		}
		f.mu.Lock()
		f.stats.OAuth2Tokens = appendCapped(f.stats.OAuth2Tokens, Token{
			Token: token, IssuedAt: now, ExpiresAt: now.Add(time.Duration(secs) * time.Second)})
		f.mu.Unlock()
		writeJSON(w, rec.Status, map[string]any{
			"access_token": token,
			"token_type":   "Bearer",
			"expires_in":   expiresIn,
			"scope":        rec.Scope,
		})
	}
}

// clientAuth returns the client credentials of r and how they came. The
// Basic credentials are form-decoded first, as RFC 6749 §2.3.1 has clients
// encode them (a value that does not decode is taken as is).
func clientAuth(r *http.Request) (id, secret, auth string) {
	u, p, basic := r.BasicAuth()
	_, inForm := r.PostForm["client_secret"]
	switch {
	case basic && inForm:
		return unescape(u), unescape(p), OAuth2AuthBoth
	case basic:
		return unescape(u), unescape(p), OAuth2AuthHeader
	case inForm:
		return r.PostForm.Get("client_id"), r.PostForm.Get("client_secret"), OAuth2AuthBody
	}
	return r.PostForm.Get("client_id"), "", OAuth2AuthNone
}

func unescape(s string) string {
	if u, err := url.QueryUnescape(s); err == nil {
		return u
	}
	return s
}
