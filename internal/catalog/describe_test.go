package catalog_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"github.com/tokenkeeper/tokenkeeper/internal/catalog"
)

func TestDescribe(t *testing.T) {
	c, err := catalog.Parse([]byte(validFile), opts)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := c.Describe(&out); err != nil {
		t.Fatal(err)
	}
	s := out.String()
	t.Logf("\n%s", s)
	checkNoSecret(t, s)
	for _, want := range []string{
		"liveness", "rdp-liveness", "https://api.refinitiv.com", "v2", "trapi",
		"billing-api", "oauth2", "https://tenant.example.com/oauth/token", "header",
		"read:billing write:billing", "https://billing.example.com", "24h", "15m", "10s", "1h",
		"legacy-1", "30m", "1m30s", "16", "no",
		"(from file /run/secrets/rdp)", "(from $RDP_PASSWORD)", "(from $BILLING_SECRET)", "(from file /run/secrets/ops)",
		"mobile-backend", "reader", "(from file /run/secrets/mobile_key)",
		"ops", "admin", "(from $OPS_KEY)", "scraper", "metrics",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("Describe lacks %q", want)
		}
	}
}

func TestDescribeSameWithOtherSecrets(t *testing.T) {
	// Describe depends on where secrets come from, not on what they are.
	describe := func(o catalog.Options) string {
		c, err := catalog.Parse([]byte(validFile), o)
		if err != nil {
			t.Fatal(err)
		}
		var out bytes.Buffer
		c.Describe(&out)
		return out.String()
	}
	longer := catalog.Options{
		LookupEnv: func(n string) (string, bool) {
			v, ok := lookupEnv(n)
			if strings.Contains(v, "SECRET") {
				v += strings.Repeat("x", 100)
			}
			return v, ok
		},
		ReadFile: func(p string) ([]byte, error) {
			b, err := readFile(p)
			return append(b, strings.Repeat("y", 100)...), err
		},
	}
	if a, b := describe(opts), describe(longer); a != b {
		t.Errorf("Describe changes with the secrets' values:\n%s\n%s", a, b)
	}
}

func TestStringsHideSecrets(t *testing.T) {
	c, err := catalog.Parse([]byte(validFile), opts)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%d"} {
		fmt.Fprintf(&out, verb+"\n", *c)
		fmt.Fprintf(&out, verb+"\n", c.Tokens)
		fmt.Fprintf(&out, verb+"\n", c.Keys[0])
		fmt.Fprintf(&out, verb+"\n", c.Tokens[0].RDP)
	}
	fmt.Fprintln(&out, c.Tokens[1].OAuth2.String(), c.Keys[1].String(), c.Tokens[0].RDP.String())
	slog.New(slog.NewJSONHandler(&out, nil)).Info("catalog", "key", c.Keys[1], "rdp", c.Tokens[0].RDP, "oauth2", c.Tokens[1].OAuth2)
	slog.New(slog.NewTextHandler(&out, nil)).Info("catalog", "key", c.Keys[1], "tokens", c.Tokens)
	s := out.String()
	checkNoSecret(t, s)
	for _, want := range []string{"(from $OPS_KEY)", "(from file /run/secrets/rdp)", "(from $BILLING_SECRET)", "params=[foo]"} {
		if !strings.Contains(s, want) {
			t.Errorf("no %q in:\n%s", want, s)
		}
	}
	// The fields themselves still hold the secrets, for the code that
	// needs them.
	if b, _ := json.Marshal(c.Keys[1]); !strings.Contains(string(b), opsKey) {
		t.Error("Key.Value does not hold the key")
	}
}

func TestDescribeBuiltInCode(t *testing.T) {
	c := &catalog.Catalog{
		Tokens: []catalog.Token{{Name: "a", Source: catalog.SourceOAuth2,
			OAuth2: &catalog.OAuth2{TokenURL: "https://x.example/t", ClientSecret: "code-SECRET-1"}}},
		Keys: []catalog.Key{{Name: "k", Value: "code-SECRET-2"}},
	}
	var out bytes.Buffer
	if err := c.Describe(&out); err != nil {
		t.Fatal(err)
	}
	if s := out.String(); strings.Contains(s, "code-SECRET") || !strings.Contains(s, "(set)") {
		t.Errorf("Describe:\n%s", s)
	}
}
