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

{{/* Environment every homefeed container gets: HOME on the writable /tmp, the stack file */}}
{{- define "homefeed.commonEnv" -}}
- name: HOME
  value: /tmp
- name: PYTHONDONTWRITEBYTECODE
  value: "1"
- name: HOMEFEED_STACK
  value: {{ include "homefeed.stackPath" . | quote }}
{{- end -}}

{{/* Where the stack file is mounted (the directory is the ConfigMap volume) */}}
{{- define "homefeed.stackDir" -}}/etc/homefeed{{- end -}}
{{- define "homefeed.stackPath" -}}{{ include "homefeed.stackDir" . }}/stack.yaml{{- end -}}
{{- define "homefeed.apiTokenDir" -}}/var/run/secrets/homefeed{{- end -}}
{{- define "homefeed.apiTokenPath" -}}{{ include "homefeed.apiTokenDir" . }}/api-token{{- end -}}

{{/*
The stack file: one StackConfig (components/stackconfig.py) naming every store and endpoint. The feature
server's feature_store.yaml is derived from it (homefeed.featureStoreYaml), the recommend service and the
pipeline runs read it as $HOMEFEED_STACK. Credentials are references to environment variables that the pods
get from existing Secrets (homefeed.stackSecretEnv), never values.
*/}}
{{- define "homefeed.stack" -}}
{{- $e := .Values.endpoints -}}
{{- $reg := $e.registry -}}
profile: cluster
feast:
  project: {{ .Values.featureServer.project | quote }}
  repo: {{ .Values.stack.feastRepo | quote }}
  online_store:
    type: redis
    connection_string: {{ printf "%s:%v" $e.redis.host $e.redis.port | quote }}
    {{- if $e.redis.existingSecret }}
    password: {env: REDIS_PASSWORD}
    {{- end }}
  registry:
    type: sql
    {{- if and $reg.existingSecret $reg.urlSecretKey }}
    url: {env: FEAST_REGISTRY_URL}
    {{- else }}
    path: {{ printf "postgresql+psycopg://%s@%s:%v/%s" $reg.user $reg.host $reg.port $reg.database | quote }}
    {{- if $reg.existingSecret }}
    password: {env: FEAST_REGISTRY_PASSWORD}
    {{- end }}
    {{- end }}
    cache_ttl_seconds: {{ .Values.featureServer.registryTtlSeconds }}
  offline_store: {type: file}
  serve_while_materializing: true
  {{- if .Values.featureServer.enabled }}
  server_url: {{ printf "http://%s.%s.svc:%v" (include "homefeed.componentName" (dict "ctx" . "component" "feature-server")) .Release.Namespace .Values.featureServer.service.port | quote }}
  {{- end }}
milvus:
  uri: {{ $e.milvus.uri | quote }}
  {{- if $e.milvus.existingSecret }}
  token: {env: MILVUS_TOKEN}
  {{- end }}
  alias: {{ $e.milvus.alias | quote }}
  keep_collections: {{ $e.milvus.keepCollections }}
triton:
  url: {{ printf "%s.%s.svc:%v" (include "homefeed.componentName" (dict "ctx" . "component" "triton")) .Release.Namespace .Values.triton.service.grpcPort | quote }}
  protocol: grpc
  model: {{ .Values.triton.ranker.ensemble | quote }}
  repository: {{ include "homefeed.tritonRepository" . | quote }}
embeddings:
  root: {{ .Values.stack.embeddingsRoot | quote }}
service:
  token: {file: {{ include "homefeed.apiTokenPath" . }}}
  max_k: {{ .Values.recommend.maxK }}
  max_candidates: {{ .Values.recommend.maxCandidates }}
{{- end -}}

{{/* The served Triton model repository as the recommend service sees it (preprocess.json) on the data PVC */}}
{{- define "homefeed.tritonRepository" -}}
{{- $t := .Values.triton -}}
{{- if .Values.stack.tritonRepository -}}
{{- .Values.stack.tritonRepository -}}
{{- else -}}
{{- printf "%s/%s" .Values.data.mountPath (default (printf "triton/%s" $t.ranker.backend) $t.modelRepository.pvcSubPath) -}}
{{- end -}}
{{- end -}}

{{/* Feast's feature_store.yaml for `feast serve`, derived from the stack file: the same online store and registry,
the credentials by Feast's ${VAR} expansion of the environment variables the stack file names. */}}
{{- define "homefeed.featureStoreYaml" -}}
{{- $f := (include "homefeed.stack" . | fromYaml).feast -}}
{{- $online := $f.online_store -}}
{{- $reg := $f.registry -}}
{{- $regPath := "" -}}
{{- if $reg.url -}}
{{- $regPath = printf "${%s}" $reg.url.env -}}
{{- else if $reg.password -}}
{{- $regPath = regexReplaceAll "^([a-z0-9+]+://[^@/:]+)@" $reg.path (printf "${1}:$${%s}@" $reg.password.env) -}}
{{- else -}}
{{- $regPath = $reg.path -}}
{{- end -}}
project: {{ $f.project }}
provider: local
registry:
  registry_type: sql
  path: {{ $regPath | quote }}
  {{- if not $reg.url }}
  sqlalchemy_config_kwargs:
    echo: false
    pool_pre_ping: true
  {{- end }}
  cache_ttl_seconds: {{ $reg.cache_ttl_seconds }}
  serve_features_while_materializing: {{ $f.serve_while_materializing }}
online_store:
  type: redis
  connection_string: "{{ $online.connection_string }}{{ with $online.password }},password=${{ printf "{%s}" .env }}{{ end }}"
  # one writer publishes whole daily snapshots: a re-run of a date overwrites rows with the same event timestamp
  skip_dedup: true
offline_store:
  type: {{ $f.offline_store.type }}
entity_key_serialization_version: 3
{{- end -}}

{{/* The Secrets behind the stack file's {env: NAME} references ("stores" = the store credentials a pod needs) */}}
{{- define "homefeed.stackSecretEnv" -}}
{{- $e := .ctx.Values.endpoints -}}
{{- if and (has "redis" .stores) $e.redis.existingSecret }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $e.redis.existingSecret }}
      key: {{ $e.redis.existingSecretKey }}
{{- end }}
{{- if and (has "registry" .stores) $e.registry.existingSecret }}
- name: {{ ternary "FEAST_REGISTRY_URL" "FEAST_REGISTRY_PASSWORD" (ne $e.registry.urlSecretKey "") }}
  valueFrom:
    secretKeyRef:
      name: {{ $e.registry.existingSecret }}
      key: {{ default $e.registry.existingSecretKey $e.registry.urlSecretKey }}
{{- end }}
{{- if and (has "milvus" .stores) $e.milvus.existingSecret }}
- name: MILVUS_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ $e.milvus.existingSecret }}
      key: {{ $e.milvus.existingSecretKey }}
{{- end }}
{{- end -}}

{{/* The stack file's volume and mount (read-only ConfigMap) */}}
{{- define "homefeed.stackVolume" -}}
- name: stack
  configMap:
    name: {{ include "homefeed.componentName" (dict "ctx" . "component" "stack") }}
{{- end -}}

{{- define "homefeed.stackMount" -}}
- name: stack
  mountPath: {{ include "homefeed.stackDir" . }}
  readOnly: true
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
