//! The normalized records that the per-client normalizers put on `events.normalized` and
//! `logs.normalized`.
//!
//! Each record carries two field sets (see `docs/protocol.md`, "Normalized events"): the
//! original normalizer's (`event_id`, `timestamp`, `event_type_abstract`, `namespace`, …),
//! which downstream users read, and the original graph builder's (`event_time`, `etype`,
//! `severity`, `reason`, `message`, `subject`), which the original normalizer never wrote.
//! Both sets are filled from the same input, so `timestamp` and `event_time` always agree.
//!
//! Optional fields are left out of the JSON when they are unknown, rather than written as
//! `null`. Enumerations serialize as their upper-case labels (`"WARNING"`, `"MEMORY_OOM"`,
//! `"CONNECTION_REFUSED"`), which are part of the wire format and must not change.

use std::borrow::Cow;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::keys::{event_output_key, log_output_key};
use crate::ClientId;

/// A normalized log record's `message` holds at most this many characters (not bytes);
/// longer messages are cut on a character boundary.
pub const MAX_LOG_MESSAGE_CHARS: usize = 1000;

/// A normalized log record's `stack_trace` holds at most this many characters; longer
/// traces are cut on a character boundary (the innermost frames come first in Java and
/// last in Python, so neither end is safe to drop, and the cut only bounds the record).
pub const MAX_STACK_TRACE_CHARS: usize = 10_000;

/// `s` cut to at most `max_chars` characters, on a character boundary. Borrowed, never
/// allocates.
pub fn truncate_chars(s: &str, max_chars: usize) -> &str {
    // A string of at most `max_chars` bytes has at most `max_chars` characters.
    if s.len() <= max_chars {
        return s;
    }
    match s.char_indices().nth(max_chars) {
        Some((cut, _)) => &s[..cut],
        None => s,
    }
}

/// What kind of episode a record describes; the graph builder's `etype`.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Etype {
    /// A Kubernetes Event (`"k8s.event"`).
    #[serde(rename = "k8s.event")]
    K8sEvent,
    /// A container log line (`"k8s.log"`).
    #[serde(rename = "k8s.log")]
    K8sLog,
    /// A Prometheus alert (`"prom.alert"`).
    #[serde(rename = "prom.alert")]
    PromAlert,
}

impl Etype {
    /// The wire label.
    pub fn as_str(self) -> &'static str {
        match self {
            Etype::K8sEvent => "k8s.event",
            Etype::K8sLog => "k8s.log",
            Etype::PromAlert => "prom.alert",
        }
    }
}

/// How serious a record is, ordered from least to most serious. Serialized upper-case:
/// `DEBUG`, `INFO`, `WARNING`, `ERROR`, `FATAL`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Severity {
    /// `DEBUG` (also read from `trace`, `debug`).
    Debug,
    /// `INFO` (also read from `info`, `information`, `notice`, and Kubernetes' `Normal`).
    Info,
    /// `WARNING` (also read from `warn`, and Kubernetes' `Warning`).
    Warning,
    /// `ERROR` (also read from `err`).
    Error,
    /// `FATAL` (also read from `critical`, `crit`, `alert`, `emerg`, `emergency`, `panic`).
    Fatal,
}

impl Severity {
    /// The wire label.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Debug => "DEBUG",
            Severity::Info => "INFO",
            Severity::Warning => "WARNING",
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
        }
    }

    /// Reads a level as loggers, syslog and Kubernetes spell it, ignoring ASCII case and
    /// surrounding whitespace. `None` for anything it does not know.
    pub fn from_level(level: &str) -> Option<Severity> {
        const TABLE: &[(&str, Severity)] = &[
            ("info", Severity::Info),
            ("normal", Severity::Info),
            ("information", Severity::Info),
            ("informational", Severity::Info),
            ("notice", Severity::Info),
            ("warning", Severity::Warning),
            ("warn", Severity::Warning),
            ("error", Severity::Error),
            ("err", Severity::Error),
            ("debug", Severity::Debug),
            ("trace", Severity::Debug),
            ("fatal", Severity::Fatal),
            ("critical", Severity::Fatal),
            ("crit", Severity::Fatal),
            ("alert", Severity::Fatal),
            ("emerg", Severity::Fatal),
            ("emergency", Severity::Fatal),
            ("panic", Severity::Fatal),
        ];
        let level = level.trim();
        TABLE
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(level))
            .map(|&(_, severity)| severity)
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Severity {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// Reads any spelling [`Severity::from_level`] knows, so that records written by the
/// original normalizer (`"WARN"`, `"CRITICAL"`) are read too.
impl<'de> Deserialize<'de> for Severity {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = Cow::<'de, str>::deserialize(deserializer)?;
        Severity::from_level(&s)
            .ok_or_else(|| serde::de::Error::custom(format_args!("unknown severity {s:?}")))
    }
}

