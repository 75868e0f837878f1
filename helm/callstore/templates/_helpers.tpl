{{/*
The chart's name, or nameOverride.
*/}}
{{- define "callstore.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The fully qualified app name, the base of every object's name. Truncated to 63 characters
(DNS-1123 labels); the release name alone when it already contains the chart's name.
*/}}
{{- define "callstore.fullname" -}}
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

{{/*
chart-version, for the helm.sh/chart label.
*/}}
{{- define "callstore.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The labels every object carries.
*/}}
{{- define "callstore.labels" -}}
helm.sh/chart: {{ include "callstore.chart" . }}
{{ include "callstore.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: callstore
{{- end }}

{{/*
The labels that tell this release's objects apart (also in selectors).
*/}}
{{- define "callstore.selectorLabels" -}}
app.kubernetes.io/name: {{ include "callstore.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
The server pods' selector: the migration Job's pods have another component, so the Service,
the PodDisruptionBudget and the ServiceMonitor never count them.
*/}}
{{- define "callstore.serverSelectorLabels" -}}
{{ include "callstore.selectorLabels" . }}
app.kubernetes.io/component: server
{{- end }}

{{/*
The container image: repository@digest when a digest is set, else repository:tag.
*/}}
{{- define "callstore.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/*
The Secret that holds DATABASE_URL for the server, and its key.
*/}}
{{- define "callstore.databaseSecretName" -}}
{{- if .Values.database.existingSecret }}
{{- .Values.database.existingSecret }}
{{- else }}
{{- printf "%s-database" (include "callstore.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "callstore.databaseSecretKey" -}}
{{- if .Values.database.existingSecret }}
{{- .Values.database.existingSecretKey }}
{{- else }}
{{- print "DATABASE_URL" }}
{{- end }}
{{- end }}

{{/*
The hook Secret the migration Job reads DATABASE_URL from when the chart owns the URL (see
migrate-job.yaml for why it is not the server's Secret).
*/}}
{{- define "callstore.migrateSecretName" -}}
{{- printf "%s-migrate" (include "callstore.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Where the TLS Secret is mounted.
*/}}
{{- define "callstore.tlsMountPath" -}}
/etc/callstore/tls
{{- end }}

{{/*
The rules values.schema.json cannot express. configmap.yaml (always rendered) includes this,
so a bad combination fails the render with one clear message.
*/}}
{{- define "callstore.validateValues" -}}
{{- $db := .Values.database }}
{{- if and $db.url $db.existingSecret }}
{{- fail "set only one of database.url and database.existingSecret" }}
{{- end }}
{{- if not (or $db.url $db.existingSecret) }}
{{- fail "callstore needs a PostgreSQL database: set database.url (the chart keeps it in a Secret) or database.existingSecret (a Secret with the URL under database.existingSecretKey)" }}
{{- end }}
{{- if and .Values.tls.enabled (not .Values.tls.existingSecret) }}
{{- fail "tls.enabled needs tls.existingSecret: a Secret with tls.crt and tls.key (and ca.crt for tls.clientAuth)" }}
{{- end }}
{{- if and .Values.tls.clientAuth (not .Values.tls.enabled) }}
{{- fail "tls.clientAuth needs tls.enabled" }}
{{- end }}
{{- if and .Values.tls.enabled .Values.tls.clientAuth (eq .Values.tls.probeMode "grpcTLS") }}
{{- fail "tls.probeMode grpcTLS cannot be used with tls.clientAuth: the kubelet has no client certificate; use tcpSocket" }}
{{- end }}
{{- if and .Values.tls.enabled (eq .Values.tls.probeMode "grpcTLS") (semverCompare "<1.37.0-0" .Capabilities.KubeVersion.Version) }}
{{- fail (printf "tls.probeMode grpcTLS needs Kubernetes 1.37 or newer (gRPC probes over TLS); this cluster is %s: use tcpSocket" .Capabilities.KubeVersion.Version) }}
{{- end }}
{{- if and .Values.serviceMonitor.enabled (not .Values.metrics.enabled) }}
{{- fail "serviceMonitor.enabled needs metrics.enabled" }}
{{- end }}
{{- $pdb := .Values.podDisruptionBudget }}
{{- if and $pdb.enabled (kindIs "invalid" $pdb.minAvailable) (kindIs "invalid" $pdb.maxUnavailable) }}
{{- fail "podDisruptionBudget.enabled needs minAvailable or maxUnavailable" }}
{{- end }}
{{- if and .Values.autoscaling.enabled (gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) }}
{{- fail "autoscaling.minReplicas must not exceed autoscaling.maxReplicas" }}
{{- end }}
{{- end }}

{{/*
"true" when the server serves the plaintext health listener the probes use: with TLS and
tls.probeMode healthPort.
*/}}
{{- define "callstore.healthPort" -}}
{{- if and .Values.tls.enabled (eq .Values.tls.probeMode "healthPort") }}true{{ end }}
{{- end }}

{{/*
The probe action for the health service given as "service": gRPC health checks on the gRPC
port (numeric: the kubelet's gRPC probes take no port names). The kubelet's gRPC probes speak
plaintext, so with TLS they go to the plaintext health port (tls.probeMode healthPort, the
default), or to the TLS port by gRPC over TLS (grpcTLS, Kubernetes 1.37+) or TCP connect
(tcpSocket).
*/}}
{{- define "callstore.probeAction" -}}
{{- $root := .root }}
{{- if and $root.Values.tls.enabled (eq $root.Values.tls.probeMode "tcpSocket") }}
tcpSocket:
  port: {{ $root.Values.containerPorts.grpc }}
{{- else if (include "callstore.healthPort" $root) }}
grpc:
  port: {{ $root.Values.containerPorts.health }}
  service: {{ .service | quote }}
{{- else }}
grpc:
  port: {{ $root.Values.containerPorts.grpc }}
  service: {{ .service | quote }}
  {{- if $root.Values.tls.enabled }}
  mode: TLS
  {{- end }}
{{- end }}
{{- end }}

{{/*
The writable /tmp of the server's and the migration Job's pods (their root filesystem is
read-only).
*/}}
{{- define "callstore.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpSizeLimit }}
{{- end }}

{{/*
The host part of the listen addresses: an IPv6 address is bracketed ("::" → "[::]").
*/}}
{{- define "callstore.listenHost" -}}
{{- $host := .Values.config.listenAddress }}
{{- if and (contains ":" $host) (not (hasPrefix "[" $host)) }}
{{- printf "[%s]" $host }}
{{- else }}
{{- $host }}
{{- end }}
{{- end }}
