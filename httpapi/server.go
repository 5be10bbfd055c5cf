package httpapi

import (
	"go.opentelemetry.io/otel/trace"

	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/labstack/echo/v4/middleware"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/tokenkeeper/tokenkeeper/cache"
	"github.com/tokenkeeper/tokenkeeper/clock"
)

// tokenSource gives one token this replica may serve now.
type tokenSource interface {
	// Current returns the token if it is servable now (not within the serve
	// margin of expiry). It is called on every read: it must be fast, must
	// not block and must be safe for concurrent use.
	Current() (cache.Token, bool)
}

// controller is the fleet's control plane as this replica sees it. Its
// methods must be safe for concurrent use.
type controller interface {
	// Status describes the fleet as this replica sees it. Errors wrapping
	// fault.ErrUnavailable or fault.ErrNoLeader answer 503 with
	// Retry-After (Config.RetryAfter), others 500; admins see their
	// message.
	Status(ctx context.Context) (Status, error)
	// Refresh asks the leader of the named token (whichever replica it is)
	// to fetch a new one now and blocks until it is stored or ctx ends.
	// Returns the new token. Errors wrapping fault.ErrUnavailable or
	// fault.ErrNoLeader answer 503 with Retry-After (Config.RetryAfter),
	// others 502; once ctx's deadline
	// (Config.RefreshTimeout) has passed, 504. Admins see the message, so it
	// must not hold secrets.
	Refresh(ctx context.Context, name string) (cache.Token, error)
}

// Status is what GET /v1/status answers, as JSON with the field names in
// the tags. It never holds the token itself. Zero times are left out; times
// are shown in UTC.
type Status struct {
	// Instance is this replica's id; the server fills it from
	// Config.Instance when empty.
	Instance string `json:"instance"`
	// Leader is the id of the replica holding the leader lock; empty when
	// none is known.
	Leader   string `json:"leader,omitempty"`
	IsLeader bool   `json:"is_leader"`
	// Ready is whether this replica holds a servable token.
	Ready bool `json:"ready"`
	// TokenFingerprint names the token this replica holds (cache.Fingerprint).
	TokenFingerprint string `json:"token_fingerprint,omitempty"`
	// Generation is the held token's generation (generationHeader, X-Tokenkeeper-Generation).
	Generation uint64 `json:"generation,omitempty"`
	// ExpiresAt is when that token expires.
	ExpiresAt time.Time `json:"expires_at,omitzero"`
	// ExpiresIn is the whole seconds left until ExpiresAt. The server
	// computes it from ExpiresAt and Config.Clock; a value set by the
	// Controller is overwritten.
	ExpiresIn int64 `json:"expires_in"`
	// LastRefresh is when the fleet last stored a new token; NextRefresh
	// when the leader plans to fetch the next.
	LastRefresh time.Time `json:"last_refresh,omitzero"`
	NextRefresh time.Time `json:"next_refresh,omitzero"`
	// LastError is the last refresh failure, empty after a success. It is
	// shown to admins, so it must not hold secrets.
	LastError string `json:"last_error,omitempty"`
	// Replicas are the replicas whose heartbeat is fresh; Refreshes the
	// last refresh attempts of any leader, newest first.
	Replicas  []Replica `json:"replicas"`
	Refreshes []Refresh `json:"refreshes"`
	// Build is the build this replica runs.
	Build *Build `json:"build,omitempty"`
	// Tokens are every token of the catalog, in its order; the fields
	// above describe the first.
	Tokens []TokenStatus `json:"tokens,omitempty"`
	// GeneratedAt is when the server answered, on its clock (Config.Clock):
	// a client subtracts it from the other times to get durations without
	// comparing its own clock with the server's. The server sets it.
	GeneratedAt time.Time `json:"generated_at"`
}

// Build names a replica's build in Status.
type Build struct {
	Version   string `json:"version"`
	Commit    string `json:"commit,omitempty"`
	GoVersion string `json:"go_version"`
}

