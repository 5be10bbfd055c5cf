package catalog_test

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tokenkeeper/tokenkeeper/internal/catalog"
)

// validFile is the format's example, with one more token and key.
const validFile = `# The fleet's tokens.
tokens:
  - name: liveness
    source: rdp-liveness
    required: true
    serve_margin: 1m
    refresh_before: 15m
    lifetime: 60m
    timeout: 10s
    auth_per_minute: 20
    rdp:
      base_url: https://api.refinitiv.com
      auth: v2
      client_id: ${RDP_CLIENT_ID}
      client_secret_file: /run/secrets/rdp
      username: svc-user
      password: ${RDP_PASSWORD}
      scope: trapi
      liveness_path: /verification/v1/liveness/token
      liveness_method: POST
  - name: billing-api
    source: oauth2
    lifetime: 24h
    oauth2:
      token_url: https://tenant.example.com/oauth/token
      client_id: my-client
      client_secret: ${BILLING_SECRET}
      scopes: [read:billing, write:billing]
      audience: https://billing.example.com
      resource: https://billing.example.com
      params: {foo: bar}
      auth_style: header
  - name: legacy-1
    source: rdp-liveness
    required: false
    serve_margin: 2m
    refresh_before: 5m
    lifetime: 30m
    timeout: 90s
    auth_per_minute: 0x10
    rdp:
      auth: v1
      client_id: app-$literal
      username: svc-user
      password_file: /run/secrets/ops
      liveness_method: GET
keys:
  - name: mobile-backend
    role: reader
    key_file: /run/secrets/mobile_key
    tokens: [liveness]
  - name: ops
    role: admin
    key: ${OPS_KEY}
  - name: scraper
    role: metrics
    key_file: /run/secrets/scraper
    tokens: ["*"]
  - name: billing
    key_file: /run/secrets/billing
`

func wantCatalog() *catalog.Catalog {
	return &catalog.Catalog{
		Tokens: []catalog.Token{{
			Name: "liveness", Source: catalog.SourceRDP, Mode: catalog.ModeShared, Required: true,
			ServeMargin: time.Minute, RefreshBefore: 15 * time.Minute, Lifetime: time.Hour,
			Timeout: 10 * time.Second, AuthPerMinute: 20, Line: 3,
			RDP: &catalog.RDP{
				BaseURL: "https://api.refinitiv.com", Auth: "v2", ClientID: "rdp-app-key",
				ClientSecret: rdpSecret, Username: "svc-user", Password: rdpPassword, Scope: "trapi",
				LivenessPath: "/verification/v1/liveness/token", LivenessMethod: "POST",
			},
		}, {
			Name: "billing-api", Source: catalog.SourceOAuth2, Mode: catalog.ModeShared, Required: true,
			ServeMargin: time.Minute, RefreshBefore: 15 * time.Minute, Lifetime: 24 * time.Hour,
			Timeout: 10 * time.Second, AuthPerMinute: 20, Line: 21,
			OAuth2: &catalog.OAuth2{
				TokenURL: "https://tenant.example.com/oauth/token", ClientID: "my-client",
				ClientSecret: billingSecret, Scopes: []string{"read:billing", "write:billing"},
				Audience: "https://billing.example.com", Resource: "https://billing.example.com",
				Params: map[string]string{"foo": "bar"}, AuthStyle: "header",
			},
		}, {
			Name: "legacy-1", Source: catalog.SourceRDP, Mode: catalog.ModeShared, Required: false,
			ServeMargin: 2 * time.Minute, RefreshBefore: 5 * time.Minute, Lifetime: 30 * time.Minute,
			Timeout: 90 * time.Second, AuthPerMinute: 16, Line: 33,
			RDP: &catalog.RDP{
				BaseURL: "https://api.refinitiv.com", Auth: "v1", ClientID: "app-$literal",
				Username: "svc-user", Password: opsKey, Scope: "trapi",
				LivenessPath: "/verification/v1/liveness/token", LivenessMethod: "GET",
			},
		}},
		Keys: []catalog.Key{
			{Name: "mobile-backend", Role: catalog.RoleReader, Value: mobileKey, Tokens: []string{"liveness"}, Line: 48},
			{Name: "ops", Role: catalog.RoleAdmin, Value: opsKey, Line: 52},
			{Name: "scraper", Role: catalog.RoleMetrics, Value: scraperKey, Line: 55},
			{Name: "billing", Role: catalog.RoleReader, Value: billingKey, Line: 59},
		},
	}
}

