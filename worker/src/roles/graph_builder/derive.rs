//! The derived parts of the graph as pure functions of stored facts, so that the store can
//! recompute them for whatever a batch touched and get the same answer whatever order the
//! facts arrived in: which earlier episodes are kept as POTENTIAL_CAUSEs of an effect,
//! which episodes are escalated, and which ERROR episodes cluster into incidents.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::ops::Range;

use kg_shared::records::Severity;

use super::model::{
    CAUSAL_WINDOW_MS, ESCALATION_REPEATS, ESCALATION_WINDOW_MS, INCIDENT_MIN_EPISODES,
};
use super::scoring::{
    confidence, distance_score, domain_score, is_error_like, temporal_score, EpisodeClass,
};

/// An episode as the cause selection sees it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EpisodeFacts {
    /// Row id.
    pub id: i64,
    /// Time, ms since the epoch.
    pub t: i64,
    /// A deterministic tie-breaker (a hash of the event id).
    pub tie: u64,
    /// A hash of the reason (episodes are grouped by resource and reason).
    pub reason: u64,
    /// Its class.
    pub class: EpisodeClass,
    /// Its severity as sent.
    pub base: Severity,
}

/// A candidate cause: an episode on a resource `hops` away from the effect's.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CauseCandidate {
    /// The cause episode.
    pub episode: EpisodeFacts,
    /// Its resource.
    pub resource: i64,
    /// Topology hops between its resource and the effect's.
    pub hops: u32,
}

/// A POTENTIAL_CAUSE edge as stored.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ScoredCause {
    /// The cause episode's row id.
    pub cause: i64,
    /// 0.3·temporal + 0.3·distance + 0.4·domain.
    pub confidence: f64,
    /// 1 − Δt/window.
    pub temporal: f64,
    /// 1/(hops+1).
    pub distance: f64,
    /// From the cause → effect table.
    pub domain: f64,
    /// Topology hops.
    pub hops: u32,
}

/// The POTENTIAL_CAUSEs of `effect` among `candidates`: those strictly before it within
/// the window; of several with one resource and reason only the latest (it scores best:
/// same distance and domain, more recent; ties by time go to the larger tie-breaker);
/// ranked by [`rank_causes`].
pub fn select_causes(
    effect: &EpisodeFacts,
    candidates: &[CauseCandidate],
    limit: usize,
) -> Vec<ScoredCause> {
    let mut kept: Vec<&CauseCandidate> = candidates
        .iter()
        .filter(|c| {
            let dt = effect.t - c.episode.t;
            c.episode.id != effect.id && dt > 0 && dt <= CAUSAL_WINDOW_MS
        })
        .collect();
    kept.sort_unstable_by(|a, b| {
        (a.resource, a.episode.reason)
            .cmp(&(b.resource, b.episode.reason))
            .then((b.episode.t, b.episode.tie, b.episode.id).cmp(&(
                a.episode.t,
                a.episode.tie,
                a.episode.id,
            )))
    });
    kept.dedup_by_key(|c| (c.resource, c.episode.reason));
    rank_causes(effect, kept.into_iter().copied(), limit)
}

/// Scores candidates (already one per resource and reason, all within the window before
/// `effect`) and keeps the best `limit`: highest confidence, then the later cause, then
/// the smaller tie-breaker.
pub fn rank_causes(
    effect: &EpisodeFacts,
    candidates: impl IntoIterator<Item = CauseCandidate>,
    limit: usize,
) -> Vec<ScoredCause> {
    let mut top = TopCauses::new(effect, limit);
    for c in candidates {
        top.offer(c);
    }
    top.finish()
}

/// The best `limit` causes of one effect so far, best first.
#[derive(Debug)]
pub struct TopCauses {
    effect: EpisodeFacts,
    effect_error: bool,
    limit: usize,
    best: Vec<(ScoredCause, i64, u64)>,
}

/// The highest domain score of the table.
const MAX_DOMAIN: f64 = 0.95;

impl TopCauses {
    /// None yet.
    pub fn new(effect: &EpisodeFacts, limit: usize) -> Self {
        TopCauses {
            effect: *effect,
            effect_error: is_error_like(effect.base),
            limit,
            best: Vec::with_capacity(limit + 1),
        }
    }

    fn before(a: &(ScoredCause, i64, u64), b: &(ScoredCause, i64, u64)) -> Ordering {
        b.0.confidence
            .partial_cmp(&a.0.confidence)
            .unwrap_or(Ordering::Equal)
            .then(b.1.cmp(&a.1))
            .then(a.2.cmp(&b.2))
    }

