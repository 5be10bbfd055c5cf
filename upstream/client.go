package upstream

import (
	"go.opentelemetry.io/otel/trace"

	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"

	"github.com/tokenkeeper/tokenkeeper/clock"
)

// Defaults of Config.
const (
	DefaultBaseURL      = "https://api.refinitiv.com"
	DefaultScope        = "trapi"
	DefaultLivenessPath = "/verification/v1/liveness/token"
	DefaultLifetime     = 60 * time.Minute
	DefaultTimeout      = 10 * time.Second
	DefaultMaxBodyBytes = 64 << 10
)

const (
	authV1Path = "/auth/oauth2/v1/token"
	authV2Path = "/auth/oauth2/v2/token"
	// An access token is reused until this long before it expires, or a
	// quarter of its lifetime before when that is shorter.
	accessReuseMargin = 30 * time.Second
)

// Config configures a Client. The zero value of each field is replaced by
// its documented default; New rejects what cannot work. Errors name a setting
// by its environment variable (RDP_CLIENT_ID, ...).
type Config struct {
	// BaseURL is the RDP root, an absolute http or https URL
	// (RDP_BASE_URL; default https://api.refinitiv.com). A path prefix is kept.
	BaseURL string
	// Auth selects the sign-on: "v2" (client credentials; default) or "v1"
	// (password grant with refresh token) (RDP_AUTH).
	Auth AuthVersion
	// ClientID is the v2 service account, or the v1 app key; required
	// (RDP_CLIENT_ID).
	ClientID string
	// ClientSecret is the v2 service account's secret; required for v2,
	// unused by v1 (RDP_CLIENT_SECRET).
	ClientSecret string
	// Username and Password are the v1 machine account; required for v1,
	// unused by v2 (RDP_USERNAME, RDP_PASSWORD).
	Username, Password string
	// Scope is the OAuth2 scope (RDP_SCOPE; default "trapi").
	Scope string
	// LivenessPath is the liveness endpoint below BaseURL
	// (RDP_LIVENESS_PATH; default /verification/v1/liveness/token).
	LivenessPath string
	// LivenessMethod is "POST" (default) or "GET" (RDP_LIVENESS_METHOD).
	LivenessMethod string
	// DefaultLifetime is the lifetime assumed when the liveness answer names
	// no expiry (TOKENKEEPER_TOKEN_LIFETIME; default 60m; at most 24h).
	DefaultLifetime time.Duration
	// HTTPClient makes the calls (default: a client with a Timeout of
	// Timeout, on a clone of http.DefaultTransport).
	HTTPClient *http.Client
	// Timeout bounds each HTTP call, answer body included (default 10s).
	Timeout time.Duration
	// MaxBodyBytes caps the answer bodies this package reads itself: the
	// liveness answer and the v1 auth answers (default 64 KiB). The v2 auth
	// answer is read by x/oauth2, which caps it at 1 MiB.
	MaxBodyBytes int64
	// Clock is the time (default clock.Real()). It is read just before
	// each HTTP call to date the request: a token's life, and an access token's, is
	// counted from when its request was sent, never from when the answer
	// arrived. It also decides whether the access token may be reused, and
	// is the local wall clock that an absolute expiry is compared with when
	// the answer has no usable Date header. Its readings should carry Go's
	// monotonic clock, as clock.Real's do, so that a step of the wall
	// clock does not shorten or stretch a lifetime counted from them. The
	// HTTP timeouts stay on Go's timers: they bound I/O, they date nothing.
	Clock clock.Clock
	// RootCAs verifies the upstream's certificate (RDP_TLS_CA adds to the
	// system roots). Default: the system roots. Verification is never
	// turned off.
	RootCAs *x509.CertPool
	// BeforeAuth, when set, is called before every sign-on call (password,
	// refresh or client-credentials grant). An error it returns is returned
	// as is and no call is made; the refresher uses it to cap sign-ons
	// fleet-wide.
	BeforeAuth func(ctx context.Context) error
	// Logger receives Debug lines for each sign-on and token, and Warn/Info
	// lines for fallbacks, with fingerprints only (default slog.Default()).
	Logger *slog.Logger
	// Registerer, when set, receives
	// tokenkeeper_upstream_request_duration_seconds{endpoint,code}: the
	// time of every HTTP call, recorded by a wrapper around HTTPClient's
	// transport (HTTPClient itself is left unchanged). Default: none.
	Registerer prometheus.Registerer
	// TracerProvider receives a client span of every HTTP call (sign-on and
	// liveness), under the caller's span; the calls carry the W3C trace
	// context to the upstream. No header or body is recorded. Default: the
	// global one.
	TracerProvider trace.TracerProvider
}

