//! The end of a batch: recompute, from stored facts, everything the batch's changes can
//! have affected. Resource liveness; POTENTIAL_CAUSE edges of every episode that is new
//! or changed, of every later episode it may cause, and of every episode whose topology
//! neighbourhood grew; escalated severities and incidents around the changed episodes.

use std::collections::{HashMap, HashSet};
use std::iter::once;
use std::rc::Rc;

use kg_shared::records::Severity;
use rusqlite::{params, OptionalExtension};

use super::cache::{Ball, IdMap};
use super::{facts_from_row, incident_id, ms_text, parse_severity, Changed, TopoChange, Writer};
use crate::roles::graph_builder::derive::{
    escalation_flags, incident_clusters, merge_points, CauseCandidate, EpisodeFacts, ScoredCause,
    TopCauses,
};
use crate::roles::graph_builder::model::{
    CAUSAL_WINDOW_MS, ESCALATION_WINDOW_MS, MAX_CAUSES_PER_EFFECT, MAX_HOPS, TOPOLOGY_SLACK_MS,
};
use crate::roles::graph_builder::scoring::escalate;

/// An episode whose causes are to be recomputed.
#[derive(Clone, Copy)]
struct Effect {
    facts: EpisodeFacts,
    res: Option<i64>,
}

/// Buffers reused across effects.
#[derive(Default)]
struct Scratch {
    seen: Vec<u64>,
    rows: Vec<EpisodeFacts>,
}

/// `INSERT INTO cause` statements for 1 to [`MAX_CAUSES_PER_EFFECT`] rows.
fn insert_causes_sql(n: usize) -> &'static str {
    static SQL: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let all = SQL.get_or_init(|| {
        (0..=MAX_CAUSES_PER_EFFECT)
            .map(|n| {
                let rows: Vec<String> = (0..n)
                    .map(|i| {
                        let b = i * 7;
                        format!(
                            "(?{}, ?{}, ?{}, ?{}, ?{}, ?{}, ?{})",
                            b + 1,
                            b + 2,
                            b + 3,
                            b + 4,
                            b + 5,
                            b + 6,
                            b + 7
                        )
                    })
                    .collect();
                format!(
                    "INSERT OR REPLACE INTO cause(effect, cause, confidence, temporal_score,
                                                  distance_score, domain_score, hops)
                     VALUES {}",
                    rows.join(", ")
                )
            })
            .collect()
    });
    &all[n]
}

/// An episode row as the escalation pass reads it.
struct EscalationRow {
    id: i64,
    t: i64,
    reason: u64,
    base: Severity,
    sev: Severity,
    escalated: bool,
}

/// An ERROR-or-worse episode as the incident pass reads it.
struct Member {
    id: i64,
    eid: String,
    t: i64,
    sev: Severity,
    incident: Option<i64>,
}

const ERROR_OR_WORSE: &str = "severity IN ('ERROR', 'FATAL')";