// sameCatalog compares the exported fields of two catalogs.
func sameCatalog(t *testing.T, got, want *catalog.Catalog) {
	t.Helper()
	g, err := json.MarshalIndent(got, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	w, _ := json.MarshalIndent(want, "", "  ")
	if string(g) != string(w) {
		t.Errorf("catalog:\n%s\nwant:\n%s", g, w)
	}
}

func TestParseValid(t *testing.T) {
	c, err := catalog.Parse([]byte(validFile), opts)
	if err != nil {
		t.Fatal(err)
	}
	sameCatalog(t, c, wantCatalog())
	if tok, ok := c.Token("billing-api"); !ok || tok.OAuth2 == nil || tok.Line != 21 {
		t.Errorf("Token(billing-api) = %+v, %v", tok, ok)
	}
	if _, ok := c.Token("nope"); ok {
		t.Error("Token(nope) found")
	}
}

func TestParseDefaults(t *testing.T) {
	c, err := catalog.Parse([]byte(`
tokens:
  - name: a
    source: rdp-liveness
    rdp:
      client_id: id
      client_secret: ${SECRET}
  - name: b
    source: oauth2
    oauth2: {token_url: "${IDP_URL}", client_id: c, client_secret_file: /run/secrets/rdp}
`), opts)
	if err != nil {
		t.Fatal(err)
	}
	a, b := c.Tokens[0], c.Tokens[1]
	if !a.Required || a.ServeMargin != time.Minute || a.RefreshBefore != 15*time.Minute ||
		a.Lifetime != time.Hour || a.Timeout != 10*time.Second || a.AuthPerMinute != 20 {
		t.Errorf("token defaults: %+v", a)
	}
	want := catalog.RDP{BaseURL: "https://api.refinitiv.com", Auth: "v2", ClientID: "id",
		ClientSecret: billingSecret, Scope: "trapi", LivenessPath: "/verification/v1/liveness/token",
		LivenessMethod: "POST"}
	if g, w := a.RDP.String(), want.String(); g != strings.Replace(w, "(set)", "(from $SECRET)", 1) {
		t.Errorf("rdp = %s, want %s", g, w)
	}
	if o := b.OAuth2; o.AuthStyle != "auto" || o.TokenURL != "https://idp.example.com/token" ||
		o.ClientSecret != rdpSecret || o.Scopes != nil || o.Params != nil {
		t.Errorf("oauth2 = %#v", *o)
	}
	if c.Keys != nil {
		t.Errorf("keys = %v", c.Keys)
	}
}

func TestParseAliases(t *testing.T) {
	c, err := catalog.Parse([]byte(`
tokens:
  - name: a
    source: oauth2
    timeout: &t 20s
    serve_margin: 1m
    oauth2: &idp
      token_url: https://idp.example.com/token
      client_id: c
      client_secret: ${SECRET}
      scopes: &s [x, y]
  - name: b
    source: oauth2
    timeout: *t
    oauth2: *idp
keys:
  - {name: k, key: "${SECRET2}", tokens: [a, b]}
`), opts)
	if err != nil {
		t.Fatal(err)
	}
	if b := c.Tokens[1]; b.Timeout != 20*time.Second || len(b.OAuth2.Scopes) != 2 {
		t.Errorf("b = %+v", b)
	}
}

func TestErrorString(t *testing.T) {
	for _, c := range []struct {
		e    catalog.Error
		want string
	}{
		{catalog.Error{File: "c.yaml", Line: 3, Field: "tokens[0].name", Problem: "bad"}, "c.yaml:3: tokens[0].name: bad"},
		{catalog.Error{Line: 3, Field: "tokens", Problem: "bad"}, "line 3: tokens: bad"},
		{catalog.Error{File: "c.yaml", Problem: "bad"}, "c.yaml: bad"},
		{catalog.Error{Problem: "bad"}, "bad"},
	} {
		if got := c.e.Error(); got != c.want {
			t.Errorf("Error() = %q, want %q", got, c.want)
		}
	}
	_, err := catalog.Parse([]byte("tokens: []\n"), catalog.Options{File: "cat.yaml"})
	if err == nil || err.Error() != "cat.yaml:1: tokens: lists no token: a catalog keeps at least one" {
		t.Errorf("err = %v", err)
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	secret := filepath.Join(dir, "secret")
	if err := os.WriteFile(secret, []byte("load-SECRET-1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("CATALOG_TEST_KEY", "load-SECRET-2")
	path := filepath.Join(dir, "catalog.yaml")
	file := "tokens:\n  - name: a\n    source: oauth2\n    oauth2:\n" +
		"      token_url: https://idp.example.com/t\n      client_id: c\n" +
		"      client_secret_file: " + secret + "\nkeys:\n  - name: k\n    key: ${CATALOG_TEST_KEY}\n"
	if err := os.WriteFile(path, []byte(file), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := catalog.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if c.Tokens[0].OAuth2.ClientSecret != "load-SECRET-1" || c.Keys[0].Value != "load-SECRET-2" {
		t.Errorf("secrets not resolved: %+v", c)
	}

	_, err = catalog.Load(filepath.Join(dir, "missing.yaml"))
	var ce *catalog.Error
	if !errors.As(err, &ce) || ce.File == "" || !strings.Contains(ce.Problem, "cannot read") {
		t.Errorf("Load(missing) = %v", err)
	}
	os.WriteFile(path, []byte("tokens:\n  - name: a\n    source: nope\n"), 0o600)
	_, err = catalog.Load(path)
	if err == nil || !strings.HasPrefix(err.Error(), path+":3: tokens[0].source: ") {
		t.Errorf("Load(invalid) = %v", err)
	}
}

func TestValidName(t *testing.T) {
	for s, want := range map[string]bool{
		"a": true, "0": true, "billing-api": true, "a-": true, strings.Repeat("a", 40): true,
		"": false, "-a": false, "A": false, "a_b": false, "a.b": false, strings.Repeat("a", 41): false,
		"é": false, "a b": false,
	} {
		if got := catalog.ValidName(s); got != want {
			t.Errorf("ValidName(%q) = %v", s, got)
		}
	}
}

// An Offline parse looks nothing up: references stay as written and are
// listed once each, in the file's order; secrets stay empty.
func TestParseOffline(t *testing.T) {
	c, err := catalog.Parse([]byte(validFile), catalog.Options{
		Offline:   true,
		LookupEnv: func(name string) (string, bool) { t.Errorf("looked up %s", name); return "", false },
		ReadFile:  func(path string) ([]byte, error) { t.Errorf("read %s", path); return nil, os.ErrNotExist },
	})
	if err != nil {
		t.Fatal(err)
	}
	live, _ := c.Token("liveness")
	if got, want := live.RDP.ClientID, "${RDP_CLIENT_ID}"; got != want {
		t.Errorf("client_id: got %q, want the reference %q", got, want)
	}
	if live.RDP.ClientSecret != "" || live.RDP.Password != "" {
		t.Errorf("secrets resolved offline: %q, %q", live.RDP.ClientSecret, live.RDP.Password)
	}
	if got := strings.Join(c.Unresolved, ","); !strings.HasPrefix(got, "$RDP_CLIENT_ID,file /run/secrets/rdp,$RDP_PASSWORD,$BILLING_SECRET,") {
		t.Errorf("Unresolved: %v", c.Unresolved)
	}
	c, err = catalog.Parse([]byte(validFile), opts)
	if err != nil {
		t.Fatal(err)
	}
	if c.Unresolved != nil {
		t.Errorf("online parse: Unresolved %v, want none", c.Unresolved)
	}
}
