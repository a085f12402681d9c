//! The client table: every registered client, its registration metadata, liveness and
//! workers. Readers (the API) read the shared [`ClientTable`]; only [`TableWriter`], owned
//! by the controller task, writes it, so updates never race.
//!
//! Registry events are ordered by their Kafka timestamps, not by arrival: the chart's
//! colon-split registration is keyed `{"client_id"` and lands on a different partition than
//! the client's tombstone, so on replay the two arrive in either order. The later
//! timestamp wins.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use dashmap::DashMap;
use kg_shared::registry::Registration;
use kg_shared::ClientId;
use serde::Serialize;
use serde_json::value::RawValue;

use crate::liveness::HeartbeatTimeout;
use crate::supervise::{RestartPolicy, WorkerPhase};

/// Liveness as the API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientState {
    /// Heartbeating (or freshly registered): its workers should run.
    Active,
    /// No heartbeat within the timeout: its workers are removed until it is heard again.
    Stale,
}

/// One worker as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkerView {
    pub role: Arc<str>,
    pub name: Arc<str>,
    pub id: Arc<str>,
    /// creating, starting, running, degraded, backing-off, stopping, stopped, failed.
    pub state: WorkerPhase,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    pub restart_policy: RestartPolicy,
    pub restart_count: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_exit_reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_retry_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed_reason: Option<String>,
    /// What a given-up worker last wrote.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_lines: Option<String>,
}

/// One registered client.
#[derive(Debug, Clone, Serialize)]
pub struct ClientRecord {
    pub client_id: ClientId,
    pub state: ClientState,
    pub cluster_name: Option<String>,
    /// When the latest registration was produced (or received, when live).
    pub registered_at: DateTime<Utc>,
    pub last_heartbeat: Option<DateTime<Utc>>,
    /// Every field of the latest registration, unknown ones included, as compact JSON:
    /// the API only ever shows it, and a parsed map costs several times the bytes per
    /// client.
    pub registration: Box<RawValue>,
    pub registrations_seen: u64,
    pub workers: Vec<WorkerView>,
}

impl ClientRecord {
    /// The later of the last registration and the last heartbeat.
    pub fn last_seen(&self) -> DateTime<Utc> {
        match self.last_heartbeat {
            Some(heartbeat) if heartbeat > self.registered_at => heartbeat,
            _ => self.registered_at,
        }
    }
}

/// The shared, read-mostly table.
pub type ClientTable = Arc<DashMap<ClientId, ClientRecord>>;

/// What applying an input changed, for logging and lifecycle events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    Registered {
        first_time: bool,
    },
    Deregistered,
    Heartbeat {
        revived: bool,
    },
    UnknownClientHeartbeat,
    /// An event older than one already applied for the same client.
    Superseded,
    Ignored,
}

/// The only writer of the table.
pub struct TableWriter {
    table: ClientTable,
    /// Timestamp of the last applied registry event per client, tombstones included, so
    /// a replayed older registration cannot resurrect a deregistered client.
    registry_clock: HashMap<ClientId, DateTime<Utc>>,
    heartbeat_timeout: HeartbeatTimeout,
}

impl TableWriter {
    pub fn new(table: ClientTable, heartbeat_timeout: HeartbeatTimeout) -> Self {
        Self {
            table,
            registry_clock: HashMap::new(),
            heartbeat_timeout,
        }
    }

    pub fn table(&self) -> &ClientTable {
        &self.table
    }

    fn superseded(&self, client: &ClientId, at: DateTime<Utc>) -> bool {
        self.registry_clock
            .get(client)
            .is_some_and(|latest| at < *latest)
    }

