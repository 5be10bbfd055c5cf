package httpapi_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tokenkeeper/tokenkeeper/cache"
	"github.com/tokenkeeper/tokenkeeper/httpapi"
	"github.com/tokenkeeper/tokenkeeper/internal/certreload"
	"github.com/tokenkeeper/tokenkeeper/internal/clocktest"
	"github.com/tokenkeeper/tokenkeeper/internal/tlstest"
)

// movingClock is a clock the test moves by hand.
type movingClock = clocktest.Fake

func newMovingClock() *movingClock { return clocktest.New(t0) }

// lockedBuffer is a log sink safe for concurrent writes.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// lines decodes the JSON lines written so far.
func (l *lockedBuffer) lines(t *testing.T) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(l.String()), "\n") {
		if line == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("audit line %q: %v", line, err)
		}
		out = append(out, m)
	}
	return out
}

// tlsEnv serves two tokens over TLS, with client certificates of ca
// verified, and identities for some of them.
type tlsEnv struct {
	ca, rogue *tlstest.CA
	url       string
	audit     *lockedBuffer
}

func newTLSEnv(t *testing.T) *tlsEnv {
	t.Helper()
	ev := &tlsEnv{ca: tlstest.NewCA(t, "clients and server"), rogue: tlstest.NewCA(t, "rogue"), audit: &lockedBuffer{}}
	var served []httpapi.Token
	for _, name := range []string{"liveness", "billing"} {
		ft := &fakeTokens{}
		ft.set(cache.Token{Value: "value-of-" + name, Deadline: t0.Add(time.Hour)}, true)
		served = append(served, httpapi.Token{Name: name, Source: ft})
	}
	ctl := &fakeController{refresh: func(context.Context) (cache.Token, error) {
		return cache.Token{Value: "new-value", Deadline: t0.Add(time.Hour)}, nil
	}}
	srv, err := httpapi.New(httpapi.Config{
		Instance:   "replica-1",
		ReaderKeys: []string{readerKey},
		AdminKeys:  []string{adminKey},
		Clock:      clocktest.New(t0),
		Registerer: prometheus.NewRegistry(),
		Security: httpapi.Security{
			Identities: []httpapi.Identity{
				{Name: "mesh", Subject: "CN=mesh-gateway", Tokens: []string{"liveness"}},
				{Name: "backend", Subject: "spiffe://example.org/ns/prod/sa/backend"},
				{Name: "ops", Subject: "CN=ops", Role: httpapi.RoleAdmin, Tokens: []string{"billing"}},
			},
			Audit: slog.New(slog.NewJSONHandler(ev.audit, nil)),
		},
	}, served, ctl)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile := ev.ca.Issue(t, tlstest.Options{CommonName: "replica-1"}).Write(t, dir)
	r, err := certreload.New(certreload.Config{CertFile: certFile, KeyFile: keyFile})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewUnstartedServer(srv.Handler())
	ts.Listener = tls.NewListener(ts.Listener, certreload.ServerConfig(r, ev.ca.Pool()))
	ts.Config.ErrorLog = slog.NewLogLogger(slog.DiscardHandler, slog.LevelError)
	ts.Start()
	t.Cleanup(ts.Close)
	ev.url = "https://" + ts.Listener.Addr().String()
	return ev
}

// client presents cert (none when nil).
func (ev *tlsEnv) client(cert *tlstest.Pair) *http.Client {
	cfg := &tls.Config{RootCAs: ev.ca.Pool()}
	if cert != nil {
		// Presented whatever CAs the server names, as a client that
		// insists would.
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert.TLS, nil }
	}
	return &http.Client{Transport: &http.Transport{TLSClientConfig: cfg}}
}

