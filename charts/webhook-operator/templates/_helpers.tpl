{{/* Names and labels shared by every template. */}}

{{- define "webhook-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: release name + chart name, unless the release name already contains the chart
name. Truncated to 63 characters because some fields (label values, Service names) are.
*/}}
{{- define "webhook-operator.fullname" -}}
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

{{- define "webhook-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "webhook-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "webhook-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "webhook-operator.labels" -}}
helm.sh/chart: {{ include "webhook-operator.chart" . }}
{{ include "webhook-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: webhook-operator
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "webhook-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "webhook-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "webhook-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Where the extra CA bundle is mounted; empty when none is configured. */}}
{{- define "webhook-operator.caBundlePath" -}}
{{- if or .Values.caBundle.configMap.name .Values.caBundle.secret.name -}}
/etc/webhook-operator/ca-bundle/ca-bundle.pem
{{- end }}
{{- end }}
