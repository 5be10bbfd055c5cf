package client

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"time"
)

// Token is a token as the client holds it. Value is the credential; the
// String, GoString and LogValue methods print a fingerprint instead, so a
// Token that ends up in a log or an error does not leak it.
type Token struct {
	// Name is the token's name, e.g. "liveness".
	Name string
	// Value is the credential.
	Value string
	// ExpiresAt is when the token expires, on the client's clock (the
	// local time.Now): the send time of the request that got it plus the
	// answer's expires_in.
	ExpiresAt time.Time
}

// Valid reports whether t holds a value that has not expired at now.
func (t Token) Valid(now time.Time) bool { return t.Value != "" && now.Before(t.ExpiresAt) }

// ExpiresIn is how long t has left at now; zero or less once expired.
func (t Token) ExpiresIn(now time.Time) time.Duration { return t.ExpiresAt.Sub(now) }

// Fingerprint is a short, non-reversible name of the value: "sha256:" and
// the first 12 hex digits of its SHA-256, as the service prints it.
// Empty for an empty value.
func (t Token) Fingerprint() string {
	if t.Value == "" {
		return ""
	}
	sum := sha256.Sum256([]byte(t.Value))
	return "sha256:" + hex.EncodeToString(sum[:6])
}

// String describes t without its value.
func (t Token) String() string {
	return fmt.Sprintf("%s %s expires %s", t.Name, t.Fingerprint(), t.ExpiresAt.Format(time.RFC3339))
}

// GoString describes t without its value, for %#v.
func (t Token) GoString() string {
	return fmt.Sprintf("client.Token{Name:%q, Value:%q, ExpiresAt:%q}", t.Name, t.Fingerprint(), t.ExpiresAt.Format(time.RFC3339Nano))
}

// LogValue logs t without its value.
func (t Token) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("name", t.Name),
		slog.String("fingerprint", t.Fingerprint()),
		slog.Time("expires_at", t.ExpiresAt),
	)
}
