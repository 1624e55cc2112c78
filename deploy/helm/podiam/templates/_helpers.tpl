{{/* Names: the chart's, and the prefix of every object (release-based, as Helm's starter). */}}
{{- define "podiam.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "podiam.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Labels of every object; "podiam.selector" with a component for selectors. */}}
{{- define "podiam.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "podiam.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "podiam.selector" -}}
app.kubernetes.io/name: {{ include "podiam.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "podiam.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The mode, checked once: every template branches on "podiam.split". */}}
{{- define "podiam.split" -}}
{{- if not (has .Values.mode (list "agent" "split")) }}
{{- fail (printf "mode must be agent or split, not %q" .Values.mode) }}
{{- end }}
{{- if eq .Values.mode "split" }}true{{ end }}
{{- end }}

{{- define "podiam.serverName" -}}
{{- printf "%s-server" (include "podiam.fullname" .) }}
{{- end }}

{{- define "podiam.agentName" -}}
{{- printf "%s-agent" (include "podiam.fullname" .) }}
{{- end }}

{{/* The DNAT rule's interface: hostInterface, else the cni preset. */}}
{{- define "podiam.hostInterface" -}}
{{- if .Values.hostInterface }}
{{- .Values.hostInterface }}
{{- else if hasKey .Values.cniInterfaces .Values.cni }}
{{- get .Values.cniInterfaces .Values.cni }}
{{- else }}
{{- fail (printf "cni %q has no preset in cniInterfaces (%s): set hostInterface" .Values.cni (keys .Values.cniInterfaces | sortAlpha | join ", ")) }}
{{- end }}
{{- end }}

{{/*
Arguments are collected in a list held by a dict, $c.args, which these helpers extend (a
dict is the one value a template can change in place); the caller renders it with toYaml.
"podiam.flag" (list $c FLAG VALUE): "--FLAG=VALUE" when VALUE is set, else nothing, so
podiam's own default applies. "podiam.switch" (list $c FLAG ON): "--FLAG" when ON.
*/}}
{{- define "podiam.flag" -}}
{{- $c := index . 0 }}{{ $value := index . 2 }}
{{- if and (not (kindIs "invalid" $value)) (ne (toString $value) "") }}
{{- $_ := set $c "args" (append $c.args (printf "--%s=%v" (index . 1) $value)) }}
{{- end }}
{{- end }}

{{- define "podiam.switch" -}}
{{- $c := index . 0 }}
{{- if index . 2 }}
{{- $_ := set $c "args" (append $c.args (printf "--%s" (index . 1))) }}
{{- end }}
{{- end }}

{{/*
The policy, STS and event flags: the agent's in agent mode, the server's in split mode
(the split agent refuses them: `podiam agent --server-address` holds no policy).
*/}}
{{- define "podiam.policyArgs" -}}
{{- $c := index . 0 }}{{ $root := index . 1 }}{{ $v := $root.Values }}
{{- if $v.baseRoleArn }}
{{- include "podiam.flag" (list $c "base-role-arn" $v.baseRoleArn) }}
{{- else if $v.autoDiscoverBaseArn }}
{{- if include "podiam.split" $root }}
{{- fail "split mode needs baseRoleArn: the server's pod reaches the node's metadata through the agent, which never serves the instance profile (or set autoDiscoverBaseArn=false if every annotation is a full ARN)" }}
{{- end }}
{{- include "podiam.switch" (list $c "auto-discover-base-arn" true) }}
{{- end }}
{{- include "podiam.flag" (list $c "default-role" $v.defaultRole) }}
{{- include "podiam.switch" (list $c "default-role-bypasses-restrictions" $v.defaultRoleBypassesRestrictions) }}
{{- include "podiam.flag" (list $c "host-network-role" $v.hostNetworkRole) }}
{{- include "podiam.flag" (list $c "iam-role-key" $v.iamRoleKey) }}
{{- include "podiam.flag" (list $c "iam-external-id" $v.iamExternalId) }}
{{- with $v.namespaceRestrictions }}
{{- include "podiam.switch" (list $c "namespace-restrictions" .enabled) }}
{{- include "podiam.flag" (list $c "namespace-key" .key) }}
{{- include "podiam.flag" (list $c "namespace-restriction-format" .format) }}
{{- include "podiam.flag" (list $c "namespace-permitted-key" .permittedKey) }}
{{- include "podiam.switch" (list $c "disable-strict-namespace-regexp" .disableStrictRegexp) }}
{{- end }}
{{- include "podiam.switch" (list $c "session-tags" $v.sessionTags) }}
{{- include "podiam.flag" (list $c "session-duration" $v.sessionDuration) }}
{{- include "podiam.flag" (list $c "session-refresh" $v.sessionRefresh) }}
{{- include "podiam.flag" (list $c "sts-timeout" $v.stsTimeout) }}
{{- include "podiam.flag" (list $c "iam-role-error-ttl" $v.iamRoleErrorTtl) }}
{{- include "podiam.switch" (list $c "use-regional-sts-endpoint" $v.useRegionalStsEndpoint) }}
{{- include "podiam.switch" (list $c "no-pod-events" (not $v.podEvents)) }}
{{- end }}

