package upstream_test

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tokenkeeper/tokenkeeper/internal/fakerdp"
	"github.com/tokenkeeper/tokenkeeper/internal/rdptest"
	"github.com/tokenkeeper/tokenkeeper/upstream"
)

// TestRequestDurationMetric checks that every call is timed by endpoint
// and status code, "error" when no answer came, and that the caller's
// HTTPClient is left as it was.
func TestRequestDurationMetric(t *testing.T) {
	for _, auth := range []upstream.AuthVersion{upstream.AuthV1, upstream.AuthV2} {
		t.Run(string(auth), func(t *testing.T) {
			r := rdptest.New(t, fakerdp.Config{}, nil)
			reg := prometheus.NewRegistry()
			own := &http.Client{Timeout: time.Second}
			c := r.Client(t, upstream.Config{Auth: auth, Registerer: reg, HTTPClient: own})
			ctx := context.Background()
			if _, err := c.Token(ctx); err != nil {
				t.Fatal(err)
			}
			r.Fake.Update(func(k *fakerdp.Knobs) { k.LivenessStatus = http.StatusServiceUnavailable })
			if _, err := c.Token(ctx); err == nil {
				t.Fatal("want the 503 to fail")
			}
			r.Srv.Close()
			if _, err := c.Token(ctx); err == nil {
				t.Fatal("want a closed server to fail")
			}
			want := `
tokenkeeper_upstream_request_duration_seconds_count{code="200",endpoint="auth_` + string(auth) + `"} 1
tokenkeeper_upstream_request_duration_seconds_count{code="200",endpoint="liveness"} 1
tokenkeeper_upstream_request_duration_seconds_count{code="503",endpoint="liveness"} 1
tokenkeeper_upstream_request_duration_seconds_count{code="error",endpoint="liveness"} 1
`
			got := countLines(t, reg)
			for _, line := range strings.Split(strings.TrimSpace(want), "\n") {
				if !strings.Contains(got, line) {
					t.Errorf("metrics lack %s\ngot:\n%s", line, got)
				}
			}
			if own.Transport != nil {
				t.Errorf("the caller's HTTPClient was modified")
			}
		})
	}
}

// countLines renders the histogram's counts as exposition lines.
func countLines(t *testing.T, reg *prometheus.Registry) string {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, lp := range m.GetLabel() {
				labels[lp.GetName()] = lp.GetValue()
			}
			fmt.Fprintf(&b, "%s_count{code=%q,endpoint=%q} %d\n", mf.GetName(), labels["code"], labels["endpoint"], m.GetHistogram().GetSampleCount())
		}
	}
	return b.String()
}
