//! The delay stage's held sessions, in a SQLite file on the client's volume
//! (`<data dir>/pipeline-<name>.pending.sqlite`): they outlive the worker, so a restart or
//! a SIGKILL resumes every session where it was, without reading anything back from Kafka.
//! A session is written here, and synced, before the input offset that brought it is
//! committed; it is removed only after what it became (the output, a diverted record, a
//! dead letter) is acknowledged. One row per session: a redelivery of the record held (the
//! same source offset, after a crash) changes nothing; a later record of a session already
//! held (a second poweroff) replaces it, and its hold starts again, counted as superseded.
//! A session is let go, or re-scheduled, only in the version the scheduler looked at, so a
//! record that replaced it meanwhile is kept.
//!
//! A record that ends its session's hold (the delay's `end_when`: an alert's resolution)
//! turns a held session into an ended one: a tombstone, kept until the hold would have
//! run out so that a redelivery of the ended record is not held again, and then deleted
//! unemitted. With nothing held, it is kept as passing on: due at once, emitted unchecked.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension};

/// A held session, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct HeldSession {
    pub session: String,
    /// The input record's Kafka key (`<client>::…`), kept for the output.
    pub kafka_key: String,
    /// The record as the stages before the delay left it (JSON).
    pub record: Vec<u8>,
    /// Where the input record came from, for a dead letter.
    pub source_topic: String,
    pub source_partition: i32,
    pub source_offset: i64,
    pub held_at_ms: i64,
    pub due_ms: i64,
    pub next_check_ms: i64,
    pub kind: SessionKind,
}

/// What a row of the store is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionKind {
    /// A record held until its due time, checked on the way.
    Held,
    /// A record that ended no hold: due at once, emitted without a check.
    PassOn,
    /// A held record another ended: deleted at its due time, never emitted.
    Ended,
}

impl SessionKind {
    fn code(self) -> i64 {
        match self {
            SessionKind::Held => 0,
            SessionKind::PassOn => 1,
            SessionKind::Ended => 2,
        }
    }

    fn from_code(code: i64) -> Self {
        match code {
            1 => SessionKind::PassOn,
            2 => SessionKind::Ended,
            _ => SessionKind::Held,
        }
    }
}

impl HeldSession {
    /// This version of the session: which input record it holds.
    pub fn version(&self) -> SessionVersion {
        SessionVersion {
            session: self.session.clone(),
            source_topic: self.source_topic.clone(),
            source_partition: self.source_partition,
            source_offset: self.source_offset,
        }
    }
}

/// A session as held from one input record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionVersion {
    pub session: String,
    pub source_topic: String,
    pub source_partition: i32,
    pub source_offset: i64,
}

/// What holding a batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Holding {
    /// Sessions held for the first time.
    pub added: usize,
    /// Held sessions a later record replaced (the earlier record is superseded).
    pub replaced: usize,
    /// Held sessions a record ended (`end_when`): neither record is emitted.
    pub ended: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum PendingError {
    #[error("pending store {path}: {source}")]
    Sqlite {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("pending store {path}: its lock is poisoned")]
    Poisoned { path: String },
}

