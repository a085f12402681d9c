//! Supervision, as pure state: restart policies, exponential backoff with jitter and a
//! cap, the reset after a healthy run, the restart window that bounds attempts, and the
//! terminal `failed` state with its reason. The controller keeps one [`Supervision`] per
//! worker (that is, per client and role), so one client's crash loop never slows another's.
//! Time is passed in; jitter is derived from the worker's name and attempt, so every
//! decision is reproducible in tests.

use std::collections::VecDeque;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

/// When an exited worker is started again. Enforced by the control plane, not delegated
/// to Docker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    /// Never: an exited worker stays stopped.
    No,
    /// Always, whatever the exit status.
    Always,
    /// Only after a failure (non-zero exit, signal, OOM kill), at most `max_retries`
    /// consecutive times when given.
    OnFailure { max_retries: Option<u32> },
    /// Always, unless an operator stopped it (the control plane itself never does).
    UnlessStopped,
}

impl fmt::Display for RestartPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RestartPolicy::No => write!(f, "no"),
            RestartPolicy::Always => write!(f, "always"),
            RestartPolicy::OnFailure { max_retries: None } => write!(f, "on-failure"),
            RestartPolicy::OnFailure {
                max_retries: Some(max),
            } => write!(f, "on-failure:{max}"),
            RestartPolicy::UnlessStopped => write!(f, "unless-stopped"),
        }
    }
}

/// A restart policy that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidRestartPolicy {
    #[error("on-failure:<n> needs a whole number, not {0:?}")]
    MaxRetries(String),
    #[error("unknown restart policy {0:?}; use no, always, on-failure[:max] or unless-stopped")]
    Unknown(String),
}

impl FromStr for RestartPolicy {
    type Err = InvalidRestartPolicy;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        match raw.trim() {
            "no" => Ok(RestartPolicy::No),
            "always" => Ok(RestartPolicy::Always),
            "unless-stopped" => Ok(RestartPolicy::UnlessStopped),
            "on-failure" => Ok(RestartPolicy::OnFailure { max_retries: None }),
            other => match other.strip_prefix("on-failure:") {
                Some(max) => max
                    .parse()
                    .map(|max| RestartPolicy::OnFailure {
                        max_retries: Some(max),
                    })
                    .map_err(|_| InvalidRestartPolicy::MaxRetries(max.to_string())),
                None => Err(InvalidRestartPolicy::Unknown(other.to_string())),
            },
        }
    }
}

impl Serialize for RestartPolicy {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for RestartPolicy {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        raw.parse().map_err(serde::de::Error::custom)
    }
}

/// Backoff tuning, one set for all workers.
#[derive(Debug, Clone, PartialEq)]
pub struct BackoffSettings {
    /// Delay before the first restart; doubled for each consecutive failure.
    pub base: Duration,
    /// The longest delay.
    pub cap: Duration,
    /// A worker running this long counts as healthy: its backoff starts over.
    pub reset_after: Duration,
    /// The window in which restarts are counted…
    pub window: Duration,
    /// …and how many it may hold before the worker is given up as `failed`.
    pub max_restarts_in_window: u32,
    /// ± this fraction of the delay, so workers that failed together do not retry together.
    pub jitter: f64,
}

impl Default for BackoffSettings {
    fn default() -> Self {
        Self {
            base: Duration::seconds(1),
            cap: Duration::seconds(300),
            reset_after: Duration::seconds(600),
            window: Duration::seconds(900),
            max_restarts_in_window: 10,
            jitter: 0.2,
        }
    }
}

/// How a worker ended.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExitInfo {
    pub exit_code: Option<i32>,
    pub oom_killed: bool,
    pub at: DateTime<Utc>,
    /// "exit code 1", "killed: out of memory", "health check failed 3 times", …
    pub reason: String,
}

impl ExitInfo {
    pub fn new(exit_code: Option<i32>, oom_killed: bool, at: DateTime<Utc>) -> Self {
        let reason = if oom_killed {
            "killed: out of memory".to_string()
        } else {
            match exit_code {
                Some(code) => format!("exit code {code}"),
                None => "killed by a signal".to_string(),
            }
        };
        Self {
            exit_code,
            oom_killed,
            at,
            reason,
        }
    }

    /// A clean exit: code 0 and not killed.
    pub fn succeeded(&self) -> bool {
        self.exit_code == Some(0) && !self.oom_killed
    }
}

/// What to do about an exit.
#[derive(Debug, Clone, PartialEq)]
pub enum ExitDecision {
    /// Start it again at this time.
    RestartAt(DateTime<Utc>),
    /// Leave it stopped: the policy does not restart this exit.
    Stay,
    /// Stop trying: the worker is `failed`, with this reason.
    GiveUp(String),
}

