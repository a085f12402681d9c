{{/*
Names. The fullname rule is 2.1.x's (release-chart, no shortcut when the release name
already contains the chart name): the Vector DaemonSet and the Secret keep their 2.1.x
names, so `helm upgrade` from 2.1.x updates them in place.
*/}}
{{- define "kg-rca-agent.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kg-rca-agent.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "kg-rca-agent.labels" -}}
app.kubernetes.io/name: {{ include "kg-rca-agent.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
client-id: {{ .Values.client.id | quote }}
{{- end }}

{{/* Immutable selector labels: exactly 2.1.x's (plus `component`, set by each workload). */}}
{{- define "kg-rca-agent.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kg-rca-agent.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "kg-rca-agent.serviceAccountName" -}}
{{- default "kg-rca-agent" .Values.serviceAccount.name }}
{{- end }}

{{- define "kg-rca-agent.vectorServiceAccountName" -}}
{{- $vsa := default dict .Values.serviceAccount.vector }}
{{- default (printf "%s-vector" (include "kg-rca-agent.fullname" .)) $vsa.name }}
{{- end }}

{{/*
Render-time checks, with messages that say what to fix. Included by every template that
is always rendered, so `helm template` and `helm install` both stop on them.
*/}}
{{- define "kg-rca-agent.validate" -}}
{{- $id := toString (default "" .Values.client.id) }}
{{- if eq $id "" }}
{{- fail "client.id is required: set it to your tenant id, a lowercase DNS label (a-z, 0-9, '-', at most 63, starting and ending with a letter or digit), e.g. --set client.id=acme-prod" }}
{{- end }}
{{- if not (regexMatch "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$" $id) }}
{{- fail (printf "client.id %q is not a lowercase DNS label (a-z, 0-9, '-', at most 63, starting and ending with a letter or digit)" $id) }}
{{- end }}
{{- if eq (toString (default "" .Values.client.kafka.brokers) | trim) "" }}
{{- fail "client.kafka.brokers is required: the Kafka bootstrap servers, e.g. --set client.kafka.brokers=kafka.example.com:9092" }}
{{- end }}
{{- $sasl := .Values.client.kafka.sasl }}
{{- if $sasl.enabled }}
{{- if not (has (toString $sasl.mechanism) (list "PLAIN" "SCRAM-SHA-256" "SCRAM-SHA-512")) }}
{{- fail (printf "client.kafka.sasl.mechanism %q is not one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512" (toString $sasl.mechanism)) }}
{{- end }}
{{- if and (not $sasl.existingSecret) (not $sasl.password) }}
{{- fail "client.kafka.sasl.enabled is true but neither client.kafka.sasl.password nor client.kafka.sasl.existingSecret is set" }}
{{- end }}
{{- end }}
{{- $sp := toString (default "" .Values.client.kafka.securityProtocol) }}
{{- if and $sp (not (has $sp (list "plaintext" "ssl" "sasl_plaintext" "sasl_ssl"))) }}
{{- fail (printf "client.kafka.securityProtocol %q is not one of plaintext, ssl, sasl_plaintext, sasl_ssl (or empty, to derive it)" $sp) }}
{{- end }}
{{- $tls := default dict .Values.client.kafka.tls }}
{{- if and $tls.caSecret $tls.caConfigMap }}
{{- fail "client.kafka.tls.caSecret and client.kafka.tls.caConfigMap are both set: choose one" }}
{{- end }}
{{- $interval := toString (default "" .Values.heartbeat.interval) }}
{{- if not (regexMatch "^[0-9]+ *[a-zA-Z]+( *[0-9]+ *[a-zA-Z]+)*$" $interval) }}
{{- fail (printf "heartbeat.interval %q is not a duration such as \"30s\", \"1m\" or \"1m 30s\"" $interval) }}
{{- end }}
{{- end }}

{{- define "kg-rca-agent.clusterName" -}}
{{- default .Values.client.id .Values.cluster.name }}
{{- end }}

{{- define "kg-rca-agent.agentImage" -}}
{{- $img := .Values.agent.image }}
{{- if $img.digest }}
{{- printf "%s@%s" $img.repository $img.digest }}
{{- else }}
{{- printf "%s:%s" $img.repository (default .Chart.AppVersion $img.tag | toString) }}
{{- end }}
{{- end }}

{{/* librdkafka's security.protocol: the explicit value, or derived from SASL and TLS. */}}
{{- define "kg-rca-agent.securityProtocol" -}}
{{- $tls := default dict .Values.client.kafka.tls }}
{{- $sasl := .Values.client.kafka.sasl.enabled }}
{{- if .Values.client.kafka.securityProtocol }}
{{- .Values.client.kafka.securityProtocol }}
{{- else if and $sasl $tls.enabled }}sasl_ssl
{{- else if $sasl }}sasl_plaintext
{{- else if $tls.enabled }}ssl
{{- else }}plaintext
{{- end }}
{{- end }}

{{- define "kg-rca-agent.saslSecretName" -}}
{{- default (printf "%s-secrets" (include "kg-rca-agent.fullname" .)) .Values.client.kafka.sasl.existingSecret }}
{{- end }}

{{- define "kg-rca-agent.saslUsernameKey" -}}
{{- if .Values.client.kafka.sasl.existingSecret }}{{ default "kafka-sasl-username" .Values.client.kafka.sasl.existingSecretUsernameKey }}{{ else }}kafka-sasl-username{{ end }}
{{- end }}

{{- define "kg-rca-agent.saslPasswordKey" -}}
{{- if .Values.client.kafka.sasl.existingSecret }}{{ default "kafka-sasl-password" .Values.client.kafka.sasl.existingSecretPasswordKey }}{{ else }}kafka-sasl-password{{ end }}
{{- end }}

{{/* The CA file mount, when client.kafka.tls names a Secret or a ConfigMap. */}}
{{- define "kg-rca-agent.caDir" -}}/etc/kg-rca/kafka-ca{{- end }}

{{- define "kg-rca-agent.hasCA" -}}
{{- $tls := default dict .Values.client.kafka.tls }}
{{- if and $tls.enabled (or $tls.caSecret $tls.caConfigMap) }}true{{ end }}
{{- end }}

{{- define "kg-rca-agent.caFile" -}}
{{- $tls := default dict .Values.client.kafka.tls }}
{{- printf "%s/%s" (include "kg-rca-agent.caDir" .) (default "ca.crt" $tls.caKey) }}
{{- end }}

{{- define "kg-rca-agent.caVolume" -}}
{{- $tls := default dict .Values.client.kafka.tls }}
- name: kafka-ca
  {{- if $tls.caSecret }}
  secret:
    secretName: {{ $tls.caSecret }}
    items:
      - key: {{ default "ca.crt" $tls.caKey }}
        path: {{ default "ca.crt" $tls.caKey }}
  {{- else }}
  configMap:
    name: {{ $tls.caConfigMap }}
    items:
      - key: {{ default "ca.crt" $tls.caKey }}
        path: {{ default "ca.crt" $tls.caKey }}
  {{- end }}
{{- end }}

{{- define "kg-rca-agent.caVolumeMount" -}}
- name: kafka-ca
  mountPath: {{ include "kg-rca-agent.caDir" . }}
  readOnly: true
{{- end }}

{{/* KAFKA_EXTRA_CONFIG: a map rendered key=value,... (sorted), or a string verbatim. */}}
{{- define "kg-rca-agent.extraConfig" -}}
{{- $x := .Values.client.kafka.extraConfig }}
{{- if kindIs "map" $x }}
{{- $pairs := list }}
{{- range $k := keys $x | sortAlpha }}
{{- $pairs = append $pairs (printf "%s=%v" $k (index $x $k)) }}
{{- end }}
{{- join "," $pairs }}
{{- else if $x }}
{{- toString $x }}
{{- end }}
{{- end }}

{{/* SASL credentials as environment variables, always from a Secret. */}}
{{- define "kg-rca-agent.saslEnv" -}}
{{- if .Values.client.kafka.sasl.enabled }}
- name: KAFKA_SASL_USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ include "kg-rca-agent.saslSecretName" . }}
      key: {{ include "kg-rca-agent.saslUsernameKey" . }}
- name: KAFKA_SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "kg-rca-agent.saslSecretName" . }}
      key: {{ include "kg-rca-agent.saslPasswordKey" . }}
{{- end }}
{{- end }}

{{/* The Kafka settings shared by the agent and its deregister hook (no secrets here). */}}
{{- define "kg-rca-agent.kafkaEnv" -}}
- name: CLIENT_ID
  value: {{ .Values.client.id | quote }}
- name: CLUSTER_NAME
  value: {{ include "kg-rca-agent.clusterName" . | quote }}
- name: CHART_VERSION
  value: {{ .Chart.Version | quote }}
{{- with .Values.client.pipelines }}
- name: PIPELINES
  value: {{ join "," . | quote }}
{{- end }}
- name: KAFKA_BOOTSTRAP_SERVERS
  value: {{ .Values.client.kafka.brokers | toString | trim | quote }}
- name: KAFKA_SECURITY_PROTOCOL
  value: {{ include "kg-rca-agent.securityProtocol" . | quote }}
{{- if .Values.client.kafka.sasl.enabled }}
- name: KAFKA_SASL_MECHANISM
  value: {{ .Values.client.kafka.sasl.mechanism | quote }}
{{- end }}
{{- if include "kg-rca-agent.hasCA" . }}
- name: KAFKA_SSL_CA_LOCATION
  value: {{ include "kg-rca-agent.caFile" . | quote }}
{{- end }}
{{- with include "kg-rca-agent.extraConfig" . }}
- name: KAFKA_EXTRA_CONFIG
  value: {{ . | quote }}
{{- end }}
- name: TOPIC_REGISTRY
  value: {{ default "cluster.registry" .Values.agent.registryTopic | quote }}
- name: LOG_FORMAT
  value: "json"
{{- end }}

{{/* Everything the running agent reads besides the Kafka settings and the secrets. */}}
{{- define "kg-rca-agent.agentEnv" -}}
{{ include "kg-rca-agent.kafkaEnv" . }}
- name: HEARTBEAT_ENABLED
  value: {{ ternary "true" "false" (ne (toString .Values.heartbeat.enabled) "false") | quote }}
- name: HEARTBEAT_INTERVAL
  value: {{ .Values.heartbeat.interval | toString | quote }}
- name: WATCH_EVENTS
  value: {{ ternary "true" "false" (ne (toString .Values.eventExporter.enabled) "false") | quote }}
- name: WATCH_RESOURCES
  value: {{ ternary "true" "false" (ne (toString .Values.stateWatcher.enabled) "false") | quote }}
- name: WATCH_NAMESPACES
  value: {{ join "," (default (list) .Values.client.monitoredNamespaces) | quote }}
- name: TOPIC_HEARTBEAT
  value: {{ default "cluster.heartbeat" .Values.heartbeat.topic | quote }}
- name: TOPIC_EVENTS
  value: {{ default "raw.k8s.events" .Values.eventExporter.rawTopic | quote }}
- name: TOPIC_RESOURCE
  value: {{ default "state.k8s.resource" .Values.stateWatcher.topicResource | quote }}
- name: TOPIC_TOPOLOGY
  value: {{ default "state.k8s.topology" .Values.stateWatcher.topicTopology | quote }}
- name: LISTEN_ADDR
  value: {{ printf "0.0.0.0:%v" (default 8080 .Values.agent.port) | quote }}
{{- end }}

{{- define "kg-rca-agent.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "kg-rca-agent.containerSecurityContext" -}}
allowPrivilegeEscalation: false
privileged: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* The agent's namespaced read rules (events, workloads, services, endpoints). */}}
{{- define "kg-rca-agent.namespacedRules" }}
  - apiGroups: [""]
    resources: ["events", "pods", "services", "endpoints"]
    verbs: ["get", "list", "watch"]
  - apiGroups: ["apps"]
    resources: ["deployments", "replicasets", "statefulsets", "daemonsets"]
    verbs: ["get", "list", "watch"]
  - apiGroups: ["batch"]
    resources: ["jobs"]
    verbs: ["get", "list", "watch"]
{{- end }}

{{/*
checkov exceptions shared by the agent's Deployment and its deregister Job (inline
`checkov.io/skipN` annotations; the reasons are in docs/onboarding.md, "Security").
*/}}
{{- define "kg-rca-agent.checkovSkips" -}}
checkov.io/skip1: "CKV_K8S_15=Pinned tag or digest, IfNotPresent: a restart needs no registry; Always adds nothing to a pinned image"
checkov.io/skip2: "CKV_K8S_35=The Kafka SASL credentials are environment variables from a Secret (secretKeyRef), the agent's librdkafka configuration contract; never in the manifest"
{{- if not .Values.agent.image.digest }}
checkov.io/skip3: "CKV_K8S_43=Tag pinned to the chart's appVersion by default; set agent.image.digest to pull by digest"
{{- end }}
{{- end }}
