package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tokenkeeper/tokenkeeper/internal/fakerdp"
	"github.com/tokenkeeper/tokenkeeper/internal/redistest"
	"github.com/tokenkeeper/tokenkeeper/internal/testkit"
)

// Secrets of the catalog tests: none may appear in any output.
const (
	mobileKey     = "mobile-key-5f0c2a9e7d1b3c8f"
	opsKey        = "ops-key-71b3d8c4a9e2f6b0d5"
	partnerSecret = "partner-secret-e4a1"
)

// writeCatalog writes a catalog of two tokens from the fake upstream at
// rdpURL: liveness (RDP, its secret in $RDP_SECRET) and partner (generic
// OAuth2, its secret in a file), a reader key ($MOBILE_KEY) limited to
// liveness and an admin key ($OPS_KEY).
func writeCatalog(t *testing.T, rdpURL string) string {
	t.Helper()
	return writeCatalogFile(t, rdpURL, "RDP_SECRET", partnerSecret, `keys:
  - name: mobile
    key: ${MOBILE_KEY}
    tokens: [liveness]
  - name: ops
    role: admin
    key: ${OPS_KEY}
`)
}

// writeCatalogFile writes the catalog of liveness and partner from the fake
// upstream at rdpURL, the RDP secret in $rdpSecretVar, partner's in a
// file, followed by keys (YAML).
func writeCatalogFile(t *testing.T, rdpURL, rdpSecretVar, partnerSecret, keys string) string {
	t.Helper()
	dir := t.TempDir()
	secretFile := filepath.Join(dir, "partner-secret")
	if err := os.WriteFile(secretFile, []byte(partnerSecret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "tokens.yaml")
	yaml := `tokens:
  - name: liveness
    source: rdp-liveness
    lifetime: 20s
    serve_margin: 2s
    refresh_before: 5s
    timeout: 1s
    rdp:
      base_url: ` + rdpURL + `
      client_id: ` + fakerdp.ClientID + `
      client_secret: ${` + rdpSecretVar + `}
  - name: partner
    source: oauth2
    required: false
    lifetime: 30s
    serve_margin: 2s
    refresh_before: 5s
    timeout: 1s
    oauth2:
      token_url: ` + rdpURL + fakerdp.OAuth2TokenPath + `
      client_id: ` + fakerdp.ClientID + `
      client_secret_file: ` + secretFile + `
      scopes: [read:partner]
      audience: https://partner.example
` + keys
	if err := os.WriteFile(file, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	return file
}

func TestServeKeepsACatalog(t *testing.T) {
	fake := fakerdp.New(fakerdp.Config{OAuth2ClientSecret: partnerSecret})
	rdp := httptest.NewServer(fake)
	t.Cleanup(rdp.Close)
	srv := redistest.NewMini(t)
	env := map[string]string{
		"TOKENKEEPER_CONFIG":    writeCatalog(t, rdp.URL),
		"TOKENKEEPER_REDIS_URL": "redis://" + srv.Addr + "/0",
		"TOKENKEEPER_LISTEN":    "127.0.0.1:0",
		"TOKENKEEPER_LOCK_TTL":  "1s",
		"RDP_SECRET":            fakerdp.ClientSecret,
		"MOBILE_KEY":            mobileKey,
		"OPS_KEY":               opsKey,
	}
	cfg, err := parseServe(nil, func(k string) string { return env[k] }, os.ReadFile, io.Discard)
	if err != nil {
		t.Fatalf("parseServe: %v", err)
	}
	p, err := NewProgram(cfg, quiet, nil)
	if err != nil {
		t.Fatalf("NewProgram: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done; p.Close() })
	base := "http://" + p.Addr()

	get := func(path, key string) (int, string) {
		req, _ := http.NewRequest(http.MethodGet, base+path, nil)
		req.Header.Set("Authorization", "Bearer "+key)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	testkit.Eventually(t, 10*time.Second, "both tokens served", func() bool {
		a, _ := get("/v1/tokens/liveness", opsKey)
		b, _ := get("/v1/tokens/partner", opsKey)
		return a == 200 && b == 200
	})
	if code, _ := get("/v1/tokens/liveness", mobileKey); code != 200 {
		t.Errorf("mobile reading liveness: %d", code)
	}
	if code, _ := get("/v1/tokens/partner", mobileKey); code != 404 {
		t.Errorf("mobile reading partner, outside its scope: %d, want 404", code)
	}
	code, body := get("/v1/tokens", mobileKey)
	var list struct{ Tokens []struct{ Name string } }
	if err := json.Unmarshal([]byte(body), &list); code != 200 || err != nil || len(list.Tokens) != 1 || list.Tokens[0].Name != "liveness" {
		t.Errorf("mobile's list: %d %s, want liveness alone", code, body)
	}
	st := fake.Stats()
	if st.OAuth2Calls < 1 || st.LivenessCalls < 1 {
		t.Errorf("fake upstream stats %+v: want a liveness and an OAuth2 call", st)
	}
	_, status := get("/v1/status", opsKey)
	for _, s := range []string{partnerSecret, mobileKey, opsKey, fakerdp.ClientSecret} {
		if strings.Contains(status, s) {
			t.Errorf("the status shows a secret")
		}
	}
	if !strings.Contains(status, `"build":{"version":"`+buildVersion()+`"`) || !strings.Contains(status, `"go_version":"go`) {
		t.Errorf("the status does not name the build: %s", status)
	}
	if !strings.Contains(status, `"name":"partner"`) {
		t.Errorf("the status does not show the partner token: %s", status)
	}
}

func TestConfigCheck(t *testing.T) {
	file := writeCatalog(t, "https://upstream.example")
	env := map[string]string{"RDP_SECRET": "rdp-secret-9d2f", "MOBILE_KEY": mobileKey, "OPS_KEY": opsKey}
	getenv := func(k string) string { return env[k] }
	var stdout, stderr bytes.Buffer
	if code := run(context.Background(), []string{"config", "check", file}, getenv, &stdout, &stderr); code != 0 {
		t.Fatalf("config check of a valid file: exit %d: %s", code, stderr.String())
	}
	out := stdout.String()
	for _, want := range []string{"liveness", "partner", "rdp-liveness", "oauth2", "mobile", "ops"} {
		if !strings.Contains(out, want) {
			t.Errorf("config check output lacks %q:\n%s", want, out)
		}
	}
	for _, secret := range []string{"rdp-secret-9d2f", partnerSecret, mobileKey, opsKey} {
		if strings.Contains(out, secret) {
			t.Errorf("config check printed a secret:\n%s", out)
		}
	}

	// The same file with a secret in clear and an unknown field.
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	data, _ := os.ReadFile(file)
	data = bytes.Replace(data, []byte("${RDP_SECRET}"), []byte("in-clear-secret-0a8b"), 1)
	data = bytes.Replace(data, []byte("    timeout: 1s\n    rdp:"), []byte("    timeout: 1s\n    colour: blue\n    rdp:"), 1)
	if err := os.WriteFile(bad, data, 0o600); err != nil {
		t.Fatal(err)
	}
	stdout.Reset()
	stderr.Reset()
	if code := run(context.Background(), []string{"config", "check", bad}, getenv, &stdout, &stderr); code != 1 {
		t.Fatalf("config check of a bad file: exit %d, want 1", code)
	}
	msg := stderr.String()
	for _, want := range []string{"bad.yaml:8: tokens[0].colour", "bad.yaml:12: tokens[0].rdp.client_secret", "client_secret_file"} {
		if !strings.Contains(msg, want) {
			t.Errorf("the errors do not name %q:\n%s", want, msg)
		}
	}
	if strings.Contains(msg, "in-clear-secret-0a8b") {
		t.Errorf("the errors repeat the secret written in clear:\n%s", msg)
	}
}

// config check --offline checks a file whose secrets are absent (CI):
// every ${VAR} and *_file is accepted unresolved and named as such; every
// other rule still holds, and without --offline the same file is refused.
func TestConfigCheckOffline(t *testing.T) {
	file := writeCatalog(t, "https://upstream.example")
	// The partner secret's file is gone: offline, nothing is read.
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	data = bytes.Replace(data, []byte(filepath.Join(filepath.Dir(file), "partner-secret")), []byte("/run/secrets/absent"), 1)
	if err := os.WriteFile(file, data, 0o600); err != nil {
		t.Fatal(err)
	}
	noEnv := func(string) string { return "" }
	check := func(file string, args ...string) (int, string, string) {
		var stdout, stderr bytes.Buffer
		code := run(context.Background(), append(append([]string{"config", "check"}, args...), file), noEnv, &stdout, &stderr)
		return code, stdout.String(), stderr.String()
	}
	code, out, errs := check(file, "--offline")
	if code != 0 {
		t.Fatalf("config check --offline: exit %d: %s", code, errs)
	}
	last := out[strings.LastIndex(strings.TrimSuffix(out, "\n"), "\n")+1:]
	for _, want := range []string{"is valid offline: 2 tokens, 2 keys", "not resolved", "$RDP_SECRET", "file /run/secrets/absent", "$MOBILE_KEY", "$OPS_KEY"} {
		if !strings.Contains(last, want) {
			t.Errorf("the last line lacks %q: %s", want, last)
		}
	}
	if code, _, errs := check(file); code != 1 || !strings.Contains(errs, "RDP_SECRET is not set") || !strings.Contains(errs, "cannot read /run/secrets/absent") {
		t.Errorf("config check without --offline: exit %d, want 1 naming the unset variable and the missing file: %s", code, errs)
	}

	// Offline still refuses what is wrong with the file itself.
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	data = bytes.Replace(data, []byte("${RDP_SECRET}"), []byte("in-clear-secret-0a8b"), 1)
	data = bytes.Replace(data, []byte("tokens: [liveness]"), []byte("tokens: [nowhere]"), 1)
	if err := os.WriteFile(bad, data, 0o600); err != nil {
		t.Fatal(err)
	}
	code, _, errs = check(bad, "--offline")
	if code != 1 || !strings.Contains(errs, "tokens[0].rdp.client_secret") || !strings.Contains(errs, `"nowhere" names no token`) {
		t.Errorf("config check --offline of a bad file: exit %d, want 1 naming both problems: %s", code, errs)
	}
	if strings.Contains(errs, "in-clear-secret-0a8b") {
		t.Errorf("the errors repeat the secret written in clear: %s", errs)
	}
}

// The repository's example catalogs pass config check --offline, as CI
// runs it.
func TestExampleCatalogsCheckOffline(t *testing.T) {
	files, err := filepath.Glob("../../deploy/catalog/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no example catalog found (%v)", err)
	}
	for _, f := range files {
		var stdout, stderr bytes.Buffer
		if code := run(context.Background(), []string{"config", "check", "--offline", f}, func(string) string { return "" }, &stdout, &stderr); code != 0 {
			t.Errorf("%s: exit %d: %s", f, code, stderr.String())
		}
	}
}
