package httpapi

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tokenkeeper/tokenkeeper/clock"
)

// Security is the second line of the server's defences: client
// certificate identities, the client address behind trusted proxies, the
// throttling of failed authentication, the audit trail and the fleet-wide
// rate limit. Its zero value turns each of them off, but the throttling,
// which is on with its defaults.
type Security struct {
	// Identities are client certificate subjects that stand for keys,
	// each with a role and the tokens it may use. They apply to requests
	// that came over TLS with a certificate the listener verified (see
	// internal/certreload) and present no key: a key, when presented,
	// decides alone.
	Identities []Identity
	// TrustedProxies are the peers whose X-Forwarded-For header names the
	// client: the client address is the right-most address of the header
	// that is not itself a trusted proxy. From any other peer the header
	// is ignored, and the peer is the client. Default: none.
	TrustedProxies []netip.Prefix
	// AuthFailures is how many failed authentications from one client
	// address, or with one presented key, are answered 401 at once; the
	// ones that follow are answered 401 only after a delay that starts at
	// authFailureBaseDelay and doubles with each, up to
	// AuthFailureMaxDelay. The count starts again after an
	// AuthFailureWindow without failures. A request with a valid key is
	// never delayed nor refused for anyone's failures. Default
	// defaultAuthFailures; negative turns the delays off (failures are
	// still counted in the metrics).
	AuthFailures int
	// AuthFailureWindow is how long failures are remembered after the
	// last one. Default defaultAuthFailureWindow.
	AuthFailureWindow time.Duration
	// AuthFailureMaxDelay is the longest delay of a failed
	// authentication. Default defaultAuthFailureMaxDelay.
	AuthFailureMaxDelay time.Duration
	// AuthFailuresInFlight is how many delayed failed authentications of
	// one client address, or with one key, may wait at once; past it the
	// failing request is answered 429 with Retry-After at once, so that a
	// client cannot hold the replica's connections with wrong keys.
	// Default defaultAuthFailuresInFlight.
	AuthFailuresInFlight int
	// Audit receives the audit trail: tokens handed out, admin actions,
	// throttled clients. Default: none.
	Audit *slog.Logger
	// AuditReadsPerMinute is how many token reads of one key (or identity)
	// and token are written one line each in a minute; the reads past it
	// are counted and written as one line when the minute is over.
	// Default defaultAuditReadsPerMinute; negative: every read is counted
	// into the minute's line, none written alone.
	AuditReadsPerMinute int
	// FleetRateLimit, when positive, is how many requests per second each
	// key (or identity) may make to the whole fleet: this replica admits
	// its share, FleetRateLimit divided by the replicas SetReplicas last
	// reported, with a burst of one second's share. It replaces
	// Config.RateLimit for keys; anonymous reads stay limited per replica
	// and client address by Config.RateLimit.
	FleetRateLimit float64
}

// Defaults of Security.
const (
	defaultAuthFailures         = 10
	defaultAuthFailureWindow    = time.Minute
	defaultAuthFailureMaxDelay  = 5 * time.Second
	defaultAuthFailuresInFlight = 4
	defaultAuditReadsPerMinute  = 60
	// authFailureBaseDelay is the delay of the first failed
	// authentication past Security.AuthFailures.
	authFailureBaseDelay = 100 * time.Millisecond
)

// guard is Security as the server applies it.
type guard struct {
	idents   [3]keySet // by role: reader, admin, metrics; digests of identityDigest
	anyIdent bool
	realIP   echo.IPExtractor // nil: the peer is the client
	log      *slog.Logger
	audit    *auditTrail // nil: off
	now      func() time.Time
	clock    clock.Clock // its timers delay failures

	failLimit int // failures answered at once; -1: delays off
	window    time.Duration
	maxDelay  time.Duration
	inFlight  int
	mu        sync.Mutex // guards addrs and keys, and the failures they hold
	addrs     map[string]*failures
	keys      map[[sha256.Size]byte]*failures

	authFailed    prometheus.Counter
	throttledBy   *prometheus.CounterVec
	throttledAddr prometheus.Counter
	throttledKey  prometheus.Counter
	replicas      prometheus.Gauge
}

