package main

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"

	"github.com/tokenkeeper/tokenkeeper"
	"github.com/tokenkeeper/tokenkeeper/internal/fakerdp"
	"github.com/tokenkeeper/tokenkeeper/internal/redistest"
	"github.com/tokenkeeper/tokenkeeper/internal/testkit"
)

const (
	rulesFile     = "../../deploy/prometheus/tokenkeeper-rules.yml"
	dashboardFile = "../../deploy/grafana/tokenkeeper-dashboard.json"
)

var promql = parser.NewParser(parser.Options{})

// metricNames returns the metric names expr selects, histogram series
// (_bucket, _count, _sum) named by their family.
func metricNames(t *testing.T, where, expr string) []string {
	t.Helper()
	e, err := promql.ParseExpr(expr)
	if err != nil {
		t.Errorf("%s: %q does not parse: %v", where, expr, err)
		return nil
	}
	var names []string
	parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
		if vs, ok := n.(*parser.VectorSelector); ok && vs.Name != "" {
			name := vs.Name
			for _, suffix := range []string{"_bucket", "_count", "_sum"} {
				if s, ok := strings.CutSuffix(name, suffix); ok && strings.HasSuffix(s, "_seconds") {
					name = s
				}
			}
			names = append(names, name)
		}
		return nil
	})
	return names
}

// exposed returns the families a running replica exposes.
func exposed(t *testing.T) map[string]bool {
	t.Helper()
	srv := redistest.NewMini(t)
	fake := fakerdp.New(fakerdp.Config{Knobs: fakerdp.Knobs{TokenLifetime: compressed.lifetime}})
	rdp := httptest.NewServer(fake)
	t.Cleanup(rdp.Close)
	a := startReplica(t, "a", srv.Addr, rdp.URL, compressed)
	testkit.Eventually(t, 5*time.Second, "a is ready", func() bool { _, ok := a.p.keeper.Current(tokenkeeper.Name); return ok })
	scrape(t, a.url)
	out := map[string]bool{}
	for name := range scrape(t, a.url) {
		out[name] = true
	}
	return out
}

// TestAlertingRules parses the rule file as Prometheus does (rulefmt:
// YAML, PromQL, label and annotation templates), and checks that each
// alert is documented and selects only metrics a replica exposes.
func TestAlertingRules(t *testing.T) {
	groups, errs := rulefmt.ParseFile(rulesFile, false, model.UTF8Validation, promql, slog.New(slog.NewTextHandler(io.Discard, nil)))
	for _, err := range errs {
		t.Errorf("%s: %v", rulesFile, err)
	}
	if groups == nil {
		t.Fatal("no rule groups")
	}
	have := exposed(t)
	recorded := map[string]bool{}
	var alerts []string
	for _, g := range groups.Groups {
		for _, r := range g.Rules {
			if r.Record != "" {
				recorded[r.Record] = true
			}
		}
	}
	for _, g := range groups.Groups {
		for _, r := range g.Rules {
			where := g.Name + "/" + r.Alert + r.Record
			for _, name := range metricNames(t, where, r.Expr) {
				if !have[name] && !recorded[name] {
					t.Errorf("%s selects %s, which no replica exposes", where, name)
				}
			}
			if r.Alert == "" {
				continue
			}
			alerts = append(alerts, r.Alert)
			if s := r.Labels["severity"]; s != "critical" && s != "warning" && s != "info" {
				t.Errorf("%s: severity %q, want critical, warning or info", where, s)
			}
			if r.Annotations["summary"] == "" || r.Annotations["description"] == "" {
				t.Errorf("%s: summary and description are required", where)
			}
		}
	}
	// The four: expiry within a margin, no leader, failures in a
	// row, replicas not ready.
	for _, want := range []string{"TokenkeeperTokenExpiringSoon", "TokenkeeperNoLeader", "TokenkeeperRefreshFailing", "TokenkeeperReplicaNotReady"} {
		if !slices.Contains(alerts, want) {
			t.Errorf("alert %s missing; have %v", want, alerts)
		}
	}
}

// TestAlertingRulesRejectBreakage makes sure the check above would catch a
// broken rule file.
func TestAlertingRulesRejectBreakage(t *testing.T) {
	good, err := os.ReadFile(rulesFile)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct{ name, from, to string }{
		{"bad PromQL", "max by (job, token) (tokenkeeper_leader) == 0", "max by (job) (tokenkeeper_leader == 0"},
		{"bad template", "{{ $labels.job }} has led", "{{ $labels.job has led"},
		{"bad duration", "for: 30s", "for: 30 seconds"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if !strings.Contains(string(good), tt.from) {
				t.Fatalf("rule file lacks %q", tt.from)
			}
			bad := filepath.Join(t.TempDir(), "rules.yml")
			if err := os.WriteFile(bad, []byte(strings.Replace(string(good), tt.from, tt.to, 1)), 0o600); err != nil {
				t.Fatal(err)
			}
			if _, errs := rulefmt.ParseFile(bad, false, model.UTF8Validation, promql, slog.New(slog.NewTextHandler(io.Discard, nil))); len(errs) == 0 {
				t.Errorf("a rule file with %s parses without error", tt.name)
			}
		})
	}
}

// TestGrafanaDashboard checks that the dashboard is JSON Grafana can
// import, that every query parses as PromQL, and that they select only
// metrics a replica exposes.
func TestGrafanaDashboard(t *testing.T) {
	b, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Title  string `json:"title"`
		UID    string `json:"uid"`
		Panels []struct {
			ID      int    `json:"id"`
			Type    string `json:"type"`
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
		Annotations struct {
			List []struct {
				Expr string `json:"expr"`
			} `json:"list"`
		} `json:"annotations"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("%s is not JSON: %v", dashboardFile, err)
	}
	if d.Title == "" || d.UID == "" || len(d.Panels) < 10 {
		t.Fatalf("dashboard: title %q, uid %q, %d panels", d.Title, d.UID, len(d.Panels))
	}
	have := exposed(t)
	expand := strings.NewReplacer("$__rate_interval", "5m", "$job", ".*")
	seen := map[string]bool{}
	ids := map[int]bool{}
	check := func(where, expr string) {
		for _, name := range metricNames(t, where, expand.Replace(expr)) {
			seen[name] = true
			if !have[name] {
				t.Errorf("%s selects %s, which no replica exposes", where, name)
			}
		}
	}
	for _, p := range d.Panels {
		if ids[p.ID] {
			t.Errorf("panel id %d used twice", p.ID)
		}
		ids[p.ID] = true
		if p.Type != "row" && len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			check("panel "+p.Title, tg.Expr)
		}
	}
	for _, a := range d.Annotations.List {
		check("annotation", a.Expr)
	}
	// The dashboard shows every family the issue asks for.
	for _, f := range families {
		if !seen[f] && f != "tokenkeeper_heartbeats_total" {
			t.Errorf("no panel shows %s", f)
		}
	}
}
