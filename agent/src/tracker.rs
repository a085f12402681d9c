//! What to send for each watch event: the decide step between the watcher and Kafka.
//!
//! A watcher replays objects it already delivered whenever it relists (after `410 Gone`,
//! or when the agent's API server connection comes back and its resource version has
//! expired). Sending every relisted object again would flood Kafka with duplicates after
//! each API-server restart, so the tracker remembers, per object, a fingerprint of what
//! was last sent and the edges last sent, and turns each watch event into only the
//! records that change something: a snapshot when it differs, edges added, edges removed
//! (tombstones), and tombstones for objects that vanished while the agent was not
//! looking (absent from a relist). Pure: no I/O, no clock; `now` comes in.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::hash::{Hash, Hasher};

use chrono::{DateTime, SecondsFormat, Utc};
use kg_shared::client_id::ClientId;
use serde_json::{json, Value};

use crate::resources::{Edge, Observed};

/// Which topic an output goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    Resource,
    Topology,
    Events,
}

/// One Kafka record to send. `value: None` is a tombstone.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    pub stream: Stream,
    pub key: String,
    pub value: Option<Vec<u8>>,
}

#[derive(Debug, Clone)]
struct Known {
    snapshot_key: Option<String>,
    fingerprint: u64,
    edges: BTreeSet<Edge>,
}

/// The per-kind memory of what was sent.
#[derive(Debug)]
pub struct ResourceTracker {
    client: ClientId,
    cluster: String,
    known: HashMap<String, Known>,
    /// Uids seen since the current relist began; `Some` between `Init` and `InitDone`.
    relisted: Option<HashSet<String>>,
}

fn fingerprint(value: &Value) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    value.to_string().hash(&mut hasher);
    hasher.finish()
}

fn at(now: DateTime<Utc>) -> String {
    now.to_rfc3339_opts(SecondsFormat::Millis, true)
}

impl ResourceTracker {
    pub fn new(client: ClientId, cluster: String) -> Self {
        Self {
            client,
            cluster,
            known: HashMap::new(),
            relisted: None,
        }
    }

    /// How many objects are remembered.
    pub fn len(&self) -> usize {
        self.known.len()
    }

    pub fn is_empty(&self) -> bool {
        self.known.is_empty()
    }

    fn edge_output(&self, edge: &Edge, now: DateTime<Utc>, upsert: bool) -> Output {
        let id = edge.id();
        let value = upsert.then(|| {
            serde_json::to_vec(&json!({
                "op": "UPSERT",
                "at": at(now),
                "client_id": self.client.as_str(),
                "id": id,
                "from": edge.from,
                "to": edge.to,
                "type": edge.edge_type,
            }))
            .expect("an edge serializes")
        });
        Output {
            stream: Stream::Topology,
            key: format!("{}::{id}", self.client),
            value,
        }
    }

    /// An object was added or changed (or relisted).
    pub fn apply(&mut self, observed: Observed, now: DateTime<Utc>) -> Vec<Output> {
        if let Some(relisted) = &mut self.relisted {
            relisted.insert(observed.uid.clone());
        }
        let snapshot_json = observed
            .snapshot
            .as_ref()
            .map(|s| serde_json::to_value(s).expect("a snapshot serializes"));
        let print = snapshot_json.as_ref().map(fingerprint).unwrap_or(0);
        let new_edges: BTreeSet<Edge> = observed.edges.into_iter().collect();
        let previous = self.known.get(&observed.uid);
        let mut outputs = Vec::new();

        let snapshot_key = snapshot_json.as_ref().map(|_| {
            format!(
                "{}::{}:{}",
                self.client,
                observed.kind.as_str(),
                observed.uid
            )
        });
        let snapshot_changed = previous.is_none_or(|known| known.fingerprint != print);
        if let (Some(mut snapshot), Some(key), true) =
            (snapshot_json, snapshot_key.clone(), snapshot_changed)
        {
            let object = snapshot.as_object_mut().expect("a snapshot is an object");
            object.insert("op".into(), json!("UPSERT"));
            object.insert("at".into(), json!(at(now)));
            object.insert("client_id".into(), json!(self.client.as_str()));
            object.insert("cluster".into(), json!(self.cluster));
            outputs.push(Output {
                stream: Stream::Resource,
                key,
                value: Some(serde_json::to_vec(&snapshot).expect("serializes")),
            });
        }
        let empty = BTreeSet::new();
        let old_edges = previous.map(|known| &known.edges).unwrap_or(&empty);
        for edge in new_edges.difference(old_edges) {
            outputs.push(self.edge_output(edge, now, true));
        }
        for edge in old_edges.difference(&new_edges) {
            outputs.push(self.edge_output(edge, now, false));
        }
        self.known.insert(
            observed.uid,
            Known {
                snapshot_key,
                fingerprint: print,
                edges: new_edges,
            },
        );
        outputs
    }

