package catalog

import (
	"fmt"
	"strings"

	"go.yaml.in/yaml/v3"
)

var (
	topFields   = []string{"tokens", "keys", "identities"}
	tokenFields = []string{"name", "source", "mode", "required", "serve_margin", "refresh_before",
		"lifetime", "timeout", "auth_per_minute", "mints_per_minute", "mints_per_device_hour", "rdp", "oauth2"}
	rdpFields = []string{"base_url", "auth", "client_id", "client_secret", "client_secret_file",
		"username", "password", "password_file", "scope", "liveness_path", "liveness_method"}
	oauth2Fields = []string{"token_url", "client_id", "client_secret", "client_secret_file",
		"scopes", "audience", "resource", "params", "auth_style"}
)

// refusedParams are the endpoint parameters params may not set, with why.
var refusedParams = map[string]string{
	"audience":      "use the audience field",
	"resource":      "use the resource field",
	"scope":         "use the scopes field",
	"grant_type":    "the grant is always client_credentials",
	"client_id":     "use the client_id field",
	"client_secret": "a secret goes in client_secret_file: /path/to/file, or client_secret: ${SOME_VARIABLE}",
}

// catalog decodes the top-level mapping root.
func (p *parser) catalog(root *yaml.Node) *Catalog {
	b, _ := p.block(root, "", topFields)
	c := &Catalog{}
	items, ok := p.list(b, "tokens")
	switch {
	case !b.has("tokens"):
		p.add(b.line, "tokens", "required: a catalog keeps at least one token")
	case ok && len(items) == 0:
		p.add(b.lineOf("tokens"), "tokens", "lists no token: a catalog keeps at least one")
	}
	names := p.tokens(c, items)
	if items, ok := p.list(b, "keys"); ok {
		p.keys(c, items, names)
	}
	if items, ok := p.list(b, "identities"); ok {
		p.identities(c, items, names)
	}
	return c
}

// tokens decodes the token entries items into c, and returns the line of
// every token name given, valid or not.
func (p *parser) tokens(c *Catalog, items []*yaml.Node) map[string]int {
	names := map[string]int{}
	for i, it := range items {
		path := fmt.Sprintf("tokens[%d]", i)
		b, ok := p.block(it, path, tokenFields)
		if !ok {
			continue
		}
		t := p.token(b)
		if t.Name != "" {
			if first, dup := names[t.Name]; dup {
				p.add(b.lineOf("name"), b.at("name"), "%q is the name of another token too (line %d)", t.Name, first)
			} else {
				names[t.Name] = b.lineOf("name")
			}
		}
		c.Tokens = append(c.Tokens, t)
	}
	return names
}

// name returns the name field of b, recording a missing or invalid one;
// the name as given even when invalid, "" when there is none.
func (p *parser) name(b *block) string {
	p.require(b, "", "name")
	s, ok := p.text(b, "name", "", false)
	if ok && !ValidName(s) {
		p.add(b.lineOf("name"), b.at("name"), "%q is not a valid name: %s", s, NameRule)
	}
	return s
}

// token decodes one token entry b.
func (p *parser) token(b *block) Token {
	t := Token{Line: b.line, Name: p.name(b)}
	p.require(b, ": "+SourceRDP+" or "+SourceOAuth2, "source")
	t.Source, _ = p.oneOf(b, "source", "", SourceRDP, SourceOAuth2)
	t.Mode, _ = p.oneOf(b, "mode", ModeShared, ModeShared, ModePerDevice)
	if t.Mode == ModePerDevice && t.Source != SourceRDP && t.Source != "" {
		p.add(b.lineOf("mode"), b.at("mode"), "%s needs source %s: a device's token is a liveness token", ModePerDevice, SourceRDP)
	}
	t.Required = p.boolean(b, "required", true)
	p.mints(b, &t)
	p.timings(b, &t)
	p.upstream(b, &t)
	return t
}

