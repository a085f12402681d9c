//! Input records → [`GraphInput`]. Pure: the Kafka loop calls [`decode_input`] with a
//! record's topic, key and value, and sends undecodable records to the DLQ with
//! [`GraphDecodeError::reason_code`].
//!
//! Decisions, all pinned by the tests:
//! - **`events.normalized`**: this project's normalized events, and the original
//!   normalizer's records (no `subject`, `etype` or `event_time`): the subject is then
//!   built from `involved_object_kind`/`involved_object_name`/`namespace`, else
//!   `pod_name`, else `node`. A raw Kubernetes Event (it has `involvedObject` and no
//!   `subject`) is normalized on the way in. Every event is graph-worthy, Normal ones
//!   too (`Killing`, `NodeNotReady` are Normal events and real causes).
//! - **`logs.normalized`**: the log shipper's records and this project's normalized log
//!   records are both read by the log normalizer's rules; only high-signal lines become
//!   episodes ([`log_signal`]): a low-signal line is `Ok(None)`.
//! - **time**: `event_time`, else `timestamp`, else the caller's fallback (the Kafka
//!   record's timestamp, [`decode_input_at`]); none → `missing_time`.
//! - **`state.k8s.*`**: a null or blank value is a tombstone, and the key names what is
//!   deleted (`<client>::<Kind>:<uid>`, `<client>::edge:<from>-><to>`); `op` `DELETE`
//!   (any case, also `DELETED`, `REMOVE`) deletes, a missing `op` or `UPSERT`, `ADD`,
//!   `ADDED`, `UPDATE`, `MODIFIED`, `CREATE`, `SYNC` upserts, anything else is
//!   `unknown_op`.
//! - **tenant**: a body `client_id` that differs from the key's tenant is
//!   `tenant_mismatch` (the caller has already checked the key).

use chrono::{DateTime, Utc};
use kg_shared::keys::parse_key;
use kg_shared::records::{
    truncate_chars, Etype, EventTypeAbstract, NormalizedEvent, Severity, Subject,
};
use kg_shared::topics::{
    EVENTS_NORMALIZED, LOGS_NORMALIZED, STATE_K8S_RESOURCE, STATE_K8S_TOPOLOGY,
};
use kg_shared::ClientId;
use serde::de::IgnoredAny;
use serde::{Deserialize, Deserializer};

use super::model::{canonical_name, EpisodeInput, GraphInput, ResourceSnapshot, TopologyEdge};
use super::scoring::log_signal;
use crate::roles::event_normalizer::normalize::{
    event_severity, event_type_abstract, normalize_event,
};
use crate::roles::log_normalizer::normalize::normalize_log;
use crate::roles::normalize_common::{parse_object, parse_time, JsonStr, NormalizeError};

/// How much of a foreign value an error message quotes.
const QUOTE_LIMIT: usize = 80;

/// Why a record could not be decoded. [`reason_code`](Self::reason_code) gives a stable
/// label for metrics and the DLQ.
#[derive(Debug, thiserror::Error)]
pub enum GraphDecodeError {
    /// The value is not a usable JSON object, or names another tenant (the normalizers'
    /// reasons: `empty`, `not_json`, `not_an_object`, `invalid_shape`, `missing_field`,
    /// `tenant_mismatch`).
    #[error(transparent)]
    Record(#[from] NormalizeError),
    /// Neither the record nor the caller gave a usable time.
    #[error("record has no usable time (neither event_time nor timestamp)")]
    MissingTime,
    /// A tombstone whose key does not name what it deletes.
    #[error("tombstone key {0:?} does not name a resource (<client>::<Kind>:<uid>) or an edge (<client>::edge:<from>-><to>)")]
    BadKey(String),
    /// An `op` that is neither an upsert nor a delete.
    #[error("record has an unknown op {0:?}")]
    UnknownOp(String),
    /// A field whose value cannot be used.
    #[error("record has an invalid {field}: {value:?}")]
    InvalidValue {
        /// The field.
        field: &'static str,
        /// Its value, quoted at most 80 characters long.
        value: String,
    },
    /// Not one of the four input topics.
    #[error("topic {0:?} is not an input of the graph builder")]
    UnknownTopic(String),
}

impl GraphDecodeError {
    /// A short, stable label: the normalizers' labels, and `missing_time`, `bad_key`,
    /// `unknown_op`, `invalid_value`, `unknown_topic`.
    pub fn reason_code(&self) -> &'static str {
        match self {
            GraphDecodeError::Record(e) => e.reason_code(),
            GraphDecodeError::MissingTime => "missing_time",
            GraphDecodeError::BadKey(_) => "bad_key",
            GraphDecodeError::UnknownOp(_) => "unknown_op",
            GraphDecodeError::InvalidValue { .. } => "invalid_value",
            GraphDecodeError::UnknownTopic(_) => "unknown_topic",
        }
    }
}

