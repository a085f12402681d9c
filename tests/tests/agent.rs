//! The agent (`kg-rca-agent`) against the scripted fake Kubernetes API server
//! (`kg_tests::fake_kube`, the real list/watch protocol over HTTP) and the embedded broker,
//! read back with `kcat`: registration, heartbeats, state, topology and Events in
//! protocol.md's shapes; resuming a watch across an API-server outage without relisting or
//! duplicating; relisting after `410 Gone` without duplicates, tombstoning what vanished
//! meanwhile; a missing RBAC permission reported by name while the other kinds stream;
//! refusal of an invalid client id; deregistration; the SASL password never logged.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use kg_tests::fake_kube::{wait_for_request, FakeKube};
use kg_tests::*;
use serde_json::{json, Value};

const CLIENT: &str = "agent-001";

fn base_env(broker: &Broker, kube: &FakeKube) -> Result<Vec<(String, String)>> {
    let port = free_port()?;
    Ok([
        ("CLIENT_ID", CLIENT.to_string()),
        ("KAFKA_BOOTSTRAP_SERVERS", broker.bootstrap.clone()),
        ("KUBECONFIG", kube.kubeconfig().display().to_string()),
        ("HEARTBEAT_INTERVAL", "1s".to_string()),
        ("LISTEN_ADDR", format!("127.0.0.1:{port}")),
        // Watches renewed every few seconds, as an API server's timeout would.
        ("WATCH_TIMEOUT_SECS", "5".to_string()),
        ("LOG_FORMAT", "json".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect())
}

/// A small cluster: a node, a deployment → replica set → pod on the node, a service whose
/// endpoints select the pod, and a Warning Event about the pod.
fn seed(kube: &FakeKube) -> BTreeMap<&'static str, Value> {
    let mut objects = BTreeMap::new();
    objects.insert(
        "node",
        kube.apply(json!({"kind": "Node", "metadata": {"name": "node-1"},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}})),
    );
    objects.insert(
        "deployment",
        kube.apply(json!({"kind": "Deployment", "metadata": {"name": "api", "namespace": "shop"},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "api"}},
                     "template": {"metadata": {"labels": {"app": "api"}}, "spec": {"containers": [{"name": "api", "image": "shop/api:1"}]}}}})),
    );
    objects.insert(
        "replicaset",
        kube.apply(json!({"kind": "ReplicaSet", "metadata": {"name": "api-7d9f", "namespace": "shop",
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "api", "uid": "x"}]},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "api"}}}})),
    );
    objects.insert("pod", kube.apply(pod("api-7d9f-x", "Running")));
    objects.insert(
        "service",
        kube.apply(
            json!({"kind": "Service", "metadata": {"name": "api", "namespace": "shop"},
            "spec": {"selector": {"app": "api"}, "clusterIP": "10.96.0.10"}}),
        ),
    );
    objects.insert(
        "endpoints",
        kube.apply(json!({"kind": "Endpoints", "metadata": {"name": "api", "namespace": "shop"},
            "subsets": [{"addresses": [{"ip": "10.0.0.7", "targetRef": {"kind": "Pod", "name": "api-7d9f-x", "namespace": "shop"}}]}]})),
    );
    let pod_uid = objects["pod"]["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string();
    objects.insert(
        "event",
        kube.apply(json!({"kind": "Event", "metadata": {"name": "api-7d9f-x.1", "namespace": "shop"},
            "involvedObject": {"kind": "Pod", "name": "api-7d9f-x", "namespace": "shop", "uid": pod_uid},
            "reason": "BackOff", "message": "Back-off restarting failed container", "type": "Warning",
            "source": {"host": "node-1"}, "count": 1, "lastTimestamp": "2026-11-30T08:00:00Z"})),
    );
    objects
}

fn pod(name: &str, phase: &str) -> Value {
    json!({"kind": "Pod", "metadata": {"name": name, "namespace": "shop",
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "api-7d9f", "uid": "x"}]},
        "spec": {"nodeName": "node-1", "containers": [{"name": "api", "image": "shop/api:1"}]},
        "status": {"phase": phase, "podIP": "10.0.0.7"}})
}

/// Records on `topic` whose key is `key` (values; a tombstone reads as "").
fn values(broker: &Broker, topic: &str, key: &str) -> Vec<String> {
    kcat_consume(&broker.bootstrap, topic)
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v)
        .collect()
}

fn count(broker: &Broker, topic: &str) -> usize {
    kcat_consume(&broker.bootstrap, topic)
        .map(|r| r.len())
        .unwrap_or(0)
}

