//! [`SqliteGraphStore`]: the graph in one SQLite file per client (WAL, `synchronous =
//! NORMAL`, prepared statements), readable with the `sqlite3` shell. The schema and the
//! operator's queries are in `docs/graph.md`; [`SCHEMA`] is the source of truth.
//!
//! Facts (episodes, resource snapshots and deletions, topology edges) are stored as they
//! arrive, idempotently. Everything derived (ABOUT targets after identity merges,
//! POTENTIAL_CAUSE, escalated severity, incidents and PART_OF) is recomputed at the end of
//! each batch for what the batch touched, from the stored facts alone, so the result does
//! not depend on arrival order or on redelivery. In memory, the store keeps only
//! accelerators that it can rebuild from the file at any time: the name and uid indexes,
//! the causal topology as adjacency lists, each resource's episode time bounds, and the
//! last hour of episodes per resource (older ranges are read from the file).

mod cache;
mod derive_pass;
mod queries;

use std::path::Path;

use chrono::{DateTime, SecondsFormat, Utc};
use kg_shared::records::{Severity, Subject};
use rusqlite::{params, Connection, OptionalExtension};
use xxhash_rust::xxh3::{xxh3_64, Xxh3};

use self::cache::{AliasSource, Ball, Cache, IdMap, IdSet, ObjectInfo};
use super::derive::EpisodeFacts;
use super::model::{
    subject_name, uid_placeholder, EpisodeInput, GraphInput, ResourceSnapshot, TopologyEdge,
};
use super::scoring::{classify, EpisodeClass};
use super::{
    ApplyStats, Candidate, EpisodicView, GraphStats, GraphStore, IncidentSummary, StoreError,
};

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = 1;

/// The schema (idempotent). See `docs/graph.md` for what each table and view holds.
pub const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- Resource nodes. `key` is the node id: `kind:namespace:name` (lowercase kind) as the
-- topology names resources, `kind:name` for cluster-scoped kinds, or `uid:<uid>` for a
-- placeholder known only by uid until a snapshot or event names it.
CREATE TABLE IF NOT EXISTS resource (
    id        INTEGER PRIMARY KEY,
    key       TEXT NOT NULL UNIQUE,
    kind      TEXT,
    namespace TEXT,
    name      TEXT,
    uid       TEXT,
    live      INTEGER NOT NULL DEFAULT 1
);

-- Kubernetes objects by uid: the alias uid -> resource node, the deletion tombstone
-- (uids are never reused, so a deletion is permanent) and the latest snapshot.
-- source: 'snapshot' (state.k8s.resource), 'event' (an event subject), 'tombstone'.
CREATE TABLE IF NOT EXISTS object (
    uid      TEXT PRIMARY KEY,
    resource INTEGER,
    kind     TEXT,
    source   TEXT NOT NULL,
    deleted  INTEGER NOT NULL DEFAULT 0,
    at       TEXT,
    snapshot TEXT
);
CREATE INDEX IF NOT EXISTS object_by_resource ON object(resource);

-- Topology edges (RUNS_ON, SELECTS, CONTROLS), one per state.k8s.topology key.
-- live = 0 after a tombstone; first_at = earliest `at` of its upserts (ms since the
-- epoch, 0 when none had one). Removed edges stay for the causal analysis of the past.
CREATE TABLE IF NOT EXISTS topology (
    src      INTEGER NOT NULL,
    dst      INTEGER NOT NULL,
    type     TEXT NOT NULL,
    live     INTEGER NOT NULL,
    first_at INTEGER NOT NULL,
    PRIMARY KEY (src, dst)
) WITHOUT ROWID;
-- What points at a resource (a node's pods, a pod's service and owner): the alert
-- pipeline's neighbours and blast radius read edges by their target.
CREATE INDEX IF NOT EXISTS topology_by_dst ON topology(dst);

