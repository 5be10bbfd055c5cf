package testkit_test

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tokenkeeper/tokenkeeper/internal/testkit"
)

// several is a collector of two metrics, as a store's is.
type several struct{ a, b *prometheus.Desc }

func (s several) Describe(ch chan<- *prometheus.Desc) { ch <- s.a; ch <- s.b }

func (s several) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.MustNewConstMetric(s.a, prometheus.GaugeValue, 1)
	ch <- prometheus.MustNewConstMetric(s.b, prometheus.CounterValue, 2)
}

func TestMetricsValue(t *testing.T) {
	m := testkit.NewMetrics()
	vec := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "x_total", Help: "x"}, []string{"kind"})
	gauge := prometheus.NewGauge(prometheus.GaugeOpts{Name: "g", Help: "g"})
	hist := prometheus.NewHistogram(prometheus.HistogramOpts{Name: "h_seconds", Help: "h"})
	fn := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "f", Help: "f"}, func() float64 { return 7 })
	m.MustRegister(vec, gauge, hist, fn, several{
		prometheus.NewDesc("s_a", "a", nil, nil), prometheus.NewDesc("s_b_total", "b", nil, nil)})
	vec.WithLabelValues("one").Add(3)
	gauge.Set(5)
	hist.Observe(.1)
	hist.Observe(.2)

	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"x_total", []string{"kind", "one"}, 3},
		{"x_total", []string{"kind", "two"}, 0},
		{"g", nil, 5},
		{"h_seconds", nil, 2},
		{"f", nil, 7},
		{"s_a", nil, 1},
		{"s_b_total", nil, 2},
	} {
		got, err := m.Value(c.name, c.labels...)
		if err != nil || got != c.want {
			t.Errorf("Value(%s, %v) = %v, %v; want %v", c.name, c.labels, got, err, c.want)
		}
	}
	for _, c := range []struct {
		name   string
		labels []string
	}{
		{"missing", nil},
		{"x_total", []string{"other", "one"}},
		{"x_total", []string{"kind"}},
		{"g", []string{"kind", "one"}},
	} {
		if _, err := m.Value(c.name, c.labels...); err == nil {
			t.Errorf("Value(%s, %v): got no error", c.name, c.labels)
		}
	}
	// It gathers as the registry it is.
	mfs, err := m.Gather()
	if err != nil || len(mfs) != 6 {
		t.Errorf("Gather: %d families, %v; want 6", len(mfs), err)
	}
}
