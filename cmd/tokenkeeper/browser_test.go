//go:build browser

// The status page in a real browser: Debian's chromium, headless. Run with
//
//	go test -tags browser -run Browser ./cmd/tokenkeeper
//
// Without chromium the test is skipped on a laptop and fails in CI
// (CI=true). Set TOKENKEEPER_UPDATE_SCREENSHOT=1 to copy the screenshot to
// docs/status-page.png; `go test -artifacts` keeps it under the output
// directory.

package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokenkeeper/tokenkeeper/internal/fakerdp"
	"github.com/tokenkeeper/tokenkeeper/internal/testkit"
)

// chromiumPath finds the browser, or fails in CI and skips elsewhere.
func chromiumPath(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatal("chromium is not installed; CI must install it (apt-get install -y chromium)")
	}
	t.Skip("chromium is not installed (apt-get install -y chromium)")
	return ""
}

// browse runs headless chromium on url with mode (--dump-dom or
// --screenshot=FILE) and returns what it printed on stdout.
func browse(t *testing.T, chromium, url string, mode ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	args := append([]string{
		"--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
		"--disable-dev-shm-usage", "--hide-scrollbars", "--no-first-run", "--user-data-dir=" + t.TempDir(),
		"--window-size=1200,900", "--virtual-time-budget=6000",
	}, mode...)
	cmd := exec.CommandContext(ctx, chromium, append(args, url)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("chromium %v: %v\n%s", mode, err, stderr.String())
	}
	return stdout.String()
}

// demoFleet runs the demo in-process on 127.0.0.1:0 and joins two more
// replicas to its Redis and fake RDP, as its banner says how. It returns
// the demo's base URL and its admin key, made anew by each run.
func demoFleet(t *testing.T) (base, adminKey string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	done := make(chan int, 1)
	getenv := func(k string) string {
		if k == "TOKENKEEPER_LISTEN" {
			return "127.0.0.1:0"
		}
		return ""
	}
	go func() {
		done <- run(ctx, []string{"demo"}, getenv, pw, io.Discard)
		pw.Close()
	}()
	t.Cleanup(func() {
		cancel()
		if code := <-done; code != 0 {
			t.Errorf("demo exited %d", code)
		}
	})
	var redisAddr, rdpURL string
	sc := bufio.NewScanner(pr)
	for sc.Scan() && (base == "" || adminKey == "" || redisAddr == "" || rdpURL == "") {
		line := sc.Text()
		if m := regexp.MustCompile(`tokenkeeper demo on (http://\S+)`).FindStringSubmatch(line); m != nil {
			base = m[1]
		}
		if m := regexp.MustCompile(`/status#key=(\S+)`).FindStringSubmatch(line); m != nil {
			adminKey = m[1]
		}
		if m := regexp.MustCompile(`TOKENKEEPER_REDIS_URL=redis://(\S+) RDP_BASE_URL=(\S+)`).FindStringSubmatch(line); m != nil {
			redisAddr, rdpURL = m[1], m[2]
		}
	}
	go io.Copy(io.Discard, pr)
	if base == "" || adminKey == "" || redisAddr == "" || rdpURL == "" {
		t.Fatalf("the demo's banner lacks its URL, admin key, Redis or RDP: %q %t %q %q", base, adminKey != "", redisAddr, rdpURL)
	}
	for _, name := range []string{"demo-2", "demo-3"} {
		cfg := Config{
			Listen: "127.0.0.1:0", Redis: &redis.Options{Addr: redisAddr},
			AllowAnonymous: true, AdminKeys: []string{adminKey}, Instance: name,
			RefreshBefore: 45 * time.Second, LockTTL: 5 * time.Second, TokenLifetime: 2 * time.Minute,
			ServeMargin: 15 * time.Second, PollInterval: 2 * time.Second, RetryMin: time.Second, RetryMax: 10 * time.Second,
			AuthPerMinute: 20,
			RDP:           RDPConfig{BaseURL: rdpURL, Auth: "v2", ClientID: fakerdp.ClientID, ClientSecret: fakerdp.ClientSecret, Timeout: time.Second},
		}
		p, err := NewProgram(cfg, quiet, nil)
		if err != nil {
			t.Fatal(err)
		}
		rctx, rcancel := context.WithCancel(context.Background())
		rdone := make(chan struct{})
		go func() { p.Run(rctx); close(rdone) }()
		t.Cleanup(func() { rcancel(); <-rdone; p.Close() })
	}
	testkit.Eventually(t, 15*time.Second, "three replicas ready in /v1/status", func() bool {
		req, _ := http.NewRequest(http.MethodGet, base+"/v1/status", nil)
		req.Header.Set("Authorization", "Bearer "+adminKey)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		var st struct {
			Replicas []struct{ Ready bool }
		}
		if json.NewDecoder(resp.Body).Decode(&st) != nil || len(st.Replicas) != 3 {
			return false
		}
		for _, r := range st.Replicas {
			if !r.Ready {
				return false
			}
		}
		return true
	})
	return base, adminKey
}

