//! How episodes are classified and how a cause → effect pair is scored: confidence =
//! 0.3·temporal + 0.3·distance + 0.4·domain, temporal = 1 − Δt/window (the cause strictly
//! before the effect), distance = 1/(hops+1), domain from a table of known cause → effect
//! pairs over [`EpisodeClass`]es. Pure functions, no storage.

use kg_shared::records::{ErrorType, EventTypeAbstract, Severity};

use super::model::CAUSAL_WINDOW_MS;

/// Weight of the temporal score in the confidence.
pub const TEMPORAL_WEIGHT: f64 = 0.3;
/// Weight of the distance score in the confidence.
pub const DISTANCE_WEIGHT: f64 = 0.3;
/// Weight of the domain score in the confidence.
pub const DOMAIN_WEIGHT: f64 = 0.4;

/// What an episode says happened, as far as causality goes. Derived from the reason, the
/// abstract event type and (for `Failed` and log lines) the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EpisodeClass {
    /// Out of memory (`OOMKilled`, `MEMORY_OOM`, an out-of-memory log line).
    Oom,
    /// Image pull failure (`ErrImagePull`, `ImagePullBackOff`, `Failed` to pull).
    ImagePull,
    /// A container crash-looping (`CrashLoopBackOff`, `POD_CRASH_LOOP`).
    CrashLoop,
    /// `BackOff` (restart or pull back-off).
    BackOff,
    /// `FailedScheduling`.
    SchedulingFailed,
    /// A node not ready (`NodeNotReady`, `NodeStatusUnknown`).
    NodeNotReady,
    /// Node resource pressure (`NodeHasDiskPressure`, `EvictionThresholdMet`, …).
    NodePressure,
    /// A pod evicted (`Evicted`, `TaintManagerEviction`).
    Evicted,
    /// A probe failed (`Unhealthy`, a "probe failed" log line).
    Unhealthy,
    /// A container killed (`Killing`).
    Killing,
    /// Another pod failure (`Failed`).
    PodFailed,
    /// Anything else.
    Other,
}

impl EpisodeClass {
    /// Every class, in declaration order.
    pub const ALL: [EpisodeClass; 12] = [
        EpisodeClass::Oom,
        EpisodeClass::ImagePull,
        EpisodeClass::CrashLoop,
        EpisodeClass::BackOff,
        EpisodeClass::SchedulingFailed,
        EpisodeClass::NodeNotReady,
        EpisodeClass::NodePressure,
        EpisodeClass::Evicted,
        EpisodeClass::Unhealthy,
        EpisodeClass::Killing,
        EpisodeClass::PodFailed,
        EpisodeClass::Other,
    ];

    /// The label stored in the `class` column.
    pub fn as_str(self) -> &'static str {
        match self {
            EpisodeClass::Oom => "OOM",
            EpisodeClass::ImagePull => "IMAGE_PULL",
            EpisodeClass::CrashLoop => "CRASH_LOOP",
            EpisodeClass::BackOff => "BACK_OFF",
            EpisodeClass::SchedulingFailed => "SCHEDULING_FAILED",
            EpisodeClass::NodeNotReady => "NODE_NOT_READY",
            EpisodeClass::NodePressure => "NODE_PRESSURE",
            EpisodeClass::Evicted => "EVICTED",
            EpisodeClass::Unhealthy => "UNHEALTHY",
            EpisodeClass::Killing => "KILLING",
            EpisodeClass::PodFailed => "POD_FAILED",
            EpisodeClass::Other => "OTHER",
        }
    }

    /// The class whose label is `label`; unknown labels read as [`EpisodeClass::Other`].
    pub fn from_label(label: &str) -> EpisodeClass {
        Self::ALL
            .into_iter()
            .find(|c| c.as_str() == label)
            .unwrap_or(EpisodeClass::Other)
    }
}

/// Whether `haystack` contains `needle` (lowercase ASCII), ignoring ASCII case.
fn contains_ci(haystack: &str, needle: &str) -> bool {
    let (h, n) = (haystack.as_bytes(), needle.as_bytes());
    n.is_empty() || h.windows(n.len()).any(|w| w.eq_ignore_ascii_case(n))
}