func (ev *tlsEnv) status(t *testing.T, c *http.Client, method, path, key string) (int, error) {
	t.Helper()
	r, err := http.NewRequest(method, ev.url+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if key != "" {
		r.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := c.Do(r)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, nil
}

func TestClientCertificateIdentities(t *testing.T) {
	ev := newTLSEnv(t)
	mesh := ev.ca.Issue(t, tlstest.Options{CommonName: "mesh-gateway", Client: true})
	backend := ev.ca.Issue(t, tlstest.Options{CommonName: "pod-7f9c", URIs: []string{"spiffe://example.org/ns/prod/sa/backend"}, Client: true})
	ops := ev.ca.Issue(t, tlstest.Options{CommonName: "ops", Client: true})
	stranger := ev.ca.Issue(t, tlstest.Options{CommonName: "stranger", Client: true})
	for _, tc := range []struct {
		name         string
		cert         *tlstest.Pair
		method, path string
		key          string
		want         int
	}{
		{"CN identity reads its token", &mesh, http.MethodGet, "/v1/tokens/liveness", "", http.StatusOK},
		{"CN identity outside its scope", &mesh, http.MethodGet, "/v1/tokens/billing", "", http.StatusNotFound},
		{"reader identity is no admin", &mesh, http.MethodGet, "/v1/status", "", http.StatusForbidden},
		{"SPIFFE identity reads every token", &backend, http.MethodGet, "/v1/tokens/billing", "", http.StatusOK},
		{"admin identity refreshes its token", &ops, http.MethodPost, "/v1/tokens/billing/refresh", "", http.StatusOK},
		{"admin identity outside its scope", &ops, http.MethodPost, "/v1/tokens/liveness/refresh", "", http.StatusNotFound},
		{"verified certificate of no identity", &stranger, http.MethodGet, "/v1/tokens/liveness", "", http.StatusUnauthorized},
		{"no certificate, no key", nil, http.MethodGet, "/v1/tokens/liveness", "", http.StatusUnauthorized},
		{"no certificate, a key", nil, http.MethodGet, "/v1/tokens/billing", readerKey, http.StatusOK},
		{"a wrong key decides over a good certificate", &backend, http.MethodGet, "/v1/tokens/liveness", "wrong-key", http.StatusUnauthorized},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ev.status(t, ev.client(tc.cert), tc.method, tc.path, tc.key)
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("%s %s: got %d, want %d", tc.method, tc.path, got, tc.want)
			}
		})
	}
	lines := ev.audit.lines(t)
	var reads, refreshes int
	for _, l := range lines {
		switch {
		case l["msg"] == "token handed out" && l["caller"] == "mesh" && l["token"] == "liveness":
			reads++
		case l["msg"] == "admin action" && l["caller"] == "ops" && l["action"] == "refresh" && l["token"] == "billing":
			refreshes++
		}
	}
	if reads != 1 || refreshes != 1 {
		t.Errorf("audit: %d reads by mesh, %d refreshes by ops; want 1 and 1:\n%s", reads, refreshes, ev.audit)
	}
}

func TestClientCertificatesRefused(t *testing.T) {
	ev := newTLSEnv(t)
	for _, tc := range []struct {
		name string
		cert tlstest.Pair
	}{
		{"unknown CA", ev.rogue.Issue(t, tlstest.Options{CommonName: "mesh-gateway", Client: true})},
		{"expired", ev.ca.Issue(t, tlstest.Options{CommonName: "mesh-gateway", Client: true,
			NotBefore: time.Now().Add(-48 * time.Hour), NotAfter: time.Now().Add(-time.Hour)})},
		{"not yet valid", ev.ca.Issue(t, tlstest.Options{CommonName: "mesh-gateway", Client: true,
			NotBefore: time.Now().Add(time.Hour), NotAfter: time.Now().Add(48 * time.Hour)})},
		{"server certificate used as a client one", ev.ca.Issue(t, tlstest.Options{CommonName: "mesh-gateway"})},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ev.status(t, ev.client(&tc.cert), http.MethodGet, "/v1/tokens/liveness", "")
			if err == nil {
				t.Fatalf("the handshake succeeded, answered %d", got)
			}
		})
	}
}

func TestIdentitiesAreChecked(t *testing.T) {
	for _, tc := range []struct {
		name string
		id   httpapi.Identity
		want string
	}{
		{"neither CN nor URI", httpapi.Identity{Name: "x", Subject: "mesh-gateway"}, "neither CN=<common name> nor an absolute URI"},
		{"empty CN", httpapi.Identity{Name: "x", Subject: "CN="}, "names no common name"},
		{"unknown token", httpapi.Identity{Name: "x", Subject: "CN=a", Tokens: []string{"nope"}}, "nope"},
		{"unknown role", httpapi.Identity{Name: "x", Subject: "CN=a", Role: "root"}, "unknown role"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := httpapi.New(httpapi.Config{ReaderKeys: []string{readerKey}, Registerer: prometheus.NewRegistry(),
				Security: httpapi.Security{Identities: []httpapi.Identity{tc.id}}}, httpapi.Single(&fakeTokens{}), nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("New: %v, want an error with %q", err, tc.want)
			}
		})
	}
	_, err := httpapi.New(httpapi.Config{ReaderKeys: []string{readerKey}, Registerer: prometheus.NewRegistry(),
		Security: httpapi.Security{Identities: []httpapi.Identity{{Name: "a", Subject: "CN=x"}, {Name: "b", Subject: "cn=x"}}}},
		httpapi.Single(&fakeTokens{}), nil)
	if err == nil || !strings.Contains(err.Error(), "subject of identity a") {
		t.Errorf("two identities of one subject: %v", err)
	}
}

