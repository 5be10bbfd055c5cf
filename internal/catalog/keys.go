package catalog

import (
	"fmt"
	"slices"

	"go.yaml.in/yaml/v3"
)

var keyFields = []string{"name", "role", "key", "key_file", "tokens"}

// keys decodes the key entries items into c; tokens holds the names of the
// file's tokens, which key scopes may name.
func (p *parser) keys(c *Catalog, items []*yaml.Node, tokens map[string]int) {
	names := map[string]int{}
	values := map[string]int{} // key value → index in c.Keys
	for i, it := range items {
		b, ok := p.block(it, fmt.Sprintf("keys[%d]", i), keyFields)
		if !ok {
			continue
		}
		k := p.key(b, tokens)
		if first, dup := names[k.Name]; dup && k.Name != "" {
			p.add(b.lineOf("name"), b.at("name"), "%q is the name of another key too (line %d)", k.Name, first)
		} else if k.Name != "" {
			names[k.Name] = b.lineOf("name")
		}
		if j, dup := values[k.Value]; dup && k.Value != "" {
			f := b.first("key", "key_file")
			p.add(b.lineOf(f), b.at(f), "key %q has the same value as key %q (line %d): give each key its own",
				k.Name, c.Keys[j].Name, c.Keys[j].Line)
		} else if k.Value != "" {
			values[k.Value] = len(c.Keys)
		}
		c.Keys = append(c.Keys, k)
	}
}

// key decodes one key entry b.
func (p *parser) key(b *block, tokens map[string]int) Key {
	k := Key{Line: b.line, Name: p.name(b)}
	k.Role, _ = p.oneOf(b, "role", RoleReader, RoleReader, RoleAdmin, RoleMetrics)
	s, given := p.secret(b, "key")
	if !given {
		p.add(b.line, b.at("key"), "required: key_file: /path/to/file, or key: ${SOME_VARIABLE}")
	}
	k.Value, k.valueFrom = s.value, s.from
	k.Tokens = p.scope(b, tokens)
	return k
}

// scope decodes the tokens a key entry b may use; nil means every token.
func (p *parser) scope(b *block, tokens map[string]int) []string {
	names, ok := p.strs(b, "tokens", false)
	if !ok {
		return nil
	}
	if len(names) == 0 {
		p.add(b.lineOf("tokens"), b.at("tokens"), `lists no token: leave it out, or write ["*"], for every token`)
		return nil
	}
	items, _ := p.list(b, "tokens")
	for i, n := range names {
		field, line := fmt.Sprintf("%s[%d]", b.at("tokens"), i), items[i].Line
		switch _, known := tokens[n]; {
		case n == "*" && len(names) > 1:
			p.add(line, field, `"*" (every token) stands alone`)
		case n == "*":
			return nil
		case slices.Index(names, n) < i:
			p.add(line, field, "%q is listed twice", n)
		case !known:
			p.add(line, field, "%q names no token of this file", n)
		}
	}
	return names
}
