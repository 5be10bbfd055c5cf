package helmtest

import (
	"maps"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// tlsValues serves HTTPS with client certificates and identities, and
// turns on the audit trail, the fleet-wide limit and Redis WAIT.
const tlsValues = `
tls:
  secretName: tokenkeeper-tls
  clientCA:
    configMapName: client-ca
  identities:
    - CN=mesh-gateway;name=mesh;tokens=liveness
    - spiffe://example.org/ns/prod/sa/backend;role=admin
audit:
  enabled: true
fleetRateLimit: 150
redis:
  wait:
    replicas: 1
    timeout: 250ms
networkPolicy:
  enabled: true
metrics:
  serviceMonitor:
    enabled: true
`

// envDiff is what the values add to (or change in) the default
// container's environment: name -> value ("<valueFrom>" for a reference).
func envDiff(t *testing.T, base, d *appsv1.Deployment) map[string]string {
	t.Helper()
	before := envOf(t, container(t, base))
	out := map[string]string{}
	for name, e := range envOf(t, container(t, d)) {
		if b, ok := before[name]; ok && b.Value == e.Value && (b.ValueFrom == nil) == (e.ValueFrom == nil) {
			continue
		}
		if e.ValueFrom != nil {
			out[name] = "<valueFrom>"
			continue
		}
		out[name] = e.Value
	}
	for name := range before {
		if _, ok := envOf(t, container(t, d))[name]; !ok {
			out[name] = "<removed>"
		}
	}
	return out
}

// volumeDiff lists the volumes d has that base has not, as NAME=secret:S
// or NAME=configMap:C with their items' keys.
func volumeDiff(base, d *appsv1.Deployment) []string {
	had := map[string]bool{}
	for _, v := range base.Spec.Template.Spec.Volumes {
		had[v.Name] = true
	}
	var out []string
	for _, v := range d.Spec.Template.Spec.Volumes {
		if had[v.Name] {
			continue
		}
		var src string
		var items []corev1.KeyToPath
		switch {
		case v.Secret != nil:
			src, items = "secret:"+v.Secret.SecretName, v.Secret.Items
		case v.ConfigMap != nil:
			src, items = "configMap:"+v.ConfigMap.Name, v.ConfigMap.Items
		default:
			src = "other"
		}
		var keys []string
		for _, it := range items {
			keys = append(keys, it.Key)
		}
		out = append(out, v.Name+"="+src+"["+strings.Join(keys, ",")+"]")
	}
	return out
}

// mountDiff lists the mounts the container of d has that base's has not,
// as NAME:PATH (ro when read-only).
func mountDiff(t *testing.T, base, d *appsv1.Deployment) []string {
	had := map[string]bool{}
	for _, m := range container(t, base).VolumeMounts {
		had[m.Name] = true
	}
	var out []string
	for _, m := range container(t, d).VolumeMounts {
		if had[m.Name] {
			continue
		}
		s := m.Name + ":" + m.MountPath
		if m.ReadOnly {
			s += ":ro"
		}
		out = append(out, s)
	}
	return out
}

// TestNewValues: each of tls, audit, fleetRateLimit and redis.wait sets
// exactly its variables, volumes and mounts, and the probes' scheme;
// nothing else of the pod changes.
func TestNewValues(t *testing.T) {
	base := only[*appsv1.Deployment](t, mustRender(t, defaultValues))
	const (
		cert     = "/run/secrets/tokenkeeper-tls/tls.crt"
		key      = "/run/secrets/tokenkeeper-tls/tls.key"
		tlsMount = "tls:/run/secrets/tokenkeeper-tls:ro"
		tlsVol   = "tls=secret:tokenkeeper-tls[tls.crt,tls.key]"
	)
	for _, tc := range []struct {
		name, values string
		env          map[string]string
		volumes      []string
		mounts       []string
		https        bool
	}{
		{"tls", "tls: {secretName: tokenkeeper-tls}",
			map[string]string{"TOKENKEEPER_TLS_CERT": cert, "TOKENKEEPER_TLS_KEY": key},
			[]string{tlsVol}, []string{tlsMount}, true},
		{"tls own keys", "tls: {secretName: web, certKey: chain.pem, keyKey: key.pem}",
			map[string]string{"TOKENKEEPER_TLS_CERT": "/run/secrets/tokenkeeper-tls/chain.pem", "TOKENKEEPER_TLS_KEY": "/run/secrets/tokenkeeper-tls/key.pem"},
			[]string{"tls=secret:web[chain.pem,key.pem]"}, []string{tlsMount}, true},
		{"client CA from a Secret", "tls: {secretName: tokenkeeper-tls, clientCA: {secretName: clients}}",
			map[string]string{"TOKENKEEPER_TLS_CERT": cert, "TOKENKEEPER_TLS_KEY": key, "TOKENKEEPER_TLS_CLIENT_CA": "/run/secrets/tokenkeeper-tls-client-ca/ca.crt"},
			[]string{tlsVol, "tls-client-ca=secret:clients[ca.crt]"},
			[]string{tlsMount, "tls-client-ca:/run/secrets/tokenkeeper-tls-client-ca:ro"}, true},
		{"client CA from a ConfigMap, identities", `
tls:
  secretName: tokenkeeper-tls
  clientCA: {configMapName: clients, key: bundle.pem}
  identities: ["CN=mesh-gateway;name=mesh;tokens=liveness+billing-api", "spiffe://example.org/ns/prod/sa/backend;role=admin"]`,
			map[string]string{
				"TOKENKEEPER_TLS_CERT": cert, "TOKENKEEPER_TLS_KEY": key,
				"TOKENKEEPER_TLS_CLIENT_CA":  "/etc/tokenkeeper-tls-client-ca/bundle.pem",
				"TOKENKEEPER_TLS_IDENTITIES": "CN=mesh-gateway;name=mesh;tokens=liveness+billing-api,spiffe://example.org/ns/prod/sa/backend;role=admin",
			},
			[]string{tlsVol, "tls-client-ca=configMap:clients[bundle.pem]"},
			[]string{tlsMount, "tls-client-ca:/etc/tokenkeeper-tls-client-ca:ro"}, true},
		{"audit", "audit: {enabled: true}",
			map[string]string{"TOKENKEEPER_AUDIT_LOG": "stderr", "TOKENKEEPER_AUDIT_READS_PER_MINUTE": "60"}, nil, nil, false},
		{"audit reads 0", "audit: {enabled: true, readsPerMinute: 0}",
			map[string]string{"TOKENKEEPER_AUDIT_LOG": "stderr", "TOKENKEEPER_AUDIT_READS_PER_MINUTE": "0"}, nil, nil, false},
		{"audit off", "audit: {enabled: false, readsPerMinute: 10}", map[string]string{}, nil, nil, false},
		{"fleet limit", "fleetRateLimit: 150", map[string]string{"TOKENKEEPER_FLEET_RATE_LIMIT": "150"}, nil, nil, false},
		{"fleet limit fractional", "fleetRateLimit: 0.5", map[string]string{"TOKENKEEPER_FLEET_RATE_LIMIT": "0.5"}, nil, nil, false},
		{"fleet limit large", "fleetRateLimit: 2000000", map[string]string{"TOKENKEEPER_FLEET_RATE_LIMIT": "-"}, nil, nil, false},
		{"fleet limit off", "fleetRateLimit: 0", map[string]string{}, nil, nil, false},
		{"redis wait", "redis: {wait: {replicas: 1}}",
			map[string]string{"TOKENKEEPER_REDIS_WAIT_REPLICAS": "1", "TOKENKEEPER_REDIS_WAIT_TIMEOUT": "100ms"}, nil, nil, false},
		{"redis wait timeout", "redis: {wait: {replicas: 2, timeout: 1m30s}}",
			map[string]string{"TOKENKEEPER_REDIS_WAIT_REPLICAS": "2", "TOKENKEEPER_REDIS_WAIT_TIMEOUT": "1m30s"}, nil, nil, false},
		{"redis wait off", "redis: {wait: {replicas: 0, timeout: 1s}}", map[string]string{}, nil, nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := only[*appsv1.Deployment](t, mustRender(t, tc.values))
			got := envDiff(t, base, d)
			if v, ok := tc.env["TOKENKEEPER_FLEET_RATE_LIMIT"]; ok && v == "-" {
				// However YAML carries the number, the replica reads the same one.
				if f, err := strconv.ParseFloat(got["TOKENKEEPER_FLEET_RATE_LIMIT"], 64); err != nil || f != 2e6 {
					t.Errorf("TOKENKEEPER_FLEET_RATE_LIMIT=%q: %v, want 2000000", got["TOKENKEEPER_FLEET_RATE_LIMIT"], err)
				}
				tc.env["TOKENKEEPER_FLEET_RATE_LIMIT"] = got["TOKENKEEPER_FLEET_RATE_LIMIT"]
			}
			if !maps.Equal(got, tc.env) {
				t.Errorf("environment added %v, want %v", got, tc.env)
			}
			if v, ok := got["TOKENKEEPER_REDIS_WAIT_TIMEOUT"]; ok {
				if _, err := time.ParseDuration(v); err != nil {
					t.Errorf("TOKENKEEPER_REDIS_WAIT_TIMEOUT=%q is not a duration the replica reads: %v", v, err)
				}
			}
			if got := volumeDiff(base, d); !slices.Equal(got, tc.volumes) {
				t.Errorf("volumes added %v, want %v", got, tc.volumes)
			}
			if got := mountDiff(t, base, d); !slices.Equal(got, tc.mounts) {
				t.Errorf("mounts added %v, want %v", got, tc.mounts)
			}
			c := container(t, d)
			scheme, port := corev1.URISchemeHTTP, "http"
			if tc.https {
				scheme, port = corev1.URISchemeHTTPS, "https"
			}
			for name, p := range map[string]*corev1.Probe{"liveness": c.LivenessProbe, "readiness": c.ReadinessProbe} {
				want := scheme
				if !tc.https {
					want = "" // as by default: unset, which is HTTP
				}
				if p.HTTPGet.Scheme != want || p.HTTPGet.Port != intstr.FromString(port) {
					t.Errorf("%s probe: scheme %q port %s, want %q on %s", name, p.HTTPGet.Scheme, p.HTTPGet.Port.String(), want, port)
				}
			}
			if len(c.Ports) != 1 || c.Ports[0].Name != port {
				t.Errorf("container ports %+v, want one named %s", c.Ports, port)
			}
			checkSecretFiles(t, d)
		})
	}
}

