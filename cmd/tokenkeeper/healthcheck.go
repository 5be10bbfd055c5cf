package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/tokenkeeper/tokenkeeper/internal/certreload"
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
	url := fs.String("url", "", "URL to check (default http://127.0.0.1:<port of TOKENKEEPER_LISTEN>/readyz, https:// when TOKENKEEPER_TLS_CERT is set)")
	timeout := fs.Duration("timeout", 2*time.Second, "give up after this long")
	ca := fs.String("ca", "", "PEM file of the CA to verify an https:// server with (default: the certificate of TOKENKEEPER_TLS_CERT is expected, as served by this host's replica)")
	serverName := fs.String("server-name", "", "name the server's certificate must carry, with --ca (default: the URL's host)")
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
		scheme := "http://"
		if getenv("TOKENKEEPER_TLS_CERT") != "" {
			scheme = "https://"
		}
		*url = scheme + dialable(listen, "127.0.0.1") + "/readyz"
	}
	client, err := healthClient(*ca, *serverName, getenv("TOKENKEEPER_TLS_CERT"))
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, *url, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
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

// healthClient is the client of the check: for https://, it verifies the
// server against caFile (as serverName when set), or else expects exactly
// the certificate in certFile, the one this host's replica serves, which
// need not name 127.0.0.1.
func healthClient(caFile, serverName, certFile string) (*http.Client, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: serverName}
	switch {
	case caFile != "":
		pool, err := certreload.LoadCAs(caFile, nil)
		if err != nil {
			return nil, fmt.Errorf("healthcheck: --ca: %s", strings.TrimPrefix(err.Error(), "certreload: "))
		}
		cfg.RootCAs = pool
	case certFile != "":
		// The replica may not have reloaded a rotated file yet: the check
		// reads the file at each handshake, and a mismatch fails the one
		// check, not the next.
		cfg.InsecureSkipVerify = true // verified below, against the file
		cfg.VerifyConnection = func(cs tls.ConnectionState) error {
			return servesFile(cs, certFile)
		}
	}
	return &http.Client{Transport: &http.Transport{TLSClientConfig: cfg, Proxy: nil}}, nil
}

// servesFile checks that the server presented the leaf certificate of the
// PEM file certFile.
func servesFile(cs tls.ConnectionState, certFile string) error {
	b, err := os.ReadFile(certFile)
	if err != nil {
		return fmt.Errorf("TOKENKEEPER_TLS_CERT: %w", err)
	}
	block, _ := pem.Decode(b)
	if block == nil || block.Type != "CERTIFICATE" {
		return fmt.Errorf("TOKENKEEPER_TLS_CERT: %s holds no PEM certificate", certFile)
	}
	if len(cs.PeerCertificates) == 0 || !bytes.Equal(cs.PeerCertificates[0].Raw, block.Bytes) {
		return errors.New("the server does not present the certificate of TOKENKEEPER_TLS_CERT")
	}
	return nil
}
