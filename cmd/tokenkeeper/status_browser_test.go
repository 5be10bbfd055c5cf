//go:build browser

// The status page of a catalog in a real browser (see browser_test.go):
//
//	go test -tags browser -run Browser ./cmd/tokenkeeper

package main

import (
	"bytes"
	"context"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/tokenkeeper/tokenkeeper"
	"github.com/tokenkeeper/tokenkeeper/cache"
	"github.com/tokenkeeper/tokenkeeper/httpapi"
	"github.com/tokenkeeper/tokenkeeper/internal/fakerdp"
	"github.com/tokenkeeper/tokenkeeper/internal/redistest"
	"github.com/tokenkeeper/tokenkeeper/internal/testkit"
)

// tokenRows returns the cells of each row of the page's tokens table, as
// the browser serialized them.
func tokenRows(t *testing.T, dom string) [][]string {
	t.Helper()
	body := regexp.MustCompile(`(?s)<tbody id="tokens">(.*?)</tbody>`).FindStringSubmatch(dom)
	if body == nil {
		t.Fatalf("the page has no tokens table:\n%s", dom)
	}
	var rows [][]string
	for _, tr := range regexp.MustCompile(`(?s)<tr>(.*?)</tr>`).FindAllStringSubmatch(body[1], -1) {
		var cells []string
		for _, td := range regexp.MustCompile(`(?s)<td[^>]*>(.*?)</td>`).FindAllStringSubmatch(tr[1], -1) {
			cells = append(cells, td[0])
		}
		rows = append(rows, cells)
	}
	return rows
}

