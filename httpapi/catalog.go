package httpapi

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/tokenkeeper/tokenkeeper/cache"
)

// Token is one token of the catalog a Server serves.
type Token struct {
	// Name is the token's name in the routes (/v1/tokens/{name}).
	Name string
	// Optional tokens do not count for GET /readyz (without ?token=): a
	// replica is ready when every token that is not optional is servable.
	Optional bool
	// Source gives the token. For a per-device token it is the shared
	// access token, which is never served: only its readiness counts.
	Source tokenSource
	// Devices, when set, makes the token per device: GET
	// /v1/tokens/{name}/devices/{device} asks it for the device's token,
	// and GET /v1/tokens/{name} answers 400.
	Devices deviceMinter
}

// deviceMinter mints per-device tokens. Errors wrapping fault.ErrBadDevice
// answer 400, fault.ErrUnavailable 503 with Retry-After; their messages
// are shown to the caller, so they must not hold secrets or the device id.
type deviceMinter interface {
	Token(ctx context.Context, device string) (cache.Token, error)
}

// LimitError is what Devices returns when a budget refuses a mint: the
// answer is 429 with Retry-After.
type LimitError struct {
	// Reason says which budget, for the caller.
	Reason string
	// RetryAfter is when the budget allows again.
	RetryAfter time.Duration
}

func (e *LimitError) Error() string { return "httpapi: limited: " + e.Reason }

// defaultName is the name of the one token of a fleet without a catalog.
const defaultName = "liveness"

// served is one token as the server serves it.
type served struct {
	Token
	index  int                    // position in the catalog, for key scopes
	answer atomic.Pointer[answer] // the token route's answer for the last token served
}

// current returns the token if it may be handed out at now. Source
// promises a servable token; refusing one past its deadline as well costs
// a comparison and keeps the rule that no expired token is served local.
func (t *served) current(now time.Time) (cache.Token, bool) {
	tok, ok := t.Source.Current()
	if !ok || tok.Value == "" || !now.Before(tok.Deadline) {
		return cache.Token{}, false
	}
	return tok, true
}

// catalog indexes the served tokens by name, in the configured order.
type catalog struct {
	byName map[string]*served
	order  []*served
}

func newCatalog(tokens []Token) (catalog, error) {
	if len(tokens) == 0 {
		return catalog{}, fmt.Errorf("httpapi: no tokens to serve")
	}
	c := catalog{byName: make(map[string]*served, len(tokens))}
	for i, t := range tokens {
		switch {
		case t.Name == "":
			return catalog{}, fmt.Errorf("httpapi: token %d of %d has no name", i+1, len(tokens))
		case t.Source == nil:
			return catalog{}, fmt.Errorf("httpapi: token %q has no source", t.Name)
		case c.byName[t.Name] != nil:
			return catalog{}, fmt.Errorf("httpapi: token %q is named twice", t.Name)
		}
		s := &served{Token: t, index: i}
		c.byName[t.Name] = s
		c.order = append(c.order, s)
	}
	return c, nil
}

// Role is what a key may do.
type Role string

// The roles of a Key.
const (
	// RoleReader reads tokens.
	RoleReader Role = "reader"
	// RoleAdmin reads tokens, the status and asks for refreshes.
	RoleAdmin Role = "admin"
	// RoleMetrics reads /metrics when metrics keys are required.
	RoleMetrics Role = "metrics"
)

// Key is an API key with a role, limited to some tokens.
type Key struct {
	// Name labels the key in errors; never the key itself.
	Name string
	// Value is the key, or digestPrefix and the SHA-256 of it in hex.
	Value string
	// Role is what it may do.
	Role Role
	// Tokens are the names of the tokens it may read (and, for an admin
	// key, refresh). Empty: every token.
	Tokens []string
}

// scope is the set of tokens a key may use, by catalog index; nil means
// every token.
type scope []bool

func (s scope) allows(index int) bool { return s == nil || (index < len(s) && s[index]) }

// newScope turns names into a scope over c; empty names mean every token.
func newScope(c catalog, names []string) (scope, error) {
	if len(names) == 0 {
		return nil, nil
	}
	s := make(scope, len(c.order))
	for _, n := range names {
		if n == "*" {
			return nil, nil
		}
		t := c.byName[n]
		if t == nil {
			return nil, fmt.Errorf("names token %q, which this replica does not keep", n)
		}
		s[t.index] = true
	}
	return s, nil
}
