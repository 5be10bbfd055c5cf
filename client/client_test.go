package client_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokenkeeper/tokenkeeper/client"
)

func TestNewValidates(t *testing.T) {
	tests := []struct {
		name  string
		cfg   client.Config
		wants []string // each must appear in the error
	}{
		{"nothing", client.Config{}, []string{"Endpoints: at least one is required", "Key is required"}},
		{"bad endpoints", client.Config{Key: "k", Endpoints: []string{"http://ok", "/relative", "ftp://host", "http://u:pw@host", "http://host/?q=1"}},
			[]string{`Endpoints[1]: "/relative": scheme`, `Endpoints[2]: "ftp://host": scheme`, "Endpoints[3]: must not carry credentials", "Endpoints[4]"}},
		{"no host", client.Config{Key: "k", Endpoints: []string{"http://"}}, []string{"Endpoints[0]", "host is missing"}},
		{"negative durations", client.Config{Key: "k", Endpoints: []string{"http://h"}, Margin: -1, MaxWait: -time.Second},
			[]string{"Margin -1ns is negative", "MaxWait -1s is negative"}},
		{"key with newline", client.Config{Key: "k\n", Endpoints: []string{"http://h"}}, []string{"Key must not"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := client.New(tt.cfg)
			if err == nil {
				t.Fatal("got no error")
			}
			for _, w := range tt.wants {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q: want it to mention %q", err, w)
				}
			}
			if strings.Contains(err.Error(), "pw") {
				t.Errorf("error %q repeats URL credentials", err)
			}
		})
	}
	if _, err := client.New(client.Config{Key: "k", Endpoints: []string{"https://h:8443/prefix/"}}); err != nil {
		t.Errorf("valid config: %v", err)
	}
}

func TestTokenCachesUntilMargin(t *testing.T) {
	f := newFake(t, serveToken(testToken, 100))
	clk := newClock()
	start := clk.Now()
	c, _ := newClient(t, clk, client.Config{Endpoints: []string{f.URL}}) // Margin 30s: reuse until 70s
	steps := []struct {
		at       time.Duration
		requests int64
	}{
		{0, 1},
		{time.Second, 1},
		{69*time.Second + 999*time.Millisecond, 1},
		{70 * time.Second, 2},  // the margin is reached: ask again
		{100 * time.Second, 2}, // the new token, got at 70s, is reused until 140s
		{140 * time.Second, 3},
	}
	for _, s := range steps {
		clk.Advance(start.Add(s.at).Sub(clk.Now()))
		tok, err := c.Token(context.Background(), "liveness")
		if err != nil {
			t.Fatalf("at %v: %v", s.at, err)
		}
		if got := f.Requests(); got != s.requests {
			t.Errorf("at %v: requests: got %d, want %d", s.at, got, s.requests)
		}
		if tok.Value != testToken || tok.Name != "liveness" {
			t.Errorf("at %v: got %#v", s.at, tok)
		}
		if !tok.Valid(clk.Now()) {
			t.Errorf("at %v: token not valid", s.at)
		}
	}
}

func TestExpiryCountsFromSend(t *testing.T) {
	clk := newClock()
	sent := clk.Now()
	// The answer takes 7s of the client's clock to arrive.
	f := newFake(t, func(_ int64, w http.ResponseWriter) {
		clk.Advance(7 * time.Second)
		writeToken(w, testToken, 100)
	})
	c, _ := newClient(t, clk, client.Config{Endpoints: []string{f.URL}})
	tok, err := c.Token(context.Background(), "liveness")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := tok.ExpiresAt, sent.Add(100*time.Second); !got.Equal(want) {
		t.Errorf("ExpiresAt: got %v, want %v (send time plus expires_in)", got, want)
	}
	if got, want := tok.ExpiresIn(clk.Now()), 93*time.Second; got != want {
		t.Errorf("ExpiresIn: got %v, want %v", got, want)
	}
}

