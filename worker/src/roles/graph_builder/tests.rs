//! Library-level tests of the whole graph: records as the input topics carry them, decoded
//! with [`decode_input`] and applied to a [`SqliteGraphStore`]. A realistic incident with
//! its expected root causes, identity resolution, deletions, escalation, incidents,
//! redelivery, a crash and restart, and order independence (proptest).

use std::collections::HashMap;

use chrono::{DateTime, Duration, SecondsFormat, Utc};
use kg_shared::topics::{
    EVENTS_NORMALIZED, LOGS_NORMALIZED, STATE_K8S_RESOURCE, STATE_K8S_TOPOLOGY,
};
use proptest::prelude::*;
use serde_json::json;

use super::*;

const CLIENT: &str = "af-9";
const NS: &str = "shop";

fn t0() -> DateTime<Utc> {
    "2025-10-28T08:00:00Z".parse().unwrap()
}

fn at(offset_s: i64) -> String {
    (t0() + Duration::seconds(offset_s)).to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

fn decode(topic: &str, key: &str, value: Option<serde_json::Value>) -> Option<GraphInput> {
    let bytes = value.map(|v| serde_json::to_vec(&v).unwrap());
    decode_input(topic, Some(key.as_bytes()), bytes.as_deref()).unwrap()
}

/// A normalized event as the event normalizer writes it, about a namespaced object (or a
/// node when `kind` is `Node`).
#[allow(clippy::too_many_arguments)]
fn event(
    id: &str,
    offset_s: i64,
    reason: &str,
    warning: bool,
    kind: &str,
    name: &str,
    uid: Option<&str>,
    message: &str,
) -> GraphInput {
    let eta = crate::roles::event_normalizer::normalize::event_type_abstract(reason);
    let mut subject = json!({"kind": kind, "name": name});
    if kind != "Node" {
        subject["ns"] = json!(NS);
    }
    if let Some(uid) = uid {
        subject["uid"] = json!(uid);
    }
    let v = json!({
        "client_id": CLIENT, "event_id": id, "raw_event_id": id,
        "timestamp": at(offset_s), "event_time": at(offset_s), "etype": "k8s.event",
        "event_type_abstract": eta.as_str(), "severity": if warning { "WARNING" } else { "INFO" },
        "reason": reason, "message": message, "namespace": NS,
        "involved_object_kind": kind, "involved_object_name": name, "subject": subject
    });
    decode(EVENTS_NORMALIZED, &format!("{CLIENT}::{id}"), Some(v)).expect("events are graph-worthy")
}

fn pod_event(
    id: &str,
    offset_s: i64,
    reason: &str,
    warning: bool,
    pod: &str,
    message: &str,
) -> GraphInput {
    event(
        id,
        offset_s,
        reason,
        warning,
        "Pod",
        pod,
        Some(&format!("uid-{pod}")),
        message,
    )
}

/// A log record as the log shipper writes it; `None` when it is not graph-worthy.
fn log(pod: &str, offset_s: i64, message: &str) -> Option<GraphInput> {
    let uid = format!("uid-{pod}");
    let v = json!({
        "message": message, "timestamp": at(offset_s), "client_id": CLIENT, "etype": "k8s.log",
        "event_time": at(offset_s), "pod_uid": uid, "pod_namespace": NS, "pod_name": pod,
        "subject": {"kind": "Pod", "uid": uid, "ns": NS, "name": pod},
        "kubernetes": {"container_name": "app", "pod_name": pod, "pod_namespace": NS, "pod_uid": uid}
    });
    decode(LOGS_NORMALIZED, &format!("{CLIENT}::{uid}"), Some(v))
}

/// Pods and nodes have the uid `uid-<name>` (what the event fixtures use); other kinds
/// `uid-<kind>-<name>`, so that a Deployment and a Service of one name differ.
fn uid_of(kind: &str, name: &str) -> String {
    match kind {
        "Pod" | "Node" => format!("uid-{name}"),
        _ => format!("uid-{}-{name}", kind.to_ascii_lowercase()),
    }
}

fn resource(kind: &str, name: &str) -> GraphInput {
    let uid = uid_of(kind, name);
    let mut v = json!({
        "op": "UPSERT", "at": at(-3600), "client_id": CLIENT, "cluster": CLIENT,
        "kind": kind, "uid": uid, "name": name, "labels": {}, "status": {}
    });
    if kind != "Node" {
        v["namespace"] = json!(NS);
    }
    decode(
        STATE_K8S_RESOURCE,
        &format!("{CLIENT}::{kind}:{uid}"),
        Some(v),
    )
    .unwrap()
}

fn delete_resource(kind: &str, name: &str) -> GraphInput {
    let uid = uid_of(kind, name);
    decode(STATE_K8S_RESOURCE, &format!("{CLIENT}::{kind}:{uid}"), None).unwrap()
}

fn edge_at(from: &str, to: &str, kind: &str, offset_s: i64) -> GraphInput {
    let v = json!({
        "op": "UPSERT", "at": at(offset_s), "client_id": CLIENT,
        "id": format!("edge:{from}->{to}"), "from": from, "to": to, "type": kind
    });
    decode(
        STATE_K8S_TOPOLOGY,
        &format!("{CLIENT}::edge:{from}->{to}"),
        Some(v),
    )
    .unwrap()
}

fn edge(from: &str, to: &str, kind: &str) -> GraphInput {
    edge_at(from, to, kind, -3600)
}

fn delete_edge(from: &str, to: &str) -> GraphInput {
    decode(
        STATE_K8S_TOPOLOGY,
        &format!("{CLIENT}::edge:{from}->{to}"),
        None,
    )
    .unwrap()
}

fn pod(name: &str) -> String {
    format!("pod:{NS}:{name}")
}

fn store() -> SqliteGraphStore {
    SqliteGraphStore::open_in_memory().unwrap()
}

fn top_cause(store: &SqliteGraphStore, event_id: &str) -> Candidate {
    store
        .rca(event_id, 10)
        .unwrap()
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("{event_id} has no cause"))
}