/// One worker's supervision state.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Supervision {
    /// Restarts done so far (shown in the API).
    pub restart_count: u32,
    /// Failures since the last healthy run: the backoff exponent.
    pub consecutive_failures: u32,
    /// When recent restarts happened, for the window.
    pub recent_restarts: VecDeque<DateTime<Utc>>,
    pub next_retry_at: Option<DateTime<Utc>>,
    pub last_exit: Option<ExitInfo>,
    /// Set when given up; cleared only by an operator's restart.
    pub failed_reason: Option<String>,
    /// Set when the policy leaves it stopped.
    pub stopped: bool,
    pub running_since: Option<DateTime<Utc>>,
}

/// A worker's state as operators see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum WorkerPhase {
    /// The control plane is creating it.
    Creating,
    /// Created, being started.
    Starting,
    Running,
    /// Running, but its health check says it is lagging or dead-lettering too much.
    Degraded,
    /// Exited; waiting out its backoff before the next start.
    BackingOff,
    /// Being stopped (reaped, removed or recreated).
    Stopping,
    /// Exited and left stopped by its policy.
    Stopped,
    /// Given up: too many restarts, or its policy's retries ran out. An operator's
    /// restart clears it.
    Failed,
}

impl std::fmt::Display for WorkerPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl WorkerPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerPhase::Creating => "creating",
            WorkerPhase::Starting => "starting",
            WorkerPhase::Running => "running",
            WorkerPhase::Degraded => "degraded",
            WorkerPhase::BackingOff => "backing-off",
            WorkerPhase::Stopping => "stopping",
            WorkerPhase::Stopped => "stopped",
            WorkerPhase::Failed => "failed",
        }
    }

    /// Whether an operator's restart applies when only failed workers are asked for.
    pub fn is_failed(self) -> bool {
        self == WorkerPhase::Failed
    }

    /// Whether a restart may act on the worker now: not while the control plane is
    /// already creating, starting or stopping it.
    pub fn can_restart(self) -> bool {
        !matches!(
            self,
            WorkerPhase::Creating | WorkerPhase::Starting | WorkerPhase::Stopping
        )
    }

    /// The transitions the controller makes; anything else is a bug (or another actor
    /// touching our workers) and is reported.
    pub fn can_become(self, next: WorkerPhase) -> bool {
        use WorkerPhase::*;
        self == next
            || match self {
                Creating => matches!(next, Starting | Running | Stopping),
                Starting => matches!(next, Running | BackingOff | Stopping | Stopped | Failed),
                Running | Degraded => matches!(
                    next,
                    Running | Degraded | BackingOff | Stopping | Stopped | Failed
                ),
                BackingOff => matches!(next, Starting | Running | Stopping | Failed),
                Stopping => matches!(next, Creating | Starting | Stopped | BackingOff | Failed),
                Stopped => matches!(next, Starting | Stopping),
                Failed => matches!(next, Starting | Stopping),
            }
    }
}

/// Deterministic jitter in [0, 1) from a name and an attempt number.
pub fn jitter_unit(name: &str, attempt: u32) -> f64 {
    let hash = xxhash_rust::xxh3::xxh3_64(format!("{name}#{attempt}").as_bytes());
    (hash >> 11) as f64 / (1u64 << 53) as f64
}

/// The delay before restart number `failures` (0-based): base·2^failures, capped, ±jitter.
pub fn backoff_delay(settings: &BackoffSettings, failures: u32, jitter: f64) -> Duration {
    let base_ms = settings.base.num_milliseconds().max(1) as f64;
    let cap_ms = settings.cap.num_milliseconds().max(1) as f64;
    let raw = (base_ms * 2f64.powi(failures.min(62) as i32)).min(cap_ms);
    let spread = 1.0 + settings.jitter * (2.0 * jitter - 1.0);
    Duration::milliseconds((raw * spread).round().max(0.0) as i64)
}

impl Supervision {
    /// The worker was seen running at `now`; after `reset_after` of it, failures are
    /// forgiven.
    pub fn observe_running(&mut self, now: DateTime<Utc>, settings: &BackoffSettings) {
        let since = *self.running_since.get_or_insert(now);
        self.stopped = false;
        if now - since >= settings.reset_after {
            self.consecutive_failures = 0;
        }
    }

