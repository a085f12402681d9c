//! Container log records → [`NormalizedLog`].
//!
//! Two inputs are accepted, and anything between them:
//! - (a) the log shipper's keyed record (on `logs.normalized`, key `<client>::<pod_uid>`):
//!   Vector's raw event plus `client_id`, `event_time`, `etype`, `subject {kind, uid, ns,
//!   name}`, `pod_uid`, `pod_namespace`, `pod_name`;
//! - (b) Vector's raw `kubernetes_logs` event (on `raw.k8s.logs`, no key): `message`,
//!   `timestamp`, `stream`, `kubernetes {pod_name, pod_namespace, pod_uid, container_name,
//!   pod_node_name, pod_labels}`, possibly a top-level `client_id`.
//!
//! Decisions, all of which the tests pin:
//! - **pod fields** come from the flat fields of (a), else `subject`, else `kubernetes.*`;
//!   the container from `kubernetes.container_name`, else a top-level `container_name`;
//!   the node from `kubernetes.pod_node_name`, else a top-level `node`.
//! - **time**: the first usable of `timestamp`, `event_time`; none → absent.
//! - **`message`** is required (an empty string is kept). A non-string message (Vector
//!   can parse JSON lines into objects) is kept as its JSON text. The record holds at most
//!   [`MAX_LOG_MESSAGE_CHARS`] characters of it, cut on a character boundary; error
//!   detection, stack-trace capture and `log_id` use the whole message.
//! - **error detection**: the patterns `exception`, `error`, `fatal`, `panic`, `timeout`,
//!   `connection refused`, `out of memory`, `null pointer`, `failed to`, `cannot connect`
//!   are looked for anywhere in the message, ignoring ASCII case; the first pattern *in
//!   that order* that occurs wins and names the [`ErrorType`] (`EXCEPTION`, `ERROR`,
//!   `FATAL`, `PANIC`, `TIMEOUT`, `CONNECTION_REFUSED`, `OUT_OF_MEMORY`, `NULL_POINTER`,
//!   `FAILED_TO`, `CANNOT_CONNECT`).
//! - **severity and `is_error`**: an explicit level (top-level `level` or `severity`, else
//!   the same keys inside a JSON message), when [`Severity::from_level`] knows it, decides:
//!   `is_error` is then whether it is ERROR or FATAL, and `error_type` is the pattern that
//!   matched, else `ERROR`/`FATAL` after the level itself. Without a level, a matched
//!   pattern makes the line an error with severity FATAL for `fatal` and `panic`, ERROR for
//!   the others; no match is INFO and not an error. `stream: stderr` alone means nothing
//!   (plenty of programs log everything there).
//! - **stack traces**: a Python trace starts at `Traceback (most recent call last):`; a
//!   Java one (also matches Node's) at the line before the first indented `at x(…)` frame
//!   or `Caused by:` line (that line holds the exception). The trace runs to the end of the
//!   message, trimmed, at most [`MAX_STACK_TRACE_CHARS`] characters.
//! - **`log_id`** is `log-` and 16 lower-case hex digits of xxh3-64 (seed 0) over the pod
//!   uid and the container name (each as length u64 little-endian, then bytes; absent =
//!   empty), the time by its instant (see `normalize_common::hash_time`), and the whole
//!   message (length and bytes). It must not change between releases.
//! - **errors**: not JSON, not an object, no `message`, a wrongly typed pod field, or a
//!   body `client_id` naming another tenant.

use std::fmt;

use kg_shared::records::{
    truncate_chars, ErrorType, Etype, NormalizedLog, Severity, Subject, MAX_LOG_MESSAGE_CHARS,
    MAX_STACK_TRACE_CHARS,
};
use kg_shared::ClientId;
use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use xxhash_rust::xxh3::Xxh3;

use crate::roles::normalize_common::{
    check_tenant, format_id, hash_str, hash_time_parsed, non_empty, parse_object, parse_time,
    take_non_empty, JsonStr, NormalizeError,
};