-- Episodes: events and high-signal log lines. `resource` is the ABOUT edge,
-- `incident` the PART_OF edge. t = event time in ms since the epoch.
CREATE TABLE IF NOT EXISTS episode (
    id            INTEGER PRIMARY KEY,
    eid           TEXT NOT NULL UNIQUE,
    etype         TEXT NOT NULL,
    t             INTEGER NOT NULL,
    event_time    TEXT NOT NULL,
    severity      TEXT NOT NULL,
    base_severity TEXT NOT NULL,
    escalated     INTEGER NOT NULL DEFAULT 0,
    reason        TEXT,
    class         TEXT NOT NULL,
    message       TEXT,
    count         INTEGER NOT NULL,
    fingerprint   INTEGER NOT NULL,
    resource      INTEGER,
    subject_key   TEXT,
    subject_uid   TEXT,
    incident      INTEGER
);
CREATE INDEX IF NOT EXISTS episode_by_resource_time ON episode(resource, t);
CREATE INDEX IF NOT EXISTS episode_errors ON episode(resource, t) WHERE severity IN ('ERROR', 'FATAL');
CREATE INDEX IF NOT EXISTS episode_uid_only ON episode(subject_uid) WHERE subject_key IS NULL;
CREATE INDEX IF NOT EXISTS episode_by_incident ON episode(incident) WHERE incident IS NOT NULL;

-- POTENTIAL_CAUSE edges, at most 8 per effect, keyed by (effect, cause).
CREATE TABLE IF NOT EXISTS cause (
    effect         INTEGER NOT NULL,
    cause          INTEGER NOT NULL,
    confidence     REAL NOT NULL,
    temporal_score REAL NOT NULL,
    distance_score REAL NOT NULL,
    domain_score   REAL NOT NULL,
    hops           INTEGER NOT NULL,
    PRIMARY KEY (effect, cause)
) WITHOUT ROWID;

-- Incidents: >= 2 ERROR-or-worse episodes on one resource, each within 15 min of the
-- previous. iid = 'inc-' + xxh3(resource key, first episode id).
CREATE TABLE IF NOT EXISTS incident (
    id           INTEGER PRIMARY KEY,
    iid          TEXT NOT NULL UNIQUE,
    resource     INTEGER NOT NULL,
    start_t      INTEGER NOT NULL,
    end_t        INTEGER NOT NULL,
    start_time   TEXT NOT NULL,
    end_time     TEXT NOT NULL,
    episodes     INTEGER NOT NULL,
    max_severity TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS incident_by_resource ON incident(resource, start_t);

-- The relationships with readable ends, for operators.
CREATE VIEW IF NOT EXISTS v_about AS
    SELECT e.eid AS episode, e.reason, e.event_time, r.key AS resource
    FROM episode e JOIN resource r ON r.id = e.resource;
CREATE VIEW IF NOT EXISTS v_potential_cause AS
    SELECT ce.eid AS cause, ee.eid AS effect, c.confidence, c.temporal_score,
           c.distance_score, c.domain_score, c.hops,
           ce.reason AS cause_reason, ee.reason AS effect_reason,
           rc.key AS cause_resource, re.key AS effect_resource,
           ce.event_time AS cause_time, ee.event_time AS effect_time
    FROM cause c
    JOIN episode ee ON ee.id = c.effect
    JOIN episode ce ON ce.id = c.cause
    LEFT JOIN resource rc ON rc.id = ce.resource
    LEFT JOIN resource re ON re.id = ee.resource;
CREATE VIEW IF NOT EXISTS v_topology AS
    SELECT a.key AS src, t.type, b.key AS dst,
           (t.live AND a.live AND b.live) AS active, t.live AS edge_live, t.first_at
    FROM topology t JOIN resource a ON a.id = t.src JOIN resource b ON b.id = t.dst;
CREATE VIEW IF NOT EXISTS v_part_of AS
    SELECT e.eid AS episode, i.iid AS incident, r.key AS resource
    FROM episode e JOIN incident i ON i.id = e.incident JOIN resource r ON r.id = i.resource;
"#;

/// The graph of one client in one SQLite file.
pub struct SqliteGraphStore {
    conn: Connection,
    path: String,
    cache: Cache,
    /// The exclusive lock on `<path>.lock`, held for the store's life (none in memory).
    _lock: Option<std::fs::File>,
}

/// How long opening waits for another process to release the store's lock: long enough
/// for a worker being replaced to finish its last batch and exit.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Takes the exclusive lock beside the store file, so that two processes never write one
/// client's graph (a second graph builder left by a crash, or started by hand). The kernel
/// releases it when the holder exits, however it exits.
fn lock_store(path: &Path, wait: std::time::Duration) -> Result<std::fs::File, StoreError> {
    let lock_path = format!("{}.lock", path.display());
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|source| StoreError::Lock {
            path: lock_path.clone(),
            source,
        })?;
    let deadline = std::time::Instant::now() + wait;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(StoreError::Locked {
                    path: path.display().to_string(),
                })
            }
            Err(std::fs::TryLockError::Error(source)) => {
                return Err(StoreError::Lock {
                    path: lock_path,
                    source,
                })
            }
        }
    }
}

