package helmtest

import (
	"cmp"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation"
	psaapi "k8s.io/pod-security-admission/api"
	psapolicy "k8s.io/pod-security-admission/policy"

	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/lint"
	"helm.sh/helm/v3/pkg/lint/support"
)

// secretVars are the replica's variables that carry a secret (the
// `secret: true` settings of cmd/tokenkeeper/config.go): the chart sets
// only their _FILE twins, to files of a mounted Secret.
var secretVars = []string{
	"TOKENKEEPER_REDIS_URL", "TOKENKEEPER_API_KEYS", "TOKENKEEPER_ADMIN_KEYS",
	"TOKENKEEPER_METRICS_KEYS", "TOKENKEEPER_ENCRYPTION_KEYS", "RDP_CLIENT_SECRET", "RDP_PASSWORD",
}

// TestLint runs helm lint over the chart with every value set: no error
// and no warning.
func TestLint(t *testing.T) {
	kv, err := chartutil.ParseKubeVersion(kubeVersion)
	if err != nil {
		t.Fatal(err)
	}
	for _, vs := range valueSets {
		t.Run(vs.name, func(t *testing.T) {
			l := lint.AllWithKubeVersion(chartDir, parseValues(t, vs.values), namespace, kv)
			for _, m := range l.Messages {
				if m.Severity >= support.WarningSev {
					t.Errorf("helm lint: %s", m)
				} else {
					t.Logf("helm lint: %s", m)
				}
			}
		})
	}
}

// TestKubeVersions: the chart's kubeVersion range admits the versions whose
// fields it uses (unhealthyPodEvictionPolicy and matchLabelKeys are on by
// default from 1.27) and the version the tests render for.
func TestKubeVersions(t *testing.T) {
	c := loadChart(t)
	for v, want := range map[string]bool{"v1.26.9": false, "v1.27.0": true, "v1.30.2": true, kubeVersion: true, "v1.36.0": true} {
		if got := chartutil.IsCompatibleRange(c.Metadata.KubeVersion, v); got != want {
			t.Errorf("kubeVersion %q admits %s: %v, want %v", c.Metadata.KubeVersion, v, got, want)
		}
	}
}

// TestEveryValueSet renders each value set and checks what must hold
// whatever the values: strict decoding (in render), valid names and
// labels, no Secret, restricted pods, secrets mounted from files, a drain
// shorter than the grace period, and selectors that find the pods.
func TestEveryValueSet(t *testing.T) {
	for _, vs := range valueSets {
		t.Run(vs.name, func(t *testing.T) {
			r := mustRender(t, vs.values)
			t.Logf("rendered: %s", strings.Join(kindsOf(r), ", "))
			checkMetadata(t, r)
			checkNoSecretValues(t, r)
			d := only[*appsv1.Deployment](t, r)
			checkRestricted(t, r)
			checkSecretFiles(t, d)
			checkDrain(t, d)
			checkProbes(t, d)
			checkSelectors(t, r, d)
		})
	}
}

// checkMetadata: every object has a valid name, valid labels, and the
// chart's identifying labels.
func checkMetadata(t *testing.T, r *rendered) {
	t.Helper()
	for _, o := range r.Objects {
		meta := o.Obj.(metav1.Object)
		for _, msg := range validation.IsDNS1123Label(meta.GetName()) {
			t.Errorf("%s %s: name: %s", o.Kind, o.Name, msg)
		}
		for k, v := range meta.GetLabels() {
			for _, msg := range validation.IsQualifiedName(k) {
				t.Errorf("%s %s: label key %q: %s", o.Kind, o.Name, k, msg)
			}
			for _, msg := range validation.IsValidLabelValue(v) {
				t.Errorf("%s %s: label %s=%q: %s", o.Kind, o.Name, k, v, msg)
			}
		}
		if meta.GetLabels()["app.kubernetes.io/instance"] != releaseName || meta.GetLabels()["app.kubernetes.io/name"] == "" {
			t.Errorf("%s %s: labels %v lack app.kubernetes.io/name and instance", o.Kind, o.Name, meta.GetLabels())
		}
		if meta.GetNamespace() != "" {
			t.Errorf("%s %s: namespace %q written in the manifest; the release's namespace applies", o.Kind, o.Name, meta.GetNamespace())
		}
	}
}

