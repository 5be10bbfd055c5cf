package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/tokenkeeper/tokenkeeper/internal/fakerdp"
)

var fakeSettings = []setting{
	{env: "FAKE_RDP_LISTEN", def: ":9090", usage: "listen address of the fake RDP"},
	{env: "FAKE_RDP_TOKEN_LIFETIME", def: "60m", usage: "lifetime of the liveness tokens it issues"},
	{env: "FAKE_RDP_CLIENT_ID", def: fakerdp.ClientID, usage: "client id (v2) or app key (v1) it accepts"},
	{env: "FAKE_RDP_CLIENT_SECRET", def: fakerdp.ClientSecret, usage: "client secret it accepts", secret: true},
}

// runFakeRDP serves the fake RDP until ctx ends.
func runFakeRDP(ctx context.Context, args []string, getenv func(string) string, stderr io.Writer) error {
	v, err := load("fake-rdp", fakeSettings, args, getenv, os.ReadFile, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if err != nil {
		return err
	}
	lifetime := v.duration("FAKE_RDP_TOKEN_LIFETIME")
	if err := v.err(); err != nil {
		return configError(err)
	}
	fake := fakerdp.New(fakerdp.Config{
		ClientID:     v.str("FAKE_RDP_CLIENT_ID"),
		ClientSecret: v.m["FAKE_RDP_CLIENT_SECRET"],
		Knobs:        fakerdp.Knobs{TokenLifetime: lifetime},
	})
	ln, err := net.Listen("tcp", v.str("FAKE_RDP_LISTEN"))
	if err != nil {
		return fmt.Errorf("FAKE_RDP_LISTEN: %w", err)
	}
	log := slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{ReplaceAttr: readableDurations}))
	log.Info("fake RDP listening: a test double, not the real platform", "addr", ln.Addr().String(), "token_lifetime", lifetime)
	return serveHTTP(ctx, ln, fake)
}

// serveHTTP serves h on ln until ctx ends, then shuts down gracefully.
func serveHTTP(ctx context.Context, ln net.Listener, h http.Handler) error {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second, IdleTimeout: time.Minute}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return err
	}
	return nil
}
