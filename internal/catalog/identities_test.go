package catalog_test

import (
	"strings"
	"testing"

	"github.com/tokenkeeper/tokenkeeper/internal/catalog"
)

const identitiesHead = `
tokens:
  - name: liveness
    source: oauth2
    oauth2: {token_url: "https://idp.example.com/token", client_id: c, client_secret: "${SECRET}"}
  - name: billing
    source: oauth2
    oauth2: {token_url: "https://idp.example.com/token", client_id: c, client_secret: "${SECRET}"}
`

func TestParseIdentities(t *testing.T) {
	c, err := catalog.Parse([]byte(identitiesHead+`
identities:
  - name: mesh
    subject: CN=mesh-gateway
    tokens: [liveness]
  - name: backend
    subject: spiffe://example.org/ns/prod/sa/backend
    role: admin
`), opts)
	if err != nil {
		t.Fatal(err)
	}
	want := []catalog.Identity{
		{Name: "mesh", Subject: "CN=mesh-gateway", Role: catalog.RoleReader, Tokens: []string{"liveness"}, Line: 11},
		{Name: "backend", Subject: "spiffe://example.org/ns/prod/sa/backend", Role: catalog.RoleAdmin, Line: 14},
	}
	if len(c.Identities) != len(want) {
		t.Fatalf("identities = %+v, want %+v", c.Identities, want)
	}
	for i, got := range c.Identities {
		w := want[i]
		if got.Name != w.Name || got.Subject != w.Subject || got.Role != w.Role || strings.Join(got.Tokens, ",") != strings.Join(w.Tokens, ",") || got.Line != w.Line {
			t.Errorf("identity %d = %+v, want %+v", i, got, w)
		}
	}
}

func TestIdentityErrors(t *testing.T) {
	for _, tc := range []struct {
		name, entries, want string
	}{
		{"no subject", "  - name: a\n", "identities[0].subject: required"},
		{"bad subject", "  - {name: a, subject: mesh-gateway}\n", "neither CN=<common name> nor an absolute URI"},
		{"empty CN", "  - {name: a, subject: \"CN=\"}\n", "names no common name"},
		{"unknown token", "  - {name: a, subject: CN=x, tokens: [nope]}\n", `"nope" names no token of this file`},
		{"unknown role", "  - {name: a, subject: CN=x, role: root}\n", `"root" is none of`},
		{"unknown field", "  - {name: a, subject: CN=x, key: k}\n", "key"},
		{"same subject twice", "  - {name: a, subject: CN=x}\n  - {name: b, subject: cn=x}\n", "subject of another identity too"},
		{"same name twice", "  - {name: a, subject: CN=x}\n  - {name: a, subject: CN=y}\n", "name of another identity too"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := catalog.Parse([]byte(identitiesHead+"identities:\n"+tc.entries), opts)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Parse: %v; want an error with %q", err, tc.want)
			}
		})
	}
}
