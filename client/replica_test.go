package client_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokenkeeper/tokenkeeper"
	"github.com/tokenkeeper/tokenkeeper/client"
	"github.com/tokenkeeper/tokenkeeper/internal/keepertest"
	"github.com/tokenkeeper/tokenkeeper/internal/redistest"
)

// A real replica (miniredis, the fake upstream) behind a dead endpoint:
// the client fails over, gets the token the replica serves, and keeps it.
func TestAgainstReplica(t *testing.T) {
	k := keepertest.New(t, redistest.NewMini(t)).Start(t, "client-test")
	var tokenRequests atomic.Int64
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/v1/tokens/") {
			tokenRequests.Add(1)
		}
		k.Handler().ServeHTTP(w, r)
	}))
	t.Cleanup(hs.Close)

	// Wait, on the Keeper's side, until the replica serves a token.
	wait, stop := context.WithTimeout(context.Background(), 15*time.Second)
	defer stop()
	served, err := k.Token(wait, tokenkeeper.Name)
	if err != nil {
		t.Fatalf("the replica serves no token: %v", err)
	}

	c, err := client.New(client.Config{Endpoints: []string{deadURL(t), hs.URL}, Key: keepertest.ReaderKey, Margin: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for range 10 {
		wg.Go(func() {
			for range 10 {
				tok, err := c.Token(wait, tokenkeeper.Name)
				if err != nil {
					t.Error(err)
					return
				}
				if tok.Value != served.Value {
					t.Errorf("got %v, want the replica's %s", tok, served.Fingerprint())
				}
				if left := tok.ExpiresIn(time.Now()); left <= 0 || left > keepertest.Lifetime {
					t.Errorf("token expires in %v, want within (0, %v]", left, keepertest.Lifetime)
				}
			}
		})
	}
	wg.Wait()
	if got := tokenRequests.Load(); got != 1 {
		t.Errorf("token requests at the replica: got %d, want 1 for 100 calls", got)
	}

	// With the wrong key, the replica's 401 comes back as ErrUnauthorized.
	bad, _ := client.New(client.Config{Endpoints: []string{hs.URL}, Key: "not-a-key"})
	if _, err := bad.Token(wait, tokenkeeper.Name); !errors.Is(err, client.ErrUnauthorized) {
		t.Errorf("wrong key: got %v, want ErrUnauthorized", err)
	}
	if _, err := c.Token(wait, "other"); !errors.Is(err, client.ErrUnknownToken) {
		t.Errorf("unknown name: got %v, want ErrUnknownToken", err)
	}
}
