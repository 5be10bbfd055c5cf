package catalog

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"time"
)

// Catalog is what a file describes, defaults filled in, secrets resolved.
type Catalog struct {
	// Tokens are the tokens the fleet keeps, in the file's order; at least
	// one.
	Tokens []Token
	// Keys are the API keys that may use them, in the file's order.
	Keys []Key
	// Identities are the client certificate subjects that may use them,
	// in the file's order.
	Identities []Identity
	// Unresolved lists, after an Offline parse, the references left
	// unresolved ("$NAME", "file PATH"), each once, in the file's order.
	Unresolved []string
}

// Modes of a token.
const (
	// ModeShared: the fleet serves one token to every caller.
	ModeShared = "shared"
	// ModePerDevice: the fleet shares the RDP access token and mints a
	// liveness token per device (rdp-liveness only).
	ModePerDevice = "per-device"
)

// Sources of a token.
const (
	// SourceRDP is an RDP liveness token (RDP configures it).
	SourceRDP = "rdp-liveness"
	// SourceOAuth2 is an OAuth2 client-credentials token (OAuth2 configures
	// it).
	SourceOAuth2 = "oauth2"
)

// Roles of a key.
const (
	// RoleReader reads tokens.
	RoleReader = "reader"
	// RoleAdmin reads tokens and the status, and asks for refreshes.
	RoleAdmin = "admin"
	// RoleMetrics reads /metrics.
	RoleMetrics = "metrics"
)

// Defaults and limits of a token's fields.
const (
	// DefaultMintsPerMinute and DefaultMintsPerDeviceHour are the budgets
	// of a per-device token.
	DefaultMintsPerMinute     = 600
	DefaultMintsPerDeviceHour = 10

	// DefaultServeMargin, DefaultRefreshBefore and DefaultAuthPerMinute
	// are also the front door's (tokenkeeper.Config): they are set here
	// alone. The lifetime and timeout are the upstream clients' (its
	// DefaultLifetime and DefaultTimeout), copied so that this package,
	// which the chart's tests use, imports nothing of the module.
	DefaultServeMargin   = time.Minute
	DefaultRefreshBefore = 15 * time.Minute
	DefaultLifetime      = 60 * time.Minute
	DefaultTimeout       = 10 * time.Second
	DefaultAuthPerMinute = 20
	// MaxLifetime is the longest lifetime a token may be given.
	MaxLifetime = 24 * time.Hour
)

// Defaults of an rdp block.
const (
	DefaultRDPBaseURL     = "https://api.refinitiv.com"
	DefaultRDPAuth        = "v2"
	DefaultRDPScope       = "trapi"
	DefaultLivenessPath   = "/verification/v1/liveness/token"
	DefaultLivenessMethod = "POST"
	// DefaultAuthStyle is the default auth_style of an oauth2 block.
	DefaultAuthStyle = "auto"
)

// Token is one token of the catalog.
type Token struct {
	// Name is the token's name: [a-z0-9][a-z0-9-]{0,39}, unique.
	Name string
	// Source is SourceRDP or SourceOAuth2.
	Source string
	// Mode is ModeShared (default: the fleet serves one token) or, for an
	// rdp-liveness token, ModePerDevice: the fleet shares the RDP access
	// token and mints a liveness token per device.
	Mode string
	// MintsPerMinute and MintsPerDeviceHour are the mint budgets of a
	// per-device token: the fleet's, and one device's (0: no cap).
	MintsPerMinute, MintsPerDeviceHour int
	// Required: readiness needs the token servable.
	Required bool
	// ServeMargin, RefreshBefore, Lifetime (assumed when the upstream
	// names none) and Timeout (of each upstream call) are the token's
	// timings.
	ServeMargin, RefreshBefore, Lifetime, Timeout time.Duration
	// AuthPerMinute caps the fleet's sign-ons for this token.
	AuthPerMinute int
	// RDP is set iff Source == SourceRDP.
	RDP *RDP
	// OAuth2 is set iff Source == SourceOAuth2.
	OAuth2 *OAuth2
	// Line is where the token's entry starts in the file.
	Line int
}

// RDP configures an RDP liveness token. ClientSecret and Password are
// secrets: String never shows them.
type RDP struct {
	BaseURL, Auth, ClientID, ClientSecret, Username, Password string
	Scope, LivenessPath, LivenessMethod                       string

	clientSecretFrom, passwordFrom string // where the secrets came from
}

