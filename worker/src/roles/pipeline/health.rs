//! A pipeline worker's per-stage health, as seed 000's `/health/processors` had it: each
//! stage's state and counts, and for the delay stage its held sessions. Read by
//! `GET /health/stages`, and (the delay's summary) by `GET /health`.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use chrono::{DateTime, SecondsFormat};
use kg_shared::health::{DelayHealth, RetryHealth};
use kg_shared::pipeline_template::{OnUnavailable, RetryLadder, Stage};
use serde_json::{json, Value};

use super::pending::PendingStore;
use super::retries::RetryStore;
use super::state::{CatchUp, StateView};
use super::Stages;
use crate::metrics::WorkerMetrics;

/// How long checks may wait for the state topic (or the input) before `/health` says
/// degraded.
const STATE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);
/// How far past its due time a held session may be before `/health` says degraded.
const OVERDUE: std::time::Duration = std::time::Duration::from_secs(60);

/// The window each stage's throughput is measured over.
const THROUGHPUT_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);

/// Each stage's records passed as of earlier reads, so a read can say how many went
/// through per second lately (over the last minute, or since the read before when reads
/// are further apart; at the first read, since the worker started).
#[derive(Debug)]
pub struct Throughput {
    samples: std::sync::Mutex<std::collections::VecDeque<(std::time::Instant, Vec<u64>)>>,
}

impl Default for Throughput {
    fn default() -> Self {
        Self {
            samples: std::sync::Mutex::new(
                [(std::time::Instant::now(), Vec::new())]
                    .into_iter()
                    .collect(),
            ),
        }
    }
}

impl Throughput {
    /// Records per second of each stage since the window's start, given the counts now.
    pub fn per_second(&self, now: std::time::Instant, passed: &[u64]) -> Vec<f64> {
        let Ok(mut samples) = self.samples.lock() else {
            return vec![0.0; passed.len()];
        };
        // Keep the newest sample at least a window old as the base.
        while samples.len() > 1
            && samples
                .get(1)
                .is_some_and(|(at, _)| now.duration_since(*at) >= THROUGHPUT_WINDOW)
        {
            samples.pop_front();
        }
        let rates = samples.front().map_or_else(
            || vec![0.0; passed.len()],
            |(since, before)| {
                let seconds = now.duration_since(*since).as_secs_f64().max(1e-3);
                passed
                    .iter()
                    .enumerate()
                    .map(|(i, count)| {
                        count.saturating_sub(before.get(i).copied().unwrap_or(0)) as f64 / seconds
                    })
                    .collect()
            },
        );
        samples.push_back((now, passed.to_vec()));
        rates
    }
}

/// What the health routes read of a pipeline.
pub struct StagesHealth {
    pub pipeline: String,
    pub stages: Stages,
    /// Each stage's recent throughput, kept between reads.
    pub throughput: Arc<Throughput>,
    /// The delay stage's parts, if the pipeline has one.
    pub delay: Option<DelayParts>,
    /// The retry ladder's store and delays, if a stage may retry.
    pub retries: Option<(Arc<RetryStore>, RetryLadder)>,
}

/// What the health routes read of a delay stage.
pub struct DelayParts {
    pub store: Arc<PendingStore>,
    pub view: Arc<StateView>,
    pub input_read: Arc<CatchUp>,
}

impl StagesHealth {
    /// The delay stage's summary for `/health`; None without a delay stage.
    pub fn delay_summary(&self, metrics: &WorkerMetrics) -> Option<DelayHealth> {
        let DelayParts {
            store,
            view,
            input_read,
        } = self.delay.as_ref()?;
        let (pending, oldest_due) = store.stats().unwrap_or((0, None));
        Some(DelayHealth {
            pending_sessions: pending,
            oldest_due: oldest_due
                .and_then(DateTime::from_timestamp_millis)
                .map(|due| due.to_rfc3339_opts(SecondsFormat::Millis, true)),
            violations: metrics.delay_violations.get(),
            state_caught_up: view.is_caught_up(),
            input_caught_up: input_read.is_caught_up(),
        })
    }

    /// The retry ladder's summary for `/health`; None when no stage retries.
    pub fn retry_summary(&self, metrics: &WorkerMetrics) -> Option<RetryHealth> {
        let (store, _) = self.retries.as_ref()?;
        let (pending, next_due) = store.stats().unwrap_or((0, None));
        Some(RetryHealth {
            pending,
            next_due: next_due
                .and_then(DateTime::from_timestamp_millis)
                .map(|due| due.to_rfc3339_opts(SecondsFormat::Millis, true)),
            exhausted: metrics
                .retries
                .get_or_create(&crate::metrics::OutcomeLabel {
                    outcome: "exhausted".into(),
                })
                .get(),
        })
    }

    /// Why the pipeline's stages are not well, for `/health` to say degraded.
    pub fn trouble(&self) -> Option<String> {
        self.delay_trouble().or_else(|| self.retry_trouble())
    }

    /// A retry overdue by over `OVERDUE`: nothing attempts it.
    fn retry_trouble(&self) -> Option<String> {
        let (_, next_due) = self.retries.as_ref()?.0.stats().ok()?;
        let overdue_ms = chrono::Utc::now().timestamp_millis() - next_due?;
        (overdue_ms > OVERDUE.as_millis() as i64)
            .then(|| format!("a retry is {}s past its due time", overdue_ms / 1000))
    }

