//! What the graph builder writes: [`GraphInput`], one per input record, and the resource
//! naming rules that let uids, `kind:ns:name` topology names and event subjects meet on
//! one node.

use chrono::{DateTime, Utc};
use kg_shared::records::{Etype, EventTypeAbstract, Severity, Subject};

/// Candidate causes lie at most this long before their effect (15 minutes).
pub const CAUSAL_WINDOW_MS: i64 = 15 * 60 * 1000;
/// Candidate causes lie on resources at most this many topology hops from the effect's.
pub const MAX_HOPS: u32 = 3;
/// At most this many POTENTIAL_CAUSE edges are kept per effect, the best ones.
pub const MAX_CAUSES_PER_EFFECT: usize = 8;
/// Repeats of one reason on one resource within this span escalate severity (5 minutes).
pub const ESCALATION_WINDOW_MS: i64 = 5 * 60 * 1000;
/// How many occurrences (the episode itself included) within
/// [`ESCALATION_WINDOW_MS`] escalate an episode's severity by one level.
pub const ESCALATION_REPEATS: usize = 3;
/// ERROR-or-worse episodes on one resource, each within [`CAUSAL_WINDOW_MS`] of the
/// previous one, form an incident when there are at least this many.
pub const INCIDENT_MIN_EPISODES: usize = 2;
/// A topology edge first seen at `at` takes part in the causal analysis of effects from
/// `at - TOPOLOGY_SLACK_MS` on: the agent reports an edge shortly after the resource's
/// first events, never hours before it exists.
pub const TOPOLOGY_SLACK_MS: i64 = CAUSAL_WINDOW_MS;

/// One decoded input record, ready for [`GraphStore::apply`](super::GraphStore::apply).
#[derive(Clone, Debug, PartialEq)]
pub enum GraphInput {
    /// A normalized Kubernetes event (`events.normalized`).
    Event(EpisodeInput),
    /// A high-signal log line (`logs.normalized`).
    Log(EpisodeInput),
    /// A resource snapshot (`state.k8s.resource`, `op: UPSERT`).
    ResourceUpsert(ResourceSnapshot),
    /// A resource deletion (`state.k8s.resource`: null value or `op: DELETE`). Kubernetes
    /// never reuses a uid, so a deletion is permanent for that object.
    ResourceDelete {
        /// The kind as sent (`Pod`).
        kind: String,
        /// The deleted object's uid.
        uid: String,
    },
    /// A topology edge (`state.k8s.topology`, `op: UPSERT`).
    EdgeUpsert(TopologyEdge),
    /// A topology edge removal (null value or `op: DELETE`), by canonical endpoint names.
    EdgeDelete {
        /// Canonical name of the source resource ([`canonical_name`]).
        from: String,
        /// Canonical name of the target resource.
        to: String,
    },
}

/// An episode: a Kubernetes event or a high-signal log line.
#[derive(Clone, Debug, PartialEq)]
pub struct EpisodeInput {
    /// The stable id (`event_id` of an event, `log_id` of a log line).
    pub event_id: String,
    /// `k8s.event` or `k8s.log`.
    pub etype: Etype,
    /// When it happened.
    pub event_time: DateTime<Utc>,
    /// Severity as sent (before escalation).
    pub severity: Severity,
    /// The event's reason; for a log line, the high-signal pattern it matched
    /// (`OOMKilled`, `CrashLoopBackOff`, `Unhealthy`, `ErrImagePull`, `Panic`) or its
    /// error type (`CONNECTION_REFUSED`, …).
    pub reason: Option<String>,
    /// The event's abstract type (events only).
    pub event_type_abstract: Option<EventTypeAbstract>,
    /// The message (a log line's text).
    pub message: Option<String>,
    /// The resource it is about.
    pub subject: Subject,
    /// How often the event repeated (1 for log lines).
    pub count: u64,
}

impl EpisodeInput {
    /// Milliseconds since the Unix epoch.
    pub fn time_ms(&self) -> i64 {
        self.event_time.timestamp_millis()
    }
}

