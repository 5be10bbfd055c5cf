package tracing_test

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/tokenkeeper/tokenkeeper/internal/tracing"
)

func recorder(t *testing.T) (*sdktrace.TracerProvider, *tracetest.SpanRecorder) {
	t.Helper()
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	return tp, rec
}

// A line logged within a span carries its trace and span ids; one logged
// outside carries neither.
func TestLogHandlerAddsTheSpan(t *testing.T) {
	tp, _ := recorder(t)
	var buf bytes.Buffer
	log := tracing.Logger(slog.New(slog.NewTextHandler(&buf, nil))).With("instance", "a")
	ctx, span := tp.Tracer("t").Start(context.Background(), "refresh")
	log.InfoContext(ctx, "token refreshed")
	span.End()
	log.InfoContext(context.Background(), "outside")

	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("got %d lines, want 2:\n%s", len(lines), buf.String())
	}
	sc := span.SpanContext()
	for _, want := range []string{"trace_id=" + sc.TraceID().String(), "span_id=" + sc.SpanID().String(), "instance=a"} {
		if !strings.Contains(lines[0], want) {
			t.Errorf("the line within the span lacks %s: %s", want, lines[0])
		}
	}
	if strings.Contains(lines[1], "trace_id") {
		t.Errorf("the line outside a span has a trace id: %s", lines[1])
	}
	if l := tracing.Logger(log); l != log {
		t.Error("Logger wrapped a logger twice")
	}
}

// Child makes a span under a recording parent, with the parent's
// provider, and none otherwise.
func TestChildOnlyUnderARecordingParent(t *testing.T) {
	tp, rec := recorder(t)
	if _, span := tracing.Child(context.Background(), "write"); span.IsRecording() {
		t.Error("a span without a parent")
	}
	ctx, parent := tp.Tracer("t").Start(context.Background(), "refresh")
	_, child := tracing.Child(ctx, "write")
	child.End()
	parent.End()
	spans := rec.Ended()
	if len(spans) != 2 || spans[0].Name() != "write" || spans[0].Parent().SpanID() != parent.SpanContext().SpanID() {
		t.Fatalf("spans: %v, want write under refresh", spans)
	}
	unsampled := trace.ContextWithSpanContext(context.Background(), trace.NewSpanContext(trace.SpanContextConfig{
		TraceID: parent.SpanContext().TraceID(), SpanID: parent.SpanContext().SpanID()}))
	if _, span := tracing.Child(unsampled, "write"); span.IsRecording() {
		t.Error("a span under a parent that does not record")
	}
}

func TestInjectExtract(t *testing.T) {
	tp, _ := recorder(t)
	if tracing.Inject(context.Background()) != "" {
		t.Error("a traceparent without a span")
	}
	ctx, span := tp.Tracer("t").Start(context.Background(), "request")
	tp1 := tracing.Inject(ctx)
	sc := tracing.Extract(tp1)
	if !sc.IsValid() || sc.TraceID() != span.SpanContext().TraceID() || sc.SpanID() != span.SpanContext().SpanID() || !sc.IsRemote() {
		t.Errorf("Extract(%q) = %v, want the span's remote context", tp1, sc)
	}
	for _, bad := range []string{"", "00-zz-yy-01", "not a traceparent"} {
		if tracing.Extract(bad).IsValid() {
			t.Errorf("Extract(%q) is valid", bad)
		}
	}
}

func TestEnabled(t *testing.T) {
	tp, _ := recorder(t)
	never := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.NeverSample()))
	for _, tc := range []struct {
		name string
		tp   trace.TracerProvider
		want bool
	}{
		{"sdk", tp, true},
		{"sdk sampling nothing", never, true},
		{"noop", noop.NewTracerProvider(), false},
	} {
		if got := tracing.Enabled(tc.tp); got != tc.want {
			t.Errorf("%s: Enabled = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestTokenName(t *testing.T) {
	for key, want := range map[string]string{"tokenkeeper:{liveness}:token": "liveness", "tokenkeeper:{a-b}:lock": "a-b", "plain": "plain"} {
		if got := tracing.TokenName(key); got != want {
			t.Errorf("TokenName(%q) = %q, want %q", key, got, want)
		}
	}
}