    /// Why the delay stage is not well: its checks have waited over `STATE_WAIT` for the
    /// state topic, or a session is overdue by over `OVERDUE` (nothing emits it).
    fn delay_trouble(&self) -> Option<String> {
        let DelayParts {
            store,
            view,
            input_read,
        } = self.delay.as_ref()?;
        if let Some(waiting) = view.waiting_for().filter(|w| *w > STATE_WAIT) {
            return Some(format!(
                "the delay stage's checks have waited {}s for its state topic to be read",
                waiting.as_secs()
            ));
        }
        if let Some(waiting) = input_read.waiting_for().filter(|w| *w > STATE_WAIT) {
            return Some(format!(
                "the delay stage has waited {}s for its input to be read to where it ended at start",
                waiting.as_secs()
            ));
        }
        let (_, oldest_due) = store.stats().ok()?;
        let overdue_ms = chrono::Utc::now().timestamp_millis() - oldest_due?;
        (overdue_ms > OVERDUE.as_millis() as i64)
            .then(|| format!("a held session is {}s past its due time", overdue_ms / 1000))
    }

    /// Every stage, in order: kind, state, records passed and rejected; the delay stage
    /// also its sessions and what became of those let go.
    pub fn report(&self, metrics: &WorkerMetrics) -> Value {
        let passed: Vec<u64> = self
            .stages
            .each()
            .map(|(_, counter)| counter.passed.load(Ordering::Relaxed))
            .collect();
        let rates = self
            .throughput
            .per_second(std::time::Instant::now(), &passed);
        let stages: Vec<Value> = self
            .stages
            .each()
            .enumerate()
            .map(|(index, (stage, counter))| {
                let mut entry = json!({
                    "index": index,
                    "kind": stage.kind(),
                    "state": "running",
                    "passed": passed[index],
                    "passed_per_second": (rates[index] * 1000.0).round() / 1000.0,
                    "rejected": counter.rejected.load(Ordering::Relaxed),
                });
                if let Stage::Graph(graph) = stage {
                    entry["on_unavailable"] = json!(match graph.on_unavailable {
                        OnUnavailable::Emit => "emit",
                        OnUnavailable::Retry => "retry",
                    });
                    entry["retried"] = json!(counter.retried.load(Ordering::Relaxed));
                }
                if let (Stage::Delay(delay), Some(summary)) = (stage, self.delay_summary(metrics)) {
                    if !summary.state_caught_up {
                        entry["state"] = json!("reading its state topic");
                    } else if !summary.input_caught_up {
                        entry["state"] = json!("reading its input to where it ended at start");
                    }
                    entry["hold"] = json!(humanize(delay.hold));
                    entry["check_every"] = json!(humanize(delay.check_every));
                    entry["pending_sessions"] = json!(summary.pending_sessions);
                    entry["oldest_due"] = json!(summary.oldest_due);
                    entry["violations"] = json!(summary.violations);
                    entry["released"] = json!(released(metrics));
                }
                entry
            })
            .collect();
        let mut report = json!({ "pipeline": self.pipeline, "stages": stages });
        if let (Some(summary), Some((_, ladder))) = (self.retry_summary(metrics), &self.retries) {
            report["retries"] = json!({
                "pending": summary.pending,
                "next_due": summary.next_due,
                "ladder": ladder.delays.iter().map(|d| humanize(*d)).collect::<Vec<_>>(),
                "outcomes": retry_outcomes(metrics),
            });
        }
        report
    }
}

fn humanize(duration: std::time::Duration) -> String {
    format!("{}s", duration.as_secs_f64())
}

/// Records of the retry ladder, by outcome, from the metric family.
fn retry_outcomes(metrics: &WorkerMetrics) -> serde_json::Map<String, Value> {
    [
        "scheduled",
        "delivered",
        "held",
        "dead_lettered",
        "exhausted",
    ]
    .into_iter()
    .map(|outcome| {
        let count = metrics
            .retries
            .get_or_create(&crate::metrics::OutcomeLabel {
                outcome: outcome.into(),
            })
            .get();
        (outcome.to_string(), json!(count))
    })
    .collect()
}

/// Sessions let go, by outcome, from the metric family.
fn released(metrics: &WorkerMetrics) -> serde_json::Map<String, Value> {
    [
        "emitted",
        "retrying",
        "diverted",
        "dropped",
        "dead_lettered",
        "superseded",
        "ended",
        "repeat",
    ]
    .into_iter()
    .map(|outcome| {
        let count = metrics
            .delay_released
            .get_or_create(&crate::metrics::OutcomeLabel {
                outcome: outcome.into(),
            })
            .get();
        (outcome.to_string(), json!(count))
    })
    .collect()
}

#[cfg(test)]
mod throughput_tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn throughput_is_over_the_last_minute_or_since_the_read_before() {
        let throughput = Throughput::default();
        let start = throughput.samples.lock().unwrap()[0].0;
        // First read, 10 s in: since the start.
        assert_eq!(
            throughput.per_second(start + Duration::from_secs(10), &[100, 50]),
            [10.0, 5.0]
        );
        // 20 s later: since the start still (the window is a minute).
        assert_eq!(
            throughput.per_second(start + Duration::from_secs(30), &[400, 50]),
            [400.0 / 30.0, 50.0 / 30.0]
        );
        // 100 s in: from the newest read at least a minute old (the one at 30 s).
        let rates = throughput.per_second(start + Duration::from_secs(100), &[1100, 50]);
        assert_eq!(rates, [10.0, 0.0]);
    }
}
