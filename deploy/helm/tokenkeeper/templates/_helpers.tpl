{{/* Names and labels. */}}

{{- define "tokenkeeper.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's full name: RELEASE-tokenkeeper, or RELEASE when it already holds the name. */}}
{{- define "tokenkeeper.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "tokenkeeper.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tokenkeeper.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tokenkeeper.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "tokenkeeper.labels" -}}
helm.sh/chart: {{ include "tokenkeeper.chart" . }}
{{ include "tokenkeeper.selectorLabels" . }}
app.kubernetes.io/version: {{ include "tokenkeeper.tag" . | quote }}
app.kubernetes.io/component: token-keeper
app.kubernetes.io/part-of: tokenkeeper
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "tokenkeeper.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tokenkeeper.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Secret every secret setting comes from: secret.name, or the full name. */}}
{{- define "tokenkeeper.secretName" -}}
{{- default (include "tokenkeeper.fullname" .) .Values.secret.name }}
{{- end }}

{{- define "tokenkeeper.tag" -}}
{{- default .Chart.AppVersion .Values.image.tag }}
{{- end }}

{{- define "tokenkeeper.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s:%s@%s" .Values.image.repository (include "tokenkeeper.tag" .) .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (include "tokenkeeper.tag" .) }}
{{- end }}
{{- end }}

{{/*
The keys of the Secret mounted as files, sorted and each once: the Redis
URL, every non-empty key of secret.files, and secret.extraKeys.
*/}}
{{- define "tokenkeeper.secretKeys" -}}
{{- $keys := dict .Values.redis.urlSecretKey true }}
{{- range $var, $key := .Values.secret.files }}
{{- if $key }}{{ $_ := set $keys $key true }}{{ end }}
{{- end }}
{{- range .Values.secret.extraKeys }}
{{- $_ := set $keys . true }}
{{- end }}
{{- keys $keys | sortAlpha | toJson }}
{{- end }}

{{/*
Variables the chart sets itself, each with the value that sets it: neither
config nor env may set them (the schema refuses them in config; the checks
below refuse them in env, and in config when the schema is skipped).
*/}}
{{- define "tokenkeeper.managedBy" -}}
{{- dict
  "TOKENKEEPER_LISTEN" "containerPort"
  "TOKENKEEPER_CONFIG" "catalog"
  "TOKENKEEPER_SHUTDOWN_DRAIN" "shutdownDrainSeconds"
  "TOKENKEEPER_INSTANCE_ID" "the pod's name"
  "TOKENKEEPER_REDIS_MODE" "redis.mode"
  "TOKENKEEPER_TRUSTED_PROXIES" "trustedProxies"
  "TOKENKEEPER_REDIS_URL" "redis.urlSecretKey"
  "TOKENKEEPER_REDIS_URL_FILE" "redis.urlSecretKey"
  "TOKENKEEPER_REDIS_TLS_CA" "redis.tls"
  "TOKENKEEPER_REDIS_TLS_CERT" "redis.tls"
  "TOKENKEEPER_REDIS_TLS_KEY" "redis.tls"
  "TOKENKEEPER_REDIS_WAIT_REPLICAS" "redis.wait.replicas"
  "TOKENKEEPER_REDIS_WAIT_TIMEOUT" "redis.wait.timeout"
  "TOKENKEEPER_TLS_CERT" "tls.secretName"
  "TOKENKEEPER_TLS_KEY" "tls.secretName"
  "TOKENKEEPER_TLS_CLIENT_CA" "tls.clientCA"
  "TOKENKEEPER_TLS_IDENTITIES" "tls.identities"
  "TOKENKEEPER_AUDIT_LOG" "audit.enabled"
  "TOKENKEEPER_AUDIT_READS_PER_MINUTE" "audit.readsPerMinute"
  "TOKENKEEPER_FLEET_RATE_LIMIT" "fleetRateLimit"
  "RDP_TLS_CA" "upstreamCA"
  | toJson }}
{{- end }}

{{- define "tokenkeeper.managedVars" -}}
{{- include "tokenkeeper.managedBy" . | fromJson | keys | sortAlpha | toJson }}
{{- end }}

{{/* The name of the HTTP port: https when the replicas serve TLS. */}}
{{- define "tokenkeeper.portName" -}}
{{- ternary "https" "http" (not (empty .Values.tls.secretName)) }}
{{- end }}

{{- define "tokenkeeper.secretVars" -}}
{{- list "TOKENKEEPER_REDIS_URL" "TOKENKEEPER_API_KEYS" "TOKENKEEPER_ADMIN_KEYS" "TOKENKEEPER_METRICS_KEYS" "TOKENKEEPER_ENCRYPTION_KEYS" "RDP_CLIENT_SECRET" "RDP_PASSWORD" | toJson }}
{{- end }}

{{/*
The catalog file. Its secret fields (client_secret, password, key) must be
one ${VARIABLE} reference: the chart refuses a secret written in clear,
naming the field and never the value.
*/}}
{{- define "tokenkeeper.catalog" -}}
{{- $c := .Values.catalog }}
{{- if not $c.tokens }}
{{- fail "catalog.tokens: a catalog keeps at least one token (or set catalog.enabled=false)" }}
{{- end }}
{{- $ref := "^\\$\\{[A-Za-z_][A-Za-z0-9_]*\\}$" }}
{{- range $i, $t := $c.tokens }}
{{- range $block := list "rdp" "oauth2" }}
{{- $b := get $t $block }}
{{- if $b }}
{{- range $field := list "client_secret" "password" }}
{{- if and (hasKey $b $field) (not (regexMatch $ref (toString (get $b $field)))) }}
{{- fail (printf "catalog.tokens[%d].%s.%s: a secret is never written in the catalog in clear; use %s_file: %s/KEY (KEY in secret.extraKeys) or %s: ${VARIABLE} (VARIABLE in env, from valueFrom.secretKeyRef)" $i $block $field $field $.Values.secret.mountPath $field) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- range $i, $k := $c.keys }}
{{- if and (hasKey $k "key") (not (regexMatch $ref (toString $k.key))) }}
{{- fail (printf "catalog.keys[%d].key: a key is never written in the catalog in clear; use key_file: %s/KEY (KEY in secret.extraKeys) or key: ${VARIABLE} (VARIABLE in env, from valueFrom.secretKeyRef)" $i $.Values.secret.mountPath) }}
{{- end }}
{{- end }}
{{- $file := dict "tokens" $c.tokens }}
{{- if $c.keys }}{{ $_ := set $file "keys" $c.keys }}{{ end }}
{{- toYaml $file }}
{{- end }}

{{/* Checks of values that the schema cannot express; each failure says what to change. */}}
{{- define "tokenkeeper.checks" -}}
{{- if le (int .Values.terminationGracePeriodSeconds) (int .Values.shutdownDrainSeconds) }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be longer than shutdownDrainSeconds (%d): the kubelet would kill the replica while it drains; give it the drain plus 10 s or more" (int .Values.terminationGracePeriodSeconds) (int .Values.shutdownDrainSeconds)) }}
{{- end }}
{{- if and .Values.autoscaling.enabled (gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) }}
{{- fail (printf "autoscaling.minReplicas (%d) is above autoscaling.maxReplicas (%d)" (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) }}
{{- end }}
{{- $tls := .Values.redis.tls }}
{{- if and $tls.secretName (ne (empty $tls.certKey) (empty $tls.keyKey)) }}
{{- fail "redis.tls.certKey and redis.tls.keyKey go together: set both (a client certificate) or neither" }}
{{- end }}
{{- $srv := .Values.tls }}
{{- if $srv.secretName }}
{{- if eq $srv.certKey $srv.keyKey }}
{{- fail (printf "tls.certKey and tls.keyKey are both %q: the certificate and its key are two keys of the Secret %s" $srv.certKey $srv.secretName) }}
{{- end }}
{{- end }}
{{- $clientCA := $srv.clientCA }}
{{- if and $clientCA.secretName $clientCA.configMapName }}
{{- fail "tls.clientCA: set secretName or configMapName, not both" }}
{{- end }}
{{- if and (or $clientCA.secretName $clientCA.configMapName) (not $srv.secretName) }}
{{- fail "tls.clientCA needs tls.secretName: client certificates come over TLS, which the replicas serve only with a certificate of their own" }}
{{- end }}
{{- if and $srv.identities (not (or $clientCA.secretName $clientCA.configMapName)) }}
{{- fail "tls.identities need tls.clientCA (and tls.secretName): no client certificate is verified without them" }}
{{- end }}
{{- if and .Values.metrics.serviceMonitor.tlsConfig (not $srv.secretName) }}
{{- fail "metrics.serviceMonitor.tlsConfig is for scrapes over https: set tls.secretName, or leave tlsConfig empty" }}
{{- end }}
{{- $secretVars := include "tokenkeeper.secretVars" . | fromJsonArray }}
{{- $managedBy := include "tokenkeeper.managedBy" . | fromJson }}
{{- $managed := keys $managedBy }}
{{- range $name, $_ := .Values.config }}
{{- if has $name $managed }}
{{- fail (printf "config.%s: the chart sets this variable itself; set %s instead (values.yaml)" $name (get $managedBy $name)) }}
{{- end }}
{{- end }}
{{- range $i, $e := .Values.env }}
{{- if and (has $e.name $secretVars) (hasKey $e "value") }}
{{- fail (printf "env[%d] %s: a secret is taken by reference only; set secret.files.%s (redis.urlSecretKey for the Redis URL) to a key of the Secret, the chart renders no secret value" $i $e.name $e.name) }}
{{- end }}
{{- if and (has $e.name $secretVars) (get $.Values.secret.files $e.name) }}
{{- fail (printf "env[%d] %s: secret.files.%s sets it already (from a file); set it in one place" $i $e.name $e.name) }}
{{- end }}
{{- if and (hasSuffix "_FILE" $e.name) (get $.Values.secret.files (trimSuffix "_FILE" $e.name)) }}
{{- fail (printf "env[%d] %s: secret.files.%s sets it already; set it in one place" $i $e.name (trimSuffix "_FILE" $e.name)) }}
{{- end }}
{{- if has $e.name $managed }}
{{- fail (printf "env[%d] %s: the chart sets this variable itself; set %s instead (values.yaml)" $i $e.name (get $managedBy $e.name)) }}
{{- end }}
{{- if hasKey $.Values.config $e.name }}
{{- fail (printf "env[%d] %s: already set by config.%s; set it in one place" $i $e.name $e.name) }}
{{- end }}
{{- end }}
{{- end }}
