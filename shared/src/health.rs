//! A worker's `/health` answer: what the worker writes ([`HealthAnswer`]) and what the
//! control plane's prober reads of it ([`HealthReading`]), one set of names for both.
//!
//! The prober reads tolerantly: a body that is not JSON, not an object, or whose `status`
//! or `reason` is missing or of another shape (an older or a foreign worker) leaves that
//! part unknown rather than failing, and the prober decides on the HTTP status alone.

use serde::{Deserialize, Deserializer, Serialize};

use crate::Role;

/// A worker's own view of its health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    /// Working as it should (`200`).
    Healthy,
    /// Working, but lagging or dead-lettering much of its input (`200`).
    Degraded,
    /// Records wait and nothing was committed for too long (`503`).
    Failed,
}

impl HealthStatus {
    /// The name on the wire.
    pub const fn as_str(self) -> &'static str {
        match self {
            HealthStatus::Healthy => "healthy",
            HealthStatus::Degraded => "degraded",
            HealthStatus::Failed => "failed",
        }
    }
}

/// The body of a worker's `GET /health`. The fields are in the order the worker has
/// always written them (alphabetical), so the JSON stays byte for byte what it was.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthAnswer {
    /// The client the worker serves; empty for the shared event attributor.
    pub client_id: String,
    pub consumer_lag: i64,
    /// A pipeline's delay stage, if it has one (absent for every other worker, whose
    /// answer stays as it was).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<DelayHealth>,
    /// Why it is not healthy; empty when it is.
    pub reason: String,
    pub records_in: u64,
    pub records_out: u64,
    /// A pipeline's records waiting on its retry ladder, if any of its stages retries
    /// (absent for every other worker).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<RetryHealth>,
    pub role: Role,
    pub status: HealthStatus,
}

/// A pipeline's pending retries, in its worker's `/health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryHealth {
    /// Records waiting for their next attempt.
    pub pending: u64,
    /// The earliest next attempt (RFC 3339), if any.
    pub next_due: Option<String>,
    /// Records given up after the ladder's last rung (dead-lettered), since the start.
    pub exhausted: u64,
}

/// A delay stage's sessions, in a pipeline worker's `/health`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DelayHealth {
    /// Sessions held now.
    pub pending_sessions: u64,
    /// The earliest due time held (RFC 3339), if any.
    pub oldest_due: Option<String>,
    /// Checks that found a session's state out of its `hold_while` values.
    pub violations: u64,
    /// Whether the state topic has been read to its end (checks wait until it has).
    pub state_caught_up: bool,
    /// Whether the input has been read to where it ended at start (when input records
    /// may end holds, emissions wait until it has); true for other delays.
    #[serde(default = "yes")]
    pub input_caught_up: bool,
}

fn yes() -> bool {
    true
}

/// What a prober reads of a `/health` body, whoever wrote it: only `status` and `reason`,
/// each `None` when absent or of another shape.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct HealthReading {
    #[serde(default, deserialize_with = "or_none")]
    pub status: Option<HealthStatus>,
    #[serde(default, deserialize_with = "or_none")]
    pub reason: Option<String>,
}

impl HealthReading {
    /// Reads `body`; anything but a JSON object reads as nothing known.
    pub fn parse(body: &[u8]) -> Self {
        match serde_json::from_slice::<serde_json::Value>(body) {
            Ok(object @ serde_json::Value::Object(_)) => {
                Self::deserialize(object).unwrap_or_default()
            }
            _ => Self::default(),
        }
    }
}

/// A field that reads as `None` instead of failing when it has another shape.
fn or_none<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    let value = serde_json::Value::deserialize(deserializer)?;
    Ok(T::deserialize(value).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: HealthStatus, reason: &str) -> HealthAnswer {
        HealthAnswer {
            delay: None,
            client_id: "af-9".into(),
            consumer_lag: 5000,
            reason: reason.into(),
            records_in: 12,
            records_out: 10,
            retries: None,
            role: Role::EventNormalizer,
            status,
        }
    }

    #[test]
    fn the_answer_is_the_json_workers_have_always_sent_and_reads_back() {
        let sent = answer(HealthStatus::Degraded, "lagging by 5000 records");
        let json = serde_json::to_string(&sent).unwrap();
        // What `json!` wrote before: keys sorted, the same names and values.
        let before = serde_json::json!({
            "status": "degraded",
            "reason": "lagging by 5000 records",
            "client_id": "af-9",
            "role": "event-normalizer",
            "records_in": 12u64,
            "records_out": 10u64,
            "consumer_lag": 5000i64,
        });
        assert_eq!(json, before.to_string());
        assert_eq!(serde_json::from_str::<HealthAnswer>(&json).unwrap(), sent);
        assert_eq!(
            HealthReading::parse(json.as_bytes()),
            HealthReading {
                status: Some(HealthStatus::Degraded),
                reason: Some("lagging by 5000 records".into()),
            }
        );
        for status in [
            HealthStatus::Healthy,
            HealthStatus::Degraded,
            HealthStatus::Failed,
        ] {
            let json = serde_json::to_value(answer(status, "")).unwrap();
            assert_eq!(json["status"], status.as_str());
        }
    }

    #[test]
    fn a_prober_reads_what_it_can_and_leaves_the_rest_unknown() {
        let read = |body: &str| HealthReading::parse(body.as_bytes());
        assert_eq!(read("not json"), HealthReading::default());
        assert_eq!(read(r#"["failed", "why"]"#), HealthReading::default());
        assert_eq!(read("{}"), HealthReading::default());
        assert_eq!(
            read(r#"{"status": "Failed", "reason": 5}"#),
            HealthReading::default()
        );
        assert_eq!(
            read(r#"{"status": "failed", "extra": true}"#),
            HealthReading {
                status: Some(HealthStatus::Failed),
                reason: None,
            }
        );
    }
}
