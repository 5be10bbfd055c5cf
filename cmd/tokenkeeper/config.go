package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokenkeeper/tokenkeeper"
	"github.com/tokenkeeper/tokenkeeper/upstream"
)

// defaults are the front door's, which the settings show and take when
// none is given: they are set there alone.
var defaults = tokenkeeper.Config{}.WithDefaults()

// durationText is d as a setting's default is written: 15m, not 15m0s.
func durationText(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = s[:len(s)-2]
	}
	if strings.HasSuffix(s, "h0m") {
		s = s[:len(s)-2]
	}
	return s
}

var serveSettings = []setting{
	{env: "TOKENKEEPER_LISTEN", def: ":8080", usage: "HTTP listen address"},
	{env: "TOKENKEEPER_CONFIG", usage: "YAML file of the token catalog and its keys (none: the environment describes the one liveness token)"},
	{env: "TOKENKEEPER_REDIS_URL", usage: "redis:// or rediss:// URL (required); in sentinel mode the sentinels' (addr= for more, master_name=), in cluster mode the nodes' (addr= for more)", secret: true},
	{env: "TOKENKEEPER_REDIS_MODE", def: "single", usage: "single, sentinel or cluster: the Redis topology the URL names"},
	{env: "TOKENKEEPER_REDIS_WAIT_REPLICAS", def: "0", usage: "after an election and each token write, wait until this many Redis replicas hold it (WAIT; 0: no wait)"},
	{env: "TOKENKEEPER_REDIS_WAIT_TIMEOUT", def: "100ms", usage: "the longest such a wait lasts (shorter than a quarter of the lock TTL)"},
	{env: "TOKENKEEPER_API_KEYS", usage: "comma-separated reader keys", secret: true},
	{env: "TOKENKEEPER_ALLOW_ANONYMOUS", def: "false", usage: "let requests without a key read the token"},
	{env: "TOKENKEEPER_ALLOW_WEAK_KEYS", def: "false", usage: "accept reader and admin keys of less than 128 bits of estimated randomness (demos only)"},
	{env: "TOKENKEEPER_ADMIN_KEYS", usage: "comma-separated admin keys (none: admin endpoints off)", secret: true},
	{env: "TOKENKEEPER_METRICS_KEYS", usage: "comma-separated keys for /metrics (none: open)", secret: true},
	{env: "TOKENKEEPER_REDIS_TLS_CA", usage: "PEM file of the CA that signed Redis's certificate (rediss://), added to the system roots"},
	{env: "TOKENKEEPER_REDIS_TLS_CERT", usage: "PEM client certificate for Redis (with TOKENKEEPER_REDIS_TLS_KEY)"},
	{env: "TOKENKEEPER_REDIS_TLS_KEY", usage: "PEM private key of the Redis client certificate"},
	{env: "TOKENKEEPER_ENCRYPTION_KEYS", usage: "id:base64 AES-256 keys, comma-separated, the first encrypts the token at rest in Redis (none: stored in clear)", secret: true},
	{env: "TOKENKEEPER_RATE_LIMIT", def: "1000", usage: "requests per second per key on each replica (0: no limit)"},
	{env: "TOKENKEEPER_RATE_BURST", def: "0", usage: "burst per key (0: twice the rate)"},
	{env: "TOKENKEEPER_FLEET_RATE_LIMIT", def: "0", usage: "requests per second per key for the whole fleet, shared among the live replicas (0: off, TOKENKEEPER_RATE_LIMIT applies per replica)"},
	{env: "TOKENKEEPER_TLS_CERT", usage: "PEM certificate chain to serve HTTPS with (with TOKENKEEPER_TLS_KEY); reloaded when the file changes"},
	{env: "TOKENKEEPER_TLS_KEY", usage: "PEM private key of TOKENKEEPER_TLS_CERT"},
	{env: "TOKENKEEPER_TLS_CLIENT_CA", usage: "PEM file of the CAs whose client certificates are verified (optional for clients); needs TOKENKEEPER_TLS_CERT"},
	{env: "TOKENKEEPER_TLS_IDENTITIES", usage: "client certificate identities, comma-separated: SUBJECT[;name=NAME][;role=reader|admin|metrics][;tokens=A+B], SUBJECT being CN=<name> or a SAN URI"},
	{env: "TOKENKEEPER_TRUSTED_PROXIES", usage: "comma-separated CIDRs of the proxies whose X-Forwarded-For names the client"},
	{env: "TOKENKEEPER_AUTH_FAILURES", def: "10", usage: "failed authentications from one client address or with one key answered at once; the next ones are delayed (0: never delayed)"},
	{env: "TOKENKEEPER_AUTH_FAILURE_WINDOW", def: "1m", usage: "how long failed authentications are remembered after the last one"},
	{env: "TOKENKEEPER_AUTH_FAILURE_MAX_DELAY", def: "5s", usage: "longest delay of a failed authentication (delays start at 100ms and double)"},
	{env: "TOKENKEEPER_AUTH_FAILURES_IN_FLIGHT", def: "4", usage: "delayed failed authentications one client address (or key) may have waiting; more are answered 429 at once"},
	{env: "TOKENKEEPER_AUDIT_LOG", usage: "audit trail destination: stderr, stdout or a file path, JSON lines (none: no audit trail)"},
	{env: "TOKENKEEPER_AUDIT_READS_PER_MINUTE", def: "60", usage: "token reads per key and token written one line each a minute; the rest are counted into one line"},
	{env: "TOKENKEEPER_INSTANCE_ID", usage: "name of this replica (default hostname-pid)"},
	{env: "TOKENKEEPER_REFRESH_BEFORE", def: durationText(defaults.RefreshBefore), usage: "advisory refresh window"},
	{env: "TOKENKEEPER_LOCK_TTL", def: durationText(defaults.LockTTL), usage: "leader lock TTL"},
	{env: "TOKENKEEPER_TOKEN_LIFETIME", def: durationText(upstream.DefaultLifetime), usage: "lifetime assumed when the upstream names none"},
	{env: "TOKENKEEPER_SERVE_MARGIN", def: durationText(defaults.ServeMargin), usage: "stop serving a token this long before it expires; longer than RDP_TIMEOUT"},
	{env: "TOKENKEEPER_POLL_INTERVAL", def: durationText(defaults.PollInterval), usage: "the longest a replica misses a new token whose event was lost; how often it reads Redis while its events connection is in doubt"},
	{env: "TOKENKEEPER_REST_POLL_INTERVAL", def: durationText(defaults.RestPollInterval), usage: "how often a replica reads Redis while its events connection is proven alive"},
	{env: "TOKENKEEPER_RETRY_MIN", def: durationText(defaults.RetryMin), usage: "shortest backoff after an upstream failure"},
	{env: "TOKENKEEPER_RETRY_MAX", def: durationText(defaults.RetryMax), usage: "longest backoff after an upstream failure"},
	{env: "TOKENKEEPER_AUTH_CALLS_PER_MINUTE", def: strconv.Itoa(defaults.AuthPerMinute), usage: "fleet-wide cap on upstream sign-ons"},
	{env: "TOKENKEEPER_HANDOVER_AFTER", def: strconv.Itoa(defaults.HandoverAfter), usage: "a leader whose refreshes fail this many times in a row hands leadership over (an auth refusal: at once)"},
	{env: "TOKENKEEPER_HANDOVER_COOLDOWN", def: durationText(defaults.HandoverCooldown), usage: "how long a replica that handed over stays out of elections (sooner if no other replica takes the lock)"},
	{env: "TOKENKEEPER_SHUTDOWN_DRAIN", def: "0s", usage: "on SIGTERM, keep serving this long with /readyz answering 503 (set it to your load balancer's health-check interval or more)"},
	{env: "TOKENKEEPER_LOG_LEVEL", def: "info", usage: "debug, info, warn or error"},
	{env: "TOKENKEEPER_LOG_FORMAT", def: "json", usage: "json or text"},
	{env: "RDP_BASE_URL", def: "https://api.refinitiv.com", usage: "upstream base URL"},
	{env: "RDP_AUTH", def: "v2", usage: "v2 (client credentials) or v1 (password grant)"},
	{env: "RDP_CLIENT_ID", usage: "v2 service account, or v1 app key"},
	{env: "RDP_CLIENT_SECRET", usage: "v2 client secret", secret: true},
	{env: "RDP_USERNAME", usage: "v1 machine account"},
	{env: "RDP_PASSWORD", usage: "v1 password", secret: true},
	{env: "RDP_SCOPE", def: "trapi", usage: "OAuth2 scope"},
	{env: "RDP_LIVENESS_PATH", def: "/verification/v1/liveness/token", usage: "liveness token endpoint"},
	{env: "RDP_LIVENESS_METHOD", def: "POST", usage: "POST or GET"},
	{env: "RDP_TIMEOUT", def: durationText(upstream.DefaultTimeout), usage: "time limit of each upstream call"},
	{env: "RDP_TLS_CA", usage: "PEM file of an extra CA to trust for the upstream (verification stays on)"},
}

