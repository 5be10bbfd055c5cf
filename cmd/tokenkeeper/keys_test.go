package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
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
	"github.com/tokenkeeper/tokenkeeper/internal/tlstest"
)

// Keys of the tests, strong enough to be accepted (the front door refuses weaker ones).
const (
	testReaderKey = "reader-key-5b9e2c7f1a3d8e4b6c0f"
	testAdminKey  = "admin-key-7d3f1b9e5c2a8f4d6e0b"
)

// TestWeakKeysAreRefusedAtStart: serve refuses reader and admin keys under
// 128 bits of estimated randomness from every place keys come from, naming
// the setting and never the key, unless TOKENKEEPER_ALLOW_WEAK_KEYS=true.
func TestWeakKeysAreRefusedAtStart(t *testing.T) {
	const weak = "demo-reader-key"
	dir := t.TempDir()
	weakFile := filepath.Join(dir, "admin-keys")
	if err := os.WriteFile(weakFile, []byte(weak+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	catalogFile := filepath.Join(dir, "tokens.yaml")
	if err := os.WriteFile(catalogFile, []byte(`tokens:
  - name: liveness
    source: rdp-liveness
    rdp:
      client_id: id
      client_secret: ${RDP_SECRET}
keys:
  - name: ops
    role: admin
    key: ${OPS_KEY}
`), 0o600); err != nil {
		t.Fatal(err)
	}
	base := map[string]string{
		"TOKENKEEPER_REDIS_URL": "redis://localhost:6379/0",
		"TOKENKEEPER_API_KEYS":  testReaderKey,
		"RDP_CLIENT_ID":         "id",
		"RDP_CLIENT_SECRET":     "s3cr3t",
		"RDP_SECRET":            "s3cr3t",
	}
	tests := []struct {
		name string
		env  map[string]string
		want string
	}{
		{"reader key", map[string]string{"TOKENKEEPER_API_KEYS": testReaderKey + "," + weak}, "TOKENKEEPER_API_KEYS: key 2 of 2 is too weak to resist guessing"},
		{"admin key from a file", map[string]string{"TOKENKEEPER_ADMIN_KEYS_FILE": weakFile}, "TOKENKEEPER_ADMIN_KEYS: key 1 of 1 is too weak to resist guessing"},
		{"catalog key", map[string]string{"TOKENKEEPER_CONFIG": catalogFile, "OPS_KEY": weak}, "TOKENKEEPER_CONFIG: key ops is too weak to resist guessing"},
		{"repeated string", map[string]string{"TOKENKEEPER_API_KEYS": strings.Repeat("s3cr3tK3y", 5)}, "repeats a shorter string"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := map[string]string{}
			for k, v := range base {
				env[k] = v
			}
			for k, v := range tt.env {
				env[k] = v
			}
			getenv := func(k string) string { return env[k] }
			var stderr bytes.Buffer
			if code := run(context.Background(), []string{"serve"}, getenv, io.Discard, &stderr); code == 0 {
				t.Fatal("serve started with a weak key")
			}
			for _, part := range []string{tt.want, "128", "TOKENKEEPER_ALLOW_WEAK_KEYS=true"} {
				if !strings.Contains(stderr.String(), part) {
					t.Errorf("stderr does not say %q:\n%s", part, stderr.String())
				}
			}
			if strings.Contains(stderr.String(), "demo-reader-key") || strings.Contains(stderr.String(), "s3cr3tK3y") {
				t.Errorf("stderr quotes the key:\n%s", stderr.String())
			}
			env["TOKENKEEPER_ALLOW_WEAK_KEYS"] = "true"
			c, err := parseServe(nil, getenv, os.ReadFile, io.Discard)
			if err != nil {
				t.Fatalf("with TOKENKEEPER_ALLOW_WEAK_KEYS=true: %v", err)
			}
			if !c.AllowWeakKeys || !c.keeperConfig().HTTP.AllowWeakKeys {
				t.Error("TOKENKEEPER_ALLOW_WEAK_KEYS=true did not reach the HTTP face")
			}
		})
	}

	// config check refuses the catalog's weak key as serve does.
	env := map[string]string{"RDP_SECRET": "s3cr3t", "OPS_KEY": weak}
	var stdout, stderr bytes.Buffer
	if code := run(context.Background(), []string{"config", "check", catalogFile}, func(k string) string { return env[k] }, &stdout, &stderr); code == 0 {
		t.Errorf("config check passed a catalog with a weak key:\n%s", stdout.String())
	}
	if want := "key ops is too weak to resist guessing"; !strings.Contains(stderr.String(), want) || strings.Contains(stderr.String(), weak) {
		t.Errorf("config check's error does not say %q, or quotes the key:\n%s", want, stderr.String())
	}
	env["TOKENKEEPER_ALLOW_WEAK_KEYS"] = "true"
	if code := run(context.Background(), []string{"config", "check", catalogFile}, func(k string) string { return env[k] }, io.Discard, io.Discard); code != 0 {
		t.Errorf("config check with TOKENKEEPER_ALLOW_WEAK_KEYS=true: exit %d", code)
	}
}

// TestRightKeyAfterHundredWrongOnes: against a replica running for real, a
// client that has just sent 100 wrong keys (20 at a time) reads the token
// with the right key at once, while its failures were slowed.
func TestRightKeyAfterHundredWrongOnes(t *testing.T) {
	fake := fakerdp.New(fakerdp.Config{})
	rdp := httptest.NewServer(fake)
	t.Cleanup(rdp.Close)
	srv := redistest.NewMini(t)
	cfg := Config{
		Listen:        "127.0.0.1:0",
		Redis:         &redis.Options{Addr: srv.Addr},
		APIKeys:       []string{testReaderKey},
		Instance:      "keys-1",
		RefreshBefore: 15 * time.Minute, LockTTL: time.Second, TokenLifetime: time.Hour, ServeMargin: time.Minute,
		PollInterval: 200 * time.Millisecond, RetryMin: 50 * time.Millisecond, RetryMax: 500 * time.Millisecond, AuthPerMinute: 20,
		RDP: RDPConfig{BaseURL: rdp.URL, Auth: "v2", ClientID: fakerdp.ClientID, ClientSecret: fakerdp.ClientSecret, Timeout: 5 * time.Second},
		// Short delays keep the burst short on a loaded machine; the
		// defaults are the same rule at another scale.
		Security: tokenkeeper.Security{AuthFailureMaxDelay: 200 * time.Millisecond},
	}
	p, err := NewProgram(cfg, quiet, nil)
	if err != nil {
		t.Fatalf("NewProgram: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done; p.Close() })
	testkit.Eventually(t, 10*time.Second, "the replica is ready", func() bool { _, ok := p.keeper.Current(tokenkeeper.Name); return ok })

	url := "http://" + p.Addr() + "/v1/tokens/liveness"
	client := &http.Client{Timeout: 30 * time.Second}
	get := func(key string) (int, error) {
		req, _ := http.NewRequest(http.MethodGet, url, nil)
		req.Header.Set("Authorization", "Bearer "+key)
		resp, err := client.Do(req)
		if err != nil {
			return 0, err
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode, nil
	}
	var mu sync.Mutex
	codes := map[int]int{}
	sem := make(chan struct{}, 20)
	var wg sync.WaitGroup
	for i := range 100 {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			code, err := get(fmt.Sprintf("wrong-key-%03d", i))
			if err != nil {
				t.Errorf("wrong key %d: %v", i, err)
				return
			}
			mu.Lock()
			codes[code]++
			mu.Unlock()
		}()
	}
	wg.Wait()
	if codes[http.StatusUnauthorized]+codes[http.StatusTooManyRequests] != 100 {
		t.Errorf("100 wrong keys answered %v, want 401 or 429 each", codes)
	}
	if code, err := get(testReaderKey); err != nil || code != http.StatusOK {
		t.Fatalf("the right key after 100 wrong ones from the same address: %d, %v; want 200", code, err)
	}
	t.Logf("100 wrong keys: %d answered 401, %d answered 429; the right key: 200", codes[401], codes[429])
}

// TestCatalogReadersNeedNoEnvironmentKeys: the readers of a catalog, keys
// or client certificate identities, are enough for serve: it does not ask
// for TOKENKEEPER_API_KEYS besides. A catalog with admin keys alone still
// needs a reader, and the error says where one may come from.
func TestCatalogReadersNeedNoEnvironmentKeys(t *testing.T) {
	ca := tlstest.NewCA(t, "tokenkeeper test CA")
	dir := t.TempDir()
	certFile, keyFile := ca.Issue(t, tlstest.Options{CommonName: "replica"}).Write(t, dir)
	caFile := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caFile, ca.PEM, 0o600); err != nil {
		t.Fatal(err)
	}
	srv := redistest.NewMini(t)
	const tokens = `tokens:
  - name: liveness
    source: rdp-liveness
    rdp:
      client_id: id
      client_secret: ${RDP_SECRET}
`
	tests := []struct {
		name, rest string
		wantErr    string
	}{
		{"reader key", "keys:\n  - name: app\n    key: ${APP_KEY}\n", ""},
		{"reader identity", "identities:\n  - name: mesh\n    subject: CN=mesh-gateway\n", ""},
		{"reader identity and admin key", "keys:\n  - name: ops\n    role: admin\n    key: ${APP_KEY}\nidentities:\n  - name: mesh\n    subject: spiffe://example.org/ns/prod/sa/backend\n    role: reader\n", ""},
		{"admin key alone", "keys:\n  - name: ops\n    role: admin\n    key: ${APP_KEY}\n", "the catalog (TOKENKEEPER_CONFIG) has no key or identity of role reader"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			file := filepath.Join(dir, fmt.Sprintf("tokens-%d.yaml", i))
			if err := os.WriteFile(file, []byte(tokens+tt.rest), 0o600); err != nil {
				t.Fatal(err)
			}
			env := map[string]string{
				"TOKENKEEPER_CONFIG":        file,
				"TOKENKEEPER_LISTEN":        "127.0.0.1:0",
				"TOKENKEEPER_REDIS_URL":     "redis://" + srv.Addr + "/0",
				"TOKENKEEPER_TLS_CERT":      certFile,
				"TOKENKEEPER_TLS_KEY":       keyFile,
				"TOKENKEEPER_TLS_CLIENT_CA": caFile,
				"RDP_SECRET":                "s3cr3t",
				"APP_KEY":                   testReaderKey,
			}
			cfg, err := parseServe(nil, func(k string) string { return env[k] }, os.ReadFile, io.Discard)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("got %v, want an error saying %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("serve asks for more than the catalog: %v", err)
			}
			p, err := NewProgram(cfg, quiet, nil)
			if err != nil {
				t.Fatalf("NewProgram: %v", err)
			}
			p.Close()
		})
	}
}
