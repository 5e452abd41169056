{{/*
Names, labels, images and the checks every install runs.
*/}}

{{/* The chart's name, or nameOverride. */}}
{{- define "registry.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's base name for objects: fullnameOverride, else <release>-<chart> (the
release name alone when it already contains the chart's name). */}}
{{- define "registry.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "registry.operatorName" -}}
{{- printf "%s-operator" (include "registry.fullname" .) }}
{{- end }}

{{- define "registry.dataplaneName" -}}
{{- printf "%s-dataplane" (include "registry.fullname" .) }}
{{- end }}

{{/* Cluster-scoped objects carry the release namespace: one release per namespace may run
in the same cluster as another of the same name. */}}
{{- define "registry.clusterName" -}}
{{- printf "%s-%s-operator" .Release.Namespace (include "registry.fullname" .) }}
{{- end }}

{{- define "registry.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object; call with (dict "root" $ "component" "operator"). */}}
{{- define "registry.labels" -}}
helm.sh/chart: {{ include "registry.chart" .root }}
{{ include "registry.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: registry
registry.thalassa.cloud/region: {{ .root.Values.region | quote }}
{{- end }}

{{/* Labels that select a component's pods; call with (dict "root" $ "component" "..."). */}}
{{- define "registry.selectorLabels" -}}
app.kubernetes.io/name: {{ include "registry.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "registry.operatorServiceAccount" -}}
{{- if .Values.operator.serviceAccount.create }}
{{- default (include "registry.operatorName" .) .Values.operator.serviceAccount.name }}
{{- else }}
{{- required "operator.serviceAccount.name is required when operator.serviceAccount.create is false" .Values.operator.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "registry.dataplaneServiceAccount" -}}
{{- if .Values.dataplane.serviceAccount.create }}
{{- default (include "registry.dataplaneName" .) .Values.dataplane.serviceAccount.name }}
{{- else }}
{{- required "dataplane.serviceAccount.name is required when dataplane.serviceAccount.create is false" .Values.dataplane.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* An image reference; call with (dict "image" .Values.image.operator "root" $). The
digest, when set, wins over the tag. */}}
{{- define "registry.image" -}}
{{- if .image.digest }}
{{- printf "%s@%s" .image.repository .image.digest }}
{{- else }}
{{- printf "%s:%s" .image.repository (default .root.Chart.AppVersion .image.tag) }}
{{- end }}
{{- end }}

{{/* The registry host without a port (the Ingress host and the TLS server name). */}}
{{- define "registry.hostName" -}}
{{- regexReplaceAll ":[0-9]+$" .Values.registryHost "" }}
{{- end }}

{{/* Milliseconds of a duration written as the schema allows (90s, 15m, 1h 30m, 100ms, 7d). */}}
{{- define "registry.durationMillis" -}}
{{- $total := 0 }}
{{- range $part := regexFindAll "[0-9]+(ms|s|m|h|d)" . -1 }}
{{- $number := regexFind "^[0-9]+" $part }}
{{- $unit := trimPrefix $number $part }}
{{- $scale := get (dict "ms" 1 "s" 1000 "m" 60000 "h" 3600000 "d" 86400000) $unit }}
{{- $total = add $total (mul (int64 $number) $scale) }}
{{- end }}
{{- $total }}
{{- end }}

{{/* Fails unless the duration at `path` with value `value` lies in [min, max] (milliseconds;
max 0: no upper bound). Call with (dict "path" "tokens.ttl" "value" "5m" "min" 30000 "max"
3600000 "range" "between 30s and 1h"). */}}
{{- define "registry.checkDuration" -}}
{{- $millis := include "registry.durationMillis" .value | int64 }}
{{- if or (lt $millis (int64 .min)) (and (gt (int64 .max) 0) (gt $millis (int64 .max))) }}
{{- fail (printf "%s is %s: it must be %s" .path .value .range) }}
{{- end }}
{{- end }}

{{/* Every rule the schema cannot express, checked before anything renders. */}}
{{- define "registry.validate" -}}
{{- $v := .Values }}
{{- if and (eq $v.storage.type "filesystem") (gt (int $v.dataplane.replicas) 1) }}
{{- fail (printf "dataplane.replicas is %d with storage.type filesystem: filesystem storage serves one replica (the volume is attached to one node, and the backend needs a local POSIX filesystem with working flock and atomic rename, which network volumes shared by several nodes do not promise). Set dataplane.replicas to 1, or use storage.type s3 with a bucket that every replica shares." (int $v.dataplane.replicas)) }}
{{- end }}
{{- if and $v.storage.filesystem.ephemeral $v.storage.filesystem.existingClaim }}
{{- fail (printf "storage.filesystem.ephemeral keeps the images in an emptyDir, yet storage.filesystem.existingClaim names the claim %q: set one of them" $v.storage.filesystem.existingClaim) }}
{{- end }}
{{- if eq $v.storage.type "s3" }}
{{- if not $v.storage.s3.bucket }}
{{- fail "storage.s3.bucket is required when storage.type is s3" }}
{{- end }}
{{- if and (eq $v.storage.s3.credentials.source "secret") (not $v.storage.s3.credentials.secret.name) }}
{{- fail "storage.s3.credentials.secret.name is required when storage.s3.credentials.source is secret (a Secret in the release namespace with the access key id and secret access key); use source webIdentity or ambient for credentials without a Secret" }}
{{- end }}
{{- if and (eq $v.storage.s3.credentials.source "webIdentity") (not $v.storage.s3.credentials.webIdentity.roleArn) }}
{{- fail "storage.s3.credentials.webIdentity.roleArn is required when storage.s3.credentials.source is webIdentity" }}
{{- end }}
{{- if $v.storage.s3.redirect.enabled }}
{{- include "registry.checkDuration" (dict "path" "storage.s3.redirect.ttl" "value" $v.storage.s3.redirect.ttl "min" 60000 "max" 604800000 "range" "between 1m and 7d") }}
{{- end }}
{{- end }}
{{- if and $v.tls.enabled (not $v.tls.secretName) }}
{{- fail "tls.secretName is required when tls.enabled is true (a Secret with tls.crt and tls.key in the release namespace)" }}
{{- end }}
{{- if and $v.ingress.enabled $v.ingress.tls.enabled (not $v.ingress.tls.secretName) }}
{{- fail "ingress.tls.secretName is required when ingress.tls.enabled is true" }}
{{- end }}
{{- if and $v.serviceMonitor.enabled $v.serviceMonitor.tlsConfig.caKey (not $v.tls.enabled) }}
{{- fail "serviceMonitor.tlsConfig.caKey is set but tls.enabled is false: the data plane is scraped over plain HTTP" }}
{{- end }}
{{- include "registry.checkDuration" (dict "path" "tokens.ttl" "value" $v.tokens.ttl "min" 30000 "max" 3600000 "range" "between 30s and 1h") }}
{{- include "registry.checkDuration" (dict "path" "tokens.keyRotation" "value" $v.tokens.keyRotation "min" 3600000 "max" 0 "range" "at least 1h") }}
{{- with $v.dataplane.uploads.sessionTimeout }}
{{- include "registry.checkDuration" (dict "path" "dataplane.uploads.sessionTimeout" "value" . "min" 1 "max" 0 "range" "longer than zero") }}
{{- end }}
{{- with $v.dataplane.connections.headerTimeout }}
{{- include "registry.checkDuration" (dict "path" "dataplane.connections.headerTimeout" "value" . "min" 1000 "max" 600000 "range" "between 1s and 10m") }}
{{- end }}
{{- with $v.dataplane.connections.idleTimeout }}
{{- include "registry.checkDuration" (dict "path" "dataplane.connections.idleTimeout" "value" . "min" 1000 "max" 3600000 "range" "between 1s and 1h") }}
{{- end }}
{{- range $field := list "grace" "interval" }}
{{- with (get $v.dataplane.gc $field) }}
{{- include "registry.checkDuration" (dict "path" (printf "dataplane.gc.%s" $field) "value" . "min" 1000 "max" 0 "range" "at least 1s") }}
{{- end }}
{{- end }}
{{- with $v.dataplane.metering.interval }}
{{- include "registry.checkDuration" (dict "path" "dataplane.metering.interval" "value" . "min" 1000 "max" 3600000 "range" "between 1s and 1h") }}
{{- end }}
{{- with $v.operator.usageInterval }}
{{- include "registry.checkDuration" (dict "path" "operator.usageInterval" "value" . "min" 1000 "max" 0 "range" "at least 1s") }}
{{- end }}
{{- range $limit := list "perSource" "perCredential" }}
{{- with (get $v.dataplane.logins $limit) }}
{{- include "registry.checkDuration" (dict "path" (printf "dataplane.logins.%s.per" $limit) "value" .per "min" 1000 "max" 86400000 "range" "between 1s and 24h") }}
{{- end }}
{{- end }}
{{- end }}

{{/* The pod and container security settings shared by both components. */}}
{{- define "registry.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "registry.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
privileged: false
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* The scheme the data plane serves. */}}
{{- define "registry.dataplaneScheme" -}}
{{- if .Values.tls.enabled }}HTTPS{{ else }}HTTP{{ end }}
{{- end }}
