package httpapi

// Client certificate identities: the subjects that stand for keys, and
// how a verified certificate is matched to one.

import (
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"net/url"
)

// Identity is a client certificate's subject given a role and scopes, as
// a Key is.
type Identity struct {
	// Name names the identity in logs and the audit trail. Default: its
	// Subject.
	Name string
	// Subject is what a verified certificate must carry: "CN=<name>" for
	// its subject's common name, or an absolute URI (a SPIFFE id such as
	// spiffe://example.org/ns/prod/sa/backend) for one of its SAN URIs.
	Subject string
	// Role is RoleReader (the default), RoleAdmin or RoleMetrics.
	Role Role
	// Tokens are the names of the tokens it may use; none means every one.
	Tokens []string
}

// Check reports what is wrong with id's subject or role, if anything;
// its tokens are checked against the catalog by New.
func (id Identity) Check() error {
	if _, _, err := parseSubject(id.Subject); err != nil {
		return err
	}
	switch id.Role {
	case RoleReader, RoleAdmin, RoleMetrics, "":
		return nil
	}
	return fmt.Errorf("unknown role %q (reader, admin or metrics)", id.Role)
}

// Subject kinds of an identity.
const (
	subjectCN  = 'c'
	subjectURI = 'u'
)

// parseSubject splits an Identity.Subject into its kind and value.
func parseSubject(s string) (kind byte, value string, err error) {
	if cn, ok := cutPrefixFold(s, "CN="); ok {
		if cn == "" {
			return 0, "", errors.New("subject CN= names no common name")
		}
		return subjectCN, cn, nil
	}
	u, err := url.Parse(s)
	if err != nil || u.Scheme == "" || (u.Host == "" && u.Opaque == "") {
		return 0, "", fmt.Errorf("subject %q is neither CN=<common name> nor an absolute URI (spiffe://trust-domain/path)", s)
	}
	return subjectURI, u.String(), nil
}

func cutPrefixFold(s, prefix string) (string, bool) {
	if len(s) >= len(prefix) && equalFoldASCII(s[:len(prefix)], prefix) {
		return s[len(prefix):], true
	}
	return s, false
}

func equalFoldASCII(a, b string) bool {
	for i := range len(a) {
		x, y := a[i]|0x20, b[i]|0x20
		if x != y {
			return false
		}
	}
	return true
}

// identityDigest is what an identity is known by among the keys: no
// presented key can have it, for a header value holds no NUL byte.
func identityDigest(kind byte, value string) [sha256.Size]byte {
	var buf [256]byte
	b := append(buf[:0], 0, 'i', 'd', kind, 0)
	b = append(b, value...)
	return sha256.Sum256(b)
}

// identify gives w the roles of the identity of the verified client
// certificate of a TLS request, if one is configured: its common name
// first, then its SAN URIs.
func (g *guard) identify(st *tls.ConnectionState, w *who) {
	if !g.anyIdent || len(st.VerifiedChains) == 0 || len(st.VerifiedChains[0]) == 0 {
		return
	}
	leaf := st.VerifiedChains[0][0]
	if cn := leaf.Subject.CommonName; cn != "" && g.identifyAs(identityDigest(subjectCN, cn), w) {
		return
	}
	for _, u := range leaf.URIs {
		if g.identifyAs(identityDigest(subjectURI, u.String()), w) {
			return
		}
	}
}

func (g *guard) identifyAs(d [sha256.Size]byte, w *who) bool {
	for i, role := range [...]grant{grantReader, grantAdmin, grantMetrics} {
		if k := g.idents[i].match(&d); k >= 0 {
			w.g |= role
			w.scopes[i] = g.idents[i].scopes[k]
			if w.name == "" {
				w.name = g.idents[i].names[k]
			}
			w.digest = d
			w.presented, w.identity = true, true
		}
	}
	return w.identity
}