impl Writer<'_> {
    pub(super) fn derive(&mut self) -> rusqlite::Result<()> {
        let mut liveness: Vec<i64> = self.work.liveness.drain().collect();
        liveness.sort_unstable();
        for id in liveness {
            if !self.work.doomed.contains(&id) {
                self.recompute_liveness(id)?;
            }
        }

        let changed = std::mem::take(&mut self.work.changed);
        let mut effects: IdMap<Effect> = IdMap::default();
        for c in &changed {
            effects.insert(
                c.facts.id,
                Effect {
                    facts: c.facts,
                    res: c.new.res,
                },
            );
        }
        for c in &changed {
            for pos in once(c.new).chain(c.old) {
                if let Some(r) = pos.res {
                    self.later_effects(r, pos.t, &mut effects)?;
                }
            }
        }
        let topo = std::mem::take(&mut self.work.topo);
        for tc in &topo {
            self.topology_effects(tc, &mut effects)?;
        }
        let mut ids: Vec<i64> = effects.keys().copied().collect();
        ids.sort_unstable();
        let mut scratch = Scratch::default();
        for id in ids {
            let e = effects[&id];
            self.recompute_causes(e, &mut scratch)?;
        }
        let incident_points = self.escalate(&changed)?;
        let mut resources: Vec<(i64, Vec<i64>)> = incident_points.into_iter().collect();
        resources.sort_unstable_by_key(|(r, _)| *r);
        for (r, points) in resources {
            for (lo, hi) in merge_points(points, CAUSAL_WINDOW_MS) {
                let (lo, hi) = self.incident_span(r, lo, hi)?;
                self.recluster(r, lo, hi)?;
            }
        }
        self.drop_placeholders()
    }

    /// The unfiltered 3-hop ball of `r`, computed once per batch.
    fn ball(&mut self, r: i64) -> Rc<Ball> {
        if let Some(b) = self.balls.get(&r) {
            return b.clone();
        }
        let b = Rc::new(self.cache.ball(r));
        self.balls.insert(r, b.clone());
        b
    }

    /// The 3-hop ball of `r` over the edges present at `present_at`.
    fn ball_at(&mut self, r: i64, present_at: i64) -> Rc<Ball> {
        let b = self.ball(r);
        if b.max_first <= present_at {
            b
        } else {
            Rc::new(self.cache.bfs(r, MAX_HOPS, Some(present_at)))
        }
    }

    /// Calls `f` with each episode on `res` with `lo <= t < hi`, from memory when the
    /// recent index covers the range, else from the file.
    fn for_each_episode(
        &self,
        res: i64,
        lo: i64,
        hi: i64,
        mut f: impl FnMut(EpisodeFacts),
    ) -> rusqlite::Result<()> {
        if self.cache.recent.covers(lo) {
            for &e in self.cache.recent.slice(res, lo, hi) {
                f(e);
            }
            return Ok(());
        }
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, t, eid, reason, class, base_severity FROM episode
             WHERE resource = ?1 AND t >= ?2 AND t < ?3",
        )?;
        let mut rows = stmt.query(params![res, lo, hi])?;
        while let Some(r) = rows.next()? {
            f(facts_from_row(
                r.get(0)?,
                r.get(1)?,
                r.get_ref(2)?.as_str()?,
                r.get_ref(3)?.as_str_or_null()?,
                r.get_ref(4)?.as_str()?,
                r.get_ref(5)?.as_str()?,
            ));
        }
        Ok(())
    }

    /// Episodes that an episode on `r` at `t` may cause: on resources within reach, up to
    /// the window after it, that existed before this batch (the batch's own are already
    /// effects).
    fn later_effects(
        &mut self,
        r: i64,
        t: i64,
        effects: &mut IdMap<Effect>,
    ) -> rusqlite::Result<()> {
        let ball = self.ball(r);
        for &(y, _) in &ball.nodes {
            let pre = self
                .work
                .pre_max
                .get(&y)
                .copied()
                .or_else(|| self.cache.bounds.get(&y).map(|b| b.1));
            if pre.is_none_or_le(t) {
                continue;
            }
            let hi = t.saturating_add(CAUSAL_WINDOW_MS).saturating_add(1);
            self.for_each_episode(y, t.saturating_add(1), hi, |facts| {
                effects.entry(facts.id).or_insert(Effect {
                    facts,
                    res: Some(y),
                });
            })?;
        }
        Ok(())
    }

    /// Episodes whose neighbourhood an edge joined (or joined earlier than known): on
    /// resources within two hops of either end, from the time the edge counts for.
    fn topology_effects(
        &mut self,
        tc: &TopoChange,
        effects: &mut IdMap<Effect>,
    ) -> rusqlite::Result<()> {
        let lo = tc.new_first.saturating_sub(TOPOLOGY_SLACK_MS);
        let hi = tc
            .old_first
            .map_or(i64::MAX, |o| o.saturating_sub(TOPOLOGY_SLACK_MS));
        if lo >= hi {
            return Ok(());
        }
        let mut reach: HashSet<i64> = HashSet::new();
        for end in [tc.a, tc.b] {
            let ball = self.ball(end);
            reach.extend(
                ball.nodes
                    .iter()
                    .filter(|(_, h)| *h < MAX_HOPS)
                    .map(|(y, _)| *y),
            );
        }
        let mut reach: Vec<i64> = reach.into_iter().collect();
        reach.sort_unstable();
        for y in reach {
            if self.cache.bounds.get(&y).is_none_or_max_below(lo) {
                continue;
            }
            self.for_each_episode(y, lo, hi, |facts| {
                effects.entry(facts.id).or_insert(Effect {
                    facts,
                    res: Some(y),
                });
            })?;
        }
        Ok(())
    }

    /// Calls `f` with the episodes on `res` with `lo <= t < hi`, sorted by time and
    /// tie-breaker: the recent index's slice, or rows read from the file into `buf`.
    fn with_episodes<R>(
        &self,
        res: i64,
        lo: i64,
        hi: i64,
        buf: &mut Vec<EpisodeFacts>,
        f: impl FnOnce(&[EpisodeFacts]) -> R,
    ) -> rusqlite::Result<R> {
        if self.cache.recent.covers(lo) {
            return Ok(f(self.cache.recent.slice(res, lo, hi)));
        }
        buf.clear();
        self.for_each_episode(res, lo, hi, |e| buf.push(e))?;
        buf.sort_unstable_by_key(|e| (e.t, e.tie, e.id));
        Ok(f(buf))
    }

    /// Recomputes and stores the POTENTIAL_CAUSEs of one effect: on each resource within
    /// reach, walking back from the latest episode before the effect, the first of each
    /// reason is a candidate (a later one of the same reason always scores better).
    fn recompute_causes(&mut self, e: Effect, scratch: &mut Scratch) -> rusqlite::Result<()> {
        let causes = match e.res {
            None => Vec::new(),
            Some(r) => {
                let ball = self.ball_at(r, e.facts.t.saturating_add(TOPOLOGY_SLACK_MS));
                let (lo, hi) = (e.facts.t - CAUSAL_WINDOW_MS, e.facts.t);
                let Scratch { seen, rows, .. } = scratch;
                let mut top = TopCauses::new(&e.facts, MAX_CAUSES_PER_EFFECT);
                for &(y, hops) in &ball.nodes {
                    match self.cache.bounds.get(&y) {
                        Some(&(min, max))
                            if max >= lo && min < hi && top.could_take(hops, max.min(hi - 1)) => {}
                        _ => continue,
                    }
                    self.with_episodes(y, lo, hi, rows, |episodes| {
                        seen.clear();
                        for episode in episodes.iter().rev() {
                            if !top.could_take(hops, episode.t) {
                                break;
                            }
                            if episode.id != e.facts.id && !seen.contains(&episode.reason) {
                                seen.push(episode.reason);
                                top.offer(CauseCandidate {
                                    episode: *episode,
                                    resource: y,
                                    hops,
                                });
                            }
                        }
                    })?;
                }
                top.finish()
            }
        };
        self.write_causes(e.facts.id, &causes)
    }

    /// Makes the stored causes of `effect` exactly `causes`, writing only differences.
    fn write_causes(&mut self, effect: i64, causes: &[ScoredCause]) -> rusqlite::Result<()> {
        let mut existing: HashMap<i64, ScoredCause> = HashMap::new();
        if !self.work.inserted.contains(&effect) {
            let mut stmt = self.conn.prepare_cached(
                "SELECT cause, confidence, temporal_score, distance_score, domain_score, hops
                 FROM cause WHERE effect = ?1",
            )?;
            let mut rows = stmt.query([effect])?;
            while let Some(r) = rows.next()? {
                let cause: i64 = r.get(0)?;
                existing.insert(
                    cause,
                    ScoredCause {
                        cause,
                        confidence: r.get(1)?,
                        temporal: r.get(2)?,
                        distance: r.get(3)?,
                        domain: r.get(4)?,
                        hops: r.get(5)?,
                    },
                );
            }
        }
        let write: Vec<&ScoredCause> = causes
            .iter()
            .filter(|c| existing.remove(&c.cause).is_none_or_differs(c))
            .collect();
        if !write.is_empty() {
            let mut values: Vec<rusqlite::types::Value> = Vec::with_capacity(write.len() * 7);
            for c in &write {
                values.extend([
                    effect.into(),
                    c.cause.into(),
                    c.confidence.into(),
                    c.temporal.into(),
                    c.distance.into(),
                    c.domain.into(),
                    i64::from(c.hops).into(),
                ]);
            }
            self.conn
                .prepare_cached(insert_causes_sql(write.len()))?
                .execute(rusqlite::params_from_iter(values))?;
            self.work.stats.causes_written += write.len() as u64;
        }
        let mut gone: Vec<i64> = existing.into_keys().collect();
        gone.sort_unstable();
        for cause in gone {
            self.conn
                .prepare_cached("DELETE FROM cause WHERE effect = ?1 AND cause = ?2")?
                .execute(params![effect, cause])?;
            self.work.stats.causes_written += 1;
        }
        Ok(())
    }

    /// Recomputes escalated severities around the changed episodes; returns, per
    /// resource, the times around which incidents may have changed.
    fn escalate(&mut self, changed: &[Changed]) -> rusqlite::Result<HashMap<i64, Vec<i64>>> {
        let mut points: HashMap<i64, Vec<i64>> = HashMap::new();
        for c in changed {
            for pos in once(c.new).chain(c.old) {
                if let Some(r) = pos.res {
                    points.entry(r).or_default().push(pos.t);
                }
            }
        }
        let mut effective: HashMap<i64, Severity> = HashMap::new();
        let mut incident_points: HashMap<i64, Vec<i64>> = HashMap::new();
        let mut resources: Vec<(i64, Vec<i64>)> = points.into_iter().collect();
        resources.sort_unstable_by_key(|(r, _)| *r);
        for (r, pts) in resources {
            if self.work.doomed.contains(&r) {
                continue;
            }
            for (lo, hi) in merge_points(pts, 2 * ESCALATION_WINDOW_MS) {
                let rows: Vec<EscalationRow> = self
                    .conn
                    .prepare_cached(
                        "SELECT id, t, reason, class, base_severity, severity, escalated FROM episode
                         WHERE resource = ?1 AND t >= ?2 AND t <= ?3 ORDER BY t",
                    )?
                    .query_map(
                        params![r, lo - ESCALATION_WINDOW_MS, hi + ESCALATION_WINDOW_MS],
                        |row| {
                            let class = crate::roles::graph_builder::scoring::EpisodeClass::from_label(
                                row.get_ref(3)?.as_str()?,
                            );
                            Ok(EscalationRow {
                                id: row.get(0)?,
                                t: row.get(1)?,
                                reason: super::reason_hash(row.get_ref(2)?.as_str_or_null()?, class),
                                base: parse_severity(row.get_ref(4)?.as_str()?),
                                sev: parse_severity(row.get_ref(5)?.as_str()?),
                                escalated: row.get::<_, i64>(6)? != 0,
                            })
                        },
                    )?
                    .collect::<rusqlite::Result<_>>()?;
                let keys: Vec<(i64, u64)> = rows.iter().map(|r| (r.t, r.reason)).collect();
                let flags = escalation_flags(&keys);
                for (row, flag) in rows.iter().zip(flags) {
                    if row.t < lo {
                        continue;
                    }
                    let eff = if flag { escalate(row.base) } else { row.base };
                    effective.insert(row.id, eff);
                    if eff == row.sev && flag == row.escalated {
                        continue;
                    }
                    self.conn
                        .prepare_cached(
                            "UPDATE episode SET severity = ?2, escalated = ?3 WHERE id = ?1",
                        )?
                        .execute(params![row.id, eff.as_str(), flag])?;
                    self.work.stats.escalations_written += 1;
                    if (eff >= Severity::Error) != (row.sev >= Severity::Error) {
                        incident_points.entry(r).or_default().push(row.t);
                    }
                }
            }
        }
        for c in changed {
            if let Some(r) = c.new.res {
                let eff = effective.get(&c.facts.id).copied().unwrap_or(c.new.sev);
                if eff >= Severity::Error {
                    incident_points.entry(r).or_default().push(c.new.t);
                }
            }
            if let Some(old) = c.old {
                if let (Some(r), true) = (old.res, old.sev >= Severity::Error) {
                    incident_points.entry(r).or_default().push(old.t);
                }
            }
        }
        Ok(incident_points)
    }

    /// Widens `[lo, hi]` on resource `r` until it holds whole clusters: every incident
    /// it overlaps, and every ERROR episode within the window of its ends.
    fn incident_span(&mut self, r: i64, mut lo: i64, mut hi: i64) -> rusqlite::Result<(i64, i64)> {
        loop {
            let (mut nlo, mut nhi) = (lo, hi);
            let (start, end): (Option<i64>, Option<i64>) = self
                .conn
                .prepare_cached(
                    "SELECT min(start_t), max(end_t) FROM incident
                     WHERE resource = ?1 AND end_t >= ?2 AND start_t <= ?3",
                )?
                .query_row(params![r, nlo, nhi], |row| Ok((row.get(0)?, row.get(1)?)))?;
            nlo = nlo.min(start.unwrap_or(nlo));
            nhi = nhi.max(end.unwrap_or(nhi));
            let prev: Option<i64> = self
                .conn
                .prepare_cached(&format!(
                    "SELECT max(t) FROM episode WHERE resource = ?1 AND t >= ?2 AND t < ?3 AND {ERROR_OR_WORSE}"
                ))?
                .query_row(params![r, nlo - CAUSAL_WINDOW_MS, nlo], |row| row.get(0))?;
            nlo = prev.unwrap_or(nlo);
            let next: Option<i64> = self
                .conn
                .prepare_cached(&format!(
                    "SELECT min(t) FROM episode WHERE resource = ?1 AND t > ?2 AND t <= ?3 AND {ERROR_OR_WORSE}"
                ))?
                .query_row(params![r, nhi, nhi + CAUSAL_WINDOW_MS], |row| row.get(0))?;
            nhi = next.unwrap_or(nhi);
            if (nlo, nhi) == (lo, hi) {
                return Ok((lo, hi));
            }
            (lo, hi) = (nlo, nhi);
        }
    }

    /// Recomputes the incidents of `r` within `[lo, hi]` (whole clusters) and their
    /// PART_OF edges, writing only differences.
    #[allow(clippy::too_many_lines)] // one linear sequence; to be split when it next changes
    fn recluster(&mut self, r: i64, lo: i64, hi: i64) -> rusqlite::Result<()> {
        let members: Vec<Member> = self
            .conn
            .prepare_cached(&format!(
                "SELECT id, eid, t, severity, incident FROM episode
                 WHERE resource = ?1 AND t >= ?2 AND t <= ?3 AND {ERROR_OR_WORSE} ORDER BY t, eid"
            ))?
            .query_map(params![r, lo, hi], |row| {
                Ok(Member {
                    id: row.get(0)?,
                    eid: row.get(1)?,
                    t: row.get(2)?,
                    sev: parse_severity(row.get_ref(3)?.as_str()?),
                    incident: row.get(4)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        let old: Vec<(String, i64)> = self
            .conn
            .prepare_cached(
                "SELECT iid, id FROM incident WHERE resource = ?1 AND end_t >= ?2 AND start_t <= ?3",
            )?
            .query_map(params![r, lo, hi], |row| Ok((row.get(0)?, row.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        let old_ids: Vec<i64> = old.iter().map(|(_, id)| *id).collect();
        let mut old_by_iid: HashMap<String, i64> = old.into_iter().collect();
        let times: Vec<i64> = members.iter().map(|m| m.t).collect();
        let key = self.cache.name_of.get(&r).cloned().unwrap_or_default();
        let mut assigned: HashSet<i64> = HashSet::new();
        for range in incident_clusters(&times) {
            let ms = &members[range];
            let (first, last) = (&ms[0], &ms[ms.len() - 1]);
            let iid = incident_id(&key, &first.eid);
            let count = ms.len() as i64;
            let max_sev = ms.iter().map(|m| m.sev).max().unwrap_or(Severity::Error);
            let kept = old_by_iid.remove(&iid);
            let returned: Option<i64> = self
                .conn
                .prepare_cached(
                    "INSERT INTO incident(iid, resource, start_t, end_t, start_time, end_time, episodes, max_severity)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                     ON CONFLICT(iid) DO UPDATE SET resource = excluded.resource,
                        start_t = excluded.start_t, end_t = excluded.end_t,
                        start_time = excluded.start_time, end_time = excluded.end_time,
                        episodes = excluded.episodes, max_severity = excluded.max_severity
                     WHERE resource IS NOT excluded.resource OR start_t IS NOT excluded.start_t
                        OR end_t IS NOT excluded.end_t OR episodes IS NOT excluded.episodes
                        OR max_severity IS NOT excluded.max_severity
                     RETURNING id",
                )?
                .query_row(
                    params![
                        iid,
                        r,
                        first.t,
                        last.t,
                        ms_text(first.t),
                        ms_text(last.t),
                        count,
                        max_sev.as_str()
                    ],
                    |row| row.get(0),
                )
                .optional()?;
            let id = match (returned, kept) {
                (Some(id), _) => {
                    self.work.stats.incidents_written += 1;
                    id
                }
                // Unchanged: the upsert's WHERE skipped it and returned no row.
                (None, Some(id)) => id,
                (None, None) => self.conn.query_row(
                    "SELECT id FROM incident WHERE iid = ?1",
                    [&iid],
                    |row| row.get(0),
                )?,
            };
            for m in ms {
                assigned.insert(m.id);
                if m.incident != Some(id) {
                    self.conn
                        .prepare_cached("UPDATE episode SET incident = ?2 WHERE id = ?1")?
                        .execute(params![m.id, id])?;
                    self.work.stats.part_of_written += 1;
                }
            }
        }
        let mut gone: Vec<i64> = old_by_iid.into_values().collect();
        gone.sort_unstable();
        for id in gone {
            self.conn
                .prepare_cached("DELETE FROM incident WHERE id = ?1")?
                .execute([id])?;
            self.work.stats.incidents_written += 1;
        }
        for id in old_ids {
            let stale: Vec<i64> = self
                .conn
                .prepare_cached("SELECT id FROM episode WHERE incident = ?1")?
                .query_map([id], |row| row.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            for e in stale.into_iter().filter(|e| !assigned.contains(e)) {
                self.conn
                    .prepare_cached("UPDATE episode SET incident = NULL WHERE id = ?1")?
                    .execute([e])?;
                self.work.stats.part_of_written += 1;
            }
        }
        Ok(())
    }

    /// Whether a resource exists: with snapshots, while one of its snapshotted objects is
    /// not deleted; known only from events, while one of those objects is not deleted;
    /// known only by name, always. Also picks the uid shown for it.
    fn recompute_liveness(&mut self, id: i64) -> rusqlite::Result<()> {
        let rows: Vec<(String, String, bool, Option<String>)> = self
            .conn
            .prepare_cached("SELECT uid, source, deleted, at FROM object WHERE resource = ?1")?
            .query_map([id], |row| {
                Ok((
                    row.get(0)?,
                    row.get(1)?,
                    row.get::<_, i64>(2)? != 0,
                    row.get(3)?,
                ))
            })?
            .collect::<rusqlite::Result<_>>()?;
        let snapshot = |s: &str| s == "snapshot";
        let live = if rows.iter().any(|r| snapshot(&r.1)) {
            rows.iter().any(|r| snapshot(&r.1) && !r.2)
        } else {
            rows.is_empty() || rows.iter().any(|r| !r.2)
        };
        let current = rows
            .iter()
            .max_by(|a, b| {
                (!a.2, snapshot(&a.1), &a.3, &a.0).cmp(&(!b.2, snapshot(&b.1), &b.3, &b.0))
            })
            .map(|r| r.0.clone());
        let n = self
            .conn
            .prepare_cached(
                "UPDATE resource SET live = ?2, uid = ?3 WHERE id = ?1 AND (live IS NOT ?2 OR uid IS NOT ?3)",
            )?
            .execute(params![id, live, current])?;
        if n > 0 {
            self.work.stats.resources_written += 1;
        }
        Ok(())
    }

    /// Deletes the uid placeholders whose episodes moved to a named resource.
    fn drop_placeholders(&mut self) -> rusqlite::Result<()> {
        let mut doomed: Vec<i64> = self.work.doomed.drain().collect();
        doomed.sort_unstable();
        for p in doomed {
            let left: i64 = self.conn.query_row(
                "SELECT count(*) FROM episode WHERE resource = ?1",
                [p],
                |row| row.get(0),
            )?;
            if left > 0 {
                continue;
            }
            self.conn
                .prepare_cached("DELETE FROM resource WHERE id = ?1")?
                .execute([p])?;
            if let Some(key) = self.cache.name_of.remove(&p) {
                self.cache.names.remove(&key);
            }
            self.cache.bounds.remove(&p);
            self.cache.recent.drop_resource(p);
            self.work.stats.resources_written += 1;
        }
        Ok(())
    }
}

/// Small readability helpers for optional bounds.
trait OptionBound {
    fn is_none_or_le(&self, t: i64) -> bool;
}

impl OptionBound for Option<i64> {
    fn is_none_or_le(&self, t: i64) -> bool {
        match self {
            None => true,
            Some(v) => *v <= t,
        }
    }
}

trait OptionCause {
    fn is_none_or_differs(&self, c: &ScoredCause) -> bool;
}

impl OptionCause for Option<ScoredCause> {
    fn is_none_or_differs(&self, c: &ScoredCause) -> bool {
        match self {
            None => true,
            Some(old) => old != c,
        }
    }
}

trait OptionRange {
    fn is_none_or_max_below(&self, t: i64) -> bool;
}

impl OptionRange for Option<&(i64, i64)> {
    fn is_none_or_max_below(&self, t: i64) -> bool {
        match self {
            None => true,
            Some((_, max)) => *max < t,
        }
    }
}