/// The error patterns, in the order they are tried.
pub const ERROR_PATTERNS: [(&str, ErrorType); 10] = [
    ("exception", ErrorType::Exception),
    ("error", ErrorType::Error),
    ("fatal", ErrorType::Fatal),
    ("panic", ErrorType::Panic),
    ("timeout", ErrorType::Timeout),
    ("connection refused", ErrorType::ConnectionRefused),
    ("out of memory", ErrorType::OutOfMemory),
    ("null pointer", ErrorType::NullPointer),
    ("failed to", ErrorType::FailedTo),
    ("cannot connect", ErrorType::CannotConnect),
];

/// For each byte, the set of patterns (bit `i` = `ERROR_PATTERNS[i]`) starting with it in
/// either case, so that one pass over the message looks for all ten.
const FIRST_BYTE: [u16; 256] = {
    let mut table = [0u16; 256];
    let mut i = 0;
    while i < ERROR_PATTERNS.len() {
        let b = ERROR_PATTERNS[i].0.as_bytes()[0];
        table[b as usize] |= 1 << i;
        table[b.to_ascii_uppercase() as usize] |= 1 << i;
        i += 1;
    }
    table
};

/// The first error pattern, in [`ERROR_PATTERNS`] order, that occurs in `message`,
/// ignoring ASCII case.
pub fn detect_error(message: &str) -> Option<ErrorType> {
    let bytes = message.as_bytes();
    // Index of the best pattern found so far; only better (lower) ones are looked for.
    let mut best = ERROR_PATTERNS.len();
    for (pos, &b) in bytes.iter().enumerate() {
        let mut candidates = FIRST_BYTE[b as usize] & ((1u16 << best) - 1);
        while candidates != 0 {
            let i = candidates.trailing_zeros() as usize;
            let pattern = ERROR_PATTERNS[i].0.as_bytes();
            if bytes[pos..]
                .get(..pattern.len())
                .is_some_and(|w| w.eq_ignore_ascii_case(pattern))
            {
                best = i;
                break;
            }
            candidates &= candidates - 1;
        }
        if best == 0 {
            break;
        }
    }
    ERROR_PATTERNS.get(best).map(|&(_, t)| t)
}

/// The Java or Python stack trace in `message`, if there is one (see the module docs).
pub fn find_stack_trace(message: &str) -> Option<&str> {
    const PYTHON: &str = "Traceback (most recent call last):";
    let python = message.find(PYTHON);
    let java = java_trace_start(message);
    let start = match (python, java) {
        (Some(p), Some(j)) => p.min(j),
        (p, j) => p.or(j)?,
    };
    let trace = message[start..].trim_end();
    (!trace.is_empty()).then(|| truncate_chars(trace, MAX_STACK_TRACE_CHARS))
}

/// Where a Java-style trace starts: the line before the first frame or `Caused by:` line.
fn java_trace_start(message: &str) -> Option<usize> {
    if !message.contains("at ") && !message.contains("Caused by:") {
        return None;
    }
    let mut previous: Option<usize> = None;
    let mut start = 0;
    for line in message.split('\n') {
        if is_java_frame(line) || line.trim_start().starts_with("Caused by:") {
            return Some(previous.unwrap_or(start));
        }
        previous = Some(start);
        start += line.len() + 1;
    }
    None
}

/// An indented `at name(…)` line.
fn is_java_frame(line: &str) -> bool {
    let body = line.trim_start_matches([' ', '\t']);
    body.len() < line.len()
        && body.strip_prefix("at ").is_some_and(|rest| {
            rest.starts_with(|c: char| c.is_alphanumeric() || matches!(c, '_' | '$' | '<'))
                && rest.contains('(')
        })
}

#[derive(Deserialize)]
struct RawLog<'a> {
    #[serde(borrow, default, deserialize_with = "lenient_text")]
    message: Option<JsonStr<'a>>,
    #[serde(borrow)]
    timestamp: Option<JsonStr<'a>>,
    #[serde(borrow)]
    event_time: Option<JsonStr<'a>>,
    #[serde(borrow)]
    client_id: Option<JsonStr<'a>>,
    #[serde(borrow)]
    pod_uid: Option<JsonStr<'a>>,
    #[serde(borrow)]
    pod_namespace: Option<JsonStr<'a>>,
    #[serde(borrow)]
    pod_name: Option<JsonStr<'a>>,
    #[serde(borrow)]
    container_name: Option<JsonStr<'a>>,
    #[serde(borrow)]
    node: Option<JsonStr<'a>>,
    #[serde(borrow)]
    subject: Option<RawSubject<'a>>,
    #[serde(borrow)]
    kubernetes: Option<RawKubernetes<'a>>,
    #[serde(borrow, default, deserialize_with = "lenient_text")]
    level: Option<JsonStr<'a>>,
    #[serde(borrow, default, deserialize_with = "lenient_text")]
    severity: Option<JsonStr<'a>>,
}

