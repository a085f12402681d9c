//! The store's in-memory accelerators, all rebuilt from the file by [`Cache::load`]: the
//! name and uid indexes, the causal topology as undirected adjacency lists, each
//! resource's episode time bounds, and the recent episodes of each resource.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

use rusqlite::Connection;

use super::facts_from_row;
use crate::roles::graph_builder::derive::EpisodeFacts;
use crate::roles::graph_builder::model::MAX_HOPS;

/// A fast hasher for row ids (which no one outside chooses): a multiply-rotate mix.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct IdHasher(u64);

impl IdHasher {
    const K: u64 = 0x517c_c1b7_2722_0a95;

    fn mix(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(Self::K);
    }
}

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut buf = [0u8; 8];
            buf[..chunk.len()].copy_from_slice(chunk);
            self.mix(u64::from_le_bytes(buf));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.mix(n);
    }

    fn write_i64(&mut self, n: i64) {
        self.mix(n as u64);
    }
}

/// Hash maps and sets keyed by row ids.
pub(super) type IdBuild = BuildHasherDefault<IdHasher>;
pub(super) type IdMap<V> = HashMap<i64, V, IdBuild>;
pub(super) type IdSet = HashSet<i64, IdBuild>;
/// Hash maps keyed by names and uids.
pub(super) type NameMap<V> = HashMap<String, V, xxhash_rust::xxh3::Xxh3DefaultBuilder>;

/// How far back from the newest episode the recent-episode index reaches.
pub(super) const RECENT_RETAIN_MS: i64 = 60 * 60 * 1000;

/// Who said a uid names a resource; later variants win.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum AliasSource {
    /// Only a deletion is known.
    Tombstone,
    /// An event subject named it.
    Event,
    /// A resource snapshot named it.
    Snapshot,
}

impl AliasSource {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            AliasSource::Tombstone => "tombstone",
            AliasSource::Event => "event",
            AliasSource::Snapshot => "snapshot",
        }
    }

    fn from_label(s: &str) -> AliasSource {
        match s {
            "snapshot" => AliasSource::Snapshot,
            "event" => AliasSource::Event,
            _ => AliasSource::Tombstone,
        }
    }
}

/// What is known of a uid.
#[derive(Clone, Copy, Debug)]
pub(super) struct ObjectInfo {
    pub(super) resource: Option<i64>,
    pub(super) source: AliasSource,
    pub(super) deleted: bool,
}

/// The resources within [`MAX_HOPS`] of one, with their hop counts (itself at 0), and the
/// latest `first_at` among the edges the search examined.
#[derive(Debug, Default)]
pub(super) struct Ball {
    pub(super) nodes: Vec<(i64, u32)>,
    pub(super) max_first: i64,
}

/// The recent episodes of each resource, sorted by time: complete for every time at or
/// after `floor` (older ranges must be read from the file).
#[derive(Debug)]
pub(super) struct Recent {
    floor: i64,
    max_seen: i64,
    by_res: IdMap<Vec<EpisodeFacts>>,
}

impl Default for Recent {
    fn default() -> Self {
        Recent {
            floor: i64::MIN,
            max_seen: i64::MIN,
            by_res: IdMap::default(),
        }
    }
}

impl Recent {
    fn key(e: &EpisodeFacts) -> (i64, u64, i64) {
        (e.t, e.tie, e.id)
    }

    pub(super) fn insert(&mut self, res: i64, e: EpisodeFacts) {
        self.max_seen = self.max_seen.max(e.t);
        if e.t < self.floor {
            return;
        }
        let v = self.by_res.entry(res).or_default();
        let k = Self::key(&e);
        let pos = v.partition_point(|x| Self::key(x) <= k);
        v.insert(pos, e);
    }

    pub(super) fn remove(&mut self, res: i64, t: i64, id: i64) {
        if let Some(v) = self.by_res.get_mut(&res) {
            let start = v.partition_point(|x| x.t < t);
            if let Some(i) = v[start..]
                .iter()
                .take_while(|x| x.t == t)
                .position(|x| x.id == id)
            {
                v.remove(start + i);
            }
        }
    }

    /// Stops indexing: every range is then read from the file.
    pub(super) fn disable(&mut self) {
        self.floor = i64::MAX;
        self.by_res.clear();
    }

    pub(super) fn drop_resource(&mut self, res: i64) {
        self.by_res.remove(&res);
    }

    /// Whether the index holds every episode with a time at or after `lo`.
    pub(super) fn covers(&self, lo: i64) -> bool {
        lo >= self.floor
    }

    /// The episodes of `res` with `lo <= t < hi` (only meaningful when `covers(lo)`).
    pub(super) fn slice(&self, res: i64, lo: i64, hi: i64) -> &[EpisodeFacts] {
        let Some(v) = self.by_res.get(&res) else {
            return &[];
        };
        let a = v.partition_point(|x| x.t < lo);
        let b = v.partition_point(|x| x.t < hi);
        if a >= b {
            &[]
        } else {
            &v[a..b]
        }
    }

