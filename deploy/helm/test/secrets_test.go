package helmtest

import (
	"crypto/sha256"
	"fmt"
	"io/fs"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"

	"github.com/tokenkeeper/tokenkeeper/internal/catalog"
)

// canary stands for a secret value a user might hand the chart.
const canary = "CANARY-s3cr3t-9f2c7e"

// TestNoSecretValueRendered hands the chart a secret value in every place
// one could be slipped in: each attempt is refused at install, with an
// error that says what to do instead and never repeats the value.
func TestNoSecretValueRendered(t *testing.T) {
	for _, tc := range []struct {
		name, values string
		want         string // in the error
	}{
		// Plain settings: the schema lists the variables config may set.
		{"config RDP_CLIENT_SECRET", "config: {RDP_CLIENT_SECRET: " + canary + "}", "RDP_CLIENT_SECRET"},
		{"config RDP_PASSWORD", "config: {RDP_PASSWORD: " + canary + "}", "RDP_PASSWORD"},
		{"config TOKENKEEPER_REDIS_URL", "config: {TOKENKEEPER_REDIS_URL: 'redis://:" + canary + "@redis:6379/0'}", "TOKENKEEPER_REDIS_URL"},
		{"config TOKENKEEPER_API_KEYS", "config: {TOKENKEEPER_API_KEYS: " + canary + "}", "TOKENKEEPER_API_KEYS"},
		{"config TOKENKEEPER_ENCRYPTION_KEYS", "config: {TOKENKEEPER_ENCRYPTION_KEYS: 'k1:" + canary + "'}", "TOKENKEEPER_ENCRYPTION_KEYS"},
		// Extra environment: a secret variable with a plain value.
		{"env RDP_CLIENT_SECRET", "env: [{name: RDP_CLIENT_SECRET, value: " + canary + "}]", "taken by reference only"},
		{"env TOKENKEEPER_REDIS_URL", "env: [{name: TOKENKEEPER_REDIS_URL, value: 'redis://:" + canary + "@redis'}]", "taken by reference only"},
		{"env TOKENKEEPER_ADMIN_KEYS", "env: [{name: TOKENKEEPER_ADMIN_KEYS, value: " + canary + "}]", "taken by reference only"},
		{"env TOKENKEEPER_METRICS_KEYS", "env: [{name: TOKENKEEPER_METRICS_KEYS, value: " + canary + "}]", "taken by reference only"},
		// Values a chart often has, and this one does not.
		{"redis.url", "redis: {url: 'redis://:" + canary + "@redis'}", "url"},
		{"redis.password", "redis: {password: " + canary + "}", "password"},
		{"secret.data", "secret: {data: {api-keys: " + canary + "}}", "data"},
		{"secret.stringData", "secret: {stringData: {api-keys: " + canary + "}}", "stringData"},
		{"secret.create", "secret: {create: true}", "create"},
		{"rdp.clientSecret", "rdp: {clientSecret: " + canary + "}", "rdp"},
		{"apiKeys", "apiKeys: [" + canary + "]", "apiKeys"},
		{"serviceMonitor bearerToken", "metrics: {serviceMonitor: {bearerToken: " + canary + "}}", "bearerToken"},
		{"serviceMonitor credentials", "metrics: {serviceMonitor: {authorization: {credentials: " + canary + "}}}", "credentials"},
		// The catalog: secret fields take ${VARIABLE} or FIELD_file only.
		{"catalog client_secret", catalogWith("client_secret: " + canary), "catalog.tokens[0].rdp.client_secret: a secret is never written in the catalog in clear"},
		{"catalog oauth2 client_secret", `
catalog:
  enabled: true
  tokens:
    - name: partner
      source: oauth2
      oauth2: {token_url: https://idp.example/token, client_id: me, client_secret: ` + canary + `}`, "catalog.tokens[0].oauth2.client_secret"},
		{"catalog password", catalogWith("password: " + canary), "catalog.tokens[0].rdp.password"},
		{"catalog key", catalogWith("client_secret: ${X}") + "\n  keys: [{name: ops, key: " + canary + "}]", "catalog.keys[0].key: a key is never written in the catalog in clear"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := render(t, tc.values)
			if err == nil {
				if strings.Contains(r.all(), canary) {
					t.Fatalf("the secret value was rendered:\n%s", r.all())
				}
				t.Fatalf("accepted; want an error about %q", tc.want)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error does not mention %q:\n%v", tc.want, err)
			}
			if strings.Contains(err.Error(), canary) {
				t.Errorf("the error repeats the secret value:\n%v", err)
			}
		})
	}
}

