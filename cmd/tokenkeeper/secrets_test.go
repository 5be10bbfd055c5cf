package main

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokenkeeper/tokenkeeper"
	"github.com/tokenkeeper/tokenkeeper/internal/fakerdp"
	"github.com/tokenkeeper/tokenkeeper/internal/redistest"
	"github.com/tokenkeeper/tokenkeeper/internal/testkit"
)

// echoingRDP wraps the fake RDP; while echo is set it fails every call
// with a body that repeats the request's credentials, as a careless
// gateway might. It remembers every access token it saw.
type echoingRDP struct {
	fake *fakerdp.Server
	mu   sync.Mutex
	echo bool
	seen []string
}

func (e *echoingRDP) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if a := r.Header.Get("Authorization"); a != "" {
		e.mu.Lock()
		e.seen = append(e.seen, strings.TrimPrefix(a, "Bearer "))
		e.mu.Unlock()
	}
	e.mu.Lock()
	echo := e.echo
	e.mu.Unlock()
	if !echo {
		e.fake.ServeHTTP(w, r)
		return
	}
	body, _ := io.ReadAll(r.Body)
	status := http.StatusInternalServerError
	if strings.Contains(r.URL.Path, "/auth/") {
		status = http.StatusUnauthorized
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	io.WriteString(w, `{"error":"invalid_client","error_description":"rejected `+string(body)+` with `+r.Header.Get("Authorization")+`"}`)
}

// TestNoSecretInLogs captures everything a fleet logs at Debug through a
// refresh cycle, an admin refresh and an upstream that echoes credentials,
// and finds no token, key, password or secret in it, nor in what the
// status and metrics endpoints show.
func TestNoSecretInLogs(t *testing.T) {
	const (
		clientSecret  = "rdp-secret-value-9f8e7d"
		readerKey     = "reader-key-value-6c5b4a"
		adminKey      = "admin-key-value-3e2d1c"
		redisPassword = "redis-password-value-0a9b8c"
	)
	srv := redistest.NewMini(t)
	srv.Mini.RequireAuth(redisPassword)
	fake := fakerdp.New(fakerdp.Config{ClientSecret: clientSecret, Knobs: fakerdp.Knobs{TokenLifetime: 2 * time.Second, AccessTokenLifetime: time.Second}})
	rdp := &echoingRDP{fake: fake}
	rdpSrv := httptest.NewServer(rdp)
	t.Cleanup(rdpSrv.Close)

	logs := &testkit.Buffer{}
	auditPath := filepath.Join(t.TempDir(), "audit.log")
	log := slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	var fleet []*Program
	for _, name := range []string{"a", "b"} {
		cfg := Config{
			Listen: "127.0.0.1:0", Redis: &redis.Options{Addr: srv.Addr, Password: redisPassword},
			APIKeys: []string{readerKey}, AdminKeys: []string{adminKey}, Instance: name,
			RefreshBefore: 700 * time.Millisecond, LockTTL: time.Second, TokenLifetime: 2 * time.Second,
			ServeMargin: 300 * time.Millisecond, PollInterval: 200 * time.Millisecond,
			RetryMin: 50 * time.Millisecond, RetryMax: 300 * time.Millisecond, AuthPerMinute: 100,
			RDP: RDPConfig{BaseURL: rdpSrv.URL, Auth: "v2", ClientID: fakerdp.ClientID, ClientSecret: clientSecret, Timeout: 250 * time.Millisecond},
			// The audit trail is checked as the logs are, with failed
			// authentications throttled early so that it says so.
			AuditLog: auditPath, Security: tokenkeeper.Security{AuthFailures: 2},
		}
		p, err := NewProgram(cfg, log.With("replica", name), nil)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- p.Run(ctx) }()
		t.Cleanup(func() { cancel(); <-done; p.Close() })
		fleet = append(fleet, p)
	}
	get := func(method, path, key string) string {
		req, _ := http.NewRequest(method, "http://"+fleet[1].Addr()+path, nil)
		if key != "" {
			req.Header.Set("Authorization", "Bearer "+key)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}

	testkit.Eventually(t, 5*time.Second, "two tokens", func() bool { return len(fake.Stats().Tokens) >= 2 })
	get(http.MethodPost, "/v1/tokens/liveness/refresh", adminKey)
	get(http.MethodGet, "/v1/tokens/liveness", readerKey)
	get(http.MethodGet, "/v1/tokens/liveness", "wrong-"+readerKey)
	get(http.MethodGet, "/v1/tokens/liveness", "wrong-"+readerKey)
	get(http.MethodGet, "/v1/tokens/liveness", readerKey+"-wrong")
	shown := get(http.MethodGet, "/v1/status", adminKey) + get(http.MethodGet, "/metrics", "")
	rdp.mu.Lock()
	rdp.echo = true
	rdp.mu.Unlock()
	before := len(logs.String())
	testkit.Eventually(t, 5*time.Second, "failures logged", func() bool {
		return strings.Count(logs.String()[before:], "refresh failed") >= 3
	})
	shown += get(http.MethodGet, "/v1/status", adminKey)
	shown += get(http.MethodPost, "/v1/tokens/liveness/refresh", adminKey)

	secrets := []string{clientSecret, readerKey, adminKey, redisPassword}
	for _, tok := range fake.Stats().Tokens {
		secrets = append(secrets, tok.Token)
	}
	rdp.mu.Lock()
	secrets = append(secrets, rdp.seen...)
	rdp.mu.Unlock()
	out := logs.String()
	if !strings.Contains(out, "refresh failed") || !strings.Contains(out, "token refreshed") {
		t.Fatalf("the logs miss the events under test:\n%s", out)
	}
	b, err := os.ReadFile(auditPath)
	if err != nil {
		t.Fatal(err)
	}
	audit := string(b)
	for _, event := range []string{`"msg":"configuration"`, `"msg":"token handed out"`, `"msg":"admin action"`, `"msg":"auth throttled"`} {
		if !strings.Contains(audit, event) {
			t.Errorf("the audit trail misses %s:\n%s", event, audit)
		}
	}
	out += audit
	for _, s := range secrets {
		if s == "" {
			continue
		}
		if strings.Contains(out, s) {
			t.Errorf("the logs contain a secret or token (%d bytes, starting %q)", len(s), s[:4])
		}
		if strings.Contains(shown, s) {
			t.Errorf("status, metrics or refresh answers contain a secret or token (%d bytes, starting %q)", len(s), s[:4])
		}
	}
	t.Logf("checked %d secrets and tokens against %d bytes of logs", len(secrets), len(out))
}