/// The abstract event type the original normalizer derived from an Event's `reason`
/// (`event_type_abstract`). The mapping itself lives in the event normalizer.
///
/// Each variant serializes as its upper-snake-case label ([`EventTypeAbstract::as_str`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventTypeAbstract {
    PodImagePull,
    PodImagePulled,
    PodCreated,
    PodStarted,
    PodKilling,
    PodFailed,
    PodBackoff,
    PodCrashLoop,
    MemoryOom,
    PodEvicted,
    SchedulingFailed,
    VolumeMountFailed,
    NetworkSetupFailed,
    NetworkNotReady,
    HealthCheckFailed,
    ProbeWarning,
    NodeNotReady,
    NodeReady,
    NodeRegistered,
    ServiceDiscoveryFailed,
    EndpointsUpdated,
    CpuHigh,
    DiskIssue,
    NetworkIssue,
    Timeout,
    /// Nothing in the table matched.
    Custom,
}

impl EventTypeAbstract {
    /// Every variant, in declaration order.
    pub const ALL: [EventTypeAbstract; 26] = [
        EventTypeAbstract::PodImagePull,
        EventTypeAbstract::PodImagePulled,
        EventTypeAbstract::PodCreated,
        EventTypeAbstract::PodStarted,
        EventTypeAbstract::PodKilling,
        EventTypeAbstract::PodFailed,
        EventTypeAbstract::PodBackoff,
        EventTypeAbstract::PodCrashLoop,
        EventTypeAbstract::MemoryOom,
        EventTypeAbstract::PodEvicted,
        EventTypeAbstract::SchedulingFailed,
        EventTypeAbstract::VolumeMountFailed,
        EventTypeAbstract::NetworkSetupFailed,
        EventTypeAbstract::NetworkNotReady,
        EventTypeAbstract::HealthCheckFailed,
        EventTypeAbstract::ProbeWarning,
        EventTypeAbstract::NodeNotReady,
        EventTypeAbstract::NodeReady,
        EventTypeAbstract::NodeRegistered,
        EventTypeAbstract::ServiceDiscoveryFailed,
        EventTypeAbstract::EndpointsUpdated,
        EventTypeAbstract::CpuHigh,
        EventTypeAbstract::DiskIssue,
        EventTypeAbstract::NetworkIssue,
        EventTypeAbstract::Timeout,
        EventTypeAbstract::Custom,
    ];

    /// The wire label, e.g. `"MEMORY_OOM"`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventTypeAbstract::PodImagePull => "POD_IMAGE_PULL",
            EventTypeAbstract::PodImagePulled => "POD_IMAGE_PULLED",
            EventTypeAbstract::PodCreated => "POD_CREATED",
            EventTypeAbstract::PodStarted => "POD_STARTED",
            EventTypeAbstract::PodKilling => "POD_KILLING",
            EventTypeAbstract::PodFailed => "POD_FAILED",
            EventTypeAbstract::PodBackoff => "POD_BACKOFF",
            EventTypeAbstract::PodCrashLoop => "POD_CRASH_LOOP",
            EventTypeAbstract::MemoryOom => "MEMORY_OOM",
            EventTypeAbstract::PodEvicted => "POD_EVICTED",
            EventTypeAbstract::SchedulingFailed => "SCHEDULING_FAILED",
            EventTypeAbstract::VolumeMountFailed => "VOLUME_MOUNT_FAILED",
            EventTypeAbstract::NetworkSetupFailed => "NETWORK_SETUP_FAILED",
            EventTypeAbstract::NetworkNotReady => "NETWORK_NOT_READY",
            EventTypeAbstract::HealthCheckFailed => "HEALTH_CHECK_FAILED",
            EventTypeAbstract::ProbeWarning => "PROBE_WARNING",
            EventTypeAbstract::NodeNotReady => "NODE_NOT_READY",
            EventTypeAbstract::NodeReady => "NODE_READY",
            EventTypeAbstract::NodeRegistered => "NODE_REGISTERED",
            EventTypeAbstract::ServiceDiscoveryFailed => "SERVICE_DISCOVERY_FAILED",
            EventTypeAbstract::EndpointsUpdated => "ENDPOINTS_UPDATED",
            EventTypeAbstract::CpuHigh => "CPU_HIGH",
            EventTypeAbstract::DiskIssue => "DISK_ISSUE",
            EventTypeAbstract::NetworkIssue => "NETWORK_ISSUE",
            EventTypeAbstract::Timeout => "TIMEOUT",
            EventTypeAbstract::Custom => "CUSTOM",
        }
    }

    /// The variant whose wire label is `label` exactly.
    pub fn from_label(label: &str) -> Option<EventTypeAbstract> {
        Self::ALL.into_iter().find(|t| t.as_str() == label)
    }
}