// checkNoSecretValues: no Secret object, no secret variable with a value,
// no value of the demo stack's secrets.
func checkNoSecretValues(t *testing.T, r *rendered) {
	t.Helper()
	for _, o := range r.Objects {
		if o.Kind == "Secret" {
			t.Errorf("%s renders a Secret %s: the chart takes secrets by reference only", o.Source, o.Name)
		}
	}
	for _, p := range podSpecs(r) {
		for _, c := range p.spec.Containers {
			for _, e := range c.Env {
				if slices.Contains(secretVars, e.Name) && e.Value != "" {
					t.Errorf("%s: container %s sets %s to a value: secrets come from files", p.where, c.Name, e.Name)
				}
			}
		}
	}
	all := r.all()
	for _, s := range []string{"demo-secret", "demo-reader-5c8f", "demo-admin", "BEGIN PRIVATE KEY", "password="} {
		if strings.Contains(all, s) {
			t.Errorf("the rendered chart contains %q", s)
		}
	}
}

// podSpec is a pod spec the chart renders, with where it comes from.
type podSpec struct {
	where string
	meta  metav1.ObjectMeta
	spec  *corev1.PodSpec
}

// podSpecs returns every pod spec rendered: the Deployment's template and
// the test hook's pod.
func podSpecs(r *rendered) []podSpec {
	var out []podSpec
	for _, o := range r.Objects {
		switch v := o.Obj.(type) {
		case *appsv1.Deployment:
			out = append(out, podSpec{"Deployment " + v.Name, v.Spec.Template.ObjectMeta, &v.Spec.Template.Spec})
		case *corev1.Pod:
			out = append(out, podSpec{"Pod " + v.Name, v.ObjectMeta, &v.Spec})
		}
	}
	return out
}

// checkRestricted evaluates every pod against the "restricted" Pod
// Security Standard with the admission controller's own checks
// (k8s.io/pod-security-admission, latest version), and checks the fields
// the chart promises one by one, at pod and container level.
func checkRestricted(t *testing.T, r *rendered) {
	t.Helper()
	eval, err := psapolicy.NewEvaluator(psapolicy.DefaultChecks(), nil)
	if err != nil {
		t.Fatal(err)
	}
	level := psaapi.LevelVersion{Level: psaapi.LevelRestricted, Version: psaapi.LatestVersion()}
	for _, p := range podSpecs(r) {
		res := psapolicy.AggregateCheckResults(eval.EvaluatePod(level, &p.meta, p.spec))
		if !res.Allowed {
			t.Errorf("%s violates PodSecurity %q: %s: %s", p.where, level, res.ForbiddenReason(), res.ForbiddenDetail())
		}
		if p.spec.AutomountServiceAccountToken == nil || *p.spec.AutomountServiceAccountToken {
			t.Errorf("%s: automountServiceAccountToken is not false", p.where)
		}
		if p.spec.EnableServiceLinks == nil || *p.spec.EnableServiceLinks {
			t.Errorf("%s: enableServiceLinks is not false", p.where)
		}
		psc := p.spec.SecurityContext
		switch {
		case psc == nil:
			t.Errorf("%s: no pod securityContext", p.where)
		default:
			want := map[string]bool{
				"runAsNonRoot":           ptrIs(psc.RunAsNonRoot, true),
				"runAsUser 65532":        ptrIs(psc.RunAsUser, 65532),
				"runAsGroup 65532":       ptrIs(psc.RunAsGroup, 65532),
				"fsGroup 65532":          ptrIs(psc.FSGroup, 65532),
				"seccomp RuntimeDefault": psc.SeccompProfile != nil && psc.SeccompProfile.Type == corev1.SeccompProfileTypeRuntimeDefault,
			}
			for what, ok := range want {
				if !ok {
					t.Errorf("%s: pod securityContext lacks %s: %+v", p.where, what, psc)
				}
			}
		}
		for _, c := range p.spec.Containers {
			sc := c.SecurityContext
			if sc == nil {
				t.Errorf("%s: container %s has no securityContext", p.where, c.Name)
				continue
			}
			want := map[string]bool{
				"runAsNonRoot":                   ptrIs(sc.RunAsNonRoot, true),
				"runAsUser 65532":                ptrIs(sc.RunAsUser, 65532),
				"allowPrivilegeEscalation false": ptrIs(sc.AllowPrivilegeEscalation, false),
				"privileged false":               sc.Privileged == nil || !*sc.Privileged,
				"readOnlyRootFilesystem":         ptrIs(sc.ReadOnlyRootFilesystem, true),
				"capabilities drop ALL, add none": sc.Capabilities != nil && slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) &&
					len(sc.Capabilities.Add) == 0,
				"seccomp RuntimeDefault": sc.SeccompProfile != nil && sc.SeccompProfile.Type == corev1.SeccompProfileTypeRuntimeDefault,
			}
			for what, ok := range want {
				if !ok {
					t.Errorf("%s: container %s securityContext lacks %s: %+v", p.where, c.Name, what, sc)
				}
			}
			if c.Resources.Limits.Memory().IsZero() || c.Resources.Requests.Memory().IsZero() {
				t.Errorf("%s: container %s has no memory request or limit", p.where, c.Name)
			}
		}
	}
}

