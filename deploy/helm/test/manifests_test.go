package helmtest

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"os"
	"reflect"
	"strings"
	"testing"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/yaml"
)

// manifestHeader opens deploy/kubernetes/tokenkeeper.yaml.
const manifestHeader = `# tokenkeeper on Kubernetes without Helm: the chart deploy/helm/tokenkeeper
# rendered with its default values, release name "tokenkeeper" (the helm test
# hook left out). Generated: do not edit. Change the chart, then run
#
#   cd deploy/helm/test && go test -run TestRenderedManifests -update
#
# Before applying it, in the namespace of your choice:
#   1. create the Secret "tokenkeeper" with the keys redis-url, api-keys and
#      rdp-client-secret (deploy/helm/tokenkeeper/README.md, "Install");
#   2. set RDP_CLIENT_ID in the Deployment below;
#   3. kubectl apply -n NAMESPACE -f deploy/kubernetes/tokenkeeper.yaml
`

// manifestText is the release's objects (not its hooks) as one YAML
// stream, in the order helm installs them.
func manifestText(r *rendered) string {
	var b strings.Builder
	b.WriteString(manifestHeader)
	for _, o := range r.Objects {
		if o.Hook {
			continue
		}
		b.WriteString("---\n# Source: " + o.Source + "\n")
		b.WriteString(strings.TrimSpace(o.YAML) + "\n")
	}
	return b.String()
}

// TestRenderedManifests: deploy/kubernetes/tokenkeeper.yaml is the chart
// rendered with its defaults.
func TestRenderedManifests(t *testing.T) {
	got := manifestText(mustRender(t, defaultValues))
	if *update {
		if err := os.WriteFile(manifestFile, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("wrote %s", manifestFile)
		return
	}
	want, err := os.ReadFile(manifestFile)
	if err != nil {
		t.Fatalf("%v\nregenerate it: cd deploy/helm/test && go test -run TestRenderedManifests -update", err)
	}
	if string(want) != got {
		t.Errorf("%s is not what the chart renders with its defaults:\n%s\nregenerate it: cd deploy/helm/test && go test -run TestRenderedManifests -update",
			manifestFile, diffLines(string(want), got))
	}
	// The committed file is what kubectl applies: every document must
	// decode strictly too (render checked the same text already).
	for i, doc := range strings.Split(string(want), "\n---\n")[1:] {
		if _, err := decodeObject(fmt.Sprintf("%s, document %d", manifestFile, i+1), doc); err != nil {
			t.Error(err)
		}
	}
}

// TestRulesCopy: the chart's files/tokenkeeper-rules.yml (Helm reads no
// file outside the chart) is deploy/prometheus/tokenkeeper-rules.yml, byte
// for byte.
func TestRulesCopy(t *testing.T) {
	src := readFile(t, rulesFile)
	if *update {
		if err := os.WriteFile(chartRulesFile, src, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	if !bytes.Equal(src, readFile(t, chartRulesFile)) {
		t.Errorf("%s differs from %s:\n%s\nupdate it: cd deploy/helm/test && go test -run TestRulesCopy -update",
			chartRulesFile, rulesFile, diffLines(string(readFile(t, chartRulesFile)), string(src)))
	}
}

// parseRules parses rule groups as Prometheus does (rulefmt: strict YAML,
// PromQL, label and annotation templates).
func parseRules(t *testing.T, where string, content []byte) *rulefmt.RuleGroups {
	t.Helper()
	groups, errs := rulefmt.Parse(content, false, model.UTF8Validation, parser.NewParser(parser.Options{}), slog.New(slog.NewTextHandler(io.Discard, nil)))
	for _, err := range errs {
		t.Errorf("%s: %v", where, err)
	}
	if groups == nil || len(groups.Groups) == 0 {
		t.Fatalf("%s: no rule groups", where)
	}
	return groups
}

// TestMonitoring: the ServiceMonitor scrapes the Service's http port at
// /metrics with a key from a Secret, and the PrometheusRule holds the very
// rules of deploy/prometheus/tokenkeeper-rules.yml.
func TestMonitoring(t *testing.T) {
	r := mustRender(t, monitoringValues)
	svc := only[*corev1.Service](t, r)
	sm := only[*monitoringv1.ServiceMonitor](t, r)
	sel, err := metav1.LabelSelectorAsSelector(&sm.Spec.Selector)
	if err != nil || !sel.Matches(labels.Set(svc.Labels)) {
		t.Errorf("ServiceMonitor selector %v does not select Service %s (%v): %v", sm.Spec.Selector, svc.Name, svc.Labels, err)
	}
	if sm.Labels["release"] != "prometheus" {
		t.Errorf("ServiceMonitor labels %v lack the values' release=prometheus", sm.Labels)
	}
	if len(sm.Spec.Endpoints) != 1 {
		t.Fatalf("endpoints %+v", sm.Spec.Endpoints)
	}
	ep := sm.Spec.Endpoints[0]
	if ep.Port != svc.Spec.Ports[0].Name || ep.Path != "/metrics" {
		t.Errorf("ServiceMonitor scrapes port %q path %q; the Service's port is %q", ep.Port, ep.Path, svc.Spec.Ports[0].Name)
	}
	if a := ep.Authorization; a == nil || a.Credentials == nil || a.Credentials.Name != "tokenkeeper-scrape" || a.Credentials.Key != "metrics-key" {
		t.Errorf("ServiceMonitor authorization %+v: want the key metrics-key of Secret tokenkeeper-scrape", a)
	}

	pr := only[*monitoringv1.PrometheusRule](t, r)
	if pr.Labels["release"] != "prometheus" {
		t.Errorf("PrometheusRule labels %v lack the values' release=prometheus", pr.Labels)
	}
	// The rules as rendered, not as the operator's types re-encode them.
	var obj struct {
		Spec map[string]any `json:"spec"`
	}
	for _, o := range r.Objects {
		if o.Kind == "PrometheusRule" {
			if err := yaml.Unmarshal([]byte(o.YAML), &obj); err != nil {
				t.Fatal(err)
			}
		}
	}
	spec, err := yaml.Marshal(obj.Spec)
	if err != nil {
		t.Fatal(err)
	}
	got := parseRules(t, "PrometheusRule "+pr.Name, spec)
	want := parseRules(t, rulesFile, readFile(t, rulesFile))
	if !reflect.DeepEqual(got, want) {
		gy, _ := yaml.Marshal(got)
		wy, _ := yaml.Marshal(want)
		t.Errorf("the PrometheusRule's rules differ from %s:\n%s", rulesFile, diffLines(string(wy), string(gy)))
	}
	alerts := 0
	for _, g := range got.Groups {
		for _, rule := range g.Rules {
			if rule.Alert != "" {
				alerts++
			}
		}
	}
	if alerts < 10 {
		t.Errorf("%d alerts in the PrometheusRule", alerts)
	}
}