    /// The worker exited (first sighting of this exit).
    pub fn observe_exit(
        &mut self,
        name: &str,
        exit: ExitInfo,
        policy: RestartPolicy,
        settings: &BackoffSettings,
        now: DateTime<Utc>,
    ) -> ExitDecision {
        self.running_since = None;
        let succeeded = exit.succeeded();
        let reason = exit.reason.clone();
        self.last_exit = Some(exit);
        if self.failed_reason.is_some() {
            return ExitDecision::GiveUp(self.failed_reason.clone().unwrap_or_default());
        }
        let restart = match policy {
            RestartPolicy::No => false,
            RestartPolicy::Always | RestartPolicy::UnlessStopped => true,
            RestartPolicy::OnFailure { max_retries } => {
                if succeeded {
                    false
                } else if max_retries.is_some_and(|max| self.consecutive_failures >= max) {
                    return self.give_up(format!(
                        "gave up after {} restarts (policy {policy}); last: {reason}",
                        self.consecutive_failures
                    ));
                } else {
                    true
                }
            }
        };
        if !restart {
            self.stopped = true;
            self.next_retry_at = None;
            return ExitDecision::Stay;
        }
        while self
            .recent_restarts
            .front()
            .is_some_and(|at| now - *at > settings.window)
        {
            self.recent_restarts.pop_front();
        }
        if self.recent_restarts.len() as u32 >= settings.max_restarts_in_window {
            return self.give_up(format!(
                "restarted {} times within {}s; last: {reason}",
                self.recent_restarts.len(),
                settings.window.num_seconds()
            ));
        }
        let delay = backoff_delay(
            settings,
            self.consecutive_failures,
            jitter_unit(name, self.restart_count),
        );
        self.consecutive_failures += 1;
        let at = now + delay;
        self.next_retry_at = Some(at);
        ExitDecision::RestartAt(at)
    }

    fn give_up(&mut self, reason: String) -> ExitDecision {
        self.failed_reason = Some(reason.clone());
        self.next_retry_at = None;
        ExitDecision::GiveUp(reason)
    }

    /// Whether a scheduled restart is due at `now`.
    pub fn restart_due(&self, now: DateTime<Utc>) -> bool {
        self.failed_reason.is_none() && self.next_retry_at.is_some_and(|at| now >= at)
    }

    /// A restart was carried out at `now`.
    pub fn note_restarted(&mut self, now: DateTime<Utc>) {
        self.restart_count += 1;
        self.recent_restarts.push_back(now);
        self.next_retry_at = None;
    }