#[derive(Deserialize)]
struct RawSubject<'a> {
    #[serde(borrow)]
    uid: Option<JsonStr<'a>>,
    #[serde(borrow)]
    ns: Option<JsonStr<'a>>,
    #[serde(borrow)]
    name: Option<JsonStr<'a>>,
}

#[derive(Deserialize)]
struct RawKubernetes<'a> {
    #[serde(borrow)]
    pod_name: Option<JsonStr<'a>>,
    #[serde(borrow)]
    pod_namespace: Option<JsonStr<'a>>,
    #[serde(borrow)]
    pod_uid: Option<JsonStr<'a>>,
    #[serde(borrow)]
    container_name: Option<JsonStr<'a>>,
    #[serde(borrow)]
    pod_node_name: Option<JsonStr<'a>>,
}

/// The level keys of a structured (JSON) log line.
#[derive(Deserialize)]
struct JsonLineLevel<'a> {
    #[serde(borrow, default, deserialize_with = "lenient_text")]
    level: Option<JsonStr<'a>>,
    #[serde(borrow, default, deserialize_with = "lenient_text")]
    severity: Option<JsonStr<'a>>,
}

/// A field that is text when it is a string, the JSON text of any other value, and absent
/// when null: never a reason to reject the record.
fn lenient_text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<JsonStr<'de>>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Option<JsonStr<'de>>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("any json value")
        }
        fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
            Ok(Some(JsonStr(v.into())))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Some(JsonStr(v.to_owned().into())))
        }
        fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
            Ok(Some(JsonStr(v.into())))
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
            Ok(Some(JsonStr(v.to_string().into())))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            Ok(Some(JsonStr(v.to_string().into())))
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Some(JsonStr(v.to_string().into())))
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
            Ok(Some(JsonStr(serde_json::Value::from(v).to_string().into())))
        }
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            let v = serde_json::Value::deserialize(de::value::MapAccessDeserializer::new(map))?;
            Ok(Some(JsonStr(v.to_string().into())))
        }
        fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
            let v = serde_json::Value::deserialize(de::value::SeqAccessDeserializer::new(seq))?;
            Ok(Some(JsonStr(v.to_string().into())))
        }
    }
    d.deserialize_any(V)
}

/// The level a log line states for itself: a top-level `level`/`severity`, else the same
/// keys inside a JSON message. `None` when there is none that [`Severity`] knows.
fn explicit_level(level: Option<&str>, severity: Option<&str>, message: &str) -> Option<Severity> {
    let top = [level, severity]
        .into_iter()
        .flatten()
        .find_map(Severity::from_level);
    top.or_else(|| {
        if !message.trim_start().starts_with('{') {
            return None;
        }
        let line: JsonLineLevel = serde_json::from_str(message).ok()?;
        let level = [non_empty(&line.level), non_empty(&line.severity)]
            .into_iter()
            .flatten()
            .find_map(Severity::from_level);
        level
    })
}

/// Severity, `is_error` and `error_type` of a message with an optional explicit level.
fn classify(message: &str, level: Option<Severity>) -> (Severity, bool, Option<ErrorType>) {
    match level {
        Some(severity) => {
            let is_error = severity >= Severity::Error;
            let error_type = is_error.then(|| {
                detect_error(message).unwrap_or(if severity == Severity::Fatal {
                    ErrorType::Fatal
                } else {
                    ErrorType::Error
                })
            });
            (severity, is_error, error_type)
        }
        None => match detect_error(message) {
            Some(t @ (ErrorType::Fatal | ErrorType::Panic)) => (Severity::Fatal, true, Some(t)),
            Some(t) => (Severity::Error, true, Some(t)),
            None => (Severity::Info, false, None),
        },
    }
}

