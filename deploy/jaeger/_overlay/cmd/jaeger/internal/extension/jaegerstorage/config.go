// Copyright (c) 2023 The Jaeger Authors.
// SPDX-License-Identifier: Apache-2.0

// This file replaces, at build time (go build -overlay), the file of the same
// name in Jaeger v1.75.0's cmd/jaeger/internal/extension/jaegerstorage: the
// memory backend only. Without the other backends (Badger, Cassandra,
// ClickHouse, Elasticsearch and OpenSearch, gRPC remote storage, and the
// metric stores) the program does not compile the Elasticsearch client's
// typed API, about a third of the packages of the full build.
// See scripts/build-images.sh (jaeger) and deploy/jaeger/main.go.

package jaegerstorage

import (
	"errors"
	"fmt"
	"reflect"

	"go.opentelemetry.io/collector/confmap"
	"go.opentelemetry.io/collector/confmap/xconfmap"

	"github.com/jaegertracing/jaeger/internal/storage/v1/memory"
)

var (
	_ xconfmap.Validator  = (*Config)(nil)
	_ confmap.Unmarshaler = (*TraceBackend)(nil)
)

// Config contains configuration(s) for jaeger trace storage. Keys in the map
// are storage names that other components refer to, e.g. jaeger_query and
// jaeger_storage_exporter.
type Config struct {
	TraceBackends map[string]TraceBackend `mapstructure:"backends"`
}

// TraceBackend contains configuration for a single trace storage backend:
// spans in memory.
type TraceBackend struct {
	Memory *memory.Configuration `mapstructure:"memory"`
}

// Unmarshal implements confmap.Unmarshaler, with upstream's default for the
// memory backend.
func (cfg *TraceBackend) Unmarshal(conf *confmap.Conf) error {
	if conf.IsSet("memory") {
		cfg.Memory = &memory.Configuration{
			MaxTraces: 1_000_000,
		}
	}
	return conf.Unmarshal(cfg)
}

// Validate implements xconfmap.Validator.
func (cfg *Config) Validate() error {
	if len(cfg.TraceBackends) == 0 {
		return errors.New("at least one storage is required")
	}
	for name, b := range cfg.TraceBackends {
		if reflect.DeepEqual(b, TraceBackend{}) {
			return fmt.Errorf("empty backend configuration for storage '%s'", name)
		}
	}
	return nil
}