{{- define "podiam.logArgs" -}}
{{- $c := index . 0 }}{{ $v := (index . 1).Values }}
{{- include "podiam.flag" (list $c "log-format" $v.logFormat) }}
{{- include "podiam.flag" (list $c "log-level" $v.logLevel) }}
{{- end }}

{{- define "podiam.tlsArgs" -}}
{{- $c := index . 0 }}{{ $dir := include "podiam.tlsDir" (index . 1) }}
{{- $_ := set $c "args" (concat $c.args (list (printf "--cert=%s/tls.crt" $dir) (printf "--key=%s/tls.key" $dir) (printf "--ca=%s/ca.crt" $dir))) }}
{{- end }}

{{/* extraArgs: a list of strings, or kube2iam's map {flag: value} (true or empty: a bare --flag). */}}
{{- define "podiam.extraArgs" -}}
{{- $c := index . 0 }}{{ $extra := index . 1 }}
{{- if kindIs "map" $extra }}
{{- range $flag, $value := $extra }}
{{- if or (kindIs "invalid" $value) (eq (toString $value) "true") (eq (toString $value) "") }}
{{- $_ := set $c "args" (append $c.args (printf "--%s" $flag)) }}
{{- else }}
{{- $_ := set $c "args" (append $c.args (printf "--%s=%v" $flag $value)) }}
{{- end }}
{{- end }}
{{- else }}
{{- range $extra }}
{{- $_ := set $c "args" (append $c.args (toString .)) }}
{{- end }}
{{- end }}
{{- end }}

{{/* extraEnv: a list of EnvVars, or kube2iam's map {NAME: value}; appended to $c.env. */}}
{{- define "podiam.extraEnv" -}}
{{- $c := index . 0 }}{{ $extra := index . 1 }}
{{- if kindIs "map" $extra }}
{{- range $name, $value := $extra }}
{{- $_ := set $c "env" (append $c.env (dict "name" $name "value" (toString $value))) }}
{{- end }}
{{- else if $extra }}
{{- $_ := set $c "env" (concat $c.env $extra) }}
{{- end }}
{{- end }}

{{- define "podiam.regionEnv" -}}
{{- $c := index . 0 }}{{ $v := (index . 1).Values }}
{{- if $v.aws.region }}
{{- $_ := set $c "env" (append $c.env (dict "name" "AWS_REGION" "value" (toString $v.aws.region))) }}
{{- end }}
{{- end }}

{{- define "podiam.probes" -}}
livenessProbe:
  httpGet:
    path: /healthz
    port: metrics
  {{- toYaml .values.livenessProbe | nindent 2 }}
readinessProbe:
  httpGet:
    path: /readyz
    port: metrics
  {{- toYaml .values.readinessProbe | nindent 2 }}
{{- end }}

{{- define "podiam.tlsDir" -}}/etc/podiam/tls{{- end }}
