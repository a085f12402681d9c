//! Records on a pipeline's retry ladder, in a SQLite file on the client's volume
//! (`<data dir>/pipeline-<name>.retries.sqlite`), beside the delay's held sessions and for
//! the same reasons (docs/architecture.md, "The retry ladder"): a retry is written here,
//! and synced, before the input offset that brought it is committed, and removed only
//! after what it became is acknowledged by Kafka; a SIGKILL or a restart resumes every
//! one at its due time.
//!
//! A retry is named by where it came from (`<topic>/<partition>/<offset>#<which>`: the
//! element of a split, or the delay's session), so a redelivery of its input after a
//! crash adds nothing. Only the retry scheduler changes or removes a row; the consuming
//! loop only adds, so the two never race on one.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use kg_shared::dlq::Attempt;
use rusqlite::{params, Connection, OptionalExtension};

/// One record waiting for its next attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingRetry {
    pub id: String,
    /// The input record's Kafka key (`<client>::…`), kept for the output.
    pub kafka_key: String,
    /// The record as the failed stage was given it (JSON).
    pub record: Vec<u8>,
    /// The input record as it was read, for the dead letter after the last rung, which a
    /// replay puts back into the input (None when larger than a dead letter keeps whole).
    pub original: Option<Vec<u8>>,
    /// The stage to run it from.
    pub stage: usize,
    /// Every failed attempt so far, oldest first (at least one).
    pub attempts: Vec<Attempt>,
    /// Where the input record came from, for a dead letter.
    pub source_topic: String,
    pub source_partition: i32,
    pub source_offset: i64,
    /// When the next attempt is due (ms since the epoch).
    pub due_ms: i64,
}

impl PendingRetry {
    /// The name of the retry of element `element` of those the stages made of the input
    /// record at `topic/partition/offset` (0 without a split).
    pub fn id_of_element(topic: &str, partition: i32, offset: i64, element: usize) -> String {
        format!("{topic}/{partition}/{offset}#e{element}")
    }

    /// The name of the retry of the delay's session `session`, held from the input record
    /// at `topic/partition/offset`: apart from any element's, whatever the session's name.
    pub fn id_of_session(topic: &str, partition: i32, offset: i64, session: &str) -> String {
        format!("{topic}/{partition}/{offset}#s:{session}")
    }

