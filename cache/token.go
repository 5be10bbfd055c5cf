package cache

import (
	"crypto/sha256"
	"encoding/hex"
	"time"
)

// Token is one liveness token as a replica holds it.
//
// Deadline is the local instant at which the token expires. It is derived
// from the remaining lifetime Redis reported plus the local clock at the
// moment of the report, so when it comes from time.Now it carries Go's
// monotonic reading and a change of the wall clock cannot move it.
type Token struct {
	// Value is the credential itself. Never log it; use Fingerprint.
	Value string
	// Deadline is when the token expires, on the local clock.
	Deadline time.Time
	// FetchedAt is when the leader received the token from the upstream,
	// on the local clock (zero when unknown).
	FetchedAt time.Time
	// Writer is the instance id of the replica that stored it.
	Writer string
	// Generation counts the writes of the token key in Redis: each write
	// stores one more than the highest generation the key or the writer
	// has seen, so it only grows, across failovers and restores too, as
	// long as one replica remembers. Zero: unknown (not yet stored).
	Generation uint64
}

// Fingerprint returns a short, stable, non-reversible name for the token
// that is safe to log and expose.
func (t Token) Fingerprint() string {
	return Fingerprint(t.Value)
}

// Remaining returns how long the token has left at now; never negative.
func (t Token) Remaining(now time.Time) time.Duration {
	d := t.Deadline.Sub(now)
	if d < 0 {
		return 0
	}
	return d
}

// ServableAt reports whether the token may be handed out at now, given
// that no token is served within margin of its deadline.
func (t Token) ServableAt(now time.Time, margin time.Duration) bool {
	return t.Value != "" && now.Before(t.Deadline.Add(-margin))
}

// Fingerprint returns the first 12 hex digits of the SHA-256 of s, prefixed
// with "sha256:"; empty input gives "".
func Fingerprint(s string) string {
	if s == "" {
		return ""
	}
	sum := sha256.Sum256([]byte(s))
	return "sha256:" + hex.EncodeToString(sum[:6])
}
