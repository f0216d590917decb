{{/* Chart name. */}}
{{- define "atlas-access-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: the release name, plus the chart name unless the release name contains it. */}}
{{- define "atlas-access-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Labels that select the operator's pods; never change them (Deployment selectors are immutable). */}}
{{- define "atlas-access-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "atlas-access-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Chart name and version, as the helm.sh/chart label wants them. */}}
{{- define "atlas-access-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object: Helm's standard set. */}}
{{- define "atlas-access-operator.labels" -}}
helm.sh/chart: {{ include "atlas-access-operator.chart" . }}
{{ include "atlas-access-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: controller
app.kubernetes.io/part-of: atlas-access-operator
{{- end }}

{{- define "atlas-access-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "atlas-access-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "atlas-access-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* "true" when leader election is on: asked for, or implied by more than one replica. */}}
{{- define "atlas-access-operator.leaderElection" -}}
{{- if or .Values.leaderElection.enabled (gt (int .Values.replicas) 1) }}true{{ end }}
{{- end }}

{{/* Namespace of the default credentials Secret. */}}
{{- define "atlas-access-operator.credentialsNamespace" -}}
{{- default .Release.Namespace .Values.credentials.secretNamespace }}
{{- end }}

{{/*
The rules for the calls the controller makes on the objects it watches. Kept equal to
REQUIRED_RULES in src/controller/rbac.rs (the scope Always) by tests/deploy.rs.
*/}}
{{- define "atlas-access-operator.watchRules" -}}
- apiGroups: ["atlas-access.dev"]
  resources: ["atlasorgusers", "atlasteammemberships"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["atlas-access.dev"]
  resources: ["atlasorgusers/status", "atlasteammemberships/status"]
  verbs: ["patch"]
- apiGroups: ["atlas-access.dev"]
  resources: ["atlasorgusers/finalizers", "atlasteammemberships/finalizers"]
  verbs: ["update"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}

{{/*
Cluster-scoped reads and writes (REQUIRED_RULES, scope Cluster): AtlasOrganizations and the
labels of namespaces, whatever the operator watches.
*/}}
{{- define "atlas-access-operator.clusterRules" -}}
- apiGroups: ["atlas-access.dev"]
  resources: ["atlasorganizations"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["atlas-access.dev"]
  resources: ["atlasorganizations/status"]
  verbs: ["patch"]
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["get"]
{{- end }}

{{/* The ClusterRole a tenant namespace binds so the operator may read its own credentials Secret. */}}
{{- define "atlas-access-operator.tenantSecretsRole" -}}
{{- printf "%s-tenant-secrets" (include "atlas-access-operator.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Namespaces the chart grants that read in: tenancy.tenantNamespaces, plus a watched namespace. */}}
{{- define "atlas-access-operator.tenantNamespaces" -}}
{{- $namespaces := list }}
{{- range .Values.tenancy.tenantNamespaces }}{{ $namespaces = append $namespaces . }}{{ end }}
{{- with .Values.watch.namespace }}{{ $namespaces = append $namespaces . }}{{ end }}
{{- $namespaces | uniq | sortAlpha | join "," }}
{{- end }}
