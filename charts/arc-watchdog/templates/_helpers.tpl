{{/*
Object names and namespaces are those of the kustomize install (manifests/):
the webhook finds its MutatingWebhookConfiguration by name
(--webhook-config-name) and tests/tests/chart.rs compares both installs
object by object. So one release per cluster, like the kustomize install.
*/}}

{{/* The image of the webhook and of the sidecar it injects. */}}
{{- define "arc-watchdog.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}
{{- end -}}

{{/* Labels of the webhook's pods, and its selectors. */}}
{{- define "arc-watchdog.selectorLabels" -}}
app.kubernetes.io/name: arc-watchdog
app.kubernetes.io/component: webhook
{{- end -}}

{{/*
metadata of one object: name, namespace (when given), labels and annotations.
Argument: dict with
  ctx          the root context
  name         the object's name
  namespace    its namespace (omit for cluster-scoped objects)
  component    app.kubernetes.io/component ("" for none)
  bare         true: no app.kubernetes.io/name label (the Namespace)
  labels       extra labels of this object (optional)
  annotations  annotations of this object (optional)
The object's own labels win over commonLabels, which never change a name,
component or part-of label.
*/}}
{{- define "arc-watchdog.metadata" -}}
{{- $ctx := .ctx -}}
{{- $own := dict "app.kubernetes.io/part-of" "arc-watchdog" -}}
{{- if not .bare }}{{ $_ := set $own "app.kubernetes.io/name" "arc-watchdog" }}{{ end -}}
{{- with .component }}{{ $_ := set $own "app.kubernetes.io/component" . }}{{ end -}}
{{- $helm := dict
  "helm.sh/chart" (printf "%s-%s" $ctx.Chart.Name $ctx.Chart.Version | replace "+" "_")
  "app.kubernetes.io/managed-by" $ctx.Release.Service
  "app.kubernetes.io/instance" $ctx.Release.Name
  "app.kubernetes.io/version" $ctx.Chart.AppVersion -}}
{{- $labels := merge (dict) $own (.labels | default dict) $helm ($ctx.Values.commonLabels | default dict) -}}
{{- $annotations := merge (dict) (.annotations | default dict) ($ctx.Values.commonAnnotations | default dict) -}}
name: {{ .name }}
{{- with .namespace }}
namespace: {{ . }}
{{- end }}
labels:
  {{- toYaml $labels | nindent 2 }}
{{- with $annotations }}
annotations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}