// Config is the validated configuration of `tokenkeeper serve`.
type Config struct {
	Listen string
	// Redis is the single server's client options (RedisMode single),
	// RedisFailover Sentinel's, RedisCluster the cluster's.
	Redis          *redis.Options
	RedisFailover  *redis.FailoverOptions
	RedisCluster   *redis.ClusterOptions
	RedisMode      tokenkeeper.RedisMode
	RedisWait      tokenkeeper.RedisWait
	APIKeys        []string
	AllowAnonymous bool
	AllowWeakKeys  bool
	AdminKeys      []string
	MetricsKeys    []string
	// EncryptionKeys seal the tokens at rest (Config.EncryptionKeys of
	// the front door, which checks them).
	EncryptionKeys string
	RateLimit      float64
	RateBurst      int
	// Security is the HTTP face's second line of defence; the audit
	// logger is opened by NewProgram from AuditLog.
	Security tokenkeeper.Security
	AuditLog string
	// TLS, when set, serves HTTPS.
	TLS           *TLSConfig
	Instance      string
	RefreshBefore time.Duration
	LockTTL       time.Duration
	TokenLifetime time.Duration
	ServeMargin   time.Duration
	PollInterval  time.Duration
	// RestPollInterval is tokenkeeper.Config's.
	RestPollInterval time.Duration
	RetryMin         time.Duration
	RetryMax         time.Duration
	AuthPerMinute    int
	// HandoverAfter and HandoverCooldown are the leadership policy
	// (refresher.Config).
	HandoverAfter    int
	HandoverCooldown time.Duration
	ShutdownDrain    time.Duration
	LogLevel         slog.Level
	LogFormat        string

	RDP RDPConfig
	// Catalog is the file TOKENKEEPER_CONFIG names, nil without one: the
	// environment then describes the one liveness token.
	Catalog *tokenkeeper.Catalog
}

