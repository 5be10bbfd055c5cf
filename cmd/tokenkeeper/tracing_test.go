package main

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	collectortrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/protobuf/proto"

	"github.com/tokenkeeper/tokenkeeper/internal/fakerdp"
	"github.com/tokenkeeper/tokenkeeper/internal/redistest"
	"github.com/tokenkeeper/tokenkeeper/internal/testkit"
)

func TestTracingOn(t *testing.T) {
	for _, tc := range []struct {
		name string
		env  map[string]string
		want bool
	}{
		{"nothing set", nil, false},
		{"an OTLP endpoint", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, true},
		{"a traces endpoint", map[string]string{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, true},
		{"an exporter named", map[string]string{"OTEL_TRACES_EXPORTER": "console"}, true},
		{"exporter none", map[string]string{"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, false},
		{"SDK disabled", map[string]string{"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, false},
		{"only a sampler", map[string]string{"OTEL_TRACES_SAMPLER": "always_on"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tracingOn(func(k string) string { return tc.env[k] }); got != tc.want {
				t.Errorf("tracingOn: %v, want %v", got, tc.want)
			}
		})
	}
}

// collector is an OTLP/HTTP trace receiver: it keeps the name of every
// span it is sent, and the service.name of their resource.
type collector struct {
	mu       sync.Mutex
	spans    map[string]int
	traces   map[string]bool // trace ids (hex) of the server spans
	services map[string]bool
}

func (c *collector) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	var req collectortrace.ExportTraceServiceRequest
	if r.URL.Path != "/v1/traces" || proto.Unmarshal(body, &req) != nil {
		http.Error(w, "bad request", http.StatusBadRequest)
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, rs := range req.ResourceSpans {
		for _, a := range rs.GetResource().GetAttributes() {
			if a.Key == "service.name" {
				c.services[a.GetValue().GetStringValue()] = true
			}
		}
		for _, ss := range rs.ScopeSpans {
			for _, s := range ss.Spans {
				c.spans[s.Name]++
				if strings.HasPrefix(s.Name, "GET ") {
					c.traces[hexOf(s.TraceId)] = true
				}
			}
		}
	}
	w.Header().Set("Content-Type", "application/x-protobuf")
	out, _ := proto.Marshal(&collectortrace.ExportTraceServiceResponse{})
	_, _ = w.Write(out)
}

func hexOf(b []byte) string {
	const digits = "0123456789abcdef"
	out := make([]byte, 0, 2*len(b))
	for _, x := range b {
		out = append(out, digits[x>>4], digits[x&15])
	}
	return string(out)
}

// TestTracesFollowTheOTELVariables runs a replica configured by the
// standard variables alone, exporting over OTLP/HTTP to a receiver: its
// spans arrive under the service name set, a request's server span joins
// the trace its traceparent names, and /metrics in the OpenMetrics format
// carries the refresh's trace id as an exemplar. With the sampler
// always_off, nothing is sent.
func TestTracesFollowTheOTELVariables(t *testing.T) {
	for _, sampler := range []string{"parentbased_always_on", "always_off"} {
		t.Run(sampler, func(t *testing.T) {
			c := &collector{spans: map[string]int{}, traces: map[string]bool{}, services: map[string]bool{}}
			otlp := httptest.NewServer(c)
			defer otlp.Close()
			t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.URL)
			t.Setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
			t.Setenv("OTEL_SERVICE_NAME", "tokenkeeper-under-test")
			t.Setenv("OTEL_TRACES_SAMPLER", sampler)
			t.Setenv("OTEL_BSP_SCHEDULE_DELAY", "50")

			srv := redistest.NewMini(t)
			rdp := httptest.NewServer(fakerdp.New(fakerdp.Config{Knobs: fakerdp.Knobs{TokenLifetime: time.Hour}}))
			defer rdp.Close()
			r := startReplica(t, "traced", srv.Addr, rdp.URL, fleetTimings{lifetime: time.Hour, before: time.Minute, margin: time.Second, lockTTL: time.Second})
			testkit.Eventually(t, 10*time.Second, "the replica serves the token", func() bool {
				return get(t, r.url+"/v1/tokens/liveness", testReaderKey, nil) == http.StatusOK
			})
			const traceID = "0af7651916cd43dd8448eb211c80319c"
			if code := get(t, r.url+"/v1/tokens/liveness", testReaderKey,
				map[string]string{"Traceparent": "00-" + traceID + "-b7ad6b7169203331-01"}); code != http.StatusOK {
				t.Fatalf("GET token: %d", code)
			}
			// The histogram observes the refresh once its write has returned,
			// which can be after the token is served.
			var metrics string
			testkit.Eventually(t, 10*time.Second, "the refresh is in the histogram", func() bool {
				metrics = getBody(t, r.url+"/metrics", map[string]string{"Accept": "application/openmetrics-text; version=1.0.0"})
				const count = `tokenkeeper_refresh_duration_seconds_count{token="liveness"} `
				return strings.Contains(metrics, count) && !strings.Contains(metrics, count+"0\n")
			})
			r.stop() // flushes the batched spans

			c.mu.Lock()
			defer c.mu.Unlock()
			if sampler == "always_off" {
				if len(c.spans) != 0 {
					t.Errorf("spans sent with the sampler always_off: %v", c.spans)
				}
				if strings.Contains(metrics, "trace_id") {
					t.Error("an exemplar with the sampler always_off")
				}
				return
			}
			for _, want := range []string{"tokenkeeper.election", "tokenkeeper.refresh", "POST auth_v2", "POST liveness",
				"tokenkeeper.store.write", "GET /v1/tokens/{name}"} {
				if c.spans[want] == 0 {
					t.Errorf("no %q span received; got %v", want, c.spans)
				}
			}
			if !c.services["tokenkeeper-under-test"] {
				t.Errorf("service names: %v, want OTEL_SERVICE_NAME's", c.services)
			}
			if !c.traces[traceID] {
				t.Errorf("no server span in the caller's trace %s; server traces: %v", traceID, c.traces)
			}
			if !strings.Contains(metrics, `tokenkeeper_refresh_duration_seconds_bucket`) || !strings.Contains(metrics, `# {trace_id="`) {
				t.Errorf("no exemplar with a trace id on the refresh histogram in OpenMetrics:\n%s", grepLines(metrics, "refresh_duration"))
			}
		})
	}
}

func get(t *testing.T, url, key string, header map[string]string) int {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+key)
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func getBody(t *testing.T, url string, header map[string]string) string {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