// catalogWith is a catalog of one RDP token whose rdp block has the line.
func catalogWith(line string) string {
	return `
catalog:
  enabled: true
  tokens:
    - name: liveness
      source: rdp-liveness
      rdp:
        client_id: me
        ` + line
}

// TestSecretsByReference: with everything on, every secret reaches the
// replica as a file of a Secret volume or a secretKeyRef, and each Secret
// a pod or the ServiceMonitor names is one the values named.
func TestSecretsByReference(t *testing.T) {
	r := mustRender(t, everythingValues+monitoringValues[strings.Index(monitoringValues, "metrics:"):])
	d := only[*appsv1.Deployment](t, r)
	named := map[string]bool{}
	for _, v := range d.Spec.Template.Spec.Volumes {
		if v.Secret != nil {
			named[v.Secret.SecretName] = true
		}
	}
	for _, e := range container(t, d).Env {
		if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
			named[e.ValueFrom.SecretKeyRef.Name] = true
		}
	}
	if want := []string{"billing-oauth2", "redis-client-tls", "tokenkeeper", "tokenkeeper-client-ca", "tokenkeeper-tls"}; !slices.Equal(sortedKeys(named), want) {
		t.Errorf("Secrets the pods read: %v, want %v", sortedKeys(named), want)
	}
	for _, o := range r.Objects {
		if strings.Contains(o.YAML, "stringData") || strings.Contains(o.YAML, "bearerToken:") {
			t.Errorf("%s carries a literal secret field:\n%s", o.Source, o.YAML)
		}
	}
}

