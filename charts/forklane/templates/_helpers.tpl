{{- define "forklane.name" -}}{{ .Release.Name }}-forklane{{- end -}}
{{- define "forklane.labels" -}}
app.kubernetes.io/name: forklane
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}
{{- define "forklane.selector" -}}
app.kubernetes.io/name: forklane
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
{{- define "forklane.postgres" -}}{{ or .Values.store.url .Values.store.existingSecret }}{{- end -}}
{{- define "forklane.routingKeySecret" -}}{{ .Values.routingKeys.existingSecret | default (printf "%s-routing-keys" (include "forklane.name" .)) }}{{- end -}}
{{- define "forklane.webhookSecret" -}}{{ include "forklane.name" . }}-webhook-tls{{- end -}}
{{- define "forklane.image" -}}{{ .Values.image.repository }}:{{ .Values.image.tag }}{{- end -}}
{{- define "forklane.sidecarImage" -}}
{{- $repo := .Values.sidecar.image.repository | default .Values.image.repository -}}
{{- $tag := .Values.sidecar.image.tag | default .Values.image.tag -}}
{{ $repo }}:{{ $tag }}
{{- end -}}
{{- define "forklane.port" -}}{{ splitList ":" . | last }}{{- end -}}
