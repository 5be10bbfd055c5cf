package tokenkeeper

// Who may use the HTTP face: keys, client certificate identities and the
// second line of defence (HTTPConfig.Keys, HTTPConfig.Security).

import (
	"log/slog"
	"net/netip"
	"time"

	"github.com/tokenkeeper/tokenkeeper/httpapi"
)

// Role is what a Key or an Identity may do.
type Role string

// The roles of keys and identities; "" is RoleReader.
const (
	// RoleReader reads tokens.
	RoleReader Role = "reader"
	// RoleAdmin reads tokens and the status, and asks for refreshes.
	RoleAdmin Role = "admin"
	// RoleMetrics reads /metrics when metrics keys are required.
	RoleMetrics Role = "metrics"
)

// Key is an API key with a role, limited to some tokens.
type Key struct {
	// Name labels the key in errors and the audit trail; never the key
	// itself.
	Name string
	// Value is the key, or "sha256:" and the hex SHA-256 of it.
	Value string
	// Role is what it may do. Default: RoleReader.
	Role Role
	// Tokens are the names of the tokens it may read (and, for an admin
	// key, refresh). Empty: every token.
	Tokens []string
}

// Identity is a client certificate's subject given a role and tokens, as
// a Key is. It admits requests that came over TLS with a certificate the
// listener verified and that present no key: a key, when presented,
// decides alone.
type Identity struct {
	// Name labels the identity in logs and the audit trail. Default: its
	// Subject.
	Name string
	// Subject is what a verified certificate must carry: "CN=<name>" for
	// its subject's common name, or an absolute URI (a SPIFFE id such as
	// spiffe://example.org/ns/prod/sa/backend) for one of its SAN URIs.
	Subject string
	// Role is what it may do. Default: RoleReader.
	Role Role
	// Tokens are the names of the tokens it may use. Empty: every token.
	Tokens []string
}

// Security is the HTTP face's second line of defence: client certificate
// identities, the client address behind trusted proxies, the throttling
// of failed authentication, the audit trail and a fleet-wide rate limit.
// Its zero value turns each off but the throttling, which is on with its
// defaults.
type Security struct {
	// Identities are client certificate subjects that stand for keys.
	Identities []Identity
	// TrustedProxies are the peers whose X-Forwarded-For header names the
	// client: the right-most address of the header that is not itself a
	// trusted proxy. From any other peer the header is ignored. Default:
	// none.
	TrustedProxies []netip.Prefix
	// AuthFailures is how many failed authentications from one client
	// address, or with one presented key, are answered 401 at once; the
	// ones that follow are answered only after a delay that starts at
	// 100ms and doubles with each, up to AuthFailureMaxDelay. The count
	// starts again after an AuthFailureWindow without failures. A valid
	// key is never delayed. Default: 10; negative turns the delays off.
	AuthFailures int
	// AuthFailureWindow is how long failures are remembered after the
	// last one. Default: 1m.
	AuthFailureWindow time.Duration
	// AuthFailureMaxDelay is the longest delay of a failed
	// authentication. Default: 5s.
	AuthFailureMaxDelay time.Duration
	// AuthFailuresInFlight is how many delayed failed authentications of
	// one client address, or with one key, may wait at once; past it the
	// answer is 429 at once. Default: 4.
	AuthFailuresInFlight int
	// Audit receives the audit trail: tokens handed out, admin actions,
	// throttled clients. Default: none.
	Audit *slog.Logger
	// AuditReadsPerMinute is how many token reads of one key (or
	// identity) and token are written one line each a minute; the rest
	// are counted into one line when the minute is over. Default: 60;
	// negative: every read is counted, none written alone.
	AuditReadsPerMinute int
	// FleetRateLimit, when positive, is how many requests per second each
	// key (or identity) may make to the whole fleet: each replica admits
	// its share among the live replicas, which the Keeper keeps counting.
	// It replaces HTTPConfig.RateLimit for keys; anonymous reads stay
	// limited per replica.
	FleetRateLimit float64
}

// readers reports whether h opens the read route: a reader key or
// identity, or anonymous reads. Admin keys read too, but do not open it
// alone.
func (h HTTPConfig) readers() bool {
	ok := len(h.ReaderKeys) > 0 || h.AllowAnonymous
	for _, k := range h.Keys {
		ok = ok || k.Role == RoleReader || k.Role == ""
	}
	for _, id := range h.Security.Identities {
		ok = ok || id.Role == RoleReader || id.Role == ""
	}
	return ok
}

// apiConfig is h as the HTTP face takes it.
func (h HTTPConfig) apiConfig() httpapi.Config {
	keys := make([]httpapi.Key, len(h.Keys))
	for i, k := range h.Keys {
		keys[i] = httpapi.Key{Name: k.Name, Value: k.Value, Role: httpapi.Role(k.Role), Tokens: k.Tokens}
	}
	s := h.Security
	ids := make([]httpapi.Identity, len(s.Identities))
	for i, id := range s.Identities {
		ids[i] = apiIdentity(id)
	}
	return httpapi.Config{
		ReaderKeys: h.ReaderKeys, AdminKeys: h.AdminKeys, MetricsKeys: h.MetricsKeys, Keys: keys,
		AllowAnonymous: h.AllowAnonymous, AllowWeakKeys: h.AllowWeakKeys, RateLimit: h.RateLimit, RateBurst: h.RateBurst,
		Security: httpapi.Security{
			Identities: ids, TrustedProxies: s.TrustedProxies,
			AuthFailures: s.AuthFailures, AuthFailureWindow: s.AuthFailureWindow, AuthFailureMaxDelay: s.AuthFailureMaxDelay,
			AuthFailuresInFlight: s.AuthFailuresInFlight, Audit: s.Audit, AuditReadsPerMinute: s.AuditReadsPerMinute,
			FleetRateLimit: s.FleetRateLimit,
		},
	}
}

func apiIdentity(id Identity) httpapi.Identity {
	return httpapi.Identity{Name: id.Name, Subject: id.Subject, Role: httpapi.Role(id.Role), Tokens: id.Tokens}
}
