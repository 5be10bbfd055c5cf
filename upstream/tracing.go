package upstream

import (
	"net/http"

	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/tokenkeeper/tokenkeeper/internal/tracing"
)

// traced returns a copy of client whose transport makes a client span of
// every call (OpenTelemetry's otelhttp: method, URL without credentials,
// status code; never a header or a body) and sends the W3C trace context
// to the upstream. endpoints maps a URL (scheme, host and path) to the
// endpoint the span is named after ("POST liveness").
func traced(tp trace.TracerProvider, client *http.Client, endpoints map[string]string) *http.Client {
	next := client.Transport
	if next == nil {
		next = http.DefaultTransport
	}
	c := *client
	c.Transport = otelhttp.NewTransport(next,
		otelhttp.WithTracerProvider(tracing.Provider(tp)),
		otelhttp.WithPropagators(propagation.TraceContext{}),
		otelhttp.WithSpanNameFormatter(func(_ string, req *http.Request) string {
			endpoint, ok := endpoints[req.URL.Scheme+"://"+req.URL.Host+req.URL.Path]
			if !ok {
				endpoint = endpointOther
			}
			return req.Method + " " + endpoint
		}))
	return &c
}