// guessEnv is a server whose failed authentications are delayed after 3,
// up to a second, 2 of them waiting at once per address or key, on a fake
// clock, with 10.0.0.0/8 as its trusted proxies.
type guessEnv struct {
	*env
	clock *clocktest.Fake
	log   *lockedBuffer
	audit *lockedBuffer
}

func newGuessEnv(t *testing.T) *guessEnv {
	ge := &guessEnv{clock: clocktest.New(t0), log: &lockedBuffer{}, audit: &lockedBuffer{}}
	ge.env = newEnv(t, func(c *httpapi.Config) {
		c.Clock = ge.clock
		c.Logger = slog.New(slog.NewJSONHandler(ge.log, nil))
		c.Security = httpapi.Security{
			AuthFailures: 3, AuthFailureWindow: time.Minute, AuthFailureMaxDelay: time.Second, AuthFailuresInFlight: 2,
			TrustedProxies: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")},
			Audit:          slog.New(slog.NewJSONHandler(ge.audit, nil)),
		}
	})
	return ge
}

// request is a token read with key as the peer remote, with
// X-Forwarded-For xff when not empty.
func request(remote, xff, key string) *http.Request {
	r := httptest.NewRequest(http.MethodGet, "/v1/tokens/liveness", nil)
	r.RemoteAddr = remote
	if xff != "" {
		r.Header.Set("X-Forwarded-For", xff)
	}
	r.Header.Set("Authorization", "Bearer "+key)
	return r
}

// answer is a request's answer and how long it waited on the fake clock.
type answer struct {
	*httptest.ResponseRecorder
	waited time.Duration
}

// from reads the token with key as the peer remote (X-Forwarded-For xff
// when not empty) and returns the answer, moving the fake clock to the
// end of any delay the server imposes, one at a time.
func (ge *guessEnv) from(t *testing.T, remote, xff, key string) answer {
	t.Helper()
	ans := answer{ResponseRecorder: httptest.NewRecorder()}
	done := make(chan struct{})
	go func() {
		defer close(done)
		ge.h.ServeHTTP(ans.ResponseRecorder, request(remote, xff, key))
	}()
	start := ge.clock.Now()
	waitFor(t, func() bool {
		select {
		case <-done:
			return true
		default:
		}
		if next, ok := ge.clock.Next(); ok {
			ge.clock.Advance(next.Sub(ge.clock.Now()))
		}
		return false
	})
	ans.waited = ge.clock.Now().Sub(start)
	return ans
}

// waitFor polls cond until it holds, failing the test if it does not
// within 10 seconds of real time (a goroutine that never gets there).
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("gave up waiting after 10s")
		}
		time.Sleep(time.Millisecond)
	}
}

