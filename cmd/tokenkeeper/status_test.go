package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"maps"
	"net"
	"net/http/httptest"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokenkeeper/tokenkeeper"
	"github.com/tokenkeeper/tokenkeeper/internal/fakerdp"
	"github.com/tokenkeeper/tokenkeeper/internal/redistest"
	"github.com/tokenkeeper/tokenkeeper/internal/testkit"
)

// TestStatusCommand runs `tokenkeeper status` against the Redis of two
// running replicas: the table and the JSON name the leader, both
// replicas, ready, and the refresh that stored their token.
func TestStatusCommand(t *testing.T) {
	srv := redistest.NewMini(t)
	fake := fakerdp.New(fakerdp.Config{Knobs: fakerdp.Knobs{TokenLifetime: time.Minute}})
	rdp := httptest.NewServer(fake)
	t.Cleanup(rdp.Close)
	tm := fleetTimings{lifetime: time.Minute, before: 10 * time.Second, margin: 2 * time.Second, lockTTL: time.Second}
	a := startReplica(t, "replica-a", srv.Addr, rdp.URL, tm)
	b := startReplica(t, "replica-b", srv.Addr, rdp.URL, tm)
	env := map[string]string{"TOKENKEEPER_REDIS_URL": "redis://" + srv.Addr}
	getenv := func(k string) string { return env[k] }
	status := func(args ...string) (string, string, int) {
		var stdout, stderr bytes.Buffer
		code := run(context.Background(), append([]string{"status"}, args...), getenv, &stdout, &stderr)
		return stdout.String(), stderr.String(), code
	}

	var out fleetJSON
	testkit.Eventually(t, 5*time.Second, "both replicas ready in `status --json`", func() bool {
		stdout, stderr, code := status("--json")
		if code != 0 {
			t.Fatalf("status --json: exit %d: %s", code, stderr)
		}
		out = fleetJSON{}
		if err := json.Unmarshal([]byte(stdout), &out); err != nil {
			t.Fatalf("status --json: %v\n%s", err, stdout)
		}
		ready := 0
		for _, r := range out.Replicas {
			if r.Ready {
				ready++
			}
		}
		return ready == 2 && len(out.Refreshes) > 0
	})
	leader := a
	if b.p.keeper.IsLeader() {
		leader = b
	}
	if out.Leader != leader.name {
		t.Errorf("leader = %q, want %q", out.Leader, leader.name)
	}
	if out.Refreshes[len(out.Refreshes)-1].Outcome != "success" {
		t.Errorf("first refresh = %+v, want a success", out.Refreshes[len(out.Refreshes)-1])
	}

	table, stderr, code := status()
	if code != 0 {
		t.Fatalf("status: exit %d: %s", code, stderr)
	}
	for _, want := range []string{"leader:    " + leader.name, "2 alive, 2 ready", "replica-a", "replica-b", "INSTANCE", "UPSTREAM", "success", "sha256:"} {
		if !strings.Contains(table, want) {
			t.Errorf("status table lacks %q:\n%s", want, table)
		}
	}
	if strings.Contains(table, "fake-liveness-") {
		t.Errorf("status shows a token:\n%s", table)
	}

	// Without Redis settings, or with Redis gone, it says so and exits 1.
	delete(env, "TOKENKEEPER_REDIS_URL")
	if _, stderr, code := status(); code != 1 || !strings.Contains(stderr, "TOKENKEEPER_REDIS_URL") {
		t.Errorf("without a URL: exit %d, stderr %q; want 1 naming TOKENKEEPER_REDIS_URL", code, stderr)
	}
	env["TOKENKEEPER_REDIS_URL"] = "redis://:secret-password@127.0.0.1:1"
	if _, stderr, code := status("--timeout=1s"); code != 1 || strings.Contains(stderr, "secret-password") {
		t.Errorf("unreachable Redis: exit %d, stderr %q; want 1 without the password", code, stderr)
	}
}

