package tokenkeeper_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tokenkeeper/tokenkeeper"
	"github.com/tokenkeeper/tokenkeeper/internal/fakerdp"
	"github.com/tokenkeeper/tokenkeeper/internal/keepertest"
	"github.com/tokenkeeper/tokenkeeper/internal/redistest"
	"github.com/tokenkeeper/tokenkeeper/internal/testkit"
)

// Two replicas embedded in net/http servers and one `tokenkeeper serve`
// process, on one Redis, are one fleet: one leader, one upstream call, one
// token served by all three.
func TestEmbeddedAndServeShareOneFleet(t *testing.T) {
	// The token's keys are fixed (tokenkeeper:{liveness}:*): a private
	// server, real where CI provides one.
	srv := redistest.NewMini(t)
	if redistest.Real() {
		srv = redistest.StartServer(t)
	}
	fleet := keepertest.New(t, srv)

	var urls []string
	var keepers []*tokenkeeper.Keeper
	for _, name := range []string{"embedded-a", "embedded-b"} {
		k := fleet.Start(t, name)
		hs := httptest.NewServer(k.Handler())
		t.Cleanup(hs.Close)
		urls = append(urls, hs.URL)
		keepers = append(keepers, k)
	}
	serveURL := startServe(t, srv.Addr, fleet.RDPURL)
	urls = append(urls, serveURL)

	var token string
	testkit.Eventually(t, 15*time.Second, "all three serve one token", func() bool {
		seen := map[string]bool{}
		for _, u := range urls {
			v, ok := read(u)
			if !ok {
				return false
			}
			seen[v] = true
			token = v
		}
		return len(seen) == 1
	})
	leaders := 0
	for _, k := range keepers {
		if k.IsLeader() {
			leaders++
		}
	}
	st, err := keepers[0].Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if st[0].Leader == "serve-c" {
		leaders++
	}
	if leaders != 1 {
		t.Errorf("leaders: got %d (lock held by %q), want 1", leaders, st[0].Leader)
	}
	// A replica writes its first heartbeat when it starts, and one every
	// heartbeat interval (5 s) after: on a busy machine the serve
	// process's first may still be on its way when the tokens agree.
	testkit.Eventually(t, 2*5*time.Second, "the fleet view lists the three replicas", func() bool {
		st, err := keepers[0].Status(context.Background())
		return err == nil && len(st[0].Replicas) == 3
	})
	// One upstream call per token lifetime: on a busy machine the waits
	// above can outlast the first token's refresh window (a refresh falls
	// due Before, and up to a tenth of it more, ahead of expiry), and then
	// the leader rightly fetches the next. What the fleet promises is no
	// second call for one token: each token issued when the one before had
	// at most that window left, and what the leader's dating may run
	// early by (the token is dated from the call's send, and its stored
	// life cut by a Redis command's timeout): an upstream call's timeout
	// and half the lock TTL.
	st2 := fleet.RDP.Stats()
	if st2.LivenessCalls != len(st2.Tokens) {
		t.Errorf("upstream liveness calls: %d for %d tokens: a call was wasted", st2.LivenessCalls, len(st2.Tokens))
	}
	for i := 1; i < len(st2.Tokens); i++ {
		if left := st2.Tokens[i-1].ExpiresAt.Sub(st2.Tokens[i].IssuedAt); left > keepertest.Before+keepertest.Before/10+keepertest.RDPTimeout+keepertest.LockTTL/2 {
			t.Errorf("token %d issued with %v left on the one before: more than one call per lifetime", i+1, left.Round(time.Millisecond))
		}
	}
	if tok, ok := keepers[1].Current(tokenkeeper.Name); !ok || tok.Value != token {
		t.Errorf("Current on embedded-b: got %v, want the token served over HTTP", ok)
	}
}

// startServe builds the command and runs `tokenkeeper serve` against the
// Redis at addr, until the test ends. It returns its base URL.
func startServe(t *testing.T, addr, rdpURL string) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "tokenkeeper")
	if out, err := exec.Command("go", "build", "-o", bin, "./cmd/tokenkeeper").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	listen := ln.Addr().String()
	ln.Close()
	cmd := exec.Command(bin, "serve")
	cmd.Env = append(os.Environ(),
		"TOKENKEEPER_LISTEN="+listen,
		"TOKENKEEPER_REDIS_URL=redis://"+addr+"/0",
		"TOKENKEEPER_API_KEYS="+keepertest.ReaderKey,
		"TOKENKEEPER_INSTANCE_ID=serve-c",
		fmt.Sprintf("TOKENKEEPER_TOKEN_LIFETIME=%v", keepertest.Lifetime),
		fmt.Sprintf("TOKENKEEPER_SERVE_MARGIN=%v", keepertest.Margin),
		fmt.Sprintf("TOKENKEEPER_REFRESH_BEFORE=%v", keepertest.Before),
		fmt.Sprintf("TOKENKEEPER_LOCK_TTL=%v", keepertest.LockTTL),
		"TOKENKEEPER_POLL_INTERVAL=200ms",
		"RDP_BASE_URL="+rdpURL,
		"RDP_CLIENT_ID="+fakerdp.ClientID,
		"RDP_CLIENT_SECRET="+fakerdp.ClientSecret,
		fmt.Sprintf("RDP_TIMEOUT=%v", keepertest.RDPTimeout),
	)
	var logs strings.Builder
	cmd.Stderr = &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Signal(os.Interrupt)
		select {
		case err := <-exited:
			if err != nil {
				t.Errorf("tokenkeeper serve: %v\n%s", err, logs.String())
			}
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			t.Errorf("tokenkeeper serve did not stop on SIGINT")
		}
	})
	return "http://" + listen
}

// read returns the token a replica serves at base, if it serves one.
func read(base string) (string, bool) {
	req, _ := http.NewRequest(http.MethodGet, base+"/v1/tokens/liveness", nil)
	req.Header.Set("Authorization", "Bearer "+keepertest.ReaderKey)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", false
	}
	defer resp.Body.Close()
	var body struct{ Token string }
	if resp.StatusCode != http.StatusOK || json.NewDecoder(resp.Body).Decode(&body) != nil {
		return "", false
	}
	return body.Token, true
}
