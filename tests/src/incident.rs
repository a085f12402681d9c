//! The demo incident the graph and alert tests replay: node-1 goes NotReady and evicts
//! web-1; checkout's pod (on node-2) is OOMKilled, then crash-loops, its readiness probe
//! fails, and it logs an OutOfMemoryError. Raw records as the agents write them, with the
//! resource snapshots and topology the graph needs.

use anyhow::Result;
use chrono::{DateTime, Utc};
use serde_json::json;

use crate::{producer, send_all};

pub const NS: &str = "shop";

/// One Kubernetes event of the scenario: (uid, reason, type, object kind, object name,
/// object uid, seconds after t0, message).
pub type ScenarioEvent = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    i64,
    &'static str,
);

/// node-1 goes NotReady and evicts web-1; checkout's pod (on node-2) is OOMKilled, then
/// crash-loops, its service's readiness probe fails, and it logs an OutOfMemoryError.
pub const EVENTS: &[ScenarioEvent] = &[
    (
        "e-notready",
        "NodeNotReady",
        "Normal",
        "Node",
        "node-1",
        "uid-node-1",
        0,
        "Node node-1 status is now: NodeNotReady",
    ),
    (
        "e-evicted",
        "Evicted",
        "Warning",
        "Pod",
        "web-1",
        "uid-web-1",
        30,
        "The node was low on resource: memory.",
    ),
    (
        "e-oom",
        "OOMKilled",
        "Warning",
        "Pod",
        "checkout-abc-1",
        "uid-checkout-1",
        60,
        "Container checkout killed: out of memory",
    ),
    (
        "e-crash",
        "CrashLoopBackOff",
        "Warning",
        "Pod",
        "checkout-abc-1",
        "uid-checkout-1",
        90,
        "Back-off restarting failed container checkout",
    ),
    (
        "e-probe",
        "Unhealthy",
        "Warning",
        "Pod",
        "checkout-abc-1",
        "uid-checkout-1",
        100,
        "Readiness probe failed: HTTP probe failed with statuscode: 503",
    ),
];

/// When the graph tests' incident starts (node-1 goes NotReady).
pub fn t0() -> DateTime<Utc> {
    "2025-10-28T08:30:00Z".parse().expect("a time")
}

/// `seconds` after [`t0`].
pub fn at(seconds: i64) -> String {
    at_from(t0(), seconds)
}

/// `seconds` after `t0`, as the agents write times.
pub fn at_from(t0: DateTime<Utc>, seconds: i64) -> String {
    (t0 + chrono::Duration::seconds(seconds)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

pub fn raw_k8s_event(e: &ScenarioEvent) -> String {
    raw_k8s_event_from(t0(), e)
}

fn raw_k8s_event_from(t0: DateTime<Utc>, e: &ScenarioEvent) -> String {
    let at = |seconds| at_from(t0, seconds);
    let (uid, reason, kind, object_kind, name, object_uid, offset, message) = *e;
    let namespace = if object_kind == "Node" { "default" } else { NS };
    json!({"event_id": format!("evt-{uid}"), "reason": reason, "message": message, "type": kind,
           "metadata": {"uid": uid, "creationTimestamp": at(offset)},
           "involvedObject": {"kind": object_kind, "name": name, "namespace": namespace, "uid": object_uid},
           "source": {"host": if object_kind == "Node" { name } else { "node-2" }},
           "lastTimestamp": at(offset), "count": 1})
    .to_string()
}

/// Resource snapshots and topology for `client`.
/// Kafka records as (key, value).
pub type Records = Vec<(String, String)>;

fn state(t0: DateTime<Utc>, client: &str) -> (Records, Records) {
    let at = |seconds| at_from(t0, seconds);
    let resource = |kind: &str, uid: &str, ns: Option<&str>, name: &str, node: Option<&str>| {
        (
            format!("{client}::{kind}:{uid}"),
            json!({"op": "UPSERT", "at": at(-60), "client_id": client, "cluster": client, "kind": kind, "uid": uid,
                   "namespace": ns, "name": name, "labels": {"app": name}, "ownerRefs": [], "node": node,
                   "status": {"phase": "Running"}, "spec": {}})
            .to_string(),
        )
    };
    let resources = vec![
        resource("Node", "uid-node-1", None, "node-1", None),
        resource("Node", "uid-node-2", None, "node-2", None),
        resource("Pod", "uid-web-1", Some(NS), "web-1", Some("node-1")),
        resource(
            "Pod",
            "uid-checkout-1",
            Some(NS),
            "checkout-abc-1",
            Some("node-2"),
        ),
        resource("ReplicaSet", "uid-rs-1", Some(NS), "checkout-abc", None),
        resource("Deployment", "uid-deploy-1", Some(NS), "checkout", None),
        resource("Service", "uid-svc-1", Some(NS), "checkout", None),
    ];
    let edge = |from: &str, to: &str, kind: &str| {
        (
            format!("{client}::edge:{from}->{to}"),
            json!({"op": "UPSERT", "at": at(-60), "client_id": client, "id": format!("edge:{from}->{to}"),
                   "from": from, "to": to, "type": kind})
            .to_string(),
        )
    };
    let edges = vec![
        edge("pod:shop:web-1", "node:node-1", "RUNS_ON"),
        edge("pod:shop:checkout-abc-1", "node:node-2", "RUNS_ON"),
        edge(
            "replicaset:shop:checkout-abc",
            "pod:shop:checkout-abc-1",
            "CONTROLS",
        ),
        edge(
            "deployment:shop:checkout",
            "replicaset:shop:checkout-abc",
            "CONTROLS",
        ),
        edge(
            "service:shop:checkout",
            "pod:shop:checkout-abc-1",
            "SELECTS",
        ),
    ];
    (resources, edges)
}

fn error_log(t0: DateTime<Utc>, client: &str) -> String {
    let at = |seconds| at_from(t0, seconds);
    json!({"message": "java.lang.OutOfMemoryError: Java heap space\n\tat com.shop.Cart.add(Cart.java:42)",
           "timestamp": at(95), "stream": "stderr", "client_id": client,
           "kubernetes": {"pod_name": "checkout-abc-1", "pod_namespace": NS, "pod_uid": "uid-checkout-1",
                          "container_name": "checkout", "pod_node_name": "node-2"}})
    .to_string()
}

/// Produces the scenario for `client`: state first, then events and the log line.
pub async fn replay_scenario(bootstrap: &str, client: &str) -> Result<()> {
    replay_scenario_from(bootstrap, client, t0()).await
}

/// [`replay_scenario`], the incident starting at `t0` instead.
pub async fn replay_scenario_from(bootstrap: &str, client: &str, t0: DateTime<Utc>) -> Result<()> {
    let producer = producer(bootstrap, "lz4")?;
    let (resources, edges) = state(t0, client);
    send_all(&producer, "state.k8s.resource", resources).await?;
    send_all(&producer, "state.k8s.topology", edges).await?;
    let events = EVENTS
        .iter()
        .map(|e| {
            (
                format!("{client}::event::{}", e.0),
                raw_k8s_event_from(t0, e),
            )
        })
        .collect();
    send_all(&producer, "raw.k8s.events", events).await?;
    send_all(
        &producer,
        "raw.k8s.logs",
        vec![(format!("{client}::uid-checkout-1"), error_log(t0, client))],
    )
    .await?;
    Ok(())
}