// statusCatalogFile writes a catalog of two tokens from the fake upstream
// at rdpURL: liveness (RDP, its secret in $STATUS_RDP_SECRET) and partner
// (OAuth2, its secret in a file), an admin key in $STATUS_OPS_KEY and a
// reader key in $STATUS_APP_KEY.
func statusCatalogFile(t *testing.T, rdpURL string) string {
	t.Helper()
	return writeCatalogFile(t, rdpURL, "STATUS_RDP_SECRET", statusPartnerSecret, `keys:
  - name: ops
    role: admin
    key: ${STATUS_OPS_KEY}
  - name: app
    key: ${STATUS_APP_KEY}
`)
}

const (
	statusPartnerSecret = "status-partner-secret-3c9e"
	statusOpsKey        = "status-ops-key-a41f7c2e9b3d"
	statusAppKey        = "status-app-key-77d0b4e1c9f2"
)

// startCatalogReplica runs a replica of the catalog in env, named name.
func startCatalogReplica(t *testing.T, name string, env map[string]string) *Program {
	t.Helper()
	renv := maps.Clone(env)
	renv["TOKENKEEPER_INSTANCE_ID"] = name
	renv["TOKENKEEPER_LISTEN"] = "127.0.0.1:0"
	renv["TOKENKEEPER_LOCK_TTL"] = "1s"
	renv["TOKENKEEPER_POLL_INTERVAL"] = "200ms"
	cfg, err := parseServe(nil, func(k string) string { return renv[k] }, os.ReadFile, io.Discard)
	if err != nil {
		t.Fatalf("parseServe: %v", err)
	}
	p, err := NewProgram(cfg, quiet.With("replica", name), nil)
	if err != nil {
		t.Fatalf("NewProgram: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done; p.Close() })
	return p
}

// recordingProxy forwards connections to target and keeps what clients
// sent, so a test can tell which commands were used.
type recordingProxy struct {
	addr string
	mu   sync.Mutex
	sent bytes.Buffer
}

func newRecordingProxy(t *testing.T, target string) *recordingProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &recordingProxy{addr: ln.Addr().String()}
	var wg sync.WaitGroup
	var conns []net.Conn
	var connsMu sync.Mutex
	t.Cleanup(func() {
		ln.Close()
		connsMu.Lock()
		for _, c := range conns {
			c.Close()
		}
		connsMu.Unlock()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			connsMu.Lock()
			conns = append(conns, c, u)
			connsMu.Unlock()
			wg.Go(func() {
				io.Copy(u, io.TeeReader(c, p))
				u.Close()
			})
			wg.Go(func() {
				io.Copy(c, u)
				c.Close()
			})
		}
	})
	return p
}

func (p *recordingProxy) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.sent.Write(b)
}

// commands returns the lowercased bulk strings clients sent.
func (p *recordingProxy) commands() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.ToLower(p.sent.String())
}

