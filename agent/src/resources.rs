//! What the agent makes of one Kubernetes object: its `state.k8s.resource` snapshot and
//! its `state.k8s.topology` edges, in the shapes `protocol.md` gives. Pure functions of
//! the object, one [`Observe`] impl per watched kind, so every mapping is unit-tested
//! without an API server.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Endpoints, Node, Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Serialize;
use serde_json::{json, Value};

/// The kinds whose state and topology the agent streams (the ones the graph uses).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Pod,
    Node,
    Service,
    Endpoints,
    Deployment,
    ReplicaSet,
    StatefulSet,
    DaemonSet,
    Job,
}

impl Kind {
    pub const ALL: [Kind; 9] = [
        Kind::Pod,
        Kind::Node,
        Kind::Service,
        Kind::Endpoints,
        Kind::Deployment,
        Kind::ReplicaSet,
        Kind::StatefulSet,
        Kind::DaemonSet,
        Kind::Job,
    ];

    /// The Kubernetes kind.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Pod => "Pod",
            Kind::Node => "Node",
            Kind::Service => "Service",
            Kind::Endpoints => "Endpoints",
            Kind::Deployment => "Deployment",
            Kind::ReplicaSet => "ReplicaSet",
            Kind::StatefulSet => "StatefulSet",
            Kind::DaemonSet => "DaemonSet",
            Kind::Job => "Job",
        }
    }

    /// The API resource (plural) and group, for RBAC messages.
    pub fn api_resource(self) -> (&'static str, &'static str) {
        match self {
            Kind::Pod => ("", "pods"),
            Kind::Node => ("", "nodes"),
            Kind::Service => ("", "services"),
            Kind::Endpoints => ("", "endpoints"),
            Kind::Deployment => ("apps", "deployments"),
            Kind::ReplicaSet => ("apps", "replicasets"),
            Kind::StatefulSet => ("apps", "statefulsets"),
            Kind::DaemonSet => ("apps", "daemonsets"),
            Kind::Job => ("batch", "jobs"),
        }
    }

    pub fn namespaced(self) -> bool {
        self != Kind::Node
    }

    /// Endpoints are not a resource of the graph: they only say which pods a service
    /// selects (its `SELECTS` edges).
    pub fn has_snapshot(self) -> bool {
        self != Kind::Endpoints
    }
}

/// A topology edge type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum EdgeType {
    /// pod → node
    #[serde(rename = "RUNS_ON")]
    RunsOn,
    /// service → pod
    #[serde(rename = "SELECTS")]
    Selects,
    /// owner → owned
    #[serde(rename = "CONTROLS")]
    Controls,
}

/// An edge between two resources named `kind:ns:name` (`kind:name` when cluster-scoped).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Edge {
    pub from: String,
    pub to: String,
    pub edge_type: EdgeType,
}

impl Edge {
    /// `edge:<from>-><to>`: the id and, behind the tenant, the Kafka key.
    pub fn id(&self) -> String {
        format!("edge:{}->{}", self.from, self.to)
    }
}

/// The topology's name of a resource.
pub fn resource_name(kind: &str, namespace: Option<&str>, name: &str) -> String {
    let kind = kind.to_ascii_lowercase();
    match namespace.filter(|ns| !ns.is_empty()) {
        Some(ns) if kind != "node" => format!("{kind}:{ns}:{name}"),
        _ => format!("{kind}:{name}"),
    }
}

/// An owner reference as the snapshot carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OwnerRef {
    pub kind: String,
    pub name: String,
}

/// A `state.k8s.resource` snapshot, without the fields the sender adds (`op`, `at`,
/// `client_id`, `cluster`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Snapshot {
    pub kind: &'static str,
    pub uid: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    #[serde(rename = "ownerRefs")]
    pub owner_refs: Vec<OwnerRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(rename = "podIP", skip_serializing_if = "Option::is_none")]
    pub pod_ip: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    pub status: Value,
    pub spec: Value,
}

/// Everything the agent derives from one version of one object.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    pub kind: Kind,
    pub uid: String,
    pub snapshot: Option<Snapshot>,
    pub edges: Vec<Edge>,
}

