package main

// What `tokenkeeper status --json` prints: the shapes of GET /v1/status
// (README, "HTTP API"), for the scripts that read both.

import (
	"time"

	"github.com/tokenkeeper/tokenkeeper"
)

// fleetJSON is what `tokenkeeper status --json` prints for the liveness
// token alone (no catalog, no --token): the fields of GET /v1/status that
// Redis knows, in the same shapes. It is the shape of the versions before
// the catalog, kept as it was for the scripts that read it.
type fleetJSON struct {
	Leader      string        `json:"leader"`
	Replicas    []replicaJSON `json:"replicas"`
	Refreshes   []refreshJSON `json:"refreshes"`
	GeneratedAt time.Time     `json:"generated_at"`
}

// replicaJSON is one replica as GET /v1/status shows it.
type replicaJSON struct {
	Instance         string    `json:"instance"`
	Version          string    `json:"version,omitempty"`
	Ready            bool      `json:"ready"`
	Leader           bool      `json:"leader"`
	TokenFingerprint string    `json:"token_fingerprint,omitempty"`
	ExpiresAt        time.Time `json:"expires_at,omitzero"`
	LastEventAt      time.Time `json:"last_event_at,omitzero"`
	LastEvent        string    `json:"last_event,omitempty"`
	SeenAt           time.Time `json:"seen_at,omitzero"`
	Problem          string    `json:"problem,omitempty"`
	Upstream         string    `json:"upstream,omitempty"`
	UpstreamError    string    `json:"upstream_error,omitempty"`
}

// refreshJSON is one refresh attempt as GET /v1/status shows it.
type refreshJSON struct {
	At               time.Time `json:"at"`
	By               string    `json:"by"`
	Outcome          string    `json:"outcome"`
	DurationSeconds  float64   `json:"duration_seconds"`
	UpstreamSeconds  float64   `json:"upstream_seconds"`
	TokenFingerprint string    `json:"token_fingerprint,omitempty"`
	ExpiresAt        time.Time `json:"expires_at,omitzero"`
	Error            string    `json:"error,omitempty"`
}

// fleetOf is st's replicas and refreshes as JSON shows them, with times in
// UTC to the millisecond, and empty lists as [].
func fleetOf(st tokenkeeper.Status) ([]replicaJSON, []refreshJSON) {
	replicas := make([]replicaJSON, 0, len(st.Replicas))
	for _, r := range st.Replicas {
		replicas = append(replicas, replicaJSON{
			Instance: r.Instance, Version: r.Version, Ready: r.Ready, Leader: r.Leader,
			TokenFingerprint: r.Fingerprint, ExpiresAt: utcMillis(r.ExpiresAt),
			LastEventAt: utcMillis(r.LastEvent), LastEvent: r.LastEventType, SeenAt: utcMillis(r.Seen), Problem: r.Problem,
			Upstream: r.Upstream, UpstreamError: r.UpstreamError,
		})
	}
	refreshes := make([]refreshJSON, 0, len(st.Refreshes))
	for _, a := range st.Refreshes {
		refreshes = append(refreshes, refreshJSON{
			At: utcMillis(a.At), By: a.By, Outcome: a.Outcome,
			DurationSeconds: a.Took.Seconds(), UpstreamSeconds: a.Upstream.Seconds(),
			TokenFingerprint: a.Fingerprint, ExpiresAt: utcMillis(a.ExpiresAt), Error: a.Error,
		})
	}
	return replicas, refreshes
}

// tokensJSON is what `tokenkeeper status --json` prints with a catalog
// (TOKENKEEPER_CONFIG) or --token: every token, in the file's or the
// flags' order.
type tokensJSON struct {
	Tokens      []tokenJSON `json:"tokens"`
	GeneratedAt time.Time   `json:"generated_at"`
}

// tokenJSON is one token in tokensJSON: its fleet as fleetJSON shows it,
// and the token stored in Redis. The last refresh attempt is the first of
// Refreshes.
type tokenJSON struct {
	Name   string `json:"name"`
	Leader string `json:"leader"`
	// TokenFingerprint names the token stored in Redis, as the replicas'
	// heartbeats or the refresh that stored it name it; empty when there
	// is none or no replica or attempt names it.
	TokenFingerprint string `json:"token_fingerprint,omitempty"`
	// ExpiresAt is when the stored token expires (its key's time to live,
	// on this machine's clock); ExpiresIn the whole seconds left then.
	ExpiresAt time.Time     `json:"expires_at,omitzero"`
	ExpiresIn int64         `json:"expires_in"`
	Replicas  []replicaJSON `json:"replicas"`
	Refreshes []refreshJSON `json:"refreshes"`
	// Error says why this token could not be read; the other fields are
	// then empty.
	Error string `json:"error,omitempty"`
}