// RDPConfig is the upstream part of Config.
type RDPConfig struct {
	BaseURL, Auth, ClientID, ClientSecret, Username, Password, Scope, LivenessPath, LivenessMethod string
	Timeout                                                                                        time.Duration
	// RootCAs verifies the upstream: the system roots plus RDP_TLS_CA.
	RootCAs *x509.CertPool
}

// parseServe builds a Config, or one error that names every missing or
// invalid setting: each part read where its settings are, then the front
// door's rules applied to the whole (checkRules).
func parseServe(args []string, getenv func(string) string, readFile func(string) ([]byte, error), stderr io.Writer) (Config, error) {
	v, err := load("serve", serveSettings, args, getenv, readFile, stderr)
	if err != nil {
		return Config{}, err
	}
	c := readServe(v)
	parseRedis(v, &c, readFile)
	parseRedisWait(v, &c)
	c.parseHTTP(v)
	c.parseSecurity(v, readFile)
	c.parseLogging(v)
	if ca := v.str("RDP_TLS_CA"); ca != "" {
		c.RDP.RootCAs = certPool(v, "RDP_TLS_CA", ca, readFile)
	}
	if c.RDP.Auth != "v1" && c.RDP.Auth != "v2" {
		v.fail("RDP_AUTH: %q is not v1 or v2", c.RDP.Auth)
	}
	catalogOK := c.parseCatalog(v, getenv, readFile)
	envIdentities := len(c.Security.Identities)
	if c.Catalog != nil {
		c.Security.Identities = append(c.Security.Identities, c.Catalog.Identities...)
	}
	if len(c.Security.Identities) > 0 && (c.TLS == nil || c.TLS.ClientCAs == nil) {
		v.fail("TOKENKEEPER_TLS_IDENTITIES (or the catalog's identities) need TOKENKEEPER_TLS_CLIENT_CA and TOKENKEEPER_TLS_CERT: no client certificate is verified without them")
	}
	if catalogOK {
		checkRules(v, c, envIdentities)
	}
	if c.Catalog == nil && catalogOK && (c.RDP.Auth == "v1" || c.RDP.Auth == "v2") {
		if _, err := upstream.New(c.upstreamConfig()); err != nil {
			v.errs = append(v.errs, err)
		}
	}
	if c.Instance == "" {
		// The front door's default, needed before it is built: the
		// metrics' and traces' labels name the replica.
		host, _ := os.Hostname()
		c.Instance = fmt.Sprintf("%s-%d", host, os.Getpid())
	}
	return c, v.err()
}