/// The incident: node-1 goes NotReady and the cart pods on it are evicted; checkout's
/// pods (Deployment → ReplicaSet → Pods, Service SELECTS them, on node-2) are OOMKilled,
/// crash-loop, fail their readiness probes and log errors. Plus the state and topology,
/// and noise: normal lifecycle events, a healthy frontend pod, low-signal log lines.
#[allow(clippy::too_many_lines)] // a scenario reads best top to bottom
fn incident_inputs() -> Vec<GraphInput> {
    let cart = ["cart-5c4d-a", "cart-5c4d-b"];
    let checkout = ["checkout-7d9f-x", "checkout-7d9f-y"];
    let mut inputs = vec![
        resource("Node", "node-1"),
        resource("Node", "node-2"),
        resource("Deployment", "cart"),
        resource("ReplicaSet", "cart-5c4d"),
        resource("Service", "cart"),
        resource("Deployment", "checkout"),
        resource("ReplicaSet", "checkout-7d9f"),
        resource("Service", "checkout"),
        resource("Pod", "frontend-1"),
        edge(
            "deployment:shop:cart",
            "replicaset:shop:cart-5c4d",
            "CONTROLS",
        ),
        edge(
            "deployment:shop:checkout",
            "replicaset:shop:checkout-7d9f",
            "CONTROLS",
        ),
        edge(&pod("frontend-1"), "node:node-2", "RUNS_ON"),
    ];
    for p in cart {
        inputs.push(resource("Pod", p));
        inputs.push(edge("replicaset:shop:cart-5c4d", &pod(p), "CONTROLS"));
        inputs.push(edge("service:shop:cart", &pod(p), "SELECTS"));
        inputs.push(edge(&pod(p), "node:node-1", "RUNS_ON"));
    }
    for p in checkout {
        inputs.push(resource("Pod", p));
        inputs.push(edge("replicaset:shop:checkout-7d9f", &pod(p), "CONTROLS"));
        inputs.push(edge("service:shop:checkout", &pod(p), "SELECTS"));
        inputs.push(edge(&pod(p), "node:node-2", "RUNS_ON"));
    }
    inputs.extend([
        // Noise: lifecycle events long before, a healthy neighbour.
        pod_event(
            "evt-x-started",
            -600,
            "Started",
            false,
            checkout[0],
            "Started container app",
        ),
        pod_event(
            "evt-y-pulled",
            -590,
            "Pulled",
            false,
            checkout[1],
            "Container image already present",
        ),
        pod_event(
            "evt-frontend-pulled",
            50,
            "Pulled",
            false,
            "frontend-1",
            "Container image already present",
        ),
        // node-1 goes NotReady; its pods are evicted.
        event(
            "evt-node1-notready",
            0,
            "NodeNotReady",
            false,
            "Node",
            "node-1",
            Some("uid-node-1"),
            "Node node-1 status is now: NodeNotReady",
        ),
        pod_event(
            "evt-cart-a-evicted",
            30,
            "Evicted",
            true,
            cart[0],
            "The node was not ready",
        ),
        pod_event(
            "evt-cart-b-evicted",
            30,
            "Evicted",
            true,
            cart[1],
            "The node was not ready",
        ),
        // checkout's pods run out of memory and crash-loop.
        pod_event(
            "evt-x-oom",
            60,
            "OOMKilled",
            true,
            checkout[0],
            "Container app was OOMKilled",
        ),
        pod_event(
            "evt-x-crash",
            80,
            "CrashLoopBackOff",
            true,
            checkout[0],
            "Back-off restarting failed container app",
        ),
        pod_event(
            "evt-y-oom",
            85,
            "OOMKilled",
            true,
            checkout[1],
            "Container app was OOMKilled",
        ),
        pod_event(
            "evt-y-crash",
            95,
            "CrashLoopBackOff",
            true,
            checkout[1],
            "Back-off restarting failed container app",
        ),
        // The service's probes fail.
        pod_event(
            "evt-x-unhealthy",
            100,
            "Unhealthy",
            true,
            checkout[0],
            "Readiness probe failed: HTTP probe failed with statuscode: 503",
        ),
        pod_event(
            "evt-y-unhealthy",
            110,
            "Unhealthy",
            true,
            checkout[1],
            "Readiness probe failed: HTTP probe failed with statuscode: 503",
        ),
    ]);
    // Error logs (and lines that are not graph-worthy).
    assert!(log(checkout[0], 20, "GET /healthz 200").is_none());
    inputs.extend(
        [
            log(
                checkout[0],
                120,
                "ERROR failed to reserve order 1234: connection refused",
            ),
            log(
                checkout[0],
                125,
                "ERROR failed to reserve order 1235: connection refused",
            ),
            log(
                checkout[1],
                130,
                "ERROR payment call failed: upstream timeout",
            ),
            log(
                checkout[1],
                135,
                "ERROR payment call failed: upstream timeout after 30s",
            ),
        ]
        .into_iter()
        .map(|l| l.expect("error lines are graph-worthy")),
    );
    inputs
}

