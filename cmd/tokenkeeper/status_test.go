package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/tokenkeeper/tokenkeeper/fakerdp"
	"github.com/tokenkeeper/tokenkeeper/internal/redistest"
	"github.com/tokenkeeper/tokenkeeper/internal/testkit"
)

// TestStatusCommand runs `tokenkeeper status` against the Redis of two
// running replicas: the table and the JSON name the leader, both
// replicas, ready, and the refresh that stored their token.
func TestStatusCommand(t *testing.T) {
	srv := redistest.NewMini(t)
	fake := fakerdp.New(fakerdp.Config{Knobs: fakerdp.Knobs{TokenLifetime: time.Minute}})
	rdp := httptest.NewServer(fake)
	t.Cleanup(rdp.Close)
	tm := fleetTimings{lifetime: time.Minute, before: 10 * time.Second, margin: 2 * time.Second, lockTTL: time.Second}
	a := startReplica(t, "replica-a", srv.Addr, rdp.URL, tm)
	b := startReplica(t, "replica-b", srv.Addr, rdp.URL, tm)
	env := map[string]string{"TOKENKEEPER_REDIS_URL": "redis://" + srv.Addr}
	getenv := func(k string) string { return env[k] }
	status := func(args ...string) (string, string, int) {
		var stdout, stderr bytes.Buffer
		code := run(context.Background(), append([]string{"status"}, args...), getenv, &stdout, &stderr)
		return stdout.String(), stderr.String(), code
	}

	var out fleetJSON
	testkit.Eventually(t, 5*time.Second, "both replicas ready in `status --json`", func() bool {
		stdout, stderr, code := status("--json")
		if code != 0 {
			t.Fatalf("status --json: exit %d: %s", code, stderr)
		}
		out = fleetJSON{}
		if err := json.Unmarshal([]byte(stdout), &out); err != nil {
			t.Fatalf("status --json: %v\n%s", err, stdout)
		}
		ready := 0
		for _, r := range out.Replicas {
			if r.Ready {
				ready++
			}
		}
		return ready == 2 && len(out.Refreshes) > 0
	})
	leader := a
	if b.p.keeper.IsLeader() {
		leader = b
	}
	if out.Leader != leader.name {
		t.Errorf("leader = %q, want %q", out.Leader, leader.name)
	}
	if out.Refreshes[len(out.Refreshes)-1].Outcome != "success" {
		t.Errorf("first refresh = %+v, want a success", out.Refreshes[len(out.Refreshes)-1])
	}

	table, stderr, code := status()
	if code != 0 {
		t.Fatalf("status: exit %d: %s", code, stderr)
	}
	for _, want := range []string{"leader:    " + leader.name, "2 alive, 2 ready", "replica-a", "replica-b", "INSTANCE", "UPSTREAM", "success", "sha256:"} {
		if !strings.Contains(table, want) {
			t.Errorf("status table lacks %q:\n%s", want, table)
		}
	}
	if strings.Contains(table, "fake-liveness-") {
		t.Errorf("status shows a token:\n%s", table)
	}

	// Without Redis settings, or with Redis gone, it says so and exits 1.
	delete(env, "TOKENKEEPER_REDIS_URL")
	if _, stderr, code := status(); code != 1 || !strings.Contains(stderr, "TOKENKEEPER_REDIS_URL") {
		t.Errorf("without a URL: exit %d, stderr %q; want 1 naming TOKENKEEPER_REDIS_URL", code, stderr)
	}
	env["TOKENKEEPER_REDIS_URL"] = "redis://:secret-password@127.0.0.1:1"
	if _, stderr, code := status("--timeout=1s"); code != 1 || strings.Contains(stderr, "secret-password") {
		t.Errorf("unreachable Redis: exit %d, stderr %q; want 1 without the password", code, stderr)
	}
}