// TestStatusCommandCatalog runs `tokenkeeper status` against two replicas
// keeping a catalog of two tokens: with TOKENKEEPER_CONFIG (secrets
// present or absent) or --token, it shows every token, each with its
// leader, stored token and last refresh, in tables and in JSON, and names
// no key it was not given.
func TestStatusCommandCatalog(t *testing.T) {
	fake := fakerdp.New(fakerdp.Config{OAuth2ClientSecret: statusPartnerSecret})
	rdp := httptest.NewServer(fake)
	t.Cleanup(rdp.Close)
	srv := redistest.NewMini(t)
	file := statusCatalogFile(t, rdp.URL)
	replicaEnv := map[string]string{
		"TOKENKEEPER_CONFIG":    file,
		"TOKENKEEPER_REDIS_URL": "redis://" + srv.Addr,
		"STATUS_RDP_SECRET":     fakerdp.ClientSecret,
		"STATUS_OPS_KEY":        statusOpsKey,
		"STATUS_APP_KEY":        statusAppKey,
	}
	replicas := map[string]*Program{
		"cat-a": startCatalogReplica(t, "cat-a", replicaEnv),
		"cat-b": startCatalogReplica(t, "cat-b", replicaEnv),
	}
	proxy := newRecordingProxy(t, srv.Addr)

	// The operator's machine: the Redis URL and the file, not its secrets.
	env := map[string]string{"TOKENKEEPER_REDIS_URL": "redis://" + proxy.addr, "TOKENKEEPER_CONFIG": file}
	status := func(args ...string) (string, string, int) {
		var stdout, stderr bytes.Buffer
		code := run(context.Background(), append([]string{"status"}, args...), func(k string) string { return env[k] }, &stdout, &stderr)
		return stdout.String(), stderr.String(), code
	}
	statusJSON := func(args ...string) tokensJSON {
		t.Helper()
		stdout, stderr, code := status(append([]string{"--json"}, args...)...)
		if code != 0 {
			t.Fatalf("status --json %v: exit %d: %s", args, code, stderr)
		}
		var out tokensJSON
		if err := json.Unmarshal([]byte(stdout), &out); err != nil {
			t.Fatalf("status --json %v: %v\n%s", args, err, stdout)
		}
		return out
	}
	// leaderOf is the replica leading name and the fingerprint of the
	// token it serves.
	leaderOf := func(name string) (string, string) {
		for id, p := range replicas {
			if p.keeper.Leads(name) {
				tok, _ := p.keeper.Current(name)
				return id, tok.Fingerprint()
			}
		}
		return "", ""
	}

	var out tokensJSON
	testkit.Eventually(t, 10*time.Second, "both tokens led, stored and served by both replicas in `status --json`", func() bool {
		out = statusJSON()
		if len(out.Tokens) != 2 {
			t.Fatalf("status --json shows %d tokens, want 2: %+v", len(out.Tokens), out)
		}
		for _, tok := range out.Tokens {
			leader, fp := leaderOf(tok.Name)
			ready := 0
			for _, r := range tok.Replicas {
				if r.Ready {
					ready++
				}
			}
			if tok.Leader == "" || tok.Leader != leader || fp == "" || tok.TokenFingerprint != fp || tok.ExpiresIn <= 0 ||
				ready != 2 || len(tok.Refreshes) == 0 || tok.Refreshes[0].Outcome != "success" {
				return false
			}
		}
		return true
	})
	if out.Tokens[0].Name != "liveness" || out.Tokens[1].Name != "partner" {
		t.Errorf("tokens %q, %q: want the file's order, liveness then partner", out.Tokens[0].Name, out.Tokens[1].Name)
	}
	if out.GeneratedAt.IsZero() {
		t.Errorf("generated_at is missing")
	}
	// The stored tokens expire when the fake upstream said: in an hour.
	for _, tok := range out.Tokens {
		if tok.ExpiresIn < 3500 || tok.ExpiresIn > 3600 || tok.ExpiresAt.Location() != time.UTC {
			t.Errorf("token %s: expires_in %d at %v; want about an hour, in UTC", tok.Name, tok.ExpiresIn, tok.ExpiresAt)
		}
	}

	// The secrets are absent here, so the file does not resolve: status
	// says so on stderr and still shows its tokens.
	table, stderr, code := status()
	if code != 0 {
		t.Fatalf("status: exit %d: %s", code, stderr)
	}
	if !strings.Contains(stderr, "note:") || !strings.Contains(stderr, "config check") || !strings.Contains(stderr, "2 tokens") {
		t.Errorf("status with a file that does not resolve here: stderr %q, want a note saying so", stderr)
	}
	for _, name := range []string{"liveness", "partner"} {
		leader, fp := leaderOf(name)
		header := regexp.MustCompile(`(?m)^token ` + name + `: leader (\S+), token (sha256:[0-9a-f]{12}) expires in (\S+), last refresh success (\S+) ago$`).FindStringSubmatch(table)
		if header == nil {
			t.Errorf("no header line for %s:\n%s", name, table)
			continue
		}
		if header[1] != leader || header[2] != fp {
			t.Errorf("header of %s names leader %s and token %s, want %s and %s", name, header[1], header[2], leader, fp)
		}
	}
	for _, want := range []string{"INSTANCE", "cat-a", "cat-b", "2 alive, 2 ready", "WHEN"} {
		if strings.Count(table, want) < 2 {
			t.Errorf("the table shows %q less than once a token:\n%s", want, table)
		}
	}
	for _, secret := range []string{fakerdp.LivenessPrefix, "oauth2-", statusPartnerSecret, statusOpsKey, statusAppKey, fakerdp.ClientSecret} {
		if strings.Contains(table+stderr, secret) {
			t.Errorf("status shows %q:\n%s%s", secret, table, stderr)
		}
	}

	// With the secrets present, the file resolves and nothing is noted.
	env["STATUS_RDP_SECRET"], env["STATUS_OPS_KEY"], env["STATUS_APP_KEY"] = fakerdp.ClientSecret, statusOpsKey, statusAppKey
	if _, stderr, code := status(); code != 0 || stderr != "" {
		t.Errorf("status with a file that resolves: exit %d, stderr %q; want 0 and nothing", code, stderr)
	}

	// --token picks tokens, in the flags' order, instead of the file's.
	picked := statusJSON("--token", "partner", "--token=liveness", "--token", "partner")
	if len(picked.Tokens) != 2 || picked.Tokens[0].Name != "partner" || picked.Tokens[1].Name != "liveness" {
		t.Errorf("--token partner --token liveness: tokens %+v", picked.Tokens)
	}
	delete(env, "TOKENKEEPER_CONFIG")
	one := statusJSON("--token", "partner")
	if len(one.Tokens) != 1 || one.Tokens[0].Name != "partner" || one.Tokens[0].Leader == "" {
		t.Errorf("--token partner: %+v", one.Tokens)
	}
	// A token no replica keeps: no leader, no token, nobody.
	none := statusJSON("--token", "nobody-keeps-it")
	if n := none.Tokens[0]; n.Leader != "" || n.TokenFingerprint != "" || n.ExpiresIn != 0 || len(n.Replicas) != 0 || len(n.Refreshes) != 0 {
		t.Errorf("a token nobody keeps: %+v", n)
	}
	table, _, _ = status("--token", "nobody-keeps-it")
	if !strings.Contains(table, "token nobody-keeps-it: leader NONE, no token in Redis, no refresh recorded") {
		t.Errorf("a token nobody keeps:\n%s", table)
	}
	for _, bad := range []string{"}", "Liveness", "a{b}", ""} {
		if _, stderr, code := status("--token=" + bad); code != 1 || !strings.Contains(stderr, "--token") {
			t.Errorf("--token=%q: exit %d, stderr %q; want 1 naming --token", bad, code, stderr)
		}
	}
	if _, stderr, code := status("--token"); code != 1 || !strings.Contains(stderr, "--token needs") {
		t.Errorf("--token without a name: exit %d, stderr %q", code, stderr)
	}

	// Without a file or --token: the liveness token in today's shape.
	stdout, stderr, code := status("--json")
	if code != 0 {
		t.Fatalf("status --json: exit %d: %s", code, stderr)
	}
	var shape map[string]json.RawMessage
	if err := json.Unmarshal([]byte(stdout), &shape); err != nil {
		t.Fatal(err)
	}
	if keys := slices.Sorted(maps.Keys(shape)); !slices.Equal(keys, []string{"generated_at", "leader", "refreshes", "replicas"}) {
		t.Errorf("status --json of the liveness token alone has fields %v, want today's", keys)
	}

	// Names come from the file and the flags: Redis's keys are never listed.
	cmds := proxy.commands()
	if !strings.Contains(cmds, "\r\npttl\r\n") {
		t.Fatalf("the recording proxy saw no PTTL: it records nothing?")
	}
	for _, listing := range []string{"keys", "scan"} {
		if strings.Contains(cmds, "\r\n"+listing+"\r\n") {
			t.Errorf("status sent %s", strings.ToUpper(listing))
		}
	}
}

