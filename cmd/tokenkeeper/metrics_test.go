package main

import (
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/tokenkeeper/tokenkeeper"
	"github.com/tokenkeeper/tokenkeeper/cache"
	"github.com/tokenkeeper/tokenkeeper/internal/fakerdp"
	"github.com/tokenkeeper/tokenkeeper/internal/redistest"
	"github.com/tokenkeeper/tokenkeeper/internal/testkit"
	"github.com/tokenkeeper/tokenkeeper/upstream"
)

// families are the metric families every replica exposes from its start.
var families = []string{
	"tokenkeeper_token_expires_in_seconds",
	"tokenkeeper_token_age_seconds",
	"tokenkeeper_ready",
	"tokenkeeper_leader",
	"tokenkeeper_leadership_changes_total",
	"tokenkeeper_refreshes_total",
	"tokenkeeper_refresh_consecutive_failures",
	"tokenkeeper_refresh_duration_seconds",
	"tokenkeeper_upstream_request_duration_seconds",
	"tokenkeeper_upstream_fetches_total",
	"tokenkeeper_token_writes_total",
	"tokenkeeper_redis_errors_total",
	"tokenkeeper_redis_reads_total",
	"tokenkeeper_event_subscription_reconnects_total",
	"tokenkeeper_heartbeats_total",
	"tokenkeeper_token_reads_total",
	"tokenkeeper_http_requests_total",
	"tokenkeeper_http_request_duration_seconds",
	"tokenkeeper_replica_info",
}

// scrape reads /metrics of the replica at url.
func scrape(t *testing.T, url string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get(url + "/metrics")
	if err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics = %d", resp.StatusCode)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parsing /metrics: %v", err)
	}
	return mfs
}

// sampleOf returns the value of family name's sample whose labels include
// labels (name, value, ...): a counter's or gauge's value, a histogram's
// count. It returns -1 when there is no such sample.
func sampleOf(mfs map[string]*dto.MetricFamily, name string, labels ...string) float64 {
	mf, ok := mfs[name]
	if !ok {
		return -1
	}
	total, found := 0.0, false
next:
	for _, m := range mf.GetMetric() {
		have := map[string]string{}
		for _, lp := range m.GetLabel() {
			have[lp.GetName()] = lp.GetValue()
		}
		for i := 0; i+1 < len(labels); i += 2 {
			if have[labels[i]] != labels[i+1] {
				continue next
			}
		}
		found = true
		switch {
		case m.GetCounter() != nil:
			total += m.GetCounter().GetValue()
		case m.GetGauge() != nil:
			total += m.GetGauge().GetValue()
		case m.GetHistogram() != nil:
			total += float64(m.GetHistogram().GetSampleCount())
		}
	}
	if !found {
		return -1
	}
	return total
}