/// The held sessions of one pipeline for one client.
pub struct PendingStore {
    conn: Mutex<Connection>,
    path: String,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS held (
    session TEXT PRIMARY KEY,
    kafka_key TEXT NOT NULL,
    record BLOB NOT NULL,
    source_topic TEXT NOT NULL,
    source_partition INTEGER NOT NULL,
    source_offset INTEGER NOT NULL,
    held_at_ms INTEGER NOT NULL,
    due_ms INTEGER NOT NULL,
    next_check_ms INTEGER NOT NULL,
    kind INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS held_by_next_check ON held (next_check_ms);
CREATE INDEX IF NOT EXISTS held_by_due ON held (due_ms);
";

/// Where pipeline `name`'s held sessions live in the client's data directory.
pub fn store_path(data_dir: &Path, pipeline: &str) -> PathBuf {
    data_dir.join(format!("pipeline-{pipeline}.pending.sqlite"))
}

impl PendingStore {
    pub fn open(path: &Path) -> Result<Self, PendingError> {
        let display = path.display().to_string();
        let sqlite = |source| PendingError::Sqlite {
            path: display.clone(),
            source,
        };
        let conn = Connection::open(path).map_err(sqlite)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(sqlite)?;
        // FULL: each batch's transaction is synced before its input offsets are committed,
        // so not even a machine crash loses a held session whose input was committed.
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;",
        )
        .map_err(sqlite)?;
        conn.execute_batch(SCHEMA).map_err(sqlite)?;
        // Stores written before rows had a kind: every row in them is held.
        let has_kind: bool = conn
            .query_row(
                "SELECT COUNT(*) FROM pragma_table_info('held') WHERE name = 'kind'",
                [],
                |row| row.get::<_, i64>(0),
            )
            .map_err(sqlite)?
            > 0;
        if !has_kind {
            conn.execute_batch("ALTER TABLE held ADD COLUMN kind INTEGER NOT NULL DEFAULT 0")
                .map_err(sqlite)?;
        }
        Ok(Self {
            conn: Mutex::new(conn),
            path: display,
        })
    }

    fn with<T>(
        &self,
        work: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
    ) -> Result<T, PendingError> {
        let mut conn = self.conn.lock().map_err(|_| PendingError::Poisoned {
            path: self.path.clone(),
        })?;
        work(&mut conn).map_err(|source| PendingError::Sqlite {
            path: self.path.clone(),
            source,
        })
    }

    /// Holds these sessions, in one synced transaction. A session already held keeps its
    /// record when this one is the same input record or an earlier one of the same
    /// partition (a redelivery); a later one replaces it. A record that ends a hold
    /// ([`SessionKind::Ended`] as given) ends the held one, or passes on when none is held.
    pub fn hold(&self, sessions: &[HeldSession]) -> Result<Holding, PendingError> {
        self.with(|conn| {
            let tx = conn.transaction()?;
            let mut holding = Holding::default();
            {
                let mut current = tx.prepare_cached(
                    "SELECT source_topic, source_partition, source_offset, kind, held_at_ms, due_ms
                     FROM held WHERE session = ?1",
                )?;
                let mut upsert = tx.prepare_cached(
                    "INSERT OR REPLACE INTO held (session, kafka_key, record, source_topic,
                        source_partition, source_offset, held_at_ms, due_ms, next_check_ms, kind)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                )?;
                for s in sessions {
                    let held: Option<(String, i32, i64, i64, i64, i64)> = current
                        .query_row(params![s.session], |r| {
                            Ok((
                                r.get(0)?,
                                r.get(1)?,
                                r.get(2)?,
                                r.get(3)?,
                                r.get(4)?,
                                r.get(5)?,
                            ))
                        })
                        .optional()?;
                    let mut row = s.clone();
                    match (held, s.kind) {
                        (Some((topic, partition, offset, ..)), _)
                            if topic == s.source_topic
                                && partition == s.source_partition
                                && offset >= s.source_offset =>
                        {
                            continue
                        }
                        // An ending record (given as Ended) with nothing held passes on.
                        (None, SessionKind::Ended) => row.kind = SessionKind::PassOn,
                        (None, _) => holding.added += 1,
                        (Some((.., kind, held_at, due)), SessionKind::Ended) => {
                            match SessionKind::from_code(kind) {
                                // The tombstone lasts as long as the hold it ended would have.
                                SessionKind::Held => {
                                    holding.ended += 1;
                                    row.held_at_ms = held_at;
                                    row.due_ms = due;
                                    row.next_check_ms = due;
                                }
                                // Already ended: the first end stands.
                                SessionKind::Ended => continue,
                                // A later resolution replaces one not yet emitted.
                                SessionKind::PassOn => row.kind = SessionKind::PassOn,
                            }
                        }
                        (Some((.., kind, _, _)), _) => {
                            if SessionKind::from_code(kind) == SessionKind::Held {
                                holding.replaced += 1;
                            } else {
                                holding.added += 1;
                            }
                        }
                    }
                    upsert.execute(params![
                        row.session,
                        row.kafka_key,
                        row.record,
                        row.source_topic,
                        row.source_partition,
                        row.source_offset,
                        row.held_at_ms,
                        row.due_ms,
                        row.next_check_ms,
                        row.kind.code()
                    ])?;
                }
            }
            tx.commit()?;
            Ok(holding)
        })
    }

