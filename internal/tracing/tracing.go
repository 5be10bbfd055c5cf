// Package tracing holds what the building blocks share to make
// OpenTelemetry spans: the tracer's name, the attribute keys, the test of
// whether a TracerProvider makes spans at all, and the log handler that
// joins log lines to the span they were written in.
//
// What a span may carry: names, counts, outcomes, durations, fingerprints
// and generations. Never a token, a key, a secret, a device id in clear or
// a header: spans leave the process for a collector the service does not
// own.
package tracing

import (
	"context"
	"log/slog"
	"strings"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// Scope is the instrumentation scope of every span the module makes.
const Scope = "github.com/tokenkeeper/tokenkeeper"

// Attribute keys. Those of the OpenTelemetry semantic conventions are
// spelled as the conventions spell them.
const (
	Token       = attribute.Key("tokenkeeper.token")       // the token's name in the catalog
	Instance    = attribute.Key("tokenkeeper.instance")    // this replica
	Attempt     = attribute.Key("tokenkeeper.attempt")     // failed attempts in a row before this one, plus one
	Outcome     = attribute.Key("tokenkeeper.outcome")     // an attempt's outcome, as in the fleet view
	Reason      = attribute.Key("tokenkeeper.reason")      // why an attempt ran
	Generation  = attribute.Key("tokenkeeper.generation")  // of the token stored or adopted
	Fingerprint = attribute.Key("tokenkeeper.fingerprint") // a token's short fingerprint, never the token
	Writer      = attribute.Key("tokenkeeper.writer")      // the replica that stored a token
	Delay       = attribute.Key("tokenkeeper.propagation_delay_ms")
	Device      = attribute.Key("tokenkeeper.device") // a device's keyed digest, never its id

	DBSystem    = attribute.Key("db.system.name")
	DBOperation = attribute.Key("db.operation.name")
)

// Provider returns tp, or the global TracerProvider when tp is nil.
func Provider(tp trace.TracerProvider) trace.TracerProvider {
	if tp == nil {
		return otel.GetTracerProvider()
	}
	return tp
}

// Tracer returns the module's tracer of tp (the global one when nil).
func Tracer(tp trace.TracerProvider) trace.Tracer {
	return Provider(tp).Tracer(Scope)
}

// Enabled reports whether tp makes real spans: spans with ids, sampled or
// not. The no-op provider, and the global one before a provider was set,
// make none. It starts a span it never ends, so that nothing is exported.
func Enabled(tp trace.TracerProvider) bool {
	_, span := Provider(tp).Tracer(Scope).Start(context.Background(), "probe")
	return span.SpanContext().IsValid()
}

// LogHandler wraps h so that a record logged with a context holding a
// valid span carries its trace_id and span_id.
func LogHandler(h slog.Handler) slog.Handler {
	if _, ok := h.(logHandler); ok {
		return h
	}
	return logHandler{h}
}

// Logger returns l with LogHandler around its handler.
func Logger(l *slog.Logger) *slog.Logger {
	if _, ok := l.Handler().(logHandler); ok {
		return l
	}
	return slog.New(LogHandler(l.Handler()))
}

type logHandler struct{ slog.Handler }

func (h logHandler) Handle(ctx context.Context, r slog.Record) error {
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
		r = r.Clone()
		r.AddAttrs(slog.String("trace_id", sc.TraceID().String()), slog.String("span_id", sc.SpanID().String()))
	}
	return h.Handler.Handle(ctx, r)
}

func (h logHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return logHandler{h.Handler.WithAttrs(as)}
}

func (h logHandler) WithGroup(name string) slog.Handler {
	return logHandler{h.Handler.WithGroup(name)}
}

// Child starts a span under the one ctx holds, with that span's own
// provider, and none (a no-op span) when ctx holds no span that records:
// the Redis calls of a traced refresh get spans, the same calls elsewhere
// (polls, heartbeats) cost nothing.
func Child(ctx context.Context, name string, opts ...trace.SpanStartOption) (context.Context, trace.Span) {
	parent := trace.SpanFromContext(ctx)
	if !parent.IsRecording() {
		return ctx, parent
	}
	return parent.TracerProvider().Tracer(Scope).Start(ctx, name, opts...)
}

// Inject returns the W3C traceparent of the span ctx holds, or "" when it
// holds none.
func Inject(ctx context.Context) string {
	sc := trace.SpanContextFromContext(ctx)
	if !sc.IsValid() {
		return ""
	}
	c := propagation.MapCarrier{}
	propagation.TraceContext{}.Inject(ctx, c)
	return c["traceparent"]
}

// Extract returns the span context of a W3C traceparent, invalid when tp
// is empty or malformed.
func Extract(tp string) trace.SpanContext {
	if tp == "" {
		return trace.SpanContext{}
	}
	ctx := propagation.TraceContext{}.Extract(context.Background(), propagation.MapCarrier{"traceparent": tp})
	return trace.SpanContextFromContext(ctx)
}

// TokenName returns the token's name in a key of cache.KeysFor
// (tokenkeeper:{NAME}:...), or the key itself when it has no hash tag.
func TokenName(key string) string {
	i := strings.IndexByte(key, '{')
	j := strings.IndexByte(key, '}')
	if i < 0 || j < i {
		return key
	}
	return key[i+1 : j]
}

// Fail marks span as failed with err's message. Errors of this module
// carry no secret (they name fingerprints, never tokens).
func Fail(span trace.Span, err error) {
	if err == nil {
		return
	}
	span.RecordError(err)
	span.SetStatus(codes.Error, err.Error())
}