fn quote(s: &str) -> String {
    truncate_chars(s, QUOTE_LIMIT).to_owned()
}

/// Decodes one record of the four input topics. `Ok(None)`: valid but not graph-worthy
/// (a low-signal log line, a null value on an event topic). See the module docs.
pub fn decode_input(
    topic: &str,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
) -> Result<Option<GraphInput>, GraphDecodeError> {
    decode_input_at(topic, key, value, None)
}

/// [`decode_input`] with a time to use when an event or log record carries none
/// (typically the Kafka record's timestamp).
pub fn decode_input_at(
    topic: &str,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    fallback_time: Option<DateTime<Utc>>,
) -> Result<Option<GraphInput>, GraphDecodeError> {
    let tenant = key.and_then(parse_key).map(|k| k.tenant);
    match topic {
        EVENTS_NORMALIZED => match value {
            None => Ok(None),
            Some(v) => decode_event(tenant, v, fallback_time).map(|e| Some(GraphInput::Event(e))),
        },
        LOGS_NORMALIZED => match value {
            None => Ok(None),
            Some(v) => decode_log(tenant, v, fallback_time).map(|l| l.map(GraphInput::Log)),
        },
        STATE_K8S_RESOURCE => decode_resource(key, value).map(Some),
        STATE_K8S_TOPOLOGY => decode_edge(key, value).map(Some),
        other => Err(GraphDecodeError::UnknownTopic(quote(other))),
    }
}

fn check_tenant(key_tenant: Option<&str>, body: Option<&str>) -> Result<(), GraphDecodeError> {
    match (key_tenant, body) {
        (Some(expected), Some(found)) if !found.is_empty() && found != expected => {
            Err(NormalizeError::TenantMismatch {
                expected: ClientId::parse(expected)
                    .map_err(|_| GraphDecodeError::BadKey(quote(expected)))?,
                found: quote(found),
            }
            .into())
        }
        _ => Ok(()),
    }
}

fn non_empty(s: Option<JsonStr<'_>>) -> Option<String> {
    s.filter(|s| !s.as_str().trim().is_empty())
        .map(JsonStr::into_string)
}

/// A count as a number, a numeric string, or absent; anything else is absent.
fn lenient_count<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    Ok(match v {
        serde_json::Value::Number(n) => {
            n.as_u64().or_else(|| n.as_f64().map(|f| f.max(0.0) as u64))
        }
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    })
}

#[derive(Deserialize)]
struct WireSubject<'a> {
    #[serde(borrow)]
    kind: Option<JsonStr<'a>>,
    #[serde(borrow)]
    uid: Option<JsonStr<'a>>,
    #[serde(borrow, alias = "namespace")]
    ns: Option<JsonStr<'a>>,
    #[serde(borrow)]
    name: Option<JsonStr<'a>>,
}

#[derive(Deserialize)]
struct WireEvent<'a> {
    #[serde(borrow)]
    client_id: Option<JsonStr<'a>>,
    #[serde(borrow)]
    event_id: Option<JsonStr<'a>>,
    #[serde(borrow)]
    raw_event_id: Option<JsonStr<'a>>,
    #[serde(borrow)]
    event_time: Option<JsonStr<'a>>,
    #[serde(borrow)]
    timestamp: Option<JsonStr<'a>>,
    #[serde(borrow)]
    event_type_abstract: Option<JsonStr<'a>>,
    #[serde(borrow)]
    severity: Option<JsonStr<'a>>,
    #[serde(borrow)]
    reason: Option<JsonStr<'a>>,
    #[serde(borrow)]
    message: Option<JsonStr<'a>>,
    #[serde(borrow)]
    namespace: Option<JsonStr<'a>>,
    #[serde(borrow)]
    pod_name: Option<JsonStr<'a>>,
    #[serde(borrow)]
    node: Option<JsonStr<'a>>,
    #[serde(borrow)]
    involved_object_kind: Option<JsonStr<'a>>,
    #[serde(borrow)]
    involved_object_name: Option<JsonStr<'a>>,
    #[serde(borrow)]
    subject: Option<WireSubject<'a>>,
    #[serde(default, deserialize_with = "lenient_count")]
    count: Option<u64>,
    #[serde(rename = "involvedObject", alias = "regarding")]
    involved_object: Option<IgnoredAny>,
}

