package main

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"

	"github.com/tokenkeeper/tokenkeeper"
	"github.com/tokenkeeper/tokenkeeper/internal/certreload"
)

// TLSConfig is the HTTPS part of Config.
type TLSConfig struct {
	// CertFile and KeyFile are the served pair, reloaded when they change.
	CertFile, KeyFile string
	// ClientCAs verify client certificates; nil: none are asked for.
	ClientCAs *x509.CertPool
}

// parseSecurity reads the TLS, identity, proxy, throttling, audit and
// fleet-wide limit settings into c.
func (c *Config) parseSecurity(v *values, readFile func(string) ([]byte, error)) {
	if rate, err := strconv.ParseFloat(v.str("TOKENKEEPER_FLEET_RATE_LIMIT"), 64); err != nil || rate < 0 || math.IsInf(rate, 0) || math.IsNaN(rate) {
		v.fail("TOKENKEEPER_FLEET_RATE_LIMIT: %q is not a number of requests per second (0 turns it off)", v.str("TOKENKEEPER_FLEET_RATE_LIMIT"))
	} else {
		c.Security.FleetRateLimit = rate
	}

	cert, key, ca := v.str("TOKENKEEPER_TLS_CERT"), v.str("TOKENKEEPER_TLS_KEY"), v.str("TOKENKEEPER_TLS_CLIENT_CA")
	switch {
	case (cert == "") != (key == ""):
		v.fail("TOKENKEEPER_TLS_CERT and TOKENKEEPER_TLS_KEY go together")
	case cert != "":
		// Loaded once here so that a bad pair is a configuration error;
		// NewProgram loads it again to serve it.
		if _, err := certreload.New(certreload.Config{CertFile: cert, KeyFile: key, ReadFile: readFile}); err != nil {
			v.fail("TOKENKEEPER_TLS_CERT/KEY: %s", strings.TrimPrefix(err.Error(), "certreload: "))
		}
		c.TLS = &TLSConfig{CertFile: cert, KeyFile: key}
	}
	if ca != "" {
		pool, err := certreload.LoadCAs(ca, readFile)
		switch {
		case err != nil:
			v.fail("TOKENKEEPER_TLS_CLIENT_CA: %s", strings.TrimPrefix(err.Error(), "certreload: "))
		case c.TLS == nil:
			v.fail("TOKENKEEPER_TLS_CLIENT_CA needs TOKENKEEPER_TLS_CERT and TOKENKEEPER_TLS_KEY: client certificates come over TLS")
		default:
			c.TLS.ClientCAs = pool
		}
	}
	c.Security.Identities = parseIdentities(v, v.str("TOKENKEEPER_TLS_IDENTITIES"))

	for i, p := range v.list("TOKENKEEPER_TRUSTED_PROXIES") {
		prefix, err := netip.ParsePrefix(p)
		if err != nil {
			if addr, aerr := netip.ParseAddr(p); aerr == nil {
				prefix, err = addr.Prefix(addr.BitLen())
			}
		}
		if err != nil {
			v.fail("TOKENKEEPER_TRUSTED_PROXIES: item %d, %q, is not a CIDR (10.0.0.0/8) or an address", i+1, p)
			continue
		}
		c.Security.TrustedProxies = append(c.Security.TrustedProxies, prefix)
	}

	switch n := v.integer("TOKENKEEPER_AUTH_FAILURES"); {
	case n < 0:
		v.fail("TOKENKEEPER_AUTH_FAILURES: %d must not be negative (0 turns throttling off)", n)
	case n == 0:
		c.Security.AuthFailures = -1
	default:
		c.Security.AuthFailures = n
	}
	c.Security.AuthFailureWindow = v.duration("TOKENKEEPER_AUTH_FAILURE_WINDOW")
	c.Security.AuthFailureMaxDelay = v.duration("TOKENKEEPER_AUTH_FAILURE_MAX_DELAY")
	if n := v.integer("TOKENKEEPER_AUTH_FAILURES_IN_FLIGHT"); n < 1 {
		v.fail("TOKENKEEPER_AUTH_FAILURES_IN_FLIGHT: %d must be at least 1", n)
	} else {
		c.Security.AuthFailuresInFlight = n
	}

	c.AuditLog = v.str("TOKENKEEPER_AUDIT_LOG")
	switch n := v.integer("TOKENKEEPER_AUDIT_READS_PER_MINUTE"); {
	case n < 0:
		v.fail("TOKENKEEPER_AUDIT_READS_PER_MINUTE: %d must not be negative (0: every read counted into the minute's line)", n)
	case n == 0:
		c.Security.AuditReadsPerMinute = -1
	default:
		c.Security.AuditReadsPerMinute = n
	}
}

