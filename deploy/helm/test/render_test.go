// Package helmtest renders the tokenkeeper Helm chart (deploy/helm/tokenkeeper)
// with Helm's own Go packages, as `helm template` and `helm install` do, and
// checks what comes out: every object decodes strictly into its Kubernetes
// type, the pods pass the restricted Pod Security Standard, secrets are
// taken by reference only, and the committed plain manifests
// (deploy/kubernetes/tokenkeeper.yaml) are what the chart renders.
//
// It is a module of its own so that neither Helm nor the Kubernetes API
// types enter the graph of a program that imports tokenkeeper.
//
//	cd deploy/helm/test && go test ./...
//	go test -run TestRenderedManifests -update   # rewrite the committed manifests
package helmtest

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"os"
	"path"
	"sort"
	"strings"
	"testing"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/engine"
	"helm.sh/helm/v3/pkg/releaseutil"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"
)

var update = flag.Bool("update", false, "rewrite deploy/kubernetes/tokenkeeper.yaml and the chart's copy of the alert rules from their sources")

const (
	chartDir       = "../tokenkeeper"
	manifestFile   = "../../kubernetes/tokenkeeper.yaml"
	rulesFile      = "../../prometheus/tokenkeeper-rules.yml"
	chartRulesFile = "../tokenkeeper/files/tokenkeeper-rules.yml"
	benchResults   = "../../../bench/RESULTS.md"

	releaseName = "tokenkeeper"
	namespace   = "tokenkeeper"
	// kubeVersion is the cluster the chart is rendered for: a recent one.
	// TestKubeVersions checks the chart's own range.
	kubeVersion = "v1.33.0"
)

// object is one rendered manifest, decoded strictly into its type.
type object struct {
	Source string // tokenkeeper/templates/deployment.yaml
	Kind   string
	Name   string
	Hook   bool   // a helm.sh/hook (helm test), not installed with the release
	YAML   string // as rendered
	Obj    any    // *appsv1.Deployment, *corev1.Service, ...
}

// rendered is the chart rendered with one set of values.
type rendered struct {
	Objects []object
	Notes   string
}

// all returns every rendered text, hooks included, for greps.
func (r *rendered) all() string {
	var b strings.Builder
	for _, o := range r.Objects {
		b.WriteString(o.YAML)
		b.WriteString("\n---\n")
	}
	b.WriteString(r.Notes)
	return b.String()
}

// kinds are the types a rendered object may have; any other kind fails
// the tests, so that a new template comes with its checks.
var kinds = map[string]func() any{
	"v1/ServiceAccount":                      func() any { return new(corev1.ServiceAccount) },
	"v1/ConfigMap":                           func() any { return new(corev1.ConfigMap) },
	"v1/Service":                             func() any { return new(corev1.Service) },
	"v1/Pod":                                 func() any { return new(corev1.Pod) },
	"apps/v1/Deployment":                     func() any { return new(appsv1.Deployment) },
	"policy/v1/PodDisruptionBudget":          func() any { return new(policyv1.PodDisruptionBudget) },
	"autoscaling/v2/HorizontalPodAutoscaler": func() any { return new(autoscalingv2.HorizontalPodAutoscaler) },
	"networking.k8s.io/v1/NetworkPolicy":     func() any { return new(networkingv1.NetworkPolicy) },
	"monitoring.coreos.com/v1/ServiceMonitor": func() any {
		return new(monitoringv1.ServiceMonitor)
	},
	"monitoring.coreos.com/v1/PrometheusRule": func() any { return new(monitoringv1.PrometheusRule) },
}

// loadChart loads the chart from its directory, as helm install PATH does.
func loadChart(t testing.TB) *chart.Chart {
	t.Helper()
	c, err := loader.Load(chartDir)
	if err != nil {
		t.Fatalf("loading the chart: %v", err)
	}
	return c
}

