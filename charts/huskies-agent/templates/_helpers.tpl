{{/* Chart name, overridable. */}}
{{- define "huskies-agent.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name prefix of every resource: the release name, plus the chart name when the
release name does not already contain it. Kept to 52 characters so suffixes such as
"-metrics" and "-build" still make valid names.
*/}}
{{- define "huskies-agent.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The operator's `instance` setting: it names the leader Lease (<instance>-leader) and the
identity ConfigMap (<instance>-identity) and labels every Job it creates. The Role grants
get/update on exactly those names, so both come from this one helper.
*/}}
{{- define "huskies-agent.instance" -}}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- end }}

{{- define "huskies-agent.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object the chart renders. */}}
{{- define "huskies-agent.labels" -}}
helm.sh/chart: {{ include "huskies-agent.chart" . }}
app.kubernetes.io/name: {{ include "huskies-agent.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: huskies-agent
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Selector of the operator pods. The component label keeps it disjoint from the build pods,
which carry the same name/instance labels with component=story-build.
*/}}
{{- define "huskies-agent.selectorLabels" -}}
app.kubernetes.io/name: {{ include "huskies-agent.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "huskies-agent.operatorLabels" -}}
{{ include "huskies-agent.labels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "huskies-agent.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "huskies-agent.fullname" .) .Values.serviceAccount.name }}
{{- else if .Values.serviceAccount.name }}
{{- .Values.serviceAccount.name }}
{{- else }}
{{- fail "serviceAccount.name is required when serviceAccount.create=false: name the existing ServiceAccount the operator runs as (the chart binds its Role to it; it will not bind the namespace's default ServiceAccount)" }}
{{- end }}
{{- end }}

{{/*
Pull secrets as LocalObjectReferences, from either form users write:
`- regcred` or `- name: regcred`.
*/}}
{{- define "huskies-agent.pullSecretNames" -}}
{{- $names := list }}
{{- range . }}
{{- if kindIs "map" . }}{{ $names = append $names .name }}{{ else }}{{ $names = append $names . }}{{ end }}
{{- end }}
{{- toJson $names }}
{{- end }}

{{- define "huskies-agent.buildServiceAccountName" -}}
{{- if .Values.build.serviceAccount.create }}
{{- default (printf "%s-build" (include "huskies-agent.fullname" .)) .Values.build.serviceAccount.name }}
{{- else }}
{{- .Values.build.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* repository[:tag][@digest] with the tag defaulting to the chart's appVersion. */}}
{{- define "huskies-agent.imageRef" -}}
{{- $img := index . 0 }}
{{- $root := index . 1 }}
{{- if $img.digest }}
{{- printf "%s@%s" $img.repository $img.digest }}
{{- else }}
{{- printf "%s:%s" $img.repository (default $root.Chart.AppVersion $img.tag) }}
{{- end }}
{{- end }}

{{- define "huskies-agent.image" -}}
{{- include "huskies-agent.imageRef" (list .Values.image .) }}
{{- end }}

{{- define "huskies-agent.runnerImage" -}}
{{- include "huskies-agent.imageRef" (list .Values.build.image .) }}
{{- end }}

{{/*
PriorityClass of the warm-slot placeholders: the one given, else the one the chart creates
(cluster-scoped, so the name carries the namespace), else none (warm slots off).
*/}}
{{- define "huskies-agent.warmPriorityClassName" -}}
{{- $w := .Values.build.warm }}
{{- if $w.priorityClass.name }}
{{- $w.priorityClass.name }}
{{- else if and (gt (int $w.slots) 0) $w.priorityClass.create }}
{{- printf "%s-%s-warm" .Release.Namespace (include "huskies-agent.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/*
The operator settings file (huskies_agent.settings.Settings), values mapped to the
snake_case keys settings.py defines. namespace and replica_id come from POD_NAMESPACE and
POD_NAME; the token from HUSKIES_RENDEZVOUS_TOKEN_FILE.
*/}}
{{- define "huskies-agent.settings" -}}
{{- $b := .Values.build }}
{{- $build := dict
  "image" (include "huskies-agent.runnerImage" .)
  "image_pull_policy" $b.image.pullPolicy
  "image_pull_secrets" (include "huskies-agent.pullSecretNames" ($b.imagePullSecrets | default list) | fromJsonArray)
  "service_account" (include "huskies-agent.buildServiceAccountName" .)
  "repo_url" $b.repoUrl
  "base_branch" $b.baseBranch
  "git_secret" $b.git.existingSecret
  "anthropic_secret" $b.anthropic.existingSecret
  "requests" ($b.resources.requests | default dict)
  "limits" ($b.resources.limits | default dict)
  "node_selector" ($b.nodeSelector | default dict)
  "tolerations" ($b.tolerations | default list)
  "affinity" ($b.affinity | default dict)
  "priority_class_name" $b.priorityClassName
  "active_deadline_seconds" $b.activeDeadlineSeconds
  "checkpoint_interval_seconds" $b.checkpointIntervalSeconds
  "extra_env" ($b.extraEnv | default list)
  "extra_volumes" ($b.extraVolumes | default list)
  "extra_volume_mounts" ($b.extraVolumeMounts | default list)
  "pod_annotations" ($b.podAnnotations | default dict)
  "pod_labels" ($b.podLabels | default dict)
  "model" $b.model
  "max_turns" $b.maxTurns
  "max_budget_usd" $b.maxBudgetUsd
  "agent_timeout_seconds" $b.agentTimeoutSeconds
  "protect_from_consolidation" $b.protectFromConsolidation
  "agent_uid" $b.agentUid
  "git_uid" $b.gitUid
  "container_security_context" ($b.containerSecurityContext | default dict)
  "pod_security_context" ($b.podSecurityContext | default dict)
  "pod_patch" ($b.podPatch | default dict)
  "pod_json_patch" ($b.podJsonPatch | default list)
  "git_token_key" $b.git.tokenKey
  "git_ssh_private_key_key" $b.git.sshPrivateKeyKey
  "git_known_hosts_key" $b.git.knownHostsKey
  "anthropic_secret_key" $b.anthropic.existingSecretKey
  "warm_slots" $b.warm.slots
  "warm_priority_class_name" (include "huskies-agent.warmPriorityClassName" .)
  "warm_image" $b.warm.image
  "warm_command" $b.warm.command
  "can_scale" $b.canScale
}}
{{- $settings := dict
  "rendezvous_url" .Values.rendezvous.url
  "cluster_name" .Values.clusterName
  "instance" (include "huskies-agent.instance" .)
  "node_id" .Values.nodeId
  "advertise_address" .Values.advertiseAddress
  "lease_duration_seconds" .Values.lease.durationSeconds
  "lease_renew_deadline_seconds" .Values.lease.renewDeadlineSeconds
  "lease_retry_period_seconds" .Values.lease.retryPeriodSeconds
  "presence_interval_seconds" .Values.presenceIntervalSeconds
  "claim_timeout_seconds" .Values.claimTimeoutSeconds
  "max_concurrent" .Values.maxConcurrent
  "daily_budget_usd" .Values.dailyBudgetUsd
  "max_retries" .Values.maxRetries
  "spread_delay_seconds" .Values.spreadDelaySeconds
  "agent_auth_pause_seconds" .Values.agentAuthPauseSeconds
  "resync_interval_seconds" .Values.resyncIntervalSeconds
  "confirm_timeout_seconds" .Values.confirmTimeoutSeconds
  "claim_settle_seconds" .Values.claimSettleSeconds
  "finished_ttl_seconds" .Values.finishedTtlSeconds
  "no_pod_timeout_seconds" .Values.noPodTimeoutSeconds
  "image_pull_timeout_seconds" .Values.imagePullTimeoutSeconds
  "pending_timeout_seconds" .Values.pendingTimeoutSeconds
  "pending_scale_up_timeout_seconds" .Values.pendingScaleUpTimeoutSeconds
  "metrics_port" .Values.metrics.port
  "metrics_host" .Values.metrics.host
  "ws_max_size" .Values.websocket.maxSizeBytes
  "reconnect_min_seconds" .Values.websocket.reconnectMinSeconds
  "reconnect_max_seconds" .Values.websocket.reconnectMaxSeconds
  "document_max_depth" .Values.document.maxDepth
  "document_max_string_length" .Values.document.maxStringLength
  "document_max_entry_bytes" .Values.document.maxEntryBytes
  "build" $build
}}
{{- $extra := deepCopy (.Values.extraConfig | default dict) }}
{{- toYaml (mergeOverwrite $settings $extra) }}
{{- end }}

{{/* Port of the rendezvous URL: explicit, else 443 for wss and 80 for ws. */}}
{{- define "huskies-agent.rendezvousPort" -}}
{{- $u := urlParse .Values.rendezvous.url }}
{{- $port := regexFind ":[0-9]+$" $u.host | trimPrefix ":" }}
{{- if $port }}{{ $port }}{{ else if eq $u.scheme "wss" }}443{{ else }}80{{ end }}
{{- end }}

{{/* Cross-field checks the JSON schema cannot express (the operator repeats them at start). */}}
{{- define "huskies-agent.validate" -}}
{{- if not .Values.rendezvous.url }}
{{- fail "rendezvous.url is required: the rendezvous WebSocket URL, e.g. --set rendezvous.url=wss://rendezvous.example.com/crdt-sync" }}
{{- end }}
{{- if ge (float64 .Values.lease.renewDeadlineSeconds) (float64 .Values.lease.durationSeconds) }}
{{- fail (printf "lease.renewDeadlineSeconds (%v) must be shorter than lease.durationSeconds (%v)" .Values.lease.renewDeadlineSeconds .Values.lease.durationSeconds) }}
{{- end }}
{{- if le (float64 .Values.lease.renewDeadlineSeconds) (mulf 1.2 (float64 .Values.lease.retryPeriodSeconds)) }}
{{- fail (printf "lease.renewDeadlineSeconds (%v) must be longer than 1.2 x lease.retryPeriodSeconds (%v)" .Values.lease.renewDeadlineSeconds .Values.lease.retryPeriodSeconds) }}
{{- end }}
{{- if and .Values.metrics.serviceMonitor.enabled .Values.metrics.podMonitor.enabled }}
{{- fail "metrics.serviceMonitor.enabled and metrics.podMonitor.enabled are both true: every series would be scraped twice; enable one of them" }}
{{- end }}
{{- if .Values.rbac.clusterWide }}
{{- fail "rbac.clusterWide was removed: the operator watches only its release namespace and needs no cluster-wide rights; unset it" }}
{{- end }}
{{- if eq (int .Values.build.agentUid) (int .Values.build.gitUid) }}
{{- fail (printf "build.agentUid and build.gitUid are both %v: the agent must run as another uid than the containers holding the git credentials" .Values.build.agentUid) }}
{{- end }}
{{- if and (gt (int .Values.build.warm.slots) 0) (not (include "huskies-agent.warmPriorityClassName" .)) }}
{{- fail "build.warm.slots needs a PriorityClass for the placeholders: keep build.warm.priorityClass.create true or name one in build.warm.priorityClass.name" }}
{{- end }}
{{- if and .Values.build.warm.priorityClass.name (eq .Values.build.warm.priorityClass.name .Values.build.priorityClassName) }}
{{- fail "build.warm.priorityClass.name must differ from build.priorityClassName, or build pods could never preempt a placeholder" }}
{{- end }}
{{- if gt (float64 .Values.websocket.reconnectMinSeconds) (float64 .Values.websocket.reconnectMaxSeconds) }}
{{- fail (printf "websocket.reconnectMinSeconds (%v) must not exceed websocket.reconnectMaxSeconds (%v)" .Values.websocket.reconnectMinSeconds .Values.websocket.reconnectMaxSeconds) }}
{{- end }}
{{- end }}