func sortedKeys(m map[string]bool) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// TestCatalog: the catalog is a ConfigMap mounted read-only where
// TOKENKEEPER_CONFIG points; the replica's own parser accepts it with the
// files and variables the pod has, so every *_file path is a mounted key
// and every ${VARIABLE} is in the container's environment; a change of the
// catalog, and only that, changes the pod template.
func TestCatalog(t *testing.T) {
	r := mustRender(t, catalogValues)
	d := only[*appsv1.Deployment](t, r)
	spec := &d.Spec.Template.Spec
	c := container(t, d)
	env := envOf(t, c)

	cm := only[*corev1.ConfigMap](t, r)
	file, ok := cm.Data["tokens.yaml"]
	if cm.Name != "tokenkeeper-catalog" || !ok || len(cm.Data) != 1 {
		t.Fatalf("ConfigMap %s data %v: want tokenkeeper-catalog with tokens.yaml", cm.Name, cm.Data)
	}
	path := env["TOKENKEEPER_CONFIG"].Value
	if path != "/etc/tokenkeeper/tokens.yaml" {
		t.Errorf("TOKENKEEPER_CONFIG=%q", path)
	}
	f, ok := fileAt(spec, c, path)
	if !ok || f.Volume.ConfigMap == nil || f.Volume.ConfigMap.Name != cm.Name || f.Key != "tokens.yaml" || !f.ReadOnly {
		t.Errorf("TOKENKEEPER_CONFIG is not the ConfigMap's tokens.yaml mounted read-only: %+v", f)
	}
	if _, ok := env["RDP_CLIENT_SECRET_FILE"]; ok {
		t.Errorf("RDP_CLIENT_SECRET_FILE set though secret.files.RDP_CLIENT_SECRET is empty")
	}

	// The replica's parser, with the pod's files and environment.
	var read []string
	cat, err := catalog.Parse([]byte(file), catalog.Options{
		File: path,
		ReadFile: func(name string) ([]byte, error) {
			mf, ok := fileAt(spec, c, name)
			if !ok || mf.Volume.Secret == nil {
				return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
			}
			read = append(read, mf.Key)
			return []byte("value of " + mf.Key), nil
		},
		LookupEnv: func(name string) (string, bool) {
			e, ok := env[name]
			switch {
			case !ok:
				return "", false
			case e.ValueFrom != nil:
				return "value of " + name, true
			}
			return e.Value, e.Value != ""
		},
	})
	if err != nil {
		t.Fatalf("the replica would refuse the rendered catalog:\n%v\n%s", err, file)
	}
	var names []string
	for _, tok := range cat.Tokens {
		names = append(names, tok.Name)
	}
	if !slices.Equal(names, []string{"liveness", "billing-api", "per-device"}) || len(cat.Keys) != 1 {
		t.Errorf("tokens %v, %d keys", names, len(cat.Keys))
	}
	slices.Sort(read)
	if !slices.Equal(slices.Compact(read), []string{"mobile-key", "rdp-client-secret"}) {
		t.Errorf("secret files read %v", read)
	}
	if e := env["BILLING_CLIENT_SECRET"]; e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil {
		t.Errorf("BILLING_CLIENT_SECRET is not a secretKeyRef: %+v", e)
	}

	// The checksum annotation: the catalog's, and it moves with it alone.
	sum := d.Spec.Template.Annotations["checksum/catalog"]
	if want := fmt.Sprintf("%x", sha256.Sum256([]byte(strings.TrimSuffix(file, "\n")))); sum != want {
		t.Errorf("checksum/catalog %s, want the sha256 of the file %s", sum, want)
	}
	other := only[*appsv1.Deployment](t, mustRender(t, strings.Replace(catalogValues, "lifetime: 24h", "lifetime: 12h", 1)))
	if other.Spec.Template.Annotations["checksum/catalog"] == sum {
		t.Errorf("a changed catalog leaves checksum/catalog as it was: the pods would not roll")
	}
	same := only[*appsv1.Deployment](t, mustRender(t, catalogValues+"\nreplicaCount: 5\n"))
	if same.Spec.Template.Annotations["checksum/catalog"] != sum {
		t.Errorf("replicaCount changed checksum/catalog")
	}
}

