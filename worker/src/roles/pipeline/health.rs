//! A pipeline worker's per-stage health, as seed 000's `/health/processors` had it: each
//! stage's state and counts, and for the delay stage its held sessions. Read by
//! `GET /health/stages`, and (the delay's summary) by `GET /health`.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use chrono::{DateTime, SecondsFormat};
use kg_shared::health::DelayHealth;
use kg_shared::pipeline_template::Stage;
use serde_json::{json, Value};

use super::pending::PendingStore;
use super::state::{CatchUp, StateView};
use super::Stages;
use crate::metrics::WorkerMetrics;

/// How long checks may wait for the state topic (or the input) before `/health` says
/// degraded.
const STATE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);
/// How far past its due time a held session may be before `/health` says degraded.
const OVERDUE: std::time::Duration = std::time::Duration::from_secs(60);

/// What the health routes read of a pipeline.
pub struct StagesHealth {
    pub pipeline: String,
    pub stages: Stages,
    /// The delay stage's parts, if the pipeline has one.
    pub delay: Option<DelayParts>,
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

    /// Why the delay stage is not well, for `/health` to say degraded: its checks have
    /// waited over `STATE_WAIT` for the state topic, or a session is overdue by over
    /// `OVERDUE` (nothing emits it).
    pub fn trouble(&self) -> Option<String> {
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
        let stages: Vec<Value> = self
            .stages
            .each()
            .enumerate()
            .map(|(index, (stage, counter))| {
                let mut entry = json!({
                    "index": index,
                    "kind": stage.kind(),
                    "state": "running",
                    "passed": counter.passed.load(Ordering::Relaxed),
                    "rejected": counter.rejected.load(Ordering::Relaxed),
                });
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
        json!({ "pipeline": self.pipeline, "stages": stages })
    }
}

fn humanize(duration: std::time::Duration) -> String {
    format!("{}s", duration.as_secs_f64())
}

/// Sessions let go, by outcome, from the metric family.
fn released(metrics: &WorkerMetrics) -> serde_json::Map<String, Value> {
    [
        "emitted",
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
