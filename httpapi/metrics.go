package httpapi

import (
	"errors"
	"fmt"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// unmatchedRoute is the route label of requests no route matched.
const unmatchedRoute = "unmatched"

// metrics are the server's Prometheus collectors, with the per-route
// children resolved ahead so that recording a request allocates nothing.
type metrics struct {
	requests  *prometheus.CounterVec
	duration  *prometheus.HistogramVec
	reads     prometheus.Counter
	routes    map[string]*routeMetrics // by echo path pattern; read-only after New
	unmatched *routeMetrics
}

// durationBuckets spans token reads (microseconds) to refreshes (up to
// RefreshTimeout).
var durationBuckets = []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	requests, err := register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "tokenkeeper_http_requests_total",
		Help: "HTTP requests answered, by route pattern and status code.",
	}, []string{"route", "code"}))
	if err != nil {
		return nil, err
	}
	duration, err := register(reg, prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "tokenkeeper_http_request_duration_seconds",
		Help:    "Time to answer HTTP requests that matched a route, by route pattern.",
		Buckets: durationBuckets,
	}, []string{"route"}))
	if err != nil {
		return nil, err
	}
	reads, err := register(reg, prometheus.NewCounter(prometheus.CounterOpts{
		Name: "tokenkeeper_token_reads_total",
		Help: "Tokens handed out by the token route (200 answers).",
	}))
	if err != nil {
		return nil, err
	}
	m := &metrics{requests: requests, duration: duration, reads: reads, routes: map[string]*routeMetrics{}}
	m.unmatched = &routeMetrics{route: unmatchedRoute, requests: requests}
	return m, nil
}

// register registers c, or returns the collector already registered in its
// place, so that servers sharing a registry share their metrics.
func register[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	err := reg.Register(c)
	if err == nil {
		return c, nil
	}
	if are, ok := errors.AsType[prometheus.AlreadyRegisteredError](err); ok {
		if existing, ok := are.ExistingCollector.(C); ok {
			return existing, nil
		}
	}
	return c, fmt.Errorf("httpapi: register metrics: %w", err)
}

// route returns the metrics of the route with the echo path pattern,
// creating them; call it only while building the server.
func (m *metrics) route(pattern string) *routeMetrics {
	if rm, ok := m.routes[pattern]; ok {
		return rm
	}
	rm := &routeMetrics{route: pattern, requests: m.requests, duration: m.duration.WithLabelValues(pattern)}
	m.routes[pattern] = rm
	return rm
}

// routeMetrics records the requests of one route.
type routeMetrics struct {
	route    string
	requests *prometheus.CounterVec
	duration prometheus.Observer // nil for unmatched requests, whose start is unknown
	// codes caches the request counter of each status code 100..599.
	codes [500]atomic.Pointer[prometheus.Counter]
}

// observe records one request answered with status in d.
func (rm *routeMetrics) observe(status int, d time.Duration) {
	rm.count(status)
	if rm.duration != nil {
		rm.duration.Observe(d.Seconds())
	}
}

// count adds one request answered with status.
func (rm *routeMetrics) count(status int) {
	if status < 100 || status > 599 {
		rm.requests.WithLabelValues(rm.route, strconv.Itoa(status)).Inc()
		return
	}
	slot := &rm.codes[status-100]
	if c := slot.Load(); c != nil {
		(*c).Inc()
		return
	}
	c := rm.requests.WithLabelValues(rm.route, strconv.Itoa(status))
	slot.Store(&c) // racing stores hold the same child
	c.Inc()
}
