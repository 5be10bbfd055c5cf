package client_test

import (
	"context"
	"crypto/tls"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tokenkeeper/tokenkeeper/client"
	"github.com/tokenkeeper/tokenkeeper/internal/tlstest"
)

// A service that asks for client certificates of its CA: the client
// verifies it with CAFile and presents CertFile; the certificate alone
// is enough, the key is sent when there is one.
func TestTLSWithCAFileAndClientCertificate(t *testing.T) {
	ca := tlstest.NewCA(t, "service CA")
	dir := t.TempDir()
	caFile := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caFile, ca.PEM, 0o600); err != nil {
		t.Fatal(err)
	}
	server := ca.Issue(t, tlstest.Options{CommonName: "tokenkeeper"})
	clientDir := t.TempDir()
	certFile, keyFile := ca.Issue(t, tlstest.Options{CommonName: "mesh-gateway", Client: true}).Write(t, clientDir)

	var gotCN, gotAuth string
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if len(r.TLS.PeerCertificates) > 0 {
			gotCN = r.TLS.PeerCertificates[0].Subject.CommonName
		}
		gotAuth = r.Header.Get("Authorization")
		writeToken(w, testToken, 3600)
	}))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{server.TLS}, ClientCAs: ca.Pool(), ClientAuth: tls.VerifyClientCertIfGiven}
	srv.StartTLS()
	t.Cleanup(srv.Close)

	c, err := client.New(client.Config{Endpoints: []string{srv.URL}, CAFile: caFile, CertFile: certFile, KeyFile: keyFile})
	if err != nil {
		t.Fatal(err)
	}
	tok, err := c.Token(context.Background(), "liveness")
	if err != nil {
		t.Fatal(err)
	}
	if tok.Value != testToken || gotCN != "mesh-gateway" || gotAuth != "" {
		t.Errorf("token %q, client certificate %q, Authorization %q; want the token, mesh-gateway and none", tok.Value, gotCN, gotAuth)
	}

	withKey, err := client.New(client.Config{Endpoints: []string{srv.URL}, CAFile: caFile, Key: testKey})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := withKey.Token(context.Background(), "liveness"); err != nil {
		t.Fatal(err)
	}
	if gotAuth != "Bearer "+testKey {
		t.Errorf("Authorization %q, want the key", gotAuth)
	}

	untrusting, err := client.New(client.Config{Endpoints: []string{srv.URL}, Key: testKey})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := untrusting.Token(context.Background(), "liveness"); err == nil {
		t.Error("a client without CAFile trusted the service's private CA")
	}
}

func TestTLSOptionsAreChecked(t *testing.T) {
	dir := t.TempDir()
	garbage := filepath.Join(dir, "garbage.pem")
	if err := os.WriteFile(garbage, []byte("no"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		cfg  client.Config
		want string
	}{
		{"no key, no certificate", client.Config{}, "Key is required (or CertFile"},
		{"certificate without key file", client.Config{CertFile: garbage}, "CertFile and KeyFile go together"},
		{"CA file not PEM", client.Config{Key: testKey, CAFile: garbage}, "holds no PEM certificate"},
		{"CA file missing", client.Config{Key: testKey, CAFile: filepath.Join(dir, "absent")}, "CAFile"},
		{"own HTTP client", client.Config{Key: testKey, CAFile: garbage, HTTPClient: http.DefaultClient}, "set TLS on your own client"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.cfg.Endpoints = []string{"https://tokenkeeper.internal"}
			_, err := client.New(tc.cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("New: %v, want an error with %q", err, tc.want)
			}
		})
	}
}