/// Normalizes one log record for `client`. See the module documentation for how each
/// field is derived and what is rejected.
pub fn normalize_log(client: &ClientId, raw: &[u8]) -> Result<NormalizedLog, NormalizeError> {
    let rec: RawLog = parse_object(raw)?;
    check_tenant(client, non_empty(&rec.client_id))?;
    let Some(message) = rec.message else {
        return Err(NormalizeError::MissingField("message"));
    };
    let message = message.as_str();

    let (ts_raw, timestamp) = {
        let candidates = [non_empty(&rec.timestamp), non_empty(&rec.event_time)];
        match candidates
            .into_iter()
            .flatten()
            .find_map(|s| parse_time(s).map(|t| (s, t)))
        {
            Some((s, t)) => (Some(s), Some(t)),
            None => (candidates.into_iter().flatten().next(), None),
        }
    };

    let (k_name, k_ns, k_uid, k_container, k_node) = match rec.kubernetes {
        Some(k) => (
            take_non_empty(k.pod_name),
            take_non_empty(k.pod_namespace),
            take_non_empty(k.pod_uid),
            take_non_empty(k.container_name),
            take_non_empty(k.pod_node_name),
        ),
        None => (None, None, None, None, None),
    };
    let (s_name, s_ns, s_uid) = match rec.subject {
        Some(s) => (
            take_non_empty(s.name),
            take_non_empty(s.ns),
            take_non_empty(s.uid),
        ),
        None => (None, None, None),
    };
    let pod_uid = take_non_empty(rec.pod_uid).or(s_uid).or(k_uid);
    let namespace = take_non_empty(rec.pod_namespace).or(s_ns).or(k_ns);
    let pod_name = take_non_empty(rec.pod_name).or(s_name).or(k_name);
    let container_name = k_container.or_else(|| take_non_empty(rec.container_name));
    let node = k_node.or_else(|| take_non_empty(rec.node));

    let mut hasher = Xxh3::new();
    hash_str(&mut hasher, pod_uid.as_deref().unwrap_or(""));
    hash_str(&mut hasher, container_name.as_deref().unwrap_or(""));
    hash_time_parsed(&mut hasher, ts_raw, timestamp);
    hash_str(&mut hasher, message);
    let log_id = format_id("log-", hasher.digest());

    let level = explicit_level(non_empty(&rec.level), non_empty(&rec.severity), message);
    let (severity, is_error, error_type) = classify(message, level);
    let stack_trace = find_stack_trace(message).map(str::to_owned);

    Ok(NormalizedLog {
        client_id: client.clone(),
        log_id,
        timestamp,
        event_time: timestamp,
        etype: Etype::K8sLog,
        subject: Subject {
            kind: Some("Pod".to_owned()),
            uid: pod_uid.clone(),
            ns: namespace.clone(),
            name: pod_name.clone(),
        },
        namespace,
        pod_name,
        pod_uid,
        container_name,
        node,
        message: truncate_chars(message, MAX_LOG_MESSAGE_CHARS).to_owned(),
        severity,
        is_error,
        error_type,
        stack_trace,
    })
}

/// The tenant named by a record body's top-level `client_id`, for unkeyed records. `None`
/// when the body is not a JSON object, has no such string field, or it is not a valid
/// client id. Bodies that do not contain the bytes `"client_id"` are turned away without
/// being parsed (a key spelled with JSON escapes is therefore not seen).
pub fn log_tenant_from_body(raw: &[u8]) -> Option<ClientId> {
    #[derive(Deserialize)]
    struct Tenant<'a> {
        #[serde(borrow)]
        client_id: Option<JsonStr<'a>>,
    }
    const NEEDLE: &[u8] = b"\"client_id\"";
    let mentions = raw
        .iter()
        .enumerate()
        .filter(|&(_, &b)| b == b'"')
        .any(|(i, _)| raw[i..].starts_with(NEEDLE));
    if !mentions {
        return None;
    }
    let tenant: Tenant = serde_json::from_slice(raw).ok()?;
    ClientId::parse(tenant.client_id?.as_str()).ok()
}