func octal(m *int32) string {
	if m == nil {
		return "unset (0644)"
	}
	return fmt.Sprintf("%#o", *m)
}

func ptrIs[T comparable](p *T, want T) bool { return p != nil && *p == want }

// checkSecretFiles: every *_FILE variable and every TLS file of the
// replica names a file that a read-only volume projects from a key of a
// Secret (or, for the upstream CA and the catalog, a ConfigMap); the
// Secret volumes are readable by the replica's group and no one else.
func checkSecretFiles(t *testing.T, d *appsv1.Deployment) {
	t.Helper()
	spec := &d.Spec.Template.Spec
	c := container(t, d)
	env := envOf(t, c)
	if _, ok := env["TOKENKEEPER_REDIS_URL_FILE"]; !ok {
		t.Errorf("TOKENKEEPER_REDIS_URL_FILE is not set: the Redis URL must come from the Secret")
	}
	for name, e := range env {
		if !strings.HasSuffix(name, "_FILE") && name != "TOKENKEEPER_REDIS_TLS_CA" && name != "TOKENKEEPER_REDIS_TLS_CERT" &&
			name != "TOKENKEEPER_REDIS_TLS_KEY" && name != "RDP_TLS_CA" && name != "TOKENKEEPER_CONFIG" &&
			name != "TOKENKEEPER_TLS_CERT" && name != "TOKENKEEPER_TLS_KEY" && name != "TOKENKEEPER_TLS_CLIENT_CA" {
			continue
		}
		f, ok := fileAt(spec, c, e.Value)
		if !ok {
			t.Errorf("%s=%s: no volume item is mounted at that path", name, e.Value)
			continue
		}
		if !f.ReadOnly {
			t.Errorf("%s: volume %s is mounted writable", name, f.Volume.Name)
		}
		switch {
		case f.Volume.Secret != nil:
			if m := f.Volume.Secret.DefaultMode; m == nil || *m&0o007 != 0 {
				t.Errorf("%s: Secret volume %s is readable by others (defaultMode %s)", name, f.Volume.Name, octal(m))
			}
			if f.Volume.Secret.Optional != nil && *f.Volume.Secret.Optional {
				t.Errorf("%s: Secret volume %s is optional: a missing key would start the replica without its secret", name, f.Volume.Name)
			}
		case f.Volume.ConfigMap != nil && (name == "RDP_TLS_CA" || name == "TOKENKEEPER_CONFIG" || name == "TOKENKEEPER_TLS_CLIENT_CA"):
		default:
			t.Errorf("%s: volume %s is neither a Secret nor (for a CA or the catalog) a ConfigMap", name, f.Volume.Name)
		}
	}
}

// checkDrain: the drain is set, and the grace period outlasts it.
func checkDrain(t *testing.T, d *appsv1.Deployment) {
	t.Helper()
	e, ok := envOf(t, container(t, d))["TOKENKEEPER_SHUTDOWN_DRAIN"]
	if !ok {
		t.Fatal("TOKENKEEPER_SHUTDOWN_DRAIN is not set")
	}
	drain, err := time.ParseDuration(e.Value)
	if err != nil {
		t.Fatalf("TOKENKEEPER_SHUTDOWN_DRAIN=%q: %v", e.Value, err)
	}
	grace := d.Spec.Template.Spec.TerminationGracePeriodSeconds
	if grace == nil || time.Duration(*grace)*time.Second <= drain {
		t.Errorf("terminationGracePeriodSeconds %v is not longer than the drain %v", grace, drain)
	}
}

// portName is the name of the replica's port: https when it serves TLS
// (TOKENKEEPER_TLS_CERT is set), http otherwise.
func portName(t testing.TB, d *appsv1.Deployment) string {
	t.Helper()
	if _, ok := envOf(t, container(t, d))["TOKENKEEPER_TLS_CERT"]; ok {
		return "https"
	}
	return "http"
}

