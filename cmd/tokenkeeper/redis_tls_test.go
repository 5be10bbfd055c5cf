//go:build realredis

package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokenkeeper/tokenkeeper"
	"github.com/tokenkeeper/tokenkeeper/internal/fakerdp"
	"github.com/tokenkeeper/tokenkeeper/internal/testkit"
)

// minimalACL is the least a replica needs, as documented in the README:
// its own keys and channel, the fleet's hash of live replicas, and the commands it and its scripts run.
const minimalACL = "user tokenkeeper on >tk-redis-password resetkeys ~tokenkeeper:{liveness}:* ~tokenkeeper:replicas " +
	"resetchannels &tokenkeeper:{liveness}:events -@all " +
	"+ping +hello +auth +client|setname +select +command|info " +
	"+eval +evalsha +eval_ro +evalsha_ro +script|load " +
	"+get +mget +set +del +getrange +pexpire +pttl +time " +
	"+hget +hmget +hset +pexpireat " +
	"+zadd +zcard +zrange +zremrangebyscore +hgetall +hdel +lpush +ltrim +lrange " +
	"+publish +subscribe +unsubscribe"

// TestRedisTLSAndACL runs a replica against a real redis-server that only
// speaks TLS, demands a client certificate and knows the replica as an ACL
// user limited to the service's own keys and channel.
func TestRedisTLSAndACL(t *testing.T) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatalf("redis-server is needed by this test (apt-get install redis-server): %v", err)
	}
	dir := t.TempDir()
	ca, caKey := newCA(t)
	writePEM(t, filepath.Join(dir, "ca.pem"), "CERTIFICATE", ca.Raw)
	issue(t, dir, "server", ca, caKey, x509.ExtKeyUsageServerAuth)
	issue(t, dir, "client", ca, caKey, x509.ExtKeyUsageClientAuth)

	port := freePort(t)
	conf := strings.Join([]string{
		"port 0",
		fmt.Sprintf("tls-port %d", port),
		"bind 127.0.0.1",
		"tls-cert-file " + filepath.Join(dir, "server.pem"),
		"tls-key-file " + filepath.Join(dir, "server-key.pem"),
		"tls-ca-cert-file " + filepath.Join(dir, "ca.pem"),
		"tls-auth-clients yes",
		"save \"\"",
		"appendonly no",
		"dir " + dir,
		"user default on >admin-password ~* &* +@all",
		minimalACL,
	}, "\n")
	confFile := filepath.Join(dir, "redis.conf")
	if err := os.WriteFile(confFile, []byte(conf+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, confFile)
	out, _ := os.Create(filepath.Join(dir, "redis.log"))
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			log, _ := os.ReadFile(filepath.Join(dir, "redis.log"))
			t.Logf("redis-server log:\n%s", log)
		}
	})
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	testkit.Eventually(t, 10*time.Second, "redis-server listening", func() bool {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		return err == nil
	})

	fake := fakerdp.New(fakerdp.Config{Knobs: fakerdp.Knobs{TokenLifetime: time.Hour}})
	rdp := httptest.NewServer(fake)
	t.Cleanup(rdp.Close)
	env := map[string]string{
		"TOKENKEEPER_LISTEN":         "127.0.0.1:0",
		"TOKENKEEPER_REDIS_URL":      "rediss://tokenkeeper:tk-redis-password@" + addr + "/0",
		"TOKENKEEPER_REDIS_TLS_CA":   filepath.Join(dir, "ca.pem"),
		"TOKENKEEPER_REDIS_TLS_CERT": filepath.Join(dir, "client.pem"),
		"TOKENKEEPER_REDIS_TLS_KEY":  filepath.Join(dir, "client-key.pem"),
		"TOKENKEEPER_API_KEYS":       testReaderKey,
		"TOKENKEEPER_ADMIN_KEYS":     testAdminKey,
		"TOKENKEEPER_INSTANCE_ID":    "tls-1",
		"TOKENKEEPER_LOCK_TTL":       "1s",
		"RDP_BASE_URL":               rdp.URL,
		"RDP_CLIENT_ID":              fakerdp.ClientID,
		"RDP_CLIENT_SECRET":          fakerdp.ClientSecret,
	}
	cfg, err := parseServe(nil, func(k string) string { return env[k] }, os.ReadFile, os.Stderr)
	if err != nil {
		t.Fatal(err)
	}
	logs := &testkit.Buffer{}
	p, err := NewProgram(cfg, slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})), nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done; p.Close() })

	testkit.Eventually(t, 10*time.Second, "a token over TLS with the minimal ACL", func() bool {
		_, ok := p.keeper.Current(tokenkeeper.Name)
		return ok
	})
	// The admin refresh goes through pub/sub and the scripts too.
	req, _ := http.NewRequest(http.MethodPost, "http://"+p.Addr()+"/v1/tokens/liveness/refresh", nil)
	req.Header.Set("Authorization", "Bearer "+testAdminKey)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("admin refresh over TLS: got %d, want 200", resp.StatusCode)
	}

	// The periodic work runs through the ACL too: heartbeats and the
	// refresh history are read back, and the leader keeps its lock past
	// its TTL, so renewals pass.
	started := time.Now()
	testkit.Eventually(t, 10*time.Second, "heartbeat, history and renewals through the ACL", func() bool {
		st, err := p.keeper.Status(context.Background())
		return err == nil && len(st[0].Replicas) == 1 && st[0].Replicas[0].Ready && len(st[0].Refreshes) >= 2 &&
			time.Since(started) > 2*cfg.LockTTL && p.keeper.IsLeader()
	})
	if out := logs.String(); strings.Contains(out, "NOPERM") || strings.Contains(out, "can't run this command") {
		t.Fatalf("the minimal ACL refused something the replica needs:\n%s", out)
	}

	// The ACL user reaches nothing else.
	aclClient := redis.NewClient(&redis.Options{Addr: addr, Username: "tokenkeeper", Password: "tk-redis-password", TLSConfig: cfg.Redis.TLSConfig})
	defer aclClient.Close()
	if err := aclClient.Get(context.Background(), "someone-else:secret").Err(); err == nil || !strings.Contains(err.Error(), "NOPERM") {
		t.Fatalf("ACL user reading another key: got %v, want NOPERM", err)
	}
	if err := aclClient.Publish(context.Background(), "other-channel", "x").Err(); err == nil || !strings.Contains(err.Error(), "NOPERM") {
		t.Fatalf("ACL user publishing elsewhere: got %v, want NOPERM", err)
	}
	// Without a client certificate, or without TLS, no connection.
	noCert := cfg.Redis.TLSConfig.Clone()
	noCert.Certificates = nil
	for name, opt := range map[string]*redis.Options{
		"no client certificate": {Addr: addr, Username: "tokenkeeper", Password: "tk-redis-password", TLSConfig: noCert, MaxRetries: -1},
		"plain TCP":             {Addr: addr, Username: "tokenkeeper", Password: "tk-redis-password", MaxRetries: -1, DialTimeout: time.Second, ReadTimeout: time.Second},
	} {
		c := redis.NewClient(opt)
		if err := c.Ping(context.Background()).Err(); err == nil {
			t.Errorf("%s: connected, want refused", name)
		}
		c.Close()
	}
}

func newCA(t *testing.T) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "tokenkeeper test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return ca, key
}

func issue(t *testing.T, dir, name string, ca *x509.Certificate, caKey *ecdsa.PrivateKey, usage x509.ExtKeyUsage) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, DNSNames: []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	writePEM(t, filepath.Join(dir, name+".pem"), "CERTIFICATE", der)
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	writePEM(t, filepath.Join(dir, name+"-key.pem"), "EC PRIVATE KEY", kder)
	if _, err := tls.LoadX509KeyPair(filepath.Join(dir, name+".pem"), filepath.Join(dir, name+"-key.pem")); err != nil {
		t.Fatal(err)
	}
}

func writePEM(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}
