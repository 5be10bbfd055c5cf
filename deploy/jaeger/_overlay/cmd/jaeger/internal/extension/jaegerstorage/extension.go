// Package jaegerstorage, as tokenkeeper's slim Jaeger builds it: this file
// stands in, at build time, for the package's extension.go, and an empty
// config.go for its config.go, so that the program links Jaeger's memory
// store alone. It keeps what the rest of the build calls: the Config the
// package's factory.go makes, newStorageExt, GetTraceStoreFactory for the
// storage exporter and the query extension, and GetMetricStorageFactory,
// which the query extension calls only when metrics storage is configured
// (never in the slim build's configuration).
//
// Configuration, as in the full program, but memory only:
//
//	jaeger_storage:
//	  backends:
//	    NAME:
//	      memory:
//	        max_traces: 100000
package jaegerstorage

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"

	"go.opentelemetry.io/collector/component"

	storage "github.com/jaegertracing/jaeger/internal/storage/v1"
	memoryconfig "github.com/jaegertracing/jaeger/internal/storage/v1/memory"
	"github.com/jaegertracing/jaeger/internal/storage/v2/api/tracestore"
	"github.com/jaegertracing/jaeger/internal/storage/v2/memory"
	"github.com/jaegertracing/jaeger/internal/telemetry"
)

// Config names the stores other components refer to by name.
type Config struct {
	Backends map[string]Backend `mapstructure:"backends"`
}

// Backend is one store. Memory is the only kind this build has.
type Backend struct {
	Memory *memoryconfig.Configuration `mapstructure:"memory"`
}

// Validate refuses a configuration naming no store, or a store with no
// memory section (another backend, which this build leaves out).
func (c *Config) Validate() error {
	if len(c.Backends) == 0 {
		return errors.New("jaeger_storage: no backends configured")
	}
	for _, name := range sortedNames(c.Backends) {
		if c.Backends[name].Memory == nil {
			return fmt.Errorf("jaeger_storage: backend %q: this build keeps spans in memory only (a memory: section)", name)
		}
	}
	return nil
}

// stores is the running extension: one memory store per configured name.
type stores struct {
	cfg    *Config
	telset component.TelemetrySettings
	byName map[string]*memory.Factory
}

func newStorageExt(cfg *Config, telset component.TelemetrySettings) *stores {
	return &stores{cfg: cfg, telset: telset, byName: map[string]*memory.Factory{}}
}

// Start makes the stores.
func (s *stores) Start(_ context.Context, host component.Host) error {
	settings := telemetry.FromOtelComponent(s.telset, host)
	for _, name := range sortedNames(s.cfg.Backends) {
		f, err := memory.NewFactory(*s.cfg.Backends[name].Memory, settings)
		if err != nil {
			return fmt.Errorf("jaeger_storage: backend %q: %w", name, err)
		}
		s.byName[name] = f
	}
	return nil
}

// Shutdown closes the stores that can be closed.
func (s *stores) Shutdown(context.Context) error {
	var errs []error
	for _, f := range s.byName {
		if c, ok := any(f).(io.Closer); ok {
			errs = append(errs, c.Close())
		}
	}
	return errors.Join(errs...)
}

// GetTraceStoreFactory returns the store called name, of the jaeger_storage
// extension running in host.
func GetTraceStoreFactory(name string, host component.Host) (tracestore.Factory, error) {
	s, err := running(host)
	if err != nil {
		return nil, err
	}
	f, ok := s.byName[name]
	if !ok {
		return nil, fmt.Errorf("jaeger_storage: no backend %q (configured: %v)", name, sortedNames(s.cfg.Backends))
	}
	return f, nil
}

// GetMetricStorageFactory fails: this build stores no metrics.
func GetMetricStorageFactory(name string, host component.Host) (storage.MetricStoreFactory, error) {
	if _, err := running(host); err != nil {
		return nil, err
	}
	return nil, fmt.Errorf("jaeger_storage: no metrics backend %q: this build stores spans only", name)
}

// running finds the jaeger_storage extension among host's.
func running(host component.Host) (*stores, error) {
	for id, ext := range host.GetExtensions() {
		if id.Type() != componentType {
			continue
		}
		if s, ok := ext.(*stores); ok {
			return s, nil
		}
		return nil, fmt.Errorf("jaeger_storage: extension %v is of an unexpected type %T", id, ext)
	}
	return nil, errors.New("jaeger_storage: the extension is not running (list it under service.extensions, before jaeger_query)")
}

func sortedNames(m map[string]Backend) []string {
	names := make([]string, 0, len(m))
	for n := range m {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}