// OAuth2 configures an OAuth2 client-credentials token. ClientSecret is a
// secret: String never shows it.
type OAuth2 struct {
	TokenURL, ClientID, ClientSecret string
	Scopes                           []string
	// Audience and Resource are endpoint parameters, sent when set.
	Audience, Resource string
	// Params are further endpoint parameters.
	Params map[string]string
	// AuthStyle is "auto", "header" or "body": how the client credentials
	// are sent.
	AuthStyle string

	clientSecretFrom string // where the secret came from
}

// Key is one API key. Value is the key itself, a secret: String never
// shows it.
type Key struct {
	// Name labels the key in logs.
	Name string
	// Role is RoleReader, RoleAdmin or RoleMetrics.
	Role  string
	Value string
	// Tokens are the names of the tokens the key may read (and, for an
	// admin key, refresh); nil means every token.
	Tokens []string
	// Line is where the key's entry starts in the file.
	Line int

	valueFrom string // where Value came from
}

// Error is one problem of a file.
type Error struct {
	// File is the file's name as Options.File gave it.
	File string
	// Line is the line the problem is on; 0 when it is none in particular.
	Line int
	// Field is the path of the field concerned, as tokens[1].oauth2.scopes.
	Field string
	// Problem says what is wrong and, where it helps, how to put it right.
	Problem string
}

// Error returns "FILE:LINE: FIELD: PROBLEM", without the parts that are
// empty ("line LINE: " without a file).
func (e *Error) Error() string {
	var b strings.Builder
	switch {
	case e.File != "" && e.Line > 0:
		fmt.Fprintf(&b, "%s:%d: ", e.File, e.Line)
	case e.File != "":
		b.WriteString(e.File + ": ")
	case e.Line > 0:
		fmt.Fprintf(&b, "line %d: ", e.Line)
	}
	if e.Field != "" {
		b.WriteString(e.Field + ": ")
	}
	b.WriteString(e.Problem)
	return b.String()
}

// Options are what Parse needs besides the file's content.
type Options struct {
	// File names the file in errors.
	File string
	// LookupEnv looks up environment variables; nil means os.LookupEnv.
	LookupEnv func(string) (string, bool)
	// ReadFile reads secret files; nil means os.ReadFile.
	ReadFile func(string) ([]byte, error)
	// Offline checks everything but the values the file refers to: a
	// ${NAME} reference is accepted without looking NAME up (a field that
	// takes one keeps the reference as its value, a secret stays empty),
	// and a *_file path without reading the file. Catalog.Unresolved lists
	// what was left so. For CI, where the secrets are absent.
	Offline bool
}

// Parse decodes and validates a catalog file. Its error, when there is
// one, is an errors.Join of one *Error for each problem of the file.
func Parse(data []byte, opt Options) (*Catalog, error) {
	if opt.LookupEnv == nil {
		opt.LookupEnv = os.LookupEnv
	}
	if opt.ReadFile == nil {
		opt.ReadFile = os.ReadFile
	}
	p := &parser{opt: opt}
	c := p.file(data)
	if err := p.err(); err != nil {
		return nil, err
	}
	c.Unresolved = p.unresolved
	return c, nil
}

// Load reads the file at path and parses it, with the process's
// environment and file system.
func Load(path string) (*Catalog, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		var pe *os.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return nil, &Error{File: path, Problem: "cannot read the file: " + err.Error()}
	}
	return Parse(data, Options{File: path})
}

// Token returns the token named name.
func (c *Catalog) Token(name string) (Token, bool) {
	if c == nil {
		return Token{}, false
	}
	for _, t := range c.Tokens {
		if t.Name == name {
			return t, true
		}
	}
	return Token{}, false
}

// NameRule says, for people, what ValidName accepts.
const NameRule = "1 to 40 of a-z, 0-9 and -, not starting with -"

// ValidName reports whether s is a valid token or key name:
// [a-z0-9][a-z0-9-]{0,39}. The front door checks its token names with it
// too: the rule lives here alone.
func ValidName(s string) bool {
	if s == "" || len(s) > 40 || s[0] == '-' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '-' {
			return false
		}
	}
	return true
}
