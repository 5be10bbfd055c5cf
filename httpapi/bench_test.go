package httpapi_test

import (
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/tokenkeeper/tokenkeeper/cache"
	"github.com/tokenkeeper/tokenkeeper/httpapi"
)

// staticBody is what the baseline answers: a token answer of the same size.
var staticBody = []byte(`{"name":"liveness","token":"eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJsaXZlbmVzcyJ9.c2lnbmF0dXJlLXNpZ25hdHVyZS1zaWduYXR1cmU","expires_at":"2026-03-04T06:06:07Z","expires_in":3600}` + "\n")

// staticEcho is the baseline: a bare echo handler answering a constant JSON
// body.
func staticEcho() http.Handler {
	e := echo.New()
	e.GET("/v1/tokens/:name", func(c echo.Context) error {
		return c.JSONBlob(http.StatusOK, staticBody)
	})
	return e
}

// benchServer is a server holding a token like an RDP one, read with a
// 43-character key among three.
func benchServer(b *testing.B) (http.Handler, *http.Request) {
	b.Helper()
	now := time.Now()
	tokens := &fakeTokens{}
	tokens.set(cache.Token{
		Value:    "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJsaXZlbmVzcyJ9.c2lnbmF0dXJlLXNpZ25hdHVyZS1zaWduYXR1cmU",
		Deadline: now.Add(time.Hour),
	}, true)
	key := "k7Qm2vX9pL4sN8rT1wY6zB3cF5hJ0dG2aE9uI4oP7xQ"
	srv, err := httpapi.New(httpapi.Config{
		Instance:   "bench",
		ReaderKeys: []string{"another-key-0000000000000000000000000000000", key},
		AdminKeys:  []string{"admin-key-000000000000000000000000000000000"},
	}, httpapi.Single(tokens), &fakeController{})
	if err != nil {
		b.Fatal(err)
	}
	req := httptest.NewRequest(http.MethodGet, "/v1/tokens/liveness", nil)
	req.Header.Set("Authorization", "Bearer "+key)
	return srv.Handler(), req
}

// discardWriter is a ResponseWriter that keeps nothing but a reused header
// map, so that the allocations counted are the handler's.
type discardWriter struct {
	h      http.Header
	status int
}

func (w *discardWriter) Header() http.Header         { return w.h }
func (w *discardWriter) Write(p []byte) (int, error) { return len(p), nil }
func (w *discardWriter) WriteHeader(status int)      { w.status = status }

// BenchmarkTokenRead measures a token read through the whole handler
// (routing, key check, rate limiter, metrics, JSON) in process, next to the
// baseline of a static echo handler in the same harness; httpapi-echo-route
// is the same read sent with a body, which takes echo's route instead of
// the short way plain reads take. The HTTP sub-benchmarks do the same over
// loopback TCP with keep-alive, which is what a client sees.
func BenchmarkTokenRead(b *testing.B) {
	inProcess := func(h http.Handler, req *http.Request) func(b *testing.B) {
		return func(b *testing.B) {
			w := &discardWriter{h: http.Header{}}
			b.ReportAllocs()
			for b.Loop() {
				clear(w.h)
				h.ServeHTTP(w, req)
			}
			if w.status != http.StatusOK {
				b.Fatalf("status = %d, want 200", w.status)
			}
		}
	}
	h, req := benchServer(b)
	b.Run("httpapi", inProcess(h, req))
	b.Run("static-echo", inProcess(staticEcho(), req))
	withBody := httptest.NewRequest(http.MethodGet, req.URL.Path, strings.NewReader("x"))
	withBody.Header = req.Header
	b.Run("httpapi-echo-route", inProcess(h, withBody))

	overHTTP := func(h http.Handler, req *http.Request) func(b *testing.B) {
		return func(b *testing.B) {
			ts := httptest.NewUnstartedServer(h)
			ts.Listener.Close()
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			ts.Listener = ln
			ts.Start()
			b.Cleanup(ts.Close)
			client := ts.Client()
			client.Transport.(*http.Transport).MaxIdleConnsPerHost = 64
			url := ts.URL + req.URL.Path
			auth := req.Header.Get("Authorization")
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					r, _ := http.NewRequest(http.MethodGet, url, nil)
					r.Header.Set("Authorization", auth)
					res, err := client.Do(r)
					if err != nil {
						b.Error(err)
						return
					}
					_, _ = io.Copy(io.Discard, res.Body)
					res.Body.Close()
					if res.StatusCode != http.StatusOK {
						b.Errorf("status = %d, want 200", res.StatusCode)
						return
					}
				}
			})
		}
	}
	b.Run("httpapi-http", overHTTP(h, req))
	b.Run("static-echo-http", overHTTP(staticEcho(), req))
}
