package main

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tokenkeeper/tokenkeeper/cache"
	"github.com/tokenkeeper/tokenkeeper/refresher"
)

// collector reads the replica's state at scrape time.
type collector struct {
	store *cache.Store
	ref   *refresher.Refresher

	expiresIn, age, ready, leader, fetches, loads *prometheus.Desc
}

func newCollector(store *cache.Store, ref *refresher.Refresher) *collector {
	return &collector{
		store:     store,
		ref:       ref,
		expiresIn: prometheus.NewDesc("tokenkeeper_token_expires_in_seconds", "Seconds until the held token expires (0 when none).", nil, nil),
		age:       prometheus.NewDesc("tokenkeeper_token_age_seconds", "Seconds since the held token was fetched from the upstream.", nil, nil),
		ready:     prometheus.NewDesc("tokenkeeper_ready", "1 while this replica holds a servable token.", nil, nil),
		leader:    prometheus.NewDesc("tokenkeeper_leader", "1 while this replica holds the leader lock.", nil, nil),
		fetches:   prometheus.NewDesc("tokenkeeper_upstream_fetches_total", "Tokens this replica fetched from the upstream.", nil, nil),
		loads:     prometheus.NewDesc("tokenkeeper_redis_reads_total", "Reads of the token from Redis by this replica.", nil, nil),
	}
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.expiresIn, c.age, c.ready, c.leader, c.fetches, c.loads} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	now := time.Now()
	var expiresIn, age float64
	if t, ok := c.store.Held(); ok {
		expiresIn = t.Remaining(now).Seconds()
		if !t.FetchedAt.IsZero() {
			age = now.Sub(t.FetchedAt).Seconds()
		}
	}
	_, ready := c.store.Current()
	ch <- prometheus.MustNewConstMetric(c.expiresIn, prometheus.GaugeValue, expiresIn)
	ch <- prometheus.MustNewConstMetric(c.age, prometheus.GaugeValue, age)
	ch <- prometheus.MustNewConstMetric(c.ready, prometheus.GaugeValue, b2f(ready))
	ch <- prometheus.MustNewConstMetric(c.leader, prometheus.GaugeValue, b2f(c.ref.IsLeader()))
	ch <- prometheus.MustNewConstMetric(c.fetches, prometheus.CounterValue, float64(c.ref.Fetches()))
	ch <- prometheus.MustNewConstMetric(c.loads, prometheus.CounterValue, float64(c.store.Loads()))
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