fn episode_from_normalized(
    e: NormalizedEvent,
    fallback: Option<DateTime<Utc>>,
) -> Result<EpisodeInput, GraphDecodeError> {
    let event_time = e
        .event_time
        .or(e.timestamp)
        .or(fallback)
        .ok_or(GraphDecodeError::MissingTime)?;
    Ok(EpisodeInput {
        event_id: e.event_id,
        etype: Etype::K8sEvent,
        event_time,
        severity: e.severity,
        event_type_abstract: Some(e.event_type_abstract),
        reason: e.reason,
        message: e.message,
        subject: e.subject,
        count: e.count.unwrap_or(1).max(1),
    })
}

fn decode_event(
    tenant: Option<&str>,
    value: &[u8],
    fallback: Option<DateTime<Utc>>,
) -> Result<EpisodeInput, GraphDecodeError> {
    let w: WireEvent = parse_object(value)?;
    check_tenant(tenant, w.client_id.as_ref().map(JsonStr::as_str))?;
    if w.involved_object.is_some() && w.subject.is_none() {
        // A raw Kubernetes Event on the normalized topic: normalize it here.
        let client = tenant
            .or(w.client_id.as_ref().map(JsonStr::as_str))
            .and_then(|t| ClientId::parse(t).ok())
            .unwrap_or_else(|| ClientId::parse("unknown").expect("a valid client id"));
        return episode_from_normalized(normalize_event(&client, value)?, fallback);
    }
    let event_id = non_empty(w.event_id)
        .or_else(|| non_empty(w.raw_event_id))
        .ok_or(NormalizeError::MissingField("event_id"))?;
    let event_time = [w.event_time.as_ref(), w.timestamp.as_ref()]
        .into_iter()
        .flatten()
        .find_map(|s| parse_time(s.as_str()))
        .or(fallback)
        .ok_or(GraphDecodeError::MissingTime)?;
    let reason = non_empty(w.reason);
    let event_type_abstract = match w.event_type_abstract.as_ref().map(JsonStr::as_str) {
        Some(label) if !label.is_empty() => {
            Some(EventTypeAbstract::from_label(label).unwrap_or(EventTypeAbstract::Custom))
        }
        _ => reason.as_deref().map(event_type_abstract),
    };
    let severity = match w.severity.as_ref().map(JsonStr::as_str) {
        Some(s) => Severity::from_level(s).unwrap_or_else(|| event_severity(Some(s))),
        None => Severity::Info,
    };
    let namespace = non_empty(w.namespace);
    let pod_name = non_empty(w.pod_name);
    let node = non_empty(w.node);
    let mut subject = match w.subject {
        Some(s) => Subject {
            kind: non_empty(s.kind),
            uid: non_empty(s.uid),
            ns: non_empty(s.ns),
            name: non_empty(s.name),
        },
        None => Subject::default(),
    };
    if subject.name.is_none() && subject.uid.is_none() {
        let flat_kind = non_empty(w.involved_object_kind);
        let flat_name = non_empty(w.involved_object_name);
        if let Some(name) = flat_name {
            subject.kind = subject.kind.or(flat_kind);
            subject.name = Some(name);
        } else if let Some(pod) = pod_name {
            subject.kind = Some("Pod".to_owned());
            subject.name = Some(pod);
        } else if let Some(node) = node {
            subject.kind = Some("Node".to_owned());
            subject.name = Some(node);
        }
    }
    if subject.ns.is_none() {
        subject.ns = namespace;
    }
    Ok(EpisodeInput {
        event_id,
        etype: Etype::K8sEvent,
        event_time,
        severity,
        reason,
        event_type_abstract,
        message: non_empty(w.message),
        subject,
        count: w.count.unwrap_or(1).max(1),
    })
}