// readServe reads the settings that are one value each.
func readServe(v *values) Config {
	return Config{
		Listen:           v.str("TOKENKEEPER_LISTEN"),
		APIKeys:          v.list("TOKENKEEPER_API_KEYS"),
		AllowAnonymous:   v.boolean("TOKENKEEPER_ALLOW_ANONYMOUS"),
		AllowWeakKeys:    v.boolean("TOKENKEEPER_ALLOW_WEAK_KEYS"),
		AdminKeys:        v.list("TOKENKEEPER_ADMIN_KEYS"),
		MetricsKeys:      v.list("TOKENKEEPER_METRICS_KEYS"),
		EncryptionKeys:   strings.TrimSpace(v.m["TOKENKEEPER_ENCRYPTION_KEYS"]),
		RateBurst:        v.integer("TOKENKEEPER_RATE_BURST"),
		Instance:         v.str("TOKENKEEPER_INSTANCE_ID"),
		RefreshBefore:    v.duration("TOKENKEEPER_REFRESH_BEFORE"),
		LockTTL:          v.duration("TOKENKEEPER_LOCK_TTL"),
		TokenLifetime:    v.duration("TOKENKEEPER_TOKEN_LIFETIME"),
		ServeMargin:      v.duration("TOKENKEEPER_SERVE_MARGIN"),
		PollInterval:     v.duration("TOKENKEEPER_POLL_INTERVAL"),
		RestPollInterval: v.duration("TOKENKEEPER_REST_POLL_INTERVAL"),
		RetryMin:         v.duration("TOKENKEEPER_RETRY_MIN"),
		RetryMax:         v.duration("TOKENKEEPER_RETRY_MAX"),
		AuthPerMinute:    v.atLeastOne("TOKENKEEPER_AUTH_CALLS_PER_MINUTE"),
		HandoverAfter:    v.atLeastOne("TOKENKEEPER_HANDOVER_AFTER"),
		HandoverCooldown: v.duration("TOKENKEEPER_HANDOVER_COOLDOWN"),
		ShutdownDrain:    v.nonNegative("TOKENKEEPER_SHUTDOWN_DRAIN"),
		LogFormat:        v.str("TOKENKEEPER_LOG_FORMAT"),
		RDP: RDPConfig{
			BaseURL:        v.str("RDP_BASE_URL"),
			Auth:           v.str("RDP_AUTH"),
			ClientID:       v.str("RDP_CLIENT_ID"),
			ClientSecret:   v.m["RDP_CLIENT_SECRET"],
			Username:       v.str("RDP_USERNAME"),
			Password:       v.m["RDP_PASSWORD"],
			Scope:          v.str("RDP_SCOPE"),
			LivenessPath:   v.str("RDP_LIVENESS_PATH"),
			LivenessMethod: strings.ToUpper(v.str("RDP_LIVENESS_METHOD")),
			Timeout:        v.duration("RDP_TIMEOUT"),
		},
	}
}

// parseHTTP checks the listen address and reads the per-replica rate
// limit into c.
func (c *Config) parseHTTP(v *values) {
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		v.fail("TOKENKEEPER_LISTEN: %q is not host:port (example :8080)", c.Listen)
	}
	if rate, err := strconv.ParseFloat(v.str("TOKENKEEPER_RATE_LIMIT"), 64); err != nil || rate < 0 || math.IsInf(rate, 0) || math.IsNaN(rate) {
		v.fail("TOKENKEEPER_RATE_LIMIT: %q is not a number of requests per second (0 turns limiting off)", v.str("TOKENKEEPER_RATE_LIMIT"))
	} else {
		c.RateLimit = rate
	}
	if c.RateBurst < 0 {
		v.fail("TOKENKEEPER_RATE_BURST: %d must not be negative", c.RateBurst)
	}
}

// parseLogging reads the log level and format into c.
func (c *Config) parseLogging(v *values) {
	if err := c.LogLevel.UnmarshalText([]byte(v.str("TOKENKEEPER_LOG_LEVEL"))); err != nil {
		v.fail("TOKENKEEPER_LOG_LEVEL: %q is not debug, info, warn or error", v.str("TOKENKEEPER_LOG_LEVEL"))
	}
	if c.LogFormat != "json" && c.LogFormat != "text" {
		v.fail("TOKENKEEPER_LOG_FORMAT: %q is not json or text", c.LogFormat)
	}
}