    /// An operator asked for a restart: failures and the give-up are forgotten.
    pub fn reset_by_operator(&mut self) {
        self.failed_reason = None;
        self.consecutive_failures = 0;
        self.recent_restarts.clear();
        self.next_retry_at = None;
        self.stopped = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_760_000_000 + seconds, 0).unwrap()
    }

    fn no_jitter() -> BackoffSettings {
        BackoffSettings {
            jitter: 0.0,
            ..BackoffSettings::default()
        }
    }

    fn crash(at: i64) -> ExitInfo {
        ExitInfo::new(Some(1), false, t(at))
    }

    #[test]
    fn a_failed_or_stopped_worker_only_leaves_by_a_start_or_a_stop() {
        use WorkerPhase::*;
        for next in [Running, Degraded, BackingOff] {
            assert!(!Failed.can_become(next) && !Stopped.can_become(next));
        }
        assert!(Failed.can_become(Starting) && Stopped.can_become(Stopping));
        assert!(Running.can_become(BackingOff) && BackingOff.can_become(Starting));
        assert!(!Creating.can_restart() && !Stopping.can_restart() && Failed.can_restart());
    }

    #[test]
    fn policies_parse_and_print_the_way_operators_write_them() {
        for text in [
            "no",
            "always",
            "on-failure",
            "on-failure:5",
            "unless-stopped",
        ] {
            assert_eq!(text.parse::<RestartPolicy>().unwrap().to_string(), text);
        }
        assert!("sometimes".parse::<RestartPolicy>().is_err());
        assert!("on-failure:x".parse::<RestartPolicy>().is_err());
        // The messages a roles file's mistake is reported with.
        assert_eq!(
            "sometimes".parse::<RestartPolicy>().unwrap_err().to_string(),
            "unknown restart policy \"sometimes\"; use no, always, on-failure[:max] or unless-stopped"
        );
        assert_eq!(
            "on-failure:x"
                .parse::<RestartPolicy>()
                .unwrap_err()
                .to_string(),
            "on-failure:<n> needs a whole number, not \"x\""
        );
    }

    #[test]
    fn backoff_doubles_from_the_base_up_to_the_cap() {
        let settings = no_jitter();
        let delays: Vec<i64> = (0..12)
            .map(|n| backoff_delay(&settings, n, 0.5).num_seconds())
            .collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
    }

    #[test]
    fn jitter_stays_within_its_fraction_and_is_reproducible() {
        let settings = BackoffSettings::default();
        for attempt in 0..50 {
            let unit = jitter_unit("kg-event-normalizer-af-9", attempt);
            assert_eq!(unit, jitter_unit("kg-event-normalizer-af-9", attempt));
            let delay = backoff_delay(&settings, 3, unit).num_milliseconds();
            assert!((6_400..=9_600).contains(&delay), "{delay}");
        }
    }

    #[test]
    fn always_restarts_with_growing_delays_and_resets_after_a_healthy_run() {
        let settings = no_jitter();
        let mut s = Supervision::default();
        let mut now = 0;
        for expected in [1, 2, 4] {
            match s.observe_exit("w", crash(now), RestartPolicy::Always, &settings, t(now)) {
                ExitDecision::RestartAt(at) => assert_eq!(at, t(now + expected)),
                other => panic!("{other:?}"),
            }
            assert!(!s.restart_due(t(now + expected - 1)));
            assert!(s.restart_due(t(now + expected)));
            now += expected;
            s.note_restarted(t(now));
            s.observe_running(t(now), &settings);
        }
        // Running healthy for reset_after forgives the failures.
        s.observe_running(t(now + 600), &settings);
        now += 601;
        match s.observe_exit("w", crash(now), RestartPolicy::Always, &settings, t(now)) {
            ExitDecision::RestartAt(at) => assert_eq!(at, t(now + 1)),
            other => panic!("{other:?}"),
        }
        assert_eq!(s.restart_count, 3);
    }

    #[test]
    fn policy_no_leaves_a_worker_stopped() {
        let mut s = Supervision::default();
        let decision = s.observe_exit("w", crash(0), RestartPolicy::No, &no_jitter(), t(0));
        assert_eq!(decision, ExitDecision::Stay);
        assert!(s.stopped && !s.restart_due(t(1000)));
    }

    #[test]
    fn on_failure_ignores_a_clean_exit_and_gives_up_after_max_retries() {
        let settings = no_jitter();
        let policy = RestartPolicy::OnFailure {
            max_retries: Some(2),
        };
        let mut s = Supervision::default();
        let clean = ExitInfo::new(Some(0), false, t(0));
        assert_eq!(
            s.observe_exit("w", clean, policy, &settings, t(0)),
            ExitDecision::Stay
        );
        let mut now = 0;
        for _ in 0..2 {
            assert!(matches!(
                s.observe_exit("w", crash(now), policy, &settings, t(now)),
                ExitDecision::RestartAt(_)
            ));
            now += 10;
            s.note_restarted(t(now));
        }
        match s.observe_exit("w", crash(now), policy, &settings, t(now)) {
            ExitDecision::GiveUp(reason) => {
                assert!(
                    reason.contains("exit code 1") && reason.contains("on-failure:2"),
                    "{reason}"
                )
            }
            other => panic!("{other:?}"),
        }
        assert!(s.failed_reason.is_some() && !s.restart_due(t(now + 10_000)));
    }

    #[test]
    fn an_oom_kill_is_a_failure_even_with_exit_code_zero() {
        let exit = ExitInfo::new(Some(0), true, t(0));
        assert!(!exit.succeeded());
        assert_eq!(exit.reason, "killed: out of memory");
    }

    #[test]
    fn too_many_restarts_within_the_window_give_up() {
        let settings = BackoffSettings {
            max_restarts_in_window: 3,
            window: Duration::seconds(60),
            base: Duration::milliseconds(1),
            jitter: 0.0,
            ..BackoffSettings::default()
        };
        let mut s = Supervision::default();
        for now in 0..3 {
            assert!(matches!(
                s.observe_exit("w", crash(now), RestartPolicy::Always, &settings, t(now)),
                ExitDecision::RestartAt(_)
            ));
            s.note_restarted(t(now));
        }
        assert!(matches!(
            s.observe_exit("w", crash(5), RestartPolicy::Always, &settings, t(5)),
            ExitDecision::GiveUp(_)
        ));
        // An operator's restart clears it.
        s.reset_by_operator();
        assert!(s.failed_reason.is_none());
        assert!(matches!(
            s.observe_exit("w", crash(6), RestartPolicy::Always, &settings, t(6)),
            ExitDecision::RestartAt(_)
        ));
    }

    #[test]
    fn restarts_outside_the_window_do_not_count() {
        let settings = BackoffSettings {
            max_restarts_in_window: 2,
            window: Duration::seconds(60),
            jitter: 0.0,
            ..BackoffSettings::default()
        };
        let mut s = Supervision::default();
        for now in [0, 100, 200, 300] {
            assert!(matches!(
                s.observe_exit("w", crash(now), RestartPolicy::Always, &settings, t(now)),
                ExitDecision::RestartAt(_)
            ));
            s.note_restarted(t(now + 1));
        }
    }
}