// Config configures a Server. The zero value of each field is usable;
// without ReaderKeys, a reader of Keys or Security.Identities, or
// AllowAnonymous, no one may read.
type Config struct {
	// Instance names this replica in the X-Tokenkeeper-Instance header and
	// in Status. Default: the host name.
	Instance string
	// ReaderKeys may read the token (TOKENKEEPER_API_KEYS).
	ReaderKeys []string
	// AdminKeys may read the token, read the status and ask for a refresh
	// (TOKENKEEPER_ADMIN_KEYS). Without them the admin routes do not exist
	// and answer 404.
	AdminKeys []string
	// AllowAnonymous lets requests that present no key at all read the
	// token. A request that presents a key still needs a valid one.
	AllowAnonymous bool
	// AllowWeakKeys accepts reader and admin keys (of ReaderKeys,
	// AdminKeys and Keys) that CheckKeyStrength finds too weak to resist
	// guessing; without it New refuses them. For demos and tests only.
	// Metrics keys are not measured.
	AllowWeakKeys bool
	// MetricsKeys, when set, are needed (or an admin key) to read
	// /metrics. Default: none, /metrics is open.
	MetricsKeys []string
	// Keys are further keys, each with its role and the tokens it may use
	// (a catalog's keys).
	Keys []Key
	// Clock is the time expires_in, the failed-auth windows and delays, the
	// rate limits and the audit trail's minutes are counted on. Default:
	// clock.Real(). Request durations in the metrics are measured on Go's
	// clock whatever it is: they date nothing.
	Clock clock.Clock
	// Logger receives the server's logs. Default: none are written.
	Logger *slog.Logger
	// Registerer receives the server's metrics and Gatherer is served on
	// /metrics. Without a Registerer the server's metrics go to a private
	// registry, with the Go and process collectors, served alone or along
	// with Gatherer. A Registerer without a Gatherer must also be a
	// Gatherer (as *prometheus.Registry is).
	Registerer prometheus.Registerer
	Gatherer   prometheus.Gatherer
	// RefreshTimeout bounds how long POST .../refresh waits. Default 30s.
	RefreshTimeout time.Duration
	// RetryAfter is advertised with 503 answers, rounded up to whole
	// seconds. Default 5s.
	RetryAfter time.Duration
	// RateLimit, when positive, is how many requests per second each key
	// may make to this replica, refilled continuously, with bursts of
	// RateBurst (default twice RateLimit); anonymous requests are limited
	// the same way per client address. Over it the answer is 429 with
	// Retry-After. Default: no limit.
	RateLimit float64
	RateBurst int
	// ShutdownTimeout bounds how long Serve waits for requests in flight
	// once its context ends. Default 10s.
	ShutdownTimeout time.Duration
	// Security holds client certificate identities, trusted proxies, the
	// throttling of failed authentication, the audit trail and the
	// fleet-wide rate limit (guard.go).
	Security Security
	// TracerProvider, when set, receives a server span of every request
	// (tracing.go), in the trace its traceparent header names. Nil: no
	// spans, and nothing is added to the path of a request.
	TracerProvider trace.TracerProvider
}

// Defaults of Config.
const (
	defaultRefreshTimeout  = 30 * time.Second
	defaultRetryAfter      = 5 * time.Second
	defaultShutdownTimeout = 10 * time.Second
)

// Limits Serve applies to every connection.
const (
	readHeaderTimeout = 5 * time.Second
	// readTimeout bounds the whole request, body included (at most
	// bodyLimit). Equal to readHeaderTimeout, net/http arms the
	// connection's read deadline once per request instead of twice.
	readTimeout    = readHeaderTimeout
	idleTimeout    = 2 * time.Minute
	maxHeaderBytes = 16 << 10
	bodyLimit      = "4KiB"
	// writeTimeoutSlack is how much longer than RefreshTimeout a response may take to write.
	writeTimeoutSlack = 10 * time.Second
)

// Server is the HTTP API of one replica. Its methods are safe for
// concurrent use.
type Server struct {
	instance        string
	catalog         catalog
	ctl             controller
	clock           clock.Clock
	now             func() time.Time // clock.Now
	fakeClock       bool             // clock is not clock.Real()
	log             *slog.Logger
	anonymous       bool
	readerKeys      keySet
	adminKeys       keySet
	metricsKeys     keySet
	limits          *limits
	guard           *guard
	draining        atomic.Bool
	refreshTimeout  time.Duration
	shutdownTimeout time.Duration
	retryAfterValue []string
	instanceValue   []string
	metrics         *metrics
	tokenMetrics    *routeMetrics // the token route's, for readToken
	gatherer        prometheus.Gatherer
	echo            *echo.Echo
	handler         http.Handler
}