    /// Whether a candidate `hops` away at time `t` could still make the list: false once
    /// the list is full and even the best domain score would rank below its last entry.
    /// Candidates further back in time on the same resource score lower still.
    pub fn could_take(&self, hops: u32, t: i64) -> bool {
        if self.best.len() < self.limit {
            return true;
        }
        let Some(last) = self.best.last() else {
            return false;
        };
        let bound = confidence(
            temporal_score(self.effect.t - t),
            distance_score(hops),
            MAX_DOMAIN,
        );
        bound >= last.0.confidence
    }

    /// Scores a candidate and keeps it if it ranks among the best.
    pub fn offer(&mut self, c: CauseCandidate) {
        let temporal = temporal_score(self.effect.t - c.episode.t);
        let distance = distance_score(c.hops);
        let domain = domain_score(
            c.episode.class,
            is_error_like(c.episode.base),
            self.effect.class,
            self.effect_error,
        );
        let entry = (
            ScoredCause {
                cause: c.episode.id,
                confidence: confidence(temporal, distance, domain),
                temporal,
                distance,
                domain,
                hops: c.hops,
            },
            c.episode.t,
            c.episode.tie,
        );
        if self.best.len() == self.limit {
            match self.best.last() {
                Some(last) if Self::before(&entry, last) == Ordering::Less => {}
                _ => return,
            }
        }
        let at = self
            .best
            .partition_point(|x| Self::before(x, &entry) != Ordering::Greater);
        self.best.insert(at, entry);
        self.best.truncate(self.limit);
    }

    /// The kept causes, best first.
    pub fn finish(self) -> Vec<ScoredCause> {
        self.best.into_iter().map(|(s, _, _)| s).collect()
    }
}

/// For episodes of one resource sorted by time, `(time, reason hash)`: whether each is
/// escalated, i.e. at least [`ESCALATION_REPEATS`] episodes with its reason (itself
/// included) lie in `[t − 5 min, t]`.
pub fn escalation_flags(rows: &[(i64, u64)]) -> Vec<bool> {
    let mut by_reason: HashMap<u64, Vec<i64>> = HashMap::new();
    for &(t, reason) in rows {
        by_reason.entry(reason).or_default().push(t);
    }
    for times in by_reason.values_mut() {
        times.sort_unstable();
    }
    rows.iter()
        .map(|&(t, reason)| {
            let times = &by_reason[&reason];
            let upto = times.partition_point(|&x| x <= t);
            let from = times.partition_point(|&x| x < t - ESCALATION_WINDOW_MS);
            upto - from >= ESCALATION_REPEATS
        })
        .collect()
}

/// Incident clusters among ERROR-or-worse episodes of one resource sorted by time: runs
/// in which each episode is within the window of the previous one, with at least
/// [`INCIDENT_MIN_EPISODES`] episodes.
pub fn incident_clusters(times: &[i64]) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    for i in 1..=times.len() {
        if i == times.len() || times[i] - times[i - 1] > CAUSAL_WINDOW_MS {
            if i - start >= INCIDENT_MIN_EPISODES {
                out.push(start..i);
            }
            start = i;
        }
    }
    out
}