// checkProbes: liveness on /healthz and readiness on /readyz, both on the
// container's http (or https) port, which is the port the replica listens
// on, in the scheme the replica speaks.
func checkProbes(t *testing.T, d *appsv1.Deployment) {
	t.Helper()
	c := container(t, d)
	name := portName(t, d)
	scheme := corev1.URISchemeHTTP
	if name == "https" {
		scheme = corev1.URISchemeHTTPS
	}
	port := containerPort(t, c, name)
	if got := envOf(t, c)["TOKENKEEPER_LISTEN"].Value; got != fmt.Sprintf(":%d", port) {
		t.Errorf("TOKENKEEPER_LISTEN=%q, but the %s port is %d", got, name, port)
	}
	for _, p := range []struct {
		name  string
		probe *corev1.Probe
		path  string
	}{{"liveness", c.LivenessProbe, "/healthz"}, {"readiness", c.ReadinessProbe, "/readyz"}} {
		if p.probe == nil || p.probe.HTTPGet == nil {
			t.Errorf("no HTTP %s probe", p.name)
			continue
		}
		g := p.probe.HTTPGet
		if g.Path != p.path || g.Port != intstr.FromString(name) {
			t.Errorf("%s probe: GET %s on port %s, want %s on %s", p.name, g.Path, g.Port.String(), p.path, name)
		}
		if got := cmp.Or(g.Scheme, corev1.URISchemeHTTP); got != scheme {
			t.Errorf("%s probe: scheme %s, want %s", p.name, got, scheme)
		}
		if p.probe.TimeoutSeconds < 1 || p.probe.PeriodSeconds < 1 || p.probe.FailureThreshold < 1 {
			t.Errorf("%s probe: timings %+v", p.name, p.probe)
		}
	}
	if c.StartupProbe != nil {
		t.Errorf("a startup probe: /healthz answers as soon as the process listens, none is needed")
	}
}

func containerPort(t *testing.T, c *corev1.Container, name string) int32 {
	t.Helper()
	for _, p := range c.Ports {
		if p.Name == name {
			return p.ContainerPort
		}
	}
	t.Fatalf("container %s has no port named %s", c.Name, name)
	return 0
}

// checkSelectors: the Deployment's selector, the Service's, the
// PodDisruptionBudget's, the NetworkPolicy's, the topology spread's and
// the ServiceMonitor's all find the replicas' pods, and only the
// Deployment's pods (never the test hook's).
func checkSelectors(t *testing.T, r *rendered, d *appsv1.Deployment) {
	t.Helper()
	pods := labels.Set(d.Spec.Template.Labels)
	sel, err := metav1.LabelSelectorAsSelector(d.Spec.Selector)
	if err != nil || !sel.Matches(pods) {
		t.Errorf("the Deployment's selector %v does not match its pods' labels %v (%v)", d.Spec.Selector, pods, err)
	}
	var hookPods []labels.Set
	for _, o := range r.Objects {
		if p, ok := o.Obj.(*corev1.Pod); ok {
			hookPods = append(hookPods, labels.Set(p.Labels))
		}
	}
	matchesPods := func(what string, s labels.Selector) {
		if !s.Matches(pods) {
			t.Errorf("%s (%v) does not select the replicas (%v)", what, s, pods)
		}
		for _, h := range hookPods {
			if s.Matches(h) {
				t.Errorf("%s (%v) also selects the test pod (%v)", what, s, h)
			}
		}
	}
	svc := only[*corev1.Service](t, r)
	matchesPods("Service "+svc.Name, labels.SelectorFromSet(svc.Spec.Selector))
	name := portName(t, d)
	if len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].TargetPort != intstr.FromString(name) || svc.Spec.Ports[0].Name != name {
		t.Errorf("Service %s ports %+v: want one port %s to the container's %s port", svc.Name, svc.Spec.Ports, name, name)
	}
	for _, pdb := range every[*policyv1.PodDisruptionBudget](r) {
		s, err := metav1.LabelSelectorAsSelector(pdb.Spec.Selector)
		if err != nil {
			t.Fatal(err)
		}
		matchesPods("PodDisruptionBudget "+pdb.Name, s)
	}
	for _, np := range every[*networkingv1.NetworkPolicy](r) {
		s, err := metav1.LabelSelectorAsSelector(&np.Spec.PodSelector)
		if err != nil {
			t.Fatal(err)
		}
		matchesPods("NetworkPolicy "+np.Name, s)
	}
	for i, c := range d.Spec.Template.Spec.TopologySpreadConstraints {
		s, err := metav1.LabelSelectorAsSelector(c.LabelSelector)
		if err != nil {
			t.Fatal(err)
		}
		matchesPods(fmt.Sprintf("topologySpreadConstraints[%d]", i), s)
	}
	for _, h := range every[*autoscalingv2.HorizontalPodAutoscaler](r) {
		if ref := h.Spec.ScaleTargetRef; ref.Kind != "Deployment" || ref.Name != d.Name || ref.APIVersion != "apps/v1" {
			t.Errorf("HorizontalPodAutoscaler %s scales %+v, not Deployment %s", h.Name, ref, d.Name)
		}
	}
}