fn log_ids(inputs: &[GraphInput], pod_name: &str) -> Vec<String> {
    inputs
        .iter()
        .filter_map(|i| match i {
            GraphInput::Log(l) if l.subject.name.as_deref() == Some(pod_name) => {
                Some(l.event_id.clone())
            }
            _ => None,
        })
        .collect()
}

#[test]
#[allow(clippy::too_many_lines)] // a scenario reads best top to bottom
fn realistic_incident_ranks_the_true_root_causes_first() {
    let inputs = incident_inputs();
    let mut s = store();
    s.apply(&inputs).unwrap();

    // Evictions ← node-1 NotReady, one hop away.
    for (evicted, p) in [
        ("evt-cart-a-evicted", "cart-5c4d-a"),
        ("evt-cart-b-evicted", "cart-5c4d-b"),
    ] {
        let top = top_cause(&s, evicted);
        assert_eq!(top.event_id, "evt-node1-notready", "{evicted}");
        assert_eq!(top.hops, 1);
        assert_eq!(top.path, vec!["node:node-1".to_owned(), pod(p)]);
        assert_eq!(top.domain_score, 0.90);
        assert_eq!(top.subject, "node:node-1");
    }
    // Crash loops ← the same pod's OOMKill.
    let top = top_cause(&s, "evt-x-crash");
    assert_eq!(top.event_id, "evt-x-oom");
    assert_eq!((top.hops, top.domain_score), (0, 0.95));
    assert_eq!(top.path, vec![pod("checkout-7d9f-x")]);
    let expected = 0.3 * (1.0 - 20.0 / 900.0) + 0.3 * 1.0 + 0.4 * 0.95;
    assert!(
        (top.confidence - expected).abs() < 1e-9,
        "{}",
        top.confidence
    );
    assert_eq!(top_cause(&s, "evt-y-crash").event_id, "evt-y-oom");
    // Probe failures ← the OOMKill, ranked above the crash loop in between.
    for (unhealthy, oom, crash) in [
        ("evt-x-unhealthy", "evt-x-oom", "evt-x-crash"),
        ("evt-y-unhealthy", "evt-y-oom", "evt-y-crash"),
    ] {
        let causes = s.rca(unhealthy, 10).unwrap();
        assert_eq!(causes[0].event_id, oom, "{unhealthy}: {causes:#?}");
        assert_eq!(causes[1].event_id, crash, "{unhealthy}");
        assert!(causes
            .windows(2)
            .all(|w| w[0].confidence >= w[1].confidence));
    }
    // Error logs ← the OOMKill of their pod.
    for (p, oom) in [
        ("checkout-7d9f-x", "evt-x-oom"),
        ("checkout-7d9f-y", "evt-y-oom"),
    ] {
        for id in log_ids(&inputs, p) {
            assert_eq!(top_cause(&s, &id).event_id, oom, "log {id} of {p}");
        }
    }
    // The other checkout pod's OOMKill is a candidate too, two hops away, ranked lower.
    let causes = s.rca("evt-y-unhealthy", 10).unwrap();
    let sibling = causes
        .iter()
        .find(|c| c.event_id == "evt-x-oom")
        .expect("sibling cause");
    assert_eq!(sibling.hops, 2);
    assert_eq!(sibling.path.len(), 3);
    assert_eq!(sibling.path.first(), Some(&pod("checkout-7d9f-x")));
    assert_eq!(sibling.path.last(), Some(&pod("checkout-7d9f-y")));
    // node-1 is too far from checkout to be a candidate.
    assert!(causes.iter().all(|c| c.event_id != "evt-node1-notready"));
    // The root causes have no causes of their own in the window.
    assert!(s.rca("evt-node1-notready", 10).unwrap().is_empty());

    // Each checkout pod's two error lines form an incident.
    let incidents = s.incidents().unwrap();
    assert_eq!(incidents.len(), 2, "{incidents:#?}");
    for inc in &incidents {
        assert_eq!(inc.episodes, 2);
        assert_eq!(inc.max_severity, "ERROR");
        let events = s.incident_events(&inc.id).unwrap();
        assert_eq!(events.len(), 2);
        assert!(events
            .iter()
            .all(|e| e.etype == "k8s.log" && e.incident.as_deref() == Some(inc.id.as_str())));
    }
    let stats = s.stats().unwrap();
    assert_eq!(
        stats,
        GraphStats {
            resources: 13,
            episodes: 16,
            incidents: 2,
            topology_edges: 15,
            about_edges: 16,
            potential_cause_edges: stats.potential_cause_edges,
            part_of_edges: 4,
        }
    );
    assert!(stats.potential_cause_edges > 20);
    assert!(s.rca("no-such-event", 10).unwrap().is_empty());
    assert!(s
        .incident_events("inc-0000000000000000")
        .unwrap()
        .is_empty());
}

