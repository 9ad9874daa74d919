{{/* Chart name, truncated to the 63 characters of a DNS label. */}}
{{- define "mlinfra-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name of the release's objects: fullnameOverride, else the release name when it already contains the
chart name, else "<release>-<chart>".
*/}}
{{- define "mlinfra-operator.fullname" -}}
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

{{/* "name-version" for the helm.sh/chart label. */}}
{{- define "mlinfra-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels that select the operator pod; never change them (Deployment selectors are immutable). */}}
{{- define "mlinfra-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mlinfra-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Standard labels of every object the chart renders. */}}
{{- define "mlinfra-operator.labels" -}}
helm.sh/chart: {{ include "mlinfra-operator.chart" . }}
{{ include "mlinfra-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: mlinfra
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Name of the ServiceAccount the operator runs as. */}}
{{- define "mlinfra-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "mlinfra-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The operator image: repository:tag (tag defaults to the chart's appVersion), plus @digest when set. */}}
{{- define "mlinfra-operator.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s:%s@%s" .Values.image.repository $tag .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/* MLINFRA_ENGINE_IMAGES: the engineImages map as "engine=image" pairs, sorted by engine. */}}
{{- define "mlinfra-operator.engineImages" -}}
{{- $pairs := list -}}
{{- range $engine, $image := .Values.engineImages -}}
{{- $pairs = append $pairs (printf "%s=%s" $engine $image) -}}
{{- end -}}
{{- join "," $pairs -}}
{{- end -}}