// TestDefaults checks the default release property by property: what the
// chart's README promises of it.
func TestDefaults(t *testing.T) {
	r := mustRender(t, defaultValues)
	c := loadChart(t)
	if got, want := kindsOf(r), []string{"Deployment", "Pod (hook)", "PodDisruptionBudget", "Service", "ServiceAccount"}; !slices.Equal(got, want) {
		t.Errorf("default objects %v, want %v", got, want)
	}
	d := only[*appsv1.Deployment](t, r)
	spec := d.Spec.Template.Spec
	ctr := container(t, d)
	env := envOf(t, ctr)

	if !ptrIs(d.Spec.Replicas, 3) {
		t.Errorf("replicas %v, want 3", d.Spec.Replicas)
	}
	if want := "tokenkeeper/tokenkeeper:" + c.Metadata.AppVersion; ctr.Image != want || ctr.ImagePullPolicy != corev1.PullIfNotPresent {
		t.Errorf("image %s (%s), want %s (IfNotPresent)", ctr.Image, ctr.ImagePullPolicy, want)
	}
	if !slices.Equal(ctr.Args, []string{"serve"}) || len(ctr.Command) != 0 {
		t.Errorf("command %v args %v, want the image's entrypoint with serve", ctr.Command, ctr.Args)
	}
	if s := d.Spec.Strategy; s.Type != appsv1.RollingUpdateDeploymentStrategyType || s.RollingUpdate == nil ||
		s.RollingUpdate.MaxUnavailable.IntValue() != 0 || s.RollingUpdate.MaxSurge.IntValue() != 1 {
		t.Errorf("strategy %+v: want a rolling update that never goes below the replica count", s)
	}

	for name, want := range map[string]string{
		"TOKENKEEPER_LISTEN":          ":8080",
		"TOKENKEEPER_SHUTDOWN_DRAIN":  "10s",
		"TOKENKEEPER_REDIS_MODE":      "single",
		"TOKENKEEPER_REDIS_URL_FILE":  "/run/secrets/tokenkeeper/redis-url",
		"TOKENKEEPER_API_KEYS_FILE":   "/run/secrets/tokenkeeper/api-keys",
		"RDP_CLIENT_SECRET_FILE":      "/run/secrets/tokenkeeper/rdp-client-secret",
		"RDP_CLIENT_ID":               "",
		"TOKENKEEPER_LOG_FORMAT":      "json",
		"TOKENKEEPER_LOG_LEVEL":       "info",
		"TOKENKEEPER_INSTANCE_ID":     "",
		"TOKENKEEPER_ADMIN_KEYS_FILE": "-",
		"TOKENKEEPER_CONFIG":          "-",
	} {
		e, ok := env[name]
		switch {
		case want == "-" && ok:
			t.Errorf("%s is set by default", name)
		case want != "-" && !ok:
			t.Errorf("%s is not set", name)
		case ok && e.Value != want:
			t.Errorf("%s=%q, want %q", name, e.Value, want)
		}
	}
	if f := env["TOKENKEEPER_INSTANCE_ID"].ValueFrom; f == nil || f.FieldRef == nil || f.FieldRef.FieldPath != "metadata.name" {
		t.Errorf("TOKENKEEPER_INSTANCE_ID is not the pod's name: %+v", f)
	}
	if got := int(*spec.TerminationGracePeriodSeconds); got != 30 {
		t.Errorf("terminationGracePeriodSeconds %d, want 30", got)
	}

	// The Secret: one volume, the chart's default name, the keys the values name.
	if len(spec.Volumes) != 1 || spec.Volumes[0].Secret == nil || spec.Volumes[0].Secret.SecretName != "tokenkeeper" {
		t.Fatalf("volumes %+v: want the Secret tokenkeeper alone", spec.Volumes)
	}
	var keys []string
	for _, it := range spec.Volumes[0].Secret.Items {
		keys = append(keys, it.Key)
	}
	if want := []string{"api-keys", "rdp-client-secret", "redis-url"}; !slices.Equal(keys, want) {
		t.Errorf("Secret keys mounted %v, want %v", keys, want)
	}
	if m := spec.Volumes[0].Secret.DefaultMode; m == nil || *m != 0o440 {
		t.Errorf("Secret volume mode %v, want 0440 (group 65532 reads it)", m)
	}

	// Topology spread: nodes (hard) and zones (soft).
	spread := map[string]corev1.UnsatisfiableConstraintAction{}
	for _, tsc := range spec.TopologySpreadConstraints {
		spread[tsc.TopologyKey] = tsc.WhenUnsatisfiable
		if tsc.MaxSkew != 1 || !slices.Equal(tsc.MatchLabelKeys, []string{"pod-template-hash"}) {
			t.Errorf("spread over %s: maxSkew %d, matchLabelKeys %v", tsc.TopologyKey, tsc.MaxSkew, tsc.MatchLabelKeys)
		}
	}
	if want := map[string]corev1.UnsatisfiableConstraintAction{
		"kubernetes.io/hostname":      corev1.DoNotSchedule,
		"topology.kubernetes.io/zone": corev1.ScheduleAnyway,
	}; fmt.Sprint(spread) != fmt.Sprint(want) {
		t.Errorf("topology spread %v, want %v", spread, want)
	}

	// Resources: from the benchmark's RSS (bench/RESULTS.md, section 7).
	peak := benchPeakRSS(t)
	req, lim := ctr.Resources.Requests.Memory(), ctr.Resources.Limits.Memory()
	if req.Cmp(peak) < 0 {
		t.Errorf("memory request %s is below the benchmark's peak RSS %s", req, mib(peak))
	}
	double := peak.DeepCopy()
	double.Add(peak)
	if lim.Cmp(double) < 0 {
		t.Errorf("memory limit %s leaves less than the benchmark's peak RSS %s again as headroom", lim, mib(peak))
	}
	if ctr.Resources.Requests.Cpu().IsZero() || ctr.Resources.Limits.Cpu().IsZero() {
		t.Errorf("no CPU request or limit: %+v", ctr.Resources)
	}

	// PodDisruptionBudget: one replica at a time; unready ones evictable.
	pdb := only[*policyv1.PodDisruptionBudget](t, r)
	if pdb.Spec.MaxUnavailable == nil || pdb.Spec.MaxUnavailable.IntValue() != 1 || pdb.Spec.MinAvailable != nil {
		t.Errorf("PodDisruptionBudget: maxUnavailable %v minAvailable %v, want 1 and none", pdb.Spec.MaxUnavailable, pdb.Spec.MinAvailable)
	}
	if p := pdb.Spec.UnhealthyPodEvictionPolicy; p == nil || *p != policyv1.AlwaysAllow {
		t.Errorf("PodDisruptionBudget: unhealthyPodEvictionPolicy %v, want AlwaysAllow", p)
	}
	if !equalSelector(pdb.Spec.Selector, d.Spec.Selector) {
		t.Errorf("PodDisruptionBudget selector %v, Deployment selector %v", pdb.Spec.Selector, d.Spec.Selector)
	}

	// Service and ServiceAccount.
	svc := only[*corev1.Service](t, r)
	if svc.Spec.Type != corev1.ServiceTypeClusterIP || svc.Spec.Ports[0].Port != 8080 {
		t.Errorf("Service: %s port %d, want ClusterIP 8080", svc.Spec.Type, svc.Spec.Ports[0].Port)
	}
	sa := only[*corev1.ServiceAccount](t, r)
	if sa.Name != spec.ServiceAccountName || !ptrIs(sa.AutomountServiceAccountToken, false) {
		t.Errorf("ServiceAccount %s (automount %v); the pods use %s", sa.Name, sa.AutomountServiceAccountToken, spec.ServiceAccountName)
	}
	if !strings.Contains(r.Notes, "redis-url") || !strings.Contains(r.Notes, "RDP_CLIENT_ID is empty") {
		t.Errorf("NOTES.txt names neither the Secret's keys nor the missing client id:\n%s", r.Notes)
	}
}

