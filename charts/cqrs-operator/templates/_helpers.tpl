{{/* Chart name. */}}
{{- define "cqrs-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: release-chart, unless overridden or the release already contains the chart name. */}}
{{- define "cqrs-operator.fullname" -}}
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

{{/* chart-version label value. */}}
{{- define "cqrs-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Standard labels. */}}
{{- define "cqrs-operator.labels" -}}
helm.sh/chart: {{ include "cqrs-operator.chart" . }}
{{ include "cqrs-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: cqrs-operator
{{- end }}

{{/* Selector labels. */}}
{{- define "cqrs-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "cqrs-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The operator's ServiceAccount. */}}
{{- define "cqrs-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "cqrs-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Operator image. */}}
{{- define "cqrs-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Reference app image (demo). */}}
{{- define "cqrs-operator.demoImage" -}}
{{- printf "%s:%s" .Values.demo.app.repository (default .Chart.AppVersion .Values.demo.app.tag) }}
{{- end }}

{{/* Prefix of the demo's objects: named after the release, so two releases do not collide. */}}
{{- define "cqrs-operator.demoPrefix" -}}
{{- include "cqrs-operator.fullname" . | trunc 40 | trimSuffix "-" }}
{{- end }}
