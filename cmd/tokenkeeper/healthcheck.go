package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"
)

// runHealthcheck asks the local replica's /readyz, for images without a
// shell: nil (exit 0) when ready.
func runHealthcheck(ctx context.Context, args []string, getenv func(string) string, stderr io.Writer) error {
	fs := flag.NewFlagSet("healthcheck", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := getenv("TOKENKEEPER_LISTEN")
	if listen == "" {
		listen = ":8080"
	}
	url := fs.String("url", "", "URL to check (default http://127.0.0.1:<port of TOKENKEEPER_LISTEN>/readyz)")
	timeout := fs.Duration("timeout", 2*time.Second, "give up after this long")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if *url == "" {
		if _, _, err := net.SplitHostPort(listen); err != nil {
			return fmt.Errorf("TOKENKEEPER_LISTEN: %q is not host:port", listen)
		}
		*url = "http://" + dialable(listen, "127.0.0.1") + "/readyz"
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, *url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("healthcheck: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("healthcheck: not ready: %s", resp.Status)
	}
	return nil
}

// dialable turns a listen address into one a client on this host can
// reach: an unspecified host (":8080", "0.0.0.0", "::") becomes local.
func dialable(listen, local string) string {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return listen
	}
	if host == "" || net.ParseIP(host).IsUnspecified() {
		host = local
	}
	return net.JoinHostPort(host, port)
}