/// One watched kind's mapping.
pub trait Observe {
    const KIND: Kind;
    fn meta(&self) -> &ObjectMeta;
    fn snapshot_parts(&self) -> SnapshotParts;
    /// Edges other than `CONTROLS` from owners, which every kind gets.
    fn own_edges(&self) -> Vec<Edge> {
        Vec::new()
    }

    /// The snapshot and edges; `None` for an object without a uid or name (never sent by
    /// a real API server, but a watch event is input like any other).
    fn observe(&self) -> Option<Observed> {
        let meta = self.meta();
        let uid = meta.uid.clone().filter(|uid| !uid.is_empty())?;
        let name = meta.name.clone().filter(|name| !name.is_empty())?;
        let namespace = meta.namespace.clone().filter(|ns| !ns.is_empty());
        let owner_refs: Vec<OwnerRef> = meta
            .owner_references
            .iter()
            .flatten()
            .map(|owner| OwnerRef {
                kind: owner.kind.clone(),
                name: owner.name.clone(),
            })
            .collect();
        let this = resource_name(Self::KIND.as_str(), namespace.as_deref(), &name);
        let mut edges: Vec<Edge> = owner_refs
            .iter()
            .map(|owner| Edge {
                from: resource_name(&owner.kind, namespace.as_deref(), &owner.name),
                to: this.clone(),
                edge_type: EdgeType::Controls,
            })
            .collect();
        if Self::KIND == Kind::Endpoints {
            // Endpoints are named after their service; they have no node of their own.
            edges.clear();
        }
        edges.extend(self.own_edges());
        edges.sort();
        edges.dedup();
        let snapshot = Self::KIND.has_snapshot().then(|| {
            let parts = self.snapshot_parts();
            Snapshot {
                kind: Self::KIND.as_str(),
                uid: uid.clone(),
                namespace: namespace.clone(),
                name,
                labels: meta.labels.clone().unwrap_or_default(),
                owner_refs,
                node: parts.node,
                pod_ip: parts.pod_ip,
                image: parts.image,
                replicas: parts.replicas,
                status: parts.status,
                spec: parts.spec,
            }
        });
        Some(Observed {
            kind: Self::KIND,
            uid,
            snapshot,
            edges,
        })
    }
}

/// The kind-specific part of a snapshot.
#[derive(Debug, Default)]
pub struct SnapshotParts {
    pub node: Option<String>,
    pub pod_ip: Option<String>,
    pub image: Option<String>,
    pub replicas: Option<i32>,
    pub status: Value,
    pub spec: Value,
}

impl Observe for Pod {
    const KIND: Kind = Kind::Pod;
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn snapshot_parts(&self) -> SnapshotParts {
        let spec = self.spec.as_ref();
        let status = self.status.as_ref();
        let containers = status.and_then(|s| s.container_statuses.as_ref());
        let restart_count: i32 = containers
            .map(|cs| cs.iter().map(|c| c.restart_count).sum())
            .unwrap_or(0);
        let container_ready = containers
            .map(|cs| !cs.is_empty() && cs.iter().all(|c| c.ready))
            .unwrap_or(false);
        // The reason a container is waiting or was last terminated (CrashLoopBackOff,
        // OOMKilled, ...): what an operator looks at first.
        let reason = containers.and_then(|cs| {
            cs.iter().find_map(|c| {
                let state = c.state.as_ref()?;
                state
                    .waiting
                    .as_ref()
                    .and_then(|w| w.reason.clone())
                    .or_else(|| state.terminated.as_ref().and_then(|t| t.reason.clone()))
            })
        });
        let mut status_json = json!({
            "phase": status.and_then(|s| s.phase.clone()),
            "restartCount": restart_count,
            "containerReady": container_ready,
        });
        if let Some(reason) = reason {
            status_json["reason"] = json!(reason);
        }
        SnapshotParts {
            node: spec.and_then(|s| s.node_name.clone()),
            pod_ip: status.and_then(|s| s.pod_ip.clone()),
            image: spec.and_then(|s| s.containers.first().and_then(|c| c.image.clone())),
            replicas: None,
            status: status_json,
            spec: json!({
                "containers": spec.map(|s| s.containers.iter().map(|c| json!({"name": c.name, "image": c.image})).collect::<Vec<_>>()).unwrap_or_default(),
                "serviceAccountName": spec.and_then(|s| s.service_account_name.clone()),
            }),
        }
    }
    fn own_edges(&self) -> Vec<Edge> {
        let (Some(name), Some(node)) = (
            self.metadata.name.as_deref(),
            self.spec.as_ref().and_then(|s| s.node_name.as_deref()),
        ) else {
            return Vec::new();
        };
        vec![Edge {
            from: resource_name("Pod", self.metadata.namespace.as_deref(), name),
            to: resource_name("Node", None, node),
            edge_type: EdgeType::RunsOn,
        }]
    }
}

