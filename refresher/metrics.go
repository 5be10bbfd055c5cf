package refresher

import (
	"go.opentelemetry.io/otel/trace"

	"errors"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tokenkeeper/tokenkeeper/cache"
	"github.com/tokenkeeper/tokenkeeper/upstream"
)

// Metrics a Refresher registers with Config.Registerer, in the manner of
// client-go's leaderelection metrics:
//
//	tokenkeeper_leader                             1 while this replica holds the leader lock, else 0
//	tokenkeeper_leadership_changes_total{change}   acquired, lost (renewal failed), fenced, released (shutdown),
//	                                               handed_over (refreshes kept failing here)
//	tokenkeeper_refreshes_total{outcome}           refresh attempts by outcome (Outcome* constants)
//	tokenkeeper_refresh_consecutive_failures       failed attempts in a row by this leader (0 after a success, and on followers)
//	tokenkeeper_refresh_duration_seconds           time of a refresh attempt: upstream call and fenced write
//	tokenkeeper_upstream_fetches_total             tokens this replica fetched from the upstream
//	tokenkeeper_heartbeats_total{result}           heartbeats written to Redis: ok, error
//	tokenkeeper_lock_renewal_seconds               round trip of the leader's last good lock renewal (0 when not leading)
//	tokenkeeper_lock_ttl_seconds                   the lock TTL: a leader keeps its lock while renewals take under about half of it
//
// The families carry no instance label: Prometheus adds the target's.

// Outcomes of a refresh attempt: the outcome label of
// tokenkeeper_refreshes_total and Attempt.Outcome.
const (
	// outcomeSuccess: a new token was fetched and stored.
	outcomeSuccess = "success"
	// outcomeSuperseded: another leader had stored a later token; it was
	// adopted instead.
	outcomeSuperseded = "superseded"
	// outcomeUpstreamError: the upstream failed, refused, or answered an
	// unusable token (or the fleet's sign-on budget was spent).
	outcomeUpstreamError = "upstream_error"
	// outcomeRedisError: the token could not be stored (Redis unreachable
	// or failing); it is kept and stored on the next attempt.
	outcomeRedisError = "redis_error"
	// outcomeFenced: the write was refused because this replica no longer
	// held the lock; it stepped down.
	outcomeFenced = "fenced"
)

var outcomes = []string{outcomeSuccess, outcomeSuperseded, outcomeUpstreamError, outcomeRedisError, outcomeFenced}

// outcomeOf classifies an attempt that returned err, having stored its
// token or not.
func outcomeOf(err error, stored bool) string {
	var ue *upstream.Error
	switch {
	case err == nil && stored:
		return outcomeSuccess
	case err == nil:
		return outcomeSuperseded
	case errors.Is(err, cache.ErrFenced):
		return outcomeFenced
	case errors.As(err, &ue), errors.Is(err, errBadToken):
		return outcomeUpstreamError
	default:
		return outcomeRedisError
	}
}

// Changes of leadership: the change label of
// tokenkeeper_leadership_changes_total.
const (
	changeAcquired = "acquired"
	changeLost     = "lost"
	changeFenced   = "fenced"
	changeReleased = "released"
	changeHanded   = "handed_over"
	changeMaster   = "master_changed"
)

// changeOf names the end of a leadership from the reason lead logs.
func changeOf(reason endReason) string {
	switch reason {
	case endFenced:
		return changeFenced
	case endReleased:
		return changeReleased
	case endHandedOver, endStepped:
		return changeHanded
	case endMaster:
		return changeMaster
	default:
		return changeLost
	}
}

// refreshBuckets span a fast fake upstream to a slow sign-on plus a retry.
var refreshBuckets = []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}