// mints decodes the mint budgets of a per-device token entry b into t;
// another token may not have them.
func (p *parser) mints(b *block, t *Token) {
	for _, f := range []struct {
		name string
		dst  *int
		def  int
	}{{"mints_per_minute", &t.MintsPerMinute, DefaultMintsPerMinute}, {"mints_per_device_hour", &t.MintsPerDeviceHour, DefaultMintsPerDeviceHour}} {
		if t.Mode != ModePerDevice {
			if b.has(f.name) {
				p.add(b.lineOf(f.name), b.at(f.name), "applies to mode: %s tokens only", ModePerDevice)
			}
			continue
		}
		v, ok := p.integer(b, f.name, f.def)
		if ok && v < 0 {
			p.add(b.lineOf(f.name), b.at(f.name), "must not be negative (0: no cap)")
		}
		*f.dst = v
	}
}

// timings decodes the timings of the token entry b into t and checks that
// they can work together.
func (p *parser) timings(b *block, t *Token) {
	var ok [5]bool
	t.ServeMargin, ok[0] = p.duration(b, "serve_margin", DefaultServeMargin)
	t.RefreshBefore, ok[1] = p.duration(b, "refresh_before", DefaultRefreshBefore)
	t.Lifetime, ok[2] = p.duration(b, "lifetime", DefaultLifetime)
	t.Timeout, ok[3] = p.duration(b, "timeout", DefaultTimeout)
	t.AuthPerMinute, ok[4] = p.integer(b, "auth_per_minute", DefaultAuthPerMinute)
	if ok[4] && t.AuthPerMinute < 1 {
		p.add(b.lineOf("auth_per_minute"), b.at("auth_per_minute"), "must be at least 1")
	}
	if ok[2] && t.Lifetime > MaxLifetime {
		p.add(b.lineOf("lifetime"), b.at("lifetime"), "%s is longer than the most a token may live, 24h", short(t.Lifetime))
	}
	if ok[0] && ok[1] && ok[2] && ok[3] {
		p.timingRules(b, t)
	}
}

// timingRules checks that the timings of t, all valid, can work together;
// each problem names the first of its fields given in b.
func (p *parser) timingRules(b *block, t *Token) {
	at := func(names ...string) (int, string) {
		f := b.first(names...)
		return b.lineOf(f), b.at(f)
	}
	if t.ServeMargin >= t.Lifetime {
		line, field := at("serve_margin", "lifetime")
		p.add(line, field, "serve_margin (%s) must be shorter than lifetime (%s): "+
			"no token would ever be served", short(t.ServeMargin), short(t.Lifetime))
	} else if t.RefreshBefore+t.ServeMargin >= t.Lifetime {
		line, field := at("refresh_before", "serve_margin", "lifetime")
		p.add(line, field, "refresh_before (%s) + serve_margin (%s) must be shorter than lifetime (%s): "+
			"a token would be due for refresh as soon as it is fetched",
			short(t.RefreshBefore), short(t.ServeMargin), short(t.Lifetime))
	}
	if t.ServeMargin <= t.Timeout {
		line, field := at("serve_margin", "timeout")
		p.add(line, field, "serve_margin (%s) must be longer than timeout (%s): a token fetched with "+
			"less life left than the margin is refused, so the margin must cover the longest upstream call",
			short(t.ServeMargin), short(t.Timeout))
	}
}

// upstream decodes the rdp or oauth2 block of the token entry b into t,
// whichever its source asks for, and refuses the other.
func (p *parser) upstream(b *block, t *Token) {
	if f, ok := b.fields["rdp"]; ok && t.Source != SourceOAuth2 {
		if r := p.rdp(f, b.at("rdp")); t.Source == SourceRDP {
			t.RDP = r
		}
	}
	if f, ok := b.fields["oauth2"]; ok && t.Source != SourceRDP {
		if o := p.oauth2(f, b.at("oauth2")); t.Source == SourceOAuth2 {
			t.OAuth2 = o
		}
	}
	need, refuse := "rdp", "oauth2"
	switch t.Source {
	case SourceOAuth2:
		need, refuse = refuse, need
	case SourceRDP:
	default:
		return
	}
	p.require(b, " for source "+t.Source, need)
	if b.has(refuse) {
		p.add(b.lineOf(refuse), b.at(refuse), "refused for source %s, whose settings go under %s:", t.Source, need)
	}
}