// TestTLS: with TLS on, the Service's port is https (appProtocol https),
// the NetworkPolicy opens it, the ServiceMonitor scrapes over https
// verifying the replicas' own certificate by default or as tlsConfig says,
// helm test checks over https with the certificate alone, and NOTES.txt
// says so.
func TestTLS(t *testing.T) {
	r := mustRender(t, tlsValues)
	svc := only[*corev1.Service](t, r)
	if p := svc.Spec.Ports[0]; p.Name != "https" || p.TargetPort != intstr.FromString("https") || p.AppProtocol == nil || *p.AppProtocol != "https" {
		t.Errorf("Service port %+v: want https to https, appProtocol https", p)
	}
	np := only[*networkingv1.NetworkPolicy](t, r)
	if ports := np.Spec.Ingress[0].Ports; len(ports) != 1 || *ports[0].Port != intstr.FromString("https") {
		t.Errorf("NetworkPolicy ingress %+v: want the https port", np.Spec.Ingress)
	}

	sm := only[*monitoringv1.ServiceMonitor](t, r)
	ep := sm.Spec.Endpoints[0]
	if ep.Port != "https" || ep.Scheme == nil || strings.ToLower(string(*ep.Scheme)) != "https" || ep.TLSConfig == nil {
		t.Fatalf("ServiceMonitor endpoint %+v: want port https, scheme https, a tlsConfig", ep)
	}
	tc := ep.TLSConfig
	if ca := tc.CA.Secret; ca == nil || ca.Name != "tokenkeeper-tls" || ca.Key != "tls.crt" || tc.CA.ConfigMap != nil {
		t.Errorf("ServiceMonitor CA %+v: want the replicas' certificate, tokenkeeper-tls/tls.crt", tc.CA)
	}
	if tc.ServerName == nil || *tc.ServerName != "tokenkeeper.tokenkeeper.svc" {
		t.Errorf("ServiceMonitor serverName %v, want the Service's DNS name", tc.ServerName)
	}
	if tc.InsecureSkipVerify != nil && *tc.InsecureSkipVerify {
		t.Errorf("ServiceMonitor skips verification by default")
	}
	own := mustRender(t, tlsValues+"    tlsConfig: {ca: {configMap: {name: issuer-ca, key: ca.crt}}, serverName: tokens.example.com}\n")
	tc = only[*monitoringv1.ServiceMonitor](t, own).Spec.Endpoints[0].TLSConfig
	if tc == nil || tc.CA.ConfigMap == nil || tc.CA.ConfigMap.Name != "issuer-ca" || tc.CA.Secret != nil || *tc.ServerName != "tokens.example.com" {
		t.Errorf("ServiceMonitor tlsConfig %+v: want the values' own", tc)
	}
	plain := only[*monitoringv1.ServiceMonitor](t, mustRender(t, monitoringValues)).Spec.Endpoints[0]
	if plain.Port != "http" || plain.TLSConfig != nil {
		t.Errorf("without TLS the ServiceMonitor scrapes %s with %+v", plain.Port, plain.TLSConfig)
	}

	var hook *corev1.Pod
	for _, o := range r.Objects {
		if p, ok := o.Obj.(*corev1.Pod); ok && o.Hook {
			hook = p
		}
	}
	if hook == nil {
		t.Fatal("no helm test pod")
	}
	hc := &hook.Spec.Containers[0]
	if !slices.Contains(hc.Args, "-url=https://tokenkeeper:8080/readyz") {
		t.Errorf("helm test args %v: want https", hc.Args)
	}
	env := envOf(t, hc)
	f, ok := fileAt(&hook.Spec, hc, env["TOKENKEEPER_TLS_CERT"].Value)
	if !ok || f.Volume.Secret == nil || f.Volume.Secret.SecretName != "tokenkeeper-tls" || f.Key != "tls.crt" || !f.ReadOnly {
		t.Errorf("helm test TOKENKEEPER_TLS_CERT=%q is not tokenkeeper-tls/tls.crt mounted read-only: %+v", env["TOKENKEEPER_TLS_CERT"].Value, f)
	}
	for _, v := range hook.Spec.Volumes {
		for _, it := range v.Secret.Items {
			if it.Key != "tls.crt" {
				t.Errorf("helm test mounts %s of %s: the certificate alone is needed", it.Key, v.Secret.SecretName)
			}
		}
	}

	for _, want := range []string{"serve HTTPS", "tokenkeeper-tls", "https://tokenkeeper.tokenkeeper.svc:8080", "client-ca", "2 identities", `"log":"audit"`} {
		if !strings.Contains(r.Notes, want) {
			t.Errorf("NOTES.txt does not say %q:\n%s", want, r.Notes)
		}
	}
	if d := mustRender(t, defaultValues); strings.Contains(d.Notes, "https") || strings.Contains(d.Notes, "audit") {
		t.Errorf("NOTES.txt speaks of TLS or the audit trail by default:\n%s", d.Notes)
	}
}

