//! The graph stage's lookups, in the client's graph store (the graph builder's SQLite file
//! on the same volume, `graph-<client>.sqlite`), opened read-only: the pipeline never
//! writes the graph, and SQLite's WAL lets it read while the graph builder writes.
//!
//! For each record: the resources its fields name (`kind:namespace:name`, as the graph
//! names them), their live neighbours (one topology edge either way), the recent
//! Kubernetes events and error logs of all of those, and the blast radius: what depends on
//! them, transitively (pods on a node, the services selecting those pods, their owners),
//! nearest first. A graph that is not there yet, or cannot be read, is not a reason to hold
//! an alert back: the record goes on marked `graph_status = "unavailable"` with the reason.

use std::collections::{HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use kg_shared::pipeline_template::GraphLookup;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use serde_json::{json, Value};

use super::validate::parse_timestamp;
use super::Record;
use crate::roles::graph_builder::model::resource_name;

/// The graph store of one client, opened on first use.
pub struct GraphReader {
    path: PathBuf,
    conn: Mutex<Option<Connection>>,
}

impl std::fmt::Debug for GraphReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GraphReader")
            .field("path", &self.path)
            .finish()
    }
}

/// A resource as the graph has it.
#[derive(Debug, Clone, PartialEq)]
struct Node {
    id: i64,
    key: String,
}

impl GraphReader {
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            conn: Mutex::new(None),
        }
    }

    /// Adds the lookups' fields to `record`, at `now`, or marks it unavailable with the
    /// reason: never fails the record (`on_unavailable = "emit"`).
    pub fn enrich(&self, record: &mut Record, spec: &GraphLookup, now: DateTime<Utc>) {
        match self.fields(record, spec, now) {
            Ok(fields) => record.extend(fields),
            Err(reason) => mark_unavailable(record, reason),
        }
    }

    /// The lookups' fields for `record`, at `now`, or why the graph could not be read
    /// (the stage's `on_unavailable` says what then).
    pub fn fields(
        &self,
        record: &Record,
        spec: &GraphLookup,
        now: DateTime<Utc>,
    ) -> Result<Record, String> {
        let keys = named_resources(record, spec);
        let mut guard = self
            .conn
            .lock()
            .map_err(|_| "the graph reader's lock is poisoned")?;
        if guard.is_none() {
            *guard = Some(self.open()?);
        }
        let conn = guard.as_ref().expect("opened above");
        let result = read(conn, &keys, record, spec, now);
        if result.is_err() {
            // Reopen next time: the file may have been replaced (a restored volume).
            *guard = None;
        }
        result.map_err(|error| format!("{}: {error}", self.path.display()))
    }

    fn open(&self) -> Result<Connection, String> {
        if !self.path.exists() {
            return Err(format!(
                "{}: no graph yet (the graph builder has not written one)",
                self.path.display()
            ));
        }
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|error| format!("{}: {error}", self.path.display()))?;
        conn.busy_timeout(std::time::Duration::from_secs(2))
            .map_err(|error| format!("{}: {error}", self.path.display()))?;
        Ok(conn)
    }
}

/// Marks a record whose graph could not be read, with the reason.
pub fn mark_unavailable(record: &mut Record, reason: String) {
    record.insert("graph_status".into(), json!("unavailable"));
    record.insert("graph_error".into(), json!(reason));
}

/// The graph's names of the resources `record` names, in the order of the template's
/// fields, each once.
fn named_resources(record: &Record, spec: &GraphLookup) -> Vec<String> {
    let namespace = spec
        .namespace
        .as_ref()
        .and_then(|field| record.get(field))
        .and_then(Value::as_str)
        .filter(|ns| !ns.is_empty());
    let mut keys = Vec::new();
    for (field, kind) in &spec.resources {
        if let Some(name) = record.get(field).and_then(Value::as_str) {
            let key = resource_name(kind, namespace, name.trim());
            if !name.trim().is_empty() && !keys.contains(&key) {
                keys.push(key);
            }
        }
    }
    keys
}

