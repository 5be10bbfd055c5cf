package upstream

import (
	"go.opentelemetry.io/otel/trace"

	"bytes"
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"mime"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tokenkeeper/tokenkeeper/clock"
)

// The client authentications of OAuth2Config.AuthStyle.
const (
	// OAuth2AuthAuto tries HTTP Basic first and, when the endpoint answers
	// 400 or 401 to it, the form fields; the style that worked is kept for
	// the OAuth2's later calls.
	OAuth2AuthAuto = "auto"
	// OAuth2AuthHeader sends the client id and secret in an HTTP Basic
	// Authorization header, each form-encoded first (RFC 6749 §2.3.1).
	OAuth2AuthHeader = "header"
	// OAuth2AuthBody sends them as the client_id and client_secret form
	// fields.
	OAuth2AuthBody = "body"
)

// OAuth2Config configures a client-credentials token source for any OAuth2
// token endpoint. The zero value of each optional field is replaced by its
// documented default; NewOAuth2 rejects what cannot work.
type OAuth2Config struct {
	// TokenURL is the token endpoint, an absolute http or https URL without
	// user or fragment; required. A query is kept.
	TokenURL string
	// ClientID and ClientSecret are the client's credentials; required.
	ClientID, ClientSecret string
	// Scopes are sent space-separated as the scope form field (none: no
	// field). Each is an RFC 6749 scope-token: printable ASCII without
	// space, '"' or '\'.
	Scopes []string
	// EndpointParams are further form fields, such as audience or resource
	// (a key may repeat). They may not set grant_type, scope, client_id or
	// client_secret, which the other fields own.
	EndpointParams url.Values
	// AuthStyle is how the client authenticates: "auto" (default), "header"
	// (HTTP Basic) or "body" (form fields); see OAuth2AuthAuto and the
	// others.
	AuthStyle string
	// DefaultLifetime is the lifetime assumed when the answer has no
	// expires_in (default 60m; at most 24h).
	DefaultLifetime time.Duration
	// Timeout bounds each call, answer body included (default 10s).
	Timeout time.Duration
	// MaxBodyBytes caps the answer body read (default 64 KiB); a longer
	// success answer is refused as malformed.
	MaxBodyBytes int64
	// HTTPClient makes the calls (default: as the RDP Client's, a client with
	// a Timeout of Timeout on a clone of http.DefaultTransport, verifying
	// certificates against RootCAs, and following no redirect).
	HTTPClient *http.Client
	// RootCAs verifies the endpoint's certificate with the default
	// HTTPClient (default: the system roots). It cannot be combined with
	// HTTPClient: set the roots on that client's transport instead.
	RootCAs *x509.CertPool
	// Clock is the time (default clock.Real()). It is read just before
	// each request is sent, to date the token ([Token].Sent), and to read
	// a Retry-After given as an HTTP date.
	Clock clock.Clock
	// BeforeAuth, when set, is called before every token request (both of
	// the requests of an "auto" probe). An error it returns is returned as
	// is and no request is made; the refresher uses it to cap sign-ons
	// fleet-wide.
	BeforeAuth func(ctx context.Context) error
	// Logger receives Debug lines for each token and Info lines for the
	// "auto" probe, with fingerprints only (default slog.Default()).
	Logger *slog.Logger
	// Registerer, when set, receives
	// tokenkeeper_upstream_request_duration_seconds{endpoint="token",code},
	// the metric of the RDP Client (shared when both use one registry),
	// recorded by a wrapper around HTTPClient's transport (HTTPClient itself
	// is left unchanged). Default: none.
	Registerer prometheus.Registerer
	// TracerProvider receives a client span of every grant, as Config's.
	// Default: the global one.
	TracerProvider trace.TracerProvider
}

