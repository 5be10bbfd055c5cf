package catalog

import (
	"errors"
	"io/fs"
	"strings"

	"go.yaml.in/yaml/v3"
)

// envRef returns NAME when s is exactly one ${NAME} reference.
func envRef(s string) (string, bool) {
	name, ok := strings.CutPrefix(s, "${")
	if !ok {
		return "", false
	}
	name, ok = strings.CutSuffix(name, "}")
	if !ok || name == "" || (name[0] >= '0' && name[0] <= '9') {
		return "", false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if c != '_' && (c < 'a' || c > 'z') && (c < 'A' || c > 'Z') && (c < '0' || c > '9') {
			return "", false
		}
	}
	return name, true
}

// expand returns s, or the value of the variable it names when it is one
// whole ${NAME} reference, recording an unset or empty variable.
func (p *parser) expand(line int, field, s string) (string, bool) {
	name, ok := envRef(s)
	if !ok {
		return s, true
	}
	return p.env(line, field, name)
}

// env returns the value of the environment variable name, recording an
// unset or empty one.
func (p *parser) env(line int, field, name string) (string, bool) {
	if p.opt.Offline {
		p.leave("$" + name)
		return "${" + name + "}", true
	}
	v, ok := p.opt.LookupEnv(name)
	switch {
	case !ok:
		p.add(line, field, "the environment variable %s is not set", name)
		return "", false
	case v == "":
		p.add(line, field, "the environment variable %s is empty", name)
		return "", false
	}
	return v, true
}

// secret is a secret's value and where it came from ("file PATH" or
// "$NAME"), which may be shown.
type secret struct{ value, from string }

// secret returns the secret field name of b, given as name_file: PATH or
// name: ${NAME}. given is whether either form is there at all, valid or
// not.
func (p *parser) secret(b *block, name string) (s secret, given bool) {
	file := name + "_file"
	switch {
	case b.has(name) && b.has(file):
		p.add(b.lineOf(file), b.at(name), "give either %s or %s, not both", name, file)
		return secret{}, true
	case b.has(file):
		return p.secretFile(b, file), true
	case b.has(name):
		return p.secretEnv(b, name), true
	}
	return secret{}, false
}

// secretFile reads the secret whose path is the field file of b.
func (p *parser) secretFile(b *block, file string) secret {
	path, ok := p.text(b, file, "", false)
	if !ok {
		return secret{}
	}
	if p.opt.Offline {
		p.leave("file " + path)
		return secret{from: "file " + path}
	}
	data, err := p.opt.ReadFile(path)
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		p.add(b.lineOf(file), b.at(file), "cannot read %s: %v", path, err)
		return secret{}
	}
	v := string(data)
	if s, ok := strings.CutSuffix(v, "\n"); ok {
		v = strings.TrimSuffix(s, "\r")
	}
	if v == "" {
		p.add(b.lineOf(file), b.at(file), "%s is empty", path)
		return secret{}
	}
	return secret{value: v, from: "file " + path}
}

// secretEnv resolves the secret field name of b, which must be one whole
// ${NAME} reference.
func (p *parser) secretEnv(b *block, name string) secret {
	v := deref(b.fields[name].val)
	ref, ok := "", false
	if v.Kind == yaml.ScalarNode && v.ShortTag() == "!!str" {
		ref, ok = envRef(v.Value)
	}
	if !ok {
		p.add(b.lineOf(name), b.at(name), "a secret is never written in the file in clear: "+
			"use %s_file: /path/to/file, or %s: ${SOME_VARIABLE}", name, name)
		return secret{}
	}
	if p.opt.Offline {
		p.leave("$" + ref)
		return secret{from: "$" + ref}
	}
	val, ok := p.env(b.lineOf(name), b.at(name), ref)
	if !ok {
		return secret{}
	}
	return secret{value: val, from: "$" + ref}
}

// shownFrom says where a secret comes from, for String and Describe:
// never the secret.
func shownFrom(value, from string) string {
	switch {
	case from != "":
		return "(from " + from + ")"
	case value != "":
		return "(set)"
	}
	return "(none)"
}