// newGuard applies cfg.Security to s, whose catalog, keys, limits, clock
// and logger are set, and registers its metrics with reg.
func newGuard(cfg Config, s *Server, reg prometheus.Registerer) (*guard, error) {
	sec := cfg.Security
	g := &guard{log: s.log, now: s.now, clock: s.clock, failLimit: sec.AuthFailures, window: sec.AuthFailureWindow,
		maxDelay: sec.AuthFailureMaxDelay, inFlight: sec.AuthFailuresInFlight}
	switch {
	case g.failLimit == 0:
		g.failLimit = defaultAuthFailures
	case g.failLimit < 0:
		g.failLimit = -1
	}
	for _, d := range []struct {
		name string
		v    *time.Duration
		def  time.Duration
	}{{"AuthFailureWindow", &g.window, defaultAuthFailureWindow}, {"AuthFailureMaxDelay", &g.maxDelay, defaultAuthFailureMaxDelay}} {
		switch {
		case *d.v < 0:
			return nil, fmt.Errorf("httpapi: %s %v is negative", d.name, *d.v)
		case *d.v == 0:
			*d.v = d.def
		}
	}
	switch {
	case g.inFlight < 0:
		return nil, fmt.Errorf("httpapi: AuthFailuresInFlight %d is negative", g.inFlight)
	case g.inFlight == 0:
		g.inFlight = defaultAuthFailuresInFlight
	}
	g.addrs = make(map[string]*failures)
	g.keys = make(map[[sha256.Size]byte]*failures)
	if len(sec.TrustedProxies) > 0 {
		opts := []echo.TrustOption{echo.TrustLoopback(false), echo.TrustLinkLocal(false), echo.TrustPrivateNet(false)}
		for _, p := range sec.TrustedProxies {
			if !p.IsValid() {
				return nil, errors.New("httpapi: TrustedProxies holds an invalid prefix")
			}
			p = p.Masked()
			opts = append(opts, echo.TrustIPRange(&net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}))
		}
		g.realIP = echo.ExtractIPFromXFFHeader(opts...)
	}
	seen := map[[sha256.Size]byte]string{}
	for i, id := range sec.Identities {
		name := id.Name
		if name == "" {
			name = id.Subject
		}
		kind, value, err := parseSubject(id.Subject)
		if err != nil {
			return nil, fmt.Errorf("httpapi: identity %d of %d (%s): %v", i+1, len(sec.Identities), name, err)
		}
		d := identityDigest(kind, value)
		if other, dup := seen[d]; dup {
			return nil, fmt.Errorf("httpapi: identity %s has the subject of identity %s", name, other)
		}
		seen[d] = name
		sc, err := newScope(s.catalog, id.Tokens)
		if err != nil {
			return nil, fmt.Errorf("httpapi: identity %s %v", name, err)
		}
		switch id.Role {
		case RoleReader, "":
			g.idents[0].add(d, sc, name)
		case RoleAdmin:
			g.idents[1].add(d, sc, name)
		case RoleMetrics:
			g.idents[2].add(d, sc, name)
		default:
			return nil, fmt.Errorf("httpapi: identity %s: unknown role %q (reader, admin or metrics)", name, id.Role)
		}
		g.anyIdent = true
	}
	switch {
	case sec.FleetRateLimit < 0:
		return nil, fmt.Errorf("httpapi: FleetRateLimit %v is negative", sec.FleetRateLimit)
	case sec.FleetRateLimit > 0:
		s.limits = newFleetLimits(sec.FleetRateLimit, cfg.RateLimit, cfg.RateBurst, s.readerKeys, s.adminKeys, s.metricsKeys)
	}
	s.limits.add(g.idents[:]...)
	if sec.Audit != nil {
		g.audit = newAuditTrail(sec.Audit, sec.AuditReadsPerMinute, s, g)
	}
	if err := g.register(reg); err != nil {
		return nil, err
	}
	return g, nil
}

// register adds the guard's metrics to reg.
func (g *guard) register(reg prometheus.Registerer) error {
	var err error
	if g.authFailed, err = register(reg, prometheus.NewCounter(prometheus.CounterOpts{
		Name: "tokenkeeper_http_auth_failures_total",
		Help: "Requests that presented an unknown API key.",
	})); err != nil {
		return err
	}
	if g.throttledBy, err = register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "tokenkeeper_http_auth_throttled_total",
		Help: "Failed authentications answered 429 at once, instead of 401 after a delay, because their client address (kind=address) or the key they presented (kind=key) already had as many delayed failures waiting as allowed.",
	}, []string{"kind"})); err != nil {
		return err
	}
	g.throttledAddr, g.throttledKey = g.throttledBy.WithLabelValues("address"), g.throttledBy.WithLabelValues("key")
	g.replicas, err = register(reg, prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "tokenkeeper_rate_limit_replicas",
		Help: "Replicas among which the fleet-wide rate limit of each key is shared, as this replica last counted them (1 without a fleet-wide limit).",
	}))
	if err != nil {
		return err
	}
	g.replicas.Set(1)
	return nil
}

// clientAddr is the address of the client of r: the peer, or behind a
// trusted proxy the address it forwarded.
func (g *guard) clientAddr(r *http.Request) string {
	if g.realIP != nil {
		return g.realIP(r)
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// keyFingerprint names a presented key in logs by the first bytes of its
// SHA-256, which cannot be turned back into the key.
func keyFingerprint(d *[sha256.Size]byte) string {
	const hexDigits = "0123456789abcdef"
	var b [12]byte
	for i := range 6 {
		b[2*i], b[2*i+1] = hexDigits[d[i]>>4], hexDigits[d[i]&0xf]
	}
	return string(b[:])
}
