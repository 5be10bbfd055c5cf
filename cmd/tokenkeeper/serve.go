package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
)

func runServe(ctx context.Context, args []string, getenv func(string) string, stderr io.Writer) error {
	cfg, err := parseServe(args, getenv, os.ReadFile, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if err != nil {
		return configError(err)
	}
	log := newLogger(stderr, cfg.LogFormat, cfg.LogLevel)
	if cfg.AllowAnonymous {
		log.Warn("anonymous reads are enabled: anyone who reaches this service can read the token")
	}
	if cfg.AllowWeakKeys {
		log.Warn("weak keys are allowed (TOKENKEEPER_ALLOW_WEAK_KEYS): a key of less than 128 bits of randomness can be guessed; for demos only")
	}
	p, err := NewProgram(cfg, log, nil)
	if err != nil {
		return configError(err)
	}
	defer p.Close()
	return p.Run(ctx)
}

// configError lists every problem on a line of its own.
func configError(err error) error {
	var lines []string
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		for _, e := range j.Unwrap() {
			lines = append(lines, "  - "+e.Error())
		}
	} else {
		lines = append(lines, "  - "+err.Error())
	}
	return fmt.Errorf("invalid configuration:\n%s", strings.Join(lines, "\n"))
}

func newLogger(w io.Writer, format string, level slog.Level) *slog.Logger {
	opts := &slog.HandlerOptions{Level: level, ReplaceAttr: readableDurations}
	if format == "text" {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}

// readableDurations writes durations as "1m30s" rather than nanoseconds.
func readableDurations(_ []string, a slog.Attr) slog.Attr {
	if a.Value.Kind() == slog.KindDuration {
		return slog.String(a.Key, a.Value.Duration().String())
	}
	return a
}