#[test]
fn an_invalid_client_id_is_refused_before_anything_starts() -> Result<()> {
    for bad in ["Prod_EU", "", "-edge"] {
        let output = Command::new(&binaries().agent)
            .env_clear()
            .env("CLIENT_ID", bad)
            .env("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9")
            .output()?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        ensure!(
            output.status.code() == Some(2),
            "{bad:?}: {:?} {stderr}",
            output.status
        );
        ensure!(stderr.contains("client.id"), "{bad:?}: {stderr}");
    }
    Ok(())
}

#[test]
#[allow(clippy::too_many_lines)] // a scenario reads best top to bottom
fn the_agent_streams_protocol_shapes_and_survives_an_outage_and_410_without_duplicates(
) -> Result<()> {
    let broker = Broker::start()?;
    let mut kube = FakeKube::start_new()?;
    let objects = seed(&kube);
    let agent = Agent::start(&base_env(&broker, &kube)?, &["run"])?;
    let b = &broker;
    let uid = |name: &str| {
        objects[name]["metadata"]["uid"]
            .as_str()
            .unwrap()
            .to_string()
    };

    // Registration: one JSON object keyed by the client id.
    let registration = poll("the registration", Duration::from_secs(30), || {
        values(b, "cluster.registry", CLIENT).into_iter().next()
    })
    .with_context(|| agent.log())?;
    let registration: Value = serde_json::from_str(&registration)?;
    ensure!(registration["client_id"] == CLIENT && registration["cluster_name"] == CLIENT);
    ensure!(registration["watches"]["resources"]
        .as_array()
        .is_some_and(|k| k.len() == 9));
    // Heartbeats, at the configured interval (several within a few seconds).
    poll("three heartbeats", Duration::from_secs(20), || {
        (values(b, "cluster.heartbeat", CLIENT).len() >= 3).then_some(())
    })?;

    // State, topology and the Event, keyed with the tenant.
    let pod_key = format!("{CLIENT}::Pod:{}", uid("pod"));
    let expected_edges = [
        "edge:pod:shop:api-7d9f-x->node:node-1",
        "edge:replicaset:shop:api-7d9f->pod:shop:api-7d9f-x",
        "edge:deployment:shop:api->replicaset:shop:api-7d9f",
        "edge:service:shop:api->pod:shop:api-7d9f-x",
    ];
    poll(
        "every snapshot, edge and the event",
        Duration::from_secs(30),
        || {
            let state = kcat_consume(&b.bootstrap, "state.k8s.resource").ok()?;
            let kinds: Vec<&str> = ["Node", "Deployment", "ReplicaSet", "Pod", "Service"].to_vec();
            let all_state = kinds.iter().all(|kind| {
                state
                    .iter()
                    .any(|(k, _)| k.starts_with(&format!("{CLIENT}::{kind}:")))
            });
            let topology = kcat_consume(&b.bootstrap, "state.k8s.topology").ok()?;
            let all_edges = expected_edges.iter().all(|edge| {
                topology
                    .iter()
                    .any(|(k, _)| *k == format!("{CLIENT}::{edge}"))
            });
            let event = !values(
                b,
                "raw.k8s.events",
                &format!("{CLIENT}::event::{}", uid("event")),
            )
            .is_empty();
            (all_state && all_edges && event).then_some(())
        },
    )
    .with_context(|| agent.log())?;
    let pod_record: Value = serde_json::from_str(&values(b, "state.k8s.resource", &pod_key)[0])?;
    ensure!(
        pod_record["op"] == "UPSERT"
            && pod_record["client_id"] == CLIENT
            && pod_record["kind"] == "Pod"
    );
    ensure!(
        pod_record["node"] == "node-1"
            && pod_record["namespace"] == "shop"
            && pod_record["name"] == "api-7d9f-x"
    );
    ensure!(pod_record["ownerRefs"][0]["kind"] == "ReplicaSet");
    let edge: Value = serde_json::from_str(
        &values(
            b,
            "state.k8s.topology",
            &format!("{CLIENT}::{}", expected_edges[0]),
        )[0],
    )?;
    ensure!(
        edge["type"] == "RUNS_ON"
            && edge["from"] == "pod:shop:api-7d9f-x"
            && edge["to"] == "node:node-1"
    );
    let event: Value = serde_json::from_str(
        &values(
            b,
            "raw.k8s.events",
            &format!("{CLIENT}::event::{}", uid("event")),
        )[0],
    )?;
    ensure!(event["reason"] == "BackOff" && event["involvedObject"]["uid"] == uid("pod").as_str());
    ensure!(event["client_id"] == CLIENT);
    poll(
        "/health healthy with every watch synced",
        Duration::from_secs(10),
        || {
            let health = agent.health()?;
            let watches = health["watches"].as_object()?;
            (health["status"] == "healthy"
                && watches.len() == 10
                && watches.values().all(|w| w["synced"] == true))
            .then_some(())
        },
    )?;

    // --- An API-server outage: the agent resumes its watches from the last version. ---
    let before_outage = kube.requests().len();
    let state_before = count(b, "state.k8s.resource");
    kube.stop();
    // A change made while the API server is unreachable (to the agent).
    kube.apply(pod("api-7d9f-x", "Failed"));
    poll(
        "the agent to notice the outage",
        Duration::from_secs(30),
        || (agent.metric("agent_watch_errors_total{").unwrap_or(0.0) > 0.0).then_some(()),
    )
    .with_context(|| agent.log())?;
    std::thread::sleep(Duration::from_secs(2)); // an outage of a few seconds, not a blip
    kube.start()?;
    let changed = poll(
        "the change made during the outage",
        Duration::from_secs(60),
        || {
            values(b, "state.k8s.resource", &pod_key)
                .iter()
                .any(|v| v.contains("\"Failed\""))
                .then_some(())
        },
    );
    changed.with_context(|| agent.log())?;
    let after: Vec<_> = kube.requests().into_iter().skip(before_outage).collect();
    ensure!(
        after.iter().any(|r| r.path == "/api/v1/pods"
            && r.is_watch()
            && r.query.get("resourceVersion").is_some_and(|rv| rv != "0")),
        "the pods watch was not resumed from a resource version: {after:#?}"
    );
    ensure!(
        !after
            .iter()
            .any(|r| r.path == "/api/v1/pods" && !r.is_watch()),
        "pods were relisted after a plain outage (resume should have sufficed)"
    );
    // Only the changed pod's snapshot is new: nothing was sent twice.
    poll("the state topic to settle", Duration::from_secs(10), || {
        (count(b, "state.k8s.resource") == state_before + 1).then_some(())
    })
    .with_context(|| {
        format!(
            "{} records, {state_before} before",
            count(b, "state.k8s.resource")
        )
    })?;

    // --- 410 Gone: every watch ends expired; the agent relists without duplicates, and
    // tombstones what vanished while it was not looking. ---
    let before_expiry = kube.requests().len();
    let events_before = count(b, "raw.k8s.events");
    let topology_before = count(b, "state.k8s.topology");
    kube.stop();
    kube.delete("Service", Some("shop"), "api");
    kube.delete("Endpoints", Some("shop"), "api");
    kube.compact();
    kube.start()?;
    kube.expire_watches();
    wait_for_request(
        &kube,
        "a relist of pods after 410",
        Duration::from_secs(60),
        |r| r.path == "/api/v1/pods" && !r.is_watch(),
    )
    .with_context(|| agent.log())?;
    let service_key = format!("{CLIENT}::Service:{}", uid("service"));
    poll(
        "the vanished service tombstoned",
        Duration::from_secs(30),
        || {
            values(b, "state.k8s.resource", &service_key)
                .last()
                .filter(|v| v.is_empty())
                .map(|_| ())
        },
    )
    .with_context(|| agent.log())?;
    let selects = format!("{CLIENT}::{}", expected_edges[3]);
    poll(
        "its SELECTS edge tombstoned",
        Duration::from_secs(30),
        || {
            values(b, "state.k8s.topology", &selects)
                .last()
                .filter(|v| v.is_empty())
                .map(|_| ())
        },
    )?;
    // Every kind relisted and watching again, and nothing but the tombstones was sent.
    poll(
        "every watch resumed after the relist",
        Duration::from_secs(30),
        || {
            let after: Vec<_> = kube.requests().into_iter().skip(before_expiry).collect();
            [
                "/api/v1/nodes",
                "/api/v1/events",
                "/apis/apps/v1/deployments",
                "/apis/batch/v1/jobs",
            ]
            .iter()
            .all(|path| after.iter().any(|r| r.path == *path && r.is_watch()))
            .then_some(())
        },
    )?;
    ensure!(
        count(b, "raw.k8s.events") == events_before,
        "events were sent again after the relist"
    );
    ensure!(
        count(b, "state.k8s.resource") == state_before + 2,
        "state: only the change and one tombstone"
    );
    ensure!(
        count(b, "state.k8s.topology") == topology_before + 1,
        "topology: only one tombstone"
    );
    ensure!(
        agent.metric("agent_watch_errors_total{").unwrap_or(0.0) > 0.0,
        "the 410s were counted"
    );
    Ok(())
}

