//go:build realredis

package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tokenkeeper/tokenkeeper/internal/fakerdp"
	"github.com/tokenkeeper/tokenkeeper/internal/testkit"
)

// catalogACL is the README's ACL for a catalog of the tokens names, any
// of which may run per device: each token's keys and channel, and the
// commands of the shared and the per-device modes.
func catalogACL(names ...string) string {
	var keys, channels []string
	for _, n := range names {
		keys = append(keys, "~tokenkeeper:{"+n+"}:*")
		channels = append(channels, "&tokenkeeper:{"+n+"}:events")
	}
	return "user tokenkeeper on >tk-redis-password resetkeys " + strings.Join(keys, " ") + " ~tokenkeeper:replicas" +
		" resetchannels " + strings.Join(channels, " ") + " -@all " +
		"+ping +hello +auth +client|setname +select +command|info " +
		"+eval +evalsha +eval_ro +evalsha_ro +script|load " +
		"+get +mget +set +del +getrange +pexpire +pttl +time " +
		"+hget +hmget +hset +pexpireat " +
		"+zadd +zcard +zrange +zremrangebyscore +hgetall +hdel +lpush +ltrim +lrange " +
		"+publish +subscribe +unsubscribe " +
		"+incr +expire" // per-device tokens: the mint counts
}

// A catalog of a shared token and a per-device one runs through the ACL
// of the README, per-device mints included, with no command refused; the
// ACL user reaches no key outside the catalog's.
func TestRedisTLSAndACLCatalogAndDevices(t *testing.T) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatalf("redis-server is needed by this test (apt-get install redis-server): %v", err)
	}
	dir := t.TempDir()
	port := freePort(t)
	conf := strings.Join([]string{
		fmt.Sprintf("port %d", port),
		"bind 127.0.0.1",
		"save \"\"",
		"appendonly no",
		"dir " + dir,
		"user default on >admin-password ~* &* +@all",
		catalogACL("shared", "per-device"),
	}, "\n")
	confFile := filepath.Join(dir, "redis.conf")
	if err := os.WriteFile(confFile, []byte(conf+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, confFile)
	out, _ := os.Create(filepath.Join(dir, "redis.log"))
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	testkit.Eventually(t, 10*time.Second, "redis-server listening", func() bool {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		return err == nil
	})

	fake := fakerdp.New(fakerdp.Config{Knobs: fakerdp.Knobs{TokenLifetime: time.Hour}})
	rdp := httptest.NewServer(fake)
	t.Cleanup(rdp.Close)
	catalogFile := filepath.Join(dir, "tokens.yaml")
	rdpBlock := fmt.Sprintf("    rdp:\n      base_url: %s\n      client_id: %s\n      client_secret: ${RDP_CLIENT_SECRET}\n", rdp.URL, fakerdp.ClientID)
	catalog := "tokens:\n  - name: shared\n    source: rdp-liveness\n" + rdpBlock +
		"  - name: per-device\n    source: rdp-liveness\n    mode: per-device\n    mints_per_minute: 100\n    mints_per_device_hour: 10\n" + rdpBlock +
		"keys:\n  - name: app\n    key: ${APP_KEY}\n  - name: ops\n    role: admin\n    key: ${OPS_KEY}\n"
	if err := os.WriteFile(catalogFile, []byte(catalog), 0o600); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{
		"TOKENKEEPER_LISTEN":           "127.0.0.1:0",
		"TOKENKEEPER_REDIS_URL":        "redis://tokenkeeper:tk-redis-password@" + addr + "/0",
		"TOKENKEEPER_CONFIG":           catalogFile,
		"TOKENKEEPER_INSTANCE_ID":      "acl-1",
		"TOKENKEEPER_LOCK_TTL":         "1s",
		"TOKENKEEPER_FLEET_RATE_LIMIT": "1000",
		"APP_KEY":                      "app-key-5d4c3b2a1f0e9d8c7b6a",
		"OPS_KEY":                      "ops-key-9a8b7c6d5e4f3a2b1c0d",
		"RDP_CLIENT_SECRET":            fakerdp.ClientSecret,
	}
	cfg, err := parseServe(nil, func(k string) string { return env[k] }, os.ReadFile, os.Stderr)
	if err != nil {
		t.Fatal(err)
	}
	logs := &testkit.Buffer{}
	p, err := NewProgram(cfg, slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})), nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done; p.Close() })

	get := func(method, path, key string) int {
		req, _ := http.NewRequest(method, "http://"+p.Addr()+path, nil)
		req.Header.Set("Authorization", "Bearer "+key)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	testkit.Eventually(t, 15*time.Second, "the shared token and a device's through the ACL", func() bool {
		return get(http.MethodGet, "/v1/tokens/shared", "app-key-5d4c3b2a1f0e9d8c7b6a") == http.StatusOK &&
			get(http.MethodGet, "/v1/tokens/per-device/devices/phone-1", "app-key-5d4c3b2a1f0e9d8c7b6a") == http.StatusOK
	})
	for _, dev := range []string{"phone-1", "phone-2", "phone-1"} {
		if code := get(http.MethodGet, "/v1/tokens/per-device/devices/"+dev, "app-key-5d4c3b2a1f0e9d8c7b6a"); code != http.StatusOK {
			t.Errorf("device %s: %d, want 200", dev, code)
		}
	}
	for _, name := range []string{"shared", "per-device"} {
		if code := get(http.MethodPost, "/v1/tokens/"+name+"/refresh", "ops-key-9a8b7c6d5e4f3a2b1c0d"); code != http.StatusOK {
			t.Errorf("admin refresh of %s: %d, want 200", name, code)
		}
	}
	started := time.Now()
	testkit.Eventually(t, 10*time.Second, "heartbeats, history, renewals and the replica count through the ACL", func() bool {
		st, err := p.keeper.Status(context.Background())
		return err == nil && len(st) == 2 && len(st[1].Replicas) == 1 && time.Since(started) > 2*cfg.LockTTL
	})
	if out := logs.String(); strings.Contains(out, "NOPERM") || strings.Contains(out, "can't run this command") || strings.Contains(out, "no permissions") {
		t.Fatalf("the catalog ACL refused something the replica needs:\n%s", out)
	}
}
