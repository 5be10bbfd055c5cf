package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
)

// commit is the build's VCS revision: set with -ldflags "-X main.commit=...",
// as scripts/release.sh and the Dockerfiles do; else the revision Go
// recorded (a build inside a checkout without -buildvcs=false); else
// "unknown". version and buildVersion are in metrics.go.
var commit string

// buildCommit returns the revision the binary was built from, marked
// "-dirty" when Go recorded uncommitted changes.
func buildCommit() string {
	if commit != "" {
		return commit
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	rev, dirty := "", false
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	switch {
	case rev == "":
		return "unknown"
	case dirty:
		return rev + "-dirty"
	}
	return rev
}

// runVersion prints what the binary is: its version, the commit it was
// built from, the Go that built it and the platform.
func runVersion(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("version", flag.ContinueOnError)
	fs.SetOutput(stderr)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	goVersion := runtime.Version()
	if bi, ok := debug.ReadBuildInfo(); ok && bi.GoVersion != "" {
		goVersion = bi.GoVersion
	}
	_, err := fmt.Fprintf(stdout, "tokenkeeper %s\ncommit:   %s\ngo:       %s\nplatform: %s/%s\n",
		buildVersion(), buildCommit(), goVersion, runtime.GOOS, runtime.GOARCH)
	return err
}