    /// An object was deleted: tombstones for its snapshot and edges.
    pub fn delete(&mut self, uid: &str, now: DateTime<Utc>) -> Vec<Output> {
        let Some(known) = self.known.remove(uid) else {
            return Vec::new();
        };
        let mut outputs: Vec<Output> = known
            .edges
            .iter()
            .map(|edge| self.edge_output(edge, now, false))
            .collect();
        if let Some(key) = known.snapshot_key {
            outputs.push(Output {
                stream: Stream::Resource,
                key,
                value: None,
            });
        }
        outputs
    }

    /// A relist begins.
    pub fn init(&mut self) {
        self.relisted = Some(HashSet::new());
    }

    /// A relist ended: objects remembered but not relisted were deleted meanwhile.
    pub fn init_done(&mut self, now: DateTime<Utc>) -> Vec<Output> {
        let Some(relisted) = self.relisted.take() else {
            return Vec::new();
        };
        let gone: Vec<String> = self
            .known
            .keys()
            .filter(|uid| !relisted.contains(*uid))
            .cloned()
            .collect();
        gone.iter().flat_map(|uid| self.delete(uid, now)).collect()
    }
}

/// The memory for Kubernetes Events: which version of each Event was sent. An Event that
/// repeats (its `count` grows) gets a new resource version and is sent again; a relisted
/// Event already sent is not.
#[derive(Debug)]
pub struct EventTracker {
    client: ClientId,
    sent: HashMap<String, String>,
    relisted: Option<HashSet<String>>,
}

impl EventTracker {
    pub fn new(client: ClientId) -> Self {
        Self {
            client,
            sent: HashMap::new(),
            relisted: None,
        }
    }

    pub fn len(&self) -> usize {
        self.sent.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sent.is_empty()
    }

    /// `event` is the Event as the API server sent it; the record is that object plus
    /// `client_id`, keyed `<client>::event::<uid>`.
    pub fn apply(&mut self, event: Value) -> Option<Output> {
        let uid = event["metadata"]["uid"].as_str()?.to_string();
        let version = event["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if let Some(relisted) = &mut self.relisted {
            relisted.insert(uid.clone());
        }
        if self.sent.get(&uid) == Some(&version) && !version.is_empty() {
            return None;
        }
        let mut event = event;
        event
            .as_object_mut()?
            .insert("client_id".into(), json!(self.client.as_str()));
        let key = format!("{}::event::{uid}", self.client);
        self.sent.insert(uid, version);
        Some(Output {
            stream: Stream::Events,
            key,
            value: Some(serde_json::to_vec(&event).expect("serializes")),
        })
    }

    /// An Event expired or was deleted: forget it (the events topic is not compacted, so
    /// there is nothing to tombstone).
    pub fn delete(&mut self, uid: &str) {
        self.sent.remove(uid);
    }

    pub fn init(&mut self) {
        self.relisted = Some(HashSet::new());
    }

