// Command jaeger is a slim distribution of Jaeger v2 (an OpenTelemetry
// Collector distribution) for tokenkeeper's compose profile tracing and its
// smoke test: the OTLP receiver, the batch processor, Jaeger's storage
// exporter, and the jaeger_storage (memory only) and jaeger_query extensions,
// all from Jaeger v1.75.0's own packages.
//
// Those packages live under the Jaeger module's internal directories, which
// no other module may import; so this file is not built as a package of its
// own: scripts/build-images.sh copies the module's source, lays this file
// over its cmd/jaeger/main.go and the files of internal/ beside it over
// jaegerstorage's (memory only), applies deploy/jaeger/query-flags.patch and
// builds ./cmd/jaeger there (deploy/jaeger/README.md). The full program (every receiver, exporter and storage backend of
// the official image, jaegertracing/jaeger:2.12.0) compiles about 2,300
// packages; this one about 800.
//
// Without --config it runs the configuration below: OTLP on 4317 (gRPC) and
// 4318 (HTTP), the query API on 16686, spans in memory; every listener on
// JAEGER_LISTEN_HOST (default localhost), as in the official image.
package main

import (
	"log"

	"github.com/spf13/cobra"
	"go.opentelemetry.io/collector/component"
	"go.opentelemetry.io/collector/confmap"
	"go.opentelemetry.io/collector/confmap/provider/envprovider"
	"go.opentelemetry.io/collector/confmap/provider/fileprovider"
	"go.opentelemetry.io/collector/confmap/provider/yamlprovider"
	"go.opentelemetry.io/collector/otelcol"
	"go.opentelemetry.io/collector/processor/batchprocessor"
	"go.opentelemetry.io/collector/receiver/otlpreceiver"

	"github.com/jaegertracing/jaeger/cmd/jaeger/internal/exporters/storageexporter"
	"github.com/jaegertracing/jaeger/cmd/jaeger/internal/extension/jaegerquery"
	"github.com/jaegertracing/jaeger/cmd/jaeger/internal/extension/jaegerstorage"
	"github.com/jaegertracing/jaeger/internal/version"
)

// config is the default configuration: Jaeger's all-in-one.yaml without the
// components this build leaves out.
const config = `
service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [jaeger_storage_exporter]
  telemetry:
    resource:
      service.name: jaeger
    metrics:
      level: none
    logs:
      level: info

extensions:
  jaeger_query:
    enable_tracing: false
    storage:
      traces: some_storage
    http:
      endpoint: "${env:JAEGER_LISTEN_HOST:-localhost}:16686"
    grpc:
      endpoint: "${env:JAEGER_LISTEN_HOST:-localhost}:16685"

  jaeger_storage:
    backends:
      some_storage:
        memory:
          max_traces: 100000

receivers:
  otlp:
    protocols:
      grpc:
        endpoint: "${env:JAEGER_LISTEN_HOST:-localhost}:4317"
      http:
        endpoint: "${env:JAEGER_LISTEN_HOST:-localhost}:4318"

processors:
  batch:

exporters:
  jaeger_storage_exporter:
    trace_storage: some_storage
`

func components() (otelcol.Factories, error) {
	var f otelcol.Factories
	var err error
	if f.Extensions, err = otelcol.MakeFactoryMap(jaegerstorage.NewFactory(), jaegerquery.NewFactory()); err != nil {
		return f, err
	}
	if f.Receivers, err = otelcol.MakeFactoryMap(otlpreceiver.NewFactory()); err != nil {
		return f, err
	}
	if f.Processors, err = otelcol.MakeFactoryMap(batchprocessor.NewFactory()); err != nil {
		return f, err
	}
	f.Exporters, err = otelcol.MakeFactoryMap(storageexporter.NewFactory())
	return f, err
}

func main() {
	cmd := otelcol.NewCommand(otelcol.CollectorSettings{
		BuildInfo: component.BuildInfo{
			Command:     "jaeger",
			Description: "Jaeger backend v2 (slim: OTLP in, spans in memory, query API)",
			Version:     version.Get().GitVersion,
		},
		Factories: components,
		ConfigProviderSettings: otelcol.ConfigProviderSettings{
			ResolverSettings: confmap.ResolverSettings{
				ProviderFactories: []confmap.ProviderFactory{
					envprovider.NewFactory(),
					fileprovider.NewFactory(),
					yamlprovider.NewFactory(),
				},
			},
		},
	})
	// As upstream's all-in-one: without --config, the configuration above.
	run := cmd.RunE
	cmd.RunE = func(c *cobra.Command, args []string) error {
		if !c.Flag("config").Changed {
			if err := c.Flag("config").Value.Set("yaml:" + config); err != nil {
				return err
			}
		}
		return run(c, args)
	}
	if err := cmd.Execute(); err != nil {
		log.Fatal(err)
	}
}
