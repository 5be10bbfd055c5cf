package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
)

// runConfig runs `tokenkeeper config check FILE`: it validates a catalog
// file as serve would, secrets included, and prints the catalog it
// describes (names, sources, timings, keys and their scopes; never a
// secret). It starts nothing and connects to nothing.
func runConfig(_ context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "check" {
		fmt.Fprint(stderr, "usage: tokenkeeper config check FILE\n")
		return errors.New("config: the one subcommand is check")
	}
	fs := flag.NewFlagSet("config check", flag.ContinueOnError)
	fs.SetOutput(stderr)
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return errors.New("config check: give one file")
	}
	cat, err := loadCatalog(fs.Arg(0), getenv, os.ReadFile)
	if err != nil {
		return fmt.Errorf("%s is not valid:\n%w", fs.Arg(0), err)
	}
	if err := cat.Describe(stdout); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "\n%s is valid: %d tokens, %d keys\n", fs.Arg(0), len(cat.Tokens), len(cat.Keys))
	return nil
}