func TestRightKeyAfterHundredWrongOnes(t *testing.T) {
	ge := newGuessEnv(t)
	const guesser = "198.51.100.7:4000"
	want := []time.Duration{0, 0, 0, 100 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond, 800 * time.Millisecond, time.Second, time.Second}
	for i := range 100 {
		a := ge.from(t, guesser, "", fmt.Sprintf("guess-%03d", i))
		if a.Code != http.StatusUnauthorized {
			t.Fatalf("guess %d: got %d, want 401", i+1, a.Code)
		}
		if w := want[min(i, len(want)-1)]; a.waited != w {
			t.Fatalf("guess %d waited %v, want %v", i+1, a.waited, w)
		}
	}
	// The right key from the guesser's own address: at once, whatever the
	// failures before it.
	if a := ge.from(t, guesser, "", readerKey); a.Code != http.StatusOK || a.waited != 0 {
		t.Fatalf("the right key after 100 wrong ones: got %d after %v, want 200 at once", a.Code, a.waited)
	}

	// Two failures wait; a third is refused at once, the right key is not.
	held := make(chan int, 2)
	for i := range 2 {
		go func() {
			w := httptest.NewRecorder()
			ge.h.ServeHTTP(w, request(guesser, "", fmt.Sprintf("held-%d", i)))
			held <- w.Code
		}()
	}
	waitFor(t, func() bool { return ge.clock.Waiters() == 2 })
	w := httptest.NewRecorder()
	ge.h.ServeHTTP(w, request(guesser, "", "one-too-many"))
	checkError(t, w, http.StatusTooManyRequests, "too_many_failures")
	if got := w.Header().Get("Retry-After"); got != "1" {
		t.Errorf("Retry-After = %q, want 1 (the delay, in whole seconds)", got)
	}
	w = httptest.NewRecorder()
	ge.h.ServeHTTP(w, request(guesser, "", readerKey))
	if w.Code != http.StatusOK {
		t.Errorf("the right key while failures wait: got %d, want 200", w.Code)
	}
	// (Were it delayed, this would wait for a clock nobody moves.)
	w = httptest.NewRecorder()
	ge.h.ServeHTTP(w, request("203.0.113.9:5000", "", "another-wrong-key"))
	if w.Code != http.StatusUnauthorized {
		t.Errorf("one wrong key from another address: got %d, want 401", w.Code)
	}
	ge.clock.Advance(time.Second)
	for range 2 {
		if code := <-held; code != http.StatusUnauthorized {
			t.Errorf("a held failure: got %d, want 401", code)
		}
	}

	// A window without failures starts the count again.
	ge.clock.Advance(time.Minute)
	if a := ge.from(t, guesser, "", "guess-after"); a.waited != 0 {
		t.Errorf("after a quiet window a failure waited %v, want none", a.waited)
	}

	if got, want := gaugeValue(t, ge.reg, "tokenkeeper_http_auth_failures_total"), 100.0+2+1+1+1; got != want {
		t.Errorf("auth failures counted: %v, want %v", got, want)
	}
	if got := counterWith(t, ge.reg, "tokenkeeper_http_auth_throttled_total", "kind", "address"); got != 1 {
		t.Errorf("throttled by address: %v, want 1", got)
	}
	for _, stream := range []*lockedBuffer{ge.log, ge.audit} {
		if n := strings.Count(stream.String(), "throttled"); n != 1 {
			t.Errorf("throttling logged %d times, want once:\n%s", n, stream)
		}
		for _, secret := range []string{"guess-", "held-", readerKey} {
			if strings.Contains(stream.String(), secret) {
				t.Errorf("a log holds the key %q:\n%s", secret, stream)
			}
		}
	}
}

func TestGuessingOneKeyIsSlowedFromEveryAddress(t *testing.T) {
	ge := newGuessEnv(t)
	for i := range 3 {
		if a := ge.from(t, fmt.Sprintf("198.51.100.%d:4000", i+1), "", "the-same-wrong-key"); a.waited != 0 {
			t.Fatalf("failure %d waited %v, want none", i+1, a.waited)
		}
	}
	if a := ge.from(t, "198.51.100.9:4000", "", "the-same-wrong-key"); a.Code != http.StatusUnauthorized || a.waited != 100*time.Millisecond {
		t.Errorf("the same wrong key from a fourth address: got %d after %v, want 401 after 100ms", a.Code, a.waited)
	}
	if a := ge.from(t, "198.51.100.9:4000", "", readerKey); a.Code != http.StatusOK || a.waited != 0 {
		t.Errorf("the right key: got %d after %v, want 200 at once", a.Code, a.waited)
	}
}

func TestForwardedForOnlyFromTrustedProxies(t *testing.T) {
	ge := newGuessEnv(t)
	slowed := func(remote, xff string) bool {
		t.Helper()
		a := ge.from(t, remote, xff, fmt.Sprintf("wrong-%s-%s-%d", remote, xff, ge.clock.Now().UnixNano()))
		if a.Code != http.StatusUnauthorized {
			t.Fatalf("a wrong key from %s (X-Forwarded-For %q): got %d, want 401", remote, xff, a.Code)
		}
		return a.waited > 0
	}
	// Through the trusted proxy 10.1.2.3, the client is the forwarded one.
	for range 3 {
		slowed("10.1.2.3:4000", "198.51.100.7")
	}
	if !slowed("10.1.2.3:4000", "198.51.100.7") {
		t.Error("the guesser through the proxy was not slowed")
	}
	if slowed("10.1.2.3:4000", "203.0.113.9") {
		t.Error("another client through the same proxy was slowed")
	}
	// A header prepended by the client itself is not believed past the
	// proxy's own entry.
	if !slowed("10.1.2.3:4000", "203.0.113.9, 198.51.100.7") {
		t.Error("a spoofed first entry hid the guesser")
	}
	// From a peer that is no trusted proxy, the header is ignored.
	for i := range 3 {
		slowed("192.0.2.50:4000", fmt.Sprintf("203.0.113.%d", 70+i))
	}
	if !slowed("192.0.2.50:4000", "203.0.113.78") {
		t.Error("an untrusted peer changed its address with the header")
	}
	if slowed("10.1.2.3:4000", "203.0.113.70") {
		t.Error("the address an untrusted peer claimed was slowed")
	}
}