/// A resource snapshot from `state.k8s.resource`.
#[derive(Clone, Debug, PartialEq)]
pub struct ResourceSnapshot {
    /// The kind as sent (`Pod`, `Node`, …).
    pub kind: String,
    /// The object's uid.
    pub uid: String,
    /// Its namespace; `None` for cluster-scoped kinds.
    pub namespace: Option<String>,
    /// Its name.
    pub name: String,
    /// The snapshot's `at`, when it had a usable one.
    pub at: Option<DateTime<Utc>>,
    /// The record as sent (JSON), kept for operators.
    pub raw: String,
}

impl ResourceSnapshot {
    /// The node name this snapshot describes.
    pub fn canonical_name(&self) -> String {
        resource_name(&self.kind, self.namespace.as_deref(), &self.name)
    }
}

/// A topology edge from `state.k8s.topology`.
#[derive(Clone, Debug, PartialEq)]
pub struct TopologyEdge {
    /// Canonical name of the source (`service:shop:checkout`).
    pub from: String,
    /// Canonical name of the target (`pod:shop:checkout-7d9f-abcde`).
    pub to: String,
    /// `RUNS_ON`, `SELECTS`, `CONTROLS` (any other type is kept as sent).
    pub edge_type: String,
    /// The record's `at`, when it had a usable one.
    pub at: Option<DateTime<Utc>>,
}

/// Kinds without a namespace. Their names never carry one, whatever an event says
/// (a Node's events carry the namespace `default`).
const CLUSTER_SCOPED: [&str; 14] = [
    "node",
    "namespace",
    "persistentvolume",
    "storageclass",
    "clusterrole",
    "clusterrolebinding",
    "customresourcedefinition",
    "priorityclass",
    "ingressclass",
    "runtimeclass",
    "csinode",
    "csidriver",
    "mutatingwebhookconfiguration",
    "validatingwebhookconfiguration",
];

/// The kinds the agent sends, in their usual spelling, by lowercase name.
const KNOWN_KINDS: [&str; 14] = [
    "Pod",
    "Node",
    "Service",
    "Deployment",
    "ReplicaSet",
    "DaemonSet",
    "StatefulSet",
    "Job",
    "CronJob",
    "Namespace",
    "Endpoints",
    "PersistentVolumeClaim",
    "PersistentVolume",
    "Ingress",
];

/// Whether resources of `kind` (any case) live outside namespaces.
pub fn is_cluster_scoped(kind: &str) -> bool {
    CLUSTER_SCOPED.iter().any(|k| k.eq_ignore_ascii_case(kind))
}

/// The display spelling of a kind: `pod` → `Pod`, `replicaset` → `ReplicaSet`; unknown
/// kinds as given.
pub fn display_kind(kind: &str) -> String {
    KNOWN_KINDS
        .iter()
        .find(|k| k.eq_ignore_ascii_case(kind))
        .map_or_else(|| kind.to_owned(), |k| (*k).to_owned())
}

/// The canonical node name of a resource, as the topology names it: lowercase kind,
/// namespace and name joined by `:`; cluster-scoped kinds (and resources without a
/// namespace) have no namespace part (`node:n1`).
pub fn resource_name(kind: &str, namespace: Option<&str>, name: &str) -> String {
    let namespace = namespace.filter(|ns| !ns.is_empty() && !is_cluster_scoped(kind));
    let mut out =
        String::with_capacity(kind.len() + name.len() + 2 + namespace.map_or(0, |n| n.len() + 1));
    out.extend(kind.chars().map(|c| c.to_ascii_lowercase()));
    out.push(':');
    if let Some(ns) = namespace {
        out.push_str(ns);
        out.push(':');
    }
    out.push_str(name);
    out
}