fn read(
    conn: &Connection,
    keys: &[String],
    record: &Record,
    spec: &GraphLookup,
    now: DateTime<Utc>,
) -> rusqlite::Result<Record> {
    let found = resolve(conn, keys)?;
    let mut fields = Record::new();
    fields.insert(
        "graph_resources".into(),
        json!(found.iter().map(|n| &n.key).collect::<Vec<_>>()),
    );
    if found.is_empty() {
        fields.insert(
            "graph_status".into(),
            json!(if keys.is_empty() {
                "no_resource_named"
            } else {
                "not_in_graph"
            }),
        );
        for field in ["related_events", "error_logs", "blast_radius"] {
            fields.insert(field.into(), json!([]));
        }
        return Ok(fields);
    }
    let mut around: Vec<i64> = found.iter().map(|n| n.id).collect();
    for node in &found {
        for neighbour in neighbours(conn, node.id)? {
            if !around.contains(&neighbour) {
                around.push(neighbour);
            }
        }
    }
    let at = spec
        .at
        .as_ref()
        .and_then(|field| record.get(field))
        .and_then(parse_timestamp)
        .unwrap_or(now);
    let window = chrono::Duration::from_std(spec.window).unwrap_or(chrono::Duration::hours(1));
    let from = at
        .checked_sub_signed(window)
        .unwrap_or(at)
        .timestamp_millis();
    let until = now.max(at).timestamp_millis();
    fields.insert("graph_status".into(), json!("found"));
    fields.insert(
        "related_events".into(),
        Value::Array(episodes(
            conn,
            &around,
            Kind::Events,
            from,
            until,
            spec.max_events,
        )?),
    );
    fields.insert(
        "error_logs".into(),
        Value::Array(episodes(
            conn,
            &around,
            Kind::ErrorLogs,
            from,
            until,
            spec.max_events,
        )?),
    );
    fields.insert(
        "blast_radius".into(),
        Value::Array(blast_radius(conn, &found, spec.max_blast_radius)?),
    );
    Ok(fields)
}

/// The resources of `keys` the graph has.
fn resolve(conn: &Connection, keys: &[String]) -> rusqlite::Result<Vec<Node>> {
    let mut found = Vec::new();
    let mut by_key = conn.prepare_cached("SELECT id, key FROM resource WHERE key = ?1")?;
    for key in keys {
        if let Some(node) = by_key
            .query_row(params![key], |r| {
                Ok(Node {
                    id: r.get(0)?,
                    key: r.get(1)?,
                })
            })
            .optional()?
        {
            found.push(node);
        }
    }
    Ok(found)
}

/// Resources one live topology edge away, either way.
fn neighbours(conn: &Connection, id: i64) -> rusqlite::Result<Vec<i64>> {
    let mut query = conn.prepare_cached(
        "SELECT dst FROM topology WHERE src = ?1 AND live = 1
         UNION SELECT src FROM topology WHERE dst = ?1 AND live = 1",
    )?;
    let rows = query.query_map(params![id], |r| r.get(0))?;
    rows.collect()
}

#[derive(Clone, Copy)]
enum Kind {
    Events,
    ErrorLogs,
}