    /// Sessions whose next check is at or before `now_ms`, earliest first: up to `limit`,
    /// and no more once their records reach `max_bytes` (at least one is returned).
    pub fn to_check(
        &self,
        now_ms: i64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<HeldSession>, PendingError> {
        self.with(|conn| {
            let mut query = conn.prepare_cached(
                "SELECT session, kafka_key, record, source_topic, source_partition,
                        source_offset, held_at_ms, due_ms, next_check_ms, kind
                 FROM held WHERE next_check_ms <= ?1 ORDER BY next_check_ms LIMIT ?2",
            )?;
            let mut rows = query.query(params![now_ms, limit as i64])?;
            let mut sessions = Vec::new();
            let mut bytes = 0;
            while let Some(row) = rows.next()? {
                let session = HeldSession {
                    session: row.get(0)?,
                    kafka_key: row.get(1)?,
                    record: row.get(2)?,
                    source_topic: row.get(3)?,
                    source_partition: row.get(4)?,
                    source_offset: row.get(5)?,
                    held_at_ms: row.get(6)?,
                    due_ms: row.get(7)?,
                    next_check_ms: row.get(8)?,
                    kind: SessionKind::from_code(row.get(9)?),
                };
                bytes += session.record.len();
                sessions.push(session);
                if bytes >= max_bytes {
                    break;
                }
            }
            Ok(sessions)
        })
    }

    /// Moves sessions' next checks (ms), in one transaction; a session replaced since it
    /// was read keeps its own.
    pub fn recheck(&self, next_checks: &[(SessionVersion, i64)]) -> Result<(), PendingError> {
        self.with(|conn| {
            let tx = conn.transaction()?;
            {
                let mut update = tx.prepare_cached(
                    "UPDATE held SET next_check_ms = ?5 WHERE session = ?1 AND source_topic = ?2
                        AND source_partition = ?3 AND source_offset = ?4",
                )?;
                for (v, next) in next_checks {
                    update.execute(params![
                        v.session,
                        v.source_topic,
                        v.source_partition,
                        v.source_offset,
                        next
                    ])?;
                }
            }
            tx.commit()
        })
    }

    /// Lets these sessions go (what they became was acknowledged), in one transaction; a
    /// session replaced since it was read stays held.
    pub fn release(&self, versions: &[SessionVersion]) -> Result<(), PendingError> {
        self.with(|conn| {
            let tx = conn.transaction()?;
            {
                let mut delete = tx.prepare_cached(
                    "DELETE FROM held WHERE session = ?1 AND source_topic = ?2
                        AND source_partition = ?3 AND source_offset = ?4",
                )?;
                for v in versions {
                    delete.execute(params![
                        v.session,
                        v.source_topic,
                        v.source_partition,
                        v.source_offset
                    ])?;
                }
            }
            tx.commit()
        })
    }

    /// How many sessions are held, and the earliest due time (ms), for health and metrics.
    pub fn stats(&self) -> Result<(u64, Option<i64>), PendingError> {
        self.with(|conn| {
            // Tombstones of ended sessions are not pending.
            conn.query_row(
                "SELECT COUNT(*), MIN(due_ms) FROM held WHERE kind <> 2",
                [],
                |row| Ok((row.get::<_, i64>(0)? as u64, row.get(1)?)),
            )
        })
    }

    /// The earliest next check (ms), if any session is held.
    pub fn next_check(&self) -> Result<Option<i64>, PendingError> {
        self.with(|conn| {
            conn.query_row("SELECT MIN(next_check_ms) FROM held", [], |row| row.get(0))
                .optional()
                .map(Option::flatten)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(name: &str, next_check_ms: i64) -> HeldSession {
        HeldSession {
            session: name.into(),
            kafka_key: format!("c1::{name}"),
            record: br#"{"server_id":"x"}"#.to_vec(),
            source_topic: "servers.poweroff".into(),
            source_partition: 0,
            source_offset: 7,
            held_at_ms: 0,
            due_ms: 1000 + next_check_ms,
            next_check_ms,
            kind: SessionKind::Held,
        }
    }

    fn names(sessions: Vec<HeldSession>) -> Vec<String> {
        sessions.into_iter().map(|s| s.session).collect()
    }

    #[test]
    fn held_sessions_survive_reopening_and_are_checked_earliest_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = store_path(dir.path(), "cooling");
        {
            let store = PendingStore::open(&path).unwrap();
            let holding = store
                .hold(&[session("b", 20), session("a", 10), session("c", 30)])
                .unwrap();
            assert_eq!(
                holding,
                Holding {
                    added: 3,
                    ..Holding::default()
                }
            );
            // A redelivered record of a held session (same offset) changes nothing.
            let redelivered = HeldSession {
                next_check_ms: 99,
                ..session("a", 10)
            };
            assert_eq!(store.hold(&[redelivered]).unwrap(), Holding::default());
        }
        let store = PendingStore::open(&path).unwrap();
        assert_eq!(
            names(store.to_check(20, 10, usize::MAX).unwrap()),
            ["a", "b"]
        );
        assert_eq!(
            store.to_check(20, 10, usize::MAX).unwrap()[0],
            session("a", 10)
        );
        assert_eq!(store.stats().unwrap(), (3, Some(1010)));
        assert_eq!(store.next_check().unwrap(), Some(10));

        store.recheck(&[(session("a", 10).version(), 25)]).unwrap();
        store.release(&[session("b", 20).version()]).unwrap();
        assert_eq!(
            names(store.to_check(30, 10, usize::MAX).unwrap()),
            ["a", "c"]
        );
        assert_eq!(store.stats().unwrap().0, 2);
        store
            .release(&[session("a", 10).version(), session("c", 30).version()])
            .unwrap();
        assert_eq!(store.stats().unwrap(), (0, None));
        assert_eq!(store.next_check().unwrap(), None);
    }

    #[test]
    fn a_check_batch_stops_at_its_bytes_but_holds_at_least_one_session() {
        let dir = tempfile::tempdir().unwrap();
        let store = PendingStore::open(&store_path(dir.path(), "cooling")).unwrap();
        store
            .hold(&[session("a", 1), session("b", 2), session("c", 3)])
            .unwrap();
        let size = session("a", 1).record.len();
        assert_eq!(names(store.to_check(10, 10, 2 * size).unwrap()), ["a", "b"]);
        assert_eq!(names(store.to_check(10, 10, 1).unwrap()), ["a"]);
        assert_eq!(
            names(store.to_check(10, 2, usize::MAX).unwrap()),
            ["a", "b"]
        );
    }

    #[test]
    fn a_later_record_replaces_a_held_session_and_the_earlier_version_is_not_released() {
        let dir = tempfile::tempdir().unwrap();
        let store = PendingStore::open(&store_path(dir.path(), "cooling")).unwrap();
        let first = session("a", 10);
        store.hold(std::slice::from_ref(&first)).unwrap();
        // The scheduler reads the first version; a later poweroff replaces it meanwhile.
        let read = store
            .to_check(10, 10, usize::MAX)
            .unwrap()
            .remove(0)
            .version();
        let second = HeldSession {
            source_offset: 9,
            held_at_ms: 5,
            due_ms: 2000,
            next_check_ms: 50,
            ..session("a", 10)
        };
        assert_eq!(
            store.hold(std::slice::from_ref(&second)).unwrap(),
            Holding {
                replaced: 1,
                ..Holding::default()
            }
        );
        // An earlier record of the same partition (a replay) does not replace it back.
        assert_eq!(store.hold(&[first]).unwrap(), Holding::default());
        // What the scheduler decided for the first version touches nothing now.
        store.recheck(&[(read.clone(), 11)]).unwrap();
        store.release(&[read]).unwrap();
        assert_eq!(
            store.to_check(i64::MAX, 10, usize::MAX).unwrap(),
            std::slice::from_ref(&second)
        );
        store.release(&[second.version()]).unwrap();
        assert_eq!(store.stats().unwrap().0, 0);
    }

    /// An alert's resolution at `offset` (an ending record).
    fn ending(name: &str, offset: i64) -> HeldSession {
        HeldSession {
            source_offset: offset,
            held_at_ms: 20,
            due_ms: 20,
            next_check_ms: 20,
            kind: SessionKind::Ended,
            ..session(name, 10)
        }
    }

    #[test]
    fn an_ending_record_ends_a_held_session_and_its_tombstone_outlasts_redeliveries() {
        let dir = tempfile::tempdir().unwrap();
        let store = PendingStore::open(&store_path(dir.path(), "alerts")).unwrap();
        let firing = session("a", 10);
        store.hold(std::slice::from_ref(&firing)).unwrap();
        assert_eq!(
            store.hold(&[ending("a", 8)]).unwrap(),
            Holding {
                ended: 1,
                ..Holding::default()
            }
        );
        // The tombstone keeps the hold's due time, and is not pending.
        let tombstone = store.to_check(i64::MAX, 10, usize::MAX).unwrap().remove(0);
        assert_eq!(tombstone.kind, SessionKind::Ended);
        assert_eq!(tombstone.due_ms, firing.due_ms);
        assert_eq!(store.stats().unwrap(), (0, None));
        // A crash before the offsets were committed redelivers both: neither changes it.
        assert_eq!(
            store.hold(&[firing, ending("a", 8)]).unwrap(),
            Holding::default()
        );
        assert_eq!(store.hold(&[ending("a", 9)]).unwrap(), Holding::default());
        assert_eq!(
            store.to_check(i64::MAX, 10, usize::MAX).unwrap(),
            vec![tombstone.clone()]
        );
        // The alert fires again later: held anew.
        let again = HeldSession {
            source_offset: 12,
            ..session("a", 30)
        };
        assert_eq!(
            store.hold(std::slice::from_ref(&again)).unwrap(),
            Holding {
                added: 1,
                ..Holding::default()
            }
        );
        assert_eq!(store.stats().unwrap(), (1, Some(again.due_ms)));
    }

    #[test]
    fn an_ending_record_with_nothing_held_passes_on_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = PendingStore::open(&store_path(dir.path(), "alerts")).unwrap();
        assert_eq!(store.hold(&[ending("b", 8)]).unwrap(), Holding::default());
        let passing = store.to_check(20, 10, usize::MAX).unwrap();
        assert_eq!(passing.len(), 1);
        assert_eq!(passing[0].kind, SessionKind::PassOn);
        assert_eq!(store.stats().unwrap(), (1, Some(20)));
    }

    #[test]
    fn a_store_written_before_sessions_had_kinds_opens_with_every_session_held() {
        let dir = tempfile::tempdir().unwrap();
        let path = store_path(dir.path(), "cooling");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(&SCHEMA.replace(",\n    kind INTEGER NOT NULL DEFAULT 0", ""))
                .unwrap();
            conn.execute_batch(
                "INSERT INTO held VALUES ('a', 'c1::a', x'7b7d', 't', 0, 1, 0, 5, 5)",
            )
            .unwrap();
        }
        let store = PendingStore::open(&path).unwrap();
        let held = store.to_check(10, 10, usize::MAX).unwrap();
        assert_eq!(held.len(), 1);
        assert_eq!(held[0].kind, SessionKind::Held);
    }
}
