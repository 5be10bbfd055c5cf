//go:build realredis

package tokenkeeper_test

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokenkeeper/tokenkeeper"
	"github.com/tokenkeeper/tokenkeeper/internal/keepertest"
	"github.com/tokenkeeper/tokenkeeper/internal/redistest"
	"github.com/tokenkeeper/tokenkeeper/internal/testkit"
)

// runAgainst runs a Keeper of one token against the server at opt for a
// second, or until it fails, and returns Run's error and the log.
func runAgainst(t *testing.T, opt *redis.Options) (error, string) {
	t.Helper()
	var logs testkit.Buffer
	rdb := redis.NewClient(opt)
	t.Cleanup(func() { rdb.Close() })
	k, err := tokenkeeper.New(tokenkeeper.Config{
		Redis: rdb, Instance: "r0", Source: &hourSource{name: "liveness"},
		Logger: slog.New(slog.NewTextHandler(&logs, nil)),
		HTTP:   tokenkeeper.HTTPConfig{ReaderKeys: []string{keepertest.ReaderKey}},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Second)
	defer cancel()
	return k.Run(ctx), logs.String()
}

// Against a real redis-server with a command renamed away, as managed
// services and Valkey deployments do: a command tokenkeeper needs stops
// it at start with an error that names the command; one it can do
// without is named once in the log, and the Keeper keeps working.
func TestRedisCommandsRenamedAway(t *testing.T) {
	tests := []struct {
		command  string
		required bool
	}{
		{"EVALSHA", true},
		{"PTTL", true},
		{"SUBSCRIBE", true},
		{"EVALSHA_RO", false},
	}
	for _, tt := range tests {
		t.Run(tt.command, func(t *testing.T) {
			srv := redistest.StartServer(t, "--rename-command", tt.command, "")
			err, logs := runAgainst(t, srv.Options)
			if tt.required {
				if !errors.Is(err, tokenkeeper.ErrRedisCommand) || !strings.Contains(err.Error(), tt.command+" (") {
					t.Fatalf("Run with %s renamed away: got %v, want ErrRedisCommand naming %s", tt.command, err, tt.command)
				}
				return
			}
			if err != nil {
				t.Fatalf("Run with the optional %s renamed away: %v", tt.command, err)
			}
			if n := strings.Count(logs, "lacks an optional command"); n != 1 || !strings.Contains(logs, "command="+tt.command) {
				t.Errorf("log lines naming the missing optional %s: %d, want 1; logs:\n%s", tt.command, n, logs)
			}
		})
	}
}

// The README's minimal ACL user may list the commands (COMMAND INFO), so
// the check runs for it and finds everything.
func TestRedisCommandsWithTheMinimalACLUser(t *testing.T) {
	srv := redistest.StartServer(t)
	admin := srv.Client(t)
	acl := strings.Fields(readmeACL(t))
	args := []any{"ACL", "SETUSER"}
	for _, f := range acl {
		args = append(args, f)
	}
	if err := admin.Do(t.Context(), args...).Err(); err != nil {
		t.Fatalf("ACL SETUSER from the README: %v", err)
	}
	opt := *srv.Options
	opt.Username, opt.Password = "tokenkeeper", "PASSWORD"
	err, logs := runAgainst(t, &opt)
	if err != nil {
		t.Fatalf("Run as the README's minimal ACL user: %v", err)
	}
	for _, bad := range []string{"not checking", "lacks"} {
		if strings.Contains(logs, bad) {
			t.Errorf("the command check did not run cleanly for the minimal ACL user (%q); logs:\n%s", bad, logs)
		}
	}
}

// readmeACL returns the arguments of the README's first ACL SETUSER line
// (the one-token fleet's), its password left as the placeholder.
func readmeACL(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(line), "ACL SETUSER "); ok {
			return rest
		}
	}
	t.Fatal("no ACL SETUSER line in README.md")
	return ""
}
