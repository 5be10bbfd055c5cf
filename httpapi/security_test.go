package httpapi_test

import (
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"strings"
	"testing"

	"github.com/tokenkeeper/tokenkeeper/httpapi"
)

func digestKey(key string) string {
	sum := sha256.Sum256([]byte(key))
	return httpapi.DigestPrefix + hex.EncodeToString(sum[:])
}

func TestDigestKeys(t *testing.T) {
	ev := newEnv(t, func(c *httpapi.Config) {
		c.ReaderKeys = []string{digestKey(readerKey)}
		c.AdminKeys = []string{digestKey(adminKey)}
	})
	tests := []struct {
		name   string
		header map[string]string
		path   string
		want   int
	}{
		{"plain key matches its digest", bearer(readerKey), "/v1/tokens/liveness", http.StatusOK},
		{"the digest itself is no key", bearer(digestKey(readerKey)), "/v1/tokens/liveness", http.StatusUnauthorized},
		{"wrong key", bearer("nope"), "/v1/tokens/liveness", http.StatusUnauthorized},
		{"admin by digest", bearer(adminKey), "/v1/status", http.StatusOK},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := ev.do(t, req{path: tt.path, header: tt.header}).Code; got != tt.want {
				t.Fatalf("got %d, want %d", got, tt.want)
			}
		})
	}
}

func TestBadDigestKeysAreRefused(t *testing.T) {
	for _, k := range []string{"sha256:", "sha256:abcd", "sha256:" + strings.Repeat("z", 64), "sha256:" + strings.Repeat("a", 66)} {
		_, err := httpapi.New(httpapi.Config{ReaderKeys: []string{k}}, httpapi.Single(&fakeTokens{}), nil)
		if err == nil {
			t.Fatalf("key %q: got nil error", k)
		}
		if !strings.Contains(err.Error(), "TOKENKEEPER_API_KEYS") || (len(k) > 7 && strings.Contains(err.Error(), k[7:])) {
			t.Fatalf("key %q: error %q should name the setting and not the key", k, err)
		}
	}
}

func TestRateLimitPerKey(t *testing.T) {
	ev := newEnv(t, func(c *httpapi.Config) {
		c.RateLimit = 0.001 // effectively no refill during the test
		c.RateBurst = 3
		c.AllowAnonymous = true
	})
	for i := range 3 {
		if got := ev.do(t, req{path: "/v1/tokens/liveness", header: bearer(readerKey)}).Code; got != http.StatusOK {
			t.Fatalf("read %d: got %d, want 200 within the burst", i+1, got)
		}
	}
	w := ev.do(t, req{path: "/v1/tokens/liveness", header: bearer(readerKey)})
	checkError(t, w, http.StatusTooManyRequests, "rate_limited")
	if got := w.Header().Get("Retry-After"); got != "1" {
		t.Fatalf("Retry-After: got %q, want 1", got)
	}
	if strings.Contains(w.Body.String(), tokenValue) {
		t.Fatal("a limited answer carries the token")
	}
	// Another key has its own bucket.
	if got := ev.do(t, req{path: "/v1/tokens/liveness", header: bearer(readerKey2)}).Code; got != http.StatusOK {
		t.Fatalf("second key: got %d, want 200", got)
	}
	// A wrong key is refused as such, not limited.
	if got := ev.do(t, req{path: "/v1/tokens/liveness", header: bearer("wrong")}).Code; got != http.StatusUnauthorized {
		t.Fatalf("wrong key: got %d, want 401", got)
	}
	// Anonymous readers are limited per address (httptest uses 192.0.2.1).
	for i := range 3 {
		if got := ev.do(t, req{path: "/v1/tokens/liveness"}).Code; got != http.StatusOK {
			t.Fatalf("anonymous read %d: got %d, want 200", i+1, got)
		}
	}
	checkError(t, ev.do(t, req{path: "/v1/tokens/liveness"}), http.StatusTooManyRequests, "rate_limited")
}

func TestRateLimitOffByDefault(t *testing.T) {
	ev := newEnv(t, nil)
	for i := range 500 {
		if got := ev.do(t, req{path: "/v1/tokens/liveness", header: bearer(readerKey)}).Code; got != http.StatusOK {
			t.Fatalf("read %d: got %d, want 200", i+1, got)
		}
	}
	if _, err := httpapi.New(httpapi.Config{ReaderKeys: []string{readerKey}, RateLimit: -1}, httpapi.Single(&fakeTokens{}), nil); err == nil {
		t.Fatal("negative rate: got nil error")
	}
}

func TestDrain(t *testing.T) {
	ev := newEnv(t, nil)
	if got := ev.do(t, req{path: "/readyz"}).Code; got != http.StatusOK {
		t.Fatalf("/readyz before Drain: got %d, want 200", got)
	}
	ev.srv.Drain()
	checkError(t, ev.do(t, req{path: "/readyz"}), http.StatusServiceUnavailable, "not_ready")
	if got := ev.do(t, req{path: "/v1/tokens/liveness", header: bearer(readerKey)}).Code; got != http.StatusOK {
		t.Fatalf("token while draining: got %d, want 200", got)
	}
}
