package httpapi_test

import (
	"bytes"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokenkeeper/tokenkeeper/cache"
	"github.com/tokenkeeper/tokenkeeper/httpapi"
)

// countingWriter counts the lines written to it, and keeps nothing.
type countingWriter struct{ lines atomic.Int64 }

func (c *countingWriter) Write(p []byte) (int, error) {
	c.lines.Add(int64(bytes.Count(p, []byte{'\n'})))
	return len(p), nil
}

// BenchmarkTokenReadAudit is BenchmarkTokenRead's in-process read, in
// parallel, with the audit trail off and on (the default of 60 lines per
// key, token and minute, the rest counted): its cost per read, and the
// lines it writes per second at that rate.
func BenchmarkTokenReadAudit(b *testing.B) {
	for _, on := range []bool{false, true} {
		name := "off"
		if on {
			name = "on"
		}
		b.Run(name, func(b *testing.B) {
			tokens := &fakeTokens{}
			tokens.set(cache.Token{Value: "eyJhbGciOiJSUzI1NiJ9.bench.sig", Deadline: time.Now().Add(time.Hour)}, true)
			lines := &countingWriter{}
			cfg := httpapi.Config{Instance: "bench", ReaderKeys: []string{"k7Qm2vX9pL4sN8rT1wY6zB3cF5hJ0dG2aE9uI4oP7xQ"}}
			if on {
				cfg.Security.Audit = slog.New(slog.NewJSONHandler(lines, nil))
			}
			srv, err := httpapi.New(cfg, httpapi.Single(tokens), nil)
			if err != nil {
				b.Fatal(err)
			}
			h := srv.Handler()
			start := time.Now()
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				req := httptest.NewRequest(http.MethodGet, "/v1/tokens/liveness", nil)
				req.Header.Set("Authorization", "Bearer k7Qm2vX9pL4sN8rT1wY6zB3cF5hJ0dG2aE9uI4oP7xQ")
				w := &discardWriter{h: http.Header{}}
				for pb.Next() {
					clear(w.h)
					h.ServeHTTP(w, req)
				}
			})
			secs := time.Since(start).Seconds()
			b.ReportMetric(float64(b.N)/secs, "reads/s")
			b.ReportMetric(float64(lines.lines.Load())/secs, "audit-lines/s")
		})
	}
}
