package cache

import (
	"errors"
	"fmt"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics a Store registers with Config.Registerer. Gauges are read at
// scrape time; nothing is recorded on the read path.
//
//	tokenkeeper_token_expires_in_seconds             seconds until the held token expires (0 when none)
//	tokenkeeper_token_age_seconds                    seconds since the held token was fetched from the upstream
//	tokenkeeper_ready                                1 while this replica holds a servable token
//	tokenkeeper_redis_reads_total                    reads of the token from Redis
//	tokenkeeper_token_writes_total{result}           Write calls by result: stored, fenced, stale, invalid, error
//	tokenkeeper_event_subscription_reconnects_total  re-subscriptions to the events channel after the first
//	tokenkeeper_redis_anomalies_total{kind}          what Redis did that it should not: token_lost (the token key vanished
//	                                                 before its expiry), lock_lost (the lock key vanished before its TTL),
//	                                                 wrong_type (the token key held a foreign value)

// Results of Write, the result label of tokenkeeper_token_writes_total.
const (
	writeStored  = "stored"  // the token was stored
	writeFenced  = "fenced"  // ErrFenced: the writer no longer held the lock
	writeStale   = "stale"   // ErrStale: Redis held a token expiring later
	writeInvalid = "invalid" // ErrInvalid
	writeError   = "error"   // Redis could not be reached or answered an error
)

// writeResult names the outcome of a Write that returned err.
func writeResult(err error) string {
	switch {
	case err == nil:
		return writeStored
	case errors.Is(err, ErrFenced):
		return writeFenced
	case errors.Is(err, ErrStale):
		return writeStale
	case errors.Is(err, ErrInvalid):
		return writeInvalid
	default:
		return writeError
	}
}

// Kinds of anomaly, the kind label of tokenkeeper_redis_anomalies_total.
const (
	anomalyTokenLost = "token_lost"
	anomalyLockLost  = "lock_lost"
	anomalyWrongType = "wrong_type"
	// Redis held an older token than the copy in memory (a failover to a
	// replica that missed the last write, a restore from a snapshot).
	anomalyTokenOlder = "token_older"
	// A write reached fewer replicas than it waited for.
	anomalyReplicationShort = "replication_short"
)

// storeMetrics records a Store's events. A nil *storeMetrics records
// nothing, so a Store without a Registerer pays a nil check.
type storeMetrics struct {
	writes     *prometheus.CounterVec
	anomalies  *prometheus.CounterVec
	reconnects prometheus.Counter
	subscribed atomic.Bool
}

func newStoreMetrics(reg prometheus.Registerer, s *Store) (*storeMetrics, error) {
	if reg == nil {
		return nil, nil
	}
	m := &storeMetrics{
		writes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenkeeper_token_writes_total",
			Help: "Fenced writes of a token to Redis by this replica, by result (stored, fenced, stale, invalid, error).",
		}, []string{"result"}),
		anomalies: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenkeeper_redis_anomalies_total",
			Help: "Things Redis did that it should not, seen by this replica: token_lost (the token key vanished before its expiry: eviction, flush, restart), lock_lost (the lock key vanished before its TTL), wrong_type (the token key held a foreign value).",
		}, []string{"kind"}),
		reconnects: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tokenkeeper_event_subscription_reconnects_total",
			Help: "Times this replica subscribed to the events channel again after losing its subscription.",
		}),
	}
	for _, r := range []string{writeStored, writeFenced, writeStale, writeInvalid, writeError} {
		m.writes.WithLabelValues(r)
	}
	for _, k := range []string{anomalyTokenLost, anomalyLockLost, anomalyWrongType, anomalyTokenOlder, anomalyReplicationShort} {
		m.anomalies.WithLabelValues(k)
	}
	for _, c := range []prometheus.Collector{m.writes, m.anomalies, m.reconnects, storeCollector{s}} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("cache: register metrics: %w", err)
		}
	}
	return m, nil
}

// write records the result of a Write.
func (m *storeMetrics) write(err error) {
	if m != nil {
		m.writes.WithLabelValues(writeResult(err)).Inc()
	}
}

// anomaly counts one anomaly of kind.
func (m *storeMetrics) anomaly(kind string) {
	if m != nil {
		m.anomalies.WithLabelValues(kind).Inc()
	}
}

// subscription records a (re)subscription to the events channel.
func (m *storeMetrics) subscription() {
	if m != nil && m.subscribed.Swap(true) {
		m.reconnects.Inc()
	}
}

var (
	expiresInDesc = prometheus.NewDesc("tokenkeeper_token_expires_in_seconds",
		"Seconds until the token this replica holds expires (0 when it holds none).", nil, nil)
	ageDesc = prometheus.NewDesc("tokenkeeper_token_age_seconds",
		"Seconds since the token this replica holds was fetched from the upstream (0 when it holds none).", nil, nil)
	readyDesc = prometheus.NewDesc("tokenkeeper_ready",
		"1 while this replica holds a servable token (GET /readyz answers 200), else 0.", nil, nil)
	readsDesc = prometheus.NewDesc("tokenkeeper_redis_reads_total",
		"Reads of the token from Redis by this replica (events, polls, reconnections).", nil, nil)
)

// storeCollector reads the store's state at scrape time.
type storeCollector struct{ s *Store }

func (c storeCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- expiresInDesc
	ch <- ageDesc
	ch <- readyDesc
	ch <- readsDesc
}

func (c storeCollector) Collect(ch chan<- prometheus.Metric) {
	now := c.s.cfg.Clock.Now()
	var expiresIn, age float64
	if t, ok := c.s.Held(); ok {
		expiresIn = t.Remaining(now).Seconds()
		if !t.FetchedAt.IsZero() {
			age = max(now.Sub(t.FetchedAt).Seconds(), 0)
		}
	}
	ready := 0.0
	if _, ok := c.s.Current(); ok {
		ready = 1
	}
	ch <- prometheus.MustNewConstMetric(expiresInDesc, prometheus.GaugeValue, expiresIn)
	ch <- prometheus.MustNewConstMetric(ageDesc, prometheus.GaugeValue, age)
	ch <- prometheus.MustNewConstMetric(readyDesc, prometheus.GaugeValue, ready)
	ch <- prometheus.MustNewConstMetric(readsDesc, prometheus.CounterValue, float64(c.s.Loads()))
}