/// The class of an episode, from its reason first, then its abstract type, then (for
/// `Failed`) its message.
pub fn classify(
    reason: Option<&str>,
    event_type_abstract: Option<EventTypeAbstract>,
    message: Option<&str>,
) -> EpisodeClass {
    use EpisodeClass::*;
    let by_reason = reason.and_then(|r| {
        Some(match r {
            "OOMKilled" | "OOMKilling" | "SystemOOM" => Oom,
            "ErrImagePull" | "ImagePullBackOff" | "InvalidImageName" | "ErrImageNeverPull" => {
                ImagePull
            }
            "CrashLoopBackOff" => CrashLoop,
            "BackOff" => BackOff,
            "FailedScheduling" => SchedulingFailed,
            "NodeNotReady" | "NodeStatusUnknown" => NodeNotReady,
            "NodeHasDiskPressure"
            | "NodeHasMemoryPressure"
            | "NodeHasPIDPressure"
            | "NodeHasInsufficientMemory"
            | "NodeHasInsufficientPID"
            | "EvictionThresholdMet" => NodePressure,
            "Evicted" | "TaintManagerEviction" => Evicted,
            "Unhealthy" => Unhealthy,
            "Killing" => Killing,
            "Failed" => {
                let image =
                    message.is_some_and(|m| contains_ci(m, "image") || contains_ci(m, "pull"));
                if image {
                    ImagePull
                } else {
                    PodFailed
                }
            }
            _ => return None,
        })
    });
    if let Some(class) = by_reason {
        return class;
    }
    match event_type_abstract {
        Some(EventTypeAbstract::MemoryOom) => Oom,
        Some(EventTypeAbstract::PodCrashLoop) => CrashLoop,
        Some(EventTypeAbstract::PodBackoff) => BackOff,
        Some(EventTypeAbstract::SchedulingFailed) => SchedulingFailed,
        Some(EventTypeAbstract::NodeNotReady) => NodeNotReady,
        Some(EventTypeAbstract::PodEvicted) => Evicted,
        Some(EventTypeAbstract::HealthCheckFailed) => Unhealthy,
        Some(EventTypeAbstract::PodKilling) => Killing,
        Some(EventTypeAbstract::PodFailed) => PodFailed,
        _ => Other,
    }
}

/// Whether an episode of this severity counts as an error for the generic
/// "error → error" rule: WARNING or worse (Kubernetes' `Warning` is its error type).
pub fn is_error_like(severity: Severity) -> bool {
    severity >= Severity::Warning
}

/// The domain score of `cause` → `effect`: how well known it is that the first leads to
/// the second. See `docs/graph.md` for the table.
pub fn domain_score(
    cause: EpisodeClass,
    cause_error: bool,
    effect: EpisodeClass,
    effect_error: bool,
) -> f64 {
    use EpisodeClass::*;
    match (cause, effect) {
        (Oom, CrashLoop | BackOff) => 0.95,
        (ImagePull, SchedulingFailed | BackOff) => 0.90,
        (NodeNotReady, Evicted | NodeNotReady | Killing | PodFailed) => 0.90,
        (NodePressure, Evicted) => 0.90,
        (Unhealthy, Killing | BackOff) => 0.85,
        (Oom, Unhealthy | Killing | PodFailed) => 0.80,
        (Unhealthy, CrashLoop) => 0.80,
        (NodePressure, Oom) => 0.80,
        (NodeNotReady, SchedulingFailed) => 0.80,
        (Oom, _) if effect_error => 0.70,
        (CrashLoop | BackOff, Unhealthy) => 0.70,
        (Evicted, SchedulingFailed) => 0.70,
        _ if cause_error && effect_error => 0.50,
        _ => 0.40,
    }
}

/// 1 − Δt/window for a cause `dt_ms` before its effect (0 < Δt ≤ window), else 0.
pub fn temporal_score(dt_ms: i64) -> f64 {
    if dt_ms <= 0 || dt_ms > CAUSAL_WINDOW_MS {
        return 0.0;
    }
    1.0 - dt_ms as f64 / CAUSAL_WINDOW_MS as f64
}

/// 1/(hops+1).
pub fn distance_score(hops: u32) -> f64 {
    1.0 / (f64::from(hops) + 1.0)
}

/// 0.3·temporal + 0.3·distance + 0.4·domain.
pub fn confidence(temporal: f64, distance: f64, domain: f64) -> f64 {
    TEMPORAL_WEIGHT * temporal + DISTANCE_WEIGHT * distance + DOMAIN_WEIGHT * domain
}

/// What makes a log line graph-worthy: the reason it is stored under and its severity.
/// High-signal patterns (crash loops, probe failures, image pulls, OOM, panics) make a
/// line an episode of at least WARNING; any other ERROR or FATAL line is one under its
/// error type; everything else (INFO, DEBUG, plain warnings) is left out of the graph.
pub fn log_signal(
    message: &str,
    severity: Severity,
    is_error: bool,
    error_type: Option<ErrorType>,
) -> Option<(String, Severity)> {
    const PATTERNS: [(&str, &str); 11] = [
        ("oomkilled", "OOMKilled"),
        ("out of memory", "OOMKilled"),
        ("outofmemoryerror", "OOMKilled"),
        ("crashloopbackoff", "CrashLoopBackOff"),
        ("back-off restarting failed container", "CrashLoopBackOff"),
        ("probe failed", "Unhealthy"),
        ("errimagepull", "ErrImagePull"),
        ("imagepullbackoff", "ErrImagePull"),
        ("failed to pull image", "ErrImagePull"),
        ("panic:", "Panic"),
        ("panicked at", "Panic"),
    ];
    if let Some(&(_, reason)) = PATTERNS.iter().find(|(p, _)| contains_ci(message, p)) {
        let floor = if reason == "Panic" {
            Severity::Error
        } else {
            Severity::Warning
        };
        return Some((reason.to_owned(), severity.max(floor)));
    }
    if is_error || severity >= Severity::Error {
        let reason =
            error_type.map_or_else(|| severity.as_str().to_owned(), |t| t.as_str().to_owned());
        return Some((reason, severity.max(Severity::Error)));
    }
    None
}

