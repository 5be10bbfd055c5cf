package helmtest

// The value sets the chart is rendered and linted with. Each is what a
// user would write in a values file (helm install -f FILE).

const defaultValues = ``

// catalogValues keeps three tokens: secrets from a file of the Secret and
// from a variable that env takes from another Secret, a token minted per
// device, and a scoped key from a file.
const catalogValues = `
secret:
  files:
    RDP_CLIENT_SECRET: ""
  extraKeys: [rdp-client-secret, mobile-key]
catalog:
  enabled: true
  tokens:
    - name: liveness
      source: rdp-liveness
      rdp:
        client_id: ${RDP_CLIENT_ID}
        client_secret_file: /run/secrets/tokenkeeper/rdp-client-secret
    - name: billing-api
      source: oauth2
      required: false
      lifetime: 24h
      oauth2:
        token_url: https://tenant.example.com/oauth/token
        client_id: billing-backend
        client_secret: ${BILLING_CLIENT_SECRET}
        scopes: [read:invoices]
        audience: https://billing.example.com
    - name: per-device
      source: rdp-liveness
      mode: per-device
      mints_per_minute: 600
      mints_per_device_hour: 10
      rdp:
        client_id: ${RDP_CLIENT_ID}
        client_secret_file: /run/secrets/tokenkeeper/rdp-client-secret
  keys:
    - name: mobile-backend
      key_file: /run/secrets/tokenkeeper/mobile-key
      tokens: [liveness]
config:
  RDP_CLIENT_ID: my-service-account
env:
  - name: BILLING_CLIENT_SECRET
    valueFrom:
      secretKeyRef:
        name: billing-oauth2
        key: client-secret
`

const networkPolicyValues = `
networkPolicy:
  enabled: true
  ingressFrom:
    - namespaceSelector:
        matchLabels:
          kubernetes.io/metadata.name: apps
  redis:
    to:
      - podSelector:
          matchLabels:
            app.kubernetes.io/name: redis
`

const autoscalingValues = `
autoscaling:
  enabled: true
  minReplicas: 3
  maxReplicas: 12
  targetCPUUtilizationPercentage: 60
  targetMemoryUtilizationPercentage: 80
`

const monitoringValues = `
secret:
  files:
    TOKENKEEPER_METRICS_KEYS: metrics-keys
metrics:
  serviceMonitor:
    enabled: true
    labels:
      release: prometheus
    authorization:
      secretName: tokenkeeper-scrape
      key: metrics-key
  prometheusRule:
    enabled: true
    labels:
      release: prometheus
`

const sentinelValues = `
redis:
  mode: sentinel
networkPolicy:
  enabled: true
`

// everythingValues turns every option on at once.
const everythingValues = catalogValues + `
redis:
  mode: cluster
  tls:
    secretName: redis-client-tls
  wait:
    replicas: 1
tls:
  secretName: tokenkeeper-tls
  clientCA:
    secretName: tokenkeeper-client-ca
  identities: [CN=mesh-gateway;name=mesh;tokens=liveness]
audit:
  enabled: true
fleetRateLimit: 300
upstreamCA:
  configMapName: corporate-ca
networkPolicy:
  enabled: true
autoscaling:
  enabled: true
metrics:
  serviceMonitor:
    enabled: true
  prometheusRule:
    enabled: true
image:
  digest: sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
imagePullSecrets: [{name: regcred}]
podAnnotations: {example.com/team: identity}
podLabels: {example.com/cost-center: "42"}
nodeSelector: {kubernetes.io/os: linux}
tolerations: [{key: dedicated, operator: Equal, value: tokens, effect: NoSchedule}]
affinity:
  nodeAffinity:
    preferredDuringSchedulingIgnoredDuringExecution:
      - weight: 50
        preference:
          matchExpressions: [{key: node.kubernetes.io/instance-type, operator: In, values: [m7g.large]}]
priorityClassName: high-priority
serviceAccount:
  annotations: {eks.amazonaws.com/role-arn: "arn:aws:iam::123456789012:role/tokenkeeper"}
extraVolumes: [{name: scratch, emptyDir: {sizeLimit: 1Mi}}]
extraVolumeMounts: [{name: scratch, mountPath: /scratch}]
`

// valueSets are rendered, linted and checked by every general test.
var valueSets = []struct {
	name, values string
}{
	{"defaults", defaultValues},
	{"catalog", catalogValues},
	{"networkpolicy", networkPolicyValues},
	{"autoscaling", autoscalingValues},
	{"monitoring", monitoringValues},
	{"sentinel", sentinelValues},
	{"tls", tlsValues},
	{"everything", everythingValues},
}