#[test]
fn topology_arriving_after_the_events_gives_the_same_causes() {
    let inputs = incident_inputs();
    let mut in_order = store();
    in_order.apply(&inputs).unwrap();
    let (state, episodes): (Vec<_>, Vec<_>) = inputs
        .iter()
        .cloned()
        .partition(|i| !matches!(i, GraphInput::Event(_) | GraphInput::Log(_)));
    let mut late = store();
    for e in episodes.iter().rev() {
        late.apply(std::slice::from_ref(e)).unwrap();
    }
    late.apply(&state).unwrap();
    assert_eq!(snapshot(&late, &inputs), snapshot(&in_order, &inputs));
}

#[test]
fn a_uid_and_a_kind_namespace_name_resolve_to_one_resource() {
    let mut s = store();
    s.apply(&[
        resource("Pod", "api-1"),
        // by uid only
        event(
            "e1",
            0,
            "BackOff",
            true,
            "Pod",
            "",
            Some("uid-api-1"),
            "back-off",
        ),
        // by name only
        event(
            "e2",
            5,
            "Unhealthy",
            true,
            "Pod",
            "api-1",
            None,
            "probe failed",
        ),
    ])
    .unwrap();
    for id in ["e1", "e2"] {
        assert_eq!(
            s.episode(id).unwrap().unwrap().resource.as_deref(),
            Some("pod:shop:api-1")
        );
    }
    let stats = s.stats().unwrap();
    assert_eq!((stats.resources, stats.about_edges), (1, 2));
    assert_eq!(top_cause(&s, "e2").event_id, "e1");
}

#[test]
fn an_edge_before_the_resource_creates_a_placeholder_that_the_snapshot_fills() {
    let mut s = store();
    s.apply(&[edge(&pod("api-1"), "node:node-1", "RUNS_ON")])
        .unwrap();
    let before = s.stats().unwrap();
    assert_eq!((before.resources, before.topology_edges), (2, 1));
    s.apply(&[resource("Pod", "api-1"), resource("Node", "node-1")])
        .unwrap();
    let after = s.stats().unwrap();
    assert_eq!((after.resources, after.topology_edges), (2, 1));
    // An event naming the node by uid only lands on the same node.
    s.apply(&[
        event(
            "n1",
            0,
            "NodeNotReady",
            false,
            "Node",
            "",
            Some("uid-node-1"),
            "not ready",
        ),
        pod_event("p1", 30, "Evicted", true, "api-1", "evicted"),
    ])
    .unwrap();
    assert_eq!(
        s.episode("n1").unwrap().unwrap().resource.as_deref(),
        Some("node:node-1")
    );
    assert_eq!(s.stats().unwrap().resources, 2);
    let top = top_cause(&s, "p1");
    assert_eq!((top.event_id.as_str(), top.hops), ("n1", 1));
}