    pub fn init_done(&mut self) {
        if let Some(relisted) = self.relisted.take() {
            self.sent.retain(|uid, _| relisted.contains(uid));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::{EdgeType, Kind, Observe};
    use k8s_openapi::api::core::v1::Pod;

    fn now() -> DateTime<Utc> {
        "2026-11-30T08:00:00Z".parse().unwrap()
    }

    fn tracker() -> ResourceTracker {
        ResourceTracker::new(ClientId::parse("af-9").unwrap(), "prod".into())
    }

    fn pod(uid: &str, node: &str, phase: &str) -> Observed {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": format!("p-{uid}"), "namespace": "shop", "uid": uid},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "i"}]},
            "status": {"phase": phase}
        }))
        .unwrap();
        pod.observe().unwrap()
    }

    fn keys(outputs: &[Output]) -> Vec<(String, bool)> {
        outputs
            .iter()
            .map(|o| (o.key.clone(), o.value.is_some()))
            .collect()
    }

    #[test]
    fn a_new_object_sends_its_snapshot_and_edges() {
        let mut t = tracker();
        let out = t.apply(pod("u1", "n1", "Running"), now());
        assert_eq!(
            keys(&out),
            vec![
                ("af-9::Pod:u1".into(), true),
                ("af-9::edge:pod:shop:p-u1->node:n1".into(), true),
            ]
        );
        let snapshot: Value = serde_json::from_slice(out[0].value.as_ref().unwrap()).unwrap();
        assert_eq!(snapshot["op"], "UPSERT");
        assert_eq!(snapshot["client_id"], "af-9");
        assert_eq!(snapshot["cluster"], "prod");
        assert_eq!(snapshot["at"], "2026-11-30T08:00:00.000Z");
        let edge: Value = serde_json::from_slice(out[1].value.as_ref().unwrap()).unwrap();
        assert_eq!(edge["type"], "RUNS_ON");
        assert_eq!(edge["id"], "edge:pod:shop:p-u1->node:n1");
        assert_eq!(out[1].stream, Stream::Topology);
    }

    #[test]
    fn the_same_object_again_sends_nothing_and_a_change_sends_only_the_change() {
        let mut t = tracker();
        t.apply(pod("u1", "n1", "Running"), now());
        assert!(t.apply(pod("u1", "n1", "Running"), now()).is_empty());
        // Phase changed: a snapshot, no edge.
        let out = t.apply(pod("u1", "n1", "Failed"), now());
        assert_eq!(keys(&out), vec![("af-9::Pod:u1".into(), true)]);
        // Moved node (a new pod would, but the mapping must not care): old edge removed.
        let out = t.apply(pod("u1", "n2", "Failed"), now());
        assert_eq!(
            keys(&out),
            vec![
                ("af-9::Pod:u1".into(), true),
                ("af-9::edge:pod:shop:p-u1->node:n2".into(), true),
                ("af-9::edge:pod:shop:p-u1->node:n1".into(), false),
            ]
        );
    }

    #[test]
    fn a_delete_tombstones_the_snapshot_and_every_edge() {
        let mut t = tracker();
        t.apply(pod("u1", "n1", "Running"), now());
        let out = t.delete("u1", now());
        assert_eq!(
            keys(&out),
            vec![
                ("af-9::edge:pod:shop:p-u1->node:n1".into(), false),
                ("af-9::Pod:u1".into(), false),
            ]
        );
        assert!(t.is_empty());
        assert!(t.delete("u1", now()).is_empty());
    }

    #[test]
    fn a_relist_resends_nothing_known_and_tombstones_what_vanished() {
        let mut t = tracker();
        t.apply(pod("u1", "n1", "Running"), now());
        t.apply(pod("u2", "n1", "Running"), now());
        t.init();
        assert!(t.apply(pod("u1", "n1", "Running"), now()).is_empty());
        let out = t.init_done(now());
        assert_eq!(
            keys(&out),
            vec![
                ("af-9::edge:pod:shop:p-u2->node:n1".into(), false),
                ("af-9::Pod:u2".into(), false),
            ]
        );
        assert_eq!(t.len(), 1);
        // A second InitDone without an Init changes nothing.
        assert!(t.init_done(now()).is_empty());
    }

    #[test]
    fn edges_without_a_snapshot_are_tracked_too() {
        let mut t = tracker();
        let observed = Observed {
            kind: Kind::Endpoints,
            uid: "ep".into(),
            snapshot: None,
            edges: vec![Edge {
                from: "service:shop:a".into(),
                to: "pod:shop:p".into(),
                edge_type: EdgeType::Selects,
            }],
        };
        assert_eq!(
            keys(&t.apply(observed.clone(), now())),
            vec![("af-9::edge:service:shop:a->pod:shop:p".into(), true)]
        );
        assert!(t.apply(observed, now()).is_empty());
        assert_eq!(
            keys(&t.delete("ep", now())),
            vec![("af-9::edge:service:shop:a->pod:shop:p".into(), false)]
        );
    }

    #[test]
    fn events_are_sent_once_per_version_keyed_with_the_tenant() {
        let mut t = EventTracker::new(ClientId::parse("af-9").unwrap());
        let event = |rv: &str| json!({"metadata": {"uid": "e1", "resourceVersion": rv}, "reason": "BackOff"});
        let out = t.apply(event("5")).unwrap();
        assert_eq!(out.key, "af-9::event::e1");
        let body: Value = serde_json::from_slice(out.value.as_ref().unwrap()).unwrap();
        assert_eq!(body["client_id"], "af-9");
        assert_eq!(body["reason"], "BackOff");
        assert!(t.apply(event("5")).is_none());
        assert!(
            t.apply(event("9")).is_some(),
            "a repeat (new version) is sent"
        );
        t.init();
        assert!(
            t.apply(event("9")).is_none(),
            "a relisted event already sent is not"
        );
        t.init_done();
        assert_eq!(t.len(), 1);
        t.init();
        t.init_done();
        assert!(t.is_empty(), "an event absent from a relist is forgotten");
        assert!(t.apply(json!({"metadata": {}})).is_none());
    }
}