// capabilities are those of a cluster of kubeVersion that serves the
// prometheus-operator's kinds.
func capabilities(t testing.TB) *chartutil.Capabilities {
	t.Helper()
	kv, err := chartutil.ParseKubeVersion(kubeVersion)
	if err != nil {
		t.Fatal(err)
	}
	caps := chartutil.DefaultCapabilities.Copy()
	caps.KubeVersion = *kv
	caps.APIVersions = append(caps.APIVersions, "monitoring.coreos.com/v1", "monitoring.coreos.com/v1/ServiceMonitor", "monitoring.coreos.com/v1/PrometheusRule")
	return caps
}

// parseValues reads values written as YAML, as helm -f FILE does.
func parseValues(t testing.TB, valuesYAML string) map[string]any {
	t.Helper()
	v, err := chartutil.ReadValues([]byte(valuesYAML))
	if err != nil {
		t.Fatalf("values do not parse: %v\n%s", err, valuesYAML)
	}
	return v.AsMap()
}

// render renders the chart with the values (YAML), validating them
// against values.schema.json first, as helm install and helm template do.
// Its error is Helm's: a schema violation or a template's fail.
func render(t testing.TB, valuesYAML string) (*rendered, error) {
	t.Helper()
	return renderSchema(t, valuesYAML, true)
}

// renderSchema renders as render does, validating the values against the
// schema only when schema is true: false is helm install
// --skip-schema-validation, after which the templates' own checks remain.
func renderSchema(t testing.TB, valuesYAML string, schema bool) (*rendered, error) {
	t.Helper()
	c := loadChart(t)
	caps := capabilities(t)
	vals, err := chartutil.ToRenderValuesWithSchemaValidation(c, parseValues(t, valuesYAML), chartutil.ReleaseOptions{
		Name: releaseName, Namespace: namespace, Revision: 1, IsInstall: true,
	}, caps, !schema)
	if err != nil {
		return nil, err
	}
	files, err := engine.Render(c, vals)
	if err != nil {
		return nil, err
	}
	out := &rendered{}
	for name, text := range files {
		if strings.HasSuffix(name, "NOTES.txt") {
			out.Notes = text
			delete(files, name)
		}
	}
	hooks, manifests, err := releaseutil.SortManifests(files, caps.APIVersions, releaseutil.InstallOrder)
	if err != nil {
		return nil, fmt.Errorf("sorting the manifests: %w", err)
	}
	for _, m := range manifests {
		o, err := decodeObject(m.Name, m.Content)
		if err != nil {
			return nil, err
		}
		out.Objects = append(out.Objects, o)
	}
	for _, h := range hooks {
		o, err := decodeObject(h.Path, h.Manifest)
		if err != nil {
			return nil, err
		}
		o.Hook = true
		out.Objects = append(out.Objects, o)
	}
	return out, nil
}

// mustRender renders the chart, failing the test on an error.
func mustRender(t testing.TB, valuesYAML string) *rendered {
	t.Helper()
	r, err := render(t, valuesYAML)
	if err != nil {
		t.Fatalf("rendering the chart: %v\nvalues:\n%s", err, valuesYAML)
	}
	return r
}

// decodeObject decodes one manifest strictly, as the API server's strict
// field validation does: a field its type does not have, a field given
// twice, or a field in the wrong case is an error.
func decodeObject(source, text string) (object, error) {
	js, err := yaml.YAMLToJSONStrict([]byte(text))
	if err != nil {
		return object{}, fmt.Errorf("%s: not YAML: %w\n%s", source, err, text)
	}
	var tm metav1.TypeMeta
	if err := kjson.UnmarshalCaseSensitivePreserveInts(js, &tm); err != nil {
		return object{}, fmt.Errorf("%s: %w", source, err)
	}
	newObj, ok := kinds[tm.APIVersion+"/"+tm.Kind]
	if !ok {
		return object{}, fmt.Errorf("%s: %s %s is not a kind these tests know; add it to kinds, with its checks", source, tm.APIVersion, tm.Kind)
	}
	obj := newObj()
	strict, err := kjson.UnmarshalStrict(js, obj, kjson.DisallowDuplicateFields, kjson.DisallowUnknownFields)
	if err != nil {
		return object{}, fmt.Errorf("%s: %s does not decode: %w", source, tm.Kind, err)
	}
	if len(strict) > 0 {
		return object{}, fmt.Errorf("%s: %s has fields its type does not know: %w", source, tm.Kind, errors.Join(strict...))
	}
	meta, ok := obj.(metav1.Object)
	if !ok {
		return object{}, fmt.Errorf("%s: %T has no metadata", source, obj)
	}
	return object{Source: source, Kind: tm.Kind, Name: meta.GetName(), YAML: text, Obj: obj}, nil
}