#[test]
fn a_uid_only_episode_before_the_snapshot_moves_to_the_named_resource() {
    let mut s = store();
    s.apply(&[
        event(
            "e1",
            0,
            "OOMKilled",
            true,
            "Pod",
            "",
            Some("uid-api-1"),
            "oom",
        ),
        event(
            "e2",
            10,
            "CrashLoopBackOff",
            true,
            "Pod",
            "",
            Some("uid-api-1"),
            "crash",
        ),
    ])
    .unwrap();
    assert_eq!(
        s.episode("e1").unwrap().unwrap().resource.as_deref(),
        Some("uid:uid-api-1")
    );
    assert_eq!(s.stats().unwrap().resources, 1);
    s.apply(&[resource("Pod", "api-1")]).unwrap();
    assert_eq!(
        s.episode("e1").unwrap().unwrap().resource.as_deref(),
        Some("pod:shop:api-1")
    );
    assert_eq!(
        s.stats().unwrap().resources,
        1,
        "the placeholder merged into the named node"
    );
    let top = top_cause(&s, "e2");
    assert_eq!(top.event_id, "e1");
    assert_eq!(top.path, vec![pod("api-1")]);
}

#[test]
fn conflicting_uid_claims_settle_the_same_in_any_order() {
    let claim_a = event("ea", 0, "BackOff", true, "Pod", "a", Some("uid-x"), "x");
    let claim_b = event("eb", 1, "BackOff", true, "Pod", "b", Some("uid-x"), "x");
    let by_uid = event("eu", 2, "BackOff", true, "Pod", "", Some("uid-x"), "x");
    let snapshot_b = {
        let v =
            json!({"op": "UPSERT", "kind": "Pod", "uid": "uid-x", "namespace": NS, "name": "b"});
        decode(STATE_K8S_RESOURCE, &format!("{CLIENT}::Pod:uid-x"), Some(v)).unwrap()
    };
    let orders = [
        vec![claim_a.clone(), claim_b.clone(), by_uid.clone()],
        vec![by_uid.clone(), claim_b.clone(), claim_a.clone()],
        vec![claim_b.clone(), by_uid.clone(), claim_a.clone()],
    ];
    for order in &orders {
        let mut s = store();
        for i in order {
            s.apply(std::slice::from_ref(i)).unwrap();
        }
        // Between events' word, the smaller name wins.
        assert_eq!(
            s.episode("eu").unwrap().unwrap().resource.as_deref(),
            Some("pod:shop:a")
        );
        // A snapshot's word beats any event's.
        s.apply(std::slice::from_ref(&snapshot_b)).unwrap();
        assert_eq!(
            s.episode("eu").unwrap().unwrap().resource.as_deref(),
            Some("pod:shop:b")
        );
        assert_eq!(s.stats().unwrap().resources, 2);
    }
}

#[test]
fn deleting_a_resource_removes_it_and_its_topology_edges() {
    let mut s = store();
    s.apply(&[
        resource("Node", "node-1"),
        resource("Pod", "api-1"),
        resource("Service", "api"),
        edge(&pod("api-1"), "node:node-1", "RUNS_ON"),
        edge("service:shop:api", &pod("api-1"), "SELECTS"),
    ])
    .unwrap();
    let before = s.stats().unwrap();
    assert_eq!((before.resources, before.topology_edges), (3, 2));
    s.apply(&[delete_resource("Pod", "api-1")]).unwrap();
    let after = s.stats().unwrap();
    assert_eq!((after.resources, after.topology_edges), (2, 0));
    // A redelivered snapshot or edge does not bring the deleted pod back.
    s.apply(&[
        resource("Pod", "api-1"),
        edge(&pod("api-1"), "node:node-1", "RUNS_ON"),
    ])
    .unwrap();
    assert_eq!(s.stats().unwrap(), after);
    // An edge tombstone removes the edge; the resources stay.
    s.apply(&[
        delete_edge("service:shop:api", &pod("api-1")),
        delete_resource("Pod", "api-1"),
    ])
    .unwrap();
    assert_eq!(s.stats().unwrap(), after);
    let mut t = store();
    t.apply(&[
        resource("Node", "node-1"),
        resource("Pod", "api-2"),
        edge(&pod("api-2"), "node:node-1", "RUNS_ON"),
        delete_edge(&pod("api-2"), "node:node-1"),
    ])
    .unwrap();
    let stats = t.stats().unwrap();
    assert_eq!((stats.resources, stats.topology_edges), (2, 0));
    // A deletion seen before the snapshot (replay interleaving) still wins.
    let mut u = store();
    u.apply(&[delete_resource("Pod", "api-3"), resource("Pod", "api-3")])
        .unwrap();
    assert_eq!(u.stats().unwrap().resources, 0);
}

