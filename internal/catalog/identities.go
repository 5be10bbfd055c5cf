package catalog

import (
	"fmt"
	"net/url"
	"strings"

	"go.yaml.in/yaml/v3"
)

var identityFields = []string{"name", "subject", "role", "tokens"}

// Identity is a client certificate's subject that stands for a key: a
// replica serving TLS with a client CA admits a request whose verified
// certificate carries it with the identity's role and tokens. It holds no
// secret.
type Identity struct {
	// Name labels the identity in logs and the audit trail.
	Name string
	// Subject is "CN=<common name>" or an absolute URI (a SPIFFE id) that
	// the certificate must carry as a SAN URI.
	Subject string
	// Role is RoleReader, RoleAdmin or RoleMetrics.
	Role string
	// Tokens are the names of the tokens the identity may use; nil means
	// every token.
	Tokens []string
	// Line is where the identity's entry starts in the file.
	Line int
}

// identities decodes the identity entries items into c; tokens holds the
// names of the file's tokens, which scopes may name.
func (p *parser) identities(c *Catalog, items []*yaml.Node, tokens map[string]int) {
	names, subjects := map[string]int{}, map[string]int{}
	for i, it := range items {
		b, ok := p.block(it, fmt.Sprintf("identities[%d]", i), identityFields)
		if !ok {
			continue
		}
		id := Identity{Line: b.line, Name: p.name(b)}
		id.Role, _ = p.oneOf(b, "role", RoleReader, RoleReader, RoleAdmin, RoleMetrics)
		p.require(b, "", "subject")
		if s, ok := p.text(b, "subject", "", false); ok {
			if problem := checkSubject(s); problem != "" {
				p.add(b.lineOf("subject"), b.at("subject"), "%s", problem)
			} else if first, dup := subjects[sameSubject(s)]; dup {
				p.add(b.lineOf("subject"), b.at("subject"), "%q is the subject of another identity too (line %d)", s, first)
			} else {
				subjects[sameSubject(s)] = b.lineOf("subject")
			}
			id.Subject = s
		}
		if first, dup := names[id.Name]; dup && id.Name != "" {
			p.add(b.lineOf("name"), b.at("name"), "%q is the name of another identity too (line %d)", id.Name, first)
		} else if id.Name != "" {
			names[id.Name] = b.lineOf("name")
		}
		id.Tokens = p.scope(b, tokens)
		c.Identities = append(c.Identities, id)
	}
}

// checkSubject says what is wrong with an identity's subject, if anything.
func checkSubject(s string) string {
	if len(s) >= 3 && strings.EqualFold(s[:3], "CN=") {
		if s[3:] == "" {
			return "CN= names no common name"
		}
		return ""
	}
	u, err := url.Parse(s)
	if err != nil || u.Scheme == "" || (u.Host == "" && u.Opaque == "") {
		return fmt.Sprintf("%q is neither CN=<common name> nor an absolute URI (spiffe://trust-domain/path)", s)
	}
	return ""
}

// sameSubject is s with its "CN=" prefix in one case: the prefix is
// matched in any case, the common name as written.
func sameSubject(s string) string {
	if len(s) >= 3 && strings.EqualFold(s[:3], "CN=") {
		return "CN=" + s[3:]
	}
	return s
}