#[derive(Deserialize)]
struct WireLogId<'a> {
    #[serde(borrow)]
    log_id: Option<JsonStr<'a>>,
}

fn decode_log(
    tenant: Option<&str>,
    value: &[u8],
    fallback: Option<DateTime<Utc>>,
) -> Result<Option<EpisodeInput>, GraphDecodeError> {
    // The log normalizer's own rules read both the shipper's records and normalized
    // ones; it needs a client only to check the body's `client_id` against it.
    let client = tenant
        .and_then(|t| ClientId::parse(t).ok())
        .or_else(|| crate::roles::log_normalizer::normalize::log_tenant_from_body(value))
        .unwrap_or_else(|| ClientId::parse("unknown").expect("a valid client id"));
    let log = normalize_log(&client, value)?;
    let Some((reason, severity)) =
        log_signal(&log.message, log.severity, log.is_error, log.error_type)
    else {
        return Ok(None);
    };
    let event_time = log
        .timestamp
        .or(fallback)
        .ok_or(GraphDecodeError::MissingTime)?;
    // A normalized record keeps its id (its message may have been cut, which would
    // change a recomputed one).
    let own_id = if value.windows(8).any(|w| w == b"\"log_id\"") {
        parse_object::<WireLogId>(value)
            .ok()
            .and_then(|w| non_empty(w.log_id))
    } else {
        None
    };
    Ok(Some(EpisodeInput {
        event_id: own_id.unwrap_or(log.log_id),
        etype: Etype::K8sLog,
        event_time,
        severity,
        reason: Some(reason),
        event_type_abstract: None,
        message: Some(log.message),
        subject: log.subject,
        count: 1,
    }))
}

/// `true` for an upsert, `false` for a delete.
fn op_is_upsert(op: Option<&str>) -> Result<bool, GraphDecodeError> {
    let Some(op) = op.map(str::trim).filter(|o| !o.is_empty()) else {
        return Ok(true);
    };
    const UPSERTS: [&str; 8] = [
        "UPSERT", "ADD", "ADDED", "UPDATE", "MODIFIED", "CREATE", "SYNC", "UPDATED",
    ];
    const DELETES: [&str; 3] = ["DELETE", "DELETED", "REMOVE"];
    if UPSERTS.iter().any(|u| u.eq_ignore_ascii_case(op)) {
        Ok(true)
    } else if DELETES.iter().any(|d| d.eq_ignore_ascii_case(op)) {
        Ok(false)
    } else {
        Err(GraphDecodeError::UnknownOp(quote(op)))
    }
}

fn is_tombstone(value: Option<&[u8]>) -> bool {
    match value {
        None => true,
        Some(v) => v.iter().all(u8::is_ascii_whitespace),
    }
}

/// The entity part of a state key (`Pod:1234`, `edge:a->b`), however the key is formed.
fn key_entity(key: Option<&[u8]>) -> Option<&str> {
    key.and_then(parse_key).map(|k| k.entity_id())
}

/// `Kind:uid` from a resource key.
fn resource_key_parts(key: Option<&[u8]>) -> Option<(&str, &str)> {
    let (kind, uid) = key_entity(key)?.split_once(':')?;
    (!kind.is_empty() && !uid.is_empty()).then_some((kind, uid))
}

#[derive(Deserialize)]
struct WireResource<'a> {
    #[serde(borrow)]
    op: Option<JsonStr<'a>>,
    #[serde(borrow)]
    at: Option<JsonStr<'a>>,
    #[serde(borrow)]
    client_id: Option<JsonStr<'a>>,
    #[serde(borrow)]
    kind: Option<JsonStr<'a>>,
    #[serde(borrow)]
    uid: Option<JsonStr<'a>>,
    #[serde(borrow)]
    namespace: Option<JsonStr<'a>>,
    #[serde(borrow)]
    name: Option<JsonStr<'a>>,
}

