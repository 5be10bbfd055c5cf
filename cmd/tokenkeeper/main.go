// Command tokenkeeper keeps tokens for a fleet of replicas: the liveness
// token, or a catalog of named tokens (TOKENKEEPER_CONFIG).
//
//	tokenkeeper serve        run a replica (production)
//	tokenkeeper demo         run a replica with an in-process Redis and a fake RDP
//	tokenkeeper fake-rdp     run the fake RDP on its own
//	tokenkeeper healthcheck  exit 0 when the local replica is ready
//	tokenkeeper status       the fleet as Redis records it: leader, replicas, last refreshes
//	tokenkeeper config check [--offline] FILE  validate a token catalog file and print it, never its secrets
//
// # Signals
//
// SIGTERM, SIGINT (Ctrl-C) and SIGHUP all stop a replica gracefully: a
// leader releases the lock and announces it, so another replica leads at
// once; the HTTP server drains (TOKENKEEPER_SHUTDOWN_DRAIN) and finishes the
// requests in flight; the process exits 0. SIGHUP does not reload the
// configuration (nothing in it could be reloaded safely): it stops the
// replica like SIGTERM, where its default action would kill the process and
// leave a leader's lock to expire.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// shutdownSignals stop the process gracefully (see the package comment).
var shutdownSignals = []os.Signal{os.Interrupt, syscall.SIGTERM, syscall.SIGHUP}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), shutdownSignals...)
	code := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

const usage = `usage: tokenkeeper <command> [flags]

commands:
  serve        run a replica: needs TOKENKEEPER_REDIS_URL, TOKENKEEPER_API_KEYS and RDP credentials
  demo         try it with nothing installed: in-process Redis and a fake RDP
  fake-rdp     run the fake RDP server on its own (tests, compose stack)
  healthcheck  exit 0 if the replica on TOKENKEEPER_LISTEN is ready, else 1
  status       the fleet from Redis: leader, replicas and last refreshes (--json for JSON;
               every token of TOKENKEEPER_CONFIG, or --token NAME for each)
  config check [--offline] FILE
               validate a token catalog file (TOKENKEEPER_CONFIG) and print what it describes;
               --offline checks all but the secrets' values (CI)
  version      print the version, the commit and the Go version of this build

Run 'tokenkeeper <command> -h' for the flags of a command.

SIGTERM, SIGINT and SIGHUP stop a replica gracefully: a leader releases the
lock and the drain runs. SIGHUP does not reload the configuration.
`

// run executes one command and returns the process exit code.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	var err error
	switch cmd, rest := args[0], args[1:]; cmd {
	case "serve":
		err = runServe(ctx, rest, getenv, stderr)
	case "demo":
		err = runDemo(ctx, rest, getenv, stdout, stderr)
	case "fake-rdp":
		err = runFakeRDP(ctx, rest, getenv, stderr)
	case "healthcheck":
		err = runHealthcheck(ctx, rest, getenv, stderr)
	case "status":
		err = runStatus(ctx, rest, getenv, stdout, stderr)
	case "config":
		err = runConfig(ctx, rest, getenv, stdout, stderr)
	case "version":
		err = runVersion(rest, stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "tokenkeeper: unknown command %q\n\n%s", cmd, usage)
		return 2
	}
	if err != nil {
		fmt.Fprintf(stderr, "tokenkeeper: %v\n", err)
		return 1
	}
	return 0
}