/// The latest episodes of `resources` between `from` and `until` (ms), newest first: one
/// query over all of them (the index on resource and time finds each one's range; only
/// the `limit` newest rows are read whole).
fn episodes(
    conn: &Connection,
    resources: &[i64],
    kind: Kind,
    from: i64,
    until: i64,
    limit: usize,
) -> rusqlite::Result<Vec<Value>> {
    let which = match kind {
        Kind::Events => "e.etype = 'k8s.event'",
        Kind::ErrorLogs => "e.etype = 'k8s.log' AND e.severity IN ('ERROR', 'FATAL')",
    };
    let placeholders = vec!["?"; resources.len()].join(", ");
    let sql = format!(
        "SELECT e.eid, e.event_time, e.severity, e.reason, e.message, e.count, r.key
         FROM episode e JOIN resource r ON r.id = e.resource
         WHERE e.resource IN ({placeholders}) AND e.t BETWEEN ? AND ? AND {which}
         ORDER BY e.t DESC, e.eid LIMIT ?"
    );
    let mut query = conn.prepare_cached(&sql)?;
    let values = resources.iter().copied().chain([from, until, limit as i64]);
    let rows = query.query_map(rusqlite::params_from_iter(values), |r| {
        Ok(json!({
            "eid": r.get::<_, String>(0)?,
            "event_time": r.get::<_, String>(1)?,
            "severity": r.get::<_, String>(2)?,
            "reason": r.get::<_, Option<String>>(3)?,
            "message": r.get::<_, Option<String>>(4)?,
            "count": r.get::<_, i64>(5)?,
            "resource": r.get::<_, String>(6)?,
        }))
    })?;
    rows.collect()
}