func equalSelector(a, b *metav1.LabelSelector) bool {
	sa, err1 := metav1.LabelSelectorAsSelector(a)
	sb, err2 := metav1.LabelSelectorAsSelector(b)
	return err1 == nil && err2 == nil && sa.String() == sb.String()
}

// benchPeakRSS reads the peak RSS of one replica from bench/RESULTS.md
// ("peak 32.1 MiB" in section 7), the figure the memory values are sized
// from.
func benchPeakRSS(t *testing.T) resource.Quantity {
	t.Helper()
	text := string(readFile(t, benchResults))
	_, section, ok := strings.Cut(text, "## 7. Memory")
	m := regexp.MustCompile(`peak ([0-9.]+) MiB`).FindStringSubmatch(section)
	if !ok || m == nil {
		t.Fatalf("%s: no \"peak N MiB\" in section 7 (Memory); the chart's memory values are sized from it", benchResults)
	}
	mib, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		t.Fatal(err)
	}
	return *resource.NewQuantity(int64(mib*(1<<20)), resource.BinarySI)
}

func mib(q resource.Quantity) string { return fmt.Sprintf("%.1f MiB", float64(q.Value())/(1<<20)) }

// TestAutoscaling: with the HorizontalPodAutoscaler, the Deployment leaves
// replicas to it.
func TestAutoscaling(t *testing.T) {
	r := mustRender(t, autoscalingValues)
	d := only[*appsv1.Deployment](t, r)
	if d.Spec.Replicas != nil {
		t.Errorf("replicas %d set while the HorizontalPodAutoscaler scales", *d.Spec.Replicas)
	}
	h := only[*autoscalingv2.HorizontalPodAutoscaler](t, r)
	if !ptrIs(h.Spec.MinReplicas, 3) || h.Spec.MaxReplicas != 12 {
		t.Errorf("replicas %v to %d, want 3 to 12", h.Spec.MinReplicas, h.Spec.MaxReplicas)
	}
	got := map[corev1.ResourceName]int32{}
	for _, m := range h.Spec.Metrics {
		if m.Type != autoscalingv2.ResourceMetricSourceType || m.Resource == nil || m.Resource.Target.AverageUtilization == nil {
			t.Fatalf("metric %+v", m)
		}
		got[m.Resource.Name] = *m.Resource.Target.AverageUtilization
	}
	if got[corev1.ResourceCPU] != 60 || got[corev1.ResourceMemory] != 80 || len(got) != 2 {
		t.Errorf("targets %v, want cpu 60 and memory 80", got)
	}
	if _, err := render(t, "autoscaling: {enabled: true, minReplicas: 5, maxReplicas: 4}"); err == nil || !strings.Contains(err.Error(), "minReplicas (5) is above autoscaling.maxReplicas (4)") {
		t.Errorf("minReplicas above maxReplicas: %v", err)
	}
}

