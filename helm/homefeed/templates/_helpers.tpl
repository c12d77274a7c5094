{{/* Names */}}
{{- define "homefeed.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "homefeed.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Name of one component's resources: <fullname>-<component> ("ctx" = root, "component" = suffix) */}}
{{- define "homefeed.componentName" -}}
{{- printf "%s-%s" (include "homefeed.fullname" .ctx) .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels */}}
{{- define "homefeed.selectorLabels" -}}
app.kubernetes.io/name: {{ include "homefeed.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "homefeed.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .ctx.Chart.Name .ctx.Chart.Version | replace "+" "_" }}
{{ include "homefeed.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: homefeed
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Image of a component: its own image.* values override the catalogue entry ("default" = catalogue key) */}}
{{- define "homefeed.image" -}}
{{- $catalogue := index .ctx.Values.images .default -}}
{{- $repo := default $catalogue.repository .image.repository -}}
{{- $tag := default $catalogue.tag .image.tag -}}
image: {{ printf "%s:%s" $repo $tag | quote }}
imagePullPolicy: {{ default $catalogue.pullPolicy .image.pullPolicy }}
{{- end -}}

{{/* Restricted Pod Security Standard: pod level */}}
{{- define "homefeed.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.podSecurity.runAsUser }}
runAsGroup: {{ .Values.podSecurity.runAsGroup }}
fsGroup: {{ .Values.podSecurity.fsGroup }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Restricted Pod Security Standard: container level */}}
{{- define "homefeed.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.podSecurity.runAsUser }}
runAsGroup: {{ .Values.podSecurity.runAsGroup }}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* The writable scratch volume every pod mounts at /tmp (root filesystems are read-only) */}}
{{- define "homefeed.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.podSecurity.tmpSizeLimit }}
{{- end -}}

{{- define "homefeed.tmpMount" -}}
- name: tmp
  mountPath: /tmp
{{- end -}}

{{/* Environment every homefeed container gets: HOME on the writable /tmp, endpoints of the other services */}}
{{- define "homefeed.commonEnv" -}}
- name: HOME
  value: /tmp
- name: PYTHONDONTWRITEBYTECODE
  value: "1"
- name: HOMEFEED_MILVUS_URI
  value: {{ .Values.endpoints.milvus.uri | quote }}
{{- if .Values.endpoints.milvus.existingSecret }}
- name: HOMEFEED_MILVUS_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ .Values.endpoints.milvus.existingSecret }}
      key: {{ .Values.endpoints.milvus.existingSecretKey }}
{{- end }}
- name: HOMEFEED_REDIS_HOST
  value: {{ .Values.endpoints.redis.host | quote }}
- name: HOMEFEED_REDIS_PORT
  value: {{ .Values.endpoints.redis.port | quote }}
- name: KFP_HOST
  value: {{ .Values.endpoints.kfp.host | quote }}
{{- end -}}

{{/* Object storage credentials: only references to an existing Secret */}}
{{- define "homefeed.objectStorageEnv" -}}
- name: AWS_REGION
  value: {{ .Values.endpoints.objectStorage.region | quote }}
{{- if .Values.endpoints.objectStorage.endpoint }}
- name: AWS_ENDPOINT_URL
  value: {{ .Values.endpoints.objectStorage.endpoint | quote }}
{{- end }}
{{- if .Values.endpoints.objectStorage.existingSecret }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ .Values.endpoints.objectStorage.existingSecret }}
      key: AWS_ACCESS_KEY_ID
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .Values.endpoints.objectStorage.existingSecret }}
      key: AWS_SECRET_ACCESS_KEY
{{- end }}
{{- end -}}

{{/* Scheduling: the component's own settings, plus the GPU node selector and tolerations when "gpu" is true */}}
{{- define "homefeed.scheduling" -}}
{{- $nodeSelector := deepCopy .values.nodeSelector -}}
{{- $tolerations := .values.tolerations -}}
{{- if .gpu -}}
{{- $nodeSelector = merge $nodeSelector .ctx.Values.gpu.nodeSelector -}}
{{- $tolerations = concat $tolerations .ctx.Values.gpu.tolerations -}}
{{- end -}}
{{- with $nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .ctx.Values.imagePullSecrets }}
imagePullSecrets:
  {{- range . }}
  - name: {{ . }}
  {{- end }}
{{- end }}
{{- end -}}

{{/* Resources, with the GPU count added to requests and limits when "gpus" > 0 */}}
{{- define "homefeed.resources" -}}
{{- $res := deepCopy .resources -}}
{{- if gt (int .gpus) 0 -}}
{{- $_ := set $res.requests .ctx.Values.gpu.resourceName (int .gpus) -}}
{{- $_ := set $res.limits .ctx.Values.gpu.resourceName (int .gpus) -}}
{{- end -}}
{{- toYaml $res -}}
{{- end -}}

{{/* Namespace the KFP runs are created in */}}
{{- define "homefeed.kfpNamespace" -}}
{{- default .Release.Namespace .Values.endpoints.kfp.namespace -}}
{{- end -}}