// OAuth2 is a token source for a generic OAuth2 token endpoint: every Token
// call performs one client-credentials grant (RFC 6749 §4.4) and returns
// the access token as the Token. It is safe for concurrent use; calls are
// not serialized, since they share no session.
//
// It writes the form POST itself rather than going through
// golang.org/x/oauth2/clientcredentials, which the RDP Client uses for its
// sign-on, because x/oauth2 would get these wrong for a token that is the
// product itself:
//   - x/oauth2 reads up to 1 MiB of the answer whatever MaxBodyBytes says;
//   - its "auto" style probe retries with the credentials in the form after
//     any failure, a 503 or a timeout included, so a failing endpoint gets
//     two requests behind one BeforeAuth call (the fleet-wide cap would
//     count one sign-on for two); here the probe falls back only on a 400
//     or 401, and BeforeAuth guards each request;
//   - its Token.Expiry is counted from when the answer arrived, and the
//     request is built inside it, so the send time is not observable; here
//     Now is read just before the request goes out;
//   - its errors may quote the answer body.
//
// Failures are classified as the RDP Client's are (see Token).
type OAuth2 struct {
	cfg      OAuth2Config
	form     url.Values // grant_type, scope and EndpointParams; no credentials
	basic    string     // the Basic credentials as sent, to keep them out of error codes
	endpoint string     // TokenURL without query, for logs and errors
	http     *http.Client
	log      *slog.Logger
	style    string                 // OAuth2AuthHeader, OAuth2AuthBody or OAuth2AuthAuto
	detected atomic.Pointer[string] // the style an "auto" probe found, or nil
}

// oauth2Reserved are the form fields OAuth2Config.EndpointParams may not
// set.
var oauth2Reserved = []string{"grant_type", "scope", "client_id", "client_secret"}

// NewOAuth2 validates cfg, fills in its defaults, and returns an OAuth2. It
// makes no network call. Its error names every field that is wrong (joined
// with errors.Join), and never repeats the secret or the URL.
func NewOAuth2(cfg OAuth2Config) (*OAuth2, error) {
	endpoint, err := cfg.settle()
	if err != nil {
		return nil, err
	}
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = defaultHTTPClient(cfg.Timeout, cfg.RootCAs)
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.Real()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}

	form := url.Values{"grant_type": {"client_credentials"}}
	if len(cfg.Scopes) > 0 {
		form.Set("scope", strings.Join(cfg.Scopes, " "))
	}
	for k, vs := range cfg.EndpointParams {
		form[k] = append([]string(nil), vs...)
	}
	o := &OAuth2{
		cfg:      cfg,
		form:     form,
		basic:    base64.StdEncoding.EncodeToString([]byte(url.QueryEscape(cfg.ClientID) + ":" + url.QueryEscape(cfg.ClientSecret))),
		endpoint: endpoint,
		http:     cfg.HTTPClient,
		log:      cfg.Logger.With("component", "upstream", "token_url", endpoint),
		style:    cfg.AuthStyle,
	}
	if cfg.Registerer != nil {
		// The transport sees the URL without its query, as endpoint is.
		if o.http, err = instrumented(cfg.Registerer, o.http, map[string]string{endpoint: endpointToken}); err != nil {
			return nil, err
		}
	}
	o.http = traced(cfg.TracerProvider, o.http, map[string]string{endpoint: endpointToken})
	return o, nil
}

