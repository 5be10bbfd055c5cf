package catalog

import (
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// scalar returns the text of a plain value n of field, recording a value
// of another kind (want says what is wanted) or an empty one.
func (p *parser) scalar(n *yaml.Node, field, want string) (string, bool) {
	n = deref(n)
	tag := n.ShortTag()
	if n.Kind != yaml.ScalarNode || tag == "!!null" || tag == "!!binary" {
		p.add(n.Line, field, "want %s, not %s", want, kind(n))
		return "", false
	}
	if n.Value == "" {
		p.add(n.Line, field, "is empty")
		return "", false
	}
	return n.Value, true
}

// text returns the field name of b as text, a whole ${NAME} expanded when
// expand is set; def when the field is not given. ok is false when the
// field is not given or not valid.
func (p *parser) text(b *block, name, def string, expand bool) (s string, ok bool) {
	f, given := b.fields[name]
	if !given {
		return def, false
	}
	s, ok = p.scalar(f.val, b.at(name), "text")
	if ok && expand {
		s, ok = p.expand(f.key.Line, b.at(name), s)
	}
	return s, ok
}

// oneOf returns the field name of b, which must be one of allowed; def
// when the field is not given.
func (p *parser) oneOf(b *block, name, def string, allowed ...string) (string, bool) {
	s, ok := p.text(b, name, def, false)
	if !ok {
		return s, !b.has(name)
	}
	if !slices.Contains(allowed, s) {
		p.add(b.lineOf(name), b.at(name), "%q is none of %s", s, strings.Join(allowed, ", "))
		return "", false
	}
	return s, true
}

// boolean returns the field name of b, true or false; def when it is not
// given.
func (p *parser) boolean(b *block, name string, def bool) bool {
	f, ok := b.fields[name]
	if !ok {
		return def
	}
	v := deref(f.val)
	if v.Kind == yaml.ScalarNode && v.ShortTag() == "!!bool" {
		if x, err := strconv.ParseBool(strings.ToLower(v.Value)); err == nil {
			return x
		}
	}
	p.add(f.key.Line, b.at(name), "want true or false, not %s", shown(v))
	return def
}

// integer returns the field name of b, a whole number; def when it is not
// given.
func (p *parser) integer(b *block, name string, def int) (int, bool) {
	f, ok := b.fields[name]
	if !ok {
		return def, true
	}
	v := deref(f.val)
	if v.Kind == yaml.ScalarNode && v.ShortTag() == "!!int" {
		if x, err := strconv.ParseInt(v.Value, 0, 32); err == nil {
			return int(x), true
		}
	}
	p.add(f.key.Line, b.at(name), "want a whole number, not %s", shown(v))
	return def, false
}

// duration returns the field name of b, a positive Go duration; def when
// it is not given.
func (p *parser) duration(b *block, name string, def time.Duration) (time.Duration, bool) {
	f, ok := b.fields[name]
	if !ok {
		return def, true
	}
	v := deref(f.val)
	if v.Kind != yaml.ScalarNode || v.ShortTag() == "!!null" {
		p.add(f.key.Line, b.at(name), "want a duration such as 90s, 15m or 1h, not %s", kind(v))
		return def, false
	}
	d, err := time.ParseDuration(v.Value)
	switch {
	case err != nil:
		p.add(f.key.Line, b.at(name), "%q is not a duration: write it with its unit, such as 90s, 15m or 1h", v.Value)
		return def, false
	case d <= 0:
		p.add(f.key.Line, b.at(name), "must be positive, not %s", v.Value)
		return def, false
	}
	return d, true
}

// shown shows a scalar that is not a secret, quoted, or names what n is.
func shown(n *yaml.Node) string {
	if n.Kind == yaml.ScalarNode && n.ShortTag() != "!!null" {
		return strconv.Quote(n.Value)
	}
	return kind(n)
}

// url returns the field name of b, an absolute http or https URL with a
// host; def when it is not given.
func (p *parser) url(b *block, name, def string) (string, bool) {
	s, ok := p.text(b, name, def, true)
	if !ok {
		return s, !b.has(name)
	}
	// The URL may come from the environment: never shown.
	u, err := url.Parse(s)
	switch {
	case err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.Hostname() == "":
		p.add(b.lineOf(name), b.at(name), "want an absolute http:// or https:// URL with a host")
		return "", false
	case u.User != nil:
		p.add(b.lineOf(name), b.at(name), "a URL must not carry credentials (user:password@): "+
			"give them in their own fields")
		return "", false
	}
	return s, true
}

// strs returns the field name of b, a list of text; each item expanded
// when expand is set. ok is false when it is not given or not valid.
func (p *parser) strs(b *block, name string, expand bool) ([]string, bool) {
	items, ok := p.list(b, name)
	if !ok {
		return nil, false
	}
	var out []string
	for i, it := range items {
		field := fmt.Sprintf("%s[%d]", b.at(name), i)
		s, good := p.scalar(it, field, "text")
		if good && expand {
			s, good = p.expand(it.Line, field, s)
		}
		ok = ok && good
		out = append(out, s)
	}
	return out, ok
}

// stringMap returns the field name of b, a mapping of text to text, the
// values expanded; refused names the keys that may not be given, with why.
func (p *parser) stringMap(b *block, name string, refused map[string]string) map[string]string {
	f, ok := b.fields[name]
	if !ok {
		return nil
	}
	m, ok := p.subBlock(f, b.at(name), nil)
	if !ok {
		return nil
	}
	var out map[string]string
	for _, k := range m.order {
		if why, no := refused[strings.ToLower(k)]; no {
			p.add(m.lineOf(k), m.at(k), "refused here: %s", why)
			continue
		}
		if s, ok := p.text(m, k, "", true); ok {
			if out == nil {
				out = map[string]string{}
			}
			out[k] = s
		}
	}
	return out
}

// require records each of names that b does not give.
func (p *parser) require(b *block, why string, names ...string) {
	for _, n := range names {
		if !b.has(n) {
			p.add(b.line, b.at(n), "required%s", why)
		}
	}
}