// newVars are the variables the new values set, with the value to use.
var newVars = map[string]string{
	"TOKENKEEPER_TLS_CERT":               "tls.secretName",
	"TOKENKEEPER_TLS_KEY":                "tls.secretName",
	"TOKENKEEPER_TLS_CLIENT_CA":          "tls.clientCA",
	"TOKENKEEPER_TLS_IDENTITIES":         "tls.identities",
	"TOKENKEEPER_AUDIT_LOG":              "audit.enabled",
	"TOKENKEEPER_AUDIT_READS_PER_MINUTE": "audit.readsPerMinute",
	"TOKENKEEPER_FLEET_RATE_LIMIT":       "fleetRateLimit",
	"TOKENKEEPER_REDIS_WAIT_REPLICAS":    "redis.wait.replicas",
	"TOKENKEEPER_REDIS_WAIT_TIMEOUT":     "redis.wait.timeout",
}

// TestNewVariablesRefused: the variables of the new values cannot be set
// behind their backs: in config the schema refuses them, and the templates
// do too when the schema is skipped (helm install
// --skip-schema-validation), naming the value to use; in env the templates
// refuse them.
func TestNewVariablesRefused(t *testing.T) {
	for name, value := range newVars {
		t.Run(name, func(t *testing.T) {
			config := "config: {" + name + ": x}"
			_, err := render(t, config)
			if err == nil || !strings.Contains(err.Error(), "values don't meet the specifications of the schema") ||
				!strings.Contains(err.Error(), name) || !strings.Contains(err.Error(), "not allowed") {
				t.Errorf("%s: %v; want the schema to refuse it by name", config, err)
			}
			_, err = renderSchema(t, config, false)
			if want := "config." + name + ": the chart sets this variable itself; set " + value + " instead"; err == nil || !strings.Contains(err.Error(), want) {
				t.Errorf("%s without the schema: %v; want %q", config, err, want)
			}
			env := "env: [{name: " + name + ", value: x}]"
			_, err = render(t, env)
			if want := "env[0] " + name + ": the chart sets this variable itself; set " + value + " instead"; err == nil || !strings.Contains(err.Error(), want) {
				t.Errorf("%s: %v; want %q", env, err, want)
			}
		})
	}
}