/// Merges points into intervals: points closer than `gap` share one.
pub fn merge_points(mut points: Vec<i64>, gap: i64) -> Vec<(i64, i64)> {
    points.sort_unstable();
    let mut out: Vec<(i64, i64)> = Vec::new();
    for p in points {
        match out.last_mut() {
            Some(last) if p - last.1 <= gap => last.1 = p,
            _ => out.push((p, p)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(id: i64, t: i64, reason: u64, class: EpisodeClass, base: Severity) -> EpisodeFacts {
        EpisodeFacts {
            id,
            t,
            tie: id as u64,
            reason,
            class,
            base,
        }
    }

    #[test]
    fn causes_are_strictly_earlier_within_the_window_and_best_first() {
        let effect = ep(1, 1_000_000, 1, EpisodeClass::CrashLoop, Severity::Warning);
        let cands = [
            CauseCandidate {
                episode: ep(
                    2,
                    1_000_000 - 60_000,
                    2,
                    EpisodeClass::Oom,
                    Severity::Warning,
                ),
                resource: 10,
                hops: 0,
            },
            CauseCandidate {
                episode: ep(
                    3,
                    1_000_000 - 10_000,
                    3,
                    EpisodeClass::Other,
                    Severity::Warning,
                ),
                resource: 11,
                hops: 1,
            },
            CauseCandidate {
                episode: ep(4, 1_000_000, 4, EpisodeClass::Oom, Severity::Warning),
                resource: 10,
                hops: 0,
            },
            CauseCandidate {
                episode: ep(5, 1_000_000 + 5, 5, EpisodeClass::Oom, Severity::Warning),
                resource: 10,
                hops: 0,
            },
            CauseCandidate {
                episode: ep(
                    6,
                    1_000_000 - CAUSAL_WINDOW_MS - 1,
                    6,
                    EpisodeClass::Oom,
                    Severity::Warning,
                ),
                resource: 10,
                hops: 0,
            },
        ];
        let out = select_causes(&effect, &cands, 8);
        assert_eq!(out.iter().map(|c| c.cause).collect::<Vec<_>>(), vec![2, 3]);
        assert!((out[0].domain - 0.95).abs() < 1e-12);
        assert_eq!(out[1].hops, 1);
        assert!(out[0].confidence > out[1].confidence);
    }

    #[test]
    fn only_the_latest_of_one_reason_on_one_resource_is_kept() {
        let effect = ep(1, 1_000_000, 1, EpisodeClass::CrashLoop, Severity::Warning);
        let cands = [
            CauseCandidate {
                episode: ep(2, 900_000, 7, EpisodeClass::Oom, Severity::Warning),
                resource: 10,
                hops: 0,
            },
            CauseCandidate {
                episode: ep(3, 950_000, 7, EpisodeClass::Oom, Severity::Warning),
                resource: 10,
                hops: 0,
            },
            CauseCandidate {
                episode: ep(4, 940_000, 7, EpisodeClass::Oom, Severity::Warning),
                resource: 12,
                hops: 2,
            },
        ];
        let out = select_causes(&effect, &cands, 8);
        assert_eq!(out.iter().map(|c| c.cause).collect::<Vec<_>>(), vec![3, 4]);
        assert_eq!(select_causes(&effect, &cands, 1).len(), 1);
    }

    proptest::proptest! {
        /// The store walks each resource's episodes from the latest back and stops once
        /// nothing further back can rank; that must select exactly what scoring every
        /// candidate selects.
        #[test]
        fn pruned_walk_selects_what_full_ranking_selects(
            raw in proptest::collection::vec((0i64..6, 0u32..4, 0i64..CAUSAL_WINDOW_MS, 0u64..5, 0usize..12, 1usize..5), 0..120),
            limit in 1usize..10,
        ) {
            let effect = ep(0, 2 * CAUSAL_WINDOW_MS, 99, EpisodeClass::CrashLoop, Severity::Warning);
            let severities = [Severity::Debug, Severity::Info, Severity::Warning, Severity::Error, Severity::Fatal];
            let hops_of = |r: i64| (r as u32) % 4;
            let cands: Vec<CauseCandidate> = raw
                .iter()
                .enumerate()
                .map(|(i, &(res, _, back, reason, class, sev))| CauseCandidate {
                    episode: EpisodeFacts {
                        id: i as i64 + 1,
                        t: effect.t - 1 - back,
                        tie: (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
                        reason,
                        class: EpisodeClass::ALL[class],
                        base: severities[sev],
                    },
                    resource: res,
                    hops: hops_of(res),
                })
                .collect();
            let full = select_causes(&effect, &cands, limit);
            let mut top = TopCauses::new(&effect, limit);
            for res in 0..6 {
                let mut eps: Vec<EpisodeFacts> = cands.iter().filter(|c| c.resource == res).map(|c| c.episode).collect();
                eps.sort_unstable_by_key(|e| (e.t, e.tie, e.id));
                let mut seen = Vec::new();
                for e in eps.iter().rev() {
                    if !top.could_take(hops_of(res), e.t) {
                        break;
                    }
                    if !seen.contains(&e.reason) {
                        seen.push(e.reason);
                        top.offer(CauseCandidate { episode: *e, resource: res, hops: hops_of(res) });
                    }
                }
            }
            proptest::prop_assert_eq!(top.finish(), full);
        }
    }

    #[test]
    fn third_repeat_within_five_minutes_escalates() {
        let m = 60_000;
        let rows = [
            (0, 1),
            (m, 1),
            (2 * m, 2),
            (3 * m, 1),
            (9 * m, 1),
            (9 * m, 1),
        ];
        assert_eq!(
            escalation_flags(&rows),
            vec![false, false, false, true, false, false]
        );
        let same_time = [(0, 1), (0, 1), (0, 1)];
        assert_eq!(escalation_flags(&same_time), vec![true, true, true]);
    }

    #[test]
    fn error_episodes_within_the_window_of_each_other_cluster() {
        let m = 60_000;
        assert_eq!(
            incident_clusters(&[0, 10 * m, 20 * m, 40 * m, 60 * m, 61 * m]),
            vec![0..3, 4..6]
        );
        assert!(incident_clusters(&[0]).is_empty());
        assert!(incident_clusters(&[]).is_empty());
    }

    #[test]
    fn points_merge_into_intervals() {
        assert_eq!(
            merge_points(vec![5, 1, 100, 3], 10),
            vec![(1, 5), (100, 100)]
        );
    }
}