/// The canonical form of a topology endpoint (`Pod:ns:name` → `pod:ns:name`,
/// `node:default:n1` → `node:n1`). `None` when it is not `kind:name` or `kind:ns:name`
/// with non-empty parts.
pub fn canonical_name(endpoint: &str) -> Option<String> {
    let endpoint = endpoint.trim();
    let mut parts = endpoint.split(':');
    // `uid:` is reserved for placeholders of resources known only by uid.
    let kind = parts
        .next()
        .filter(|k| !k.is_empty() && !k.eq_ignore_ascii_case("uid"))?;
    let second = parts.next().filter(|p| !p.is_empty())?;
    match (parts.next(), parts.next()) {
        (None, _) => Some(resource_name(kind, None, second)),
        (Some(name), None) if !name.is_empty() => Some(resource_name(kind, Some(second), name)),
        _ => None,
    }
}

/// The node name of an event subject when its kind and name (and, for namespaced kinds,
/// namespace) are known; a namespaced subject without namespace is found by uid instead.
pub fn subject_name(subject: &Subject) -> Option<String> {
    let kind = subject.kind.as_deref().filter(|k| !k.is_empty())?;
    let name = subject.name.as_deref().filter(|n| !n.is_empty())?;
    let namespace = subject.ns.as_deref().filter(|ns| !ns.is_empty());
    if namespace.is_none() && !is_cluster_scoped(kind) {
        return None;
    }
    Some(resource_name(kind, namespace, name))
}

/// The placeholder node name for a resource known only by uid.
pub fn uid_placeholder(uid: &str) -> String {
    format!("uid:{uid}")
}

/// Kind, namespace and name read back from a canonical node name; a uid placeholder has
/// none of them.
pub fn split_name(name: &str) -> (Option<String>, Option<String>, Option<String>) {
    if name.starts_with("uid:") {
        return (None, None, None);
    }
    let mut parts = name.splitn(3, ':');
    let kind = parts.next().map(display_kind);
    match (parts.next(), parts.next()) {
        (Some(n), None) => (kind, None, Some(n.to_owned())),
        (Some(ns), Some(n)) => (kind, Some(ns.to_owned()), Some(n.to_owned())),
        _ => (kind, None, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_names_follow_the_topology_spelling() {
        assert_eq!(
            resource_name("Pod", Some("default"), "api-7d9f"),
            "pod:default:api-7d9f"
        );
        assert_eq!(resource_name("Node", None, "n1"), "node:n1");
        assert_eq!(resource_name("Node", Some("default"), "n1"), "node:n1");
        assert_eq!(resource_name("ReplicaSet", Some(""), "rs"), "replicaset:rs");
    }

    #[test]
    fn endpoints_are_canonicalized() {
        assert_eq!(canonical_name("Pod:ns:a").as_deref(), Some("pod:ns:a"));
        assert_eq!(canonical_name("node:n1").as_deref(), Some("node:n1"));
        assert_eq!(
            canonical_name("node:default:n1").as_deref(),
            Some("node:n1")
        );
        for bad in ["", "pod", "pod:", ":x", "a:b:c:d", "pod:ns:", "uid:abc"] {
            assert_eq!(canonical_name(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn subject_names_need_a_namespace_unless_cluster_scoped() {
        let mut s = Subject {
            kind: Some("Pod".into()),
            uid: Some("u1".into()),
            ns: None,
            name: Some("api".into()),
        };
        assert_eq!(subject_name(&s), None);
        s.ns = Some("shop".into());
        assert_eq!(subject_name(&s).as_deref(), Some("pod:shop:api"));
        let node = Subject {
            kind: Some("Node".into()),
            ns: Some("default".into()),
            name: Some("node-1".into()),
            uid: None,
        };
        assert_eq!(subject_name(&node).as_deref(), Some("node:node-1"));
    }

    #[test]
    fn names_split_back_into_kind_namespace_and_name() {
        assert_eq!(
            split_name("replicaset:shop:checkout-7d9f"),
            (
                Some("ReplicaSet".into()),
                Some("shop".into()),
                Some("checkout-7d9f".into())
            )
        );
        assert_eq!(
            split_name("node:n1"),
            (Some("Node".into()), None, Some("n1".into()))
        );
        assert_eq!(split_name("uid:abc"), (None, None, None));
    }
}
