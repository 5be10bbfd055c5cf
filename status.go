package tokenkeeper

import (
	"context"
	"fmt"
	"time"

	"github.com/tokenkeeper/tokenkeeper/cache"
	"github.com/tokenkeeper/tokenkeeper/internal/catalog"
	"github.com/tokenkeeper/tokenkeeper/refresher"
)

// Status is one token's fleet as this replica sees it. It never holds a
// token, only its fingerprint.
type Status struct {
	// Name is the token's; Optional and PerDevice are its settings.
	Name                string
	Optional, PerDevice bool
	// Mints is, for a per-device token, the fleet's mints in the last
	// minute, against MintBudget a minute (0: none). Without them the
	// rest describes the shared access token.
	Mints, MintBudget int
	// Instance is this replica; Leader the lock's holder ("" when none
	// or unknown), IsLeader whether that is this replica; Ready whether
	// this replica holds a servable token.
	Instance, Leader string
	IsLeader, Ready  bool
	// TokenFingerprint and Generation name the token this replica holds,
	// ExpiresAt its expiry on this replica's clock.
	TokenFingerprint string
	Generation       uint64
	ExpiresAt        time.Time
	// LastRefresh is when the fleet last stored a new token, NextRefresh
	// when the leader plans the next fetch; LastError the last failure.
	LastRefresh, NextRefresh time.Time
	LastError                string
	// Replicas are the replicas whose heartbeat is fresh (this one alone
	// without Redis); Refreshes the last refresh attempts, newest first.
	Replicas  []Replica
	Refreshes []Refresh
}

// Replica is one replica's last heartbeat, dated on the reader's clock.
type Replica struct {
	Instance, Version string
	Ready, Leader     bool
	// Fingerprint and ExpiresAt name the token it holds.
	Fingerprint string
	ExpiresAt   time.Time
	// LastEvent is when it last heard of the token's channel, and
	// LastEventType of what; Seen when it wrote this heartbeat.
	LastEvent     time.Time
	LastEventType string
	Seen          time.Time
	// Problem is what keeps it from serving or leading, if it knows.
	Problem string
	// Upstream is "ok", "failing" or "" (no call made while leading);
	// UpstreamError the failing call's error, with no secret.
	Upstream, UpstreamError string
	// AsideFor is how long it still stays out of elections.
	AsideFor time.Duration
}

// Refresh is one refresh attempt of a leader.
type Refresh struct {
	// At is when it ended, By the leader that made it, Outcome one of
	// "success", "superseded", "upstream_error", "redis_error", "fenced".
	At          time.Time
	By, Outcome string
	// Took is the whole attempt, Upstream the upstream call alone.
	Took, Upstream time.Duration
	// Fingerprint and ExpiresAt name the token stored; empty on failure.
	Fingerprint string
	ExpiresAt   time.Time
	// Error says why it failed; RetryAfter is the delay the upstream
	// asked for.
	Error      string
	RetryAfter time.Duration
}

// statusOf is a refresher's status as the root shows it.
func statusOf(s refresher.Status) Status {
	out := Status{
		Instance: s.Instance, Leader: s.Leader, IsLeader: s.IsLeader, Ready: s.Ready,
		TokenFingerprint: s.TokenFingerprint, Generation: s.Generation, ExpiresAt: s.ExpiresAt,
		LastRefresh: s.LastRefresh, NextRefresh: s.NextRefresh, LastError: s.LastError,
	}
	for _, r := range s.Replicas {
		out.Replicas = append(out.Replicas, Replica(r))
	}
	for _, a := range s.Refreshes {
		out.Refreshes = append(out.Refreshes, Refresh{At: a.At, By: a.By, Outcome: a.Outcome, Took: a.Took, Upstream: a.Upstream,
			Fingerprint: a.Fingerprint, ExpiresAt: a.ExpiresAt, Error: a.Error, RetryAfter: a.RetryAfter})
	}
	return out
}

// ReadStatus reads the named token's fleet as Redis records it, with no
// Keeper running: the leader, the replicas whose heartbeat is fresh and
// the last refresh attempts, dated on this machine's clock. ExpiresAt is
// when the token stored in Redis expires (zero when none is), and
// TokenFingerprint names it when a heartbeat or an attempt names a token
// of that expiry (the token is never read: it may be sealed). The
// fields of one replica's own view are empty. A name no token may have is
// a *FieldError, found before Redis is asked.
func ReadStatus(ctx context.Context, rdb Redis, name string) (Status, error) {
	if !catalog.ValidName(name) {
		return Status{}, &FieldError{"Name", fmt.Sprintf("%q is not a token name: %s", name, catalog.NameRule)}
	}
	keys := cache.KeysFor(name)
	f, err := refresher.ReadFleet(ctx, rdb, keys, time.Now())
	if err != nil {
		return Status{}, err
	}
	s := statusOf(refresher.Status{Leader: f.Leader, Replicas: f.Replicas, Refreshes: f.Refreshes})
	s.Name = name
	sent := time.Now()
	ttl, err := rdb.PTTL(ctx, keys.Token).Result()
	if err != nil {
		return s, fmt.Errorf("tokenkeeper: read the token's expiry: %w", err)
	}
	// PTTL answers -2 (no key) or -1 (no expiry, which the fenced write
	// never leaves) as nanoseconds: no token.
	if ttl > 0 {
		s.ExpiresAt = sent.Add(ttl)
		s.TokenFingerprint = storedFingerprint(s, s.ExpiresAt)
	}
	return s, nil
}

// fingerprintSlack is how far apart two readings of one token's expiry
// may be (a heartbeat's or an attempt's, and the stored key's time to
// live) for ReadStatus to take them as the same token.
const fingerprintSlack = 2 * time.Second

// storedFingerprint names the stored token, which expires at exp: the
// fingerprint of the heartbeat or refresh attempt whose token expires
// closest to it, within fingerprintSlack; "" when none does.
func storedFingerprint(s Status, exp time.Time) string {
	best, bestOff := "", fingerprintSlack+1
	consider := func(fp string, at time.Time) {
		if fp == "" || at.IsZero() {
			return
		}
		off := at.Sub(exp).Abs()
		if off <= fingerprintSlack && off < bestOff {
			best, bestOff = fp, off
		}
	}
	for _, r := range s.Replicas {
		consider(r.Fingerprint, r.ExpiresAt)
	}
	for _, a := range s.Refreshes {
		consider(a.Fingerprint, a.ExpiresAt)
	}
	return best
}