impl std::fmt::Debug for SqliteGraphStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteGraphStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SqliteGraphStore {
    /// Opens (creating if needed) the store at `path`: `<data_dir>/graph-<client>.sqlite`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_waiting(path, LOCK_WAIT)
    }

    /// [`SqliteGraphStore::open`], waiting at most `wait` for another holder of the lock.
    pub fn open_waiting(path: &Path, wait: std::time::Duration) -> Result<Self, StoreError> {
        let display = path.display().to_string();
        let lock = lock_store(path, wait)?;
        let conn = Connection::open(path).map_err(|source| StoreError::Open {
            path: display.clone(),
            source,
        })?;
        let mut store = Self::setup(conn, display)?;
        store._lock = Some(lock);
        Ok(store)
    }

    /// A store in memory, for tests.
    pub fn open_in_memory() -> Result<Self, StoreError> {
        let conn = Connection::open_in_memory().map_err(|source| StoreError::Open {
            path: ":memory:".to_owned(),
            source,
        })?;
        Self::setup(conn, ":memory:".to_owned())
    }

    fn setup(conn: Connection, path: String) -> Result<Self, StoreError> {
        let open_err = |source| StoreError::Open {
            path: path.clone(),
            source,
        };
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(open_err)?;
        // WAL: readers (an operator's sqlite3 shell) do not block the writer; NORMAL: a
        // commit is durable once the WAL is synced at checkpoints, and a crash loses at
        // most the last transactions, whose offsets were then not committed either.
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = NORMAL;
             PRAGMA temp_store = MEMORY;
             PRAGMA cache_size = -65536;
             PRAGMA foreign_keys = OFF;
             PRAGMA wal_autocheckpoint = 4000;",
        )
        .map_err(open_err)?;
        conn.set_prepared_statement_cache_capacity(64);
        conn.execute_batch(SCHEMA).map_err(open_err)?;
        let found: Option<i64> = conn
            .query_row(
                "SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'schema_version'",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(open_err)?;
        match found {
            Some(v) if v > SCHEMA_VERSION => {
                return Err(StoreError::SchemaVersion {
                    path,
                    found: v,
                    known: SCHEMA_VERSION,
                })
            }
            Some(_) => {}
            None => {
                conn.execute(
                    "INSERT INTO meta(key, value) VALUES ('schema_version', ?1)",
                    [SCHEMA_VERSION.to_string()],
                )
                .map_err(open_err)?;
            }
        }
        let cache = Cache::load(&conn).map_err(open_err)?;
        Ok(SqliteGraphStore {
            conn,
            path,
            cache,
            _lock: None,
        })
    }

    /// Turns the recent-episode index off until the next failed batch or reopen, so that
    /// every episode range is read from the file (tests and benchmarks compare the two).
    pub fn disable_recent_index(&mut self) {
        self.cache.recent.disable();
    }

    /// The file's path (`:memory:` for an in-memory store).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Runs the batch inside an open transaction.
    fn apply_in_transaction(&mut self, batch: &[GraphInput]) -> Result<ApplyStats, StoreError> {
        let mut writer = Writer {
            conn: &self.conn,
            cache: &mut self.cache,
            work: Work::default(),
            balls: IdMap::default(),
        };
        writer.work.stats.inputs = batch.len() as u64;
        for input in batch {
            match input {
                GraphInput::Event(e) | GraphInput::Log(e) => writer.put_episode(e)?,
                GraphInput::ResourceUpsert(s) => writer.put_resource(s)?,
                GraphInput::ResourceDelete { kind, uid } => writer.delete_object(kind, uid)?,
                GraphInput::EdgeUpsert(e) => writer.put_edge(e)?,
                GraphInput::EdgeDelete { from, to } => writer.delete_edge(from, to)?,
            }
        }
        writer.derive()?;
        Ok(writer.work.stats)
    }
}

