//! Health probing: `GET /health` on each running worker, and the count of consecutive
//! failed probes that turns into a crash (restarted under the worker's policy).

use std::sync::Arc;
use std::time::Duration;

use kg_shared::health::{HealthReading, HealthStatus};

use crate::runtime::Runtime;

/// Health probes of running workers (`GET /health` on each worker).
#[derive(Debug, Clone)]
pub struct HealthSettings {
    /// How often every running worker is probed; zero disables probing.
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive failed probes that count as a crash (restarted under the policy).
    pub failures: u32,
    /// Probes in flight at once. A round over thousands of workers is worked through this
    /// many at a time, so it never holds a task per worker.
    pub max_concurrent: usize,
}

/// What one probe found.
#[derive(Debug, Clone, PartialEq)]
pub enum Probe {
    Healthy,
    Degraded(String),
    Failed(String),
}

/// A probe's answer, fed back to the controller.
pub struct ProbeReport {
    pub name: Arc<str>,
    pub client: Arc<str>,
    pub role: Arc<str>,
    pub probe: Option<Probe>,
}

/// Per running worker: consecutive failed probes, and whether it last reported degraded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HealthRecord {
    pub failures: u32,
    pub degraded: bool,
}

impl HealthRecord {
    /// Counts one probe. Once `threshold` consecutive probes have failed, returns the last
    /// failure's detail (the worker counts as crashed) and counts from zero again.
    pub fn count(&mut self, probe: Probe, threshold: u32) -> Option<String> {
        match probe {
            Probe::Healthy => {
                *self = HealthRecord::default();
                None
            }
            Probe::Degraded(_) => {
                *self = HealthRecord {
                    failures: 0,
                    degraded: true,
                };
                None
            }
            Probe::Failed(detail) => {
                self.failures += 1;
                (self.failures >= threshold).then(|| {
                    *self = HealthRecord::default();
                    detail
                })
            }
        }
    }
}

/// Asks a worker's `/health`; None when the worker has no known endpoint.
pub async fn probe(
    runtime: &dyn Runtime,
    http: &reqwest::Client,
    name: &str,
    timeout: Duration,
) -> Option<Probe> {
    let endpoint = match tokio::time::timeout(timeout, runtime.endpoint(name)).await {
        Ok(Ok(Some(endpoint))) => endpoint,
        _ => return None,
    };
    let answer = http
        .get(format!("http://{endpoint}/health"))
        .timeout(timeout)
        .send()
        .await;
    let response = match answer {
        Ok(response) => response,
        Err(error) => return Some(Probe::Failed(format!("no answer: {error}"))),
    };
    let success = response.status().is_success();
    let body = response.bytes().await.unwrap_or_default();
    Some(verdict(success, HealthReading::parse(&body)))
}

/// What a `/health` answer means: a failing HTTP status is a failure whatever the body
/// says (with its reason, or "unhealthy"); otherwise the worker's own status decides, and
/// an answer without one that can be read counts as healthy.
fn verdict(success: bool, reading: HealthReading) -> Probe {
    let reason = reading.reason.unwrap_or_default();
    match reading.status {
        _ if !success => Probe::Failed(if reason.is_empty() {
            "unhealthy".into()
        } else {
            reason
        }),
        Some(HealthStatus::Degraded) => Probe::Degraded(reason),
        Some(HealthStatus::Failed) => Probe::Failed(reason),
        Some(HealthStatus::Healthy) | None => Probe::Healthy,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_failures_up_to_the_threshold_count_as_a_crash_and_start_over() {
        let mut record = HealthRecord::default();
        let failed = |detail: &str| Probe::Failed(detail.into());
        assert_eq!(record.count(failed("a"), 3), None);
        assert_eq!(record.count(failed("b"), 3), None);
        assert_eq!(record.count(failed("c"), 3), Some("c".to_string()));
        assert_eq!(record, HealthRecord::default());
        // A healthy or degraded answer in between resets the count.
        assert_eq!(record.count(failed("d"), 2), None);
        assert_eq!(record.count(Probe::Degraded("slow".into()), 2), None);
        assert!(record.degraded);
        assert_eq!(record.count(failed("e"), 2), None);
        assert_eq!(record.count(Probe::Healthy, 2), None);
        assert_eq!(record.count(failed("f"), 2), None);
        assert_eq!(record.count(failed("g"), 2), Some("g".to_string()));
    }

    #[test]
    fn the_http_status_then_the_workers_own_status_decide() {
        let verdict_of =
            |success: bool, body: &str| verdict(success, HealthReading::parse(body.as_bytes()));
        let cases = [
            (true, r#"{"status":"healthy","reason":""}"#, Probe::Healthy),
            (
                true,
                r#"{"status":"degraded","reason":"lagging by 5000 records"}"#,
                Probe::Degraded("lagging by 5000 records".into()),
            ),
            (
                true,
                r#"{"status":"degraded"}"#,
                Probe::Degraded(String::new()),
            ),
            (
                true,
                r#"{"status":"failed","reason":"stalled"}"#,
                Probe::Failed("stalled".into()),
            ),
            // Unknown or unreadable: healthy, as long as the HTTP status is.
            (true, r#"{"status":"sleepy"}"#, Probe::Healthy),
            (true, "not json", Probe::Healthy),
            (true, "", Probe::Healthy),
            // A failing HTTP status fails whatever the body says.
            (
                false,
                r#"{"status":"failed","reason":"stalled"}"#,
                Probe::Failed("stalled".into()),
            ),
            (
                false,
                r#"{"status":"healthy"}"#,
                Probe::Failed("unhealthy".into()),
            ),
            (false, "Bad Gateway", Probe::Failed("unhealthy".into())),
        ];
        for (success, body, expected) in cases {
            assert_eq!(verdict_of(success, body), expected, "{success} {body}");
        }
    }
}