#[test]
fn a_recreated_pod_with_the_same_name_keeps_the_resource_alive() {
    let recreated = || {
        let v = json!({"op": "UPSERT", "at": at(60), "kind": "Pod", "uid": "uid-web-0-new", "namespace": NS, "name": "web-0"});
        decode(
            STATE_K8S_RESOURCE,
            &format!("{CLIENT}::Pod:uid-web-0-new"),
            Some(v),
        )
        .unwrap()
    };
    let orders = [
        vec![
            resource("Pod", "web-0"),
            delete_resource("Pod", "web-0"),
            recreated(),
        ],
        vec![
            resource("Pod", "web-0"),
            recreated(),
            delete_resource("Pod", "web-0"),
        ],
        vec![
            recreated(),
            resource("Pod", "web-0"),
            delete_resource("Pod", "web-0"),
        ],
    ];
    for inputs in orders {
        let mut s = store();
        for i in &inputs {
            s.apply(std::slice::from_ref(i)).unwrap();
        }
        assert_eq!(s.stats().unwrap().resources, 1);
    }
}

#[test]
fn three_repeats_within_five_minutes_escalate_severity() {
    let backoffs: Vec<GraphInput> = (0..4)
        .map(|i| {
            pod_event(
                &format!("b{i}"),
                i * 60,
                "BackOff",
                true,
                "api-1",
                "Back-off restarting failed container",
            )
        })
        .collect();
    for order in [backoffs.clone(), backoffs.iter().rev().cloned().collect()] {
        let mut s = store();
        for i in &order {
            s.apply(std::slice::from_ref(i)).unwrap();
        }
        let sev = |id: &str| s.episode(id).unwrap().unwrap();
        assert_eq!(sev("b0").severity, "WARNING");
        assert_eq!(sev("b1").severity, "WARNING");
        assert_eq!(sev("b2").severity, "ERROR");
        assert!(sev("b2").escalated);
        assert_eq!(sev("b2").base_severity, "WARNING");
        assert_eq!(sev("b3").severity, "ERROR");
        // Two escalated episodes within the window make an incident.
        let incidents = s.incidents().unwrap();
        assert_eq!(incidents.len(), 1);
        let members: Vec<String> = s
            .incident_events(&incidents[0].id)
            .unwrap()
            .into_iter()
            .map(|e| e.event_id)
            .collect();
        assert_eq!(members, vec!["b2", "b3"]);
    }
    // Repeats spread over more than five minutes do not escalate.
    let mut s = store();
    s.apply(&[
        pod_event("c0", 0, "BackOff", true, "api-1", "x"),
        pod_event("c1", 200, "BackOff", true, "api-1", "x"),
        pod_event("c2", 400, "BackOff", true, "api-1", "x"),
    ])
    .unwrap();
    assert_eq!(s.episode("c2").unwrap().unwrap().severity, "WARNING");
}

#[test]
fn error_episodes_close_in_time_on_one_resource_form_incidents() {
    let mut s = store();
    let lines = [
        (0, "ERROR one"),
        (300, "ERROR two"),
        (300 + 20 * 60, "ERROR three, alone"),
        (7200, "ERROR four"),
        (7210, "FATAL five: panic: boom"),
    ];
    let logs: Vec<GraphInput> = lines
        .iter()
        .map(|(t, m)| log("api-1", *t, m).unwrap())
        .collect();
    s.apply(&logs[..2]).unwrap();
    assert_eq!(s.incidents().unwrap().len(), 1);
    s.apply(&logs[2..]).unwrap();
    let incidents = s.incidents().unwrap();
    assert_eq!(incidents.len(), 2, "{incidents:#?}");
    assert_eq!(incidents[0].max_severity, "FATAL", "latest first");
    assert_eq!(incidents.iter().map(|i| i.episodes).sum::<u64>(), 4);
    assert_eq!(s.stats().unwrap().part_of_edges, 4);
    let alone = s.episode(match &logs[2] {
        GraphInput::Log(l) => &l.event_id,
        _ => unreachable!(),
    });
    assert_eq!(alone.unwrap().unwrap().incident, None);
    // A line bridging the gap merges the first two clusters into one incident.
    s.apply(&[log("api-1", 300 + 10 * 60, "ERROR bridge").unwrap()])
        .unwrap();
    let incidents = s.incidents().unwrap();
    assert_eq!(incidents.len(), 2);
    assert_eq!(incidents[1].episodes, 4);
    assert_eq!(s.stats().unwrap().part_of_edges, 6);
}

#[test]
fn redelivered_batches_change_nothing() {
    let inputs = incident_inputs();
    let mut s = store();
    let first = s.apply(&inputs).unwrap();
    assert!(first.graph_items() > inputs.len() as u64);
    let stats = s.stats().unwrap();
    let again = s.apply(&inputs).unwrap();
    assert_eq!(again.episodes_written, 0);
    assert_eq!(again.causes_written, 0);
    assert_eq!(again.topology_written, 0);
    assert_eq!(
        again.incidents_written + again.part_of_written + again.escalations_written,
        0
    );
    assert_eq!(s.stats().unwrap(), stats);
}