// settle checks every field of cfg at once, filling in the defaults, and
// returns the token endpoint without its query (what the metrics and
// logs name).
func (cfg *OAuth2Config) settle() (endpoint string, err error) {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("upstream: OAuth2Config."+format, args...))
	}
	if cfg.TokenURL == "" {
		bad("TokenURL is required")
	} else if u, err := url.Parse(cfg.TokenURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") ||
		u.Host == "" || u.User != nil || u.Fragment != "" || u.Opaque != "" {
		// The value is not echoed: a URL may carry credentials.
		bad("TokenURL must be an absolute http or https URL without user or fragment")
	} else {
		endpoint = u.Scheme + "://" + u.Host + u.Path
	}
	if cfg.ClientID == "" {
		bad("ClientID is required")
	}
	if cfg.ClientSecret == "" {
		bad("ClientSecret is required")
	}
	for i, s := range cfg.Scopes {
		if !isScopeToken(s) {
			bad("Scopes[%d] = %q is not a scope: want printable ASCII without space, '\"' or '\\'", i, s)
		}
	}
	for k := range cfg.EndpointParams {
		switch {
		case k == "":
			bad("EndpointParams has an empty key")
		case isReserved(k):
			bad("EndpointParams may not set %q (use the OAuth2Config field that owns it)", k)
		}
	}
	style := strings.ToLower(cfg.AuthStyle)
	switch style {
	case "":
		style = OAuth2AuthAuto
	case OAuth2AuthAuto, OAuth2AuthHeader, OAuth2AuthBody:
	default:
		bad("AuthStyle must be \"auto\", \"header\" or \"body\", not %q", cfg.AuthStyle)
	}
	cfg.AuthStyle = style
	if cfg.DefaultLifetime == 0 {
		cfg.DefaultLifetime = DefaultLifetime
	}
	if cfg.DefaultLifetime < 0 || cfg.DefaultLifetime > maxLifetime {
		bad("DefaultLifetime must be in (0, %v], not %v", maxLifetime, cfg.DefaultLifetime)
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.Timeout < 0 {
		bad("Timeout must be positive, not %v", cfg.Timeout)
	}
	if cfg.MaxBodyBytes == 0 {
		cfg.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if cfg.MaxBodyBytes < 0 {
		bad("MaxBodyBytes must be positive, not %d", cfg.MaxBodyBytes)
	}
	if cfg.HTTPClient != nil && cfg.RootCAs != nil {
		bad("RootCAs applies to the default HTTPClient only; set it on HTTPClient's transport instead")
	}
	return endpoint, errors.Join(errs...)
}

// isScopeToken reports whether s is an RFC 6749 scope-token:
// 1*( %x21 / %x23-5B / %x5D-7E ).
func isScopeToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x21 || c > 0x7e || c == '"' || c == '\\' {
			return false
		}
	}
	return true
}

func isReserved(key string) bool {
	for _, r := range oauth2Reserved {
		if key == r {
			return true
		}
	}
	return false
}

// Token performs a client-credentials grant and returns the access token.
// Every call makes a request (keeping the token is the caller's job), and
// calls BeforeAuth first.
//
// The Token's Sent is the time, on OAuth2Config.Clock, just before the
// request that obtained it was sent, and its Lifetime, counted from Sent, is
// the answer's expires_in (a JSON number or a string holding one) or
// DefaultLifetime when the answer has none; however long the answer takes,
// Sent+Lifetime does not outlast the token.
//
// With AuthStyle "auto", until a style has worked, the first request uses
// HTTP Basic and a 400 or 401 answer to it is followed by a second request
// with the credentials in the form (BeforeAuth is called again before it);
// the style that succeeds is kept. When both fail, the second failure is
// returned.
//
// On failure it returns the zero Token and an *Error with Op "token", never
// a partial token; an error from BeforeAuth is returned as is.
//   - no answer (network error, timeout, ctx done): Retryable.
//   - 408, 429 and 5xx: Retryable, with RetryAfter from the Retry-After
//     header (seconds or HTTP date; capped at maxLifetime, 24h, as the RDP
//     Client's is: the refresher's Backoff caps what it honours at 10m).
//   - other non-2xx answers (400, 401, 403 with invalid_client,
//     invalid_grant, unauthorized_client, invalid_scope, access_denied,
//     invalid_request, ..., or none; 404; a refused redirect): not
//     Retryable, since the same request will be refused again; Code holds
//     the OAuth2 error code. The exceptions are the codes that say to come
//     back later (temporarily_unavailable, server_error, slow_down), which
//     are Retryable whatever the status.
//   - a 2xx answer carrying an OAuth2 error instead of a token: classified
//     by its code as above, Retryable when the code is not one of the
//     refusals.
//   - a 2xx answer that is not JSON (or a form, when its Content-Type says
//     so), is HTML, is over MaxBodyBytes, has no access_token, a token that
//     is empty, over 8 KiB or has a space or control character, or an
//     expires_in that is not a number, not positive or over 24h:
//     Retryable, since the endpoint misbehaves; the cause wraps
//     errMalformed, errInvalidToken or errInvalidExpiry.
//
// No error and no log line carries the client secret or a token; logs name
// a token by its fingerprint.
func (o *OAuth2) Token(ctx context.Context) (Token, error) {
	style, probe := o.style, false
	if style == OAuth2AuthAuto {
		if d := o.detected.Load(); d != nil {
			style = *d
		} else {
			style, probe = OAuth2AuthHeader, true
		}
	}
	if err := o.beforeAuth(ctx); err != nil {
		return Token{}, err
	}
	tok, err := o.post(ctx, style)
	if !probe {
		return tok, err
	}
	if err == nil {
		o.keepStyle(style)
		return tok, nil
	}
	var e *Error
	if !errors.As(err, &e) || (e.Status != http.StatusBadRequest && e.Status != http.StatusUnauthorized) {
		return Token{}, err
	}
	o.log.Info("token endpoint refused HTTP Basic client authentication; trying the credentials in the form",
		"status", e.Status, "code", e.Code)
	if err := o.beforeAuth(ctx); err != nil {
		return Token{}, err
	}
	if tok, err = o.post(ctx, OAuth2AuthBody); err != nil {
		return Token{}, err
	}
	o.keepStyle(OAuth2AuthBody)
	return tok, nil
}

