package tokenkeeper

import (
	"context"
	"time"

	"github.com/tokenkeeper/tokenkeeper/cache"
	"github.com/tokenkeeper/tokenkeeper/upstream"
)

// Token is a token as a replica holds it.
type Token struct {
	// Value is the credential itself. Never log it; use Fingerprint.
	Value string
	// Deadline is when the token expires, on the replica's clock
	// (Config.Clock): Redis's remaining time added to the moment it was
	// read, so a change of the wall clock cannot move it.
	Deadline time.Time
	// FetchedAt is when the leader received it from the upstream, on the
	// replica's clock (zero when unknown).
	FetchedAt time.Time
	// Writer is the instance that stored it.
	Writer string
	// Generation counts the writes of the token in Redis; it only grows
	// (X-Tokenkeeper-Generation). Zero: not yet stored.
	Generation uint64
}

// tokenOf is a store's token as the root shows it.
func tokenOf(t cache.Token) Token {
	return Token{Value: t.Value, Deadline: t.Deadline, FetchedAt: t.FetchedAt, Writer: t.Writer, Generation: t.Generation}
}

// Fingerprint is a short, stable, non-reversible name of the token, safe
// to log and show: "sha256:" and 12 hex digits; "" for no token.
func (t Token) Fingerprint() string { return cache.Fingerprint(t.Value) }

// Remaining is how long the token has left at now; never negative.
func (t Token) Remaining(now time.Time) time.Duration { return max(t.Deadline.Sub(now), 0) }

// UpstreamToken is what a Source returns.
type UpstreamToken struct {
	// Value is the credential.
	Value string
	// Lifetime is how long it is valid, counted from Sent.
	Lifetime time.Duration
	// Sent is when the request that obtained it was sent, on the
	// replica's clock (Config.Clock): its life is counted from then,
	// never from when the answer arrived.
	Sent time.Time
}

// Source fetches a new token from the upstream. The Keeper calls it from
// one replica of the fleet at a time (the leader), about once per token
// lifetime. An error that wraps an *upstream.Error says whether it is
// worth retrying; any other error is retried with backoff.
type Source interface {
	Token(ctx context.Context) (UpstreamToken, error)
}

// ownSource is an embedder's Source as the refresher takes it.
type ownSource struct{ s Source }

func (o ownSource) Token(ctx context.Context) (upstream.Token, error) {
	t, err := o.s.Token(ctx)
	return upstream.Token{Value: t.Value, Lifetime: t.Lifetime, Sent: t.Sent}, err
}
