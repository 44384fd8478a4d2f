{{- define "epp.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "epp.fullname" -}}
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

{{- define "epp.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "epp.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "epp.selectorLabels" -}}
app.kubernetes.io/name: {{ include "epp.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "epp.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "epp.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "epp.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* host:port of the Redis the cache uses, or "" */}}
{{- define "epp.redisAddress" -}}
{{- if .Values.redis.enabled -}}
{{- printf "%s-redis:%d" (include "epp.fullname" .) (int .Values.redis.port) -}}
{{- else -}}
{{- .Values.redisAddress -}}
{{- end -}}
{{- end -}}

{{/* Environment shared by epp's containers: Redis and the Secret-backed variables. */}}
{{- define "epp.env" -}}
{{- with (include "epp.redisAddress" .) }}
- name: REDIS_ADDRESS
  value: {{ . | quote }}
{{- end }}
{{- if and .Values.redis.enabled .Values.redis.passwordSecret }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef: {name: {{ .Values.redis.passwordSecret | quote }}, key: password}
{{- end }}
{{- range $name, $ref := .Values.secretEnv }}
- name: {{ $name }}
  valueFrom:
    secretKeyRef: {name: {{ $ref.secret | quote }}, key: {{ $ref.key | quote }}}
{{- end }}
- name: HOME
  value: /tmp
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The InferencePool document, in the apiVersion chosen (epp reads both shapes). */}}
{{- define "epp.inferencePool" -}}
{{- $pool := .Values.inferencePool -}}
apiVersion: {{ $pool.apiVersion }}
kind: InferencePool
metadata:
  name: {{ $pool.name }}
  namespace: {{ .Release.Namespace }}
  annotations:
    inference.networking.x-k8s.io/routing-strategy: {{ $pool.routingStrategy | quote }}
  labels:
    {{- include "epp.labels" . | nindent 4 }}
spec:
{{- if eq $pool.apiVersion "inference.networking.k8s.io/v1" }}
  selector:
    matchLabels:
      {{- toYaml $pool.selector | nindent 6 }}
  targetPorts:
    - number: {{ $pool.targetPort }}
  {{- if eq .Values.mode "picker" }}
  endpointPickerRef:
    name: {{ include "epp.fullname" . }}
    port:
      number: {{ .Values.picker.grpcPort }}
    failureMode: {{ $pool.failureMode }}
  {{- end }}
{{- else }}
  selector:
    {{- toYaml $pool.selector | nindent 4 }}
  targetPortNumber: {{ $pool.targetPort }}
  extensionRef:
    name: {{ include "epp.fullname" . }}
    portNumber: {{ .Values.picker.grpcPort }}
    failureMode: {{ $pool.failureMode }}
{{- end }}
{{- end -}}

{{- define "epp.inferenceModel" -}}
{{- $ := index . 0 -}}
{{- $m := index . 1 -}}
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceModel
metadata:
  name: {{ $m.name }}
  namespace: {{ $.Release.Namespace }}
  labels:
    {{- include "epp.labels" $ | nindent 4 }}
spec:
  modelName: {{ $m.modelName | quote }}
  {{- with $m.criticality }}
  criticality: {{ . }}
  {{- end }}
  poolRef:
    group: {{ $.Values.inferencePool.apiVersion | splitList "/" | first }}
    kind: InferencePool
    name: {{ $.Values.inferencePool.name }}
  {{- with $m.targetModels }}
  targetModels:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}

{{- define "epp.llmCache" -}}
apiVersion: epp.dev/v1alpha1
kind: LLMCache
metadata:
  name: {{ include "epp.fullname" . }}
spec:
  {{- if eq .Values.cache.mode "service" }}
  backend: Service
  serviceURL: http://{{ include "epp.fullname" . }}-cache:{{ .Values.cache.service.port }}
  {{- else }}
  backend: InProcess
  {{- end }}
  {{- with .Values.cache.spec }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end -}}

{{/* Security context and the writable /tmp every epp container gets (the root filesystem is read-only). */}}
{{- define "epp.containerSecurity" -}}
securityContext:
  {{- toYaml .Values.securityContext | nindent 2 }}
volumeMounts:
  - {name: tmp, mountPath: /tmp}
{{- end -}}