func TestSingleFlight(t *testing.T) {
	const callers = 20
	release := make(chan struct{})
	f := newFake(t, func(_ int64, w http.ResponseWriter) {
		<-release
		writeToken(w, testToken, 100)
	})
	c, _ := newClient(t, newClock(), client.Config{Endpoints: []string{f.URL}})

	var wg sync.WaitGroup
	errs := make(chan error, callers)
	for range callers {
		wg.Go(func() {
			tok, err := c.Token(context.Background(), "liveness")
			if err == nil && tok.Value != testToken {
				err = fmt.Errorf("got %v", tok)
			}
			errs <- err
		})
	}
	// One caller gives up; the others keep waiting for the same request.
	ctx, cancel := context.WithCancel(context.Background())
	quit := make(chan error, 1)
	go func() { _, err := c.Token(ctx, "liveness"); quit <- err }()
	waitFor(t, "all callers wait", func() bool { return client.Waiters(c, "liveness") == callers+1 })
	cancel()
	if err := <-quit; !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled caller: got %v, want context.Canceled", err)
	}
	if got := client.Waiters(c, "liveness"); got != callers {
		t.Errorf("waiters after one left: got %d, want %d", got, callers)
	}
	close(release)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	if got := f.Requests(); got != 1 {
		t.Errorf("requests: got %d, want 1", got)
	}
}

func TestRetryAfter(t *testing.T) {
	tests := []struct {
		name     string
		status   int
		after    string
		failures int64 // answers before the token
		maxWait  time.Duration
		want     error
		slept    []time.Duration
		requests int64
	}{
		{"503 once", http.StatusServiceUnavailable, "2", 1, 0, nil, []time.Duration{2 * time.Second}, 2},
		{"429 twice", http.StatusTooManyRequests, "1", 2, 0, nil, []time.Duration{time.Second, time.Second}, 3},
		{"503 past MaxWait", http.StatusServiceUnavailable, "5", 10, 12 * time.Second, client.ErrUnavailable,
			[]time.Duration{5 * time.Second, 5 * time.Second}, 3},
		{"Retry-After longer than MaxWait", http.StatusServiceUnavailable, "60", 1, 0, client.ErrUnavailable, nil, 1},
		{"503 without Retry-After", http.StatusServiceUnavailable, "", 1, 0, client.ErrUnavailable, nil, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFake(t, func(n int64, w http.ResponseWriter) {
				if n <= tt.failures {
					writeError(w, tt.status, "no_token", "this replica holds no servable token", tt.after)
					return
				}
				writeToken(w, testToken, 100)
			})
			clk := newClock()
			c, slept := newClient(t, clk, client.Config{Endpoints: []string{f.URL}, MaxWait: tt.maxWait})
			tok, err := c.Token(context.Background(), "liveness")
			if !errors.Is(err, tt.want) || (tt.want == nil && err != nil) {
				t.Fatalf("got error %v, want %v", err, tt.want)
			}
			noSecrets(t, err)
			if err == nil && !tok.Valid(clk.Now()) {
				t.Errorf("token %v not valid", tok)
			}
			if err != nil && !strings.Contains(err.Error(), "no_token") {
				t.Errorf("error %q: want the service's code", err)
			}
			if fmt.Sprint(*slept) != fmt.Sprint(tt.slept) {
				t.Errorf("waits: got %v, want %v", *slept, tt.slept)
			}
			if got := f.Requests(); got != tt.requests {
				t.Errorf("requests: got %d, want %d", got, tt.requests)
			}
		})
	}
}

func TestRetryAfterRealWait(t *testing.T) {
	// The real timer, with the shortest Retry-After there is.
	f := newFake(t, func(n int64, w http.ResponseWriter) {
		if n == 1 {
			writeError(w, http.StatusServiceUnavailable, "no_token", "not yet", "1")
			return
		}
		writeToken(w, testToken, 100)
	})
	c, err := client.New(client.Config{Endpoints: []string{f.URL}, Key: testKey})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if _, err := c.Token(context.Background(), "liveness"); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took < time.Second {
		t.Errorf("retried after %v, before the Retry-After of 1s", took)
	}
	// A context that ends during the wait ends the call.
	c2, _ := client.New(client.Config{Endpoints: []string{f.URL}, Key: testKey})
	f.n.Store(0)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := c2.Token(ctx, "liveness"); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("got %v, want context.DeadlineExceeded", err)
	}
}