// TestNewValuesRejected: malformed new values are refused at install, by
// the schema or by the templates, each saying what is wrong.
func TestNewValuesRejected(t *testing.T) {
	for _, tc := range []struct {
		name, values string
		schema       bool // refused by the schema (else by a template)
		want         []string
	}{
		{"timeout without unit", "redis: {wait: {replicas: 1, timeout: \"100\"}}", true, []string{"/redis/wait/timeout", "pattern"}},
		{"timeout as words", "redis: {wait: {replicas: 1, timeout: ten seconds}}", true, []string{"/redis/wait/timeout", "pattern"}},
		{"timeout as number", "redis: {wait: {replicas: 1, timeout: 100}}", true, []string{"/redis/wait/timeout", "want string"}},
		{"timeout negative", "redis: {wait: {replicas: 1, timeout: -1s}}", true, []string{"/redis/wait/timeout", "pattern"}},
		{"timeout empty", "redis: {wait: {replicas: 1, timeout: \"\"}}", true, []string{"/redis/wait/timeout"}},
		{"wait replicas negative", "redis: {wait: {replicas: -1}}", true, []string{"/redis/wait/replicas", "minimum"}},
		{"wait unknown", "redis: {wait: {count: 1}}", true, []string{"/redis/wait", "count"}},
		{"fleet limit negative", "fleetRateLimit: -1", true, []string{"/fleetRateLimit", "minimum"}},
		{"fleet limit text", "fleetRateLimit: fast", true, []string{"/fleetRateLimit", "want number"}},
		{"audit reads negative", "audit: {enabled: true, readsPerMinute: -1}", true, []string{"/audit/readsPerMinute", "minimum"}},
		{"audit file", "audit: {enabled: true, file: /var/log/audit.log}", true, []string{"/audit", "file"}},
		{"tls secret name", "tls: {secretName: My_Cert}", true, []string{"/tls/secretName", "pattern"}},
		{"identity with a comma", "tls: {identities: [\"CN=a,CN=b\"]}", true, []string{"/tls/identities/0", "pattern"}},
		{"identity role", "tls: {identities: [\"CN=a;role=root\"]}", true, []string{"/tls/identities/0", "pattern"}},
		{"identity field", "tls: {identities: [\"CN=a;scope=x\"]}", true, []string{"/tls/identities/0", "pattern"}},
		{"client CA without TLS", "tls: {clientCA: {secretName: clients}}", false, []string{"tls.clientCA needs tls.secretName"}},
		{"identities without client CA", "tls: {secretName: web, identities: [CN=a]}", false, []string{"tls.identities need tls.clientCA"}},
		{"client CA twice", "tls: {secretName: web, clientCA: {secretName: a, configMapName: b}}", false, []string{"tls.clientCA: set secretName or configMapName, not both"}},
		{"one key for both", "tls: {secretName: web, certKey: tls.pem, keyKey: tls.pem}", false, []string{"tls.certKey and tls.keyKey are both \"tls.pem\""}},
		{"tlsConfig without TLS", "metrics: {serviceMonitor: {enabled: true, tlsConfig: {serverName: x}}}", false, []string{"metrics.serviceMonitor.tlsConfig is for scrapes over https"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := render(t, tc.values)
			if err == nil {
				t.Fatalf("accepted %s", tc.values)
			}
			if bySchema := strings.Contains(err.Error(), "values don't meet the specifications of the schema"); bySchema != tc.schema {
				t.Errorf("refused by the schema: %v, want %v: %v", bySchema, tc.schema, err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("the error does not say %q:\n%v", w, err)
				}
			}
		})
	}
}
