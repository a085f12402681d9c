//! The heartbeat timeout, in one type: how long a client stays live without a heartbeat.
//! Ingest, the table, the plan and the controller all ask it, so "live" means one thing.

use std::str::FromStr;

use chrono::{DateTime, Duration, Utc};

/// The longest timeout accepted: a year. Longer is a typo, and would overflow the
/// arithmetic on instants.
const MAX_SECS: u64 = 365 * 24 * 3600;

/// How long a client stays live without a heartbeat; at least a second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeartbeatTimeout(Duration);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeartbeatTimeoutError {
    #[error("not a whole number of seconds: {0:?}")]
    NotSeconds(String),
    #[error("{0}s is out of range: the heartbeat timeout is 1 to {MAX_SECS} seconds")]
    OutOfRange(u64),
}

impl HeartbeatTimeout {
    pub fn from_secs(secs: u64) -> Result<Self, HeartbeatTimeoutError> {
        if !(1..=MAX_SECS).contains(&secs) {
            return Err(HeartbeatTimeoutError::OutOfRange(secs));
        }
        let secs = i64::try_from(secs).map_err(|_| HeartbeatTimeoutError::OutOfRange(secs))?;
        Ok(Self(Duration::seconds(secs)))
    }

    /// Whether a client last heard at `last_seen` is live at `now`.
    pub fn is_live(self, last_seen: DateTime<Utc>, now: DateTime<Utc>) -> bool {
        now - last_seen < self.0
    }

    /// The instant before which a heartbeat cannot make a client live at `now`.
    pub fn horizon(self, now: DateTime<Utc>) -> DateTime<Utc> {
        now - self.0
    }

    pub fn as_secs(self) -> u64 {
        self.0.num_seconds().unsigned_abs()
    }

    pub fn as_std(self) -> std::time::Duration {
        std::time::Duration::from_secs(self.as_secs())
    }
}

impl Default for HeartbeatTimeout {
    /// Two minutes: four missed heartbeats of the agent's 30 s interval.
    fn default() -> Self {
        Self(Duration::seconds(120))
    }
}

impl FromStr for HeartbeatTimeout {
    type Err = HeartbeatTimeoutError;

    /// Whole seconds, as the command line and the environment give it.
    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let secs = raw
            .trim()
            .parse::<u64>()
            .map_err(|_| HeartbeatTimeoutError::NotSeconds(raw.to_string()))?;
        Self::from_secs(secs)
    }
}

impl std::fmt::Display for HeartbeatTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.as_secs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_760_000_000 + seconds, 0).unwrap()
    }

    #[test]
    fn a_client_is_live_until_the_timeout_not_at_it() {
        let timeout = HeartbeatTimeout::from_secs(120).unwrap();
        assert!(timeout.is_live(t(0), t(119)));
        assert!(!timeout.is_live(t(0), t(120)));
        assert_eq!(timeout.horizon(t(120)), t(0));
        assert_eq!(timeout, HeartbeatTimeout::default());
    }

    #[test]
    fn only_whole_seconds_from_one_to_a_year_are_accepted() {
        assert_eq!("90".parse::<HeartbeatTimeout>().unwrap().as_secs(), 90);
        assert_eq!(
            "0".parse::<HeartbeatTimeout>(),
            Err(HeartbeatTimeoutError::OutOfRange(0))
        );
        assert!(matches!(
            "1.5".parse::<HeartbeatTimeout>(),
            Err(HeartbeatTimeoutError::NotSeconds(_))
        ));
        assert_eq!(
            HeartbeatTimeout::from_secs(MAX_SECS + 1),
            Err(HeartbeatTimeoutError::OutOfRange(MAX_SECS + 1))
        );
        assert_eq!(
            HeartbeatTimeout::from_secs(MAX_SECS)
                .unwrap()
                .as_std()
                .as_secs(),
            MAX_SECS
        );
    }
}