// metrics records a Refresher's events. A nil *metrics records nothing.
type metrics struct {
	changes    *prometheus.CounterVec
	refreshes  *prometheus.CounterVec
	duration   prometheus.Histogram
	failures   prometheus.Gauge
	heartbeats *prometheus.CounterVec
	renewals   prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer, r *Refresher) (*metrics, error) {
	if reg == nil {
		return nil, nil
	}
	m := &metrics{
		changes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenkeeper_leadership_changes_total",
			Help: "Leadership changes of this replica: acquired, lost (a renewal failed), fenced (a write found the lock gone), released (on shutdown), handed_over (refreshes kept failing here).",
		}, []string{"change"}),
		refreshes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenkeeper_refreshes_total",
			Help: "Refresh attempts by this replica while leading, by outcome: success, superseded, upstream_error, redis_error, fenced.",
		}, []string{"outcome"}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "tokenkeeper_refresh_duration_seconds",
			Help:    "Time of refresh attempts by this replica: the upstream call and the fenced write.",
			Buckets: refreshBuckets,
		}),
		failures: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tokenkeeper_refresh_consecutive_failures",
			Help: "Refresh attempts that failed in a row on this replica while leading; 0 after a success and when not leading.",
		}),
		renewals: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tokenkeeper_lock_renewal_seconds",
			Help: "Round trip of this replica's last good lock renewal while leading; 0 when not leading. Past about half of tokenkeeper_lock_ttl_seconds, leadership is lost.",
		}),
		heartbeats: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenkeeper_heartbeats_total",
			Help: "Heartbeats this replica wrote to Redis, by result: ok, error.",
		}, []string{"result"}),
	}
	for _, c := range []string{changeAcquired, changeLost, changeFenced, changeReleased, changeHanded, changeMaster} {
		m.changes.WithLabelValues(c)
	}
	for _, o := range outcomes {
		m.refreshes.WithLabelValues(o)
	}
	m.heartbeats.WithLabelValues("ok")
	m.heartbeats.WithLabelValues("error")
	leader := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "tokenkeeper_leader",
		Help: "1 while this replica holds the leader lock, else 0.",
	}, func() float64 {
		if r.IsLeader() {
			return 1
		}
		return 0
	})
	fetches := prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "tokenkeeper_upstream_fetches_total",
		Help: "Tokens this replica fetched from the upstream.",
	}, func() float64 { return float64(r.Fetches()) })
	ttl := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "tokenkeeper_lock_ttl_seconds",
		Help: "The leader lock's TTL (TOKENKEEPER_LOCK_TTL).",
	}, func() float64 { return r.cfg.LockTTL.Seconds() })
	for _, c := range []prometheus.Collector{m.changes, m.refreshes, m.duration, m.failures, m.heartbeats, m.renewals, leader, fetches, ttl} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("refresher: register metrics: %w", err)
		}
	}
	return m, nil
}

func (m *metrics) leadership(change string) {
	if m != nil {
		m.changes.WithLabelValues(change).Inc()
	}
}

// attempt records a refresh attempt and the failures in a row so far.
// When the attempt's span sc was sampled, its duration carries the trace
// id as an exemplar (served in the OpenMetrics format).
func (m *metrics) attempt(a Attempt, inARow int, sc trace.SpanContext) {
	if m == nil {
		return
	}
	m.refreshes.WithLabelValues(a.Outcome).Inc()
	if eo, ok := m.duration.(prometheus.ExemplarObserver); ok && sc.IsSampled() {
		eo.ObserveWithExemplar(a.Took.Seconds(), prometheus.Labels{"trace_id": sc.TraceID().String()})
	} else {
		m.duration.Observe(a.Took.Seconds())
	}
	m.failures.Set(float64(inARow))
}

// follower resets what only a leader reports.
func (m *metrics) follower() {
	if m != nil {
		m.failures.Set(0)
		m.renewals.Set(0)
	}
}

// renewal records the round trip of a good lock renewal.
func (m *metrics) renewal(d time.Duration) {
	if m != nil {
		m.renewals.Set(d.Seconds())
	}
}

func (m *metrics) heartbeat(err error) {
	if m == nil {
		return
	}
	if err != nil {
		m.heartbeats.WithLabelValues("error").Inc()
		return
	}
	m.heartbeats.WithLabelValues("ok").Inc()
}
