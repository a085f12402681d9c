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
//! run out, then deleted unemitted. With nothing held (an alert emitted already) it passes
//! on: it is kept, due at once, under a key of its own (`<session>#end`), so that a later
//! record of the session does not replace it before it is emitted.
//!
//! With `hold_from` (a record's own time, an alert's `startsAt`), a session let go leaves a
//! marker for a day: a repeat of a record already let go or ended (the same session, no
//! later a time: Alertmanager re-sends every firing alert of a group when the group
//! changes) is dropped, counted as a repeat, instead of being held and emitted again; and
//! a resolution of it passes on. If a resolution ends a session while the scheduler is
//! emitting it, the release finds the tombstone that ended it and lets the resolution pass
//! on, since the alert went out.

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
    /// The input record as it was read, for a dead letter that a replay puts back into
    /// the input (None when larger than a dead letter keeps whole).
    pub original: Option<Vec<u8>>,
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
    /// A session let go (with `hold_from`): kept until its time is up so that a repeat of
    /// its record is recognised, then deleted.
    Released,
}

impl SessionKind {
    fn code(self) -> i64 {
        match self {
            SessionKind::Held => 0,
            SessionKind::PassOn => 1,
            SessionKind::Ended => 2,
            SessionKind::Released => 3,
        }
    }

    fn from_code(code: i64) -> Self {
        match code {
            1 => SessionKind::PassOn,
            2 => SessionKind::Ended,
            3 => SessionKind::Released,
            _ => SessionKind::Held,
        }
    }
}

/// How long a released session's marker is kept (see the module's doc).
pub const RELEASED_MARKER: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// The key under which a record passing on is kept, apart from its session's hold.
fn pass_on_key(session: &str) -> String {
    format!("{session}#end")
}

/// A held record's version as a tombstone names it.
fn version_text(topic: &str, partition: i32, offset: i64) -> String {
    format!("{topic}/{partition}/{offset}")
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
    /// Records of a session already let go or ended, no later than it (dropped).
    pub repeats: usize,
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
    /// Whether sessions let go leave a marker (see the module's doc).
    markers: bool,
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
    kind INTEGER NOT NULL DEFAULT 0,
    ends_version TEXT,
    original BLOB
);
CREATE INDEX IF NOT EXISTS held_by_next_check ON held (next_check_ms);
CREATE INDEX IF NOT EXISTS held_by_due ON held (due_ms);
";