impl fmt::Display for EventTypeAbstract {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for EventTypeAbstract {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// An unknown label reads as [`EventTypeAbstract::Custom`]: a newer writer's type is still
/// a custom one to an older reader.
impl<'de> Deserialize<'de> for EventTypeAbstract {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = Cow::<'de, str>::deserialize(deserializer)?;
        Ok(EventTypeAbstract::from_label(&s).unwrap_or(EventTypeAbstract::Custom))
    }
}

/// The kind of error a log line shows, from the first error pattern that matched (see the
/// log normalizer). Serialized as the upper-case label given on each variant.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorType {
    /// `EXCEPTION`: the line says "exception".
    Exception,
    /// `ERROR`: the line says "error", or only its level says it is an error.
    Error,
    /// `FATAL`: the line says "fatal", or only its level says it is fatal.
    Fatal,
    /// `PANIC`: the line says "panic".
    Panic,
    /// `TIMEOUT`: the line says "timeout".
    Timeout,
    /// `CONNECTION_REFUSED`: the line says "connection refused".
    ConnectionRefused,
    /// `OUT_OF_MEMORY`: the line says "out of memory".
    OutOfMemory,
    /// `NULL_POINTER`: the line says "null pointer".
    NullPointer,
    /// `FAILED_TO`: the line says "failed to".
    FailedTo,
    /// `CANNOT_CONNECT`: the line says "cannot connect".
    CannotConnect,
}

impl ErrorType {
    /// The wire label, e.g. `"CONNECTION_REFUSED"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorType::Exception => "EXCEPTION",
            ErrorType::Error => "ERROR",
            ErrorType::Fatal => "FATAL",
            ErrorType::Panic => "PANIC",
            ErrorType::Timeout => "TIMEOUT",
            ErrorType::ConnectionRefused => "CONNECTION_REFUSED",
            ErrorType::OutOfMemory => "OUT_OF_MEMORY",
            ErrorType::NullPointer => "NULL_POINTER",
            ErrorType::FailedTo => "FAILED_TO",
            ErrorType::CannotConnect => "CANNOT_CONNECT",
        }
    }
}

impl fmt::Display for ErrorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The resource a record is about, as the graph builder reads it: `subject {kind, uid, ns,
/// name}`. Fields the input did not carry are left out.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct Subject {
    /// The resource's kind (`Pod`, `Node`, `Deployment`, …); always `Pod` for logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The resource's uid; what the graph joins on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// The resource's namespace; absent for cluster-scoped resources such as nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ns: Option<String>,
    /// The resource's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// Writes a time exactly as chrono's own `Serialize` does (RFC 3339, `Z`, as many
/// fraction digits as needed: none, 3, 6 or 9), without going through `fmt`: it is a
/// measurable part of a normalizer's serialization cost. Years outside 0–9999 and leap
/// seconds are left to chrono.
fn serialize_time<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
    let Some(t) = t else {
        return s.serialize_none();
    };
    let mut buf = [0u8; 30];
    match format_utc(t, &mut buf) {
        Some(text) => s.serialize_str(text),
        None => t.serialize(s),
    }
}