/// One severity level up, FATAL staying FATAL.
pub fn escalate(severity: Severity) -> Severity {
    match severity {
        Severity::Debug => Severity::Info,
        Severity::Info => Severity::Warning,
        Severity::Warning => Severity::Error,
        Severity::Error | Severity::Fatal => Severity::Fatal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_come_from_reason_then_abstract_type() {
        assert_eq!(classify(Some("OOMKilled"), None, None), EpisodeClass::Oom);
        assert_eq!(
            classify(
                Some("SomethingOOMish"),
                Some(EventTypeAbstract::MemoryOom),
                None
            ),
            EpisodeClass::Oom
        );
        assert_eq!(
            classify(
                Some("Failed"),
                None,
                Some("Failed to pull image \"x:1\": not found")
            ),
            EpisodeClass::ImagePull
        );
        assert_eq!(
            classify(Some("Failed"), None, Some("Error: failed to start")),
            EpisodeClass::PodFailed
        );
        assert_eq!(
            classify(Some("ImagePullBackOff"), None, None),
            EpisodeClass::ImagePull
        );
        assert_eq!(
            classify(Some("NodeNotReady"), None, None),
            EpisodeClass::NodeNotReady
        );
        assert_eq!(
            classify(Some("Custom"), Some(EventTypeAbstract::Custom), None),
            EpisodeClass::Other
        );
        for class in EpisodeClass::ALL {
            assert_eq!(EpisodeClass::from_label(class.as_str()), class);
        }
    }

    #[test]
    fn domain_table_has_the_known_pairs() {
        use EpisodeClass::*;
        assert_eq!(domain_score(Oom, true, CrashLoop, true), 0.95);
        assert_eq!(domain_score(Oom, true, BackOff, true), 0.95);
        assert_eq!(domain_score(ImagePull, true, SchedulingFailed, true), 0.90);
        assert_eq!(domain_score(ImagePull, true, BackOff, true), 0.90);
        assert_eq!(domain_score(NodeNotReady, false, Evicted, true), 0.90);
        assert_eq!(domain_score(Unhealthy, true, Killing, false), 0.85);
        assert_eq!(domain_score(Unhealthy, true, BackOff, true), 0.85);
        assert_eq!(domain_score(Other, true, Other, true), 0.50);
        assert_eq!(domain_score(Other, false, Other, true), 0.40);
        assert_eq!(domain_score(CrashLoop, true, Oom, true), 0.50);
    }

    #[test]
    fn confidence_weighs_time_distance_and_domain() {
        assert_eq!(temporal_score(0), 0.0, "simultaneous is not before");
        assert_eq!(temporal_score(-1), 0.0);
        assert_eq!(temporal_score(CAUSAL_WINDOW_MS + 1), 0.0);
        assert!((temporal_score(CAUSAL_WINDOW_MS / 2) - 0.5).abs() < 1e-12);
        assert_eq!(distance_score(0), 1.0);
        assert_eq!(distance_score(1), 0.5);
        assert!((distance_score(3) - 0.25).abs() < 1e-12);
        let c = confidence(temporal_score(60_000), distance_score(0), 0.95);
        let expected = 0.3 * (1.0 - 60.0 / 900.0) + 0.3 + 0.4 * 0.95;
        assert!((c - expected).abs() < 1e-12);
    }

    #[test]
    fn log_signal_keeps_high_signal_and_error_lines_only() {
        assert_eq!(
            log_signal("GET /health 200", Severity::Info, false, None),
            None
        );
        assert_eq!(
            log_signal("slow request", Severity::Warning, false, None),
            None
        );
        assert_eq!(
            log_signal(
                "Liveness probe failed: HTTP 500",
                Severity::Info,
                false,
                None
            ),
            Some(("Unhealthy".to_owned(), Severity::Warning))
        );
        assert_eq!(
            log_signal(
                "java.lang.OutOfMemoryError: Java heap space",
                Severity::Error,
                true,
                Some(ErrorType::Error)
            ),
            Some(("OOMKilled".to_owned(), Severity::Error))
        );
        assert_eq!(
            log_signal(
                "panic: runtime error: index out of range",
                Severity::Fatal,
                true,
                Some(ErrorType::Error)
            ),
            Some(("Panic".to_owned(), Severity::Fatal))
        );
        assert_eq!(
            log_signal(
                "dial tcp: connection refused",
                Severity::Error,
                true,
                Some(ErrorType::ConnectionRefused)
            ),
            Some(("CONNECTION_REFUSED".to_owned(), Severity::Error))
        );
    }

    #[test]
    fn escalation_goes_one_level_up() {
        assert_eq!(escalate(Severity::Warning), Severity::Error);
        assert_eq!(escalate(Severity::Error), Severity::Fatal);
        assert_eq!(escalate(Severity::Fatal), Severity::Fatal);
    }
}
