{{/* Names and labels. */}}
{{- define "certctl.fullname" -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "certctl.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "certctl.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "certctl.secretName" -}}
{{- if .Values.secrets.existingSecret -}}{{ .Values.secrets.existingSecret }}{{- else -}}{{ include "certctl.fullname" . }}{{- end -}}
{{- end -}}

{{- define "certctl.databaseSecretName" -}}
{{- if .Values.database.existingSecret -}}{{ .Values.database.existingSecret }}{{- else -}}{{ include "certctl.fullname" . }}{{- end -}}
{{- end -}}

{{/* Refuse settings that cannot work, before anything is created. */}}
{{- define "certctl.validate" -}}
{{- if and (gt (int .Values.replicaCount) 1) (not (or .Values.database.existingSecret .Values.database.url)) -}}
{{- fail "replicaCount > 1 needs an external PostgreSQL: set database.existingSecret or database.url" -}}
{{- end -}}
{{- if and (gt (int .Values.replicaCount) 1) (eq .Values.keys.signerDriver "file") (not .Values.keys.existingClaim) -}}
{{- fail "replicaCount > 1 with the file signer needs keys.existingClaim (a ReadWriteMany claim shared by every replica)" -}}
{{- end -}}
{{- if not (or .Values.secrets.existingSecret .Values.secrets.encryptionKey) -}}
{{- fail "set secrets.existingSecret or secrets.encryptionKey (CERTCTL_CONFIG_ENCRYPTION_KEY, the same on every replica)" -}}
{{- end -}}
{{- end -}}
