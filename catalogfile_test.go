package tokenkeeper_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tokenkeeper/tokenkeeper"
)

// An embedder loads the catalog file through the root, and the Config it
// makes of it validates; a bad file is refused naming the line and field.
func TestLoadCatalog(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "tokens.yaml")
	write := func(s string) {
		t.Helper()
		if err := os.WriteFile(file, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(`tokens:
  - name: liveness
    source: rdp-liveness
    rdp:
      client_id: app
      client_secret: ${RDP_SECRET}
  - name: partner
    source: oauth2
    required: false
    lifetime: 30m
    refresh_before: 5m
    oauth2:
      token_url: https://idp.example/token
      client_id: me
      client_secret: ${RDP_SECRET}
      audience: https://partner.example
keys:
  - name: mobile
    key: ${MOBILE_KEY}
    tokens: [liveness]
`)
	env := map[string]string{"RDP_SECRET": "s3cr3t-value", "MOBILE_KEY": "mobile-key-5f0c2a9e71b3d8c4"}
	cat, err := tokenkeeper.LoadCatalog(file, tokenkeeper.CatalogOptions{
		LookupEnv: func(k string) (string, bool) { v, ok := env[k]; return v, ok },
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(cat.Tokens) != 2 || cat.Tokens[0].RDP == nil || cat.Tokens[1].OAuth2 == nil || !cat.Tokens[1].Optional {
		t.Fatalf("tokens: %+v", cat.Tokens)
	}
	if got := cat.Tokens[1].OAuth2.EndpointParams.Get("audience"); got != "https://partner.example" {
		t.Errorf("audience: %q", got)
	}
	if len(cat.Keys) != 1 || cat.Keys[0].Value != env["MOBILE_KEY"] {
		t.Errorf("keys: %+v", cat.Keys)
	}
	cfg := tokenkeeper.Config{Tokens: cat.Tokens, HTTP: tokenkeeper.HTTPConfig{Keys: cat.Keys}}
	if err := cfg.Validate(); err != nil {
		t.Errorf("the catalog's Config: %v", err)
	}

	write(strings.Replace(`tokens:
  - name: Liveness
    source: rdp-liveness
    rdp: {client_id: app, client_secret: SECRET}
`, "SECRET", "in-clear-0a8b", 1))
	_, err = tokenkeeper.LoadCatalog(file, tokenkeeper.CatalogOptions{})
	if err == nil || !strings.Contains(err.Error(), "tokens.yaml:2: tokens[0].name") || !strings.Contains(err.Error(), "tokens[0].rdp.client_secret") {
		t.Errorf("a bad file: %v", err)
	}
	if err != nil && strings.Contains(err.Error(), "in-clear-0a8b") {
		t.Errorf("the error repeats the secret: %v", err)
	}
	if _, err := tokenkeeper.LoadCatalog(filepath.Join(dir, "absent.yaml"), tokenkeeper.CatalogOptions{}); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("an absent file: %v", err)
	}
}
