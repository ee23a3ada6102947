{{/* Names. */}}
{{- define "workpool.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "workpool.fullname" -}}
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

{{/* A component name: <fullname>-<suffix>, at most 63 characters. */}}
{{- define "workpool.component" -}}
{{- $root := index . 0 -}}
{{- printf "%s-%s" (include "workpool.fullname" $root | trunc (int (sub 62 (len (index . 1))))) (index . 1) | trimSuffix "-" -}}
{{- end -}}

{{- define "workpool.operatorName" -}}{{ include "workpool.component" (list . "operator") }}{{- end -}}
{{- define "workpool.redisName" -}}{{ include "workpool.component" (list . "redis") }}{{- end -}}
{{- define "workpool.testName" -}}{{ include "workpool.component" (list . "test") }}{{- end -}}

{{- define "workpool.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "workpool.operatorName" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Labels. */}}
{{- define "workpool.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "workpool.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: workpool
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of one component: (list $ "operator"). */}}
{{- define "workpool.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "workpool.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "workpool.componentLabels" -}}
{{ include "workpool.labels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/* An image reference from {repository, tag, digest}: (list $ .Values.operator.image). */}}
{{- define "workpool.image" -}}
{{- $root := index . 0 -}}
{{- $img := index . 1 -}}
{{- if $img.digest -}}
{{- printf "%s@%s" $img.repository $img.digest -}}
{{- else -}}
{{- printf "%s:%s" $img.repository (default $root.Chart.AppVersion $img.tag) -}}
{{- end -}}
{{- end -}}

{{/* Leader election is on with more than one replica, or when asked for. */}}
{{- define "workpool.leaderElection" -}}
{{- if or .Values.operator.leaderElection.enabled (gt (int .Values.operator.replicas) 1) -}}true{{- end -}}
{{- end -}}

{{/* The bundled Redis: Service DNS name and port. */}}
{{- define "workpool.redisHost" -}}
{{- printf "%s.%s.svc" (include "workpool.redisName" .) .Release.Namespace -}}
{{- end -}}

{{/*
The bundled Redis password: values, else the one already in the Secret (so upgrades
keep it), else a new random one. lookup returns nothing in `helm template` and
dry runs, so those show a fresh random password.
*/}}
{{- define "workpool.redisPassword" -}}
{{- if .Values.redis.auth.password -}}
{{- .Values.redis.auth.password -}}
{{- else -}}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (include "workpool.redisName" .) -}}
{{- if and $existing $existing.data (index $existing.data "redis-password") -}}
{{- index $existing.data "redis-password" | b64dec -}}
{{- else -}}
{{- randAlphaNum 32 -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
Where the Redis URL (password included) lives: {name, key} of a Secret in the release
namespace, or "" when only a plain URL is known (externalRedis.url).
*/}}
{{- define "workpool.redisUrlSecretName" -}}
{{- if .Values.redis.enabled -}}
{{- include "workpool.redisName" . -}}
{{- else if .Values.externalRedis.existingSecret.name -}}
{{- .Values.externalRedis.existingSecret.name -}}
{{- end -}}
{{- end -}}

{{- define "workpool.redisUrlSecretKey" -}}
{{- if .Values.redis.enabled -}}
redis-url
{{- else if .Values.externalRedis.existingSecret.name -}}
{{- .Values.externalRedis.existingSecret.key -}}
{{- end -}}
{{- end -}}

{{/* Fails with a clear message when no Redis is configured. */}}
{{- define "workpool.validate" -}}
{{- if and (not .Values.redis.enabled) (not .Values.externalRedis.url) (not .Values.externalRedis.existingSecret.name) (.Values.tests.enabled) -}}
{{- fail "redis.enabled is false: set externalRedis.url or externalRedis.existingSecret.{name,key} (the helm test needs a Redis), or tests.enabled=false" -}}
{{- end -}}
{{- if and .Values.tests.enabled .Values.operator.watchNamespace (ne .Values.operator.watchNamespace .Release.Namespace) -}}
{{- fail (printf "operator.watchNamespace is %q, not the release namespace %q: the helm test's WorkPool would never be reconciled; set tests.enabled=false or install the release into %q" .Values.operator.watchNamespace .Release.Namespace .Values.operator.watchNamespace) -}}
{{- end -}}
{{- if and .Values.externalRedis.url .Values.externalRedis.existingSecret.name -}}
{{- fail "externalRedis: set url or existingSecret, not both" -}}
{{- end -}}
{{- if and .Values.redis.enabled .Values.redis.ha.enabled (gt (int .Values.redis.ha.sentinel.quorum) (int .Values.redis.ha.sentinel.replicas)) -}}
{{- fail (printf "redis.ha.sentinel.quorum (%v) must not exceed redis.ha.sentinel.replicas (%v): no failover could ever start" .Values.redis.ha.sentinel.quorum .Values.redis.ha.sentinel.replicas) -}}
{{- end -}}
{{- end -}}

{{/* The operator's rules on WorkPools, pods, Secrets and Events (rbac.yaml). */}}
{{- define "workpool.operatorRules" }}
- apiGroups: [workpool.dev]
  resources: [workpools]
  verbs: [get, list, watch, patch, update]
- apiGroups: [workpool.dev]
  resources: [workpools/status]
  verbs: [get, patch, update]
- apiGroups: [workpool.dev]
  resources: [workpools/finalizers]
  verbs: [update]
# The operator owns worker pods directly (it chooses which one leaves on scale-in).
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch, create, delete, patch]
# spec.queue.redis.urlSecretRef: read the Secret a WorkPool names. secretAccess=watch adds
# list and watch, so that a rotated Secret is followed at once; RBAC cannot limit them to
# metadata, so they let the operator read every Secret in its scope (docs/operations.md).
- apiGroups: [""]
  resources: [secrets]
  {{- if eq .Values.operator.secretAccess "watch" }}
  verbs: [get, list, watch]
  {{- else }}
  verbs: [get]
  {{- end }}
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create, patch]
{{- end }}

{{/*
Spread a component's pods over nodes: (list $ "redis" "soft"|"hard") -> a podAntiAffinity,
preferred (soft) or required (hard), by kubernetes.io/hostname.
*/}}
{{- define "workpool.spread" -}}
{{- $root := index . 0 -}}
{{- $component := index . 1 -}}
podAntiAffinity:
{{- if eq (index . 2) "hard" }}
  requiredDuringSchedulingIgnoredDuringExecution:
    - topologyKey: kubernetes.io/hostname
      labelSelector:
        matchLabels:
          {{- include "workpool.selectorLabels" (list $root $component) | nindent 10 }}
{{- else }}
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- include "workpool.selectorLabels" (list $root $component) | nindent 12 }}
{{- end }}
{{- end -}}
