//! The read side: RCA candidates with their resource paths, incidents, episodes, counts.

use std::collections::{HashMap, VecDeque};

use rusqlite::{params, Connection, OptionalExtension, Row};

use super::cache::Cache;
use crate::roles::graph_builder::model::{MAX_HOPS, TOPOLOGY_SLACK_MS};
use crate::roles::graph_builder::{
    Candidate, EpisodicView, GraphStats, IncidentSummary, StoreError,
};

/// The stored causes of `event_id`, best first, each with the shortest resource path
/// (over the topology present at the effect's time) from its resource to the effect's.
pub(super) fn rca(
    conn: &Connection,
    cache: &Cache,
    event_id: &str,
    limit: usize,
) -> Result<Vec<Candidate>, StoreError> {
    let effect: Option<(i64, Option<i64>, i64)> = conn
        .prepare_cached("SELECT id, resource, t FROM episode WHERE eid = ?1")?
        .query_row([event_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?;
    let Some((effect, effect_res, effect_t)) = effect else {
        return Ok(Vec::new());
    };
    let mut stmt = conn.prepare_cached(
        "SELECT ce.eid, ce.reason, c.confidence, c.temporal_score, c.distance_score,
                c.domain_score, c.hops, ce.event_time, ce.resource, ce.severity, ce.etype,
                ce.message, ce.class
         FROM cause c JOIN episode ce ON ce.id = c.cause
         WHERE c.effect = ?1
         ORDER BY c.confidence DESC, ce.t DESC, ce.eid ASC
         LIMIT ?2",
    )?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = stmt
        .query_map(params![effect, limit], |r| {
            let cause_res: Option<i64> = r.get(8)?;
            let class: String = r.get(12)?;
            Ok((
                Candidate {
                    event_id: r.get(0)?,
                    reason: r.get::<_, Option<String>>(1)?.unwrap_or(class),
                    confidence: r.get(2)?,
                    temporal_score: r.get(3)?,
                    distance_score: r.get(4)?,
                    domain_score: r.get(5)?,
                    hops: r.get(6)?,
                    path: Vec::new(),
                    event_time: r.get(7)?,
                    subject: String::new(),
                    severity: r.get(9)?,
                    etype: r.get(10)?,
                    message: r.get(11)?,
                },
                cause_res,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let present_at = effect_t.saturating_add(TOPOLOGY_SLACK_MS);
    Ok(rows
        .into_iter()
        .map(|(mut c, cause_res)| {
            if let Some(cr) = cause_res {
                c.subject = cache.name_of.get(&cr).cloned().unwrap_or_default();
                if let Some(er) = effect_res {
                    c.path = path(cache, cr, er, present_at);
                }
            }
            c
        })
        .collect())
}

/// The shortest path from `from` to `to` within [`MAX_HOPS`] over the edges present at
/// `present_at`, as resource keys; ties go to the path through smaller keys.
fn path(cache: &Cache, from: i64, to: i64, present_at: i64) -> Vec<String> {
    let name = |id: i64| cache.name_of.get(&id).cloned().unwrap_or_default();
    if from == to {
        return vec![name(from)];
    }
    // Search from the effect, so each node's parent is its next step towards it.
    let mut parent: HashMap<i64, i64> = HashMap::new();
    let mut depth: HashMap<i64, u32> = HashMap::from([(to, 0)]);
    let mut queue = VecDeque::from([to]);
    while let Some(node) = queue.pop_front() {
        let d = depth[&node];
        if d >= MAX_HOPS {
            continue;
        }
        let mut next: Vec<(&str, i64)> = cache
            .adj
            .get(&node)
            .map_or(&[][..], Vec::as_slice)
            .iter()
            .filter(|(_, first)| *first <= present_at)
            .map(|&(n, _)| (cache.name_of.get(&n).map_or("", String::as_str), n))
            .collect();
        next.sort_unstable();
        for (_, n) in next {
            if depth.contains_key(&n) {
                continue;
            }
            depth.insert(n, d + 1);
            parent.insert(n, node);
            if n == from {
                let mut out = vec![name(from)];
                let mut at = from;
                while let Some(&p) = parent.get(&at) {
                    out.push(name(p));
                    at = p;
                }
                return out;
            }
            queue.push_back(n);
        }
    }
    Vec::new()
}

/// All incidents, latest first.
pub(super) fn incidents(conn: &Connection) -> Result<Vec<IncidentSummary>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT i.iid, r.key, r.kind, i.start_time, i.end_time, i.episodes, i.max_severity
         FROM incident i LEFT JOIN resource r ON r.id = i.resource
         ORDER BY i.start_t DESC, i.iid",
    )?;
    let rows = stmt
        .query_map([], |r| {
            Ok(IncidentSummary {
                id: r.get(0)?,
                resource: r.get::<_, Option<String>>(1)?.unwrap_or_default(),
                resource_kind: r.get(2)?,
                start: r.get(3)?,
                end: r.get(4)?,
                episodes: r.get::<_, i64>(5)?.max(0) as u64,
                max_severity: r.get(6)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    Ok(rows)
}

const EPISODE_VIEW: &str = "SELECT e.eid, e.etype, e.event_time, e.severity, e.base_severity,
        e.escalated, e.reason, e.class, e.message, r.key, r.kind, i.iid
    FROM episode e LEFT JOIN resource r ON r.id = e.resource LEFT JOIN incident i ON i.id = e.incident";

fn episode_view(r: &Row<'_>) -> rusqlite::Result<EpisodicView> {
    Ok(EpisodicView {
        event_id: r.get(0)?,
        etype: r.get(1)?,
        event_time: r.get(2)?,
        severity: r.get(3)?,
        base_severity: r.get(4)?,
        escalated: r.get::<_, i64>(5)? != 0,
        reason: r.get(6)?,
        class: r.get(7)?,
        message: r.get(8)?,
        resource: r.get(9)?,
        resource_kind: r.get(10)?,
        incident: r.get(11)?,
    })
}

/// The episodes PART_OF an incident, oldest first.
pub(super) fn incident_events(
    conn: &Connection,
    incident_id: &str,
) -> Result<Vec<EpisodicView>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "{EPISODE_VIEW} WHERE e.incident = (SELECT id FROM incident WHERE iid = ?1) ORDER BY e.t, e.eid"
    ))?;
    let rows = stmt
        .query_map([incident_id], episode_view)?
        .collect::<rusqlite::Result<_>>()?;
    Ok(rows)
}

/// One episode.
pub(super) fn episode(
    conn: &Connection,
    event_id: &str,
) -> Result<Option<EpisodicView>, StoreError> {
    Ok(conn
        .prepare_cached(&format!("{EPISODE_VIEW} WHERE e.eid = ?1"))?
        .query_row([event_id], episode_view)
        .optional()?)
}

/// Node and relationship counts.
pub(super) fn stats(conn: &Connection) -> Result<GraphStats, StoreError> {
    let count = |r: &Row<'_>, i: usize| r.get::<_, i64>(i).map(|n| n.max(0) as u64);
    Ok(conn
        .prepare_cached(
            "SELECT
               (SELECT count(*) FROM resource WHERE live = 1),
               (SELECT count(*) FROM episode),
               (SELECT count(*) FROM incident),
               (SELECT count(*) FROM topology t
                  JOIN resource a ON a.id = t.src JOIN resource b ON b.id = t.dst
                  WHERE t.live = 1 AND a.live = 1 AND b.live = 1),
               (SELECT count(*) FROM episode WHERE resource IS NOT NULL),
               (SELECT count(*) FROM cause),
               (SELECT count(*) FROM episode WHERE incident IS NOT NULL)",
        )?
        .query_row([], |r| {
            Ok(GraphStats {
                resources: count(r, 0)?,
                episodes: count(r, 1)?,
                incidents: count(r, 2)?,
                topology_edges: count(r, 3)?,
                about_edges: count(r, 4)?,
                potential_cause_edges: count(r, 5)?,
                part_of_edges: count(r, 6)?,
            })
        })?)
}