impl GraphStore for SqliteGraphStore {
    fn apply(&mut self, batch: &[GraphInput]) -> Result<ApplyStats, StoreError> {
        if batch.is_empty() {
            return Ok(ApplyStats::default());
        }
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        match self.apply_in_transaction(batch) {
            Ok(stats) => match self.conn.execute_batch("COMMIT") {
                Ok(()) => {
                    self.cache.recent.prune();
                    Ok(stats)
                }
                Err(e) => {
                    self.recover();
                    Err(e.into())
                }
            },
            Err(e) => {
                self.recover();
                Err(e)
            }
        }
    }

    fn rca(&self, event_id: &str, limit: usize) -> Result<Vec<Candidate>, StoreError> {
        queries::rca(&self.conn, &self.cache, event_id, limit)
    }

    fn incidents(&self) -> Result<Vec<IncidentSummary>, StoreError> {
        queries::incidents(&self.conn)
    }

    fn incident_events(&self, incident_id: &str) -> Result<Vec<EpisodicView>, StoreError> {
        queries::incident_events(&self.conn, incident_id)
    }

    fn stats(&self) -> Result<GraphStats, StoreError> {
        queries::stats(&self.conn)
    }

    fn episode(&self, event_id: &str) -> Result<Option<EpisodicView>, StoreError> {
        queries::episode(&self.conn, event_id)
    }
}

impl SqliteGraphStore {
    /// After a failed batch: roll back and rebuild the in-memory indexes from the file.
    fn recover(&mut self) {
        if !self.conn.is_autocommit() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
        match Cache::load(&self.conn) {
            Ok(cache) => self.cache = cache,
            Err(e) => {
                tracing::error!(error = %e, path = %self.path, "failed to reload the graph store's indexes");
                self.cache = Cache::default();
            }
        }
    }
}

/// An episode's place: its resource, time and effective severity there.
#[derive(Clone, Copy, Debug)]
struct Position {
    res: Option<i64>,
    t: i64,
    sev: Severity,
}

/// An episode inserted, replaced by a newer version, or moved to another resource.
#[derive(Clone, Copy, Debug)]
struct Changed {
    facts: EpisodeFacts,
    old: Option<Position>,
    new: Position,
}

/// A topology edge that joined the causal topology, or is now known to be older.
#[derive(Clone, Copy, Debug)]
struct TopoChange {
    a: i64,
    b: i64,
    new_first: i64,
    old_first: Option<i64>,
}

/// What a batch did, for the derive pass.
#[derive(Default)]
struct Work {
    stats: ApplyStats,
    liveness: IdSet,
    changed: Vec<Changed>,
    inserted: IdSet,
    /// Each touched resource's latest episode time before the batch.
    pre_max: IdMap<i64>,
    topo: Vec<TopoChange>,
    /// Uid placeholders merged into named resources, deleted at the end.
    doomed: IdSet,
}

/// One batch's writes.
struct Writer<'a> {
    conn: &'a Connection,
    cache: &'a mut Cache,
    work: Work,
    /// Unfiltered 3-hop balls computed in this batch (topology is final by then).
    balls: IdMap<std::rc::Rc<Ball>>,
}

fn time_text(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

fn ms_text(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms).map_or_else(|| ms.to_string(), time_text)
}

fn parse_severity(s: &str) -> Severity {
    Severity::from_level(s).unwrap_or(Severity::Info)
}

/// The grouping key of an episode's reason (its class when it has none).
fn reason_hash(reason: Option<&str>, class: EpisodeClass) -> u64 {
    xxh3_64(reason.unwrap_or(class.as_str()).as_bytes())
}