// TestNetworkPolicy: ingress to the HTTP port only; egress to DNS, Redis
// and the upstream only, each rule limited to its ports.
func TestNetworkPolicy(t *testing.T) {
	for _, tc := range []struct {
		name, values string
		redisPorts   []int
	}{
		{"single", networkPolicyValues, []int{6379}},
		{"sentinel", sentinelValues, []int{26379, 6379}},
		{"cluster", "networkPolicy: {enabled: true}\nredis: {mode: cluster}", []int{6379}},
		{"own ports", "networkPolicy: {enabled: true, redis: {ports: [6380]}}", []int{6380}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := mustRender(t, tc.values)
			np := only[*networkingv1.NetworkPolicy](t, r)
			if !slices.Equal(np.Spec.PolicyTypes, []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress}) {
				t.Errorf("policyTypes %v", np.Spec.PolicyTypes)
			}
			if len(np.Spec.Ingress) != 1 || len(np.Spec.Ingress[0].Ports) != 1 ||
				*np.Spec.Ingress[0].Ports[0].Port != intstr.FromString("http") || *np.Spec.Ingress[0].Ports[0].Protocol != corev1.ProtocolTCP {
				t.Errorf("ingress %+v: want the http port alone", np.Spec.Ingress)
			}
			if len(np.Spec.Egress) != 3 {
				t.Fatalf("egress has %d rules, want 3 (DNS, Redis, upstream)", len(np.Spec.Egress))
			}
			for i, rule := range np.Spec.Egress {
				if len(rule.Ports) == 0 {
					t.Errorf("egress rule %d opens every port", i)
				}
			}
			ports := func(rule networkingv1.NetworkPolicyEgressRule, proto corev1.Protocol) []int {
				var out []int
				for _, p := range rule.Ports {
					if *p.Protocol == proto {
						out = append(out, p.Port.IntValue())
					}
				}
				return out
			}
			dns, redis, up := np.Spec.Egress[0], np.Spec.Egress[1], np.Spec.Egress[2]
			if !slices.Equal(ports(dns, corev1.ProtocolUDP), []int{53}) || !slices.Equal(ports(dns, corev1.ProtocolTCP), []int{53}) || len(dns.To) != 1 {
				t.Errorf("DNS rule %+v: want 53 over UDP and TCP to kube-dns", dns)
			}
			if got := ports(redis, corev1.ProtocolTCP); !slices.Equal(got, tc.redisPorts) || len(redis.Ports) != len(got) {
				t.Errorf("Redis ports %v, want %v", got, tc.redisPorts)
			}
			if got := ports(up, corev1.ProtocolTCP); !slices.Equal(got, []int{443}) {
				t.Errorf("upstream ports %v, want 443", got)
			}
			if tc.name == "single" && (len(np.Spec.Ingress[0].From) != 1 || len(redis.To) != 1) {
				t.Errorf("the values' peers are not used: ingress from %v, Redis to %v", np.Spec.Ingress[0].From, redis.To)
			}
		})
	}
}

// TestSentinel: the mode reaches the replica as TOKENKEEPER_REDIS_MODE.
func TestSentinel(t *testing.T) {
	for _, mode := range []string{"single", "sentinel", "cluster"} {
		r := mustRender(t, "redis: {mode: "+mode+"}")
		if got := envOf(t, container(t, only[*appsv1.Deployment](t, r)))["TOKENKEEPER_REDIS_MODE"].Value; got != mode {
			t.Errorf("redis.mode %s: TOKENKEEPER_REDIS_MODE=%q", mode, got)
		}
	}
}

