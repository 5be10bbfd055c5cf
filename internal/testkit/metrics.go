package testkit

import (
	"fmt"
	"strconv"
	"strings"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
)

// Metrics is a registry for a test that remembers what is registered with
// it, by metric name, so that the test can read one metric with
// prometheus/testutil instead of picking through what it gathers. Give it
// to the code under test as its prometheus.Registerer; it is a
// prometheus.Gatherer too.
type Metrics struct {
	*prometheus.Registry

	mu     sync.Mutex
	byName map[string]registered // guarded by mu
}

// registered is a collector and the description of one of its metrics.
type registered struct {
	c    prometheus.Collector
	desc *prometheus.Desc
	n    int // how many descriptions c has
}

// NewMetrics returns an empty Metrics.
func NewMetrics() *Metrics {
	return &Metrics{Registry: prometheus.NewRegistry(), byName: make(map[string]registered)}
}

// Register registers c, and remembers it under the name of each metric it
// describes.
func (m *Metrics) Register(c prometheus.Collector) error {
	if err := m.Registry.Register(c); err != nil {
		return err
	}
	var descs []*prometheus.Desc
	ch := make(chan *prometheus.Desc)
	go func() {
		c.Describe(ch)
		close(ch)
	}()
	for d := range ch {
		descs = append(descs, d)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, d := range descs {
		if name := descName(d); name != "" {
			m.byName[name] = registered{c: c, desc: d, n: len(descs)}
		}
	}
	return nil
}

// MustRegister registers cs, panicking as prometheus.Registry's does.
func (m *Metrics) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		if err := m.Register(c); err != nil {
			panic(err)
		}
	}
}

// Value returns the value of the counter or gauge called name, of the
// child with labels (name, value pairs) when it is a vector, read with
// testutil.ToFloat64; for a histogram, how many observations it holds.
func (m *Metrics) Value(name string, labels ...string) (float64, error) {
	m.mu.Lock()
	r, ok := m.byName[name]
	m.mu.Unlock()
	if !ok {
		return 0, fmt.Errorf("no metric %s registered", name)
	}
	if len(labels)%2 != 0 {
		return 0, fmt.Errorf("%s: labels %q are not name, value pairs", name, labels)
	}
	want := prometheus.Labels{}
	for i := 0; i < len(labels); i += 2 {
		want[labels[i]] = labels[i+1]
	}
	c := r.c
	switch v := c.(type) {
	case *prometheus.CounterVec:
		child, err := v.GetMetricWith(want)
		if err != nil {
			return 0, fmt.Errorf("%s%v: %w", name, want, err)
		}
		c = child
	case *prometheus.GaugeVec:
		child, err := v.GetMetricWith(want)
		if err != nil {
			return 0, fmt.Errorf("%s%v: %w", name, want, err)
		}
		c = child
	default:
		if len(want) > 0 {
			return 0, fmt.Errorf("%s has no labels to select %v by", name, want)
		}
	}
	if h, ok := c.(prometheus.Histogram); ok {
		var pb dto.Metric
		if err := h.Write(&pb); err != nil {
			return 0, err
		}
		return float64(pb.GetHistogram().GetSampleCount()), nil
	}
	if r.n > 1 {
		c = only{c, r.desc} // a collector of several metrics: this one
	}
	return safeToFloat64(c)
}

// safeToFloat64 is testutil.ToFloat64, with its panic as an error.
func safeToFloat64(c prometheus.Collector) (v float64, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("testutil.ToFloat64: %v", p)
		}
	}()
	return testutil.ToFloat64(c), nil
}

// only is what c collects of the metric desc describes.
type only struct {
	c    prometheus.Collector
	desc *prometheus.Desc
}

func (o only) Describe(ch chan<- *prometheus.Desc) { ch <- o.desc }

func (o only) Collect(ch chan<- prometheus.Metric) {
	all := make(chan prometheus.Metric)
	go func() {
		o.c.Collect(all)
		close(all)
	}()
	for m := range all {
		if m.Desc() == o.desc {
			ch <- m
		}
	}
}

// descName returns the fully-qualified name in d, which prometheus shows
// only in d's String: Desc{fqName: "name", ...}.
func descName(d *prometheus.Desc) string {
	_, rest, ok := strings.Cut(d.String(), "fqName: ")
	if !ok {
		return ""
	}
	q, err := strconv.QuotedPrefix(rest)
	if err != nil {
		return ""
	}
	name, _ := strconv.Unquote(q)
	return name
}