func TestFailover(t *testing.T) {
	tests := []struct {
		name  string
		first func(t *testing.T) (url string, requests func() int64)
	}{
		{"closed listener", func(t *testing.T) (string, func() int64) { return deadURL(t), func() int64 { return 0 } }},
		{"500", func(t *testing.T) (string, func() int64) {
			f := newFake(t, func(_ int64, w http.ResponseWriter) { writeError(w, 500, "internal", "boom", "") })
			return f.URL, f.Requests
		}},
		{"502 without a JSON body", func(t *testing.T) (string, func() int64) {
			f := newFake(t, func(_ int64, w http.ResponseWriter) { w.WriteHeader(http.StatusBadGateway) })
			return f.URL, f.Requests
		}},
		{"503 with Retry-After", func(t *testing.T) (string, func() int64) {
			f := newFake(t, func(_ int64, w http.ResponseWriter) {
				writeError(w, http.StatusServiceUnavailable, "no_token", "none", "5")
			})
			return f.URL, f.Requests
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			bad, badRequests := tt.first(t)
			good := newFake(t, serveToken(testToken, 100))
			clk := newClock()
			c, slept := newClient(t, clk, client.Config{Endpoints: []string{bad, good.URL}})
			for i := range 2 {
				tok, err := c.Token(context.Background(), "liveness")
				if err != nil {
					t.Fatalf("call %d: %v", i, err)
				}
				if tok.Value != testToken {
					t.Errorf("call %d: got %v", i, tok)
				}
				clk.Advance(71 * time.Second) // past the margin (reuse ends at 70s)
			}
			// The second call starts from the endpoint that answered well.
			if got := badRequests(); got > 1 {
				t.Errorf("requests to the failing endpoint: got %d, want at most 1", got)
			}
			if got := good.Requests(); got != 2 {
				t.Errorf("requests to the good endpoint: got %d, want 2", got)
			}
			if len(*slept) != 0 {
				t.Errorf("waited %v with a good endpoint at hand", *slept)
			}
		})
	}
}

func TestAllEndpointsDown(t *testing.T) {
	c, _ := newClient(t, newClock(), client.Config{Endpoints: []string{deadURL(t), deadURL(t)}})
	_, err := c.Token(context.Background(), "liveness")
	if !errors.Is(err, client.ErrUnavailable) {
		t.Fatalf("got %v, want ErrUnavailable", err)
	}
	noSecrets(t, err)
}

func TestNeverExpired(t *testing.T) {
	var down bool
	var mu sync.Mutex
	f := newFake(t, func(_ int64, w http.ResponseWriter) {
		mu.Lock()
		defer mu.Unlock()
		if down {
			writeError(w, http.StatusServiceUnavailable, "no_token", "none", "10")
			return
		}
		writeToken(w, testToken, 100)
	})
	clk := newClock()
	start := clk.Now()
	c, slept := newClient(t, clk, client.Config{Endpoints: []string{f.URL}})
	if _, err := c.Token(context.Background(), "liveness"); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	down = true
	mu.Unlock()

	steps := []struct {
		at       time.Duration
		want     error // nil: the token, still valid
		requests int64
	}{
		{75 * time.Second, nil, 2}, // past the margin: asks, fails, serves the valid token
		{80 * time.Second, nil, 2}, // within the Retry-After (10s): does not ask
		{85 * time.Second, nil, 3}, // asks again
		{99 * time.Second, nil, 4}, // still valid
		// Expired: nothing to fall back on, so it waits the Retry-After
		// (10s) as long as MaxWait (30s) allows, then returns the error.
		{100 * time.Second, client.ErrUnavailable, 8},
		{200 * time.Second, client.ErrUnavailable, 12},
	}
	for _, s := range steps {
		clk.Advance(start.Add(s.at).Sub(clk.Now()))
		tok, err := c.Token(context.Background(), "liveness")
		if s.want == nil {
			if err != nil || !tok.Valid(clk.Now()) {
				t.Errorf("at %v: got %v, %v; want the valid token", s.at, tok, err)
			}
		} else {
			if !errors.Is(err, s.want) {
				t.Errorf("at %v: got error %v, want %v", s.at, err, s.want)
			}
			if tok != (client.Token{}) {
				t.Errorf("at %v: got token %v with the error", s.at, tok)
			}
		}
		if got := f.Requests(); got != s.requests {
			t.Errorf("at %v: requests: got %d, want %d", s.at, got, s.requests)
		}
	}
	// Only the calls without a valid token to fall back on waited.
	if got, want := fmt.Sprint(*slept), fmt.Sprint([]time.Duration{10 * time.Second, 10 * time.Second, 10 * time.Second,
		10 * time.Second, 10 * time.Second, 10 * time.Second}); got != want {
		t.Errorf("waits: got %v, want %v", got, want)
	}
}

