package client

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"
)

// Defaults of Config's fields.
const (
	DefaultMargin  = 30 * time.Second
	DefaultMaxWait = 30 * time.Second
	DefaultTimeout = 10 * time.Second
)

// Config configures a Client. Endpoints and Key are required; every other
// zero value takes the default documented on its field. Field names are
// what New's errors name.
type Config struct {
	// Endpoints are the base URLs of the service's replicas (or of load
	// balancers in front of them), absolute http or https URLs such as
	// "https://tokenkeeper.internal" or "http://10.0.0.5:8080/prefix".
	// At least one is required.
	Endpoints []string
	// Key is the reader key, sent as "Authorization: Bearer <key>".
	// Required unless CertFile is set (the client certificate is then the
	// caller's identity). It never appears in errors.
	Key string
	// HTTPClient sends the requests. Default: a client with a
	// DefaultTimeout (10s) timeout per request, verifying https://
	// endpoints with CAFile and presenting CertFile. It is exclusive with
	// CAFile, CertFile and KeyFile: configure its transport's TLS instead.
	HTTPClient *http.Client
	// CAFile is a PEM file of the CAs that sign the service's certificate,
	// trusted beside the system's. Default: the system's alone.
	CAFile string
	// CertFile and KeyFile are a PEM client certificate and its key,
	// presented to a service that verifies client certificates
	// (TOKENKEEPER_TLS_CLIENT_CA). They are read once, by New.
	CertFile, KeyFile string
	// ReadFile reads CAFile, CertFile and KeyFile. Default: os.ReadFile.
	ReadFile func(string) ([]byte, error)
	// Margin: a token is reused until this long before its expiry, then
	// asked for again. It must be shorter than the tokens' lifetime, or
	// every call asks the service. Default: DefaultMargin (30s).
	Margin time.Duration
	// MaxWait bounds the time one fetch spends waiting for Retry-After
	// delays; a Retry-After that would exceed it is not waited for.
	// Default: DefaultMaxWait (30s).
	MaxWait time.Duration
}

// setDefaults fills in the defaults and returns every problem of c at
// once, each naming its field.
func (c *Config) setDefaults() error {
	var errs []error
	fail := func(format string, args ...any) { errs = append(errs, fmt.Errorf("client: "+format, args...)) }
	if len(c.Endpoints) == 0 {
		fail("Endpoints: at least one is required")
	}
	for i, e := range c.Endpoints {
		if err := checkEndpoint(e); err != nil {
			fail("Endpoints[%d]: %v", i, err)
		}
	}
	if c.Key == "" && c.CertFile == "" {
		fail("Key is required (or CertFile, a client certificate)")
	} else if strings.ContainsAny(c.Key, "\r\n") || strings.TrimSpace(c.Key) != c.Key {
		fail("Key must not hold line breaks or surrounding spaces")
	}
	if c.Margin < 0 {
		fail("Margin %v is negative", c.Margin)
	}
	if c.MaxWait < 0 {
		fail("MaxWait %v is negative", c.MaxWait)
	}
	if c.Margin == 0 {
		c.Margin = DefaultMargin
	}
	if c.MaxWait == 0 {
		c.MaxWait = DefaultMaxWait
	}
	tlsSet := c.CAFile != "" || c.CertFile != "" || c.KeyFile != ""
	switch {
	case tlsSet && c.HTTPClient != nil:
		fail("CAFile, CertFile and KeyFile are for the default HTTPClient: set TLS on your own client's transport")
	case tlsSet:
		tc, err := c.tlsConfig()
		if err != nil {
			fail("%v", err)
			break
		}
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.TLSClientConfig = tc
		c.HTTPClient = &http.Client{Timeout: DefaultTimeout, Transport: tr}
	case c.HTTPClient == nil:
		c.HTTPClient = &http.Client{Timeout: DefaultTimeout}
	}
	return errors.Join(errs...)
}

// checkEndpoint says what is wrong with a base URL, if anything. It never
// repeats credentials the URL may carry.
func checkEndpoint(s string) error {
	u, err := url.Parse(s)
	if err != nil {
		return errors.New("not a URL")
	}
	switch {
	case u.User != nil:
		return errors.New("must not carry credentials (use Key)")
	case u.Scheme != "http" && u.Scheme != "https":
		return fmt.Errorf("%q: scheme must be http or https", s)
	case u.Host == "":
		return fmt.Errorf("%q: host is missing", s)
	case u.RawQuery != "" || u.Fragment != "":
		return fmt.Errorf("%q: must have no query or fragment", s)
	}
	return nil
}

// tlsConfig is the TLS of the default HTTPClient: the system roots plus
// CAFile, and the client certificate of CertFile and KeyFile.
func (c *Config) tlsConfig() (*tls.Config, error) {
	read := c.ReadFile
	if read == nil {
		read = os.ReadFile
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if c.CAFile != "" {
		b, err := read(c.CAFile)
		if err != nil {
			return nil, fmt.Errorf("CAFile: %w", err)
		}
		pool, err := x509.SystemCertPool()
		if err != nil || pool == nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(b) {
			return nil, fmt.Errorf("CAFile: %s holds no PEM certificate", c.CAFile)
		}
		tc.RootCAs = pool
	}
	if (c.CertFile == "") != (c.KeyFile == "") {
		return nil, errors.New("CertFile and KeyFile go together")
	}
	if c.CertFile != "" {
		certPEM, err := read(c.CertFile)
		if err != nil {
			return nil, fmt.Errorf("CertFile: %w", err)
		}
		keyPEM, err := read(c.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("KeyFile: %w", err)
		}
		pair, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			return nil, fmt.Errorf("CertFile, KeyFile: not a PEM certificate and its key: %w", err)
		}
		tc.Certificates = []tls.Certificate{pair}
	}
	return tc, nil
}