// New builds a Server that serves tokens and asks ctl for the admin
// routes. ctl may be nil when cfg has no admin keys. It rejects keys no
// client could present (empty, padded with white space).
func New(cfg Config, tokens []Token, ctl controller) (*Server, error) {
	cat, err := newCatalog(tokens)
	if err != nil {
		return nil, err
	}
	// Whether anyone may read (reader keys or identities, or anonymous
	// reads) is the front door's rule (tokenkeeper.Config); a Server
	// without readers answers every read 401.
	admin := len(cfg.AdminKeys) > 0
	for _, k := range cfg.Keys {
		admin = admin || k.Role == RoleAdmin
	}
	if admin && ctl == nil {
		return nil, errors.New("httpapi: TOKENKEEPER_ADMIN_KEYS is set but there is no Controller for the admin routes")
	}
	s := &Server{catalog: cat, ctl: ctl, anonymous: cfg.AllowAnonymous, clock: cfg.Clock, log: cfg.Logger}
	if s.clock == nil {
		s.clock = clock.Real()
	}
	s.now, s.fakeClock = s.clock.Now, s.clock != clock.Real()
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if err := s.keys(cfg); err != nil {
		return nil, err
	}
	if err := s.setLimits(cfg); err != nil {
		return nil, err
	}
	if err := s.setAnswers(cfg); err != nil {
		return nil, err
	}
	reg, err := s.registry(cfg)
	if err != nil {
		return nil, err
	}
	if s.metrics, err = newMetrics(reg); err != nil {
		return nil, err
	}
	if s.guard, err = newGuard(cfg, s, reg); err != nil {
		return nil, err
	}

	s.echo = s.routes(admin)
	s.tokenMetrics = s.metrics.route(tokenRoute)
	s.handler = http.HandlerFunc(s.serveHTTP)
	if cfg.TracerProvider != nil {
		s.handler = traced(cfg.TracerProvider, s.handler)
	}
	return s, nil
}

// setLimits sets the per-replica rate limits of cfg on s, whose keys are
// digested.
func (s *Server) setLimits(cfg Config) error {
	switch {
	case cfg.RateLimit < 0:
		return fmt.Errorf("httpapi: RateLimit %v is negative", cfg.RateLimit)
	case cfg.RateBurst < 0:
		return fmt.Errorf("httpapi: RateBurst %d is negative", cfg.RateBurst)
	}
	burst := cfg.RateBurst
	if burst == 0 {
		burst = max(1, int(2*cfg.RateLimit))
	}
	s.limits = newLimits(cfg.RateLimit, burst, s.readerKeys, s.adminKeys, s.metricsKeys)
	return nil
}

// setAnswers sets what every answer or Serve takes from cfg: the
// instance header, the timeouts and the Retry-After of a 503.
func (s *Server) setAnswers(cfg Config) error {
	s.instance = cfg.Instance
	if s.instance == "" {
		if h, err := os.Hostname(); err == nil && h != "" {
			s.instance = h
		} else {
			s.instance = "tokenkeeper"
		}
	}
	if strings.ContainsFunc(s.instance, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return errors.New("httpapi: the instance id contains a control character")
	}
	s.instanceValue = []string{s.instance}[:1:1]
	var retryAfter time.Duration
	for _, d := range []struct {
		name string
		v    time.Duration
		def  time.Duration
		to   *time.Duration
	}{
		{"RefreshTimeout", cfg.RefreshTimeout, defaultRefreshTimeout, &s.refreshTimeout},
		{"ShutdownTimeout", cfg.ShutdownTimeout, defaultShutdownTimeout, &s.shutdownTimeout},
		{"RetryAfter", cfg.RetryAfter, defaultRetryAfter, &retryAfter},
	} {
		switch {
		case d.v < 0:
			return fmt.Errorf("httpapi: %s %v is negative", d.name, d.v)
		case d.v == 0:
			*d.to = d.def
		default:
			*d.to = d.v
		}
	}
	secs := int64((retryAfter + time.Second - 1) / time.Second)
	s.retryAfterValue = []string{strconv.FormatInt(secs, 10)}[:1:1]
	return nil
}