fn format_utc<'b>(t: &DateTime<Utc>, buf: &'b mut [u8; 30]) -> Option<&'b str> {
    use chrono::{Datelike, Timelike};
    fn put(buf: &mut [u8], at: usize, value: u32, digits: usize) {
        let mut v = value;
        for i in (0..digits).rev() {
            buf[at + i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    }
    let year = u32::try_from(t.year()).ok().filter(|y| *y <= 9999)?;
    let nanos = t.nanosecond();
    if nanos >= 1_000_000_000 {
        return None;
    }
    put(buf, 0, year, 4);
    buf[4] = b'-';
    put(buf, 5, t.month(), 2);
    buf[7] = b'-';
    put(buf, 8, t.day(), 2);
    buf[10] = b'T';
    put(buf, 11, t.hour(), 2);
    buf[13] = b':';
    put(buf, 14, t.minute(), 2);
    buf[16] = b':';
    put(buf, 17, t.second(), 2);
    let mut len = 19;
    // (Remainders are named rather than compared inline: `is_multiple_of` is newer than
    // the workspace's minimum Rust version.)
    let (below_millis, below_micros) = (nanos % 1_000_000, nanos % 1_000);
    let (value, digits) = if nanos == 0 {
        (0, 0)
    } else if below_millis == 0 {
        (nanos / 1_000_000, 3)
    } else if below_micros == 0 {
        (nanos / 1_000, 6)
    } else {
        (nanos, 9)
    };
    if digits > 0 {
        buf[len] = b'.';
        put(buf, len + 1, value, digits);
        len += 1 + digits;
    }
    buf[len] = b'Z';
    len += 1;
    std::str::from_utf8(&buf[..len]).ok()
}

/// A normalized Kubernetes Event, as written to `events.normalized` under the key
/// `<client_id>::<event_id>` ([`NormalizedEvent::output_key`]).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct NormalizedEvent {
    /// The tenant the event belongs to.
    pub client_id: ClientId,
    /// Stable id: `evt-` and 16 lower-case hex digits of an xxh3-64 hash of the Event's
    /// identity (`metadata.uid`) and creation time, so repeats of one Event (same uid,
    /// growing `count`) collapse to one id. The exact recipe is in the event normalizer;
    /// it must not change between releases.
    pub event_id: String,
    /// The id the input carried: its `event_id` field, else its `metadata.uid`.
    pub raw_event_id: String,
    /// When the event (last) happened, in UTC. Absent when the input carried no usable
    /// time; the worker may fill it from the Kafka record's timestamp.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "serialize_time"
    )]
    pub timestamp: Option<DateTime<Utc>>,
    /// The graph builder's name for [`timestamp`](Self::timestamp); always equal to it.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "serialize_time"
    )]
    pub event_time: Option<DateTime<Utc>>,
    /// Always [`Etype::K8sEvent`].
    pub etype: Etype,
    /// The abstract type derived from `reason`.
    pub event_type_abstract: EventTypeAbstract,
    /// From the Event's `type`: `Normal` → `INFO`, `Warning` → `WARNING`; another known
    /// level word (`Error`, `Critical`, …) → that level; missing or unknown → `INFO`.
    pub severity: Severity,
    /// The Event's `reason` (`OOMKilled`, `BackOff`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The Event's `message`, as sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The involved object's namespace (else the Event's own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The involved object's name, only when it is a Pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    /// The node: the Event's `source.host`, else the involved object's name when it is a
    /// Node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The service: the involved object's name when it is a Service, else its label
    /// `app.kubernetes.io/name`, `app` or `k8s-app` (first present).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// The involved object's kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub involved_object_kind: Option<String>,
    /// The involved object's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub involved_object_name: Option<String>,
    /// The involved object, for the graph builder.
    #[serde(default)]
    pub subject: Subject,
    /// How often the Event has been seen (its `count`), when it said so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
}

impl NormalizedEvent {
    /// The record's key on `events.normalized`: `<client_id>::<event_id>`.
    pub fn output_key(&self) -> String {
        event_output_key(&self.client_id, &self.event_id)
    }
}

