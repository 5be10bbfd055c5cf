package main

import (
	"context"
	"fmt"
	"os"
	"strings"

	"go.opentelemetry.io/contrib/exporters/autoexport"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// tracingOn reports whether the standard OpenTelemetry variables ask for
// traces: OTEL_TRACES_EXPORTER names an exporter other than "none", or an
// OTLP endpoint is set (OTEL_EXPORTER_OTLP_ENDPOINT or
// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT); and OTEL_SDK_DISABLED is not
// "true". Off by default: nothing is exported, and the HTTP API's read
// path has nothing added.
func tracingOn(getenv func(string) string) bool {
	if strings.EqualFold(strings.TrimSpace(getenv("OTEL_SDK_DISABLED")), "true") {
		return false
	}
	if e := strings.TrimSpace(getenv("OTEL_TRACES_EXPORTER")); e != "" {
		return e != "none"
	}
	return getenv("OTEL_EXPORTER_OTLP_ENDPOINT") != "" || getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") != ""
}

// newTracerProvider returns the TracerProvider the standard variables
// configure, or nil when tracingOn says no. Everything is the SDK's own
// environment handling: the exporter and its endpoint, headers and
// protocol (contrib's autoexport: OTEL_TRACES_EXPORTER, default otlp;
// OTEL_EXPORTER_OTLP_*), the sampler (OTEL_TRACES_SAMPLER and its _ARG,
// default parentbased_always_on), the batching (OTEL_BSP_*) and the
// resource (OTEL_SERVICE_NAME, default "tokenkeeper";
// OTEL_RESOURCE_ATTRIBUTES). The replica's instance and version are
// resource attributes that the variables may override.
func newTracerProvider(ctx context.Context, instance string) (*sdktrace.TracerProvider, error) {
	if !tracingOn(os.Getenv) {
		return nil, nil
	}
	exp, err := autoexport.NewSpanExporter(ctx)
	if err != nil {
		return nil, fmt.Errorf("OTEL_TRACES_EXPORTER: %w", err)
	}
	res, err := resource.New(ctx,
		resource.WithTelemetrySDK(),
		resource.WithAttributes(
			attribute.String("service.name", "tokenkeeper"),
			attribute.String("service.instance.id", instance),
			attribute.String("service.version", buildVersion()),
		),
		resource.WithFromEnv(), // last: the variables win
	)
	if err != nil {
		_ = exp.Shutdown(ctx)
		return nil, fmt.Errorf("OTEL_RESOURCE_ATTRIBUTES: %w", err)
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res))
	otel.SetTracerProvider(tp)
	otel.SetTextMapPropagator(propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{}))
	return tp, nil
}
