//! The delay stage's template (seed 000's cooling period): hold each session's record
//! until `hold` has passed, checking every `check_every` the latest state of its key in a
//! (compacted) state topic; a session whose state leaves `hold_while` is a violation and
//! is dropped, or diverted to a topic, instead of emitted.
//!
//! ```toml
//! [[pipeline.stage]]
//! kind = "delay"
//! key = "server_id"
//! hold = "48h"
//! check_every = "2h"
//! check = { topic = "servers.power", field = "power", hold_while = ["off"] }
//! ```

use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// Hold, re-check, then emit.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Delay {
    /// The record field naming the session (one pending record per session: a second
    /// record of a session already held is not held again).
    pub key: String,
    /// How long a record is held before it is emitted ("48h", "90s", "500ms").
    #[serde(deserialize_with = "duration")]
    pub hold: Duration,
    /// How often a held session's state is checked; the last check is at the due time.
    #[serde(deserialize_with = "duration")]
    pub check_every: Duration,
    /// Without a check, every held record is emitted at its due time.
    #[serde(default)]
    pub check: Option<StateCheck>,
    /// The record field whose time the hold counts from (RFC 3339, or milliseconds since
    /// the epoch; an alert's `startsAt`), so that a repeat of a held record keeps its due
    /// time. Without it, or when a record has no such time, from when the record came in.
    #[serde(default)]
    pub hold_from: Option<String>,
    /// Records that end their session's hold instead of being held (an alert's
    /// resolution): a session held from an earlier record is dropped with this record, so
    /// neither is emitted; with none held, the record goes on at once.
    #[serde(default)]
    pub end_when: Option<EndWhen>,
}

/// Which records end a hold: `field` equal to one of `equals`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndWhen {
    pub field: String,
    pub equals: Vec<serde_json::Value>,
}

/// The condition a held session must keep: the latest record of its key in `topic` has
/// `field` equal to one of `hold_while`. A key with no state record yet keeps it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateCheck {
    /// Records keyed `<client>::…`, JSON objects carrying the delay's `key` field.
    pub topic: String,
    pub field: String,
    pub hold_while: Vec<serde_json::Value>,
    /// Where a violating session's record goes; without it, violations are dropped
    /// (counted and logged).
    #[serde(default)]
    pub divert_violations_to: Option<String>,
}

/// The longest hold: due times stay far inside what time arithmetic can represent.
pub const MAX_HOLD: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

pub(super) fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    humantime::parse_duration(&text).map_err(|error| {
        serde::de::Error::custom(format!(
            "{text:?} is not a duration like \"48h\", \"90s\" or \"500ms\": {error}"
        ))
    })
}

impl Delay {
    /// What the types cannot say: durations that hold something, a check that can pass.
    pub(super) fn checked(self, output: &str) -> Result<Self, (String, String)> {
        if self.key.trim().is_empty() {
            return Err(("key".into(), "a field name is required".into()));
        }
        if self.hold.is_zero() {
            return Err(("hold".into(), "a zero hold holds nothing".into()));
        }
        if self.hold > MAX_HOLD {
            return Err((
                "hold".into(),
                format!("{:?} is longer than the longest hold, 10 years", self.hold),
            ));
        }
        if self.check_every.is_zero() {
            return Err(("check_every".into(), "must be above zero".into()));
        }
        if self.check_every > self.hold {
            return Err((
                "check_every".into(),
                format!(
                    "{:?} is longer than the hold {:?}: no check would run before the due time",
                    self.check_every, self.hold
                ),
            ));
        }
        if self
            .hold_from
            .as_deref()
            .is_some_and(|f| f.trim().is_empty())
        {
            return Err(("hold_from".into(), "a field name, or leave it out".into()));
        }
        if let Some(end) = &self.end_when {
            if end.field.trim().is_empty() {
                return Err(("end_when.field".into(), "a field name is required".into()));
            }
            if end.equals.is_empty() {
                return Err((
                    "end_when.equals".into(),
                    "at least one value: with none, no record ends a hold".into(),
                ));
            }
        }
        if let Some(check) = &self.check {
            if check.topic.trim().is_empty() {
                return Err(("check.topic".into(), "a topic is required".into()));
            }
            if check.topic == output {
                return Err((
                    "check.topic".into(),
                    format!("{output:?} is the pipeline's output: it would check its own records"),
                ));
            }
            if check.hold_while.is_empty() {
                return Err((
                    "check.hold_while".into(),
                    "at least one value: with none, every known state is a violation".into(),
                ));
            }
            if check
                .divert_violations_to
                .as_deref()
                .is_some_and(|topic| topic.trim().is_empty())
            {
                return Err((
                    "check.divert_violations_to".into(),
                    "a topic, or leave it out to drop violations".into(),
                ));
            }
        }
        Ok(self)
    }
}