// registry returns where s registers its metrics, and sets what /metrics
// serves: without a Registerer, a private registry with the Go and
// process collectors, served alone or beside Config.Gatherer.
func (s *Server) registry(cfg Config) (prometheus.Registerer, error) {
	reg := cfg.Registerer
	s.gatherer = cfg.Gatherer
	if reg == nil {
		private := prometheus.NewRegistry()
		private.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
		reg = private
		if s.gatherer == nil {
			s.gatherer = private
		} else {
			s.gatherer = prometheus.Gatherers{s.gatherer, private}
		}
	}
	if s.gatherer == nil {
		g, ok := reg.(prometheus.Gatherer)
		if !ok {
			return nil, errors.New("httpapi: Config.Gatherer is needed when Config.Registerer is not a Gatherer")
		}
		s.gatherer = g
	}
	return reg, nil
}

// keys digests cfg's keys into the server's key sets, with their scopes.
func (s *Server) keys(cfg Config) error {
	var err error
	strong := !cfg.AllowWeakKeys
	if s.readerKeys, err = newKeySet("TOKENKEEPER_API_KEYS", cfg.ReaderKeys, strong); err != nil {
		return err
	}
	if s.adminKeys, err = newKeySet("TOKENKEEPER_ADMIN_KEYS", cfg.AdminKeys, strong); err != nil {
		return err
	}
	if s.metricsKeys, err = newKeySet("TOKENKEEPER_METRICS_KEYS", cfg.MetricsKeys, false); err != nil {
		return err
	}
	for i, k := range cfg.Keys {
		name := k.Name
		if name == "" {
			name = fmt.Sprintf("%d of %d", i+1, len(cfg.Keys))
		}
		d, err := parseKey(k.Value)
		if err != nil {
			return fmt.Errorf("httpapi: key %s %v", name, err)
		}
		sc, err := newScope(s.catalog, k.Tokens)
		if err != nil {
			return fmt.Errorf("httpapi: key %s %v", name, err)
		}
		if strong && k.Role != RoleMetrics {
			if err := CheckKeyStrength(k.Value); err != nil {
				return fmt.Errorf("httpapi: key %s %v; %s", name, err, weakKeysHint)
			}
		}
		switch k.Role {
		case RoleReader, "":
			s.readerKeys.add(d, sc, name)
		case RoleAdmin:
			s.adminKeys.add(d, sc, name)
		case RoleMetrics:
			s.metricsKeys.add(d, sc, name)
		default:
			return fmt.Errorf("httpapi: key %s: unknown role %q (reader, admin or metrics)", name, k.Role)
		}
	}
	return nil
}

// handlerFunc is a route handler. now is the request's time on the
// configured clock, read once by instrument.
type handlerFunc func(c echo.Context, now time.Time) error

// routes builds the echo instance. Middleware is composed into each handler
// here, once: echo applies route and global middleware anew on every
// request, which allocates.
func (s *Server) routes(admin bool) *echo.Echo {
	e := echo.New()
	e.HideBanner = true
	e.HidePort = true
	e.Logger.SetOutput(io.Discard)
	e.HTTPErrorHandler = s.routerError

	limit := middleware.BodyLimitWithConfig(middleware.BodyLimitConfig{
		Limit:   bodyLimit,
		Skipper: func(c echo.Context) bool { return c.Request().ContentLength == 0 },
	})
	add := func(method, pattern string, h handlerFunc) {
		e.Add(method, pattern, limit(s.instrument(pattern, h)))
	}
	add(http.MethodGet, "/v1/tokens", s.listTokens)
	add(http.MethodGet, tokenRoute, s.getToken) // plain reads take readToken's way
	// The device is the rest of the path, so that an id holding a slash is
	// refused as an id (400), not as a route that does not exist.
	add(http.MethodGet, "/v1/tokens/:name/devices/*", s.getDeviceToken)
	add(http.MethodGet, "/healthz", s.getHealth)
	add(http.MethodGet, "/readyz", s.getReady)
	add(http.MethodGet, "/metrics", s.metricsHandler())
	add(http.MethodGet, "/openapi.json", s.getOpenAPI)
	if admin {
		add(http.MethodGet, "/v1/status", s.getStatus)
		add(http.MethodPost, "/v1/tokens/:name/refresh", s.postRefresh)
		add(http.MethodGet, "/status", s.getStatusPage)
	} else {
		// Off: 404 for every method, as for a path that never existed. Left
		// unregistered, echo would answer some of them 405 through the
		// token route's pattern.
		off := func(echo.Context) error { return errRouteNotFound }
		e.Any("/v1/status", off)
		e.Any("/v1/tokens/:name/refresh", off)
		e.Any("/status", off)
	}
	return e
}