// TestStatusPageCatalogInBrowser: with a catalog, the page shows every
// token with its leader, readiness, a running countdown and its last
// refresh, above the cards of the first token.
func TestStatusPageCatalogInBrowser(t *testing.T) {
	chromium := chromiumPath(t)
	fake := fakerdp.New(fakerdp.Config{OAuth2ClientSecret: statusPartnerSecret})
	rdp := httptest.NewServer(fake)
	t.Cleanup(rdp.Close)
	srv := redistest.NewMini(t)
	env := map[string]string{
		"TOKENKEEPER_CONFIG":    statusCatalogFile(t, rdp.URL),
		"TOKENKEEPER_REDIS_URL": "redis://" + srv.Addr,
		"STATUS_RDP_SECRET":     fakerdp.ClientSecret,
		"STATUS_OPS_KEY":        statusOpsKey,
		"STATUS_APP_KEY":        statusAppKey,
	}
	a := startCatalogReplica(t, "cat-a", env)
	b := startCatalogReplica(t, "cat-b", env)
	rdb := srv.Client(t)
	// Each replica ends up leading one token: one that leads both hands
	// one over a lock TTL or two after the election (balance.go), so the
	// page is read once leadership has settled.
	testkit.Eventually(t, 10*time.Second, "one token led by each replica, and both served by both as Redis records it", func() bool {
		if a.keeper.Leads("liveness") == a.keeper.Leads("partner") {
			return false
		}
		for _, name := range []string{"liveness", "partner"} {
			_, okA := a.keeper.Current(name)
			_, okB := b.keeper.Current(name)
			if !okA || !okB || a.keeper.Leads(name) == b.keeper.Leads(name) {
				return false
			}
			f, err := tokenkeeper.ReadStatus(context.Background(), rdb, name)
			if err != nil || len(f.Refreshes) == 0 || len(f.Replicas) != 2 || !f.Replicas[0].Ready || !f.Replicas[1].Ready {
				return false
			}
		}
		return true
	})

	url := "http://" + a.Addr() + "/status#key=" + statusOpsKey
	dom := browse(t, chromium, url, "--dump-dom")
	if !strings.Contains(dom, `<section id="tokens-card" class="card section">`) {
		t.Fatalf("the tokens table is hidden:\n%s", dom)
	}
	rows := tokenRows(t, dom)
	if len(rows) != 2 {
		t.Fatalf("the tokens table has %d rows, want 2: %q", len(rows), rows)
	}
	for i, name := range []string{"liveness", "partner"} {
		row := rows[i]
		if len(row) != 8 {
			t.Errorf("row %d has %d cells, want 8: %q", i, len(row), row)
			continue
		}
		leader := "cat-b"
		if a.keeper.Leads(name) {
			leader = "cat-a"
		}
		tok, _ := a.keeper.Current(name)
		required := map[string]string{"liveness": `<span class="pill lead">required</span>`, "partner": `<span class="muted">optional</span>`}[name]
		checks := []struct{ what, cell, want string }{
			{"name", row[0], `>` + name + `</td>`},
			{"required", row[1], required},
			{"leader", row[2], `<span class="mono">` + leader + `</span>`},
			{"ready", row[3], `<span class="pill ok">ready</span>`},
			{"token", row[4], `>` + tok.Fingerprint() + `</td>`},
			{"last refresh", row[6], `<span class="pill ok">success</span>`},
			{"last error", row[7], `<td class="muted">none</td>`},
		}
		for _, c := range checks {
			if !strings.Contains(c.cell, c.want) {
				t.Errorf("%s: %s cell %q lacks %q", name, c.what, c.cell, c.want)
			}
		}
		// This page is cat-a's: it marks the tokens cat-a leads.
		if mine := strings.Contains(row[2], "this replica"); mine != (leader == "cat-a") {
			t.Errorf("%s: leader cell %q; marked as this replica: %v, want %v", name, row[2], mine, leader == "cat-a")
		}
		// The fake upstream's tokens live an hour: the countdown runs
		// below it, without warning.
		m := regexp.MustCompile(`<td class="mono tk-left"[^>]*>(\d\d):(\d\d)</td>`).FindStringSubmatch(row[5])
		if m == nil || m[1]+m[2] == "0000" || m[1] < "58" {
			t.Errorf("%s: countdown cell %q, want a running countdown under an hour", name, row[5])
		}
		if !regexp.MustCompile(`<span class="muted"[^>]*> [^<]* ago</span>`).MatchString(row[6]) {
			t.Errorf("%s: last refresh cell %q says not when", name, row[6])
		}
	}
	for _, want := range []string{`class="banner ok">Healthy`, `2/2 tokens ready`, `<h2>Token<span class="first-token"> · liveness</span></h2>`,
		`(2 of 2 ready on this replica)`} {
		if !strings.Contains(dom, want) {
			t.Errorf("the page lacks %s; banner: %s", want, regexp.MustCompile(`class="banner[^<]*`).FindString(dom))
		}
	}
	for _, secret := range []string{fakerdp.LivenessPrefix, statusPartnerSecret, fakerdp.ClientSecret} {
		if strings.Contains(dom, secret) {
			t.Errorf("the page shows %q", secret)
		}
	}

	shot := filepath.Join(t.ArtifactDir(), "status-page-catalog.png")
	browse(t, chromium, url, "--screenshot="+shot)
	if png, err := os.ReadFile(shot); err != nil || !bytes.HasPrefix(png, []byte("\x89PNG")) {
		t.Errorf("screenshot %s: %v", shot, err)
	} else {
		t.Logf("screenshot: %s", shot)
	}
}

// statusPageTokens is a token source that always holds a token.
type statusPageTokens struct{}

func (statusPageTokens) Current() (cache.Token, bool) {
	return cache.Token{Value: "page-test-token", Deadline: time.Now().Add(time.Hour)}, true
}

// statusPageController answers a fixed status.
type statusPageController struct{ st httpapi.Status }

func (c statusPageController) Status(context.Context) (httpapi.Status, error) { return c.st, nil }

func (statusPageController) Refresh(ctx context.Context, _ string) (cache.Token, error) {
	return cache.Token{}, context.Canceled
}

