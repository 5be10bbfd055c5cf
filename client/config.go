package client

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
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
	// Required. It never appears in errors.
	Key string
	// HTTPClient sends the requests. Default: a client with a
	// DefaultTimeout (10s) timeout per request.
	HTTPClient *http.Client
	// Margin: a token is reused until this long before its expiry, then
	// asked for again. It must be shorter than the tokens' lifetime, or
	// every call asks the service. Default: DefaultMargin (30s).
	Margin time.Duration
	// MaxWait bounds the time one fetch spends waiting for Retry-After
	// delays; a Retry-After that would exceed it is not waited for.
	// Default: DefaultMaxWait (30s).
	MaxWait time.Duration
	// Now is the clock expiries are counted on. Default: time.Now.
	Now func() time.Time
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
	if c.Key == "" {
		fail("Key is required")
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
	if c.HTTPClient == nil {
		c.HTTPClient = &http.Client{Timeout: DefaultTimeout}
	}
	if c.Now == nil {
		c.Now = time.Now
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