func TestServiceErrors(t *testing.T) {
	tests := []struct {
		name   string
		key    string
		token  string
		want   error
		status int
		code   string
	}{
		{"401", "wrong", "liveness", client.ErrUnauthorized, 401, "unauthorized"},
		{"404", testKey, "other", client.ErrUnknownToken, 404, "not_found"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFake(t, serveToken(testToken, 100))
			other := newFake(t, serveToken(testToken, 100))
			c, err := client.New(client.Config{Endpoints: []string{f.URL, other.URL}, Key: tt.key})
			if err != nil {
				t.Fatal(err)
			}
			_, err = c.Token(context.Background(), tt.token)
			if !errors.Is(err, tt.want) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
			if errors.Is(err, client.ErrUnavailable) {
				t.Errorf("%v is also ErrUnavailable", err)
			}
			var ae *client.Error
			if !errors.As(err, &ae) || ae.Status != tt.status || ae.Code != tt.code || ae.Message == "" {
				t.Errorf("got %#v, want status %d, code %q and a message", ae, tt.status, tt.code)
			}
			if strings.Contains(err.Error(), tt.key) && tt.key != "wrong" || strings.Contains(err.Error(), testKey) {
				t.Errorf("error %q holds the key", err)
			}
			if got := other.Requests(); got != 0 {
				t.Errorf("asked the next endpoint %d times after a %d", got, tt.status)
			}
		})
	}
}

func TestMalformedAnswers(t *testing.T) {
	tests := []struct {
		name string
		body string
		want string
	}{
		{"not JSON", "<html>" + testToken, "not a token"},
		{"wrong type", `{"name":"liveness","token":12,"expires_in":100}`, "not a token"},
		{"no token", `{"name":"liveness","expires_in":100}`, "token is missing"},
		{"empty token", `{"name":"liveness","token":"","expires_in":100}`, "token is empty"},
		{"no expires_in", `{"name":"liveness","token":"` + testToken + `"}`, "expires_in is missing"},
		{"zero expires_in", `{"name":"liveness","token":"` + testToken + `","expires_in":0}`, "expires_in 0 is not positive"},
		{"negative expires_in", `{"name":"liveness","token":"` + testToken + `","expires_in":-5}`, "expires_in -5 is not positive"},
		{"fractional expires_in", `{"name":"liveness","token":"` + testToken + `","expires_in":1.5}`, "not a token"},
		{"wrong name", `{"name":"other","token":"` + testToken + `","expires_in":100}`, `name "other", want "liveness"`},
		{"no name", `{"token":"` + testToken + `","expires_in":100}`, "name is missing"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFake(t, func(_ int64, w http.ResponseWriter) { fmt.Fprint(w, tt.body) })
			c, _ := newClient(t, newClock(), client.Config{Endpoints: []string{f.URL}})
			tok, err := c.Token(context.Background(), "liveness")
			if !errors.Is(err, client.ErrMalformed) || !errors.Is(err, client.ErrUnavailable) {
				t.Fatalf("got %v, want ErrMalformed within ErrUnavailable", err)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q: want it to say %q", err, tt.want)
			}
			noSecrets(t, err)
			if tok != (client.Token{}) {
				t.Errorf("got token %v with the error", tok)
			}
		})
	}
}

func TestTokenNeverPrintsValue(t *testing.T) {
	tok := client.Token{Name: "liveness", Value: testToken, ExpiresAt: newClock().Now()}
	for _, s := range []string{fmt.Sprint(tok), fmt.Sprintf("%v %+v %#v %s", tok, tok, tok, tok)} {
		if strings.Contains(s, testToken) {
			t.Errorf("%q holds the value", s)
		}
		if !strings.Contains(s, "sha256:") {
			t.Errorf("%q has no fingerprint", s)
		}
	}
}