// only returns the one object of type T, failing when there are none or
// several.
func only[T any](t testing.TB, r *rendered) T {
	t.Helper()
	all := every[T](r)
	if len(all) != 1 {
		var zero T
		t.Fatalf("want one %T, got %d", zero, len(all))
	}
	return all[0]
}

// every returns the objects of type T that the release installs (not
// the hooks).
func every[T any](r *rendered) []T {
	var out []T
	for _, o := range r.Objects {
		if v, ok := o.Obj.(T); ok && !o.Hook {
			out = append(out, v)
		}
	}
	return out
}

// kindsOf lists the kinds rendered, hooks marked, sorted.
func kindsOf(r *rendered) []string {
	var out []string
	for _, o := range r.Objects {
		k := o.Kind
		if o.Hook {
			k += " (hook)"
		}
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// container returns the tokenkeeper container of the Deployment.
func container(t testing.TB, d *appsv1.Deployment) *corev1.Container {
	t.Helper()
	for i := range d.Spec.Template.Spec.Containers {
		if c := &d.Spec.Template.Spec.Containers[i]; c.Name == "tokenkeeper" {
			return c
		}
	}
	t.Fatalf("Deployment %s has no container named tokenkeeper", d.Name)
	return nil
}

// envOf returns the container's environment by name; it fails on a name
// given twice.
func envOf(t testing.TB, c *corev1.Container) map[string]corev1.EnvVar {
	t.Helper()
	out := map[string]corev1.EnvVar{}
	for _, e := range c.Env {
		if _, dup := out[e.Name]; dup {
			t.Errorf("container %s: %s is set twice", c.Name, e.Name)
		}
		out[e.Name] = e
	}
	return out
}

// mountedFile says where a file path of the container comes from: the
// volume and the key (of a Secret or a ConfigMap) projected at that path.
type mountedFile struct {
	Volume   corev1.Volume
	Mount    corev1.VolumeMount
	Key      string
	ReadOnly bool
}

// fileAt finds the volume item mounted at path in the container, if any.
func fileAt(spec *corev1.PodSpec, c *corev1.Container, file string) (mountedFile, bool) {
	for _, m := range c.VolumeMounts {
		rel, ok := strings.CutPrefix(file, strings.TrimSuffix(m.MountPath, "/")+"/")
		if !ok {
			continue
		}
		for _, v := range spec.Volumes {
			if v.Name != m.Name {
				continue
			}
			var items []corev1.KeyToPath
			switch {
			case v.Secret != nil:
				items = v.Secret.Items
			case v.ConfigMap != nil:
				items = v.ConfigMap.Items
				if len(items) == 0 { // every key of the ConfigMap, at its own name
					return mountedFile{Volume: v, Mount: m, Key: rel, ReadOnly: m.ReadOnly}, !strings.Contains(rel, "/")
				}
			}
			for _, it := range items {
				if path.Clean(it.Path) == path.Clean(rel) {
					return mountedFile{Volume: v, Mount: m, Key: it.Key, ReadOnly: m.ReadOnly}, true
				}
			}
		}
	}
	return mountedFile{}, false
}

// readFile reads a file of the repository, failing the test if it cannot.
func readFile(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// diffLines shows the first lines where want and got differ, with context.
func diffLines(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	var b bytes.Buffer
	shown := 0
	for i := 0; i < len(w) || i < len(g); i++ {
		var wl, gl string
		if i < len(w) {
			wl = w[i]
		}
		if i < len(g) {
			gl = g[i]
		}
		if wl == gl {
			continue
		}
		fmt.Fprintf(&b, "line %d:\n  committed: %q\n  rendered:  %q\n", i+1, wl, gl)
		if shown++; shown == 10 {
			b.WriteString("  ...\n")
			break
		}
	}
	return b.String()
}