// rdp decodes the rdp block f.
func (p *parser) rdp(f field, path string) *RDP {
	b, ok := p.subBlock(f, path, rdpFields)
	if !ok {
		return nil
	}
	r := &RDP{}
	r.BaseURL, _ = p.url(b, "base_url", DefaultRDPBaseURL)
	r.Auth, ok = p.oneOf(b, "auth", DefaultRDPAuth, "v2", "v1")
	p.require(b, "", "client_id")
	r.ClientID, _ = p.text(b, "client_id", "", true)
	r.Scope, _ = p.text(b, "scope", DefaultRDPScope, true)
	r.LivenessPath, _ = p.text(b, "liveness_path", DefaultLivenessPath, true)
	if _, ref := envRef(r.LivenessPath); b.has("liveness_path") && !strings.HasPrefix(r.LivenessPath, "/") && !(ref && p.opt.Offline) {
		p.add(b.lineOf("liveness_path"), b.at("liveness_path"), "must start with /")
	}
	r.LivenessMethod, _ = p.oneOf(b, "liveness_method", DefaultLivenessMethod, "POST", "GET")
	p.rdpAuth(b, r, ok)
	return r
}

// rdpAuth decodes the credentials of the rdp block b into r and checks
// that its auth (when authOK) has those it needs.
func (p *parser) rdpAuth(b *block, r *RDP, authOK bool) {
	cs, hasCS := p.secret(b, "client_secret")
	pw, hasPW := p.secret(b, "password")
	r.ClientSecret, r.clientSecretFrom = cs.value, cs.from
	r.Password, r.passwordFrom = pw.value, pw.from
	r.Username, _ = p.text(b, "username", "", true)
	switch {
	case !authOK:
	case r.Auth == "v2" && !hasCS:
		p.add(b.line, b.at("client_secret"), "required for auth v2: "+
			"client_secret_file: /path/to/file, or client_secret: ${SOME_VARIABLE}")
	case r.Auth == "v1":
		p.require(b, " for auth v1", "username")
		if !hasPW {
			p.add(b.line, b.at("password"), "required for auth v1: "+
				"password_file: /path/to/file, or password: ${SOME_VARIABLE}")
		}
	}
}

// oauth2 decodes the oauth2 block f.
func (p *parser) oauth2(f field, path string) *OAuth2 {
	b, ok := p.subBlock(f, path, oauth2Fields)
	if !ok {
		return nil
	}
	o := &OAuth2{}
	p.require(b, "", "token_url", "client_id")
	o.TokenURL, _ = p.url(b, "token_url", "")
	o.ClientID, _ = p.text(b, "client_id", "", true)
	cs, given := p.secret(b, "client_secret")
	if !given {
		p.add(b.line, b.at("client_secret"), "required: "+
			"client_secret_file: /path/to/file, or client_secret: ${SOME_VARIABLE}")
	}
	o.ClientSecret, o.clientSecretFrom = cs.value, cs.from
	o.Scopes = p.scopes(b)
	o.Audience, _ = p.text(b, "audience", "", true)
	o.Resource, _ = p.text(b, "resource", "", true)
	o.Params = p.stringMap(b, "params", refusedParams)
	o.AuthStyle, _ = p.oneOf(b, "auth_style", DefaultAuthStyle, "auto", "header", "body")
	return o
}

// scopes decodes the scopes of the oauth2 block b; nil when there are none.
func (p *parser) scopes(b *block) []string {
	scopes, ok := p.strs(b, "scopes", true)
	if !ok || len(scopes) == 0 {
		return nil
	}
	for i, s := range scopes {
		if strings.ContainsAny(s, " \t\r\n") {
			p.add(b.lineOf("scopes"), fmt.Sprintf("%s[%d]", b.at("scopes"), i),
				"a scope holds no spaces: list each scope on its own")
		}
	}
	return scopes
}