fn decode_resource(
    key: Option<&[u8]>,
    value: Option<&[u8]>,
) -> Result<GraphInput, GraphDecodeError> {
    let tenant = key.and_then(parse_key).map(|k| k.tenant);
    let key_parts = resource_key_parts(key);
    if is_tombstone(value) {
        let (kind, uid) = key_parts.ok_or_else(|| {
            GraphDecodeError::BadKey(quote(&String::from_utf8_lossy(key.unwrap_or_default())))
        })?;
        return Ok(GraphInput::ResourceDelete {
            kind: kind.to_owned(),
            uid: uid.to_owned(),
        });
    }
    let value = value.unwrap_or_default();
    let w: WireResource = parse_object(value)?;
    check_tenant(tenant, w.client_id.as_ref().map(JsonStr::as_str))?;
    let upsert = op_is_upsert(w.op.as_ref().map(JsonStr::as_str))?;
    let kind = non_empty(w.kind)
        .or_else(|| key_parts.map(|(k, _)| k.to_owned()))
        .ok_or(NormalizeError::MissingField("kind"))?;
    let uid = non_empty(w.uid)
        .or_else(|| key_parts.map(|(_, u)| u.to_owned()))
        .ok_or(NormalizeError::MissingField("uid"))?;
    if !upsert {
        return Ok(GraphInput::ResourceDelete { kind, uid });
    }
    let name = non_empty(w.name).ok_or(NormalizeError::MissingField("name"))?;
    if name.contains(':') {
        return Err(GraphDecodeError::InvalidValue {
            field: "name",
            value: quote(&name),
        });
    }
    let at = w.at.as_ref().and_then(|a| parse_time(a.as_str()));
    Ok(GraphInput::ResourceUpsert(ResourceSnapshot {
        kind,
        uid,
        namespace: non_empty(w.namespace),
        name,
        at,
        // `parse_object` accepted it, so it is UTF-8 JSON.
        raw: String::from_utf8_lossy(value).trim().to_owned(),
    }))
}

#[derive(Deserialize)]
struct WireEdge<'a> {
    #[serde(borrow)]
    op: Option<JsonStr<'a>>,
    #[serde(borrow)]
    at: Option<JsonStr<'a>>,
    #[serde(borrow)]
    client_id: Option<JsonStr<'a>>,
    #[serde(borrow)]
    id: Option<JsonStr<'a>>,
    #[serde(borrow)]
    from: Option<JsonStr<'a>>,
    #[serde(borrow)]
    to: Option<JsonStr<'a>>,
    #[serde(borrow, rename = "type")]
    edge_type: Option<JsonStr<'a>>,
}

/// `(from, to)` from `edge:<from>-><to>`.
fn edge_id_parts(id: &str) -> Option<(&str, &str)> {
    id.strip_prefix("edge:")?.split_once("->")
}

fn endpoint(field: &'static str, raw: &str) -> Result<String, GraphDecodeError> {
    canonical_name(raw).ok_or_else(|| GraphDecodeError::InvalidValue {
        field,
        value: quote(raw),
    })
}

