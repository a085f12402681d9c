"""Checks one rendering of charts/kg-rca-agent against the contract the chart promises
(docs/onboarding.md). Called by scripts/check-chart.sh with the Python of the
kubernetes-validate virtual environment (it has PyYAML; tomllib is Python >= 3.11's).

usage: check_chart_render.py RENDERED.yaml VALUES.yaml RELEASE NAMESPACE
Exits 1 listing every violation.
"""

import re
import sys

import yaml

try:
    import tomllib
except ImportError:  # Python < 3.11: the TOML check is skipped, said so below
    tomllib = None

AGENT_ENV_REQUIRED = {
    "CLIENT_ID", "CLUSTER_NAME", "CHART_VERSION", "KAFKA_BOOTSTRAP_SERVERS",
    "KAFKA_SECURITY_PROTOCOL", "HEARTBEAT_ENABLED", "HEARTBEAT_INTERVAL", "WATCH_EVENTS",
    "WATCH_RESOURCES", "WATCH_NAMESPACES", "TOPIC_REGISTRY", "TOPIC_HEARTBEAT", "TOPIC_EVENTS",
    "TOPIC_RESOURCE", "TOPIC_TOPOLOGY", "LISTEN_ADDR", "LOG_FORMAT",
}
AGENT_RULES = {
    ("", "events"), ("", "pods"), ("", "nodes"), ("", "services"), ("", "endpoints"),
    ("apps", "deployments"), ("apps", "replicasets"), ("apps", "statefulsets"),
    ("apps", "daemonsets"), ("batch", "jobs"),
}
VECTOR_RULES = {("", "pods"), ("", "namespaces"), ("", "nodes")}
READ = {"get", "list", "watch"}