func (o *OAuth2) beforeAuth(ctx context.Context) error {
	if o.cfg.BeforeAuth == nil {
		return nil
	}
	return o.cfg.BeforeAuth(ctx)
}

// keepStyle records the style an "auto" probe found, once.
func (o *OAuth2) keepStyle(style string) {
	if o.detected.CompareAndSwap(nil, &style) {
		o.log.Info("token endpoint client authentication detected", "auth_style", style)
	}
}

// post sends one token request and reads its answer.
func (o *OAuth2) post(ctx context.Context, style string) (Token, error) {
	ctx, cancel := context.WithTimeout(ctx, o.cfg.Timeout)
	defer cancel()
	form := o.form
	if style == OAuth2AuthBody {
		form = make(url.Values, len(o.form)+2)
		for k, vs := range o.form {
			form[k] = vs
		}
		form.Set("client_id", o.cfg.ClientID)
		form.Set("client_secret", o.cfg.ClientSecret)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, o.cfg.TokenURL, strings.NewReader(form.Encode()))
	if err != nil {
		// Not reached: NewOAuth2 checked the URL. The error would quote it.
		return Token{}, &Error{Op: OpToken, Err: errors.New("cannot build the token request")}
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	if style == OAuth2AuthHeader {
		req.Header.Set("Authorization", "Basic "+o.basic)
	}
	sent := o.cfg.Clock.Now()
	resp, err := o.http.Do(req)
	if err != nil {
		return Token{}, &Error{Op: OpToken, Retryable: true, Err: o.redact(err)}
	}
	defer resp.Body.Close()
	body, readErr := readBody(resp.Body, o.cfg.MaxBodyBytes)
	s := resp.StatusCode
	if s/100 != 2 {
		code := o.safeCode(errorCode(body, s))
		return Token{}, &Error{
			Op:         OpToken,
			Status:     s,
			Code:       code,
			Retryable:  oauth2Retryable(s, code),
			RetryAfter: parseRetryAfter(resp.Header, o.cfg.Clock.Now()),
		}
	}
	if readErr != nil {
		return Token{}, &Error{Op: OpToken, Status: s, Retryable: true, Err: readErr}
	}
	value, lifetime, code, err := parseOAuth2Token(body, resp.Header.Get("Content-Type"), o.cfg.DefaultLifetime)
	if err != nil {
		code = o.safeCode(code)
		return Token{}, &Error{Op: OpToken, Status: s, Code: code, Retryable: oauth2Retryable(s, code), Err: err}
	}
	o.log.Debug("token received", "token", fingerprint(value), "lifetime", lifetime)
	return Token{Value: value, Lifetime: lifetime, Sent: sent}, nil
}

// safeCode is safeCode with the credentials as they are sent.
func (o *OAuth2) safeCode(code string) string {
	return safeCode(code, o.cfg.ClientSecret, o.basic)
}

// redact replaces the URL in an *url.Error by the endpoint without query,
// which may hold what should not be logged.
func (o *OAuth2) redact(err error) error {
	if ue, ok := err.(*url.Error); ok {
		c := *ue
		c.URL = o.endpoint
		return &c
	}
	return err
}

// oauth2Retryable classifies a refusal by its status and OAuth2 error code
// (see OAuth2.Token).
func oauth2Retryable(status int, code string) bool {
	switch {
	case status == http.StatusRequestTimeout || status == http.StatusTooManyRequests || status >= 500:
		return true
	case code == "temporarily_unavailable" || code == "server_error" || code == "slow_down":
		return true
	case status/100 == 2:
		// An error in a success answer: a refusal when it names one, else
		// the endpoint misbehaving.
		switch code {
		case "invalid_client", "invalid_grant", "unauthorized_client", "invalid_scope",
			"invalid_request", "unsupported_grant_type", "access_denied", "invalid_target":
			return false
		}
		return true
	}
	return false
}

// parseOAuth2Token reads a 2xx token answer (RFC 6749 §5.1): a JSON object,
// or a form-encoded body when contentType says so (as some endpoints
// answer, and x/oauth2 accepts). code is the answer's OAuth2 error code when
// it holds one instead of a token. Errors wrap errMalformed, errInvalidToken
// or errInvalidExpiry and never contain the body or the token.
func parseOAuth2Token(body []byte, contentType string, def time.Duration) (value string, lifetime time.Duration, code string, err error) {
	var token, expiresIn json.RawMessage // as JSON, nil when absent
	if mt, _, _ := mime.ParseMediaType(contentType); mt == "application/x-www-form-urlencoded" {
		vals, err := url.ParseQuery(string(body))
		if err != nil {
			return "", 0, "", fmt.Errorf("%w: unreadable form answer", errMalformed)
		}
		code = vals.Get("error")
		if vals.Has("access_token") {
			token, _ = json.Marshal(vals.Get("access_token"))
		}
		if vals.Has("expires_in") {
			expiresIn, _ = json.Marshal(vals.Get("expires_in"))
		}
	} else {
		trimmed := bytes.TrimSpace(body)
		if len(trimmed) == 0 {
			return "", 0, "", fmt.Errorf("%w: empty body", errMalformed)
		}
		if trimmed[0] == '<' {
			return "", 0, "", fmt.Errorf("%w: HTML instead of JSON", errMalformed)
		}
		var fields map[string]json.RawMessage
		if err := json.Unmarshal(trimmed, &fields); err != nil {
			return "", 0, "", fmt.Errorf("%w: not a JSON object", errMalformed)
		}
		code = errorCode(trimmed, 0)
		token, _ = present(fields, "access_token")
		expiresIn, _ = present(fields, "expires_in")
	}

	// As x/oauth2 does, an error code in a success answer makes it an error
	// answer, token or not.
	if code != "" {
		return "", 0, code, fmt.Errorf("%w: an error instead of a token", errMalformed)
	}
	if token == nil {
		return "", 0, "", fmt.Errorf("%w: no access_token in the answer", errInvalidToken)
	}
	if err := json.Unmarshal(token, &value); err != nil {
		return "", 0, "", fmt.Errorf("%w: access_token is not a string", errMalformed)
	}
	if err := checkToken(value); err != nil {
		return "", 0, "", err
	}
	lifetime = def
	if expiresIn != nil {
		if lifetime, err = parseSeconds(expiresIn); err != nil {
			return "", 0, "", fmt.Errorf("%w (expires_in)", err)
		}
	}
	return value, lifetime, "", nil
}
