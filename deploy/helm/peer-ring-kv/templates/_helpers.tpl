{{/* Full name of the release's objects. */}}
{{- define "peer-ring-kv.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* The headless Service whose EndpointSlices discovery watches. */}}
{{- define "peer-ring-kv.headless" -}}
{{- printf "%s-peers" (include "peer-ring-kv.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "peer-ring-kv.serviceAccount" -}}
{{- default (include "peer-ring-kv.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "peer-ring-kv.secret" -}}
{{- default (include "peer-ring-kv.fullname" .) .Values.auth.existingSecret -}}
{{- end -}}

{{- define "peer-ring-kv.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "peer-ring-kv.labels" -}}
{{ include "peer-ring-kv.selectorLabels" . }}
app.kubernetes.io/part-of: peer-ring
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Refuse settings that cannot work, with the reason. */}}
{{- define "peer-ring-kv.validate" -}}
{{- $c := .Values.cluster -}}
{{- if gt (int $c.quorum) (int $c.replication) -}}
{{- fail (printf "cluster.quorum (%v) cannot exceed cluster.replication (%v)" $c.quorum $c.replication) -}}
{{- end -}}
{{- $shutdown := add (int .Values.preStopSeconds) (int $c.leaveDeadline) (int .Values.shutdownMarginSeconds) -}}
{{- if gt $shutdown (int .Values.terminationGracePeriodSeconds) -}}
{{- fail (printf "preStopSeconds + cluster.leaveDeadline + shutdownMarginSeconds = %d s exceeds terminationGracePeriodSeconds (%v s): the kubelet would kill the node before its handoff ends" $shutdown .Values.terminationGracePeriodSeconds) -}}
{{- end -}}
{{- end -}}
