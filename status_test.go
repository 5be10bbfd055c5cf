package tokenkeeper

import (
	"testing"
	"time"
)

// TestStoredFingerprint: the token stored in Redis is named by the
// heartbeat or attempt whose token expires when the stored one does, or
// not at all.
func TestStoredFingerprint(t *testing.T) {
	now := time.Now()
	exp := now.Add(time.Hour)
	s := Status{
		Replicas: []Replica{
			{Instance: "old", Fingerprint: "sha256:old", ExpiresAt: exp.Add(-15 * time.Minute)},
			{Instance: "new", Fingerprint: "sha256:new", ExpiresAt: exp.Add(30 * time.Millisecond)},
			{Instance: "none"},
		},
		Refreshes: []Refresh{
			{At: now.Add(-time.Minute), Outcome: "upstream_error"},
			{At: now.Add(-2 * time.Minute), Outcome: "success", Fingerprint: "sha256:new", ExpiresAt: exp.Add(-10 * time.Millisecond)},
		},
	}
	if got := storedFingerprint(s, exp); got != "sha256:new" {
		t.Errorf("storedFingerprint = %q, want sha256:new", got)
	}
	if got := storedFingerprint(s, exp.Add(5*time.Minute)); got != "" {
		t.Errorf("storedFingerprint of a token no replica holds = %q, want none", got)
	}
	if got := storedFingerprint(s, exp.Add(fingerprintSlack+time.Second)); got != "" {
		t.Errorf("storedFingerprint past the slack = %q, want none", got)
	}
}
