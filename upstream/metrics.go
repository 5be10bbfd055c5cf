package upstream

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Endpoint labels of tokenkeeper_upstream_request_duration_seconds.
const (
	endpointAuthV1   = "auth_v1"
	endpointAuthV2   = "auth_v2"
	endpointLiveness = "liveness"
	endpointToken    = "token" // an OAuth2 source's token endpoint
	endpointOther    = "other"
	// codeError is the code label of a call that got no answer (network
	// error, timeout, cancellation).
	codeError = "error"
)

// upstreamBuckets span a fast answer on a LAN to Config.Timeout's range.
var upstreamBuckets = []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}

// instrumented returns a copy of client whose transport records every call
// in tokenkeeper_upstream_request_duration_seconds{endpoint,code},
// registered with reg. endpoints maps a URL (scheme, host and path) to its
// endpoint label.
func instrumented(reg prometheus.Registerer, client *http.Client, endpoints map[string]string) (*http.Client, error) {
	h := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "tokenkeeper_upstream_request_duration_seconds",
		Help:    "Time of HTTP calls to the upstream (RDP, or an OAuth2 token endpoint), by endpoint (auth_v1, auth_v2, liveness, token) and status code (\"error\" when no answer came).",
		Buckets: upstreamBuckets,
	}, []string{"endpoint", "code"})
	// Clients and sources sharing a registry share the histogram.
	if err := reg.Register(h); err != nil {
		are, ok := errors.AsType[prometheus.AlreadyRegisteredError](err)
		if !ok {
			return nil, fmt.Errorf("upstream: register metrics: %w", err)
		}
		if h, ok = are.ExistingCollector.(*prometheus.HistogramVec); !ok {
			return nil, fmt.Errorf("upstream: register metrics: %w", err)
		}
	}
	next := client.Transport
	if next == nil {
		next = http.DefaultTransport
	}
	c := *client
	c.Transport = &metricsTransport{next: next, duration: h, endpoints: endpoints}
	return &c, nil
}

// metricsTransport is an http.RoundTripper that times each call.
type metricsTransport struct {
	next      http.RoundTripper
	duration  *prometheus.HistogramVec
	endpoints map[string]string
}

func (t *metricsTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	start := time.Now()
	resp, err := t.next.RoundTrip(req)
	code := codeError
	if err == nil {
		code = strconv.Itoa(resp.StatusCode)
	}
	endpoint, ok := t.endpoints[req.URL.Scheme+"://"+req.URL.Host+req.URL.Path]
	if !ok {
		endpoint = endpointOther
	}
	t.duration.WithLabelValues(endpoint, code).Observe(time.Since(start).Seconds())
	return resp, err
}
