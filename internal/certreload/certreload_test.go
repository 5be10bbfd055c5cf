package certreload_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokenkeeper/tokenkeeper/internal/certreload"
	"github.com/tokenkeeper/tokenkeeper/internal/clocktest"
	"github.com/tokenkeeper/tokenkeeper/internal/tlstest"
)

// newFakeNow is a clock moved by hand.
func newFakeNow() *clocktest.Fake { return clocktest.New(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)) }

// syncBuffer is a log sink safe for concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// server starts an HTTPS server of r's certificate and returns its URL.
func server(t *testing.T, r *certreload.Reloader) string {
	t.Helper()
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, "ok")
	}))
	// Not StartTLS: its own certificate would take precedence over
	// GetCertificate.
	srv.Listener = tls.NewListener(srv.Listener, certreload.ServerConfig(r, nil))
	srv.Start()
	t.Cleanup(srv.Close)
	return "https://" + srv.Listener.Addr().String()
}

// get asks url with client and returns the serial of the server's
// certificate and whether the connection was one already open.
func get(t *testing.T, client *http.Client, url string) (serial string, reused bool) {
	t.Helper()
	ctx := httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{
		GotConn: func(i httptrace.GotConnInfo) { reused = i.Reused },
	})
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	if _, err := io.ReadAll(resp.Body); err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET: %s", resp.Status)
	}
	return resp.TLS.PeerCertificates[0].SerialNumber.String(), reused
}

func newClient(ca *tlstest.CA) *http.Client {
	return &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.Pool()}}}
}