/// A normalized container log line, as written to `logs.normalized` under the key
/// [`NormalizedLog::output_key`] (`<client_id>::<pod_uid>`).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct NormalizedLog {
    /// The tenant the log line belongs to.
    pub client_id: ClientId,
    /// Stable id: `log-` and 16 lower-case hex digits of an xxh3-64 hash of the pod uid,
    /// container name, timestamp and full message, so a re-shipped line keeps its id.
    /// The exact recipe is in the log normalizer; it must not change between releases.
    pub log_id: String,
    /// When the line was logged, in UTC. Absent when the input carried no usable time.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "serialize_time"
    )]
    pub timestamp: Option<DateTime<Utc>>,
    /// The graph builder's name for [`timestamp`](Self::timestamp); always equal to it.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "serialize_time"
    )]
    pub event_time: Option<DateTime<Utc>>,
    /// Always [`Etype::K8sLog`].
    pub etype: Etype,
    /// The pod's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The pod's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    /// The pod's uid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    /// The container that wrote the line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_name: Option<String>,
    /// The node the pod runs on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The pod, for the graph builder: `kind` is always `Pod`.
    #[serde(default)]
    pub subject: Subject,
    /// The line, at most [`MAX_LOG_MESSAGE_CHARS`] characters.
    pub message: String,
    /// The line's level if it stated one, else derived from the error patterns.
    pub severity: Severity,
    /// Whether the line reports an error.
    pub is_error: bool,
    /// What kind of error, when [`is_error`](Self::is_error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_type: Option<ErrorType>,
    /// A Java or Python stack trace found in the line, at most [`MAX_STACK_TRACE_CHARS`]
    /// characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack_trace: Option<String>,
}