// TestTrustedProxies: the balancers in front of the pods reach the replica
// as TOKENKEEPER_TRUSTED_PROXIES; without them the variable is left unset,
// and env may not set it behind the value's back.
func TestTrustedProxies(t *testing.T) {
	env := envOf(t, container(t, only[*appsv1.Deployment](t, mustRender(t, ""))))
	if v, ok := env["TOKENKEEPER_TRUSTED_PROXIES"]; ok {
		t.Errorf("without trustedProxies: TOKENKEEPER_TRUSTED_PROXIES=%q, want it unset", v.Value)
	}
	r := mustRender(t, "trustedProxies: [10.244.0.0/16, 192.0.2.7]")
	if got := envOf(t, container(t, only[*appsv1.Deployment](t, r)))["TOKENKEEPER_TRUSTED_PROXIES"].Value; got != "10.244.0.0/16,192.0.2.7" {
		t.Errorf("TOKENKEEPER_TRUSTED_PROXIES=%q, want 10.244.0.0/16,192.0.2.7", got)
	}
	if _, err := render(t, "trustedProxies: [not-a-cidr]"); err == nil {
		t.Error("trustedProxies [not-a-cidr] was accepted")
	}
	if _, err := render(t, "env: [{name: TOKENKEEPER_TRUSTED_PROXIES, value: 0.0.0.0/0}]"); err == nil {
		t.Error("env set TOKENKEEPER_TRUSTED_PROXIES")
	}
}

// TestOptions: image digest, Redis TLS, the upstream CA, pod placement and
// the ServiceAccount's name end up where they belong.
func TestOptions(t *testing.T) {
	r := mustRender(t, everythingValues)
	d := only[*appsv1.Deployment](t, r)
	spec := d.Spec.Template.Spec
	c := container(t, d)
	env := envOf(t, c)
	if !strings.HasSuffix(c.Image, "@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef") {
		t.Errorf("image %s is not pinned by digest", c.Image)
	}
	for name, want := range map[string]string{
		"TOKENKEEPER_REDIS_TLS_CA":   "/run/secrets/tokenkeeper-redis-tls/ca.crt",
		"TOKENKEEPER_REDIS_TLS_CERT": "/run/secrets/tokenkeeper-redis-tls/tls.crt",
		"TOKENKEEPER_REDIS_TLS_KEY":  "/run/secrets/tokenkeeper-redis-tls/tls.key",
		"RDP_TLS_CA":                 "/etc/tokenkeeper-upstream-ca/ca.crt",
		"TOKENKEEPER_REDIS_MODE":     "cluster",
	} {
		if got := env[name].Value; got != want {
			t.Errorf("%s=%q, want %q", name, got, want)
		}
	}
	if spec.PriorityClassName != "high-priority" || spec.NodeSelector["kubernetes.io/os"] != "linux" ||
		len(spec.Tolerations) != 1 || spec.Affinity == nil || spec.Affinity.NodeAffinity == nil ||
		len(spec.ImagePullSecrets) != 1 {
		t.Errorf("placement values lost: %+v", spec)
	}
	if d.Spec.Template.Labels["example.com/cost-center"] != "42" || d.Spec.Template.Annotations["example.com/team"] != "identity" {
		t.Errorf("pod labels %v, annotations %v", d.Spec.Template.Labels, d.Spec.Template.Annotations)
	}
	if len(spec.Volumes) != 7 || len(c.VolumeMounts) != 7 {
		t.Errorf("volumes %d, want secrets, redis-tls, tls, tls-client-ca, upstream-ca, catalog and the extra one", len(spec.Volumes))
	}

	// Without a client certificate: the CA alone.
	r = mustRender(t, "redis: {tls: {secretName: redis-ca, certKey: \"\", keyKey: \"\"}}")
	env = envOf(t, container(t, only[*appsv1.Deployment](t, r)))
	if _, ok := env["TOKENKEEPER_REDIS_TLS_CERT"]; ok || env["TOKENKEEPER_REDIS_TLS_CA"].Value == "" {
		t.Errorf("CA only: %v", env)
	}

	// A ServiceAccount of one's own.
	r = mustRender(t, "serviceAccount: {create: false, name: shared}")
	if got := only[*appsv1.Deployment](t, r).Spec.Template.Spec.ServiceAccountName; got != "shared" || len(every[*corev1.ServiceAccount](r)) != 0 {
		t.Errorf("serviceAccount create=false: pods use %q, %d ServiceAccounts rendered", got, len(every[*corev1.ServiceAccount](r)))
	}

	// minAvailable wins over the default maxUnavailable; percentages pass.
	r = mustRender(t, "podDisruptionBudget: {minAvailable: \"50%\"}")
	if pdb := only[*policyv1.PodDisruptionBudget](t, r); pdb.Spec.MaxUnavailable != nil || pdb.Spec.MinAvailable.String() != "50%" {
		t.Errorf("PodDisruptionBudget %+v", pdb.Spec)
	}
}