func TestRotationReachesNewHandshakesAndKeepsOpenConnections(t *testing.T) {
	ca := tlstest.NewCA(t, "test CA")
	first, second := ca.Issue(t, tlstest.Options{CommonName: "first"}), ca.Issue(t, tlstest.Options{CommonName: "second"})
	dir := t.TempDir()
	certFile, keyFile := first.Write(t, dir)
	clock := newFakeNow()
	var logs syncBuffer
	r, err := certreload.New(certreload.Config{CertFile: certFile, KeyFile: keyFile, Clock: clock,
		Logger: slog.New(slog.NewJSONHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	url := server(t, r)

	kept := newClient(ca)
	if got, _ := get(t, kept, url); got != first.Leaf.SerialNumber.String() {
		t.Fatalf("first handshake: serial %s, want the first certificate's %s", got, first.Leaf.SerialNumber)
	}

	second.Write(t, dir)
	if got, _ := get(t, newClient(ca), url); got != first.Leaf.SerialNumber.String() {
		t.Errorf("before the interval has passed: serial %s, want still the first %s", got, first.Leaf.SerialNumber)
	}
	clock.Advance(certreload.DefaultInterval)
	if got, _ := get(t, newClient(ca), url); got != second.Leaf.SerialNumber.String() {
		t.Errorf("new handshake after the interval: serial %s, want the second certificate's %s", got, second.Leaf.SerialNumber)
	}
	got, reused := get(t, kept, url)
	if !reused {
		t.Error("the open connection was not reused: the rotation cut it")
	}
	if got != first.Leaf.SerialNumber.String() {
		t.Errorf("open connection: serial %s, want the first %s it was made with", got, first.Leaf.SerialNumber)
	}
	if !strings.Contains(logs.String(), "certificate reloaded") {
		t.Errorf("no reload logged: %s", logs.String())
	}
}

func TestBadPairAtStartIsAnError(t *testing.T) {
	ca := tlstest.NewCA(t, "test CA")
	good, other := ca.Issue(t, tlstest.Options{CommonName: "good"}), ca.Issue(t, tlstest.Options{CommonName: "other"})
	dir := t.TempDir()
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	goodCert, goodKey := write("good.pem", good.CertPEM), write("good.key", good.KeyPEM)
	otherKey := write("other.key", other.KeyPEM)
	garbage := write("garbage.pem", []byte("not a certificate\n"))
	for _, tc := range []struct {
		name, cert, key, want string
	}{
		{"missing certificate", filepath.Join(dir, "absent.pem"), goodKey, "absent.pem"},
		{"missing key", goodCert, filepath.Join(dir, "absent.key"), "absent.key"},
		{"not PEM", garbage, goodKey, "garbage.pem"},
		{"key of another certificate", goodCert, otherKey, "other.key"},
		{"no certificate file", "", goodKey, "no certificate file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := certreload.New(certreload.Config{CertFile: tc.cert, KeyFile: tc.key})
			if err == nil {
				t.Fatal("New accepted the pair")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not name %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "PRIVATE KEY") {
				t.Errorf("error %q quotes the key", err)
			}
		})
	}
}

func TestBadPairAtReloadKeepsTheOldCertificate(t *testing.T) {
	ca := tlstest.NewCA(t, "test CA")
	first, second := ca.Issue(t, tlstest.Options{CommonName: "first"}), ca.Issue(t, tlstest.Options{CommonName: "second"})
	dir := t.TempDir()
	certFile, keyFile := first.Write(t, dir)
	clock := newFakeNow()
	var logs syncBuffer
	r, err := certreload.New(certreload.Config{CertFile: certFile, KeyFile: keyFile, Clock: clock,
		Logger: slog.New(slog.NewJSONHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	url := server(t, r)

	// Half a rotation: the new certificate beside the old key.
	tlstest.WriteFile(t, certFile, second.CertPEM)
	clock.Advance(certreload.DefaultInterval)
	if got, _ := get(t, newClient(ca), url); got != first.Leaf.SerialNumber.String() {
		t.Errorf("with a mismatched pair: serial %s, want the first %s", got, first.Leaf.SerialNumber)
	}
	if !strings.Contains(logs.String(), "not loaded") || !strings.Contains(logs.String(), "private key does not match") {
		t.Errorf("the refusal is not logged with its reason: %s", logs.String())
	}
	if strings.Contains(logs.String(), "PRIVATE KEY") {
		t.Error("the log quotes the key")
	}
	tlstest.WriteFile(t, certFile, []byte("garbage"))
	if ok, err := r.Check(); ok || err == nil {
		t.Errorf("Check with a garbage certificate = %v, %v; want false and an error", ok, err)
	}

	second.Write(t, dir)
	clock.Advance(certreload.DefaultInterval)
	if got, _ := get(t, newClient(ca), url); got != second.Leaf.SerialNumber.String() {
		t.Errorf("once the pair is whole: serial %s, want the second %s", got, second.Leaf.SerialNumber)
	}
}

func TestServerConfig(t *testing.T) {
	ca := tlstest.NewCA(t, "test CA")
	p := ca.Issue(t, tlstest.Options{CommonName: "s"})
	dir := t.TempDir()
	certFile, keyFile := p.Write(t, dir)
	r, err := certreload.New(certreload.Config{CertFile: certFile, KeyFile: keyFile})
	if err != nil {
		t.Fatal(err)
	}
	url := server(t, r)
	old := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{
		RootCAs: ca.Pool(), MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS11,
	}}}
	if resp, err := old.Get(url); err == nil {
		resp.Body.Close()
		t.Error("a TLS 1.1 client was served")
	}
	cfg := certreload.ServerConfig(r, x509.NewCertPool())
	if cfg.MinVersion != tls.VersionTLS12 || cfg.ClientAuth != tls.VerifyClientCertIfGiven {
		t.Errorf("ServerConfig: MinVersion %x, ClientAuth %v", cfg.MinVersion, cfg.ClientAuth)
	}
}

// TestReloadTimeFigure measures, on the real clock, how long a rotated
// pair takes to reach new handshakes at the default interval: at most
// the interval, plus a read and a parse.
func TestReloadTimeFigure(t *testing.T) {
	if testing.Short() {
		t.Skip("figure only")
	}
	ca := tlstest.NewCA(t, "test CA")
	first, second := ca.Issue(t, tlstest.Options{CommonName: "first"}), ca.Issue(t, tlstest.Options{CommonName: "second"})
	dir := t.TempDir()
	certFile, keyFile := first.Write(t, dir)
	r, err := certreload.New(certreload.Config{CertFile: certFile, KeyFile: keyFile})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", certreload.ServerConfig(r, nil))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { c.(*tls.Conn).Handshake(); c.Close() }()
		}
	}()
	want := second.Leaf.SerialNumber.String()
	start := time.Now()
	second.Write(t, dir)
	for time.Since(start) < 10*time.Second {
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: time.Second}, "tcp", ln.Addr().String(), &tls.Config{RootCAs: ca.Pool(), ServerName: "localhost"})
		if err != nil {
			t.Fatal(err)
		}
		got := c.ConnectionState().PeerCertificates[0].SerialNumber.String()
		c.Close()
		if got == want {
			t.Logf("FIGURE certificate reload: a rotated pair reached new handshakes %v after the files changed (interval %v)",
				time.Since(start).Round(time.Millisecond), certreload.DefaultInterval)
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("the rotated certificate never reached a handshake")
}
