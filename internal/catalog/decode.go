package catalog

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// parser walks a file's YAML tree, collecting every problem it finds.
type parser struct {
	opt        Options
	errs       []*Error
	unresolved []string // Offline: the references left unresolved
}

// leave records ref as left unresolved by an Offline parse.
func (p *parser) leave(ref string) {
	if !slices.Contains(p.unresolved, ref) {
		p.unresolved = append(p.unresolved, ref)
	}
}

// add records a problem of field at line.
func (p *parser) add(line int, field, format string, args ...any) {
	p.errs = append(p.errs, &Error{
		File: p.opt.File, Line: line, Field: field,
		Problem: fmt.Sprintf(format, args...),
	})
}

// err returns the problems recorded, in the order of their lines, joined;
// nil when there are none.
func (p *parser) err() error {
	if len(p.errs) == 0 {
		return nil
	}
	slices.SortStableFunc(p.errs, func(a, b *Error) int { return a.Line - b.Line })
	errs := make([]error, len(p.errs))
	for i, e := range p.errs {
		errs[i] = e
	}
	return errors.Join(errs...)
}

// file decodes data into a Catalog, recording its problems.
func (p *parser) file(data []byte) *Catalog {
	root, ok := p.document(data)
	if !ok {
		return nil
	}
	root = deref(root)
	if root.Kind == yaml.ScalarNode && root.ShortTag() == "!!null" {
		p.add(0, "", "the file is empty: it lists the tokens to keep under tokens:")
		return nil
	}
	if root.Kind != yaml.MappingNode {
		p.add(root.Line, "", "the file must be a mapping (tokens: and keys:), not %s", kind(root))
		return nil
	}
	return p.catalog(root)
}

// document decodes the one YAML document of data, recording a syntax
// error, an empty file or a second document.
func (p *parser) document(data []byte) (*yaml.Node, bool) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	switch err := decode(dec, &doc); {
	case err == io.EOF:
		p.add(0, "", "the file is empty: it lists the tokens to keep under tokens:")
		return nil, false
	case err != nil:
		p.syntax(err)
		return nil, false
	}
	var next yaml.Node
	switch err := decode(dec, &next); {
	case err == nil:
		p.add(next.Line, "", "a second YAML document: the file holds one")
		return nil, false
	case err != io.EOF:
		p.syntax(err)
		return nil, false
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) == 0 {
		p.add(0, "", "the file is empty: it lists the tokens to keep under tokens:")
		return nil, false
	}
	return doc.Content[0], true
}

// decode decodes the next document of dec into n, turning a panic of the
// YAML parser into an error.
func decode(dec *yaml.Decoder, n *yaml.Node) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("yaml: %v", r)
		}
	}()
	return dec.Decode(n)
}

var yamlLine = regexp.MustCompile(`^yaml: (?:line (\d+): )?`)

// syntax records a YAML syntax error, with its line when it names one.
func (p *parser) syntax(err error) {
	msg := err.Error()
	line := 0
	if m := yamlLine.FindStringSubmatch(msg); m != nil {
		line, _ = strconv.Atoi(m[1])
		msg = msg[len(m[0]):]
	}
	p.add(line, "", "not valid YAML: %s", msg)
}

// deref follows aliases to the node they stand for. An aliased scalar
// keeps the line of the alias.
func deref(n *yaml.Node) *yaml.Node {
	orig := n
	for i := 0; n != nil && n.Kind == yaml.AliasNode && i < 16; i++ {
		n = n.Alias
	}
	switch {
	case n == nil || n.Kind == yaml.AliasNode:
		line := 0
		if orig != nil {
			line = orig.Line
		}
		return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!null", Line: line}
	case n != orig && n.Kind == yaml.ScalarNode:
		c := *n
		c.Line, c.Column = orig.Line, orig.Column
		return &c
	}
	return n
}

// kind names what n is, for messages; never its value.
func kind(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
	default:
		return "an unknown node"
	}
	switch n.ShortTag() {
	case "!!null":
		return "an empty value"
	case "!!int", "!!float":
		return "a number"
	case "!!bool":
		return "true or false"
	case "!!str":
		return "text"
	}
	return "a value tagged " + n.ShortTag()
}

// field is one field of a mapping: its key and its value.
type field struct{ key, val *yaml.Node }

// block is one mapping of the file, its fields indexed by name.
type block struct {
	path   string // "tokens[0].oauth2"; "" at the top level
	line   int
	fields map[string]field
	order  []string // the fields' names in the file's order
}

// at returns the path of the field name of b.
func (b *block) at(name string) string {
	if b.path == "" {
		return name
	}
	return b.path + "." + name
}

// has reports whether the field name is given.
func (b *block) has(name string) bool {
	_, ok := b.fields[name]
	return ok
}

// lineOf returns the line of the field name, or b's when it is not given.
func (b *block) lineOf(name string) int {
	if f, ok := b.fields[name]; ok {
		return f.key.Line
	}
	return b.line
}

// first returns the first of names given in b, or names[0] when none is.
func (b *block) first(names ...string) string {
	for _, n := range names {
		if b.has(n) {
			return n
		}
	}
	return names[0]
}

// block reads n as a mapping of fields, recording a node of another kind,
// a key given twice and, when known is not nil, a field not in known.
func (p *parser) block(n *yaml.Node, path string, known []string) (*block, bool) {
	n = deref(n)
	if n.Kind != yaml.MappingNode {
		p.add(n.Line, path, "want a mapping of fields, not %s", kind(n))
		return nil, false
	}
	b := &block{path: path, line: n.Line, fields: map[string]field{}}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := deref(n.Content[i]), n.Content[i+1]
		switch {
		case k.Kind != yaml.ScalarNode:
			p.add(k.Line, path, "a field name must be plain text, not %s", kind(k))
		case k.ShortTag() == "!!merge":
			p.add(k.Line, path, "merge keys (<<) are not supported: write the fields out")
		case b.has(k.Value):
			p.add(k.Line, b.at(k.Value), "given twice (first at line %d)", b.fields[k.Value].key.Line)
		case known != nil && !slices.Contains(known, k.Value):
			p.add(k.Line, b.at(k.Value), "unknown field (known here: %s)", strings.Join(known, ", "))
		default:
			b.fields[k.Value] = field{key: k, val: v}
			b.order = append(b.order, k.Value)
		}
	}
	return b, true
}

// subBlock reads the value of the field f as a block, whose line is the
// field's: a field it lacks is missing from there.
func (p *parser) subBlock(f field, path string, known []string) (*block, bool) {
	b, ok := p.block(f.val, path, known)
	if ok {
		b.line = f.key.Line
	}
	return b, ok
}

// list returns the items of the field name of b, which must be a list;
// ok is false when it is not given or not a list.
func (p *parser) list(b *block, name string) (items []*yaml.Node, ok bool) {
	f, ok := b.fields[name]
	if !ok {
		return nil, false
	}
	v := deref(f.val)
	if v.Kind != yaml.SequenceNode {
		p.add(f.key.Line, b.at(name), "want a list, not %s", kind(v))
		return nil, false
	}
	items = make([]*yaml.Node, len(v.Content))
	for i, it := range v.Content {
		items[i] = deref(it)
	}
	return items, true
}
