package device

import "github.com/prometheus/client_golang/prometheus"

// metrics are a Minter's: never a device id in a label.
type metrics struct {
	mints    *prometheus.CounterVec // result: ok, error
	hits     prometheus.Counter
	refusals *prometheus.CounterVec // budget: fleet, device
	latency  prometheus.Histogram
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		mints: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenkeeper_device_mints_total",
			Help: "Per-device tokens minted by this replica, by result.",
		}, []string{"result"}),
		hits: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tokenkeeper_device_cache_hits_total",
			Help: "Per-device token requests answered with the token stored for the device.",
		}),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenkeeper_device_budget_refusals_total",
			Help: "Mints refused by a budget: the fleet's rate or a device's cap.",
		}, []string{"budget"}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "tokenkeeper_device_mint_duration_seconds",
			Help:    "Time of the upstream call that mints a device's token.",
			Buckets: prometheus.ExponentialBuckets(0.005, 2, 12),
		}),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.mints, m.hits, m.refusals, m.latency} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}