// Client obtains liveness tokens from RDP. It is safe for concurrent use;
// calls to Token are serialized, since they share one sign-on.
type Client struct {
	cfg         Config
	v1URL       string
	livenessURL string
	v2          *clientcredentials.Config // nil with auth v1
	http        *http.Client
	log         *slog.Logger

	sem chan struct{} // held by the one Token call in progress; guards below

	access      string
	accessUntil time.Time // reuse access while now is before this
	accessSent  time.Time // when access's request was sent
	accessLife  time.Duration
	refresh     string // v1 only
}

// New validates cfg, fills in its defaults, and returns a Client. It makes
// no network call.
func New(cfg Config) (*Client, error) {
	if err := cfg.settleEndpoints(); err != nil {
		return nil, err
	}
	if err := cfg.settleLimits(); err != nil {
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

	c := &Client{
		cfg:         cfg,
		v1URL:       cfg.BaseURL + authV1Path,
		livenessURL: cfg.BaseURL + cfg.LivenessPath,
		http:        cfg.HTTPClient,
		log:         cfg.Logger.With("component", "upstream", "auth", cfg.Auth),
		sem:         make(chan struct{}, 1),
	}
	if cfg.Auth == AuthV2 {
		c.v2 = &clientcredentials.Config{
			ClientID:     cfg.ClientID,
			ClientSecret: cfg.ClientSecret,
			TokenURL:     cfg.BaseURL + authV2Path,
			Scopes:       []string{cfg.Scope},
			// RDP takes the credentials as form fields; saying so spares the
			// auto-detection's second sign-on after a refusal.
			AuthStyle: oauth2.AuthStyleInParams,
		}
	}
	if cfg.Registerer != nil {
		endpoints := map[string]string{c.v1URL: endpointAuthV1, cfg.BaseURL + authV2Path: endpointAuthV2, c.livenessURL: endpointLiveness}
		var err error
		if c.http, err = instrumented(cfg.Registerer, c.http, endpoints); err != nil {
			return nil, err
		}
	}
	c.http = traced(cfg.TracerProvider, c.http, map[string]string{c.v1URL: endpointAuthV1, cfg.BaseURL + authV2Path: endpointAuthV2, c.livenessURL: endpointLiveness})
	return c, nil
}

// settleEndpoints checks where cfg signs on and asks for the token, and
// with which credentials, filling in the defaults.
func (cfg *Config) settleEndpoints() error {
	if cfg.BaseURL == "" {
		cfg.BaseURL = DefaultBaseURL
	}
	base, err := url.Parse(cfg.BaseURL)
	if err != nil || (base.Scheme != "http" && base.Scheme != "https") || base.Host == "" ||
		base.RawQuery != "" || base.Fragment != "" || base.User != nil {
		// The value is not echoed: a URL may carry credentials.
		return errors.New("upstream: RDP_BASE_URL must be an absolute http or https URL without user, query or fragment")
	}
	cfg.BaseURL = strings.TrimSuffix(base.String(), "/")

	switch cfg.Auth {
	case "":
		cfg.Auth = AuthV2
	case AuthV1, AuthV2:
	default:
		return fmt.Errorf("upstream: RDP_AUTH must be \"v1\" or \"v2\", not %q", cfg.Auth)
	}
	if cfg.ClientID == "" {
		return fmt.Errorf("upstream: RDP_CLIENT_ID is required for auth %s", cfg.Auth)
	}
	if cfg.Auth == AuthV2 && cfg.ClientSecret == "" {
		return errors.New("upstream: RDP_CLIENT_SECRET is required for auth v2")
	}
	if cfg.Auth == AuthV1 && cfg.Username == "" {
		return errors.New("upstream: RDP_USERNAME is required for auth v1")
	}
	if cfg.Auth == AuthV1 && cfg.Password == "" {
		return errors.New("upstream: RDP_PASSWORD is required for auth v1")
	}
	if cfg.Scope == "" {
		cfg.Scope = DefaultScope
	}
	if cfg.LivenessPath == "" {
		cfg.LivenessPath = DefaultLivenessPath
	}
	if !strings.HasPrefix(cfg.LivenessPath, "/") {
		return fmt.Errorf("upstream: RDP_LIVENESS_PATH must start with /, not %q", cfg.LivenessPath)
	}
	switch cfg.LivenessMethod = strings.ToUpper(cfg.LivenessMethod); cfg.LivenessMethod {
	case "":
		cfg.LivenessMethod = http.MethodPost
	case http.MethodPost, http.MethodGet:
	default:
		return fmt.Errorf("upstream: RDP_LIVENESS_METHOD must be POST or GET, not %q", cfg.LivenessMethod)
	}
	return nil
}

// settleLimits checks cfg's lifetime, timeout and body limit, filling in
// the defaults.
func (cfg *Config) settleLimits() error {
	if cfg.DefaultLifetime == 0 {
		cfg.DefaultLifetime = DefaultLifetime
	}
	if cfg.DefaultLifetime < 0 || cfg.DefaultLifetime > maxLifetime {
		return fmt.Errorf("upstream: TOKENKEEPER_TOKEN_LIFETIME must be in (0, %v], not %v", maxLifetime, cfg.DefaultLifetime)
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.Timeout < 0 {
		return fmt.Errorf("upstream: Timeout must be positive, not %v", cfg.Timeout)
	}
	if cfg.MaxBodyBytes == 0 {
		cfg.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if cfg.MaxBodyBytes < 0 {
		return fmt.Errorf("upstream: MaxBodyBytes must be positive, not %d", cfg.MaxBodyBytes)
	}
	return nil
}

// Token asks the upstream for a new liveness token; every call does (keeping
// the liveness token is the caller's job). It signs on first unless it holds an
// access token that is still valid with a margin (30s, or a quarter of the
// access token's lifetime when that is shorter), then calls the liveness
// endpoint. A 401 from the liveness endpoint drops the access token; Token
// signs on again and calls once more.
//
// Each HTTP call is bounded by Config.Timeout and by ctx. Token blocks while
// another Token call is in progress.
//
// The Token's Sent is the time, on Config.Clock, just before the liveness
// request was sent, and its Lifetime is counted from it, so that however long
// the answer takes, Sent+Lifetime does not overstate the expiry. An absolute
// expiry (expiresAt) is turned into a lifetime against the answer's own Date
// header, so the upstream's and the local wall clocks need not agree; only an
// answer without a usable Date header is compared with the local wall clock.
//
// On failure it returns the zero Token and an *Error, never a partial token:
//   - no answer (network error, timeout, ctx done): Retryable.
//   - 408, 429 and 5xx, from either call: Retryable, with RetryAfter from the
//     Retry-After header (seconds or HTTP date).
//   - other auth refusals (400, 401, 403, e.g. invalid_client,
//     invalid_grant): not Retryable; Code holds the OAuth2 error code. The
//     credentials or the account need an operator.
//   - a liveness 401 with a freshly issued access token (after the one
//     re-authentication): not Retryable, since the upstream refuses the
//     account itself (entitlement or gateway configuration), and repeating
//     would spend the sign-on budget. Other liveness 4xx: not Retryable.
//   - a 2xx answer that is not JSON, is HTML, is over MaxBodyBytes, or holds
//     an invalid token or expiry: Retryable (Op "liveness" or "auth"; the
//     cause wraps errMalformed, errInvalidToken or errInvalidExpiry).
func (c *Client) Token(ctx context.Context) (Token, error) {
	select {
	case c.sem <- struct{}{}:
	case <-ctx.Done():
		return Token{}, &Error{Op: OpLiveness, Retryable: true, Err: ctx.Err()}
	}
	defer func() { <-c.sem }()

	access, err := c.accessToken(ctx)
	if err != nil {
		return Token{}, err
	}
	tok, err := c.liveness(ctx, access)
	if !isUnauthorized(err) {
		return tok, err
	}
	c.log.Info("liveness refused the access token; signing on again",
		"access", fingerprint(access))
	c.access, c.accessUntil = "", time.Time{}
	if access, err = c.accessToken(ctx); err != nil {
		return Token{}, err
	}
	// A second 401 stays as statusError classed it: not retryable.
	return c.liveness(ctx, access)
}

// SignOn signs on afresh and returns the access token itself, dated from
// its request: the credential a fleet shares to mint per-device liveness
// tokens (Mint). It is serialized with Token, and calls BeforeAuth like
// every sign-on. An answer that names no lifetime is refused: a shared
// access token must say how long it may be shared.
func (c *Client) SignOn(ctx context.Context) (Token, error) {
	select {
	case c.sem <- struct{}{}:
	case <-ctx.Done():
		return Token{}, &Error{Op: OpAuth, Retryable: true, Err: ctx.Err()}
	}
	defer func() { <-c.sem }()
	c.access, c.accessUntil = "", time.Time{}
	access, err := c.accessToken(ctx)
	if err != nil {
		return Token{}, err
	}
	if c.accessLife <= 0 {
		return Token{}, &Error{Op: OpAuth, Retryable: true, Err: fmt.Errorf("%w: the sign-on answer names no expires_in", errInvalidExpiry)}
	}
	return Token{Value: access, Lifetime: c.accessLife, Sent: c.accessSent}, nil
}

// Mint calls the liveness endpoint with access, an access token that
// SignOn obtained, possibly on another replica. Unlike Token it never
// signs on: a 401 comes back as an *Error with Op OpLiveness and Status
// 401, for the caller to renew the shared access token. Safe to call
// concurrently.
func (c *Client) Mint(ctx context.Context, access string) (Token, error) {
	return c.liveness(ctx, access)
}

// IsUnauthorized reports whether err is the liveness endpoint refusing
// the access token (401).
func IsUnauthorized(err error) bool { return isUnauthorized(err) }

func isUnauthorized(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Op == OpLiveness && e.Status == http.StatusUnauthorized
}

// accessToken returns the held access token while it may be reused, else
// signs on.
func (c *Client) accessToken(ctx context.Context) (string, error) {
	if c.access != "" && c.cfg.Clock.Now().Before(c.accessUntil) {
		return c.access, nil
	}
	if c.cfg.Auth == AuthV2 {
		return c.signOnV2(ctx)
	}
	return c.signOnV1(ctx)
}

func (c *Client) beforeAuth(ctx context.Context) error {
	if c.cfg.BeforeAuth == nil {
		return nil
	}
	return c.cfg.BeforeAuth(ctx)
}

// keep stores an access token whose request was sent at sent, valid for
// lifetime counted from then (0: unknown, use once).
func (c *Client) keep(access string, lifetime time.Duration, sent time.Time) {
	margin := min(accessReuseMargin, lifetime/4)
	c.access, c.accessUntil = access, sent.Add(lifetime-margin)
	c.accessSent, c.accessLife = sent, lifetime
	c.log.Debug("signed on", "access", fingerprint(access), "expires_in", lifetime)
}

func (c *Client) signOnV2(ctx context.Context) (string, error) {
	if err := c.beforeAuth(ctx); err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	sent := c.cfg.Clock.Now()
	hc := *c.http
	capture := &captureTransport{base: hc.Transport, max: v2AnswerBytes}
	if capture.base == nil {
		capture.base = http.DefaultTransport
	}
	hc.Transport = capture
	t, err := c.v2.Token(context.WithValue(ctx, oauth2.HTTPClient, &hc))
	if err != nil {
		var re *oauth2.RetrieveError
		switch {
		case errors.As(err, &re) && re.Response != nil:
			return "", c.statusError(OpAuth, re.Response, re.Body, c.access, c.refresh)
		case ctx.Err() != nil || isTransport(err):
			return "", &Error{Op: OpAuth, Retryable: true, Err: err}
		case capture.body != nil:
			// x/oauth2 could not read the 2xx answer (an expires_in of 20.0,
			// say): read it as auth v1's and the liveness answers are.
			answer, err := parseAuthAnswer(capture.body)
			if err != nil {
				return "", &Error{Op: OpAuth, Retryable: true, Err: err}
			}
			c.keep(answer.access, answer.lifetime, sent)
			return answer.access, nil
		default:
			// Its message may quote the body, so only the class is kept.
			return "", &Error{Op: OpAuth, Retryable: true, Err: fmt.Errorf("%w: unreadable token answer", errMalformed)}
		}
	}
	if err := checkToken(t.AccessToken); err != nil {
		return "", &Error{Op: OpAuth, Retryable: true, Err: fmt.Errorf("%w: access token", errMalformed)}
	}
	lifetime, err := extraSeconds(t.Extra("expires_in"))
	if err != nil {
		return "", &Error{Op: OpAuth, Retryable: true, Err: err}
	}
	c.keep(t.AccessToken, lifetime, sent)
	return t.AccessToken, nil
}

// extraSeconds reads expires_in as x/oauth2 keeps it (float64 from JSON,
// int64 or string from a form body); nil gives 0.
func extraSeconds(v any) (time.Duration, error) {
	switch v := v.(type) {
	case nil:
		return 0, nil
	case float64:
		return parseSeconds(json.RawMessage(strconv.FormatFloat(v, 'g', -1, 64)))
	case int64:
		return parseSeconds(json.RawMessage(strconv.FormatInt(v, 10)))
	case string:
		return parseSeconds(json.RawMessage(strconv.Quote(v)))
	}
	return 0, fmt.Errorf("%w: expires_in is not a number", errMalformed)
}

// signOnV1 uses the refresh grant while a refresh token is held; a refusal
// of it (400, 401 or 403, such as invalid_grant) drops the refresh token and
// falls back to the password grant. A retryable failure of the refresh grant
// is returned as is, keeping the refresh token for the next try.
func (c *Client) signOnV1(ctx context.Context) (string, error) {
	if c.refresh != "" {
		access, err := c.postV1(ctx, url.Values{
			"grant_type":    {"refresh_token"},
			"refresh_token": {c.refresh},
			"client_id":     {c.cfg.ClientID},
		})
		if err == nil || IsRetryable(err) {
			return access, err
		}
		c.log.Warn("refresh token refused; signing on with the password", "error", err)
		c.refresh = ""
	}
	return c.postV1(ctx, url.Values{
		"grant_type":                 {"password"},
		"username":                   {c.cfg.Username},
		"password":                   {c.cfg.Password},
		"client_id":                  {c.cfg.ClientID},
		"scope":                      {c.cfg.Scope},
		"takeExclusiveSignOnControl": {"true"},
	})
}

// postV1 posts an auth v1 form and keeps the access and refresh tokens of
// the answer.
func (c *Client) postV1(ctx context.Context, form url.Values) (string, error) {
	if err := c.beforeAuth(ctx); err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.v1URL, strings.NewReader(form.Encode()))
	if err != nil {
		return "", &Error{Op: OpAuth, Err: err}
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	sent := c.cfg.Clock.Now()
	resp, err := c.http.Do(req)
	if err != nil {
		return "", &Error{Op: OpAuth, Retryable: true, Err: err}
	}
	defer resp.Body.Close()
	body, err := readBody(resp.Body, c.cfg.MaxBodyBytes)
	if resp.StatusCode/100 != 2 {
		return "", c.statusError(OpAuth, resp, body, c.access, c.refresh)
	}
	if err != nil {
		return "", &Error{Op: OpAuth, Status: resp.StatusCode, Retryable: true, Err: err}
	}

	answer, err := parseAuthAnswer(body)
	if err != nil {
		return "", &Error{Op: OpAuth, Status: resp.StatusCode, Retryable: true, Err: err}
	}
	if answer.refresh != "" {
		c.refresh = answer.refresh
	}
	c.keep(answer.access, answer.lifetime, sent)
	return answer.access, nil
}

// authAnswer is what a sign-on answer gives.
type authAnswer struct {
	access, refresh string
	lifetime        time.Duration // 0: not said
}

// parseAuthAnswer reads a JSON sign-on answer (auth v1 or v2) as
// tolerantly as the liveness answer: expires_in may be a number, whole or
// not, or a string holding one.
func parseAuthAnswer(body []byte) (authAnswer, error) {
	var answer struct {
		AccessToken  string          `json:"access_token"`
		RefreshToken string          `json:"refresh_token"`
		ExpiresIn    json.RawMessage `json:"expires_in"`
	}
	if err := json.Unmarshal(body, &answer); err != nil {
		return authAnswer{}, fmt.Errorf("%w: unreadable token answer", errMalformed)
	}
	if checkToken(answer.AccessToken) != nil {
		return authAnswer{}, fmt.Errorf("%w: access token", errMalformed)
	}
	out := authAnswer{access: answer.AccessToken, refresh: answer.RefreshToken}
	if len(answer.ExpiresIn) > 0 && string(answer.ExpiresIn) != "null" {
		var err error
		if out.lifetime, err = parseSeconds(answer.ExpiresIn); err != nil {
			return authAnswer{}, err
		}
	}
	return out, nil
}

// v2AnswerBytes is as much of an auth v2 answer as x/oauth2 reads.
const v2AnswerBytes = 1 << 20

// captureTransport keeps the body of a successful answer (up to max
// bytes) for its caller while passing it on unread: x/oauth2 refuses an
// expires_in that is not a whole number (20.0), and says nothing of the
// body it could not read.
type captureTransport struct {
	base http.RoundTripper
	max  int64
	body []byte // of the last 2xx answer
}

func (t *captureTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := t.base.RoundTrip(req)
	if err != nil || resp.StatusCode/100 != 2 {
		return resp, err
	}
	body, rerr := io.ReadAll(io.LimitReader(resp.Body, t.max))
	resp.Body.Close()
	if rerr != nil {
		return nil, rerr
	}
	t.body = body
	resp.Body = io.NopCloser(bytes.NewReader(body))
	return resp, nil
}

// liveness calls the liveness endpoint with the access token. The Token is
// dated from just before the request was sent; an absolute expiry is read
// against the answer's Date header (see parseLiveness).
func (c *Client) liveness(ctx context.Context, access string) (Token, error) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, c.cfg.LivenessMethod, c.livenessURL, nil)
	if err != nil {
		return Token{}, &Error{Op: OpLiveness, Err: err}
	}
	req.Header.Set("Authorization", "Bearer "+access)
	req.Header.Set("Accept", "application/json")
	sent := c.cfg.Clock.Now()
	resp, err := c.http.Do(req)
	if err != nil {
		return Token{}, &Error{Op: OpLiveness, Retryable: true, Err: err}
	}
	defer resp.Body.Close()
	body, err := readBody(resp.Body, c.cfg.MaxBodyBytes)
	if resp.StatusCode/100 != 2 {
		return Token{}, c.statusError(OpLiveness, resp, body, access)
	}
	if err != nil {
		return Token{}, &Error{Op: OpLiveness, Status: resp.StatusCode, Retryable: true, Err: err}
	}
	value, lifetime, err := parseLiveness(body, resp.Header.Get("Date"), sent, c.cfg.DefaultLifetime)
	if err != nil {
		return Token{}, &Error{Op: OpLiveness, Status: resp.StatusCode, Retryable: true, Err: err}
	}
	c.log.Debug("liveness token received", "token", fingerprint(value), "lifetime", lifetime)
	return Token{Value: value, Lifetime: lifetime, Sent: sent}, nil
}

// statusError classifies a non-2xx answer. The body is read only for its
// error code, which is dropped when it quotes the configured secrets or
// one of tokens (those the call held: the caller passes them, since Mint
// runs beside a sign-on and must not read the client's own).
func (c *Client) statusError(op Op, resp *http.Response, body []byte, tokens ...string) *Error {
	s := resp.StatusCode
	return &Error{
		Op:         op,
		Status:     s,
		Code:       safeCode(errorCode(body, s), append([]string{c.cfg.ClientSecret, c.cfg.Password}, tokens...)...),
		Retryable:  s == http.StatusRequestTimeout || s == http.StatusTooManyRequests || s >= 500,
		RetryAfter: parseRetryAfter(resp.Header, c.cfg.Clock.Now()),
	}
}

// defaultHTTPClient returns the HTTP client used when the caller gives none:
// a Timeout of timeout, on a clone of http.DefaultTransport that verifies
// certificates against rootCAs (nil: the system roots), and no redirects.
func defaultHTTPClient(timeout time.Duration, rootCAs *x509.CertPool) *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	// Certificates are always verified; RootCAs only chooses whom to trust.
	tr.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: rootCAs}
	return &http.Client{
		Timeout:   timeout,
		Transport: tr,
		// A redirect would carry credentials elsewhere: refuse it.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// isTransport reports whether err came from the HTTP exchange itself rather
// than from reading the answer.
func isTransport(err error) bool {
	var ue *url.Error
	return errors.As(err, &ue)
}