fn decode_edge(key: Option<&[u8]>, value: Option<&[u8]>) -> Result<GraphInput, GraphDecodeError> {
    let tenant = key.and_then(parse_key).map(|k| k.tenant);
    let key_edge = key_entity(key).and_then(edge_id_parts);
    if is_tombstone(value) {
        let bad_key =
            || GraphDecodeError::BadKey(quote(&String::from_utf8_lossy(key.unwrap_or_default())));
        let (from, to) = key_edge.ok_or_else(bad_key)?;
        return Ok(GraphInput::EdgeDelete {
            from: canonical_name(from).ok_or_else(bad_key)?,
            to: canonical_name(to).ok_or_else(bad_key)?,
        });
    }
    let value = value.unwrap_or_default();
    let w: WireEdge = parse_object(value)?;
    check_tenant(tenant, w.client_id.as_ref().map(JsonStr::as_str))?;
    let upsert = op_is_upsert(w.op.as_ref().map(JsonStr::as_str))?;
    let id_edge = w.id.as_ref().and_then(|id| edge_id_parts(id.as_str()));
    let (from, to) = match (non_empty(w.from), non_empty(w.to)) {
        (Some(from), Some(to)) => (from, to),
        _ => id_edge
            .or(key_edge)
            .map(|(f, t)| (f.to_owned(), t.to_owned()))
            .ok_or(NormalizeError::MissingField("from and to"))?,
    };
    let (from, to) = (endpoint("from", &from)?, endpoint("to", &to)?);
    if !upsert {
        return Ok(GraphInput::EdgeDelete { from, to });
    }
    let edge_type = non_empty(w.edge_type)
        .ok_or(NormalizeError::MissingField("type"))?
        .to_ascii_uppercase();
    let at = w.at.as_ref().and_then(|a| parse_time(a.as_str()));
    Ok(GraphInput::EdgeUpsert(TopologyEdge {
        from,
        to,
        edge_type,
        at,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn bytes(v: serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(&v).unwrap()
    }

    fn normalized_event() -> serde_json::Value {
        json!({
            "client_id": "af-9", "event_id": "evt-0123456789abcdef", "raw_event_id": "evt-test-123",
            "timestamp": "2025-10-28T08:31:00Z", "event_time": "2025-10-28T08:31:00Z",
            "etype": "k8s.event", "event_type_abstract": "MEMORY_OOM", "severity": "WARNING",
            "reason": "OOMKilled", "message": "Container killed: out of memory",
            "namespace": "default", "pod_name": "api-7d9f", "node": "node-1",
            "involved_object_kind": "Pod", "involved_object_name": "api-7d9f",
            "subject": {"kind": "Pod", "uid": "b1e2", "ns": "default", "name": "api-7d9f"},
            "count": 3
        })
    }

    #[test]
    fn normalized_event_decodes_to_an_episode() {
        let v = bytes(normalized_event());
        let Some(GraphInput::Event(e)) = decode_input(
            EVENTS_NORMALIZED,
            Some(b"af-9::evt-0123456789abcdef"),
            Some(&v),
        )
        .unwrap() else {
            panic!("not an event");
        };
        assert_eq!(e.event_id, "evt-0123456789abcdef");
        assert_eq!(e.severity, Severity::Warning);
        assert_eq!(e.reason.as_deref(), Some("OOMKilled"));
        assert_eq!(e.event_type_abstract, Some(EventTypeAbstract::MemoryOom));
        assert_eq!(e.subject.uid.as_deref(), Some("b1e2"));
        assert_eq!(e.count, 3);
        assert_eq!(e.event_time.to_rfc3339(), "2025-10-28T08:31:00+00:00");
    }

    #[test]
    fn original_normalizer_records_get_a_subject_from_flat_fields() {
        let v = bytes(json!({
            "event_id": "evt-1", "timestamp": "2025-10-28T08:31:00Z", "event_type_abstract": "POD_BACKOFF",
            "namespace": "shop", "pod_name": "checkout-1", "reason": "BackOff", "severity": "WARN",
            "involved_object_kind": "Pod", "involved_object_name": "checkout-1"
        }));
        let Some(GraphInput::Event(e)) =
            decode_input(EVENTS_NORMALIZED, Some(b"af-9::evt-1"), Some(&v)).unwrap()
        else {
            panic!("not an event");
        };
        assert_eq!(e.subject.kind.as_deref(), Some("Pod"));
        assert_eq!(e.subject.name.as_deref(), Some("checkout-1"));
        assert_eq!(e.subject.ns.as_deref(), Some("shop"));
        assert_eq!(e.severity, Severity::Warning);
    }

    #[test]
    fn raw_kubernetes_events_are_normalized_on_the_way_in() {
        let v = bytes(json!({
            "event_id": "evt-test-123", "reason": "OOMKilled", "message": "Container killed", "type": "Warning",
            "metadata": {"uid": "test-123", "creationTimestamp": "2025-10-28T08:31:00Z"},
            "involvedObject": {"kind": "Pod", "name": "api-7d9f", "namespace": "default", "uid": "b1e2"},
            "source": {"host": "node-1"}, "lastTimestamp": "2025-10-28T08:31:00Z", "count": 3
        }));
        let Some(GraphInput::Event(e)) =
            decode_input(EVENTS_NORMALIZED, Some(b"af-9::event::test-123"), Some(&v)).unwrap()
        else {
            panic!("not an event");
        };
        assert!(e.event_id.starts_with("evt-") && e.event_id.len() == 20);
        assert_eq!(e.subject.name.as_deref(), Some("api-7d9f"));
        assert_eq!(e.severity, Severity::Warning);
    }

    #[test]
    fn events_without_time_need_a_fallback() {
        let mut v = normalized_event();
        v.as_object_mut().unwrap().remove("timestamp");
        v.as_object_mut().unwrap().remove("event_time");
        let v = bytes(v);
        let err = decode_input(EVENTS_NORMALIZED, Some(b"af-9::e"), Some(&v)).unwrap_err();
        assert_eq!(err.reason_code(), "missing_time");
        let at: DateTime<Utc> = "2025-10-28T09:00:00Z".parse().unwrap();
        let Some(GraphInput::Event(e)) =
            decode_input_at(EVENTS_NORMALIZED, Some(b"af-9::e"), Some(&v), Some(at)).unwrap()
        else {
            panic!("not an event");
        };
        assert_eq!(e.event_time, at);
    }

    #[test]
    fn undecodable_records_have_reason_codes() {
        let cases: [(&str, &[u8], &str); 6] = [
            (EVENTS_NORMALIZED, b"", "empty"),
            (EVENTS_NORMALIZED, b"not json", "not_json"),
            (EVENTS_NORMALIZED, b"[1]", "not_an_object"),
            (EVENTS_NORMALIZED, b"{\"reason\": 3}", "invalid_shape"),
            (
                EVENTS_NORMALIZED,
                b"{\"reason\": \"BackOff\"}",
                "missing_field",
            ),
            (
                STATE_K8S_RESOURCE,
                b"{\"op\":\"EXPLODE\",\"kind\":\"Pod\",\"uid\":\"u\",\"name\":\"a\"}",
                "unknown_op",
            ),
        ];
        for (topic, value, code) in cases {
            let err = decode_input(topic, Some(b"af-9::Pod:u"), Some(value)).unwrap_err();
            assert_eq!(
                err.reason_code(),
                code,
                "{}",
                String::from_utf8_lossy(value)
            );
        }
        let foreign = bytes(
            json!({"client_id": "other", "event_id": "e", "timestamp": "2025-10-28T08:31:00Z"}),
        );
        let err = decode_input(EVENTS_NORMALIZED, Some(b"af-9::e"), Some(&foreign)).unwrap_err();
        assert_eq!(err.reason_code(), "tenant_mismatch");
        let err = decode_input("alerts.raw", Some(b"af-9::e"), Some(b"{}")).unwrap_err();
        assert_eq!(err.reason_code(), "unknown_topic");
        let err = decode_input(STATE_K8S_RESOURCE, Some(b"af-9::nouid"), None).unwrap_err();
        assert_eq!(err.reason_code(), "bad_key");
        let err = decode_input(STATE_K8S_TOPOLOGY, Some(b"af-9::edge:pod->x"), None).unwrap_err();
        assert_eq!(err.reason_code(), "bad_key");
    }

    #[test]
    fn low_signal_log_lines_are_not_graph_worthy() {
        let v = bytes(json!({
            "message": "GET /health 200", "timestamp": "2025-10-28T08:31:00Z", "client_id": "af-9",
            "pod_uid": "u1", "pod_namespace": "shop", "pod_name": "checkout-1",
            "subject": {"kind": "Pod", "uid": "u1", "ns": "shop", "name": "checkout-1"}
        }));
        assert_eq!(
            decode_input(LOGS_NORMALIZED, Some(b"af-9::u1"), Some(&v)).unwrap(),
            None
        );
    }

    #[test]
    fn error_and_high_signal_log_lines_become_episodes() {
        let shipper = bytes(json!({
            "message": "ERROR failed to reserve order: connection refused", "timestamp": "2025-10-28T08:31:00Z",
            "client_id": "af-9", "etype": "k8s.log", "pod_uid": "u1", "pod_namespace": "shop", "pod_name": "checkout-1",
            "subject": {"kind": "Pod", "uid": "u1", "ns": "shop", "name": "checkout-1"},
            "kubernetes": {"container_name": "app", "pod_node_name": "node-2"}
        }));
        let Some(GraphInput::Log(l)) =
            decode_input(LOGS_NORMALIZED, Some(b"af-9::u1"), Some(&shipper)).unwrap()
        else {
            panic!("not a log");
        };
        assert!(l.event_id.starts_with("log-"));
        assert_eq!(l.etype, Etype::K8sLog);
        assert_eq!(l.severity, Severity::Error);
        assert_eq!(l.subject.name.as_deref(), Some("checkout-1"));
        assert_eq!(l.subject.ns.as_deref(), Some("shop"));

        let normalized = bytes(json!({
            "client_id": "af-9", "log_id": "log-00000000000000aa", "timestamp": "2025-10-28T08:31:00Z",
            "etype": "k8s.log", "namespace": "shop", "pod_name": "checkout-1", "pod_uid": "u1",
            "subject": {"kind": "Pod", "uid": "u1", "ns": "shop", "name": "checkout-1"},
            "message": "Liveness probe failed: connection refused", "severity": "WARNING", "is_error": false
        }));
        let Some(GraphInput::Log(l)) =
            decode_input(LOGS_NORMALIZED, Some(b"af-9::u1"), Some(&normalized)).unwrap()
        else {
            panic!("not a log");
        };
        assert_eq!(
            l.event_id, "log-00000000000000aa",
            "a normalized record keeps its id"
        );
        assert_eq!(l.reason.as_deref(), Some("Unhealthy"));
        assert_eq!(l.severity, Severity::Warning);
    }

    #[test]
    fn resource_records_decode_to_upserts_and_deletes() {
        let v = bytes(json!({
            "op": "UPSERT", "at": "2025-10-28T08:30:00Z", "client_id": "af-9", "cluster": "af-9",
            "kind": "Pod", "uid": "u1", "namespace": "shop", "name": "checkout-1",
            "labels": {"app": "checkout"}, "ownerRefs": [{"kind": "ReplicaSet", "name": "checkout-7d9f"}],
            "node": "node-2", "status": {"phase": "Running"}
        }));
        let Some(GraphInput::ResourceUpsert(s)) =
            decode_input(STATE_K8S_RESOURCE, Some(b"af-9::Pod:u1"), Some(&v)).unwrap()
        else {
            panic!("not an upsert");
        };
        assert_eq!(s.canonical_name(), "pod:shop:checkout-1");
        assert_eq!(s.uid, "u1");
        assert!(s.at.is_some());
        assert!(s.raw.contains("ownerRefs"));

        assert_eq!(
            decode_input(STATE_K8S_RESOURCE, Some(b"af-9::Pod:u1"), None).unwrap(),
            Some(GraphInput::ResourceDelete {
                kind: "Pod".into(),
                uid: "u1".into()
            })
        );
        assert_eq!(
            decode_input(STATE_K8S_RESOURCE, Some(b"af-9::Pod:u1"), Some(b"  ")).unwrap(),
            Some(GraphInput::ResourceDelete {
                kind: "Pod".into(),
                uid: "u1".into()
            })
        );
        let del = bytes(
            json!({"op": "delete", "kind": "Pod", "uid": "u2", "namespace": "shop", "name": "x"}),
        );
        assert_eq!(
            decode_input(STATE_K8S_RESOURCE, Some(b"af-9::Pod:u2"), Some(&del)).unwrap(),
            Some(GraphInput::ResourceDelete {
                kind: "Pod".into(),
                uid: "u2".into()
            })
        );
    }

    #[test]
    fn topology_records_decode_to_canonical_edges() {
        let v = bytes(json!({
            "op": "UPSERT", "at": "2025-10-28T08:30:00Z", "client_id": "af-9",
            "id": "edge:Pod:shop:checkout-1->node:node-2", "from": "Pod:shop:checkout-1", "to": "node:node-2", "type": "runs_on"
        }));
        let Some(GraphInput::EdgeUpsert(e)) = decode_input(
            STATE_K8S_TOPOLOGY,
            Some(b"af-9::edge:pod:shop:checkout-1->node:node-2"),
            Some(&v),
        )
        .unwrap() else {
            panic!("not an edge");
        };
        assert_eq!(
            (e.from.as_str(), e.to.as_str(), e.edge_type.as_str()),
            ("pod:shop:checkout-1", "node:node-2", "RUNS_ON")
        );
        assert_eq!(
            decode_input(
                STATE_K8S_TOPOLOGY,
                Some(b"af-9::edge:pod:shop:checkout-1->node:node-2"),
                None
            )
            .unwrap(),
            Some(GraphInput::EdgeDelete {
                from: "pod:shop:checkout-1".into(),
                to: "node:node-2".into()
            })
        );
        let only_id =
            bytes(json!({"op": "DELETE", "id": "edge:service:shop:checkout->pod:shop:checkout-1"}));
        assert_eq!(
            decode_input(STATE_K8S_TOPOLOGY, Some(b"af-9::x"), Some(&only_id)).unwrap(),
            Some(GraphInput::EdgeDelete {
                from: "service:shop:checkout".into(),
                to: "pod:shop:checkout-1".into()
            })
        );
    }
}
