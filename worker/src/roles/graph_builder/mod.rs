//! The graph builder (`--role graph-builder`, one per client): consumes its tenant's
//! `events.normalized`, `logs.normalized`, `state.k8s.resource` and `state.k8s.topology`,
//! decodes them into [`GraphInput`]s, and writes each Kafka batch to the client's graph
//! store in one transaction before the batch's offsets are committed. It produces no topic
//! (undecodable records go to `dlq.normalized`); the worker's HTTP queries read the store.
//! Redelivery after a crash replays at most the uncommitted batch, and the store's writes
//! are idempotent, so the graph ends the same as after an uninterrupted run.
//!
//! The per-client graph: resources, episodes (events and high-signal log lines) and
//! incidents, with ABOUT, topology (RUNS_ON, SELECTS, CONTROLS), POTENTIAL_CAUSE and
//! PART_OF relationships, kept in one embedded SQLite file per client. Batches go in with
//! [`GraphStore::apply`]; everything derived is recomputed from stored facts, so
//! redelivery and a different interleaving of the four input topics end in the same
//! graph. `docs/graph.md` has the design, the schema and how to query the file.
//!
//! Files: this one is the role (its [`GraphBuilder`] handler and the client's store file);
//! the pure part is [`model`] (what is written: [`GraphInput`], resource naming),
//! [`decode`] (input records → [`GraphInput`]), [`scoring`] (episode classes and the
//! confidence of a cause → effect pair) and [`derive`](mod@derive) (cause selection,
//! escalation and incident clustering as pure functions); [`store`] is the store's
//! interface ([`GraphStore`]) and [`sqlite`] its implementation ([`SqliteGraphStore`]);
//! `tests.rs` runs records as the input topics carry them through decode and the store.

pub mod decode;
pub mod derive;
pub mod model;
pub mod scoring;
pub mod sqlite;
pub mod store;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use kg_shared::ClientId;

pub use self::decode::{decode_input, decode_input_at, GraphDecodeError};
pub use self::model::{EpisodeInput, GraphInput, ResourceSnapshot, TopologyEdge};
pub use self::sqlite::SqliteGraphStore;
pub use self::store::{
    ApplyStats, Candidate, EpisodicView, GraphStats, GraphStore, IncidentSummary, StoreError,
};

use super::{skip_unless_keyed_for, FlushError, Outcome, RecordHandler};

/// The client's store, shared by the pipeline (writes) and the HTTP queries (reads).
pub type SharedStore = Arc<Mutex<Box<dyn GraphStore>>>;

/// Where a client's graph lives: one SQLite file per client, so one client's graph can
/// be inspected, backed up or deleted alone.
pub fn store_path(data_dir: &Path, client: &ClientId) -> PathBuf {
    data_dir.join(format!("graph-{client}.sqlite"))
}

/// Opens (creating if needed) the client's store.
pub fn open_store(data_dir: &Path, client: &ClientId) -> Result<SharedStore, StoreError> {
    let store = SqliteGraphStore::open(&store_path(data_dir, client))?;
    Ok(Arc::new(Mutex::new(Box::new(store))))
}

/// The role's record handler.
pub struct GraphBuilder {
    client: ClientId,
    store: SharedStore,
    pending: Mutex<Vec<GraphInput>>,
    /// The store held nothing when the worker started: if the group has committed
    /// offsets, what they cover is not in this store (a new node's volume, a deleted
    /// file) and is read again (`crate::rewind`).
    empty_at_start: bool,
}

impl GraphBuilder {
    pub fn new(client: ClientId, store: SharedStore) -> Self {
        let empty_at_start = store
            .lock()
            .map(|store| {
                store
                    .stats()
                    .is_ok_and(|stats| stats == GraphStats::default())
            })
            .unwrap_or(false);
        Self {
            client,
            store,
            pending: Mutex::new(Vec::new()),
            empty_at_start,
        }
    }
}

impl RecordHandler for GraphBuilder {
    fn rebuild_from_start(&self) -> bool {
        self.empty_at_start
    }

    fn input_topics(&self) -> &'static [&'static str] {
        kg_shared::Role::GraphBuilder.input_topics()
    }

    fn handle(
        &self,
        topic: &str,
        timestamp_ms: Option<i64>,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
    ) -> Outcome {
        if let Some(skipped) = skip_unless_keyed_for(key, &self.client) {
            return skipped;
        }
        let fallback_time = timestamp_ms.and_then(chrono::DateTime::from_timestamp_millis);
        match decode_input_at(topic, key, value, fallback_time) {
            Ok(Some(input)) => {
                self.pending
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .push(input);
                Outcome::Absorbed
            }
            Ok(None) => Outcome::Ignored,
            Err(error) => Outcome::DeadLetter {
                reason_code: error.reason_code(),
                reason: error.to_string(),
            },
        }
    }

    fn flush(&self) -> Result<(), FlushError> {
        let mut pending = self
            .pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if pending.is_empty() {
            return Ok(());
        }
        let mut store = self
            .store
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        store.apply(&pending)?;
        pending.clear();
        Ok(())
    }
}
