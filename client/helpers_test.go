package client_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokenkeeper/tokenkeeper/client"
	"github.com/tokenkeeper/tokenkeeper/internal/clocktest"
)

const (
	testKey   = "reader-key-s3cret-9a4e7c1f2b8d6e3a"
	testToken = "tok-VERY-SECRET-value"
)

// clock is a hand-moved clock.
type clock = clocktest.Fake

func newClock() *clock { return clocktest.New(time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)) }

// fakeService is a hand-written replica: it answers each request with
// answer(n), n counting requests from 1, and checks the key.
type fakeService struct {
	*httptest.Server
	n      atomic.Int64
	answer func(n int64, w http.ResponseWriter)
}

func newFake(t *testing.T, answer func(n int64, w http.ResponseWriter)) *fakeService {
	t.Helper()
	f := &fakeService{answer: answer}
	f.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := f.n.Add(1)
		w.Header().Set("Cache-Control", "no-store")
		if r.Header.Get("Authorization") != "Bearer "+testKey {
			writeError(w, http.StatusUnauthorized, "unauthorized", "a valid key is required", "")
			return
		}
		if r.URL.Path != "/v1/tokens/liveness" {
			writeError(w, http.StatusNotFound, "not_found", "no such token", "")
			return
		}
		f.answer(n, w)
	}))
	t.Cleanup(f.Close)
	return f
}

func (f *fakeService) Requests() int64 { return f.n.Load() }

// serveToken answers a token with expires_in secs.
func serveToken(value string, secs int64) func(int64, http.ResponseWriter) {
	return func(_ int64, w http.ResponseWriter) { writeToken(w, value, secs) }
}

func writeToken(w http.ResponseWriter, value string, secs int64) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]any{
		"name": "liveness", "token": value, "expires_in": secs,
		"expires_at": time.Now().UTC().Add(time.Duration(secs) * time.Second).Format(time.RFC3339),
	})
}

func writeError(w http.ResponseWriter, status int, code, msg, retryAfter string) {
	if retryAfter != "" {
		w.Header().Set("Retry-After", retryAfter)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	fmt.Fprintf(w, `{"error":{"code":%q,"message":%q}}`, code, msg)
}

// deadURL is the base URL of a closed listener: connections are refused.
func deadURL(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := "http://" + ln.Addr().String()
	ln.Close()
	return u
}

// newClient builds a client on clk that records its Retry-After waits in
// slept and moves clk by them instead of sleeping.
func newClient(t *testing.T, clk *clock, cfg client.Config) (*client.Client, *[]time.Duration) {
	t.Helper()
	cfg.Key = testKey
	c, err := client.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	client.SetClock(c, clk)
	var mu sync.Mutex
	slept := new([]time.Duration)
	client.SetSleep(c, func(ctx context.Context, d time.Duration) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		mu.Lock()
		*slept = append(*slept, d)
		mu.Unlock()
		clk.Advance(d)
		return nil
	})
	return c, slept
}

// waitFor yields until cond holds, failing the test if it never does.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for i := 0; !cond(); i++ {
		if i > 1_000_000 {
			t.Fatalf("%s: never happened", what)
		}
		runtime.Gosched()
	}
}

// noSecrets fails if err's text holds the key or the token.
func noSecrets(t *testing.T, err error) {
	t.Helper()
	if err == nil {
		return
	}
	for _, s := range []string{testKey, testToken} {
		if strings.Contains(err.Error(), s) {
			t.Errorf("error %q holds a secret", err)
		}
	}
}