// parseCatalog loads the catalog file TOKENKEEPER_CONFIG names, if any,
// into c. It reports false when the file is there and not valid: the
// rules that concern the whole then wait for it to be fixed.
func (c *Config) parseCatalog(v *values, getenv func(string) string, readFile func(string) ([]byte, error)) bool {
	path := v.str("TOKENKEEPER_CONFIG")
	if path == "" {
		return true
	}
	cat, err := loadCatalog(path, getenv, readFile, c.RDP.RootCAs)
	if err != nil {
		v.errs = append(v.errs, err)
		return false
	}
	c.Catalog = cat
	return true
}

// redisTLS adds a custom CA and a client certificate to a rediss:// URL's
// TLS settings.
func redisTLS(v *values, tlsConf *tls.Config, readFile func(string) ([]byte, error)) {
	ca, cert, key := v.str("TOKENKEEPER_REDIS_TLS_CA"), v.str("TOKENKEEPER_REDIS_TLS_CERT"), v.str("TOKENKEEPER_REDIS_TLS_KEY")
	if ca == "" && cert == "" && key == "" {
		return
	}
	if tlsConf == nil {
		v.errs = append(v.errs, errRedisTLSNeedsRediss)
		return
	}
	if ca != "" {
		tlsConf.RootCAs = certPool(v, "TOKENKEEPER_REDIS_TLS_CA", ca, readFile)
	}
	if (cert == "") != (key == "") {
		v.fail("TOKENKEEPER_REDIS_TLS_CERT and TOKENKEEPER_REDIS_TLS_KEY go together")
		return
	}
	if cert != "" {
		certPEM, err1 := readFile(cert)
		keyPEM, err2 := readFile(key)
		if err := errors.Join(err1, err2); err != nil {
			v.fail("TOKENKEEPER_REDIS_TLS_CERT/KEY: %v", err)
			return
		}
		pair, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			v.fail("TOKENKEEPER_REDIS_TLS_CERT/KEY: not a matching PEM certificate and key")
			return
		}
		tlsConf.Certificates = []tls.Certificate{pair}
	}
}

// certPool returns the system roots plus the PEM certificates of file.
func certPool(v *values, env, file string, readFile func(string) ([]byte, error)) *x509.CertPool {
	pem, err := readFile(file)
	if err != nil {
		v.fail("%s: %v", env, err)
		return nil
	}
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	if !pool.AppendCertsFromPEM(pem) {
		v.fail("%s: %s holds no PEM certificate", env, file)
		return nil
	}
	return pool
}

// fieldVars names the variable of each tokenkeeper.Config field that a
// setting feeds, so that the package's rules, which live there alone,
// speak the operator's language here.
var fieldVars = strings.NewReplacer(
	"HTTP.ReaderKeys", "TOKENKEEPER_API_KEYS",
	"HTTP.AllowAnonymous", "TOKENKEEPER_ALLOW_ANONYMOUS",
	"HTTP.AllowWeakKeys", "TOKENKEEPER_ALLOW_WEAK_KEYS=true",
	"HTTP.AdminKeys", "TOKENKEEPER_ADMIN_KEYS",
	"HTTP.Keys", "TOKENKEEPER_CONFIG",
	"RDP.DefaultLifetime", "TOKENKEEPER_TOKEN_LIFETIME",
	"RDP.Timeout", "RDP_TIMEOUT",
	"RedisWait.Timeout", "TOKENKEEPER_REDIS_WAIT_TIMEOUT",
	"RedisWait.Replicas", "TOKENKEEPER_REDIS_WAIT_REPLICAS",
	"RedisMode", "TOKENKEEPER_REDIS_MODE",
	"ServeMargin", "TOKENKEEPER_SERVE_MARGIN",
	"RefreshBefore", "TOKENKEEPER_REFRESH_BEFORE",
	"LockTTL", "TOKENKEEPER_LOCK_TTL",
	"PollInterval", "TOKENKEEPER_POLL_INTERVAL",
	"RestPollInterval", "TOKENKEEPER_REST_POLL_INTERVAL",
	"RetryMin", "TOKENKEEPER_RETRY_MIN",
	"RetryMax", "TOKENKEEPER_RETRY_MAX",
	"HandoverAfter", "TOKENKEEPER_HANDOVER_AFTER",
	"HandoverCooldown", "TOKENKEEPER_HANDOVER_COOLDOWN",
	"AuthPerMinute", "TOKENKEEPER_AUTH_CALLS_PER_MINUTE",
	"EncryptionKeys", "TOKENKEEPER_ENCRYPTION_KEYS",
)

