package httpapi

import "time"

// Replica is one replica's last heartbeat as GET /v1/status shows it
// (Status.Replicas). Zero times are left out; times are shown in UTC.
type Replica struct {
	// Instance is the replica's id.
	Instance string `json:"instance"`
	// Version is the build it runs.
	Version string `json:"version,omitempty"`
	// Ready is whether it holds a servable token; Leader whether it holds
	// the leader lock.
	Ready  bool `json:"ready"`
	Leader bool `json:"leader"`
	// TokenFingerprint names the token it holds, and ExpiresAt that
	// token's expiry.
	TokenFingerprint string    `json:"token_fingerprint,omitempty"`
	ExpiresAt        time.Time `json:"expires_at,omitzero"`
	// LastEventAt is when it last received a message on the events
	// channel, and LastEvent that message's type (token, refresh,
	// refreshed, released).
	LastEventAt time.Time `json:"last_event_at,omitzero"`
	LastEvent   string    `json:"last_event,omitempty"`
	// SeenAt is when it wrote its last heartbeat.
	SeenAt time.Time `json:"seen_at,omitzero"`
	// Problem is what keeps it from serving or leading, when it knows.
	Problem string `json:"problem,omitempty"`
	// Upstream is whether this replica can reach the upstream, as its own
	// attempts while leading last showed: "ok", "failing", or
	// empty when it has not tried while leading.
	Upstream string `json:"upstream,omitempty"`
	// UpstreamError is the error of its last failed attempt, when Upstream
	// is "failing". It is shown to admins, so it must not hold
	// secrets.
	UpstreamError string `json:"upstream_error,omitempty"`
}

// Values of Replica.Upstream.
const (
	// upstreamOK: the replica's last attempt to reach the upstream
	// succeeded.
	upstreamOK = "ok"
	// upstreamFailing: its last attempts failed.
	upstreamFailing = "failing"
)

// Refresh is one refresh attempt by a leader as GET /v1/status shows it
// (Status.Refreshes). It never holds the token.
type Refresh struct {
	// At is when the attempt ended; By the leader that made it.
	At time.Time `json:"at"`
	By string    `json:"by"`
	// Outcome is success, superseded, upstream_error, redis_error or
	// fenced.
	Outcome string `json:"outcome"`
	// DurationSeconds is the whole attempt; UpstreamSeconds the upstream
	// call alone (0 when none was made).
	DurationSeconds float64 `json:"duration_seconds"`
	UpstreamSeconds float64 `json:"upstream_seconds"`
	// TokenFingerprint names the token stored, and ExpiresAt its expiry;
	// both empty on failure.
	TokenFingerprint string    `json:"token_fingerprint,omitempty"`
	ExpiresAt        time.Time `json:"expires_at,omitzero"`
	// Error says why it failed. It is shown to admins, so it must not hold
	// secrets.
	Error string `json:"error,omitempty"`
}

// fleetUTC puts the fleet's times in UTC to the millisecond, and makes
// empty lists [] rather than null.
func (st *Status) fleetUTC() {
	if st.Replicas == nil {
		st.Replicas = []Replica{}
	}
	if st.Refreshes == nil {
		st.Refreshes = []Refresh{}
	}
	for i := range st.Replicas {
		r := &st.Replicas[i]
		r.ExpiresAt, r.LastEventAt, r.SeenAt = utc(r.ExpiresAt), utc(r.LastEventAt), utc(r.SeenAt)
	}
	for i := range st.Refreshes {
		r := &st.Refreshes[i]
		r.At, r.ExpiresAt = utc(r.At), utc(r.ExpiresAt)
	}
}

// TokenStatus is one token of the catalog in GET /v1/status
// (Status.Tokens). It never holds the token itself.
type TokenStatus struct {
	Name string `json:"name"`
	// Mode is "shared" or "per-device"; for a per-device token the fields
	// below describe the shared access token, and MintsLastMinute the
	// fleet's mints in the last minute against MintsPerMinute (0: no cap).
	Mode            string `json:"mode,omitempty"`
	MintsLastMinute int    `json:"mints_last_minute,omitempty"`
	MintsPerMinute  int    `json:"mints_per_minute,omitempty"`
	// Required is whether /readyz waits for it.
	Required bool `json:"required"`
	// Leader is the replica holding this token's lock; IsLeader whether
	// that is this one.
	Leader   string `json:"leader,omitempty"`
	IsLeader bool   `json:"is_leader"`
	// Ready is whether this replica holds it servable.
	Ready            bool      `json:"ready"`
	TokenFingerprint string    `json:"token_fingerprint,omitempty"`
	Generation       uint64    `json:"generation,omitempty"`
	ExpiresAt        time.Time `json:"expires_at,omitzero"`
	// ExpiresIn is computed by the server, as Status.ExpiresIn.
	ExpiresIn   int64     `json:"expires_in"`
	LastRefresh time.Time `json:"last_refresh,omitzero"`
	NextRefresh time.Time `json:"next_refresh,omitzero"`
	LastError   string    `json:"last_error,omitempty"`
	// Refreshes are its last refresh attempts, newest first.
	Refreshes []Refresh `json:"refreshes"`
}

// tokensUTC shows the tokens' times in UTC and fills in their expires_in
// at now.
func (st *Status) tokensUTC(now time.Time) {
	for i := range st.Tokens {
		t := &st.Tokens[i]
		t.ExpiresIn = 0
		if !t.ExpiresAt.IsZero() {
			t.ExpiresIn = expiresIn(t.ExpiresAt, now)
			t.ExpiresAt = expiresAt(t.ExpiresAt)
		}
		t.LastRefresh, t.NextRefresh = utc(t.LastRefresh), utc(t.NextRefresh)
		if t.Refreshes == nil {
			t.Refreshes = []Refresh{}
		}
		for j := range t.Refreshes {
			r := &t.Refreshes[j]
			r.At, r.ExpiresAt = utc(r.At), utc(r.ExpiresAt)
		}
	}
}

// scope leaves of st what an admin key limited to sc may see: the tokens
// of its scope, as every other route does. The fields at the top, the
// replicas' token fields and Refreshes describe the catalog's first token;
// when it is out of scope they describe the first token in scope instead
// (none: they are left empty), and the replicas keep only their name,
// build and last heartbeat, for the fleet view follows the first token
// alone. A nil scope (every token) leaves st as it is.
func (st *Status) scope(sc scope, c catalog) {
	if sc == nil {
		return
	}
	// New slices: the Controller's may be shared with other answers.
	kept := make([]TokenStatus, 0, len(st.Tokens))
	for _, t := range st.Tokens {
		if s := c.byName[t.Name]; s != nil && sc.allows(s.index) {
			kept = append(kept, t)
		}
	}
	st.Tokens = kept
	if sc.allows(0) {
		return
	}
	var first TokenStatus
	if len(kept) > 0 {
		first = kept[0]
	}
	st.Leader, st.IsLeader, st.Ready = first.Leader, first.IsLeader, first.Ready
	st.TokenFingerprint, st.Generation, st.ExpiresAt = first.TokenFingerprint, first.Generation, first.ExpiresAt
	st.LastRefresh, st.NextRefresh, st.LastError = first.LastRefresh, first.NextRefresh, first.LastError
	st.Refreshes = first.Refreshes
	replicas := make([]Replica, 0, len(st.Replicas))
	for _, r := range st.Replicas {
		replicas = append(replicas, Replica{Instance: r.Instance, Version: r.Version, SeenAt: r.SeenAt})
	}
	st.Replicas = replicas
}
