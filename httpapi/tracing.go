package httpapi

import (
	"net/http"
	"strings"

	"github.com/felixge/httpsnoop"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// traced wraps next so that every request gets a server span, a child of
// the span its traceparent header names (W3C trace context), sampled as
// the provider's sampler says; a request not sampled costs what the
// provider spends on a span it does not record (with the SDK: new trace and
// span ids, the sampler's decision, a context; BenchmarkTokenReadTraced's
// ratio-1pct against off) and nothing more. The span holds the method, the route (its
// pattern: a device id or token name in the path is never recorded), the
// status code and the instance; no header, query or body.
func traced(tp trace.TracerProvider, next http.Handler) http.Handler {
	tracer := tp.Tracer("github.com/tokenkeeper/tokenkeeper/httpapi")
	prop := propagation.TraceContext{}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		route := routeOf(r.URL.Path)
		ctx := prop.Extract(r.Context(), propagation.HeaderCarrier(r.Header))
		ctx, span := tracer.Start(ctx, route, trace.WithSpanKind(trace.SpanKindServer))
		if !span.IsRecording() {
			// Not sampled: the request goes on as it came, with nothing
			// allocated for it (what its handler calls starts traces of
			// its own, sampled on their own).
			next.ServeHTTP(w, r)
			return
		}
		defer span.End()
		span.SetName(r.Method + " " + route)
		span.SetAttributes(
			attribute.String("http.request.method", r.Method),
			attribute.String("http.route", route),
		)
		status := http.StatusOK
		w = httpsnoop.Wrap(w, httpsnoop.Hooks{
			WriteHeader: func(next httpsnoop.WriteHeaderFunc) httpsnoop.WriteHeaderFunc {
				return func(code int) {
					status = code
					next(code)
				}
			},
		})
		next.ServeHTTP(w, r.WithContext(ctx))
		span.SetAttributes(attribute.Int("http.response.status_code", status))
		if status >= 500 {
			span.SetStatus(codes.Error, http.StatusText(status))
		}
	})
}

// routeOf returns the route pattern of path, as the routes name it
// (Server.routes), with {name} and {device} for what stands in them;
// "other" for a path no route has.
func routeOf(path string) string {
	switch path {
	case "/v1/tokens", "/healthz", "/readyz", "/metrics", "/openapi.json", "/v1/status", "/status":
		return path
	}
	rest, ok := strings.CutPrefix(path, "/v1/tokens/")
	if !ok || rest == "" {
		return "other"
	}
	name, sub, _ := strings.Cut(rest, "/")
	switch {
	case name == "":
		return "other"
	case sub == "" && !strings.HasSuffix(rest, "/"):
		return "/v1/tokens/{name}"
	case sub == "refresh":
		return "/v1/tokens/{name}/refresh"
	case strings.HasPrefix(sub, "devices/"):
		return "/v1/tokens/{name}/devices/{device}"
	}
	return "other"
}