func TestWeakKeysAreRefused(t *testing.T) {
	strong := []string{
		"9f86d081884c7d659a2feaa0c55ad015",        // 32 hex digits: 128 bits
		"Yq3vN8dK2pW7sH4mT6xR9c",                  // 22 base64url characters: 132 bits
		"sha256:" + strings.Repeat("ab", 32),      // a digest: not measured
		"reader-4c2f9a1e7b3d5f08a6c1e9b2d4f7a03c", // a prefix and 32 hex digits
	}
	for _, k := range strong {
		if _, err := httpapi.New(httpapi.Config{ReaderKeys: []string{k}, AdminKeys: []string{k}}, httpapi.Single(&fakeTokens{}), &fakeController{}); err != nil {
			t.Errorf("a strong key refused: %v", err)
		}
	}
	weak := []struct{ name, key, why string }{
		{"short", "demo-reader-key", "bits of randomness"},
		{"31 hex digits", "9f86d081884c7d659a2feaa0c55ad01", "about 124 bits"},
		{"one string repeated", strings.Repeat("abc123XY", 6), "repeats a shorter string"},
		{"few characters", strings.Repeat("ab", 20) + "c", "fewer than 8 different characters"},
	}
	for _, tt := range weak {
		t.Run(tt.name, func(t *testing.T) {
			for _, cfg := range []struct {
				setting string
				cfg     httpapi.Config
				keys    []httpapi.Key
			}{
				{"TOKENKEEPER_API_KEYS: key 2 of 2", httpapi.Config{ReaderKeys: []string{readerKey, tt.key}}, nil},
				{"TOKENKEEPER_ADMIN_KEYS: key 1 of 1", httpapi.Config{ReaderKeys: []string{readerKey}, AdminKeys: []string{tt.key}}, nil},
				{"key ops", httpapi.Config{ReaderKeys: []string{readerKey}, Keys: []httpapi.Key{{Name: "ops", Value: tt.key, Role: httpapi.RoleAdmin}}}, nil},
			} {
				_, err := httpapi.New(cfg.cfg, httpapi.Single(&fakeTokens{}), &fakeController{})
				if err == nil {
					t.Fatalf("%s: a weak key was accepted", cfg.setting)
				}
				for _, part := range []string{cfg.setting, "too weak", tt.why, "TOKENKEEPER_ALLOW_WEAK_KEYS"} {
					if !strings.Contains(err.Error(), part) {
						t.Errorf("%s: error %q does not say %q", cfg.setting, err, part)
					}
				}
				if strings.Contains(err.Error(), tt.key) {
					t.Errorf("the error quotes the key: %q", err)
				}
				cfg.cfg.AllowWeakKeys = true
				if _, err := httpapi.New(cfg.cfg, httpapi.Single(&fakeTokens{}), &fakeController{}); err != nil {
					t.Errorf("%s: refused with AllowWeakKeys: %v", cfg.setting, err)
				}
			}
		})
	}
	// Metrics keys only read metrics: they are not measured.
	if _, err := httpapi.New(httpapi.Config{ReaderKeys: []string{readerKey}, MetricsKeys: []string{"scrape"}}, httpapi.Single(&fakeTokens{}), nil); err != nil {
		t.Errorf("a short metrics key refused: %v", err)
	}
}