#[test]
fn a_missing_rbac_permission_is_reported_by_name_and_the_other_kinds_keep_streaming() -> Result<()>
{
    let broker = Broker::start()?;
    let kube = FakeKube::start_new()?;
    kube.forbid("deployments");
    let objects = seed(&kube);
    let agent = Agent::start(&base_env(&broker, &kube)?, &[] as &[&str])?;
    let b = &broker;
    let pod_key = format!(
        "{CLIENT}::Pod:{}",
        objects["pod"]["metadata"]["uid"].as_str().unwrap()
    );
    poll(
        "the pod streamed despite the forbidden kind",
        Duration::from_secs(30),
        || (!values(b, "state.k8s.resource", &pod_key).is_empty()).then_some(()),
    )
    .with_context(|| agent.log())?;
    poll(
        "the permission named in the log and metrics",
        Duration::from_secs(30),
        || {
            let log = agent.log();
            let named = log.contains("missing RBAC permission")
                && log.contains("list and watch deployments (apps API group)");
            let gauge = agent
                .metric("agent_watch_forbidden{client_id=\"agent-001\",kind=\"Deployment\"}")?
                == 1.0;
            (named && gauge).then_some(())
        },
    )
    .with_context(|| agent.log())?;
    let health = agent.health().context("health")?;
    ensure!(health["status"] == "degraded", "{health}");
    ensure!(
        health["watches"]["deployments"]["failure"] == "forbidden",
        "{health}"
    );
    ensure!(health["watches"]["pods"]["synced"] == true, "{health}");
    let deployment_key = format!(
        "{CLIENT}::Deployment:{}",
        objects["deployment"]["metadata"]["uid"].as_str().unwrap()
    );
    ensure!(values(b, "state.k8s.resource", &deployment_key).is_empty());
    // The heartbeat says degraded too.
    poll("a degraded heartbeat", Duration::from_secs(20), || {
        values(b, "cluster.heartbeat", CLIENT)
            .iter()
            .any(|v| v.contains("\"degraded\""))
            .then_some(())
    })?;
    // Granted: the kind streams without a restart.
    kube.allow("deployments");
    poll(
        "the deployment once permitted",
        Duration::from_secs(60),
        || (!values(b, "state.k8s.resource", &deployment_key).is_empty()).then_some(()),
    )
    .with_context(|| agent.log())?;
    Ok(())
}