impl NormalizedLog {
    /// The record's key on `logs.normalized`: `<client_id>::<pod_uid>`, as the log shipper
    /// keys it (one pod's lines stay in order on one partition), or `<client_id>::<log_id>`
    /// when the pod is unknown.
    pub fn output_key(&self) -> String {
        let id = self
            .pod_uid
            .as_deref()
            .filter(|uid| !uid.is_empty())
            .unwrap_or(&self.log_id);
        log_output_key(&self.client_id, id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> ClientId {
        ClientId::parse("test-client-001").unwrap()
    }

    fn sample_event() -> NormalizedEvent {
        NormalizedEvent {
            client_id: client(),
            event_id: "evt-0123456789abcdef".into(),
            raw_event_id: "evt-test-123".into(),
            timestamp: Some("2025-10-28T08:31:00Z".parse().unwrap()),
            event_time: Some("2025-10-28T08:31:00Z".parse().unwrap()),
            etype: Etype::K8sEvent,
            event_type_abstract: EventTypeAbstract::MemoryOom,
            severity: Severity::Warning,
            reason: Some("OOMKilled".into()),
            message: Some("Container killed: out of memory".into()),
            namespace: Some("default".into()),
            pod_name: Some("api-7d9f".into()),
            node: Some("node-1".into()),
            service: None,
            involved_object_kind: Some("Pod".into()),
            involved_object_name: Some("api-7d9f".into()),
            subject: Subject {
                kind: Some("Pod".into()),
                uid: Some("b1e2".into()),
                ns: Some("default".into()),
                name: Some("api-7d9f".into()),
            },
            count: Some(3),
        }
    }

    #[test]
    fn event_serializes_both_field_sets() {
        let json: serde_json::Value = serde_json::to_value(sample_event()).unwrap();
        for field in [
            "client_id",
            "event_id",
            "raw_event_id",
            "timestamp",
            "event_type_abstract",
            "namespace",
            "pod_name",
            "node",
            "reason",
            "message",
            "severity",
            "involved_object_kind",
            "involved_object_name",
            "event_time",
            "etype",
            "subject",
        ] {
            assert!(json.get(field).is_some(), "missing {field} in {json}");
        }
        assert_eq!(json["etype"], "k8s.event");
        assert_eq!(json["severity"], "WARNING");
        assert_eq!(json["event_type_abstract"], "MEMORY_OOM");
        assert_eq!(json["timestamp"], "2025-10-28T08:31:00Z");
        assert_eq!(json["subject"]["ns"], "default");
        assert!(json.get("service").is_none(), "absent fields are left out");
    }

    #[test]
    fn event_round_trips_through_json() {
        let event = sample_event();
        let bytes = serde_json::to_vec(&event).unwrap();
        let back: NormalizedEvent = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(back, event);
    }

    #[test]
    fn log_round_trips_through_json() {
        let log = NormalizedLog {
            client_id: client(),
            log_id: "log-0123456789abcdef".into(),
            timestamp: None,
            event_time: None,
            etype: Etype::K8sLog,
            namespace: Some("default".into()),
            pod_name: Some("api-7d9f".into()),
            pod_uid: Some("b1e2".into()),
            container_name: Some("api".into()),
            node: None,
            subject: Subject {
                kind: Some("Pod".into()),
                ..Subject::default()
            },
            message: "connection refused".into(),
            severity: Severity::Error,
            is_error: true,
            error_type: Some(ErrorType::ConnectionRefused),
            stack_trace: None,
        };
        let json = serde_json::to_value(&log).unwrap();
        assert_eq!(json["etype"], "k8s.log");
        assert_eq!(json["error_type"], "CONNECTION_REFUSED");
        assert!(json.get("timestamp").is_none());
        let back: NormalizedLog = serde_json::from_value(json).unwrap();
        assert_eq!(back, log);
        assert_eq!(log.output_key(), "test-client-001::b1e2");
        let unknown_pod = NormalizedLog {
            pod_uid: None,
            ..log
        };
        assert_eq!(
            unknown_pod.output_key(),
            "test-client-001::log-0123456789abcdef"
        );
    }

    #[test]
    fn output_keys_lead_with_the_tenant() {
        assert_eq!(
            sample_event().output_key(),
            "test-client-001::evt-0123456789abcdef"
        );
    }

    #[test]
    fn severity_reads_common_spellings() {
        assert_eq!(Severity::from_level("Normal"), Some(Severity::Info));
        assert_eq!(Severity::from_level("Warning"), Some(Severity::Warning));
        assert_eq!(Severity::from_level("WARN"), Some(Severity::Warning));
        assert_eq!(Severity::from_level(" error "), Some(Severity::Error));
        assert_eq!(Severity::from_level("CRITICAL"), Some(Severity::Fatal));
        assert_eq!(Severity::from_level("verbose"), None);
        assert!(Severity::Fatal > Severity::Error && Severity::Error > Severity::Warning);
        let s: Severity = serde_json::from_str("\"warn\"").unwrap();
        assert_eq!(s, Severity::Warning);
        assert!(serde_json::from_str::<Severity>("\"loud\"").is_err());
    }

    #[test]
    fn unknown_event_type_abstract_reads_as_custom() {
        let t: EventTypeAbstract = serde_json::from_str("\"SOMETHING_NEW\"").unwrap();
        assert_eq!(t, EventTypeAbstract::Custom);
        for t in EventTypeAbstract::ALL {
            let json = serde_json::to_string(&t).unwrap();
            assert_eq!(serde_json::from_str::<EventTypeAbstract>(&json).unwrap(), t);
        }
    }

    #[test]
    fn times_serialize_exactly_as_chrono_does() {
        use chrono::TimeZone;
        let base = Utc.with_ymd_and_hms(2025, 10, 28, 8, 31, 0).unwrap();
        for nanos in [
            0,
            5_000_000,
            123_000_000,
            123_456_000,
            7_000,
            123_456_789,
            1,
        ] {
            for t in [
                base,
                Utc.with_ymd_and_hms(1, 1, 1, 0, 0, 0).unwrap(),
                Utc.with_ymd_and_hms(9999, 12, 31, 23, 59, 59).unwrap(),
            ] {
                let t = t + chrono::Duration::nanoseconds(nanos);
                let mut buf = [0u8; 30];
                let ours = format_utc(&t, &mut buf).unwrap().to_owned();
                assert_eq!(serde_json::to_string(&t).unwrap(), format!("\"{ours}\""));
            }
        }
        let far = Utc.with_ymd_and_hms(10000, 1, 1, 0, 0, 0).unwrap();
        assert!(format_utc(&far, &mut [0u8; 30]).is_none());
        let mut e = sample_event();
        e.timestamp = Some(far);
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(json["timestamp"], serde_json::to_value(far).unwrap());
        let back: NormalizedEvent = serde_json::from_value(json).unwrap();
        assert_eq!(back.timestamp, Some(far));
    }

    #[test]
    fn truncate_chars_cuts_on_a_character_boundary() {
        assert_eq!(truncate_chars("abc", 5), "abc");
        assert_eq!(truncate_chars("abcdef", 3), "abc");
        assert_eq!(truncate_chars("ééé", 2), "éé");
        assert_eq!(truncate_chars("日本語", 1), "日");
        assert_eq!(truncate_chars("", 0), "");
    }
}