    /// Applies a registration produced at `at`.
    pub fn register(
        &mut self,
        registration: Registration,
        at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Applied {
        let client = registration.client_id.clone();
        if self.superseded(&client, at) {
            return Applied::Superseded;
        }
        self.registry_clock.insert(client.clone(), at);
        let timeout = self.heartbeat_timeout;
        let mut first_time = false;
        self.table
            .entry(client.clone())
            .and_modify(|record| {
                record.registered_at = record.registered_at.max(at);
                record.cluster_name = registration
                    .cluster_name
                    .clone()
                    .or(record.cluster_name.take());
                // A recovered colon-split registration carries only the id: keep the richer
                // metadata we already have.
                if !registration.recovered_from_split || record.registration.get() == "{}" {
                    record.registration = compact(&registration);
                }
                record.registrations_seen += 1;
                record.state = state_at(record.last_seen(), now, timeout);
            })
            .or_insert_with(|| {
                first_time = true;
                ClientRecord {
                    client_id: client.clone(),
                    state: state_at(at, now, timeout),
                    cluster_name: registration.cluster_name.clone(),
                    registered_at: at,
                    last_heartbeat: None,
                    registration: compact(&registration),
                    registrations_seen: 1,
                    workers: Vec::new(),
                }
            });
        Applied::Registered { first_time }
    }

    /// Whether the client was deregistered by a tombstone (rather than never registered).
    pub fn was_deregistered(&self, client: &str) -> bool {
        ClientId::parse(client)
            .map(|id| self.registry_clock.contains_key(&id) && !self.table.contains_key(&id))
            .unwrap_or(false)
    }

    /// Whether a registry record of `client` produced at `at` is older than the latest
    /// one applied (a registration read again after its tombstone was applied).
    pub fn is_superseded(&self, client: &ClientId, at: DateTime<Utc>) -> bool {
        self.superseded(client, at)
    }

    /// Whether the client is in the table.
    pub fn contains(&self, client: &ClientId) -> bool {
        self.table.contains_key(client)
    }

    /// Applies a tombstone produced at `at`.
    pub fn deregister(&mut self, client: &ClientId, at: DateTime<Utc>) -> Applied {
        if self.superseded(client, at) {
            return Applied::Superseded;
        }
        self.registry_clock.insert(client.clone(), at);
        match self.table.remove(client) {
            Some(_) => Applied::Deregistered,
            None => Applied::Ignored,
        }
    }

    /// Applies a heartbeat received (or, on replay, produced) at `at`.
    pub fn heartbeat(
        &mut self,
        client: &ClientId,
        at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Applied {
        let timeout = self.heartbeat_timeout;
        match self.table.get_mut(client) {
            None => Applied::UnknownClientHeartbeat,
            Some(mut record) => {
                let was_stale = record.state == ClientState::Stale;
                record.last_heartbeat = Some(record.last_heartbeat.map_or(at, |last| last.max(at)));
                record.state = state_at(record.last_seen(), now, timeout);
                Applied::Heartbeat {
                    revived: was_stale && record.state == ClientState::Active,
                }
            }
        }
    }

    /// Re-evaluates every client's liveness at `now`; returns the clients that just went
    /// stale.
    pub fn refresh_liveness(&mut self, now: DateTime<Utc>) -> Vec<ClientId> {
        let mut newly_stale = Vec::new();
        for mut record in self.table.iter_mut() {
            let state = state_at(record.last_seen(), now, self.heartbeat_timeout);
            if state == ClientState::Stale && record.state == ClientState::Active {
                newly_stale.push(record.client_id.clone());
            }
            record.state = state;
        }
        newly_stale
    }

    /// Publishes the latest listing, as (client id, view) pairs, into each client's
    /// worker list.
    pub fn set_workers(&mut self, mut views: Vec<(Arc<str>, WorkerView)>) {
        // Grouped by sorting (stable: each client's workers keep the listing's order) and
        // written into each client's existing vector, so a pass allocates no second copy
        // of every client's worker list.
        views.sort_by(|a, b| a.0.cmp(&b.0));
        for mut record in self.table.iter_mut() {
            let client = record.client_id.as_str();
            let start = views.partition_point(|(c, _)| &**c < client);
            let count = views[start..].partition_point(|(c, _)| &**c == client);
            let workers = &mut record.workers;
            workers.clear();
            workers.reserve_exact(count);
            workers.extend(views[start..start + count].iter().map(|(_, v)| v.clone()));
        }
    }
}

fn compact(registration: &Registration) -> Box<RawValue> {
    serde_json::value::to_raw_value(&registration.fields).expect("a JSON map always serializes")
}

fn state_at(
    last_seen: DateTime<Utc>,
    now: DateTime<Utc>,
    timeout: HeartbeatTimeout,
) -> ClientState {
    if timeout.is_live(last_seen, now) {
        ClientState::Active
    } else {
        ClientState::Stale
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_760_000_000 + seconds, 0).unwrap()
    }

    fn registration(id: &str) -> Registration {
        match kg_shared::registry::decode_registry(
            Some(id.as_bytes()),
            Some(format!(r#"{{"client_id":"{id}","cluster_name":"prod-eu"}}"#).as_bytes()),
        ) {
            Ok(kg_shared::registry::RegistryMessage::Register(registration)) => registration,
            other => panic!("unexpected {other:?}"),
        }
    }

    fn writer() -> TableWriter {
        TableWriter::new(Arc::new(DashMap::new()), HeartbeatTimeout::default())
    }

    #[test]
    fn repeated_registrations_keep_one_record_and_count_them() {
        let mut w = writer();
        assert_eq!(
            w.register(registration("af-9"), t(0), t(0)),
            Applied::Registered { first_time: true }
        );
        assert_eq!(
            w.register(registration("af-9"), t(5), t(5)),
            Applied::Registered { first_time: false }
        );
        assert_eq!(w.table().len(), 1);
        assert_eq!(
            w.table()
                .get(&ClientId::parse("af-9").unwrap())
                .unwrap()
                .registrations_seen,
            2
        );
    }

    #[test]
    fn an_older_registration_replayed_after_a_tombstone_does_not_resurrect_the_client() {
        let mut w = writer();
        let id = ClientId::parse("af-9").unwrap();
        w.register(registration("af-9"), t(0), t(100));
        assert_eq!(w.deregister(&id, t(50)), Applied::Deregistered);
        assert_eq!(
            w.register(registration("af-9"), t(10), t(100)),
            Applied::Superseded
        );
        assert!(w.table().is_empty());
        // A registration after the tombstone does bring it back.
        w.register(registration("af-9"), t(60), t(100));
        assert_eq!(w.table().len(), 1);
    }

    #[test]
    fn heartbeats_from_unknown_clients_are_reported_not_stored() {
        let mut w = writer();
        let id = ClientId::parse("ghost").unwrap();
        assert_eq!(
            w.heartbeat(&id, t(0), t(0)),
            Applied::UnknownClientHeartbeat
        );
        assert!(w.table().is_empty());
    }

    #[test]
    fn a_client_goes_stale_after_the_timeout_and_a_heartbeat_revives_it() {
        let mut w = writer();
        let id = ClientId::parse("af-9").unwrap();
        w.register(registration("af-9"), t(0), t(0));
        assert!(w.refresh_liveness(t(119)).is_empty());
        assert_eq!(w.refresh_liveness(t(120)), vec![id.clone()]);
        assert!(
            w.refresh_liveness(t(121)).is_empty(),
            "stale is reported once"
        );
        assert_eq!(
            w.heartbeat(&id, t(130), t(130)),
            Applied::Heartbeat { revived: true }
        );
    }
}