#[test]
fn deregister_sends_the_tombstone_and_never_logs_the_sasl_password() -> Result<()> {
    let broker = Broker::start()?;
    let output = Command::new(&binaries().agent)
        .arg("deregister")
        .env_clear()
        .env("CLIENT_ID", CLIENT)
        .env("KAFKA_BOOTSTRAP_SERVERS", &broker.bootstrap)
        .env("LOG_FORMAT", "json")
        .output()?;
    ensure!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let registry = kcat_consume(&broker.bootstrap, "cluster.registry")?;
    ensure!(
        registry == vec![(CLIENT.to_string(), String::new())],
        "{registry:?}"
    );

    // SASL against a broker that does not speak it: the delivery fails within its
    // deadline, and nothing the agent prints holds the password.
    let secret = "s3cret-Pa55word-never-logged";
    let output = Command::new(&binaries().agent)
        .arg("deregister")
        .env_clear()
        .env("CLIENT_ID", CLIENT)
        .env("KAFKA_BOOTSTRAP_SERVERS", &broker.bootstrap)
        .env("KAFKA_SECURITY_PROTOCOL", "sasl_plaintext")
        .env("KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
        .env("KAFKA_SASL_USERNAME", CLIENT)
        .env("KAFKA_SASL_PASSWORD", secret)
        .env("DELIVERY_DEADLINE", "3s")
        .env("RUST_LOG", "debug")
        .output()?;
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    ensure!(
        output.status.code() == Some(1),
        "{:?}: {printed}",
        output.status
    );
    ensure!(
        printed.contains("deregistering client agent-001"),
        "{printed}"
    );
    ensure!(
        !printed.contains(secret),
        "the password was printed: {printed}"
    );
    Ok(())
}