func TestAuditTrailOfReads(t *testing.T) {
	clock := newMovingClock()
	var audit lockedBuffer
	ev := newEnv(t, func(c *httpapi.Config) {
		c.Clock = clock
		c.AllowAnonymous = true
		c.Keys = []httpapi.Key{{Name: "mobile", Value: "mobile-key-9d8e7f6a5b4c3d2e1f0a"}}
		c.Security = httpapi.Security{Audit: slog.New(slog.NewJSONHandler(&audit, nil)), AuditReadsPerMinute: 2}
	})
	for range 5 {
		ev.do(t, req{path: "/v1/tokens/liveness", header: bearer("mobile-key-9d8e7f6a5b4c3d2e1f0a")})
	}
	ev.do(t, req{path: "/v1/tokens/liveness", header: bearer(readerKey)})
	ev.do(t, req{path: "/v1/tokens/liveness"})
	ev.do(t, req{path: "/v1/tokens/liveness", header: bearer("wrong-key")})
	ev.do(t, req{method: http.MethodPost, path: "/v1/tokens/liveness/refresh", header: bearer(adminKey)})
	ev.do(t, req{path: "/v1/status", header: bearer(adminKey)})
	clock.Advance(time.Minute)
	// The next minute's first read writes the last one's count.
	ev.do(t, req{path: "/v1/tokens/liveness", header: bearer("mobile-key-9d8e7f6a5b4c3d2e1f0a")})

	fp := cache.Fingerprint(tokenValue)
	type seen struct{ alone, summed int }
	got := map[string]*seen{}
	for _, l := range audit.lines(t) {
		caller, _ := l["caller"].(string)
		if got[caller] == nil {
			got[caller] = &seen{}
		}
		switch l["msg"] {
		case "token handed out":
			got[caller].alone++
			if l["fingerprint"] != fp || l["token"] != "liveness" || l["client"] != "192.0.2.1" {
				t.Errorf("read line %v: want fingerprint %s, token liveness, client 192.0.2.1", l, fp)
			}
		case "tokens handed out":
			got[caller].summed += int(l["reads"].(float64))
		case "admin action":
			if caller != "TOKENKEEPER_ADMIN_KEYS[0]" {
				t.Errorf("admin action by %q", caller)
			}
		}
	}
	for caller, want := range map[string]seen{
		"mobile":                  {alone: 3, summed: 5},
		"TOKENKEEPER_API_KEYS[0]": {alone: 1},
		"anonymous":               {alone: 1},
	} {
		if g := got[caller]; g == nil || *g != want {
			t.Errorf("caller %s: %+v, want %+v", caller, g, want)
		}
	}
	out := audit.String()
	if !strings.Contains(out, `"action":"refresh"`) || !strings.Contains(out, `"action":"status"`) {
		t.Errorf("admin actions missing:\n%s", out)
	}
	for _, secret := range []string{tokenValue, "new-value", readerKey, adminKey, "mobile-key-9d8e7f6a5b4c3d2e1f0a", "wrong-key"} {
		if strings.Contains(out, secret) {
			t.Errorf("the audit trail holds the secret %q", secret)
		}
	}
}

func TestFleetRateLimitShare(t *testing.T) {
	clock := newMovingClock()
	ev := newEnv(t, func(c *httpapi.Config) {
		c.Clock = clock
		c.Security.FleetRateLimit = 30
	})
	reads := func() (ok int) {
		for range 100 {
			if ev.do(t, req{path: "/v1/tokens/liveness", header: bearer(readerKey)}).Code == http.StatusOK {
				ok++
			}
		}
		return ok
	}
	// Alone, the replica admits the whole fleet's second: 30.
	if got := reads(); got != 30 {
		t.Errorf("alone: %d of 100 admitted at once, want 30", got)
	}
	ev.srv.SetReplicas(3)
	clock.Advance(time.Second)
	if got := reads(); got != 10 {
		t.Errorf("one of 3: %d of 100 admitted in a second, want 10 (a third of 30)", got)
	}
	clock.Advance(time.Second)
	if got := reads(); got != 10 {
		t.Errorf("one of 3, a second later: %d admitted, want 10", got)
	}
	if got := gaugeValue(t, ev.reg, "tokenkeeper_rate_limit_replicas"); got != 3 {
		t.Errorf("tokenkeeper_rate_limit_replicas = %v, want 3", got)
	}
	// Another key has a bucket of its own, of the same share.
	if got := ev.do(t, req{path: "/v1/tokens/liveness", header: bearer(readerKey2)}).Code; got != http.StatusOK {
		t.Errorf("another key: %d, want 200", got)
	}
	ev.srv.SetReplicas(0) // counts as one
	clock.Advance(time.Second)
	if got := reads(); got != 30 {
		t.Errorf("alone again: %d admitted, want 30", got)
	}
}

// gaugeValue is the value of the unlabelled metric name in reg.
func gaugeValue(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			m := mf.GetMetric()[0]
			if m.GetGauge() != nil {
				return m.GetGauge().GetValue()
			}
			return m.GetCounter().GetValue()
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}

// counterWith returns the counter name with the label set to value.
func counterWith(t *testing.T, reg *prometheus.Registry, name, label, value string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == label && lp.GetValue() == value {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}