// TestStatusPageHostileTokensInBrowser: whatever the answer holds (token
// names, leaders, outcomes and errors written as HTML) the page shows as
// text; nothing of it becomes an element.
func TestStatusPageHostileTokensInBrowser(t *testing.T) {
	chromium := chromiumPath(t)
	const key = "page-admin-key-3c8e1f6a9b2d5e7f"
	now := time.Now()
	evilName := `<img src=x onerror="document.title='pwned'">`
	evilName2 := `"><svg onload=alert(3)>`
	evilLeader := `<b id="evil-leader">boss</b>`
	evilError := `</td><script>document.title='pwned'</script><td>`
	evilOutcome := `<i id="evil-outcome">odd</i>`
	toks := []httpapi.TokenStatus{
		{Name: evilName, Required: true, Leader: evilLeader, IsLeader: true, Ready: true, TokenFingerprint: "sha256:0123456789ab",
			ExpiresAt: now.Add(30 * time.Minute), LastRefresh: now.Add(-time.Minute), LastError: evilError,
			Refreshes: []httpapi.Refresh{{At: now.Add(-time.Minute), By: evilLeader, Outcome: evilOutcome, Error: evilError}}},
		{Name: evilName2, Leader: "", Ready: false, LastError: evilError,
			Refreshes: []httpapi.Refresh{{At: now.Add(-2 * time.Minute), By: "x", Outcome: "upstream_error", Error: evilError}}},
	}
	first := toks[0]
	st := httpapi.Status{
		Instance: "page-test", Leader: first.Leader, IsLeader: true, Ready: true, TokenFingerprint: first.TokenFingerprint,
		ExpiresAt: first.ExpiresAt, LastRefresh: first.LastRefresh, LastError: first.LastError,
		Replicas:  []httpapi.Replica{{Instance: "page-test", Ready: true, Leader: true, TokenFingerprint: first.TokenFingerprint, ExpiresAt: first.ExpiresAt, SeenAt: now}},
		Refreshes: first.Refreshes, Tokens: toks,
	}
	s, err := httpapi.New(httpapi.Config{Instance: "page-test", ReaderKeys: []string{testReaderKey}, AdminKeys: []string{key}},
		[]httpapi.Token{{Name: tokenkeeper.Name, Source: statusPageTokens{}}}, statusPageController{st})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(s.Handler())
	t.Cleanup(hs.Close)

	dom := browse(t, chromium, hs.URL+"/status#key="+key, "--dump-dom")
	rows := tokenRows(t, dom)
	if len(rows) != 2 || len(rows[0]) != 8 || len(rows[1]) != 8 {
		t.Fatalf("the tokens table: %q, want 2 rows of 8 cells", rows)
	}
	escaped := func(s string) string { return strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;").Replace(s) }
	checks := []struct{ what, cell, want string }{
		{"name", rows[0][0], escaped(evilName)},
		{"leader", rows[0][2], escaped(evilLeader)},
		{"this replica", rows[0][2], `<span class="pill lead">this replica</span>`},
		{"outcome", rows[0][6], escaped(strings.Replace(evilOutcome, "_", " ", 1))},
		{"last error", rows[0][7], `<td class="err">` + escaped(evilError) + `</td>`},
		{"name", rows[1][0], escaped(evilName2)},
		{"no leader", rows[1][2], `<span class="err">none</span>`},
		{"not ready", rows[1][3], `<span class="pill bad">not ready</span>`},
		{"no token", rows[1][5], `<td class="mono">–</td>`},
		{"failed refresh", rows[1][6], `<span class="pill bad">upstream error</span>`},
	}
	for _, c := range checks {
		if !strings.Contains(c.cell, c.want) {
			t.Errorf("%s: cell %q lacks %q", c.what, c.cell, c.want)
		}
	}
	if !regexp.MustCompile(`^<td class="mono tk-left"[^>]*>(2\d|30):\d\d</td>$`).MatchString(rows[0][5]) {
		t.Errorf("countdown cell %q, want about 30 minutes", rows[0][5])
	}
	if !strings.Contains(dom, `<span class="first-token"> · `+escaped(evilName)+`</span>`) {
		t.Errorf("the cards do not name the first token as text")
	}
	// Nothing of the answer became markup, and no script of it ran.
	for _, bad := range []string{"<img", "<svg", "<b ", "<i ", "<script>document"} {
		if strings.Contains(dom, bad) {
			t.Errorf("the page holds %q: data became markup", bad)
		}
	}
	if !strings.Contains(dom, "<title>tokenkeeper · fleet status</title>") {
		t.Errorf("the page's title changed: a script of the answer ran")
	}
	// An optional token down and the first token's failed refresh warn.
	if !regexp.MustCompile(`class="banner warn">[^<]*Trouble with token "&gt;&lt;svg onload=alert\(3\)&gt;`).MatchString(dom) {
		t.Errorf("banner: %s", regexp.MustCompile(`class="banner[^<]*`).FindString(dom))
	}
}