// identityField is the field of the front door's problems with one
// identity: those of TOKENKEEPER_TLS_IDENTITIES come first, then the
// catalog's.
var identityField = regexp.MustCompile(`^HTTP\.Security\.Identities\[(\d+)\]$`)

// checkRules applies tokenkeeper.Config's rules to c, reporting each
// problem under the variables concerned; the first envIdentities
// identities are TOKENKEEPER_TLS_IDENTITIES's. A setting that failed to
// parse is zero here, which the rules take as its default, so one
// mistake is reported once.
func checkRules(v *values, c Config, envIdentities int) {
	err := c.keeperConfig().Validate()
	if err == nil {
		return
	}
	for _, e := range err.(interface{ Unwrap() []error }).Unwrap() {
		var fe *tokenkeeper.FieldError
		if !errors.As(e, &fe) {
			v.errs = append(v.errs, e)
			continue
		}
		switch {
		case fe.Field == "HTTP.ReaderKeys" && strings.HasPrefix(fe.Problem, "is required"):
			// Readers come from the environment or the catalog, as keys
			// or as client certificate identities.
			if c.Catalog != nil {
				v.fail("no reader: TOKENKEEPER_API_KEYS is empty and the catalog (TOKENKEEPER_CONFIG) has no key or identity of role reader; admin keys read too but do not open the read route alone (or set TOKENKEEPER_ALLOW_ANONYMOUS=true to let anyone read the tokens)")
			} else {
				v.fail("TOKENKEEPER_API_KEYS is required (or set TOKENKEEPER_ALLOW_ANONYMOUS=true to let anyone read the token)")
			}
			continue
		}
		if m := identityField.FindStringSubmatch(fe.Field); m != nil {
			i, _ := strconv.Atoi(m[1])
			if i < envIdentities {
				v.fail("TOKENKEEPER_TLS_IDENTITIES: item %d: %s", i+1, fe.Problem)
			} else {
				v.fail("TOKENKEEPER_CONFIG: identities[%d]: %s", i-envIdentities, fe.Problem)
			}
			continue
		}
		v.fail("%s: %s", fieldVars.Replace(fe.Field), fieldVars.Replace(fe.Problem))
	}
}

// keeperConfig is c as the front door takes it, without what only a
// running replica has (Redis client, logger, metrics).
func (c Config) keeperConfig() tokenkeeper.Config {
	ucfg := c.upstreamConfig()
	var tokens []tokenkeeper.TokenConfig
	var keys []tokenkeeper.Key
	if c.Catalog != nil {
		tokens, keys = c.Catalog.Tokens, c.Catalog.Keys
	}
	return tokenkeeper.Config{
		Tokens: tokens,
		RDP:    &ucfg, AuthPerMinute: c.AuthPerMinute,
		Instance: c.Instance, Version: buildVersion(), Commit: buildCommit(),
		ServeMargin: c.ServeMargin, RefreshBefore: c.RefreshBefore, LockTTL: c.LockTTL, PollInterval: c.PollInterval, RestPollInterval: c.RestPollInterval,
		RetryMin: c.RetryMin, RetryMax: c.RetryMax, HandoverAfter: c.HandoverAfter, HandoverCooldown: c.HandoverCooldown,
		EncryptionKeys: c.EncryptionKeys, RedisMode: c.RedisMode, RedisWait: c.RedisWait,
		HTTP: tokenkeeper.HTTPConfig{
			ReaderKeys: c.APIKeys, AdminKeys: c.AdminKeys, MetricsKeys: c.MetricsKeys,
			Keys: keys, AllowAnonymous: c.AllowAnonymous, AllowWeakKeys: c.AllowWeakKeys, RateLimit: c.RateLimit, RateBurst: c.RateBurst,
			Security: c.Security,
		},
	}
}

// upstreamConfig is the RDP client's configuration.
func (c Config) upstreamConfig() upstream.Config {
	return upstream.Config{
		BaseURL: c.RDP.BaseURL, Auth: upstream.AuthVersion(c.RDP.Auth),
		ClientID: c.RDP.ClientID, ClientSecret: c.RDP.ClientSecret,
		Username: c.RDP.Username, Password: c.RDP.Password,
		Scope: c.RDP.Scope, LivenessPath: c.RDP.LivenessPath, LivenessMethod: c.RDP.LivenessMethod,
		DefaultLifetime: c.TokenLifetime, Timeout: c.RDP.Timeout, RootCAs: c.RDP.RootCAs,
	}
}