// TestSchemaRejects: values.schema.json refuses wrong values at install,
// with a message that names the value and what it should be.
func TestSchemaRejects(t *testing.T) {
	for _, tc := range []struct {
		name, values string
		want         []string
	}{
		{"replicaCount as text", `replicaCount: "three"`, []string{"/replicaCount", "want integer"}},
		{"replicaCount zero", `replicaCount: 0`, []string{"/replicaCount", "minimum"}},
		{"redis.mode", `redis: {mode: bogus}`, []string{"/redis/mode", "'single'", "'sentinel'", "'cluster'"}},
		{"unknown value", `replicas: 3`, []string{"replicas", "not allowed"}},
		{"unknown nested value", `image: {name: tokenkeeper}`, []string{"/image", "name"}},
		{"pullPolicy", `image: {pullPolicy: Sometimes}`, []string{"/image/pullPolicy", "IfNotPresent"}},
		{"digest", `image: {digest: latest}`, []string{"/image/digest"}},
		{"duration", `config: {TOKENKEEPER_LOCK_TTL: ten seconds}`, []string{"/config/TOKENKEEPER_LOCK_TTL", "pattern"}},
		{"log level", `config: {TOKENKEEPER_LOG_LEVEL: verbose}`, []string{"/config/TOKENKEEPER_LOG_LEVEL", "'debug'"}},
		{"chart's own variable", `config: {TOKENKEEPER_SHUTDOWN_DRAIN: 5s}`, []string{"TOKENKEEPER_SHUTDOWN_DRAIN", "not allowed"}},
		{"drain negative", `shutdownDrainSeconds: -1`, []string{"/shutdownDrainSeconds", "minimum"}},
		{"privileged port", `containerPort: 80`, []string{"/containerPort", "minimum"}},
		{"service type", `service: {type: ExternalName}`, []string{"/service/type", "ClusterIP"}},
		{"secret variable unknown", `secret: {files: {RDP_USERNAME: user}}`, []string{"/secret/files", "RDP_USERNAME"}},
		{"catalog source", `catalog: {enabled: true, tokens: [{name: x}]}`, []string{"/catalog/tokens/0", "missing property 'source'"}},
		{"catalog name", `catalog: {enabled: true, tokens: [{name: Bad_Name, source: oauth2}]}`, []string{"/catalog/tokens/0/name", "pattern"}},
		{"catalog duration", `catalog: {enabled: true, tokens: [{name: x, source: oauth2, lifetime: 60}]}`, []string{"/catalog/tokens/0/lifetime", "want string"}},
		{"budget", `podDisruptionBudget: {maxUnavailable: half}`, []string{"/podDisruptionBudget/maxUnavailable"}},
		{"spread", `topologySpreadConstraints: [{maxSkew: 1, topologyKey: zone, whenUnsatisfiable: Maybe}]`, []string{"/topologySpreadConstraints/0/whenUnsatisfiable"}},
		{"autoscaling target", `autoscaling: {targetCPUUtilizationPercentage: 150}`, []string{"/autoscaling/targetCPUUtilizationPercentage"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := render(t, tc.values)
			if err == nil {
				t.Fatalf("accepted %s", tc.values)
			}
			if !strings.Contains(err.Error(), "values don't meet the specifications of the schema") {
				t.Errorf("not refused by the schema: %v", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("the error does not say %q:\n%v", w, err)
				}
			}
			t.Logf("%s:\n%v", tc.values, err)
		})
	}
}

// TestTemplateRejects: what the schema cannot say, the templates check,
// each with a message that says what to change.
func TestTemplateRejects(t *testing.T) {
	for _, tc := range []struct {
		name, values, want string
	}{
		{"grace not longer than drain", "shutdownDrainSeconds: 30\nterminationGracePeriodSeconds: 30",
			"terminationGracePeriodSeconds (30) must be longer than shutdownDrainSeconds (30)"},
		{"empty catalog", "catalog: {enabled: true}", "catalog.tokens: a catalog keeps at least one token"},
		{"client certificate without key", "redis: {tls: {secretName: x, keyKey: \"\"}}", "redis.tls.certKey and redis.tls.keyKey go together"},
		{"env of the chart", "env: [{name: TOKENKEEPER_LISTEN, value: ':9090'}]", "the chart sets this variable itself"},
		{"env twice", "env: [{name: RDP_CLIENT_ID, value: me}]", "already set by config.RDP_CLIENT_ID"},
		{"secret file twice", "env: [{name: RDP_CLIENT_SECRET_FILE, value: /x}]", "secret.files.RDP_CLIENT_SECRET sets it already"},
		{"secret twice", "env: [{name: RDP_CLIENT_SECRET, valueFrom: {secretKeyRef: {name: x, key: y}}}]", "secret.files.RDP_CLIENT_SECRET sets it already"},
		{"no budget", "podDisruptionBudget: {maxUnavailable: null}", "podDisruptionBudget: set maxUnavailable or minAvailable"},
		{"autoscaling without target", "autoscaling: {enabled: true, targetCPUUtilizationPercentage: null}", "autoscaling: set targetCPUUtilizationPercentage"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := render(t, tc.values)
			if err == nil {
				t.Fatalf("accepted %s", tc.values)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("the error does not say %q:\n%v", tc.want, err)
			}
		})
	}
}