// TestStatusCatalogNames covers where status takes the names of a
// catalog's tokens from: the whole file when it resolves, its tokens'
// names alone when it does not, and an error when even those are wrong.
func TestStatusCatalogNames(t *testing.T) {
	good := `tokens:
  - name: one
    source: oauth2
    oauth2:
      token_url: https://idp.example/token
      client_id: c
      client_secret: ${ONE_SECRET}
  - &two
    name: two
    source: oauth2
    oauth2:
      token_url: https://idp.example/token
      client_id: c
      client_secret_file: /nonexistent/two-secret
`
	tests := []struct {
		name, file string
		env        map[string]string
		files      map[string]string
		want       []string
		note       bool
		err        string
	}{
		{name: "resolves", file: good, env: map[string]string{"ONE_SECRET": "s1"}, files: map[string]string{"/nonexistent/two-secret": "s2"}, want: []string{"one", "two"}},
		{name: "secrets absent", file: good, want: []string{"one", "two"}, note: true},
		{name: "other problems too", file: good + "    colour: blue\nkeys: 3\n", want: []string{"one", "two"}, note: true},
		{name: "a bad name", file: strings.Replace(good, "name: two", "name: Two", 1), err: "Two"},
		{name: "a name twice", file: strings.Replace(good, "name: two", "name: one", 1), err: "tokens[1]"},
		{name: "no tokens", file: "keys: []\n", err: "tokens"},
		{name: "not YAML", file: "tokens: [\n", err: "tokens.yaml"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			readFile := func(p string) ([]byte, error) {
				if p == "tokens.yaml" {
					return []byte(tt.file), nil
				}
				if s, ok := tt.files[p]; ok {
					return []byte(s), nil
				}
				return nil, &os.PathError{Op: "open", Path: p, Err: os.ErrNotExist}
			}
			var stderr bytes.Buffer
			names, err := catalogNames("tokens.yaml", func(k string) string { return tt.env[k] }, readFile, &stderr)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("catalogNames = %v, %v; want an error naming %q", names, err, tt.err)
				}
				return
			}
			if err != nil || !slices.Equal(names, tt.want) {
				t.Fatalf("catalogNames = %v, %v; want %v", names, err, tt.want)
			}
			if got := strings.Contains(stderr.String(), "note:"); got != tt.note {
				t.Errorf("note on stderr: %q, want one: %v", stderr.String(), tt.note)
			}
			if strings.Contains(stderr.String(), "s1") || strings.Contains(stderr.String(), "s2") {
				t.Errorf("the note shows a secret: %q", stderr.String())
			}
		})
	}

	// A file that cannot be read is an error, not an empty catalog.
	_, err := catalogNames("missing.yaml", func(string) string { return "" }, os.ReadFile, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "missing.yaml") {
		t.Errorf("an unreadable file: %v", err)
	}
}