#[test]
fn a_newer_version_of_an_event_replaces_the_older_in_any_order() {
    let v1 = pod_event("e", 0, "BackOff", true, "api-1", "back-off");
    let v2 = match &v1 {
        GraphInput::Event(e) => {
            let mut e = e.clone();
            e.event_time += Duration::seconds(120);
            e.count = 4;
            GraphInput::Event(e)
        }
        _ => unreachable!(),
    };
    let cause = pod_event("oom", 100, "OOMKilled", true, "api-1", "oom");
    let mut a = store();
    a.apply(&[cause.clone(), v1.clone(), v2.clone()]).unwrap();
    let mut b = store();
    b.apply(&[v2, cause]).unwrap();
    b.apply(&[v1]).unwrap();
    for s in [&a, &b] {
        assert_eq!(s.episode("e").unwrap().unwrap().event_time, at(120));
        assert_eq!(top_cause(s, "e").event_id, "oom");
        assert_eq!(s.stats().unwrap().episodes, 2);
    }
}

/// Everything a query can see, for comparing two stores.
#[derive(Debug, PartialEq)]
struct Snapshot {
    stats: GraphStats,
    rca: Vec<(String, Vec<Candidate>)>,
    episodes: Vec<Option<EpisodicView>>,
    incidents: Vec<(IncidentSummary, Vec<EpisodicView>)>,
}

fn episode_ids(inputs: &[GraphInput]) -> Vec<String> {
    let mut ids: Vec<String> = inputs
        .iter()
        .filter_map(|i| match i {
            GraphInput::Event(e) | GraphInput::Log(e) => Some(e.event_id.clone()),
            _ => None,
        })
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

fn snapshot(s: &SqliteGraphStore, inputs: &[GraphInput]) -> Snapshot {
    let ids = episode_ids(inputs);
    Snapshot {
        stats: s.stats().unwrap(),
        rca: ids
            .iter()
            .map(|id| (id.clone(), s.rca(id, 100).unwrap()))
            .collect(),
        episodes: ids.iter().map(|id| s.episode(id).unwrap()).collect(),
        incidents: s
            .incidents()
            .unwrap()
            .into_iter()
            .map(|i| {
                let events = s.incident_events(&i.id).unwrap();
                (i, events)
            })
            .collect(),
    }
}

fn temp_path(tag: &str) -> std::path::PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("kg-graph-test-{}-{tag}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(format!("graph-{CLIENT}.sqlite"))
}

#[test]
fn a_builder_killed_mid_stream_and_restarted_ends_with_the_same_graph() {
    let inputs = incident_inputs();
    let batches: Vec<&[GraphInput]> = inputs.chunks(7).collect();
    let reference_path = temp_path("reference");
    let mut reference = SqliteGraphStore::open(&reference_path).unwrap();
    for b in &batches {
        reference.apply(b).unwrap();
    }
    let expected = snapshot(&reference, &inputs);

    let path = temp_path("crash");
    {
        let mut first_run = SqliteGraphStore::open(&path).unwrap();
        for b in &batches[..5] {
            first_run.apply(b).unwrap();
        }
        // Killed here: batches 3 and 4 were written but their offsets never committed.
    }
    let mut second_run = SqliteGraphStore::open(&path).unwrap();
    // Redelivery from the last committed offset, interleaved differently.
    let mut replay: Vec<GraphInput> = batches[3..].concat();
    replay.reverse();
    for b in replay.chunks(5) {
        second_run.apply(b).unwrap();
    }
    assert_eq!(snapshot(&second_run, &inputs), expected);
    drop(second_run);
    let reopened = SqliteGraphStore::open(&path).unwrap();
    assert_eq!(snapshot(&reopened, &inputs), expected);
    for p in [reference_path, path] {
        let _ = std::fs::remove_dir_all(p.parent().unwrap());
    }
}

#[test]
fn the_file_path_reads_what_the_recent_index_reads() {
    let inputs = incident_inputs();
    let mut cached = store();
    cached.apply(&inputs).unwrap();
    let mut uncached = store();
    uncached.disable_recent_index();
    uncached.apply(&inputs).unwrap();
    assert_eq!(snapshot(&uncached, &inputs), snapshot(&cached, &inputs));
}

/// The key a record has on its topic; records with one key keep their order (one
/// partition), records with different keys may interleave in any order.
fn key_of(i: &GraphInput) -> String {
    match i {
        GraphInput::Event(e) | GraphInput::Log(e) => format!("episode:{}", e.event_id),
        GraphInput::ResourceUpsert(r) => format!("object:{}", r.uid),
        GraphInput::ResourceDelete { uid, .. } => format!("object:{uid}"),
        GraphInput::EdgeUpsert(e) => format!("edge:{}->{}", e.from, e.to),
        GraphInput::EdgeDelete { from, to } => format!("edge:{from}->{to}"),
    }
}

/// A small deterministic generator for the shuffles (proptest draws the seed).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Shuffles across keys, keeping each key's records in their order.
fn interleave(inputs: &[GraphInput], rng: &mut Rng) -> Vec<GraphInput> {
    let mut order: Vec<usize> = (0..inputs.len()).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.below(i + 1));
    }
    let mut per_key: HashMap<String, std::collections::VecDeque<&GraphInput>> = HashMap::new();
    for i in inputs {
        per_key.entry(key_of(i)).or_default().push_back(i);
    }
    order
        .into_iter()
        .map(|i| {
            per_key
                .get_mut(&key_of(&inputs[i]))
                .unwrap()
                .pop_front()
                .unwrap()
                .clone()
        })
        .collect()
}