impl Observe for Node {
    const KIND: Kind = Kind::Node;
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn snapshot_parts(&self) -> SnapshotParts {
        let conditions = self.status.as_ref().and_then(|s| s.conditions.as_ref());
        // Only the condition statuses, not their heartbeat times: a node's status is
        // rewritten every few seconds, and a snapshot must change only when something does.
        let conditions: BTreeMap<String, String> = conditions
            .into_iter()
            .flatten()
            .map(|c| (c.type_.clone(), c.status.clone()))
            .collect();
        let ready = conditions.get("Ready").map(|s| s == "True");
        SnapshotParts {
            status: json!({"ready": ready, "conditions": conditions}),
            spec: json!({
                "unschedulable": self.spec.as_ref().and_then(|s| s.unschedulable).unwrap_or(false),
            }),
            ..SnapshotParts::default()
        }
    }
}

impl Observe for Service {
    const KIND: Kind = Kind::Service;
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn snapshot_parts(&self) -> SnapshotParts {
        let spec = self.spec.as_ref();
        SnapshotParts {
            status: json!({}),
            spec: json!({
                "type": spec.and_then(|s| s.type_.clone()),
                "clusterIP": spec.and_then(|s| s.cluster_ip.clone()),
                "selector": spec.and_then(|s| s.selector.clone()),
            }),
            ..SnapshotParts::default()
        }
    }
}

impl Observe for Endpoints {
    const KIND: Kind = Kind::Endpoints;
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn snapshot_parts(&self) -> SnapshotParts {
        SnapshotParts::default()
    }
    /// `SELECTS` from the service to every pod among its addresses, ready or not: a
    /// failing pod is exactly the one whose service an operator needs to see.
    fn own_edges(&self) -> Vec<Edge> {
        let Some(service) = self.metadata.name.as_deref() else {
            return Vec::new();
        };
        let namespace = self.metadata.namespace.as_deref();
        let from = resource_name("Service", namespace, service);
        self.subsets
            .iter()
            .flatten()
            .flat_map(|subset| {
                subset
                    .addresses
                    .iter()
                    .flatten()
                    .chain(subset.not_ready_addresses.iter().flatten())
            })
            .filter_map(|address| {
                let target = address.target_ref.as_ref()?;
                if target.kind.as_deref() != Some("Pod") {
                    return None;
                }
                let pod = target.name.as_deref()?;
                let pod_namespace = target.namespace.as_deref().or(namespace);
                Some(Edge {
                    from: from.clone(),
                    to: resource_name("Pod", pod_namespace, pod),
                    edge_type: EdgeType::Selects,
                })
            })
            .collect()
    }
}

macro_rules! workload {
    ($type:ty, $kind:expr, template: |$sp:ident| $template:expr, status: |$s:ident| $status:expr) => {
        impl Observe for $type {
            const KIND: Kind = $kind;
            fn meta(&self) -> &ObjectMeta {
                &self.metadata
            }
            fn snapshot_parts(&self) -> SnapshotParts {
                let spec = self.spec.as_ref();
                let $s = self.status.as_ref();
                let template = spec
                    .and_then(|$sp| $template)
                    .and_then(|t: &k8s_openapi::api::core::v1::PodTemplateSpec| t.spec.as_ref());
                SnapshotParts {
                    image: template.and_then(|t| t.containers.first().and_then(|c| c.image.clone())),
                    replicas: workload!(@replicas spec),
                    status: $status,
                    spec: json!({}),
                    ..SnapshotParts::default()
                }
            }
        }
    };
    (@replicas $spec:ident) => {
        $spec.and_then(|s| s.replicas)
    };
}

