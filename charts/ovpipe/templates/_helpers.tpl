{{/* Labels of every object; app.kubernetes.io/part-of is what ovpipe's own objects carry too. */}}
{{- define "ovpipe.labels" -}}
app.kubernetes.io/part-of: ovpipe
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end -}}

{{- define "ovpipe.mlflow.name" -}}
{{- printf "%s-mlflow" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "ovpipe.mlflow.selector" -}}
app.kubernetes.io/name: {{ .Chart.Name }}-mlflow
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The tracking URI the tasks get: this release's server, or the external one. */}}
{{- define "ovpipe.trackingUri" -}}
{{- if .Values.mlflow.enabled -}}
{{- printf "http://%s.%s.svc:5000" (include "ovpipe.mlflow.name" .) .Release.Namespace -}}
{{- else -}}
{{- required "mlflow.externalTrackingUri is required when mlflow.enabled is false" .Values.mlflow.externalTrackingUri -}}
{{- end -}}
{{- end -}}

{{/* The object store's credentials, by reference (objectStore.secretKeys: env variable -> key). */}}
{{- define "ovpipe.s3Env" -}}
{{- range $env, $key := .Values.objectStore.secretKeys }}
- name: {{ $env }}
  valueFrom:
    secretKeyRef:
      name: {{ $.Values.objectStore.existingSecret }}
      key: {{ $key }}
{{- end }}
{{- end -}}

{{/* What every training node reads by reference: ovpipe.profile.pod_env. */}}
{{- define "ovpipe.podEnv" -}}
{{- include "ovpipe.s3Env" . }}
{{- range $key := list "MLFLOW_TRACKING_URI" "OVPIPE_S3_ENDPOINT" }}
- name: {{ $key }}
  valueFrom:
    configMapKeyRef:
      name: {{ $.Values.configMap.name }}
      key: {{ $key }}
      optional: true
{{- end }}
{{- with .Values.mlflow.credentialsSecret }}
{{- range $key := list "MLFLOW_TRACKING_USERNAME" "MLFLOW_TRACKING_PASSWORD" }}
- name: {{ $key }}
  valueFrom:
    secretKeyRef:
      name: {{ $.Values.mlflow.credentialsSecret }}
      key: {{ $key }}
      optional: true
{{- end }}
{{- end }}
{{- end -}}

{{- define "ovpipe.securityContext" -}}
runAsNonRoot: true
runAsUser: 1000
runAsGroup: 1000
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}