// TestStatusTokenHeader: the line that opens a token names its leader,
// the stored token and its expiry, and the last attempt.
func TestStatusTokenHeader(t *testing.T) {
	now := time.Now()
	exp := now.Add(time.Hour)
	st := tokenkeeper.Status{
		TokenFingerprint: "sha256:new", ExpiresAt: exp,
		Refreshes: []tokenkeeper.Refresh{
			{At: now.Add(-time.Minute), Outcome: "upstream_error"},
			{At: now.Add(-2 * time.Minute), Outcome: "success", Fingerprint: "sha256:new", ExpiresAt: exp.Add(-10 * time.Millisecond)},
		},
	}
	tv := tokenView{name: "x", st: st}
	if h := tokenHeader(tv, now); h != "token x: leader NONE, token sha256:new expires in 1h0m0s, last refresh upstream_error 1m0s ago" {
		t.Errorf("header = %q", h)
	}
	tv.st.Leader, tv.st.TokenFingerprint = "r1", ""
	if h := tokenHeader(tv, now); h != "token x: leader r1, token (fingerprint unknown) expires in 1h0m0s, last refresh upstream_error 1m0s ago" {
		t.Errorf("header = %q", h)
	}
	tv.st.ExpiresAt, tv.st.Refreshes = time.Time{}, nil
	if h := tokenHeader(tv, now); h != "token x: leader r1, no token in Redis, no refresh recorded" {
		t.Errorf("header = %q", h)
	}
}
