package httpapi_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"time"

	"github.com/tokenkeeper/tokenkeeper/cache"
	"github.com/tokenkeeper/tokenkeeper/clock"
	"github.com/tokenkeeper/tokenkeeper/httpapi"
)

// staticTokens always offers the same token.
type staticTokens struct{ tok cache.Token }

func (s staticTokens) Current() (cache.Token, bool) { return s.tok, true }

func Example() {
	now := time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)
	tokens := staticTokens{cache.Token{Value: "liveness-token", Deadline: now.Add(59*time.Minute + 30*time.Second)}}
	srv, err := httpapi.New(httpapi.Config{
		Instance:   "replica-1",
		ReaderKeys: []string{"rk-7Hq2xV9pN4mL8sK3tW6yB1"},
		Clock:      fixedClock{clock.Real(), now},
	}, httpapi.Single(tokens), nil) // no admin keys: no Controller needed
	if err != nil {
		fmt.Println(err)
		return
	}
	// In production: srv.Serve(ctx, ln).

	req := httptest.NewRequest(http.MethodGet, "/v1/tokens/liveness", nil)
	req.Header.Set("Authorization", "Bearer rk-7Hq2xV9pN4mL8sK3tW6yB1")
	w := httptest.NewRecorder()
	srv.Handler().ServeHTTP(w, req)
	fmt.Println(w.Code, w.Header().Get("X-Tokenkeeper-Instance"))
	fmt.Print(w.Body)

	w = httptest.NewRecorder()
	srv.Handler().ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/v1/tokens/liveness", nil))
	fmt.Println(w.Code, w.Header().Get("WWW-Authenticate"))
	fmt.Print(w.Body)
	// Output:
	// 200 replica-1
	// {"name":"liveness","token":"liveness-token","expires_at":"2026-03-04T06:05:37Z","expires_in":3570}
	// 401 Bearer realm="tokenkeeper"
	// {"error":{"code":"unauthorized","message":"a valid API key is required: Authorization: Bearer <key> or X-API-Key: <key>"}}
}

// fixedClock is a clock whose Now stands still.
type fixedClock struct {
	clock.Clock
	t time.Time
}

func (f fixedClock) Now() time.Time { return f.t }
