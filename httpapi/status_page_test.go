package httpapi_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tokenkeeper/tokenkeeper/cache"
	"github.com/tokenkeeper/tokenkeeper/httpapi"
)

// statusPageSource always holds a token.
type statusPageSource struct{}

func (statusPageSource) Current() (cache.Token, bool) {
	return cache.Token{Value: "t", Deadline: time.Now().Add(time.Hour)}, true
}

// statusPageCtl answers a fixed status.
type statusPageCtl struct{ st httpapi.Status }

func (c statusPageCtl) Status(context.Context) (httpapi.Status, error) { return c.st, nil }
func (statusPageCtl) Refresh(ctx context.Context, _ string) (cache.Token, error) {
	return cache.Token{}, context.Canceled
}

func statusPageServer(t *testing.T, st httpapi.Status) http.Handler {
	t.Helper()
	s, err := httpapi.New(httpapi.Config{Instance: "r1", ReaderKeys: []string{readerKey}, AdminKeys: []string{adminKey}},
		httpapi.Single(statusPageSource{}), statusPageCtl{st})
	if err != nil {
		t.Fatal(err)
	}
	return s.Handler()
}

func statusPageGet(t *testing.T, h http.Handler, path, key string) *http.Response {
	t.Helper()
	r := httptest.NewRequest(http.MethodGet, path, nil)
	if key != "" {
		r.Header.Set("Authorization", "Bearer "+key)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w.Result()
}

// jsonFields returns the JSON names of v's fields.
func jsonFields(v any) []string {
	var out []string
	rt := reflect.TypeOf(v)
	for i := range rt.NumField() {
		name, _, _ := strings.Cut(rt.Field(i).Tag.Get("json"), ",")
		out = append(out, name)
	}
	return out
}

// TestStatusPageTokensTable: the page has a tokens table, hidden until an
// answer lists tokens, and reads of each token only fields GET /v1/status
// gives.
func TestStatusPageTokensTable(t *testing.T) {
	h := statusPageServer(t, httpapi.Status{})
	resp := statusPageGet(t, h, "/status", "")
	body, _ := io.ReadAll(resp.Body)
	page := string(body)
	for _, want := range []string{
		`<section id="tokens-card" class="card section" hidden>`, `<tbody id="tokens"></tbody>`,
		`<th>Name</th><th>Required</th><th>Leader</th><th>Ready</th><th>Token</th><th>Expires in</th><th>Last refresh</th><th>Last error</th>`,
	} {
		if !strings.Contains(page, want) {
			t.Errorf("the page lacks %s", want)
		}
	}

	fn := regexp.MustCompile(`(?s)function renderTokens\(\) \{(.*?)\n  \}\n`).FindStringSubmatch(page)
	if fn == nil {
		t.Fatal("the page has no renderTokens function")
	}
	tokenFields, refreshFields := jsonFields(httpapi.TokenStatus{}), jsonFields(httpapi.Refresh{})
	reads := regexp.MustCompile(`\b(t|newest)\.([a-z_]+)`).FindAllStringSubmatch(fn[1], -1)
	if len(reads) < 10 {
		t.Fatalf("renderTokens reads %d fields of a token: %q", len(reads), reads)
	}
	for _, m := range reads {
		fields := tokenFields
		if m[1] == "newest" {
			fields = refreshFields
		}
		if !slices.Contains(fields, m[2]) {
			t.Errorf("renderTokens reads %s.%s, which GET /v1/status does not give", m[1], m[2])
		}
	}
}

// TestStatusPageWritesNoHTML: the page builds its DOM from text only, and
// its policy makes a browser refuse any HTML sink.
func TestStatusPageWritesNoHTML(t *testing.T) {
	h := statusPageServer(t, httpapi.Status{})
	resp := statusPageGet(t, h, "/status", "")
	body, _ := io.ReadAll(resp.Body)
	script := regexp.MustCompile(`(?s)<script>(.*)</script>`).FindStringSubmatch(string(body))
	if script == nil {
		t.Fatal("no script in the page")
	}
	for _, sink := range []string{"innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "Function(", "srcdoc", "createContextualFragment", "setAttribute("} {
		if strings.Contains(script[1], sink) {
			t.Errorf("the page's script uses %s", sink)
		}
	}
	csp := resp.Header.Get("Content-Security-Policy")
	for _, want := range []string{"require-trusted-types-for 'script'", "trusted-types 'none'", "default-src 'none'", "frame-ancestors 'none'"} {
		if !strings.Contains(csp, want) {
			t.Errorf("CSP %q lacks %q", csp, want)
		}
	}
}

// TestStatusTokensForThePage: the answer the page reads for a catalog,
// with each token's countdown (expires_in) counted at generated_at and
// its refreshes newest first.
func TestStatusTokensForThePage(t *testing.T) {
	now := time.Now()
	st := httpapi.Status{Tokens: []httpapi.TokenStatus{
		{Name: "a", Required: true, Leader: "r1", IsLeader: true, Ready: true, TokenFingerprint: "sha256:aaaaaaaaaaaa",
			ExpiresAt: now.Add(10 * time.Minute), LastError: "<b>x</b>",
			Refreshes: []httpapi.Refresh{{At: now.Add(-time.Second), By: "r1", Outcome: "success"}, {At: now.Add(-time.Hour), By: "r1", Outcome: "upstream_error"}}},
		{Name: "b"},
	}}
	resp := statusPageGet(t, statusPageServer(t, st), "/v1/status", adminKey)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /v1/status: %d", resp.StatusCode)
	}
	var got struct {
		GeneratedAt time.Time `json:"generated_at"`
		Tokens      []map[string]json.RawMessage
	}
	if err := json.NewDecoder(resp.Body).Decode(&got); err != nil {
		t.Fatal(err)
	}
	if len(got.Tokens) != 2 {
		t.Fatalf("tokens: %d, want 2", len(got.Tokens))
	}
	a := got.Tokens[0]
	var in int64
	json.Unmarshal(a["expires_in"], &in)
	if in < 595 || in > 600 {
		t.Errorf("expires_in = %d, want about 600", in)
	}
	var refreshes []httpapi.Refresh
	json.Unmarshal(a["refreshes"], &refreshes)
	if len(refreshes) != 2 || refreshes[0].Outcome != "success" {
		t.Errorf("refreshes = %+v, want the newest, a success, first", refreshes)
	}
	for _, f := range []string{"name", "required", "leader", "is_leader", "ready", "token_fingerprint", "expires_at", "expires_in", "last_error", "refreshes"} {
		if _, ok := a[f]; !ok {
			t.Errorf("token a lacks %s", f)
		}
	}
	b := got.Tokens[1]
	if string(b["refreshes"]) != "[]" || string(b["expires_in"]) != "0" {
		t.Errorf("token b: refreshes %s, expires_in %s; want [] and 0", b["refreshes"], b["expires_in"])
	}
}
