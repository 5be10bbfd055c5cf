package httpapi_test

import (
	"context"
	"net/http"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/tokenkeeper/tokenkeeper/cache"
	"github.com/tokenkeeper/tokenkeeper/httpapi"
)

type dropSpans struct{}

func (dropSpans) ExportSpans(context.Context, []sdktrace.ReadOnlySpan) error { return nil }
func (dropSpans) Shutdown(context.Context) error                             { return nil }

// BenchmarkTokenReadTraced is BenchmarkTokenRead's in-process read with
// tracing off (no TracerProvider: no middleware), and with the SDK's
// server spans sampled at 1% (parentbased_traceidratio, what an operator
// sets with OTEL_TRACES_SAMPLER) and at 100%, the spans dropped by the
// exporter.
func BenchmarkTokenReadTraced(b *testing.B) {
	for _, tc := range []struct {
		name    string
		sampler sdktrace.Sampler // nil: tracing off
	}{
		{"off", nil},
		{"ratio-1pct", sdktrace.ParentBased(sdktrace.TraceIDRatioBased(0.01))},
		{"always", sdktrace.AlwaysSample()},
	} {
		b.Run(tc.name, func(b *testing.B) {
			var tp trace.TracerProvider
			if tc.sampler != nil {
				sdk := sdktrace.NewTracerProvider(sdktrace.WithSampler(tc.sampler), sdktrace.WithBatcher(dropSpans{}))
				b.Cleanup(func() { _ = sdk.Shutdown(context.Background()) })
				tp = sdk
			}
			h, req := tracedServer(b, tp)
			w := &discardWriter{h: http.Header{}}
			b.ReportAllocs()
			for b.Loop() {
				clear(w.h)
				h.ServeHTTP(w, req)
			}
			if w.status != http.StatusOK {
				b.Fatalf("status = %d, want 200", w.status)
			}
		})
	}
}

// tracedServer is benchServer with tp as its TracerProvider.
func tracedServer(b *testing.B, tp trace.TracerProvider) (http.Handler, *http.Request) {
	b.Helper()
	_, req := benchServer(b)
	tokens := &fakeTokens{}
	tokens.set(cache.Token{Value: "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJsaXZlbmVzcyJ9.c2lnbmF0dXJlLXNpZ25hdHVyZS1zaWduYXR1cmU",
		Deadline: time.Now().Add(time.Hour)}, true)
	srv, err := httpapi.New(httpapi.Config{
		Instance:       "bench",
		ReaderKeys:     []string{"another-key-0000000000000000000000000000000", "k7Qm2vX9pL4sN8rT1wY6zB3cF5hJ0dG2aE9uI4oP7xQ"},
		AdminKeys:      []string{"admin-key-000000000000000000000000000000000"},
		TracerProvider: tp,
	}, httpapi.Single(tokens), &fakeController{})
	if err != nil {
		b.Fatal(err)
	}
	return srv.Handler(), req
}