func TestStatusPageInBrowser(t *testing.T) {
	chromium := chromiumPath(t)
	base, adminKey := demoFleet(t)

	t.Run("asks for the key", func(t *testing.T) {
		dom := browse(t, chromium, base+"/status", "--dump-dom")
		if !strings.Contains(dom, `<section id="login" class="card">`) || !strings.Contains(dom, `<div id="dashboard" hidden="">`) {
			t.Errorf("without a key the page should show the key form and hide the dashboard:\n%s", dom)
		}
	})

	t.Run("refuses a wrong key", func(t *testing.T) {
		dom := browse(t, chromium, base+"/status#key=wrong", "--dump-dom")
		if !strings.Contains(dom, "That key was refused.") {
			t.Errorf("a wrong key should be refused:\n%s", dom)
		}
	})

	t.Run("shows the fleet", func(t *testing.T) {
		dom := browse(t, chromium, base+"/status#key="+adminKey, "--dump-dom")
		countdown := regexp.MustCompile(`<div id="countdown" class="countdown">(\d\d:\d\d)</div>`).FindStringSubmatch(dom)
		if countdown == nil || countdown[1] == "00:00" {
			t.Errorf("no running countdown in the page:\n%s", dom)
		} else {
			t.Logf("countdown: %s", countdown[1])
		}
		for _, name := range []string{"demo-1", "demo-2", "demo-3"} {
			row := regexp.MustCompile(`<tr data-instance="` + name + `">.*?</tr>`).FindString(dom)
			if row == "" || !strings.Contains(row, `<span class="pill ok">ready</span>`) || !strings.Contains(row, "sha256:") {
				t.Errorf("replica %s is not listed as ready with a fingerprint: %q", name, row)
			}
		}
		// Any of the three may lead: the joined replicas start as soon as
		// the demo prints its banner, maybe before the demo stands.
		if !regexp.MustCompile(`<div id="leader" class="leader">demo-[123]</div>`).MatchString(dom) {
			t.Errorf("page names no replica of the fleet as leader; it shows %s", regexp.MustCompile(`<div id="leader"[^>]*>[^<]*</div>`).FindAllString(dom, -1))
		}
		for _, want := range []string{`class="banner ok">Healthy`, `<span class="pill ok">success</span>`, `(3 of 3 ready)`} {
			if !strings.Contains(dom, want) {
				t.Errorf("page lacks %s; it shows %s", want, regexp.MustCompile(`<div id="leader"[^>]*>[^<]*</div>|class="banner[^<]*`).FindAllString(dom, -1))
			}
		}
		if strings.Contains(dom, fakerdp.LivenessPrefix) {
			t.Errorf("the page shows a token")
		}

		shot := filepath.Join(t.ArtifactDir(), "status-page.png")
		browse(t, chromium, base+"/status#key="+adminKey, "--screenshot="+shot)
		png, err := os.ReadFile(shot)
		if err != nil || len(png) < 10<<10 || !bytes.HasPrefix(png, []byte("\x89PNG")) {
			t.Fatalf("screenshot %s: %d bytes, %v", shot, len(png), err)
		}
		t.Logf("screenshot: %s", shot)
		if os.Getenv("TOKENKEEPER_UPDATE_SCREENSHOT") != "" {
			if err := os.WriteFile("../../docs/status-page.png", png, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	})
}
