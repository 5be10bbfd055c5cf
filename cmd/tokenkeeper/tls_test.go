package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokenkeeper/tokenkeeper"
	"github.com/tokenkeeper/tokenkeeper/internal/fakerdp"
	"github.com/tokenkeeper/tokenkeeper/internal/redistest"
	"github.com/tokenkeeper/tokenkeeper/internal/testkit"
	"github.com/tokenkeeper/tokenkeeper/internal/tlstest"
)

// A replica serving HTTPS: a client certificate of an identity reads the
// token without a key, a key still works, plain HTTP does not, the
// healthcheck speaks TLS, and the audit file names who read and how the
// replica was configured, never a key or the token.
func TestServeTLSWithIdentitiesAndAudit(t *testing.T) {
	ca := tlstest.NewCA(t, "tokenkeeper test CA")
	dir := t.TempDir()
	certFile, keyFile := ca.Issue(t, tlstest.Options{CommonName: "replica"}).Write(t, dir)
	caFile := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caFile, ca.PEM, 0o600); err != nil {
		t.Fatal(err)
	}
	auditFile := filepath.Join(dir, "audit.log")

	srv := redistest.NewMini(t)
	fake := fakerdp.New(fakerdp.Config{})
	rdp := httptest.NewServer(fake)
	t.Cleanup(rdp.Close)
	env := map[string]string{
		"TOKENKEEPER_LISTEN":         "127.0.0.1:0",
		"TOKENKEEPER_REDIS_URL":      "redis://" + srv.Addr + "/0",
		"TOKENKEEPER_API_KEYS":       "reader-key-0f1e2d3c4b5a69788796a5b4",
		"TOKENKEEPER_TLS_CERT":       certFile,
		"TOKENKEEPER_TLS_KEY":        keyFile,
		"TOKENKEEPER_TLS_CLIENT_CA":  caFile,
		"TOKENKEEPER_TLS_IDENTITIES": "CN=mesh-gateway;name=mesh;tokens=liveness",
		"TOKENKEEPER_AUDIT_LOG":      auditFile,
		"RDP_BASE_URL":               rdp.URL,
		"RDP_CLIENT_ID":              fakerdp.ClientID,
		"RDP_CLIENT_SECRET":          fakerdp.ClientSecret,
	}
	cfg, err := parseServe(nil, func(k string) string { return env[k] }, os.ReadFile, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Redis = &redis.Options{Addr: srv.Addr}
	p, err := NewProgram(cfg, quiet, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
		p.Close()
	})
	testkit.Eventually(t, 10*time.Second, "ready", func() bool { _, ok := p.keeper.Current(tokenkeeper.Name); return ok })
	base := "https://" + p.Addr()

	mesh := ca.Issue(t, tlstest.Options{CommonName: "mesh-gateway", Client: true})
	get := func(cert *tls.Certificate, key string) (int, string) {
		t.Helper()
		c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.Pool()}}}
		if cert != nil {
			c.Transport.(*http.Transport).TLSClientConfig.Certificates = []tls.Certificate{*cert}
		}
		req, _ := http.NewRequest(http.MethodGet, base+"/v1/tokens/liveness", nil)
		if key != "" {
			req.Header.Set("Authorization", "Bearer "+key)
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, _ := get(&mesh.TLS, ""); code != http.StatusOK {
		t.Errorf("client certificate of mesh-gateway: %d, want 200", code)
	}
	if code, _ := get(nil, "reader-key-0f1e2d3c4b5a69788796a5b4"); code != http.StatusOK {
		t.Errorf("reader key over TLS: %d, want 200", code)
	}
	if code, _ := get(nil, ""); code != http.StatusUnauthorized {
		t.Errorf("neither: %d, want 401", code)
	}
	if resp, err := http.Get("http://" + p.Addr() + "/healthz"); err == nil {
		if resp.StatusCode < 400 {
			t.Errorf("plain HTTP to the TLS port answered %s", resp.Status)
		}
		resp.Body.Close()
	}

	var stderr bytes.Buffer
	hcEnv := func(k string) string {
		switch k {
		case "TOKENKEEPER_LISTEN":
			return p.Addr()
		case "TOKENKEEPER_TLS_CERT":
			return certFile
		}
		return ""
	}
	if code := run(context.Background(), []string{"healthcheck"}, hcEnv, io.Discard, &stderr); code != 0 {
		t.Errorf("healthcheck over TLS, pinned to the served file: exit %d (%s)", code, stderr.String())
	}
	if code := run(context.Background(), []string{"healthcheck", "--ca", caFile, "--url", base + "/readyz"}, hcEnv, io.Discard, &stderr); code != 0 {
		t.Errorf("healthcheck over TLS with --ca: exit %d (%s)", code, stderr.String())
	}
	other := filepath.Join(dir, "other.pem")
	if err := os.WriteFile(other, ca.Issue(t, tlstest.Options{CommonName: "other"}).CertPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	pinnedOther := func(k string) string {
		if k == "TOKENKEEPER_TLS_CERT" {
			return other
		}
		return hcEnv(k)
	}
	if code := run(context.Background(), []string{"healthcheck"}, pinnedOther, io.Discard, &stderr); code == 0 {
		t.Error("healthcheck accepted a server that does not serve TOKENKEEPER_TLS_CERT")
	}

	cancel()
	<-done
	done <- nil
	audit, err := os.ReadFile(auditFile)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"msg":"configuration"`, `"tls":true`, `"client_certificates":true`, `mesh=CN=mesh-gateway:reader:liveness`,
		`"msg":"token handed out","log":"audit"`, `"caller":"mesh"`, `"caller":"TOKENKEEPER_API_KEYS[0]"`} {
		if !bytes.Contains(audit, []byte(want)) {
			t.Errorf("audit trail lacks %s:\n%s", want, audit)
		}
	}
	if tok, ok := p.keeper.Current(tokenkeeper.Name); ok && bytes.Contains(audit, []byte(tok.Value)) {
		t.Error("the audit trail holds the token")
	}
	for _, secret := range []string{"reader-key-0f1e2d3c4b5a69788796a5b4", fakerdp.ClientSecret} {
		if bytes.Contains(audit, []byte(secret)) {
			t.Errorf("the audit trail holds the secret %q", secret)
		}
	}
}

func TestSecuritySettings(t *testing.T) {
	ca := tlstest.NewCA(t, "tokenkeeper test CA")
	dir := t.TempDir()
	certFile, keyFile := ca.Issue(t, tlstest.Options{CommonName: "replica"}).Write(t, dir)
	caFile := filepath.Join(dir, "ca.pem")
	garbage := filepath.Join(dir, "garbage.pem")
	for f, b := range map[string][]byte{caFile: ca.PEM, garbage: []byte("no PEM here")} {
		if err := os.WriteFile(f, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	base := map[string]string{
		"TOKENKEEPER_REDIS_URL": "redis://localhost:6379/0",
		"TOKENKEEPER_API_KEYS":  testReaderKey,
		"RDP_CLIENT_ID":         "id",
		"RDP_CLIENT_SECRET":     "s3cr3t",
	}
	tlsOn := map[string]string{"TOKENKEEPER_TLS_CERT": certFile, "TOKENKEEPER_TLS_KEY": keyFile, "TOKENKEEPER_TLS_CLIENT_CA": caFile}
	for _, tc := range []struct {
		name    string
		env     []map[string]string
		wantErr string
		check   func(t *testing.T, c Config)
	}{
		{name: "defaults", check: func(t *testing.T, c Config) {
			s := c.Security
			if c.TLS != nil || s.AuthFailures != 10 || s.AuthFailureWindow != time.Minute || s.AuditReadsPerMinute != 60 ||
				s.FleetRateLimit != 0 || c.AuditLog != "" || len(s.TrustedProxies) != 0 {
				t.Errorf("got TLS %v, security %+v, audit %q", c.TLS, s, c.AuditLog)
			}
		}},
		{name: "all set", env: []map[string]string{tlsOn, {
			"TOKENKEEPER_TLS_IDENTITIES":         "CN=mesh;name=mesh;tokens=liveness, spiffe://example.org/ns/a/sa/b;role=admin",
			"TOKENKEEPER_TRUSTED_PROXIES":        "10.0.0.0/8, 192.0.2.7",
			"TOKENKEEPER_AUTH_FAILURES":          "0",
			"TOKENKEEPER_FLEET_RATE_LIMIT":       "500",
			"TOKENKEEPER_AUDIT_LOG":              "stderr",
			"TOKENKEEPER_AUDIT_READS_PER_MINUTE": "5",
		}}, check: func(t *testing.T, c Config) {
			s := c.Security
			if c.TLS == nil || c.TLS.ClientCAs == nil || len(s.Identities) != 2 || s.Identities[0].Name != "mesh" ||
				s.Identities[1].Role != tokenkeeper.RoleAdmin || len(s.TrustedProxies) != 2 || s.TrustedProxies[1].String() != "192.0.2.7/32" ||
				s.AuthFailures != -1 || s.FleetRateLimit != 500 || c.AuditLog != "stderr" || s.AuditReadsPerMinute != 5 {
				t.Errorf("got TLS %+v, security %+v", c.TLS, s)
			}
		}},
		{name: "certificate without key", env: []map[string]string{{"TOKENKEEPER_TLS_CERT": certFile}}, wantErr: "TOKENKEEPER_TLS_CERT and TOKENKEEPER_TLS_KEY go together"},
		{name: "bad certificate file", env: []map[string]string{{"TOKENKEEPER_TLS_CERT": garbage, "TOKENKEEPER_TLS_KEY": keyFile}}, wantErr: "TOKENKEEPER_TLS_CERT/KEY: " + garbage},
		{name: "missing key file", env: []map[string]string{{"TOKENKEEPER_TLS_CERT": certFile, "TOKENKEEPER_TLS_KEY": filepath.Join(dir, "absent")}}, wantErr: "absent"},
		{name: "client CA without TLS", env: []map[string]string{{"TOKENKEEPER_TLS_CLIENT_CA": caFile}}, wantErr: "TOKENKEEPER_TLS_CLIENT_CA needs TOKENKEEPER_TLS_CERT"},
		{name: "client CA not PEM", env: []map[string]string{tlsOn, {"TOKENKEEPER_TLS_CLIENT_CA": garbage}}, wantErr: "holds no PEM certificate"},
		{name: "identities without client CA", env: []map[string]string{{"TOKENKEEPER_TLS_IDENTITIES": "CN=x"}}, wantErr: "need TOKENKEEPER_TLS_CLIENT_CA"},
		{name: "identity field unknown", env: []map[string]string{tlsOn, {"TOKENKEEPER_TLS_IDENTITIES": "CN=x;colour=red"}}, wantErr: `unknown field "colour"`},
		{name: "identity subject bad", env: []map[string]string{tlsOn, {"TOKENKEEPER_TLS_IDENTITIES": "mesh"}}, wantErr: "neither CN=<common name> nor an absolute URI"},
		{name: "proxy not a CIDR", env: []map[string]string{{"TOKENKEEPER_TRUSTED_PROXIES": "10.0.0.0/33"}}, wantErr: "TOKENKEEPER_TRUSTED_PROXIES: item 1"},
		{name: "negative failures", env: []map[string]string{{"TOKENKEEPER_AUTH_FAILURES": "-1"}}, wantErr: "TOKENKEEPER_AUTH_FAILURES: -1"},
		{name: "fleet limit not a number", env: []map[string]string{{"TOKENKEEPER_FLEET_RATE_LIMIT": "lots"}}, wantErr: "TOKENKEEPER_FLEET_RATE_LIMIT"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := map[string]string{}
			for _, m := range append([]map[string]string{base}, tc.env...) {
				for k, v := range m {
					env[k] = v
				}
			}
			c, err := parseServe(nil, func(k string) string { return env[k] }, os.ReadFile, io.Discard)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one with %q", err, tc.wantErr)
				}
				if strings.Contains(err.Error(), "PRIVATE KEY") {
					t.Errorf("the error quotes a key: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, c)
		})
	}
}