/// A store's SQLite file, opened for writing with `schema` applied. WAL, so that readers
/// (health, a second connection) do not wait on the writer; FULL sync: each batch's
/// transaction is synced before its input offsets are committed, so not even a machine
/// crash loses a row whose input was committed.
pub(super) fn open_synced(path: &Path, schema: &str) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = FULL;",
    )?;
    conn.execute_batch(schema)?;
    Ok(conn)
}

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
        let conn = open_synced(path, SCHEMA).map_err(sqlite)?;
        // Stores written before rows had a kind: every row in them is held.
        for (column, definition) in [
            ("kind", "kind INTEGER NOT NULL DEFAULT 0"),
            ("ends_version", "ends_version TEXT"),
            ("original", "original BLOB"),
        ] {
            let has: bool = conn
                .query_row(
                    "SELECT COUNT(*) FROM pragma_table_info('held') WHERE name = ?1",
                    [column],
                    |row| row.get::<_, i64>(0),
                )
                .map_err(sqlite)?
                > 0;
            if !has {
                conn.execute_batch(&format!("ALTER TABLE held ADD COLUMN {definition}"))
                    .map_err(sqlite)?;
            }
        }
        Ok(Self {
            conn: Mutex::new(conn),
            path: display,
            markers: false,
        })
    }

    /// Keeps a marker of each session let go, for [`RELEASED_MARKER`] (a delay with
    /// `hold_from`, whose repeats carry their first time).
    pub fn keeping_markers(mut self) -> Self {
        self.markers = true;
        self
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
    /// A record no later than a session let go or ended is a repeat (see the module's doc).
    pub fn hold(&self, sessions: &[HeldSession]) -> Result<Holding, PendingError> {
        let markers = self.markers;
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
                        source_partition, source_offset, held_at_ms, due_ms, next_check_ms, kind,
                        ends_version, original)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                )?;
                // A repeat keeps the marker it met for another day (an alert firing for
                // days is re-sent every few hours).
                let mut refresh = tx.prepare_cached(
                    "UPDATE held SET due_ms = ?2, next_check_ms = ?2 WHERE session = ?1 AND kind = 3",
                )?;
                let refreshed_until = chrono::Utc::now()
                    .timestamp_millis()
                    .saturating_add(RELEASED_MARKER.as_millis() as i64);
                for s in sessions {
                    let mut row = |session: &str| {
                        current
                            .query_row(params![session], |r| {
                                Ok(Current {
                                    topic: r.get(0)?,
                                    partition: r.get(1)?,
                                    offset: r.get(2)?,
                                    kind: SessionKind::from_code(r.get(3)?),
                                    held_at_ms: r.get(4)?,
                                    due_ms: r.get(5)?,
                                })
                            })
                            .optional()
                    };
                    let held = row(&s.session)?;
                    let repeats = holding.repeats;
                    let decided = decide_hold(s, held.as_ref(), markers, &mut holding, || {
                        row(&pass_on_key(&s.session))
                    })?;
                    if holding.repeats > repeats {
                        refresh.execute(params![s.session, refreshed_until])?;
                    }
                    let Some((write, ends)) = decided else {
                        continue;
                    };
                    upsert.execute(params![
                        write.session,
                        write.kafka_key,
                        write.record,
                        write.source_topic,
                        write.source_partition,
                        write.source_offset,
                        write.held_at_ms,
                        write.due_ms,
                        write.next_check_ms,
                        write.kind.code(),
                        ends,
                        write.original
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
                        source_offset, held_at_ms, due_ms, next_check_ms, kind, original
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
                    original: row.get(10)?,
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

    /// Lets these sessions go (what they became was acknowledged), in one transaction, at
    /// `now_ms`, each with whether it went to the output; a session replaced since it was
    /// read stays held. A session that went out leaves a marker when the store keeps them,
    /// and if a record ended it meanwhile (the resolution of an alert being emitted), that
    /// record passes on; any other is deleted.
    pub fn release(
        &self,
        versions: &[(SessionVersion, bool)],
        now_ms: i64,
    ) -> Result<(), PendingError> {
        let markers = self.markers;
        self.with(|conn| {
            let tx = conn.transaction()?;
            {
                let mut delete = tx.prepare_cached(
                    "DELETE FROM held WHERE session = ?1 AND source_topic = ?2
                        AND source_partition = ?3 AND source_offset = ?4
                        AND (kind <> 0 OR ?5 = 0)",
                )?;
                // A marker keeps what tells a repeat (the session, its time), not the record.
                let mut mark = tx.prepare_cached(
                    "UPDATE held SET kind = 3, due_ms = ?5, next_check_ms = ?5, record = x''
                     WHERE session = ?1 AND source_topic = ?2 AND source_partition = ?3
                        AND source_offset = ?4 AND kind = 0",
                )?;
                let marker_until = now_ms.saturating_add(RELEASED_MARKER.as_millis() as i64);
                for (v, emitted) in versions {
                    let leave_marker = markers && *emitted;
                    let mut gone = delete.execute(params![
                        v.session,
                        v.source_topic,
                        v.source_partition,
                        v.source_offset,
                        i64::from(leave_marker)
                    ])?;
                    if leave_marker {
                        gone += mark.execute(params![
                            v.session,
                            v.source_topic,
                            v.source_partition,
                            v.source_offset,
                            marker_until
                        ])?;
                    }
                    if gone == 0 && *emitted {
                        let until = markers.then_some(marker_until);
                        pass_on_what_ended(&tx, v, now_ms, until)?;
                    }
                }
            }
            tx.commit()
        })
    }

    /// Forgets the markers of these sessions: each went up the retry ladder and was given
    /// up there, never out, so a repeat of its record is to be held again, not dropped.
    pub fn forget_markers(&self, sessions: &[String]) -> Result<(), PendingError> {
        if sessions.is_empty() {
            return Ok(());
        }
        self.with(|conn| {
            let tx = conn.transaction()?;
            {
                let mut forget =
                    tx.prepare_cached("DELETE FROM held WHERE session = ?1 AND kind = 3")?;
                for session in sessions {
                    forget.execute([session])?;
                }
            }
            tx.commit()
        })
    }

    /// How many sessions are held, and the earliest due time (ms), for health and metrics.
    pub fn stats(&self) -> Result<(u64, Option<i64>), PendingError> {
        self.with(|conn| {
            // Tombstones and markers are not pending.
            conn.query_row(
                "SELECT COUNT(*), MIN(due_ms) FROM held WHERE kind IN (0, 1)",
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

/// A session that went out while a record ended it (an alert's resolution that came in
/// while the alert was being emitted): that record passes on, due at `now_ms`, and the
/// tombstone becomes the session's marker until `marker_until` (or goes, without markers).
fn pass_on_what_ended(
    tx: &rusqlite::Transaction<'_>,
    v: &SessionVersion,
    now_ms: i64,
    marker_until: Option<i64>,
) -> rusqlite::Result<()> {
    let version = version_text(&v.source_topic, v.source_partition, v.source_offset);
    // The resolution's row, as a record passing on under its own key, due now.
    let passed_on = tx
        .prepare_cached(
            "INSERT OR REPLACE INTO held (session, kafka_key, record, source_topic,
                source_partition, source_offset, held_at_ms, due_ms, next_check_ms, kind,
                original)
             SELECT ?3, kafka_key, record, source_topic, source_partition, source_offset,
                held_at_ms, ?4, ?4, 1, original
             FROM held WHERE session = ?1 AND kind = 2 AND ends_version = ?2",
        )?
        .execute(params![v.session, version, pass_on_key(&v.session), now_ms])?;
    if passed_on == 0 {
        return Ok(());
    }
    match marker_until {
        Some(until) => tx
            .prepare_cached(
                "UPDATE held SET kind = 3, due_ms = ?3, next_check_ms = ?3, record = x'',
                    ends_version = NULL
                 WHERE session = ?1 AND kind = 2 AND ends_version = ?2",
            )?
            .execute(params![v.session, version, until])?,
        None => tx
            .prepare_cached(
                "DELETE FROM held WHERE session = ?1 AND kind = 2 AND ends_version = ?2",
            )?
            .execute(params![v.session, version])?,
    };
    Ok(())
}

/// A session's row as `hold` finds it.
struct Current {
    topic: String,
    partition: i32,
    offset: i64,
    kind: SessionKind,
    held_at_ms: i64,
    due_ms: i64,
}

impl Current {
    /// Whether `s` is this row's record again, or an earlier one of its partition.
    fn redelivers(&self, s: &HeldSession) -> bool {
        self.topic == s.source_topic
            && self.partition == s.source_partition
            && self.offset >= s.source_offset
    }
}

/// What `hold` writes for the incoming `s` given its session's row (`pass_on_row` finds
/// the row of a record passing on; `markers`: the store knows repeats by their time): the
/// row and, for a tombstone, the version it ended; None when nothing changes. Counts what
/// it decides in `holding`.
fn decide_hold(
    s: &HeldSession,
    held: Option<&Current>,
    markers: bool,
    holding: &mut Holding,
    pass_on_row: impl FnOnce() -> rusqlite::Result<Option<Current>>,
) -> rusqlite::Result<Option<(HeldSession, Option<String>)>> {
    let mut write = s.clone();
    if held.is_some_and(|h| h.redelivers(s)) {
        return Ok(None);
    }
    let ending = s.kind == SessionKind::Ended;
    match (held, ending) {
        // A record to hold.
        (None, false) => holding.added += 1,
        // A record's own time (`hold_from`) tells a repeat from a new one; without it,
        // the time taken in says nothing of that.
        (Some(h), false)
            if markers && s.held_at_ms <= h.held_at_ms && h.kind != SessionKind::PassOn =>
        {
            holding.repeats += 1;
            return Ok(None);
        }
        (Some(h), false) => match h.kind {
            SessionKind::Held => holding.replaced += 1,
            _ => holding.added += 1,
        },
        // A record that ends a hold.
        (Some(h), true) if h.kind == SessionKind::Held => {
            holding.ended += 1;
            write.held_at_ms = h.held_at_ms;
            write.due_ms = h.due_ms;
            write.next_check_ms = h.due_ms;
            let ended = version_text(&h.topic, h.partition, h.offset);
            return Ok(Some((write, Some(ended))));
        }
        (Some(h), true) if h.kind == SessionKind::Ended => return Ok(None),
        // Nothing held (or only a marker of what went out): it passes on, apart.
        (_, true) => {
            if pass_on_row()?.is_some_and(|p| p.redelivers(s)) {
                return Ok(None);
            }
            write.session = pass_on_key(&s.session);
            write.kind = SessionKind::PassOn;
        }
    }
    Ok(Some((write, None)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(name: &str, next_check_ms: i64) -> HeldSession {
        HeldSession {
            session: name.into(),
            kafka_key: format!("c1::{name}"),
            record: br#"{"server_id":"x"}"#.to_vec(),
            original: Some(br#"{"server_id":"x","raw":true}"#.to_vec()),
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
        store
            .release(&[(session("b", 20).version(), true)], 0)
            .unwrap();
        assert_eq!(
            names(store.to_check(30, 10, usize::MAX).unwrap()),
            ["a", "c"]
        );
        assert_eq!(store.stats().unwrap().0, 2);
        store
            .release(
                &[
                    (session("a", 10).version(), true),
                    (session("c", 30).version(), true),
                ],
                0,
            )
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
        store.release(&[(read, true)], 0).unwrap();
        assert_eq!(
            store.to_check(i64::MAX, 10, usize::MAX).unwrap(),
            std::slice::from_ref(&second)
        );
        store.release(&[(second.version(), true)], 0).unwrap();
        assert_eq!(store.stats().unwrap().0, 0);
    }

    /// Every row of the store, as (session, kind), by session.
    fn rows(store: &PendingStore) -> Vec<(String, SessionKind)> {
        let mut rows: Vec<(String, SessionKind)> = store
            .to_check(i64::MAX, 10, usize::MAX)
            .unwrap()
            .into_iter()
            .map(|r| (r.session, r.kind))
            .collect();
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        rows
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
        // An alert pipeline's: its records carry their own time (hold_from).
        let store = PendingStore::open(&store_path(dir.path(), "alerts"))
            .unwrap()
            .keeping_markers();
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
        // The same alert again from another topic (its held time no later): a repeat.
        let repeat = HeldSession {
            source_topic: "alerts.raw".into(),
            source_offset: 3,
            ..session("a", 30)
        };
        assert_eq!(
            store.hold(&[repeat]).unwrap(),
            Holding {
                repeats: 1,
                ..Holding::default()
            }
        );
        // The alert fires again later (a later time of its own): held anew.
        let again = HeldSession {
            source_offset: 12,
            held_at_ms: 5,
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
        assert_eq!(passing[0].session, "b#end");
        assert_eq!(store.stats().unwrap(), (1, Some(20)));
        // A redelivery of it changes nothing; a later hold of the session does not replace it.
        assert_eq!(store.hold(&[ending("b", 8)]).unwrap(), Holding::default());
        let later = HeldSession {
            source_offset: 11,
            held_at_ms: 9,
            ..session("b", 40)
        };
        store.hold(std::slice::from_ref(&later)).unwrap();
        assert_eq!(
            rows(&store),
            [
                ("b".into(), SessionKind::Held),
                ("b#end".into(), SessionKind::PassOn)
            ]
        );
    }

    #[test]
    fn a_resolution_that_ends_a_session_being_emitted_passes_on_once_it_went_out() {
        let dir = tempfile::tempdir().unwrap();
        let store = PendingStore::open(&store_path(dir.path(), "alerts")).unwrap();
        store.hold(&[session("a", 10)]).unwrap();
        // The scheduler reads the firing and sends it; the resolution comes in meanwhile.
        let read = store
            .to_check(10, 10, usize::MAX)
            .unwrap()
            .remove(0)
            .version();
        store.hold(&[ending("a", 8)]).unwrap();
        store.release(&[(read, true)], 500).unwrap();
        let left = store.to_check(i64::MAX, 10, usize::MAX).unwrap();
        let passing: Vec<_> = left
            .iter()
            .filter(|r| r.kind == SessionKind::PassOn)
            .collect();
        assert_eq!(passing.len(), 1, "{left:?}");
        assert_eq!(passing[0].session, "a#end");
        assert_eq!(passing[0].source_offset, 8, "the resolution's own record");
        assert_eq!(passing[0].due_ms, 500, "due at once");
    }

    #[test]
    fn a_released_session_leaves_a_marker_that_turns_its_repeats_away_for_a_day() {
        let dir = tempfile::tempdir().unwrap();
        let store = PendingStore::open(&store_path(dir.path(), "alerts"))
            .unwrap()
            .keeping_markers();
        let firing = session("a", 10);
        store.hold(std::slice::from_ref(&firing)).unwrap();
        store.release(&[(firing.version(), true)], 1_000).unwrap();
        let marker = store.to_check(i64::MAX, 10, usize::MAX).unwrap().remove(0);
        assert_eq!(marker.kind, SessionKind::Released);
        assert_eq!(
            marker.next_check_ms,
            1_000 + RELEASED_MARKER.as_millis() as i64
        );
        assert_eq!(store.stats().unwrap(), (0, None), "a marker is not pending");
        // Alertmanager re-sends the same firing alert (same start): dropped.
        let repeat = HeldSession {
            source_offset: 20,
            ..session("a", 10)
        };
        assert_eq!(
            store.hold(&[repeat]).unwrap(),
            Holding {
                repeats: 1,
                ..Holding::default()
            }
        );
        // Its resolution passes on.
        store.hold(&[ending("a", 21)]).unwrap();
        assert!(store
            .to_check(i64::MAX, 10, usize::MAX)
            .unwrap()
            .iter()
            .any(|r| r.session == "a#end" && r.kind == SessionKind::PassOn));
        // The marker's time up, the scheduler's release deletes it.
        store.release(&[(marker.version(), false)], 2_000).unwrap();
        assert!(store
            .to_check(i64::MAX, 10, usize::MAX)
            .unwrap()
            .iter()
            .all(|r| r.session != "a"));
    }

    #[test]
    fn a_store_written_before_sessions_had_kinds_opens_with_every_session_held() {
        let dir = tempfile::tempdir().unwrap();
        let path = store_path(dir.path(), "cooling");
        {
            let conn = Connection::open(&path).unwrap();
            let old = SCHEMA.replace(
                ",\n    kind INTEGER NOT NULL DEFAULT 0,\n    ends_version TEXT,\n    original BLOB",
                "",
            );
            assert_ne!(old, SCHEMA, "the old schema has none of the later columns");
            conn.execute_batch(&old).unwrap();
            conn.execute_batch(
                "INSERT INTO held VALUES ('a', 'c1::a', x'7b7d', 't', 0, 1, 0, 5, 5)",
            )
            .unwrap();
        }
        let store = PendingStore::open(&path).unwrap();
        let held = store.to_check(10, 10, usize::MAX).unwrap();
        assert_eq!(held.len(), 1);
        assert_eq!(held[0].kind, SessionKind::Held);
        assert_eq!(held[0].original, None);
    }

    #[test]
    fn without_record_times_a_hold_after_an_ended_one_is_never_taken_for_a_repeat() {
        let dir = tempfile::tempdir().unwrap();
        let store = PendingStore::open(&store_path(dir.path(), "cooling")).unwrap();
        // Poweroff, poweron, poweroff in one batch, taken in within one millisecond.
        let first = session("a", 10);
        let again = HeldSession {
            source_offset: 9,
            ..session("a", 10)
        };
        let holding = store.hold(&[first, ending("a", 8), again]).unwrap();
        assert_eq!((holding.ended, holding.repeats, holding.added), (1, 0, 2));
        let rows = store.to_check(i64::MAX, 10, usize::MAX).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(
            (rows[0].kind, rows[0].source_offset),
            (SessionKind::Held, 9)
        );
    }

    #[test]
    fn a_dropped_session_leaves_no_marker_so_its_replay_is_held_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = PendingStore::open(&store_path(dir.path(), "alerts"))
            .unwrap()
            .keeping_markers();
        let firing = session("a", 10);
        store.hold(std::slice::from_ref(&firing)).unwrap();
        store.release(&[(firing.version(), false)], 1_000).unwrap();
        assert!(store.to_check(i64::MAX, 10, usize::MAX).unwrap().is_empty());
        let replayed = HeldSession {
            source_offset: 30,
            ..session("a", 10)
        };
        assert_eq!(store.hold(&[replayed]).unwrap().added, 1);
    }

    #[test]
    fn with_markers_the_tombstone_of_what_went_out_becomes_its_marker() {
        let dir = tempfile::tempdir().unwrap();
        let store = PendingStore::open(&store_path(dir.path(), "alerts"))
            .unwrap()
            .keeping_markers();
        store.hold(&[session("a", 10)]).unwrap();
        let read = store
            .to_check(10, 10, usize::MAX)
            .unwrap()
            .remove(0)
            .version();
        store.hold(&[ending("a", 8)]).unwrap();
        store.release(&[(read, true)], 500).unwrap();
        assert_eq!(
            rows(&store),
            [
                ("a".into(), SessionKind::Released),
                ("a#end".into(), SessionKind::PassOn)
            ]
        );
        // A late repeat of the alert that went out is turned away.
        let late = HeldSession {
            source_topic: "alerts.raw".into(),
            ..session("a", 10)
        };
        assert_eq!(store.hold(&[late]).unwrap().repeats, 1);
    }
}