workload!(Deployment, Kind::Deployment, template: |s| Some(&s.template), status: |s| json!({
    "readyReplicas": s.and_then(|s| s.ready_replicas).unwrap_or(0),
    "availableReplicas": s.and_then(|s| s.available_replicas).unwrap_or(0),
    "updatedReplicas": s.and_then(|s| s.updated_replicas).unwrap_or(0),
}));
workload!(ReplicaSet, Kind::ReplicaSet, template: |s| s.template.as_ref(), status: |s| json!({
    "readyReplicas": s.and_then(|s| s.ready_replicas).unwrap_or(0),
    "availableReplicas": s.and_then(|s| s.available_replicas).unwrap_or(0),
}));
workload!(StatefulSet, Kind::StatefulSet, template: |s| Some(&s.template), status: |s| json!({
    "readyReplicas": s.and_then(|s| s.ready_replicas).unwrap_or(0),
    "currentReplicas": s.and_then(|s| s.current_replicas).unwrap_or(0),
}));

impl Observe for DaemonSet {
    const KIND: Kind = Kind::DaemonSet;
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn snapshot_parts(&self) -> SnapshotParts {
        let template = self.spec.as_ref().and_then(|s| s.template.spec.as_ref());
        let status = self.status.as_ref();
        SnapshotParts {
            image: template.and_then(|t| t.containers.first().and_then(|c| c.image.clone())),
            replicas: status.map(|s| s.desired_number_scheduled),
            status: json!({
                "numberReady": status.map(|s| s.number_ready).unwrap_or(0),
                "numberUnavailable": status.and_then(|s| s.number_unavailable).unwrap_or(0),
            }),
            spec: json!({}),
            ..SnapshotParts::default()
        }
    }
}