/// Facts of an episode read back from a row.
fn facts_from_row(
    id: i64,
    t: i64,
    eid: &str,
    reason: Option<&str>,
    class: &str,
    base: &str,
) -> EpisodeFacts {
    let class = EpisodeClass::from_label(class);
    EpisodeFacts {
        id,
        t,
        tie: xxh3_64(eid.as_bytes()),
        reason: reason_hash(reason, class),
        class,
        base: parse_severity(base),
    }
}

/// Distinguishes two versions of one episode with the same time and count.
fn fingerprint(e: &EpisodeInput) -> i64 {
    let mut h = Xxh3::new();
    for part in [
        e.etype.as_str(),
        e.severity.as_str(),
        e.reason.as_deref().unwrap_or(""),
        e.message.as_deref().unwrap_or(""),
        e.subject.kind.as_deref().unwrap_or(""),
        e.subject.uid.as_deref().unwrap_or(""),
        e.subject.ns.as_deref().unwrap_or(""),
        e.subject.name.as_deref().unwrap_or(""),
    ] {
        h.update(&(part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    h.digest() as i64
}

impl Writer<'_> {
    /// The node named `key`, created (as a placeholder) if new.
    fn ensure_resource(&mut self, key: &str) -> rusqlite::Result<i64> {
        if let Some(&id) = self.cache.names.get(key) {
            return Ok(id);
        }
        let (kind, namespace, name) = super::model::split_name(key);
        self.conn
            .prepare_cached(
                "INSERT INTO resource(key, kind, namespace, name, live) VALUES (?1, ?2, ?3, ?4, 1)",
            )?
            .execute(params![key, kind, namespace, name])?;
        let id = self.conn.last_insert_rowid();
        self.cache.names.insert(key.to_owned(), id);
        self.cache.name_of.insert(id, key.to_owned());
        self.work.stats.resources_written += 1;
        Ok(id)
    }

    /// The resource an episode is ABOUT: by name when it has one (names are what the
    /// topology uses), else by uid through the alias table, else a uid placeholder.
    fn resolve_subject(
        &mut self,
        subject: &Subject,
    ) -> rusqlite::Result<(Option<i64>, Option<String>, Option<String>)> {
        let uid = subject.uid.as_deref().filter(|u| !u.is_empty());
        if let Some(key) = subject_name(subject) {
            let id = self.ensure_resource(&key)?;
            if let Some(uid) = uid {
                self.learn_alias(uid, id, AliasSource::Event, subject.kind.as_deref())?;
            }
            return Ok((Some(id), Some(key), uid.map(str::to_owned)));
        }
        let Some(uid) = uid else {
            return Ok((None, None, None));
        };
        let id = match self.cache.objects.get(uid).and_then(|o| o.resource) {
            Some(id) => id,
            None => self.ensure_resource(&uid_placeholder(uid))?,
        };
        Ok((Some(id), None, Some(uid.to_owned())))
    }

    /// Records that `uid` names resource `res`. A snapshot's word beats an event's; between
    /// equals the smaller name wins, so conflicting claims settle the same in any order.
    /// Episodes known only by this uid follow the alias.
    fn learn_alias(
        &mut self,
        uid: &str,
        res: i64,
        source: AliasSource,
        kind: Option<&str>,
    ) -> rusqlite::Result<()> {
        let existing = self.cache.objects.get(uid).copied();
        match existing {
            Some(o) if o.resource == Some(res) => {
                if source > o.source {
                    self.conn
                        .prepare_cached("UPDATE object SET source = ?2 WHERE uid = ?1")?
                        .execute(params![uid, source.as_str()])?;
                    self.cache
                        .objects
                        .insert(uid.to_owned(), ObjectInfo { source, ..o });
                    self.work.liveness.insert(res);
                }
                return Ok(());
            }
            Some(o) => {
                if let Some(old) = o.resource {
                    let take = source > o.source
                        || (source == o.source
                            && self.cache.name_of.get(&res) < self.cache.name_of.get(&old));
                    if !take {
                        return Ok(());
                    }
                    self.conn
                        .prepare_cached(
                            "UPDATE object SET resource = ?2, source = ?3 WHERE uid = ?1",
                        )?
                        .execute(params![uid, res, source.as_str()])?;
                    self.cache.objects.insert(
                        uid.to_owned(),
                        ObjectInfo {
                            resource: Some(res),
                            source,
                            deleted: o.deleted,
                        },
                    );
                    self.work.liveness.insert(old);
                    self.work.liveness.insert(res);
                    self.move_uid_only(uid, old, res)?;
                } else {
                    // Only the tombstone was known: the deletion stays.
                    let source = source.max(o.source);
                    self.conn
                        .prepare_cached(
                            "UPDATE object SET resource = ?2, source = ?3, kind = coalesce(kind, ?4) WHERE uid = ?1",
                        )?
                        .execute(params![uid, res, source.as_str(), kind])?;
                    self.cache.objects.insert(
                        uid.to_owned(),
                        ObjectInfo {
                            resource: Some(res),
                            source,
                            deleted: o.deleted,
                        },
                    );
                    self.work.liveness.insert(res);
                }
            }
            None => {
                self.conn
                    .prepare_cached(
                        "INSERT INTO object(uid, resource, kind, source, deleted) VALUES (?1, ?2, ?3, ?4, 0)",
                    )?
                    .execute(params![uid, res, kind, source.as_str()])?;
                self.cache.objects.insert(
                    uid.to_owned(),
                    ObjectInfo {
                        resource: Some(res),
                        source,
                        deleted: false,
                    },
                );
                self.work.liveness.insert(res);
            }
        }
        // A placeholder that held this uid's episodes merges into the named node.
        if let Some(&placeholder) = self.cache.names.get(&uid_placeholder(uid)) {
            if placeholder != res {
                self.move_uid_only(uid, placeholder, res)?;
                self.work.doomed.insert(placeholder);
            }
        }
        Ok(())
    }

    /// Moves the episodes known only by `uid` from resource `from` to `to`.
    fn move_uid_only(&mut self, uid: &str, from: i64, to: i64) -> rusqlite::Result<()> {
        let rows: Vec<(EpisodeFacts, Severity)> = self
            .conn
            .prepare_cached(
                "SELECT id, t, eid, reason, class, base_severity, severity FROM episode
                 WHERE subject_uid = ?1 AND subject_key IS NULL AND resource = ?2",
            )?
            .query_map(params![uid, from], |r| {
                Ok((
                    facts_from_row(
                        r.get(0)?,
                        r.get(1)?,
                        &r.get::<_, String>(2)?,
                        r.get::<_, Option<String>>(3)?.as_deref(),
                        &r.get::<_, String>(4)?,
                        &r.get::<_, String>(5)?,
                    ),
                    parse_severity(&r.get::<_, String>(6)?),
                ))
            })?
            .collect::<rusqlite::Result<_>>()?;
        for (facts, sev) in rows {
            self.conn
                .prepare_cached("UPDATE episode SET resource = ?2 WHERE id = ?1")?
                .execute(params![facts.id, to])?;
            self.cache.recent.remove(from, facts.t, facts.id);
            self.place(to, facts);
            self.work.stats.about_written += 1;
            self.work.changed.push(Changed {
                facts,
                old: Some(Position {
                    res: Some(from),
                    t: facts.t,
                    sev,
                }),
                new: Position {
                    res: Some(to),
                    t: facts.t,
                    sev,
                },
            });
        }
        Ok(())
    }

    /// Indexes an episode on `res` in memory, remembering the resource's pre-batch bound.
    fn place(&mut self, res: i64, facts: EpisodeFacts) {
        let bounds = self.cache.bounds.get(&res).copied();
        self.work
            .pre_max
            .entry(res)
            .or_insert(bounds.map_or(i64::MIN, |b| b.1));
        let b = bounds.map_or((facts.t, facts.t), |(lo, hi)| {
            (lo.min(facts.t), hi.max(facts.t))
        });
        self.cache.bounds.insert(res, b);
        self.cache.recent.insert(res, facts);
    }

    #[allow(clippy::too_many_lines)] // one linear sequence; to be split when it next changes
    fn put_episode(&mut self, e: &EpisodeInput) -> rusqlite::Result<()> {
        let (res, subject_key, subject_uid) = self.resolve_subject(&e.subject)?;
        let t = e.time_ms();
        let class = classify(
            e.reason.as_deref(),
            e.event_type_abstract,
            e.message.as_deref(),
        );
        let fp = fingerprint(e);
        let count = i64::try_from(e.count).unwrap_or(i64::MAX);
        let mut facts = EpisodeFacts {
            id: 0,
            t,
            tie: xxh3_64(e.event_id.as_bytes()),
            reason: reason_hash(e.reason.as_deref(), class),
            class,
            base: e.severity,
        };
        let event_time = time_text(e.event_time);
        let severity = e.severity.as_str();
        let inserted = self
            .conn
            .prepare_cached(
                "INSERT INTO episode(eid, etype, t, event_time, severity, base_severity, escalated,
                                     reason, class, message, count, fingerprint, resource,
                                     subject_key, subject_uid)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?5, 0, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
                 ON CONFLICT(eid) DO NOTHING",
            )?
            .execute(params![
                e.event_id,
                e.etype.as_str(),
                t,
                event_time,
                severity,
                e.reason,
                class.as_str(),
                e.message,
                count,
                fp,
                res,
                subject_key,
                subject_uid
            ])?;
        let new = Position {
            res,
            t,
            sev: e.severity,
        };
        if inserted == 1 {
            facts.id = self.conn.last_insert_rowid();
            self.work.inserted.insert(facts.id);
            if let Some(r) = res {
                self.place(r, facts);
                self.work.stats.about_written += 1;
            }
            self.work.stats.episodes_written += 1;
            self.work.changed.push(Changed {
                facts,
                old: None,
                new,
            });
            return Ok(());
        }
        let (id, old_t, old_count, old_fp, old_res, old_sev): (
            i64,
            i64,
            i64,
            i64,
            Option<i64>,
            String,
        ) = self
            .conn
            .prepare_cached(
                "SELECT id, t, count, fingerprint, resource, severity FROM episode WHERE eid = ?1",
            )?
            .query_row([&e.event_id], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            })?;
        // The newest version wins, whatever order versions arrive in.
        if (t, count, fp) <= (old_t, old_count, old_fp) {
            self.work.stats.duplicates += 1;
            return Ok(());
        }
        facts.id = id;
        self.conn
            .prepare_cached(
                "UPDATE episode SET etype = ?2, t = ?3, event_time = ?4, severity = ?5,
                        base_severity = ?5, escalated = 0, reason = ?6, class = ?7, message = ?8,
                        count = ?9, fingerprint = ?10, resource = ?11, subject_key = ?12,
                        subject_uid = ?13
                 WHERE id = ?1",
            )?
            .execute(params![
                id,
                e.etype.as_str(),
                t,
                event_time,
                severity,
                e.reason,
                class.as_str(),
                e.message,
                count,
                fp,
                res,
                subject_key,
                subject_uid
            ])?;
        if let Some(r) = old_res {
            self.cache.recent.remove(r, old_t, id);
        }
        if let Some(r) = res {
            self.place(r, facts);
            self.work.stats.about_written += 1;
        }
        self.work.stats.episodes_written += 1;
        self.work.changed.push(Changed {
            facts,
            old: Some(Position {
                res: old_res,
                t: old_t,
                sev: parse_severity(&old_sev),
            }),
            new,
        });
        Ok(())
    }

    fn put_resource(&mut self, s: &ResourceSnapshot) -> rusqlite::Result<()> {
        let id = self.ensure_resource(&s.canonical_name())?;
        self.learn_alias(&s.uid, id, AliasSource::Snapshot, Some(&s.kind))?;
        let changed = self
            .conn
            .prepare_cached(
                "UPDATE object SET kind = ?2, at = ?3, snapshot = ?4
                 WHERE uid = ?1 AND (snapshot IS NOT ?4 OR at IS NOT ?3 OR kind IS NOT ?2)",
            )?
            .execute(params![s.uid, s.kind, s.at.map(time_text), s.raw])?;
        if changed > 0 {
            self.work.stats.resources_written += 1;
            self.work.liveness.insert(id);
        } else {
            self.work.stats.duplicates += 1;
        }
        Ok(())
    }

    fn delete_object(&mut self, kind: &str, uid: &str) -> rusqlite::Result<()> {
        match self.cache.objects.get(uid).copied() {
            Some(o) if o.deleted => {
                self.work.stats.duplicates += 1;
            }
            Some(o) => {
                self.conn
                    .prepare_cached("UPDATE object SET deleted = 1 WHERE uid = ?1")?
                    .execute([uid])?;
                self.cache
                    .objects
                    .insert(uid.to_owned(), ObjectInfo { deleted: true, ..o });
                if let Some(r) = o.resource {
                    self.work.liveness.insert(r);
                }
                self.work.stats.resources_written += 1;
            }
            None => {
                self.conn
                    .prepare_cached(
                        "INSERT INTO object(uid, resource, kind, source, deleted) VALUES (?1, NULL, ?2, ?3, 1)",
                    )?
                    .execute(params![uid, kind, AliasSource::Tombstone.as_str()])?;
                self.cache.objects.insert(
                    uid.to_owned(),
                    ObjectInfo {
                        resource: None,
                        source: AliasSource::Tombstone,
                        deleted: true,
                    },
                );
                self.work.stats.resources_written += 1;
            }
        }
        Ok(())
    }

    fn put_edge(&mut self, e: &TopologyEdge) -> rusqlite::Result<()> {
        let a = self.ensure_resource(&e.from)?;
        let b = self.ensure_resource(&e.to)?;
        let first = e.at.map_or(0, |t| t.timestamp_millis());
        let written = self
            .conn
            .prepare_cached(
                "INSERT INTO topology(src, dst, type, live, first_at) VALUES (?1, ?2, ?3, 1, ?4)
                 ON CONFLICT(src, dst) DO UPDATE SET type = excluded.type, live = 1,
                        first_at = min(first_at, excluded.first_at)
                 WHERE type IS NOT excluded.type OR live = 0 OR first_at > excluded.first_at",
            )?
            .execute(params![a, b, e.edge_type, first])?;
        if written > 0 {
            self.work.stats.topology_written += 1;
        } else {
            self.work.stats.duplicates += 1;
        }
        if a == b {
            return Ok(());
        }
        let old = self.cache.edges.get(&(a, b)).copied();
        if old.is_none_or_greater(first) {
            self.cache.edges.insert((a, b), first);
            self.cache.link(a, b, first);
            self.work.topo.push(TopoChange {
                a,
                b,
                new_first: first,
                old_first: old,
            });
        }
        Ok(())
    }

    fn delete_edge(&mut self, from: &str, to: &str) -> rusqlite::Result<()> {
        let (Some(&a), Some(&b)) = (self.cache.names.get(from), self.cache.names.get(to)) else {
            self.work.stats.duplicates += 1;
            return Ok(());
        };
        let n = self
            .conn
            .prepare_cached(
                "UPDATE topology SET live = 0 WHERE src = ?1 AND dst = ?2 AND live = 1",
            )?
            .execute(params![a, b])?;
        if n > 0 {
            self.work.stats.topology_written += 1;
        } else {
            self.work.stats.duplicates += 1;
        }
        Ok(())
    }
}

/// `None`, or a value greater than the given one.
trait NoneOrGreater {
    fn is_none_or_greater(&self, than: i64) -> bool;
}

impl NoneOrGreater for Option<i64> {
    fn is_none_or_greater(&self, than: i64) -> bool {
        match self {
            None => true,
            Some(v) => *v > than,
        }
    }
}

/// `inc-` and 16 hex digits of xxh3 over the resource key and the first episode's id.
fn incident_id(resource_key: &str, first_eid: &str) -> String {
    let mut h = Xxh3::new();
    h.update(resource_key.as_bytes());
    h.update(b"\n");
    h.update(first_eid.as_bytes());
    format!("inc-{:016x}", h.digest())
}

#[cfg(test)]
mod lock_tests {
    use super::*;

    #[test]
    fn a_second_writer_of_one_store_is_refused_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("graph-af-9.sqlite");
        let wait = std::time::Duration::from_millis(300);
        let first = SqliteGraphStore::open_waiting(&path, wait).unwrap();
        let second = SqliteGraphStore::open_waiting(&path, wait);
        assert!(
            matches!(second, Err(StoreError::Locked { .. })),
            "{second:?}"
        );
        drop(first);
        SqliteGraphStore::open_waiting(&path, wait).unwrap();
    }
}