func post(t *testing.T, url, key string) int {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, url, nil)
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", url, err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestMetrics scrapes /metrics of running replicas: every family is there
// from the start, and the counters move when a token is read, refreshed,
// refused by the fence, when leadership changes and when Redis goes away
// and comes back.
func TestMetrics(t *testing.T) {
	srv := redistest.NewMini(t)
	keys := cache.KeysFor("liveness")
	fake := fakerdp.New(fakerdp.Config{Knobs: fakerdp.Knobs{TokenLifetime: time.Minute}})
	// fenceNext hands the lock to an intruder while the next liveness
	// call is in flight: the leader's write that follows is fenced.
	var fenceNext atomic.Bool
	rdp := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == upstream.DefaultLivenessPath && fenceNext.CompareAndSwap(true, false) {
			srv.Mini.Set(keys.Lock, "tk:0123456789abcdef:intruder")
		}
		fake.ServeHTTP(w, r)
	}))
	t.Cleanup(rdp.Close)
	// A long lock TTL keeps renewals out of the way of the fenced write.
	tm := fleetTimings{lifetime: time.Minute, before: 10 * time.Second, margin: 2 * time.Second, lockTTL: 30 * time.Second}
	a := startReplica(t, "a", srv.Addr, rdp.URL, tm)
	testkit.Eventually(t, 5*time.Second, "a leads and is ready", func() bool {
		_, ok := a.p.keeper.Current(tokenkeeper.Name)
		return ok && a.p.keeper.IsLeader()
	})

	scrape(t, a.url) // the HTTP families appear with the first request
	m := scrape(t, a.url)
	for _, f := range families {
		if _, ok := m[f]; !ok {
			t.Errorf("family %s missing from /metrics", f)
		}
	}
	checks := []struct {
		name   string
		labels []string
		want   func(float64) bool
		what   string
	}{
		{"tokenkeeper_leader", nil, eq(1), "1"},
		{"tokenkeeper_ready", nil, eq(1), "1"},
		{"tokenkeeper_token_expires_in_seconds", nil, func(v float64) bool { return v > 50 && v <= 60 }, "in (50, 60]"},
		{"tokenkeeper_leadership_changes_total", []string{"change", "acquired"}, eq(1), "1"},
		{"tokenkeeper_refreshes_total", []string{"outcome", "success"}, eq(1), "1"},
		{"tokenkeeper_token_writes_total", []string{"result", "stored"}, eq(1), "1"},
		{"tokenkeeper_upstream_request_duration_seconds", []string{"endpoint", "auth_v2", "code", "200"}, eq(1), "1"},
		{"tokenkeeper_upstream_request_duration_seconds", []string{"endpoint", "liveness", "code", "200"}, eq(1), "1"},
		{"tokenkeeper_upstream_fetches_total", nil, eq(1), "1"},
		{"tokenkeeper_replica_info", []string{"replica", "a"}, eq(1), "1"},
		{"tokenkeeper_token_reads_total", nil, eq(0), "0"},
	}
	for _, c := range checks {
		if got := sampleOf(m, c.name, c.labels...); !c.want(got) {
			t.Errorf("at start: %s%v = %v, want %s", c.name, c.labels, got, c.what)
		}
	}
	testkit.Eventually(t, 5*time.Second, "a heartbeat", func() bool {
		return sampleOf(scrape(t, a.url), "tokenkeeper_heartbeats_total", "result", "ok") >= 1
	})

	// A read and a refresh.
	resp, err := http.Get(a.url + "/v1/tokens/liveness?x") // reader key missing: 401, not a read
	if err == nil {
		resp.Body.Close()
	}
	req, _ := http.NewRequest(http.MethodGet, a.url+"/v1/tokens/liveness", nil)
	req.Header.Set("Authorization", "Bearer "+testReaderKey)
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != 200 {
		t.Fatalf("reading the token: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
	if code := post(t, a.url+"/v1/tokens/liveness/refresh", testAdminKey); code != 200 {
		t.Fatalf("refresh = %d, want 200", code)
	}
	// The answer may come from the token's event, before the leader has
	// recorded the refresh it made.
	testkit.Eventually(t, 5*time.Second, "the leader records its refresh", func() bool {
		return sampleOf(scrape(t, a.url), "tokenkeeper_refresh_duration_seconds") >= 2
	})
	m = scrape(t, a.url)
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"tokenkeeper_token_reads_total", nil, 1},
		{"tokenkeeper_refreshes_total", []string{"outcome", "success"}, 2},
		{"tokenkeeper_token_writes_total", []string{"result", "stored"}, 2},
		{"tokenkeeper_upstream_request_duration_seconds", []string{"endpoint", "liveness", "code", "200"}, 2},
		{"tokenkeeper_upstream_fetches_total", nil, 2},
		{"tokenkeeper_refresh_duration_seconds", nil, 2},
		{"tokenkeeper_http_requests_total", []string{"route", "/v1/tokens/:name", "code", "401"}, 1},
		{"tokenkeeper_http_requests_total", []string{"route", "/v1/tokens/:name/refresh", "code", "200"}, 1},
	} {
		if got := sampleOf(m, c.name, c.labels...); got != c.want {
			t.Errorf("after a read and a refresh: %s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}

	// A fenced write: the lock changes hands during the liveness call.
	fenceNext.Store(true)
	if code := post(t, a.url+"/v1/tokens/liveness/refresh", testAdminKey); code != http.StatusBadGateway {
		t.Errorf("fenced refresh = %d, want 502", code)
	}
	// The end of the term is counted once the lock is dealt with, after
	// the replica stops calling itself leader: wait for both.
	testkit.Eventually(t, 5*time.Second, "a steps down", func() bool {
		return !a.p.keeper.IsLeader() &&
			sampleOf(scrape(t, a.url), "tokenkeeper_leadership_changes_total", "change", "fenced") >= 1
	})
	m = scrape(t, a.url)
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"tokenkeeper_token_writes_total", []string{"result", "fenced"}, 1},
		{"tokenkeeper_refreshes_total", []string{"outcome", "fenced"}, 1},
		{"tokenkeeper_leadership_changes_total", []string{"change", "fenced"}, 1},
		{"tokenkeeper_leader", nil, 0},
		{"tokenkeeper_ready", nil, 1},
	} {
		if got := sampleOf(m, c.name, c.labels...); got != c.want {
			t.Errorf("after a fenced write: %s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}

	// The intruder goes away; a or a newcomer b takes over.
	b := startReplica(t, "b", srv.Addr, rdp.URL, tm)
	testkit.Eventually(t, 5*time.Second, "b is ready", func() bool { _, ok := b.p.keeper.Current(tokenkeeper.Name); return ok })
	srv.Mini.Del(keys.Lock)
	testkit.Eventually(t, 5*time.Second, "a new leader", func() bool { return a.p.keeper.IsLeader() || b.p.keeper.IsLeader() })
	ma, mb := scrape(t, a.url), scrape(t, b.url)
	if got := sampleOf(ma, "tokenkeeper_leader") + sampleOf(mb, "tokenkeeper_leader"); got != 1 {
		t.Errorf("sum of tokenkeeper_leader = %v, want 1", got)
	}
	if got := sampleOf(ma, "tokenkeeper_leadership_changes_total", "change", "acquired") +
		sampleOf(mb, "tokenkeeper_leadership_changes_total", "change", "acquired"); got != 2 {
		t.Errorf("leaderships acquired by a and b = %v, want 2", got)
	}

	// Redis goes away and comes back.
	srv.Mini.Close()
	testkit.Eventually(t, 10*time.Second, "Redis errors counted", func() bool {
		return sampleOf(scrape(t, a.url), "tokenkeeper_redis_errors_total") > 0
	})
	if got := sampleOf(scrape(t, a.url), "tokenkeeper_ready"); got != 1 {
		t.Errorf("without Redis, tokenkeeper_ready = %v, want 1 (the copy in memory is served)", got)
	}
	if err := srv.Mini.Restart(); err != nil {
		t.Fatalf("restarting miniredis: %v", err)
	}
	testkit.Eventually(t, 20*time.Second, "a re-subscribes to events", func() bool {
		return sampleOf(scrape(t, a.url), "tokenkeeper_event_subscription_reconnects_total") >= 1
	})
}

func eq(want float64) func(float64) bool { return func(v float64) bool { return v == want } }

// TestMetricNamesFollowConventions checks every family of a running
// replica: the tokenkeeper_ prefix, _total on counters and only there, a
// unit on histograms, and low-cardinality labels.
func TestMetricNamesFollowConventions(t *testing.T) {
	srv := redistest.NewMini(t)
	fake := fakerdp.New(fakerdp.Config{Knobs: fakerdp.Knobs{TokenLifetime: compressed.lifetime}})
	rdp := httptest.NewServer(fake)
	t.Cleanup(rdp.Close)
	a := startReplica(t, "a", srv.Addr, rdp.URL, compressed)
	testkit.Eventually(t, 5*time.Second, "a is ready", func() bool { _, ok := a.p.keeper.Current(tokenkeeper.Name); return ok })
	m := scrape(t, a.url)
	var names []string
	for name := range m {
		names = append(names, name)
	}
	sort.Strings(names)
	allowedLabels := map[string]bool{"route": true, "code": true, "endpoint": true, "outcome": true, "result": true,
		"change": true, "kind": true, "command": true, "replica": true, "version": true, "le": true,
		"token":  true,                     // token: one per token of the catalog, a handful
		"commit": true, "go_version": true} // of tokenkeeper_replica_info, one series
	for _, name := range names {
		if !strings.HasPrefix(name, "tokenkeeper_") {
			continue
		}
		mf := m[name]
		isCounter := mf.GetType() == dto.MetricType_COUNTER
		if isCounter != strings.HasSuffix(name, "_total") {
			t.Errorf("%s: type %v; counters and only counters end in _total", name, mf.GetType())
		}
		if mf.GetType() == dto.MetricType_HISTOGRAM && !strings.HasSuffix(name, "_seconds") {
			t.Errorf("%s: histogram without a unit", name)
		}
		if len(mf.GetMetric()) > 60 {
			t.Errorf("%s: %d series, want few", name, len(mf.GetMetric()))
		}
		for _, mm := range mf.GetMetric() {
			for _, lp := range mm.GetLabel() {
				if !allowedLabels[lp.GetName()] {
					t.Errorf("%s: label %q is not one of the known low-cardinality labels", name, lp.GetName())
				}
			}
		}
		if mf.GetHelp() == "" {
			t.Errorf("%s: no help", name)
		}
	}
}
