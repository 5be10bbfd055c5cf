package main

// The catalog file of TOKENKEEPER_CONFIG, loaded through the front door.

import (
	"crypto/x509"
	"fmt"

	"github.com/tokenkeeper/tokenkeeper"
)

// loadCatalog reads and checks the catalog file at path, secrets coming
// from the environment and from files.
func loadCatalog(path string, getenv func(string) string, readFile func(string) ([]byte, error), roots *x509.CertPool) (*tokenkeeper.Catalog, error) {
	return parseCatalog(path, getenv, readFile, false, roots)
}

// parseCatalog is loadCatalog, Offline when offline is set.
func parseCatalog(path string, getenv func(string) string, readFile func(string) ([]byte, error), offline bool, roots *x509.CertPool) (*tokenkeeper.Catalog, error) {
	data, err := readFile(path)
	if err != nil {
		return nil, fmt.Errorf("TOKENKEEPER_CONFIG: %w", err)
	}
	return tokenkeeper.LoadCatalog(path, tokenkeeper.CatalogOptions{
		LookupEnv: func(k string) (string, bool) { v := getenv(k); return v, v != "" },
		ReadFile: func(p string) ([]byte, error) {
			if p == path {
				return data, nil
			}
			return readFile(p)
		},
		Offline: offline,
		RootCAs: roots,
	})
}