def main():
    rendered_path, values_path, release, namespace = sys.argv[1:5]
    docs = [d for d in yaml.safe_load_all(open(rendered_path)) if d]
    values = yaml.safe_load(open(values_path)) or {}
    errors = []

    def err(msg):
        errors.append(msg)

    def get(d, *path, default=None):
        for p in path:
            if not isinstance(d, dict) or p not in d:
                return default
            d = d[p]
        return d

    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    fullname = f"{release}-kg-rca-agent"
    client_id = str(get(values, "client", "id"))
    sasl = bool(get(values, "client", "kafka", "sasl", "enabled", default=False))
    tls = bool(get(values, "client", "kafka", "tls", "enabled", default=False))

    # Every namespaced object is in the release namespace (RBAC Roles: the watched ones).
    for d in docs:
        if d["kind"] in ("ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"):
            continue
        if get(d, "metadata", "namespace") != namespace:
            err(f"{d['kind']}/{d['metadata']['name']}: namespace is not {namespace}")

    # Every container: requests and limits, no privilege, read-only root, drop ALL.
    workloads = [d for d in docs if d["kind"] in ("Deployment", "DaemonSet", "Job")]
    for w in workloads:
        pod = w["spec"]["template"]["spec"]
        if get(pod, "securityContext", "seccompProfile", "type") != "RuntimeDefault":
            err(f"{w['kind']}/{w['metadata']['name']}: pod seccompProfile is not RuntimeDefault")
        for c in pod.get("containers", []) + pod.get("initContainers", []):
            where = f"{w['kind']}/{w['metadata']['name']}/{c['name']}"
            for kind in ("requests", "limits"):
                for res in ("cpu", "memory"):
                    if not get(c, "resources", kind, res):
                        err(f"{where}: no resources.{kind}.{res}")
            sc = c.get("securityContext") or {}
            if sc.get("allowPrivilegeEscalation") is not False:
                err(f"{where}: allowPrivilegeEscalation is not false")
            if sc.get("readOnlyRootFilesystem") is not True:
                err(f"{where}: readOnlyRootFilesystem is not true")
            if get(sc, "capabilities", "drop") != ["ALL"]:
                err(f"{where}: capabilities do not drop ALL")
            if sc.get("privileged"):
                err(f"{where}: privileged")
            if c["name"] != "vector" and (sc.get("runAsNonRoot") is not True or sc.get("runAsUser") != 10001):
                err(f"{where}: does not run as non-root uid 10001")
            for e in c.get("env", []):
                if "PASSWORD" in e["name"] or "USERNAME" in e["name"]:
                    if "value" in e or not get(e, "valueFrom", "secretKeyRef"):
                        err(f"{where}: {e['name']} is not a secretKeyRef")

    # The agent's Deployment.
    deployments = [d for d in by_kind.get("Deployment", []) if d["metadata"]["name"] == fullname]
    if len(deployments) != 1:
        err(f"expected one Deployment {fullname}, found {len(deployments)}")
    for dep in deployments:
        spec = dep["spec"]
        if spec.get("replicas") != 1 or get(spec, "strategy", "type") != "Recreate":
            err("agent Deployment: not 1 replica with strategy Recreate")
        pod = spec["template"]["spec"]
        if pod.get("automountServiceAccountToken") is not True:
            err("agent Deployment: automountServiceAccountToken is not true")
        ann = get(spec, "template", "metadata", "annotations", default={})
        for key in ("checksum/config", "checksum/secret", "kg-rca.io/chart-version"):
            if key not in ann:
                err(f"agent Deployment: pod template lacks annotation {key}")
        c = pod["containers"][0]
        if c.get("args") != ["run"]:
            err(f"agent Deployment: args {c.get('args')} are not [run]")
        env = {e["name"]: e for e in c.get("env", [])}
        missing = AGENT_ENV_REQUIRED - env.keys()
        if missing:
            err(f"agent Deployment: env lacks {sorted(missing)}")
        if get(env, "CLIENT_ID", "value") != client_id:
            err(f"agent Deployment: CLIENT_ID is not {client_id!r}")
        interval = str(get(values, "heartbeat", "interval", default="30s"))
        if get(env, "HEARTBEAT_INTERVAL", "value") != interval:
            err(f"agent Deployment: HEARTBEAT_INTERVAL is not {interval!r}")
        expected_protocol = get(values, "client", "kafka", "securityProtocol") or (
            "sasl_ssl" if sasl and tls else "sasl_plaintext" if sasl else "ssl" if tls else "plaintext")
        if get(env, "KAFKA_SECURITY_PROTOCOL", "value") != expected_protocol:
            err(f"agent Deployment: KAFKA_SECURITY_PROTOCOL is not {expected_protocol}")
        if sasl and not {"KAFKA_SASL_MECHANISM", "KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD"} <= env.keys():
            err("agent Deployment: SASL enabled but SASL env incomplete")
        # Live while it serves; ready once its registration was acknowledged.
        for probe, path in (("livenessProbe", "/health"), ("readinessProbe", "/ready")):
            if get(c, probe, "httpGet", "path") != path:
                err(f"agent Deployment: {probe} is not GET {path}")

    # The deregister hook.
    jobs = by_kind.get("Job", [])
    for job in jobs:
        ann = job["metadata"].get("annotations", {})
        if ann.get("helm.sh/hook") != "pre-delete" or "helm.sh/hook-delete-policy" not in ann:
            err(f"Job/{job['metadata']['name']}: not a pre-delete hook with a delete policy")
        for key in ("backoffLimit", "activeDeadlineSeconds"):
            if key not in job["spec"]:
                err(f"Job/{job['metadata']['name']}: no {key}")
        pod = job["spec"]["template"]["spec"]
        if pod.get("automountServiceAccountToken") is not False:
            err(f"Job/{job['metadata']['name']}: automountServiceAccountToken is not false")
        if pod["containers"][0].get("args") != ["deregister"]:
            err(f"Job/{job['metadata']['name']}: args are not [deregister]")

    # Vector: 2.1.x's name and immutable selector; its TOML parses; its sinks carry SASL/TLS.
    vector_enabled = get(values, "vector", "enabled", default=True) is not False
    daemonsets = by_kind.get("DaemonSet", [])
    if vector_enabled:
        names = [d["metadata"]["name"] for d in daemonsets]
        if names != [f"{fullname}-vector"]:
            err(f"Vector DaemonSet: expected [{fullname}-vector], found {names}")
        for ds in daemonsets:
            sel = ds["spec"]["selector"]["matchLabels"]
            want = {"app.kubernetes.io/name": "kg-rca-agent", "app.kubernetes.io/instance": release,
                    "component": "vector"}
            if sel != want:
                err(f"Vector DaemonSet: selector {sel} is not 2.1.x's {want}")
        configs = [d for d in by_kind.get("ConfigMap", []) if d["metadata"]["name"] == f"{fullname}-vector-config"]
        if len(configs) != 1:
            err("Vector: no ConfigMap <fullname>-vector-config")
        elif tomllib is None:
            print("note: Python < 3.11, vector.toml not parsed")
        else:
            try:
                cfg = tomllib.loads(configs[0]["data"]["vector.toml"])
            except Exception as e:  # noqa: BLE001 - report any parse error
                err(f"Vector: vector.toml does not parse: {e}")
                cfg = {}
            sinks = cfg.get("sinks", {})
            logs_topic = get(values, "vector", "kafkaTopic") or "logs.normalized"
            if get(sinks, "kafka", "topic") != logs_topic or get(sinks, "kafka", "key_field") != "message_key":
                err(f"Vector: the log sink does not write {logs_topic} keyed by message_key")
            vrl = get(cfg, "transforms", "normalize", "source", default="")
            for needle in (f'.client_id = "{client_id}"', '.etype = "k8s.log"', ".subject", ".pod_uid",
                           ".pod_namespace", ".pod_name", ".event_time", f'"{client_id}::" + pod_uid'):
                if needle not in vrl:
                    err(f"Vector: the normalize transform lacks {needle}")
            raw = get(values, "vector", "rawLogsTopic")
            if raw and get(sinks, "kafka_raw_logs", "topic") != raw:
                err(f"Vector: no raw log mirror to {raw}")
            for name, sink in sinks.items():
                if sink.get("bootstrap_servers") != str(get(values, "client", "kafka", "brokers")).strip():
                    err(f"Vector sink {name}: bootstrap_servers is not client.kafka.brokers")
                if sasl and get(sink, "sasl", "enabled") is not True:
                    err(f"Vector sink {name}: SASL not enabled")
                if sasl and get(sink, "sasl", "password") != "${KAFKA_SASL_PASSWORD}":
                    err(f"Vector sink {name}: SASL password not from the environment")
                if tls and get(sink, "tls", "enabled") is not True:
                    err(f"Vector sink {name}: TLS not enabled")
    elif daemonsets:
        err("Vector disabled but a DaemonSet rendered")

    # RBAC: read-only, exactly the agent's resources and Vector's.
    def rules_of(kind, name):
        objs = [d for d in by_kind.get(kind, []) if d["metadata"]["name"] == name]
        pairs = set()
        for o in objs:
            for r in o.get("rules", []):
                if set(r.get("verbs", [])) - READ:
                    err(f"{kind}/{name}: verbs beyond get/list/watch: {r['verbs']}")
                for g in r.get("apiGroups", []):
                    for res in r.get("resources", []):
                        pairs.add((g, res))
        return pairs, objs

    if get(values, "rbac", "create", default=True) is not False:
        cluster_pairs, _ = rules_of("ClusterRole", fullname)
        role_pairs, roles = rules_of("Role", fullname)
        namespaces = get(values, "client", "monitoredNamespaces", default=[]) or []
        if namespaces:
            if cluster_pairs != {("", "nodes")}:
                err(f"agent ClusterRole with monitoredNamespaces: {sorted(cluster_pairs)} is not nodes only")
            if sorted(r["metadata"]["namespace"] for r in roles) != sorted(namespaces):
                err("agent Roles: not one per monitored namespace")
            if role_pairs | cluster_pairs != AGENT_RULES:
                err(f"agent Roles: {sorted(role_pairs)} are not the agent's resources")
        elif cluster_pairs != AGENT_RULES:
            err(f"agent ClusterRole: {sorted(cluster_pairs)} is not exactly {sorted(AGENT_RULES)}")
        if vector_enabled:
            vector_pairs, _ = rules_of("ClusterRole", f"{fullname}-vector")
            if vector_pairs != VECTOR_RULES:
                err(f"Vector ClusterRole: {sorted(vector_pairs)} is not exactly {sorted(VECTOR_RULES)}")

    # 2.1.x's Secret, same name and keys.
    secrets = [d for d in by_kind.get("Secret", []) if d["metadata"]["name"] == f"{fullname}-secrets"]
    if len(secrets) != 1:
        err(f"no Secret {fullname}-secrets")
    elif sasl and not get(values, "client", "kafka", "sasl", "existingSecret"):
        data = secrets[0].get("stringData", {})
        if not {"kafka-sasl-username", "kafka-sasl-password"} <= data.keys():
            err("Secret: SASL keys kafka-sasl-username/kafka-sasl-password missing")

    # Nothing of 2.1.x's third-party images survives.
    images = set()
    for w in workloads:
        for c in w["spec"]["template"]["spec"]["containers"]:
            images.add(c["image"])
    for old in ("kafka-producer-minimal", "kcat", "kubernetes-event-exporter", "kg-state-watcher",
                "kg-alert-receiver", "prom/prometheus"):
        if any(old in i for i in images):
            err(f"2.1.x image {old} still rendered")

    if errors:
        print(f"{rendered_path} ({values_path}):")
        for e in errors:
            print(f"  - {e}")
        sys.exit(1)
    print(f"{re.sub(r'.yaml$', '', values_path.split('/')[-1])}: contract ok "
          f"({len(docs)} objects, images: {', '.join(sorted(images))})")


if __name__ == "__main__":
    main()