/// What depends on `found`, nearest first: the sources of live edges into each resource
/// reached (a pod RUNS_ON the node, a service SELECTS the pod, an owner CONTROLS it), up
/// to `limit` resources, each with its distance and the edge that reached it.
fn blast_radius(conn: &Connection, found: &[Node], limit: usize) -> rusqlite::Result<Vec<Value>> {
    let mut into = conn.prepare_cached(
        "SELECT t.src, t.type, r.key FROM topology t JOIN resource r ON r.id = t.src
         WHERE t.dst = ?1 AND t.live = 1 ORDER BY r.key",
    )?;
    let mut seen: HashSet<i64> = found.iter().map(|n| n.id).collect();
    let mut queue: VecDeque<(i64, u32)> = found.iter().map(|n| (n.id, 0)).collect();
    let mut reached: Vec<Value> = Vec::new();
    while let Some((id, hops)) = queue.pop_front() {
        let rows: Vec<(i64, String, String)> = into
            .query_map(params![id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<rusqlite::Result<_>>()?;
        for (src, edge, key) in rows {
            // Each resource once, with the first (shortest) path that reached it.
            if !seen.insert(src) {
                continue;
            }
            reached.push(json!({ "resource": key, "hops": hops + 1, "edge": edge }));
            if reached.len() >= limit {
                return Ok(reached);
            }
            queue.push_back((src, hops + 1));
        }
    }
    Ok(reached)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::roles::graph_builder::decode::decode_input;
    use crate::roles::graph_builder::sqlite::SqliteGraphStore;
    use crate::roles::graph_builder::store::GraphStore;
    use crate::roles::graph_builder::GraphInput;
    use kg_shared::topics::{
        EVENTS_NORMALIZED, LOGS_NORMALIZED, STATE_K8S_RESOURCE, STATE_K8S_TOPOLOGY,
    };

    const CLIENT: &str = "af-9";

    fn t0() -> DateTime<Utc> {
        "2026-12-07T05:00:00Z".parse().unwrap()
    }

    fn at(offset_s: i64) -> String {
        (t0() + chrono::Duration::seconds(offset_s)).to_rfc3339()
    }

    fn decode(topic: &str, key: &str, value: Value) -> GraphInput {
        let bytes = serde_json::to_vec(&value).unwrap();
        decode_input(topic, Some(key.as_bytes()), Some(&bytes))
            .unwrap()
            .expect("graph-worthy")
    }

    fn event(id: &str, offset_s: i64, reason: &str, kind: &str, name: &str) -> GraphInput {
        let mut subject = json!({"kind": kind, "name": name, "uid": format!("uid-{name}")});
        if kind != "Node" {
            subject["ns"] = json!("shop");
        }
        decode(
            EVENTS_NORMALIZED,
            &format!("{CLIENT}::{id}"),
            json!({"client_id": CLIENT, "event_id": id, "raw_event_id": id,
                   "timestamp": at(offset_s), "event_time": at(offset_s), "etype": "k8s.event",
                   "severity": "WARNING", "reason": reason, "message": format!("{reason} of {name}"),
                   "namespace": "shop", "involved_object_kind": kind, "involved_object_name": name,
                   "subject": subject}),
        )
    }

    fn error_log(pod: &str, offset_s: i64) -> GraphInput {
        let uid = format!("uid-{pod}");
        decode(
            LOGS_NORMALIZED,
            &format!("{CLIENT}::{uid}"),
            json!({"message": "java.lang.OutOfMemoryError: Java heap space", "timestamp": at(offset_s),
                   "client_id": CLIENT, "etype": "k8s.log", "event_time": at(offset_s),
                   "pod_uid": uid, "pod_namespace": "shop", "pod_name": pod,
                   "subject": {"kind": "Pod", "uid": uid, "ns": "shop", "name": pod},
                   "kubernetes": {"container_name": "app", "pod_name": pod, "pod_namespace": "shop", "pod_uid": uid}}),
        )
    }

    fn resource(kind: &str, name: &str) -> GraphInput {
        let mut value = json!({"op": "UPSERT", "at": at(-3600), "client_id": CLIENT, "cluster": CLIENT,
                               "kind": kind, "uid": format!("uid-{name}"), "name": name, "labels": {}, "status": {}});
        if kind != "Node" {
            value["namespace"] = json!("shop");
        }
        decode(
            STATE_K8S_RESOURCE,
            &format!("{CLIENT}::{kind}:uid-{name}"),
            value,
        )
    }

    fn edge(from: &str, to: &str, kind: &str) -> GraphInput {
        decode(
            STATE_K8S_TOPOLOGY,
            &format!("{CLIENT}::edge:{from}->{to}"),
            json!({"op": "UPSERT", "at": at(-3600), "client_id": CLIENT,
                   "id": format!("edge:{from}->{to}"), "from": from, "to": to, "type": kind}),
        )
    }

    /// node-2 runs checkout's pod (owned by a replica set, owned by a deployment, selected
    /// by a service) and web's pod; checkout's pod is OOMKilled and logs the error.
    fn graph(dir: &std::path::Path) -> PathBuf {
        let path = dir.join("graph-af-9.sqlite");
        let mut store = SqliteGraphStore::open(&path).unwrap();
        let inputs = vec![
            resource("Node", "node-2"),
            resource("Pod", "checkout-1"),
            resource("Pod", "web-1"),
            resource("ReplicaSet", "checkout-abc"),
            resource("Deployment", "checkout"),
            resource("Service", "checkout"),
            edge("pod:shop:checkout-1", "node:node-2", "RUNS_ON"),
            edge("pod:shop:web-1", "node:node-2", "RUNS_ON"),
            edge(
                "replicaset:shop:checkout-abc",
                "pod:shop:checkout-1",
                "CONTROLS",
            ),
            edge(
                "deployment:shop:checkout",
                "replicaset:shop:checkout-abc",
                "CONTROLS",
            ),
            edge("service:shop:checkout", "pod:shop:checkout-1", "SELECTS"),
            event(
                "e-pressure",
                -600,
                "NodeHasMemoryPressure",
                "Node",
                "node-2",
            ),
            event("e-oom", -120, "OOMKilled", "Pod", "checkout-1"),
            event("e-old", -7200, "BackOff", "Pod", "checkout-1"),
            event("e-web", -60, "Unhealthy", "Pod", "web-1"),
            error_log("checkout-1", -110),
        ];
        store.apply(&inputs).unwrap();
        path
    }

    fn lookup() -> GraphLookup {
        GraphLookup {
            namespace: Some("namespace".into()),
            resources: [
                ("pod".to_string(), "Pod".to_string()),
                ("node".to_string(), "Node".to_string()),
            ]
            .into_iter()
            .collect(),
            at: Some("startsAt".into()),
            window: std::time::Duration::from_secs(3600),
            max_events: 20,
            max_blast_radius: 100,
            on_unavailable: Default::default(),
        }
    }

    fn record(value: Value) -> Record {
        value.as_object().unwrap().clone()
    }

    fn keys(values: &Value, field: &str) -> Vec<String> {
        values
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v[field].as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn a_pod_alert_gets_its_and_its_neighbours_events_its_error_logs_and_its_dependents() {
        let dir = tempfile::tempdir().unwrap();
        let reader = GraphReader::new(graph(dir.path()));
        let mut alert = record(
            json!({"alertname": "KubePodCrashLooping", "namespace": "shop",
                                       "pod": "checkout-1", "startsAt": at(0)}),
        );
        reader.enrich(&mut alert, &lookup(), t0() + chrono::Duration::seconds(300));
        assert_eq!(alert["graph_status"], "found", "{alert:?}");
        assert_eq!(alert["graph_resources"], json!(["pod:shop:checkout-1"]));
        // Newest first; the node's pressure (a neighbour's) is in, the event older than
        // the window is not, nor web-1's (not a neighbour of the pod).
        assert_eq!(
            keys(&alert["related_events"], "eid"),
            ["e-oom", "e-pressure"]
        );
        assert_eq!(alert["related_events"][1]["resource"], "node:node-2");
        assert_eq!(
            alert["error_logs"].as_array().unwrap().len(),
            1,
            "{alert:?}"
        );
        assert_eq!(alert["error_logs"][0]["severity"], "ERROR");
        // What depends on the pod: its owner chain and its service.
        assert_eq!(
            keys(&alert["blast_radius"], "resource"),
            [
                "replicaset:shop:checkout-abc",
                "service:shop:checkout",
                "deployment:shop:checkout"
            ]
        );
        assert_eq!(alert["blast_radius"][2]["hops"], 2);
    }

    #[test]
    fn a_node_alert_reaches_every_pod_on_it_and_what_depends_on_them() {
        let dir = tempfile::tempdir().unwrap();
        let reader = GraphReader::new(graph(dir.path()));
        let mut alert = record(json!({"alertname": "KubeNodeNotReady", "node": "node-2",
                                       "namespace": "ignored-for-nodes"}));
        reader.enrich(&mut alert, &lookup(), t0());
        assert_eq!(alert["graph_resources"], json!(["node:node-2"]));
        let radius = keys(&alert["blast_radius"], "resource");
        assert_eq!(&radius[..2], ["pod:shop:checkout-1", "pod:shop:web-1"]);
        assert!(
            radius.contains(&"deployment:shop:checkout".to_string()),
            "{radius:?}"
        );
        assert_eq!(radius.len(), 5, "{radius:?}");
        // The limit keeps the nearest.
        let mut limited = record(json!({"node": "node-2"}));
        reader.enrich(
            &mut limited,
            &GraphLookup {
                max_blast_radius: 2,
                ..lookup()
            },
            t0(),
        );
        assert_eq!(keys(&limited["blast_radius"], "resource").len(), 2);
    }

    #[test]
    fn an_alert_the_graph_cannot_answer_still_goes_on_and_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let path = graph(dir.path());
        let reader = GraphReader::new(path.clone());
        let mut unknown = record(json!({"pod": "nowhere", "namespace": "shop"}));
        reader.enrich(&mut unknown, &lookup(), t0());
        assert_eq!(unknown["graph_status"], "not_in_graph");
        let mut unnamed = record(json!({"alertname": "Watchdog"}));
        reader.enrich(&mut unnamed, &lookup(), t0());
        assert_eq!(unnamed["graph_status"], "no_resource_named");
        assert_eq!(unnamed["blast_radius"], json!([]));

        let missing = GraphReader::new(dir.path().join("graph-other.sqlite"));
        let mut alert = record(json!({"pod": "checkout-1", "namespace": "shop"}));
        missing.enrich(&mut alert, &lookup(), t0());
        assert_eq!(alert["graph_status"], "unavailable");
        assert!(
            alert["graph_error"]
                .as_str()
                .unwrap()
                .contains("no graph yet"),
            "{alert:?}"
        );
        // Read-only: the reader never made the file it was missing.
        assert!(!dir.path().join("graph-other.sqlite").exists());
    }
}
