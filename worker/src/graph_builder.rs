//! The graph-builder role: reads its tenant's normalized events and logs and resource
//! state and topology, decodes them into [`GraphInput`]s, and writes each Kafka batch to
//! the client's graph store in one transaction before the batch's offsets are committed.
//! Redelivery after a crash replays at most the uncommitted batch, and the store's writes
//! are idempotent, so the graph ends the same as after an uninterrupted run.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use kg_shared::ClientId;

use crate::graph::{decode_input_at, GraphInput, GraphStore, SqliteGraphStore, StoreError};
use crate::handler::{skip_unless_keyed_for, FlushError, Outcome, RecordHandler};

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
}

impl GraphBuilder {
    pub fn new(client: ClientId, store: SharedStore) -> Self {
        Self {
            client,
            store,
            pending: Mutex::new(Vec::new()),
        }
    }
}

impl RecordHandler for GraphBuilder {
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