// instrument adapts the handler of the route with the path pattern: it
// answers the handler's errors as JSON, turns a panic into a 500 and
// records the request's metrics. It reads the clock once for both the
// duration and the handler's now, unless Config.Clock replaced the clock.
func (s *Server) instrument(pattern string, h handlerFunc) echo.HandlerFunc {
	rm := s.metrics.route(pattern)
	return func(c echo.Context) error {
		start := time.Now()
		now := start
		if s.fakeClock {
			now = s.now()
		}
		if err := s.call(h, c, now); err != nil {
			s.writeError(c, err)
		}
		rm.observe(c.Response().Status, time.Since(start))
		return nil
	}
}

// call runs h, turning a panic into errInternal (but letting
// http.ErrAbortHandler through, as net/http expects).
func (s *Server) call(h handlerFunc, c echo.Context, now time.Time) (err error) {
	defer func() {
		if p := recover(); p != nil {
			if p == http.ErrAbortHandler {
				panic(p)
			}
			s.log.Error("httpapi: handler panicked", "route", c.Path(), "panic", p)
			err = errInternal
		}
	}()
	return h(c, now)
}

// Drain makes /readyz answer 503 from now on while every other route
// keeps answering, so that load balancers stop sending requests before the
// server shuts down. It is safe to call at any time.
func (s *Server) Drain() { s.draining.Store(true) }

// Handler returns the server's http.Handler, for tests and for callers that
// run their own http.Server.
func (s *Server) Handler() http.Handler { return s.handler }

// serveHTTP sets the headers every answer carries, answers plain token
// reads itself (readToken) and hands every other request to echo.
// earlyAnswer writes the same headers into the answers net/http gives
// before any handler runs: keep the two in step.
func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h["X-Tokenkeeper-Instance"] = s.instanceValue
	h["X-Content-Type-Options"] = nosniffValue
	h["X-Frame-Options"] = frameDenyValue
	h["Referrer-Policy"] = noReferrerValue
	h["Cache-Control"] = noStoreValue
	if name, ok := tokenReadName(r); ok {
		s.readToken(w, r, name)
		return
	}
	s.echo.ServeHTTP(w, r)
}

// Serve answers HTTP on ln until ctx ends, then shuts down gracefully: it
// stops accepting, cancels the context of requests in flight (a waiting
// refresh answers 503) and waits up to Config.ShutdownTimeout for them to
// finish before closing what remains. It closes ln. It returns nil after a
// shutdown caused by ctx, or the error that stopped serving.
//
// The requests net/http refuses itself, before any handler runs (headers
// over 16 KiB: 431; a malformed request line, header or Host: 400), are
// answered with the same JSON errors and headers as every other answer. A
// server of the caller's own running Handler answers them as net/http
// does, in plain text.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	base, cancelBase := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelBase()
	srv := &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       readTimeout,
		WriteTimeout:      s.refreshTimeout + writeTimeoutSlack,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
		BaseContext:       func(net.Listener) context.Context { return base },
	}
	defer s.startAudit()()
	served := make(chan error, 1)
	go func() { served <- srv.Serve(earlyListener{ln, s}) }()
	s.log.Info("httpapi: serving", "addr", ln.Addr().String(), "instance", s.instance)

	select {
	case err := <-served:
		return fmt.Errorf("httpapi: serve: %w", err)
	case <-ctx.Done():
	}
	cancelBase()
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.shutdownTimeout)
	defer cancel()
	err := srv.Shutdown(sctx)
	if err != nil {
		err = errors.Join(fmt.Errorf("httpapi: shutdown: %w", err), srv.Close())
	}
	if serr := <-served; !errors.Is(serr, http.ErrServerClosed) {
		err = errors.Join(err, fmt.Errorf("httpapi: serve: %w", serr))
	}
	s.log.Info("httpapi: stopped", "instance", s.instance)
	return err
}