/// Applies in batches of random sizes, with random redeliveries of episodes.
fn apply_randomly(s: &mut SqliteGraphStore, inputs: &[GraphInput], rng: &mut Rng) {
    let mut at = 0;
    while at < inputs.len() {
        let n = 1 + rng.below(12);
        let mut batch: Vec<GraphInput> = inputs[at..(at + n).min(inputs.len())].to_vec();
        if rng.below(3) == 0 && at > 0 {
            let dup = inputs[rng.below(at)].clone();
            if matches!(dup, GraphInput::Event(_) | GraphInput::Log(_)) {
                batch.insert(rng.below(batch.len() + 1), dup);
            }
        }
        s.apply(&batch).unwrap();
        at += n;
    }
}

/// The incident plus what makes identity and deletion interesting: uid-only episodes,
/// an edge before its resources, a deletion, an edge tombstone, a newer event version,
/// escalating repeats.
fn property_inputs() -> Vec<GraphInput> {
    let mut inputs = incident_inputs();
    inputs.extend([
        event(
            "evt-uid-only-1",
            140,
            "BackOff",
            true,
            "Pod",
            "",
            Some("uid-checkout-7d9f-x"),
            "back-off",
        ),
        event(
            "evt-uid-only-2",
            145,
            "BackOff",
            true,
            "Pod",
            "",
            Some("uid-late-pod"),
            "back-off",
        ),
        event(
            "evt-uid-only-3",
            150,
            "BackOff",
            true,
            "Pod",
            "",
            Some("uid-late-pod"),
            "back-off",
        ),
        event(
            "evt-uid-only-4",
            155,
            "BackOff",
            true,
            "Pod",
            "",
            Some("uid-late-pod"),
            "back-off",
        ),
        edge_at(&pod("late-pod"), "node:node-2", "RUNS_ON", 100),
        resource("Pod", "late-pod"),
        resource("Pod", "cart-5c4d-c"),
        edge_at(
            "replicaset:shop:cart-5c4d",
            &pod("cart-5c4d-c"),
            "CONTROLS",
            40,
        ),
        pod_event(
            "evt-cart-c-failed",
            45,
            "FailedScheduling",
            true,
            "cart-5c4d-c",
            "0/2 nodes are available",
        ),
        delete_resource("Pod", "cart-5c4d-b"),
        delete_edge(&pod("cart-5c4d-b"), "node:node-1"),
    ]);
    // A newer version of the crash loop event (same id, later, counted again).
    if let GraphInput::Event(e) = pod_event(
        "evt-x-crash",
        80,
        "CrashLoopBackOff",
        true,
        "checkout-7d9f-x",
        "Back-off restarting failed container app",
    ) {
        let mut e = e;
        e.event_time += Duration::seconds(150);
        e.count = 5;
        inputs.push(GraphInput::Event(e));
    }
    inputs
}

fn reference_snapshot() -> &'static Snapshot {
    static REF: std::sync::OnceLock<Snapshot> = std::sync::OnceLock::new();
    REF.get_or_init(|| {
        let inputs = property_inputs();
        let mut s = store();
        s.apply(&inputs).unwrap();
        snapshot(&s, &inputs)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn the_graph_does_not_depend_on_arrival_order_batching_or_redelivery(seed in 1u64.., crash_at in 0usize..100, replay_back in 0usize..40) {
        let inputs = property_inputs();
        let mut rng = Rng(seed);
        let shuffled = interleave(&inputs, &mut rng);
        let mut s = store();
        if rng.below(4) == 0 {
            s.disable_recent_index();
        }
        // Run until a crash, then redeliver from an earlier point, interleaved anew.
        let crash = crash_at.min(shuffled.len());
        apply_randomly(&mut s, &shuffled[..crash], &mut rng);
        let from = crash.saturating_sub(replay_back);
        let replay = interleave(&shuffled[from..], &mut rng);
        apply_randomly(&mut s, &replay, &mut rng);
        let got = snapshot(&s, &inputs);
        let expected = reference_snapshot();
        prop_assert_eq!(&got.stats, &expected.stats);
        prop_assert_eq!(&got, expected);
    }
}
