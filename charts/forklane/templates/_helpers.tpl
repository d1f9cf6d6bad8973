{{- define "forklane.name" -}}{{ .Release.Name }}-forklane{{- end -}}
{{- define "forklane.labels" -}}
app.kubernetes.io/name: forklane
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}
{{- define "forklane.selector" -}}
app.kubernetes.io/name: forklane
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