    /// The delay's session this retry came from, if it came from one.
    pub fn session(&self) -> Option<&str> {
        self.id.split_once("#s:").map(|(_, session)| session)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RetryStoreError {
    #[error("retry store {path}: {source}")]
    Sqlite {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("retry store {path}: its lock is poisoned")]
    Poisoned { path: String },
    #[error("retry store: the settlement of a pass stopped: {0}")]
    Stopped(String),
}

/// The pending retries of one pipeline for one client.
pub struct RetryStore {
    /// Adds and settles.
    writer: Mutex<Connection>,
    /// Reads, which WAL lets run while the writer settles a pass: the scheduler attempts
    /// the next pass meanwhile.
    reader: Mutex<Connection>,
    path: String,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS retries (
    id TEXT PRIMARY KEY,
    kafka_key TEXT NOT NULL,
    record BLOB NOT NULL,
    stage INTEGER NOT NULL,
    attempts TEXT NOT NULL,
    source_topic TEXT NOT NULL,
    source_partition INTEGER NOT NULL,
    source_offset INTEGER NOT NULL,
    due_ms INTEGER NOT NULL,
    original BLOB
);
CREATE INDEX IF NOT EXISTS retries_by_due ON retries (due_ms, id);
";

/// The values of a retry's row, in the order of the statements above.
macro_rules! row_params {
    ($retry:expr) => {{
        let retry: &PendingRetry = $retry;
        params![
            retry.id,
            retry.kafka_key,
            retry.record,
            retry.stage as i64,
            serde_json::to_string(&retry.attempts).unwrap_or_else(|_| "[]".into()),
            retry.source_topic,
            retry.source_partition,
            retry.source_offset,
            retry.due_ms,
            retry.original,
        ]
    }};
}

/// A retry as its row holds it, in the order of the selects below.
fn read_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<PendingRetry> {
    let attempts: String = row.get(4)?;
    Ok(PendingRetry {
        id: row.get(0)?,
        kafka_key: row.get(1)?,
        record: row.get(2)?,
        stage: row.get::<_, i64>(3)?.max(0) as usize,
        // Written by `add` from the same type; a row that cannot be read back still keeps
        // its place on the ladder.
        attempts: serde_json::from_str(&attempts).unwrap_or_default(),
        source_topic: row.get(5)?,
        source_partition: row.get(6)?,
        source_offset: row.get(7)?,
        due_ms: row.get(8)?,
        original: row.get(9)?,
    })
}

/// Where pipeline `name`'s pending retries live in the client's data directory.
pub fn store_path(data_dir: &Path, pipeline: &str) -> PathBuf {
    data_dir.join(format!("pipeline-{pipeline}.retries.sqlite"))
}

impl RetryStore {
    pub fn open(path: &Path) -> Result<Self, RetryStoreError> {
        let display = path.display().to_string();
        let sqlite = |source| RetryStoreError::Sqlite {
            path: display.clone(),
            source,
        };
        let conn = super::pending::open_synced(path, SCHEMA).map_err(sqlite)?;
        let reader = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(sqlite)?;
        reader
            .busy_timeout(std::time::Duration::from_secs(5))
            .map_err(sqlite)?;
        Ok(Self {
            writer: Mutex::new(conn),
            reader: Mutex::new(reader),
            path: display,
        })
    }

    fn with<T>(
        &self,
        work: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
    ) -> Result<T, RetryStoreError> {
        self.on(&self.writer, work)
    }

    fn reading<T>(
        &self,
        work: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
    ) -> Result<T, RetryStoreError> {
        self.on(&self.reader, work)
    }

    fn on<T>(
        &self,
        conn: &Mutex<Connection>,
        work: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
    ) -> Result<T, RetryStoreError> {
        let mut conn = conn.lock().map_err(|_| RetryStoreError::Poisoned {
            path: self.path.clone(),
        })?;
        work(&mut conn).map_err(|source| RetryStoreError::Sqlite {
            path: self.path.clone(),
            source,
        })
    }

    /// Adds these retries in one synced transaction; one already pending (a redelivery of
    /// its input) is left as it is. How many were new.
    pub fn add(&self, retries: &[PendingRetry]) -> Result<usize, RetryStoreError> {
        if retries.is_empty() {
            return Ok(0);
        }
        self.with(|conn| {
            let tx = conn.transaction()?;
            let mut added = 0;
            {
                let mut insert = tx.prepare_cached(
                    "INSERT OR IGNORE INTO retries (id, kafka_key, record, stage, attempts,
                         source_topic, source_partition, source_offset, due_ms, original)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                )?;
                for retry in retries {
                    added += insert.execute(row_params!(retry))?;
                }
            }
            tx.commit()?;
            Ok(added)
        })
    }

    /// The retries due at or before `now_ms`, earliest first: at most `limit`, and past
    /// the first, at most `max_bytes` of records.
    pub fn due(
        &self,
        now_ms: i64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<PendingRetry>, RetryStoreError> {
        self.due_except(now_ms, limit, max_bytes, None, &HashSet::new())
    }

    /// As [`RetryStore::due`], from after `after` (a `(due_ms, id)` in the order retries
    /// are taken: the last of the pass being settled, so that its rows are read past
    /// without being read), leaving out the retries `settling` names in any case.
    pub fn due_except(
        &self,
        now_ms: i64,
        limit: usize,
        max_bytes: usize,
        after: Option<(i64, &str)>,
        settling: &HashSet<String>,
    ) -> Result<Vec<PendingRetry>, RetryStoreError> {
        self.reading(|conn| {
            let mut select = conn.prepare_cached(
                "SELECT id, kafka_key, record, stage, attempts, source_topic, source_partition,
                        source_offset, due_ms, original
                 FROM retries WHERE due_ms <= ?1 AND (due_ms, id) > (?3, ?4)
                 ORDER BY due_ms, id LIMIT ?2",
            )?;
            let (after_due, after_id) = after.unwrap_or((i64::MIN, ""));
            let rows = select.query_map(
                params![now_ms, (limit + settling.len()) as i64, after_due, after_id],
                read_row,
            )?;
            let mut due = Vec::new();
            let mut bytes = 0;
            for row in rows {
                let row = row?;
                if settling.contains(&row.id) {
                    continue;
                }
                bytes += row.record.len() + row.original.as_ref().map_or(0, Vec::len);
                if due.len() == limit || (!due.is_empty() && bytes > max_bytes) {
                    break;
                }
                due.push(row);
            }
            Ok(due)
        })
    }

    /// After a pass, in one synced transaction: removes `done` (what they became was
    /// acknowledged), then writes `pending` (retries to attempt again, new or replacing
    /// one of the same id).
    pub fn settle(&self, done: &[String], pending: &[PendingRetry]) -> Result<(), RetryStoreError> {
        if done.is_empty() && pending.is_empty() {
            return Ok(());
        }
        self.with(|conn| {
            let tx = conn.transaction()?;
            {
                let mut delete = tx.prepare_cached("DELETE FROM retries WHERE id = ?1")?;
                for id in done {
                    delete.execute([id])?;
                }
                let mut upsert = tx.prepare_cached(
                    "INSERT OR REPLACE INTO retries (id, kafka_key, record, stage, attempts,
                         source_topic, source_partition, source_offset, due_ms, original)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                )?;
                for retry in pending {
                    upsert.execute(row_params!(retry))?;
                }
            }
            tx.commit()
        })
    }

    /// How many retries are pending, and the earliest due time (ms).
    pub fn stats(&self) -> Result<(u64, Option<i64>), RetryStoreError> {
        self.reading(|conn| {
            conn.query_row("SELECT COUNT(*), MIN(due_ms) FROM retries", [], |row| {
                Ok((row.get::<_, i64>(0)? as u64, row.get(1)?))
            })
        })
    }

    /// The earliest due time (ms), if any retry is pending.
    pub fn next_due(&self) -> Result<Option<i64>, RetryStoreError> {
        self.reading(|conn| {
            conn.query_row("SELECT MIN(due_ms) FROM retries", [], |row| row.get(0))
                .optional()
                .map(Option::flatten)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    fn retry(id: &str, due_ms: i64) -> PendingRetry {
        PendingRetry {
            id: id.into(),
            kafka_key: "c1::a".into(),
            record: br#"{"alertname":"X"}"#.to_vec(),
            original: Some(br#"{"alerts":[{"alertname":"X"}]}"#.to_vec()),
            stage: 4,
            attempts: vec![Attempt {
                at: Utc.timestamp_millis_opt(0).unwrap(),
                reason: "graph stage: no graph yet".into(),
            }],
            source_topic: "alerts.raw".into(),
            source_partition: 0,
            source_offset: 7,
            due_ms,
        }
    }

    fn ids(retries: &[PendingRetry]) -> Vec<&str> {
        retries.iter().map(|r| r.id.as_str()).collect()
    }

    #[test]
    fn retries_survive_reopening_come_due_in_order_and_a_redelivery_adds_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = store_path(dir.path(), "alerts");
        {
            let store = RetryStore::open(&path).unwrap();
            assert_eq!(
                store.add(&[retry("b", 2_000), retry("a", 1_000)]).unwrap(),
                2
            );
            // The same input again (a redelivery after a crash), with a later due time.
            assert_eq!(store.add(&[retry("a", 9_000)]).unwrap(), 0);
        }
        let store = RetryStore::open(&path).unwrap();
        assert_eq!(store.stats().unwrap(), (2, Some(1_000)));
        assert_eq!(store.next_due().unwrap(), Some(1_000));
        assert!(store.due(999, 10, usize::MAX).unwrap().is_empty());
        let due = store.due(2_000, 10, usize::MAX).unwrap();
        assert_eq!(ids(&due), ["a", "b"]);
        assert_eq!(due[0], retry("a", 1_000));
        assert_eq!(ids(&store.due(2_000, 1, usize::MAX).unwrap()), ["a"]);
        // The byte bound stops a pass, but never below one retry.
        assert_eq!(ids(&store.due(2_000, 10, 1).unwrap()), ["a"]);
        // A pass being settled is left out of the next one, which still gets its fill.
        let settling: HashSet<String> = ["a".to_string()].into();
        assert_eq!(
            ids(&store
                .due_except(2_000, 1, usize::MAX, None, &settling)
                .unwrap()),
            ["b"]
        );
        // Or read past it, from its last retry on.
        assert_eq!(
            ids(&store
                .due_except(2_000, 10, usize::MAX, Some((1_000, "a")), &HashSet::new())
                .unwrap()),
            ["b"]
        );
    }

    #[test]
    fn settling_removes_what_went_out_and_moves_what_failed_again_up_its_ladder() {
        let dir = tempfile::tempdir().unwrap();
        let store = RetryStore::open(&store_path(dir.path(), "alerts")).unwrap();
        store.add(&[retry("a", 1_000), retry("b", 1_000)]).unwrap();
        let mut again = retry("b", 5_000);
        again.attempts.push(Attempt {
            at: Utc.timestamp_millis_opt(1_000).unwrap(),
            reason: "graph stage: still no graph".into(),
        });
        store.settle(&["a".into()], &[again.clone()]).unwrap();
        assert_eq!(store.stats().unwrap(), (1, Some(5_000)));
        assert_eq!(store.due(5_000, 10, usize::MAX).unwrap(), [again]);
        store.settle(&["b".into()], &[]).unwrap();
        assert_eq!(store.stats().unwrap(), (0, None));
        assert_eq!(store.next_due().unwrap(), None);
    }
}
