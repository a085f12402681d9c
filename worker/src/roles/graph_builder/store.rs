//! The graph store's interface: [`GraphStore`] (one batch applied in one transaction, and
//! the queries), what it returns, and [`StoreError`]. Its one implementation is
//! [`SqliteGraphStore`](super::SqliteGraphStore) (`sqlite.rs`).

use serde::Serialize;

use super::model::GraphInput;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store file could not be opened or set up.
    #[error("failed to open the graph store {path}: {source}")]
    Open {
        /// The file.
        path: String,
        /// What SQLite said.
        #[source]
        source: rusqlite::Error,
    },
    /// Another process holds the store's lock: two writers on one client's graph.
    #[error("the graph store {path} is locked by another process (is a second graph builder of this client running?)")]
    Locked {
        /// The file.
        path: String,
    },
    /// The lock file could not be opened.
    #[error("failed to open the graph store's lock {path}: {source}")]
    Lock {
        /// The lock file.
        path: String,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// The file was written by a newer schema.
    #[error("the graph store {path} has schema version {found}, this build knows up to {known}")]
    SchemaVersion {
        /// The file.
        path: String,
        /// Its version.
        found: i64,
        /// The newest this build knows.
        known: i64,
    },
    /// A statement failed.
    #[error("graph store statement failed: {0}")]
    Sqlite(#[from] rusqlite::Error),
}

/// What one [`GraphStore::apply`] wrote.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ApplyStats {
    /// Inputs in the batch.
    pub inputs: u64,
    /// Episodes inserted or replaced by a newer version.
    pub episodes_written: u64,
    /// ABOUT edges written (with those episodes, or moved by identity merges).
    pub about_written: u64,
    /// Inputs that changed nothing (redelivered or unchanged records).
    pub duplicates: u64,
    /// Resource nodes created, and snapshots and deletions recorded.
    pub resources_written: u64,
    /// Topology edges upserted or removed.
    pub topology_written: u64,
    /// POTENTIAL_CAUSE edges inserted, changed or removed.
    pub causes_written: u64,
    /// Incidents created, changed or removed.
    pub incidents_written: u64,
    /// PART_OF edges set or cleared.
    pub part_of_written: u64,
    /// Episodes whose escalated severity changed.
    pub escalations_written: u64,
}

impl ApplyStats {
    /// Nodes and relationships written: episodes, ABOUT, resources, topology,
    /// POTENTIAL_CAUSE, incidents and PART_OF.
    pub fn graph_items(&self) -> u64 {
        self.episodes_written
            + self.about_written
            + self.resources_written
            + self.topology_written
            + self.causes_written
            + self.incidents_written
            + self.part_of_written
    }
}

/// A ranked root-cause candidate for an effect event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Candidate {
    /// The cause's event id.
    pub event_id: String,
    /// Its reason.
    pub reason: String,
    /// 0.3·temporal + 0.3·distance + 0.4·domain.
    pub confidence: f64,
    /// 1 − Δt/15 min.
    pub temporal_score: f64,
    /// 1/(hops+1).
    pub distance_score: f64,
    /// From the cause → effect table.
    pub domain_score: f64,
    /// Topology hops between the two resources.
    pub hops: u32,
    /// Resource names from the cause's resource to the effect's.
    pub path: Vec<String>,
    /// When the cause happened (RFC 3339).
    pub event_time: String,
    /// The cause's resource (`pod:shop:checkout-1`).
    pub subject: String,
    /// The cause's severity (after escalation).
    pub severity: String,
    /// `k8s.event` or `k8s.log`.
    pub etype: String,
    /// The cause's message.
    pub message: Option<String>,
}

/// An incident.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IncidentSummary {
    /// `inc-` and 16 hex digits, stable for the same first episode on the same resource.
    pub id: String,
    /// The resource whose ERROR episodes form it.
    pub resource: String,
    /// Its kind.
    pub resource_kind: Option<String>,
    /// The first episode's time.
    pub start: String,
    /// The last episode's time.
    pub end: String,
    /// How many episodes are PART_OF it.
    pub episodes: u64,
    /// The worst severity among them.
    pub max_severity: String,
}

/// An episode, as queries return it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EpisodicView {
    /// Its id.
    pub event_id: String,
    /// `k8s.event` or `k8s.log`.
    pub etype: String,
    /// When (RFC 3339).
    pub event_time: String,
    /// Severity after escalation.
    pub severity: String,
    /// Severity as sent.
    pub base_severity: String,
    /// Whether repeats escalated it.
    pub escalated: bool,
    /// Its reason.
    pub reason: Option<String>,
    /// Its class (`OOM`, `CRASH_LOOP`, …).
    pub class: String,
    /// Its message.
    pub message: Option<String>,
    /// The resource it is ABOUT.
    pub resource: Option<String>,
    /// That resource's kind.
    pub resource_kind: Option<String>,
    /// The incident it is PART_OF.
    pub incident: Option<String>,
}

/// Node and relationship counts.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct GraphStats {
    /// Resources that exist (deleted ones are kept as tombstones and not counted).
    pub resources: u64,
    /// Episodes.
    pub episodes: u64,
    /// Incidents.
    pub incidents: u64,
    /// Topology edges whose two resources exist and that were not removed.
    pub topology_edges: u64,
    /// ABOUT relationships.
    pub about_edges: u64,
    /// POTENTIAL_CAUSE relationships.
    pub potential_cause_edges: u64,
    /// PART_OF relationships.
    pub part_of_edges: u64,
}

/// A client's graph.
pub trait GraphStore: Send {
    /// Applies one batch in one transaction. Idempotent: applying inputs again, in any
    /// interleaving of different keys, changes nothing.
    fn apply(&mut self, batch: &[GraphInput]) -> Result<ApplyStats, StoreError>;
    /// The stored POTENTIAL_CAUSEs of `event_id`, best first, at most `limit`. Empty for
    /// an unknown event.
    fn rca(&self, event_id: &str, limit: usize) -> Result<Vec<Candidate>, StoreError>;
    /// All incidents, latest first.
    fn incidents(&self) -> Result<Vec<IncidentSummary>, StoreError>;
    /// The episodes PART_OF an incident, oldest first. Empty for an unknown incident.
    fn incident_events(&self, incident_id: &str) -> Result<Vec<EpisodicView>, StoreError>;
    /// Node and relationship counts.
    fn stats(&self) -> Result<GraphStats, StoreError>;
    /// One episode, if stored.
    fn episode(&self, event_id: &str) -> Result<Option<EpisodicView>, StoreError>;
}