// parseIdentities reads TOKENKEEPER_TLS_IDENTITIES: comma-separated
// items SUBJECT[;name=NAME][;role=ROLE][;tokens=A+B]. The subject and
// the role are checked by the front door (checkRules names the item).
func parseIdentities(v *values, spec string) []tokenkeeper.Identity {
	if strings.TrimSpace(spec) == "" {
		return nil
	}
	var out []tokenkeeper.Identity
	for i, item := range strings.Split(spec, ",") {
		fields := strings.Split(strings.TrimSpace(item), ";")
		id := tokenkeeper.Identity{Subject: strings.TrimSpace(fields[0])}
		if id.Subject == "" {
			v.fail("TOKENKEEPER_TLS_IDENTITIES: item %d has no subject", i+1)
			continue
		}
		for _, f := range fields[1:] {
			k, val, ok := strings.Cut(strings.TrimSpace(f), "=")
			switch {
			case !ok:
				v.fail("TOKENKEEPER_TLS_IDENTITIES: item %d: %q is not name=, role= or tokens=", i+1, f)
			case k == "name":
				id.Name = val
			case k == "role":
				id.Role = tokenkeeper.Role(val)
			case k == "tokens":
				id.Tokens = strings.Split(val, "+")
			default:
				v.fail("TOKENKEEPER_TLS_IDENTITIES: item %d: unknown field %q (name, role or tokens)", i+1, k)
			}
		}
		out = append(out, id)
	}
	return out
}

// openAudit opens the audit trail's destination: nil without one.
func openAudit(dest string) (*slog.Logger, io.Closer, error) {
	var w io.Writer
	var closer io.Closer = io.NopCloser(nil)
	switch dest {
	case "":
		return nil, closer, nil
	case "stderr":
		w = os.Stderr
	case "stdout":
		w = os.Stdout
	default:
		f, err := os.OpenFile(dest, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
		if err != nil {
			return nil, nil, fmt.Errorf("TOKENKEEPER_AUDIT_LOG: %w", err)
		}
		w, closer = f, f
	}
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{ReplaceAttr: readableDurations})).With("log", "audit"), closer, nil
}

// auditConfiguration writes the configuration a replica starts with to
// the audit trail: names, roles, scopes and limits, never a key or a
// secret.
func auditConfiguration(audit *slog.Logger, cfg Config, addr string) {
	if audit == nil {
		return
	}
	var keys []string
	role := func(prefix, r string, n int) {
		for i := range n {
			keys = append(keys, fmt.Sprintf("%s[%d]:%s", prefix, i, r))
		}
	}
	role("TOKENKEEPER_API_KEYS", "reader", len(cfg.APIKeys))
	role("TOKENKEEPER_ADMIN_KEYS", "admin", len(cfg.AdminKeys))
	role("TOKENKEEPER_METRICS_KEYS", "metrics", len(cfg.MetricsKeys))
	tokens := []string{"liveness"}
	if cfg.Catalog != nil {
		tokens = tokens[:0]
		for _, t := range cfg.Catalog.Tokens {
			tokens = append(tokens, t.Name)
		}
		for _, k := range cfg.Catalog.Keys {
			keys = append(keys, fmt.Sprintf("%s:%s:%s", k.Name, k.Role, scopeText(k.Tokens)))
		}
	}
	var ids []string
	for _, id := range cfg.Security.Identities {
		r := string(id.Role)
		if r == "" {
			r = "reader"
		}
		ids = append(ids, fmt.Sprintf("%s=%s:%s:%s", id.Name, id.Subject, r, scopeText(id.Tokens)))
	}
	// parseSecurity sets both, from variables with defaults; -1 is off.
	failures, window := max(cfg.Security.AuthFailures, 0), cfg.Security.AuthFailureWindow
	var proxies []string
	for _, p := range cfg.Security.TrustedProxies {
		proxies = append(proxies, p.String())
	}
	audit.Info("configuration", "instance", cfg.Instance, "version", buildVersion(), "listen", addr,
		"tls", cfg.TLS != nil, "client_certificates", cfg.TLS != nil && cfg.TLS.ClientCAs != nil,
		"tokens", tokens, "keys", keys, "identities", ids, "anonymous_reads", cfg.AllowAnonymous, "weak_keys_allowed", cfg.AllowWeakKeys,
		"rate_limit", cfg.RateLimit, "fleet_rate_limit", cfg.Security.FleetRateLimit,
		"trusted_proxies", proxies, "auth_failures", failures, "auth_failure_window", window,
		"encryption_at_rest", cfg.EncryptionKeys != "", "redis_tls", cfg.Redis != nil && cfg.Redis.TLSConfig != nil)
}

func scopeText(tokens []string) string {
	if len(tokens) == 0 {
		return "*"
	}
	return strings.Join(tokens, "+")
}

// listenTLS wraps ln in TLS when cfg asks for it, serving the certificate
// files as they change.
func listenTLS(cfg Config, log *slog.Logger, ln net.Listener) (net.Listener, error) {
	if cfg.TLS == nil {
		return ln, nil
	}
	r, err := certreload.New(certreload.Config{CertFile: cfg.TLS.CertFile, KeyFile: cfg.TLS.KeyFile, Logger: log})
	if err != nil {
		return nil, fmt.Errorf("TOKENKEEPER_TLS_CERT/KEY: %s", strings.TrimPrefix(err.Error(), "certreload: "))
	}
	return tls.NewListener(ln, certreload.ServerConfig(r, cfg.TLS.ClientCAs)), nil
}
