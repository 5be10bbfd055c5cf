package main

// The resolver of settings: each one from its flag, else from its
// environment variable or the file its _FILE twin names (not both), else
// its default; typed reads record every problem.

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
)

// setting is one configuration variable with its flag twin.
type setting struct {
	env    string // TOKENKEEPER_LISTEN
	def    string // default, as text
	usage  string
	secret bool // never echoed in errors
}

// flagName is the flag twin of an environment variable:
// TOKENKEEPER_LOCK_TTL -> lock-ttl, RDP_CLIENT_ID -> rdp-client-id.
func (s setting) flagName() string {
	n := strings.TrimPrefix(s.env, "TOKENKEEPER_")
	return strings.ToLower(strings.ReplaceAll(n, "_", "-"))
}

// values resolves settings from flags, the environment and *_FILE
// variables, in that order of precedence, then defaults.
type values struct {
	m    map[string]string
	errs []error
}

// load parses args against settings. getenv and readFile are injected for
// tests.
func load(name string, settings []setting, args []string, getenv func(string) string, readFile func(string) ([]byte, error), stderr io.Writer) (*values, error) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	flags := make(map[string]*string, len(settings))
	for _, s := range settings {
		u := s.usage + " (" + s.env + ", or " + s.env + "_FILE)"
		flags[s.env] = fs.String(s.flagName(), "", u)
	}
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: tokenkeeper %s [flags]\n\nEach flag has an environment twin, shown in brackets; defaults in brackets after the name.\n\n", name)
		for _, s := range settings {
			def := ""
			if s.def != "" {
				def = " [" + s.def + "]"
			}
			fmt.Fprintf(stderr, "  --%s%s\n      %s (%s)\n", s.flagName(), def, s.usage, s.env)
		}
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	set := make(map[string]bool)
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })

	v := &values{m: make(map[string]string, len(settings))}
	for _, s := range settings {
		env, file := getenv(s.env), getenv(s.env+"_FILE")
		switch {
		case set[s.flagName()]:
			v.m[s.env] = *flags[s.env]
		case env != "" && file != "":
			v.errs = append(v.errs, fmt.Errorf("%s and %s_FILE are both set; use one", s.env, s.env))
		case file != "":
			b, err := readFile(file)
			if err != nil {
				v.errs = append(v.errs, fmt.Errorf("%s_FILE: %w", s.env, err))
				continue
			}
			v.m[s.env] = strings.TrimRight(string(b), "\r\n")
		case env != "":
			v.m[s.env] = env
		default:
			v.m[s.env] = s.def
		}
	}
	return v, nil
}

func (v *values) str(env string) string { return strings.TrimSpace(v.m[env]) }

func (v *values) fail(format string, args ...any) {
	v.errs = append(v.errs, fmt.Errorf(format, args...))
}

// duration is a positive duration.
func (v *values) duration(env string) time.Duration { return v.parseDuration(env, false) }

// nonNegative is a duration that may be zero.
func (v *values) nonNegative(env string) time.Duration { return v.parseDuration(env, true) }

func (v *values) parseDuration(env string, zeroOK bool) time.Duration {
	s := v.str(env)
	d, err := time.ParseDuration(s)
	switch {
	case err != nil:
		v.fail("%s: %q is not a duration (examples: 90s, 15m)", env, s)
		return 0
	case d < 0 && zeroOK:
		v.fail("%s: %v must not be negative", env, d)
	case d <= 0 && !zeroOK:
		v.fail("%s: %v must be positive", env, d)
	}
	return d
}

func (v *values) integer(env string) int {
	s := v.str(env)
	n, err := strconv.Atoi(s)
	if err != nil {
		v.fail("%s: %q is not a whole number", env, s)
	}
	return n
}

// atLeastOne is a count of at least one. Zero is the front door's
// "default", so written in a variable it is a mistake; a refused value
// reads as zero, which the front door takes as its default, so the
// mistake is reported once.
func (v *values) atLeastOne(env string) int {
	parsed := len(v.errs)
	n := v.integer(env)
	if n >= 1 {
		return n
	}
	if len(v.errs) == parsed {
		v.fail("%s: %d must be at least 1", env, n)
	}
	return 0
}

func (v *values) boolean(env string) bool {
	s := v.str(env)
	b, err := strconv.ParseBool(s)
	if err != nil {
		v.fail("%s: %q is not true or false", env, s)
	}
	return b
}

// list splits a comma-separated list, refusing empty items.
func (v *values) list(env string) []string {
	s := v.str(env)
	if s == "" {
		return nil
	}
	var out []string
	for i, k := range strings.Split(s, ",") {
		k = strings.TrimSpace(k)
		if k == "" {
			v.fail("%s: item %d is empty", env, i+1)
			continue
		}
		out = append(out, k)
	}
	return out
}

func (v *values) err() error { return errors.Join(v.errs...) }
