package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/tokenkeeper/tokenkeeper"
)

// runConfig runs `tokenkeeper config check [--offline] FILE`: it
// validates a catalog file as serve would, secrets included, and prints
// the catalog it describes (names, sources, timings, keys and their
// scopes; never a secret). With --offline it checks everything but the
// secrets' values: a ${VAR} reference or a *_file path is accepted
// unresolved, and the last line lists them. Without --offline, reader and
// admin keys too weak to resist guessing are refused, as serve refuses
// them, unless TOKENKEEPER_ALLOW_WEAK_KEYS=true. It starts nothing and
// connects to nothing.
func runConfig(_ context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "check" {
		fmt.Fprint(stderr, "usage: tokenkeeper config check [--offline] FILE\n")
		return errors.New("config: the one subcommand is check")
	}
	fs := flag.NewFlagSet("config check", flag.ContinueOnError)
	fs.SetOutput(stderr)
	offline := fs.Bool("offline", false, "check everything but the secrets' values: ${VAR} references and *_file paths are not resolved (CI)")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return errors.New("config check: give one file")
	}
	file := fs.Arg(0)
	cat, err := parseCatalog(file, getenv, os.ReadFile, *offline, nil)
	if err != nil {
		return fmt.Errorf("%s is not valid:\n%w", file, err)
	}
	// The front door's rules beyond the file's own, as serve applies
	// them at start: reader and admin keys too weak to resist guessing
	// are refused, unless offline (their values are unknown) or allowed.
	cfg := tokenkeeper.Config{Tokens: cat.Tokens, HTTP: tokenkeeper.HTTPConfig{
		Keys: cat.Keys, Security: tokenkeeper.Security{Identities: cat.Identities}, AllowAnonymous: true,
		AllowWeakKeys: *offline || getenv("TOKENKEEPER_ALLOW_WEAK_KEYS") == "true",
	}}
	if err := cfg.Validate(); err != nil {
		var problems []error
		for _, e := range err.(interface{ Unwrap() []error }).Unwrap() {
			var fe *tokenkeeper.FieldError
			switch {
			case !errors.As(e, &fe):
				problems = append(problems, e)
			case fe.Field == "HTTP.Keys":
				problems = append(problems, errors.New(fieldVars.Replace(fe.Problem)))
			default:
				problems = append(problems, fmt.Errorf("%s: %s", fe.Field, fe.Problem))
			}
		}
		return fmt.Errorf("%s is not valid:\n%w", file, errors.Join(problems...))
	}
	if err := cat.Describe(stdout); err != nil {
		return err
	}
	if !*offline {
		fmt.Fprintf(stdout, "\n%s is valid: %d tokens, %d keys\n", file, len(cat.Tokens), len(cat.Keys))
		return nil
	}
	left := "none"
	if len(cat.Unresolved) > 0 {
		left = strings.Join(cat.Unresolved, ", ")
	}
	fmt.Fprintf(stdout, "\n%s is valid offline: %d tokens, %d keys; references not resolved, their values unchecked: %s\n",
		file, len(cat.Tokens), len(cat.Keys), left)
	return nil
}
