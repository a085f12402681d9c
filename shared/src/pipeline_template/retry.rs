//! The retry ladder of a pipeline (seed 001): a record whose stage fails for a while (a
//! graph stage with `on_unavailable = "retry"` whose graph cannot be read) is tried again
//! after each rung's delay, and after the last one goes to the dead-letter topic with
//! every attempt's reason. Permanent failures (validation) never climb it.
//!
//! ```toml
//! [[pipeline]]
//! name = "alerts"
//! retry = { delays = ["5m", "10m", "20m", "40m"] }   # the default
//! ```

use std::time::Duration;

use serde::{Deserialize, Deserializer};

use super::delay::MAX_HOLD;

/// The most rungs a ladder may have: past that, a failure is not transient.
pub const MAX_RUNGS: usize = 20;

/// How long a failed record waits before each new attempt.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryLadder {
    /// The wait before the second attempt, the third, …: a record is attempted
    /// `delays.len() + 1` times in all.
    #[serde(default = "default_delays", deserialize_with = "durations")]
    pub delays: Vec<Duration>,
}

impl Default for RetryLadder {
    fn default() -> Self {
        Self {
            delays: default_delays(),
        }
    }
}

/// Seed 001's ladder: 5, 10, 20 and 40 minutes.
fn default_delays() -> Vec<Duration> {
    [5, 10, 20, 40]
        .into_iter()
        .map(|minutes| Duration::from_secs(minutes * 60))
        .collect()
}

fn durations<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<Duration>, D::Error> {
    let texts = Vec::<String>::deserialize(deserializer)?;
    texts
        .iter()
        .map(|text| {
            humantime::parse_duration(text).map_err(|error| {
                serde::de::Error::custom(format!(
                    "{text:?} is not a duration like \"5m\", \"90s\" or \"500ms\": {error}"
                ))
            })
        })
        .collect()
}

impl RetryLadder {
    /// What the types cannot say: at least one rung, none zero or absurdly long.
    pub(super) fn checked(self) -> Result<Self, (String, String)> {
        if self.delays.is_empty() {
            return Err((
                "retry.delays".into(),
                "at least one delay; a pipeline whose stages should not be retried sets no stage to retry".into(),
            ));
        }
        if self.delays.len() > MAX_RUNGS {
            return Err((
                "retry.delays".into(),
                format!(
                    "{} rungs, more than the {MAX_RUNGS} a ladder may have",
                    self.delays.len()
                ),
            ));
        }
        for (n, delay) in self.delays.iter().enumerate() {
            if delay.is_zero() || *delay > MAX_HOLD {
                return Err((
                    format!("retry.delays[{n}]"),
                    format!("{delay:?} is not above zero and within 10 years"),
                ));
            }
        }
        Ok(self)
    }

    /// How long to wait after the `failures`-th failed attempt (1 for the first), or None
    /// when that was the last attempt the ladder allows.
    pub fn wait_after(&self, failures: u32) -> Option<Duration> {
        let rung = usize::try_from(failures).ok()?.checked_sub(1)?;
        self.delays.get(rung).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_ladder_is_seed_001s_and_ends_after_its_last_rung() {
        let ladder = RetryLadder::default();
        let minutes = |m: u64| Some(Duration::from_secs(m * 60));
        assert_eq!(ladder.wait_after(1), minutes(5));
        assert_eq!(ladder.wait_after(2), minutes(10));
        assert_eq!(ladder.wait_after(3), minutes(20));
        assert_eq!(ladder.wait_after(4), minutes(40));
        assert_eq!(ladder.wait_after(5), None);
        assert_eq!(ladder.wait_after(0), None);
    }

    #[test]
    fn empty_zero_and_overlong_ladders_are_refused_naming_the_rung() {
        let ladder = |delays: Vec<u64>| RetryLadder {
            delays: delays.into_iter().map(Duration::from_secs).collect(),
        };
        assert_eq!(ladder(vec![]).checked().unwrap_err().0, "retry.delays");
        assert_eq!(
            ladder(vec![1, 0]).checked().unwrap_err().0,
            "retry.delays[1]"
        );
        assert_eq!(
            ladder(vec![1; MAX_RUNGS + 1]).checked().unwrap_err().0,
            "retry.delays"
        );
        assert!(ladder(vec![1, 2]).checked().is_ok());
    }
}