    /// Forgets what is more than the retention older than the newest episode, once the
    /// floor lags by more than another retention.
    pub(super) fn prune(&mut self) {
        let target = self.max_seen.saturating_sub(RECENT_RETAIN_MS);
        if target.saturating_sub(self.floor) <= RECENT_RETAIN_MS {
            return;
        }
        self.floor = target;
        self.by_res.retain(|_, v| {
            let cut = v.partition_point(|x| x.t < target);
            v.drain(..cut);
            !v.is_empty()
        });
    }
}

/// The in-memory indexes.
#[derive(Debug, Default)]
pub(super) struct Cache {
    /// Resource key → row id.
    pub(super) names: NameMap<i64>,
    /// Row id → resource key.
    pub(super) name_of: IdMap<String>,
    /// Uid → what is known of it.
    pub(super) objects: NameMap<ObjectInfo>,
    /// Causal topology, undirected: neighbour and the edge's `first_at`.
    pub(super) adj: IdMap<Vec<(i64, i64)>>,
    /// Directed edge → `first_at`.
    pub(super) edges: HashMap<(i64, i64), i64, IdBuild>,
    /// Resource → (earliest, latest) episode time; may be wider than the truth after
    /// episodes moved away.
    pub(super) bounds: IdMap<(i64, i64)>,
    pub(super) recent: Recent,
}

impl Cache {
    /// Rebuilds every index from the file.
    pub(super) fn load(conn: &Connection) -> rusqlite::Result<Cache> {
        let mut cache = Cache::default();
        let mut stmt = conn.prepare("SELECT id, key FROM resource")?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let (id, key): (i64, String) = (r.get(0)?, r.get(1)?);
            cache.names.insert(key.clone(), id);
            cache.name_of.insert(id, key);
        }
        let mut stmt = conn.prepare("SELECT uid, resource, source, deleted FROM object")?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let uid: String = r.get(0)?;
            let source: String = r.get(2)?;
            cache.objects.insert(
                uid,
                ObjectInfo {
                    resource: r.get(1)?,
                    source: AliasSource::from_label(&source),
                    deleted: r.get::<_, i64>(3)? != 0,
                },
            );
        }
        let mut stmt = conn.prepare("SELECT src, dst, first_at FROM topology")?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let (a, b, first): (i64, i64, i64) = (r.get(0)?, r.get(1)?, r.get(2)?);
            cache.edges.insert((a, b), first);
            if a != b {
                cache.link(a, b, first);
            }
        }
        let mut stmt = conn.prepare(
            "SELECT resource, min(t), max(t) FROM episode WHERE resource IS NOT NULL GROUP BY resource",
        )?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            cache.bounds.insert(r.get(0)?, (r.get(1)?, r.get(2)?));
        }
        let newest: Option<i64> = conn.query_row("SELECT max(t) FROM episode", [], |r| r.get(0))?;
        if let Some(newest) = newest {
            let floor = newest.saturating_sub(RECENT_RETAIN_MS);
            cache.recent.floor = floor;
            cache.recent.max_seen = newest;
            let mut stmt = conn.prepare(
                "SELECT id, t, eid, reason, class, base_severity, resource FROM episode
                 WHERE t >= ?1 AND resource IS NOT NULL ORDER BY t",
            )?;
            let mut rows = stmt.query([floor])?;
            while let Some(r) = rows.next()? {
                let facts = facts_from_row(
                    r.get(0)?,
                    r.get(1)?,
                    &r.get::<_, String>(2)?,
                    r.get::<_, Option<String>>(3)?.as_deref(),
                    &r.get::<_, String>(4)?,
                    &r.get::<_, String>(5)?,
                );
                cache.recent.insert(r.get(6)?, facts);
            }
        }
        Ok(cache)
    }

    /// Adds (or makes older) the undirected causal link a–b.
    pub(super) fn link(&mut self, a: i64, b: i64, first: i64) {
        for (x, y) in [(a, b), (b, a)] {
            let list = self.adj.entry(x).or_default();
            match list.iter_mut().find(|(n, _)| *n == y) {
                Some(entry) => entry.1 = entry.1.min(first),
                None => list.push((y, first)),
            }
        }
    }

    /// Breadth-first search from `start` up to `max_hops`, over the edges present at
    /// `present_at` (`first_at <= present_at`), or all edges.
    pub(super) fn bfs(&self, start: i64, max_hops: u32, present_at: Option<i64>) -> Ball {
        let mut hops: IdMap<u32> = IdMap::default();
        hops.insert(start, 0);
        let mut nodes = vec![(start, 0)];
        let mut queue = VecDeque::from([(start, 0u32)]);
        let mut max_first = i64::MIN;
        while let Some((node, d)) = queue.pop_front() {
            if d >= max_hops {
                continue;
            }
            for &(next, first) in self.adj.get(&node).map_or(&[][..], Vec::as_slice) {
                if present_at.is_some_and(|p| first > p) {
                    continue;
                }
                max_first = max_first.max(first);
                if let std::collections::hash_map::Entry::Vacant(v) = hops.entry(next) {
                    v.insert(d + 1);
                    nodes.push((next, d + 1));
                    queue.push_back((next, d + 1));
                }
            }
        }
        Ball { nodes, max_first }
    }

    /// The unfiltered ball within [`MAX_HOPS`].
    pub(super) fn ball(&self, start: i64) -> Ball {
        self.bfs(start, MAX_HOPS, None)
    }
}