impl Observe for Job {
    const KIND: Kind = Kind::Job;
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn snapshot_parts(&self) -> SnapshotParts {
        let template = self
            .spec
            .as_ref()
            .map(|s| &s.template)
            .and_then(|t| t.spec.as_ref());
        let status = self.status.as_ref();
        SnapshotParts {
            image: template.and_then(|t| t.containers.first().and_then(|c| c.image.clone())),
            status: json!({
                "active": status.and_then(|s| s.active).unwrap_or(0),
                "succeeded": status.and_then(|s| s.succeeded).unwrap_or(0),
                "failed": status.and_then(|s| s.failed).unwrap_or(0),
            }),
            spec: json!({}),
            ..SnapshotParts::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_json<T: serde::de::DeserializeOwned>(value: Value) -> T {
        serde_json::from_value(value).expect("a valid object")
    }

    #[test]
    fn a_pod_has_a_snapshot_a_node_edge_and_an_owner_edge() {
        let pod: Pod = from_json(json!({
            "metadata": {"name": "api-7d9f-x", "namespace": "shop", "uid": "u-pod", "labels": {"app": "api"},
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "api-7d9f", "uid": "u-rs"}]},
            "spec": {"nodeName": "node-1", "containers": [{"name": "api", "image": "shop/api:1.2"}]},
            "status": {"phase": "Running", "podIP": "10.0.0.7", "containerStatuses": [
                {"name": "api", "image": "shop/api:1.2", "imageID": "", "ready": false, "restartCount": 4,
                 "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}
        }));
        let observed = pod.observe().unwrap();
        assert_eq!(observed.uid, "u-pod");
        let snapshot = observed.snapshot.unwrap();
        let json = serde_json::to_value(&snapshot).unwrap();
        assert_eq!(json["kind"], "Pod");
        assert_eq!(json["namespace"], "shop");
        assert_eq!(json["node"], "node-1");
        assert_eq!(json["podIP"], "10.0.0.7");
        assert_eq!(json["image"], "shop/api:1.2");
        assert_eq!(
            json["ownerRefs"][0],
            json!({"kind": "ReplicaSet", "name": "api-7d9f"})
        );
        assert_eq!(json["status"]["restartCount"], 4);
        assert_eq!(json["status"]["containerReady"], false);
        assert_eq!(json["status"]["reason"], "CrashLoopBackOff");
        assert_eq!(
            observed.edges,
            vec![
                Edge {
                    from: "pod:shop:api-7d9f-x".into(),
                    to: "node:node-1".into(),
                    edge_type: EdgeType::RunsOn
                },
                Edge {
                    from: "replicaset:shop:api-7d9f".into(),
                    to: "pod:shop:api-7d9f-x".into(),
                    edge_type: EdgeType::Controls
                },
            ]
        );
    }

    #[test]
    fn endpoints_give_selects_edges_and_no_snapshot() {
        let endpoints: Endpoints = from_json(json!({
            "metadata": {"name": "api", "namespace": "shop", "uid": "u-ep"},
            "subsets": [{"addresses": [{"ip": "10.0.0.7", "targetRef": {"kind": "Pod", "name": "api-1", "namespace": "shop"}}],
                         "notReadyAddresses": [{"ip": "10.0.0.8", "targetRef": {"kind": "Pod", "name": "api-2"}}]}]
        }));
        let observed = endpoints.observe().unwrap();
        assert!(observed.snapshot.is_none());
        let edges: Vec<(String, String)> = observed
            .edges
            .iter()
            .map(|e| (e.from.clone(), e.to.clone()))
            .collect();
        assert_eq!(
            edges,
            vec![
                ("service:shop:api".into(), "pod:shop:api-1".into()),
                ("service:shop:api".into(), "pod:shop:api-2".into()),
            ]
        );
        assert!(observed
            .edges
            .iter()
            .all(|e| e.edge_type == EdgeType::Selects));
    }

    #[test]
    fn a_node_snapshot_ignores_heartbeat_times() {
        let node = |heartbeat: &str| -> Node {
            from_json(json!({
                "metadata": {"name": "node-1", "uid": "u-node"},
                "status": {"conditions": [{"type": "Ready", "status": "True", "lastHeartbeatTime": heartbeat}]}
            }))
        };
        let a = node("2026-11-30T08:00:00Z").observe().unwrap();
        let b = node("2026-11-30T08:00:40Z").observe().unwrap();
        assert_eq!(a, b);
        let json = serde_json::to_value(a.snapshot.unwrap()).unwrap();
        assert_eq!(json["status"]["ready"], true);
        assert!(json.get("namespace").is_none());
    }

    #[test]
    fn workloads_carry_replicas_and_their_owner_edges() {
        let rs: ReplicaSet = from_json(json!({
            "metadata": {"name": "api-7d9f", "namespace": "shop", "uid": "u-rs",
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "api", "uid": "u-d"}]},
            "spec": {"replicas": 3, "selector": {}, "template": {"spec": {"containers": [{"name": "api", "image": "shop/api:1.2"}]}}},
            "status": {"replicas": 3, "readyReplicas": 2}
        }));
        let observed = rs.observe().unwrap();
        let snapshot = observed.snapshot.unwrap();
        assert_eq!(snapshot.replicas, Some(3));
        assert_eq!(snapshot.image.as_deref(), Some("shop/api:1.2"));
        assert_eq!(snapshot.status["readyReplicas"], 2);
        assert_eq!(observed.edges[0].from, "deployment:shop:api");
        assert_eq!(observed.edges[0].edge_type, EdgeType::Controls);
    }

    #[test]
    fn an_object_without_uid_or_name_is_not_observed() {
        let pod: Pod = from_json(json!({"metadata": {"name": "x"}}));
        assert!(pod.observe().is_none());
        let pod: Pod = from_json(json!({"metadata": {"uid": "u"}}));
        assert!(pod.observe().is_none());
    }

    #[test]
    fn cluster_scoped_names_never_carry_a_namespace() {
        assert_eq!(resource_name("Node", Some("default"), "n1"), "node:n1");
        assert_eq!(resource_name("Pod", Some("shop"), "p"), "pod:shop:p");
        assert_eq!(resource_name("Pod", None, "p"), "pod:p");
    }
}
