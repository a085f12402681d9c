//! Decoding of `cluster.heartbeat` records. Each client sends two streams: every 60 s key
//! `af-9` with `{"client_id","timestamp"}`, and every 30 s from the state watcher key
//! `af-9::af-9` with `metrics` and `status` too. Keys are unreliable, so the tenant is the
//! value's `client_id`; only when the value has none does the key stand in. The sender's
//! `timestamp` is kept for display but liveness must use the receive (or Kafka) time,
//! because the sender's clock may be off.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::client_id::{ClientId, InvalidClientId};
use crate::keys::{parse_key, KeyForm};
use crate::registry::{json_kind, parse_object, ObjectError};

/// A decoded heartbeat.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The client the heartbeat is from.
    pub client_id: ClientId,
    /// `status` when it is a string (`"healthy"` from the state watcher).
    pub status: Option<String>,
    /// The sender's `timestamp` as sent; not to be trusted for liveness.
    pub sender_timestamp: Option<String>,
    /// `metrics` as sent, when present and not null.
    pub metrics: Option<Value>,
}

/// Why a heartbeat record could not be decoded.
#[derive(thiserror::Error, Debug)]
pub enum HeartbeatDecodeError {
    /// The value is larger than [`MAX_HEARTBEAT_BYTES`].
    #[error("heartbeat value is {size} bytes, more than the {limit} a heartbeat may have")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The cap.
        limit: usize,
    },
    /// The record has a null value; heartbeats are never tombstones.
    #[error("heartbeat value is null")]
    NullValue,
    /// The value is empty or whitespace.
    #[error("heartbeat value is empty")]
    EmptyValue,
    /// The value is not JSON.
    #[error("heartbeat value is not json: {source}")]
    NotJson {
        /// What the JSON parser said.
        source: serde_json::Error,
    },
    /// A JSON value is followed by something other than whitespace.
    #[error("heartbeat value has trailing data after the json value that ends at byte {offset}")]
    TrailingData {
        /// Where the JSON value ends.
        offset: usize,
    },
    /// The value is JSON but not an object.
    #[error("heartbeat value is {found}, not a json object")]
    NotAnObject {
        /// What kind of JSON value it is.
        found: &'static str,
    },
    /// Neither the value nor the key names a client.
    #[error("heartbeat value has no string client_id (found {found}) and its key names no client")]
    MissingClientId {
        /// What `client_id` held ("nothing", "null", "a number", ...).
        found: &'static str,
    },
    /// The value's `client_id` is not a valid client id.
    #[error("heartbeat value has an invalid client_id: {source}")]
    InvalidClientId {
        /// The `client_id` as received.
        raw: String,
        /// Why it is invalid.
        source: InvalidClientId,
    },
}

impl HeartbeatDecodeError {
    /// A short, stable label for metrics.
    pub fn reason_code(&self) -> &'static str {
        match self {
            HeartbeatDecodeError::TooLarge { .. } => "too_large",
            HeartbeatDecodeError::NullValue => "null_value",
            HeartbeatDecodeError::EmptyValue => "empty_value",
            HeartbeatDecodeError::NotJson { .. } => "not_json",
            HeartbeatDecodeError::TrailingData { .. } => "trailing_data",
            HeartbeatDecodeError::NotAnObject { .. } => "not_an_object",
            HeartbeatDecodeError::MissingClientId { .. } => "missing_client_id",
            HeartbeatDecodeError::InvalidClientId { .. } => "invalid_client_id",
        }
    }

    /// Whether a client id was found but is invalid, which the caller counts on a
    /// dedicated metric.
    pub fn invalid_client_id(&self) -> bool {
        matches!(self, HeartbeatDecodeError::InvalidClientId { .. })
    }
}

impl From<ObjectError> for HeartbeatDecodeError {
    fn from(e: ObjectError) -> Self {
        match e {
            ObjectError::Empty => HeartbeatDecodeError::EmptyValue,
            ObjectError::NotJson(source) => HeartbeatDecodeError::NotJson { source },
            ObjectError::TrailingData { offset } => HeartbeatDecodeError::TrailingData { offset },
            ObjectError::NotAnObject { found } => HeartbeatDecodeError::NotAnObject { found },
        }
    }
}

/// The largest heartbeat accepted: a heartbeat is a client id, a time and a few counters
/// (under 200 bytes from any agent); parsing megabytes to learn that is not worth it.
pub const MAX_HEARTBEAT_BYTES: usize = 16 * 1024;

/// Decodes one `cluster.heartbeat` record. `value` is `None` for a Kafka null.
pub fn decode_heartbeat(
    key: Option<&[u8]>,
    value: Option<&[u8]>,
) -> Result<Heartbeat, HeartbeatDecodeError> {
    let value = value.ok_or(HeartbeatDecodeError::NullValue)?;
    if value.len() > MAX_HEARTBEAT_BYTES {
        return Err(HeartbeatDecodeError::TooLarge {
            size: value.len(),
            limit: MAX_HEARTBEAT_BYTES,
        });
    }
    let mut fields = parse_object(value)?;
    let client_id = client_id_of(&fields, key)?;
    let status = take_string(&mut fields, "status");
    let sender_timestamp = take_string(&mut fields, "timestamp");
    let metrics = fields.remove("metrics").filter(|m| !m.is_null());
    Ok(Heartbeat {
        client_id,
        status,
        sender_timestamp,
        metrics,
    })
}

fn client_id_of(
    fields: &Map<String, Value>,
    key: Option<&[u8]>,
) -> Result<ClientId, HeartbeatDecodeError> {
    match fields.get("client_id") {
        Some(Value::String(raw)) => {
            ClientId::parse(raw).map_err(|source| HeartbeatDecodeError::InvalidClientId {
                raw: raw.clone(),
                source,
            })
        }
        // Only an absent or null id lets the key stand in; an id of the wrong type is a
        // broken sender, not a missing field.
        found @ (None | Some(Value::Null)) => {
            key.and_then(client_id_from_key)
                .ok_or(HeartbeatDecodeError::MissingClientId {
                    found: json_kind(found),
                })
        }
        found => Err(HeartbeatDecodeError::MissingClientId {
            found: json_kind(found),
        }),
    }
}

/// The client a heartbeat key names: a plain client id (`af-9`) or the tenant of a pair
/// key (`af-9::af-9`).
fn client_id_from_key(key: &[u8]) -> Option<ClientId> {
    let key = std::str::from_utf8(key).ok()?;
    if let Ok(id) = ClientId::parse(key) {
        return Some(id);
    }
    parse_key(key.as_bytes())
        .filter(|k| k.form == KeyForm::Pair)
        .and_then(|k| ClientId::parse(k.tenant).ok())
}

fn take_string(fields: &mut Map<String, Value>, name: &str) -> Option<String> {
    match fields.remove(name) {
        Some(Value::String(s)) => Some(s),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLAIN: &str = r#"{"client_id":"af-9","timestamp":"2025-10-28T08:31:00Z"}"#;
    const STATE_WATCHER: &str = r#"{"client_id":"af-9","metrics":{"resources_sent":0,"uptime_seconds":120},"status":"healthy","timestamp":"2025-10-28T08:31:30Z"}"#;

    fn decode(key: &str, value: &str) -> Result<Heartbeat, HeartbeatDecodeError> {
        decode_heartbeat(Some(key.as_bytes()), Some(value.as_bytes()))
    }

    #[test]
    fn a_heartbeat_over_the_cap_is_refused() {
        let value = format!(
            r#"{{"client_id":"af-9","pad":"{}"}}"#,
            "x".repeat(MAX_HEARTBEAT_BYTES)
        );
        assert_eq!(
            decode("af-9", &value).unwrap_err().reason_code(),
            "too_large"
        );
    }

    #[test]
    fn plain_heartbeat_every_60s_is_decoded() {
        let hb = decode("af-9", PLAIN).unwrap();
        assert_eq!(hb.client_id, "af-9");
        assert_eq!(hb.sender_timestamp.as_deref(), Some("2025-10-28T08:31:00Z"));
        assert_eq!((hb.status, hb.metrics), (None, None));
    }

    #[test]
    fn state_watcher_heartbeat_every_30s_is_decoded() {
        let hb = decode("af-9::af-9", STATE_WATCHER).unwrap();
        assert_eq!(hb.client_id, "af-9");
        assert_eq!(hb.status.as_deref(), Some("healthy"));
        assert_eq!(hb.sender_timestamp.as_deref(), Some("2025-10-28T08:31:30Z"));
        assert_eq!(hb.metrics.unwrap()["uptime_seconds"], 120);
    }

    #[test]
    fn the_value_client_id_wins_over_the_key() {
        assert_eq!(decode("bf-1", PLAIN).unwrap().client_id, "af-9");
        assert_eq!(
            decode("garbage key!", STATE_WATCHER).unwrap().client_id,
            "af-9"
        );
        assert_eq!(
            decode_heartbeat(None, Some(PLAIN.as_bytes()))
                .unwrap()
                .client_id,
            "af-9"
        );
    }

    #[test]
    fn the_key_stands_in_when_the_value_has_no_client_id() {
        let value = r#"{"timestamp":"2025-10-28T08:31:00Z"}"#;
        assert_eq!(decode("af-9", value).unwrap().client_id, "af-9");
        assert_eq!(decode("af-9::af-9", value).unwrap().client_id, "af-9");
        assert_eq!(
            decode("af-9", r#"{"client_id":null}"#).unwrap().client_id,
            "af-9"
        );
        for key in ["af-9::event::x", "af-9|x", "AF-9", "", "::af-9"] {
            let err = decode(key, value).unwrap_err();
            assert_eq!(err.reason_code(), "missing_client_id", "{key}");
            assert!(!err.invalid_client_id());
        }
        let err = decode_heartbeat(None, Some(value.as_bytes())).unwrap_err();
        assert_eq!(
            err.to_string(),
            "heartbeat value has no string client_id (found nothing) and its key names no client"
        );
    }

    #[test]
    fn a_client_id_of_the_wrong_type_is_not_replaced_by_the_key() {
        let err = decode("af-9", r#"{"client_id":9}"#).unwrap_err();
        assert_eq!(err.reason_code(), "missing_client_id");
        assert!(err.to_string().contains("a number"));
    }

    #[test]
    fn an_invalid_client_id_in_the_value_is_reported_as_such() {
        let err = decode("af-9", r#"{"client_id":"Af-9"}"#).unwrap_err();
        assert_eq!(err.reason_code(), "invalid_client_id");
        assert!(err.invalid_client_id());
        assert!(err.to_string().contains("\"Af-9\""), "{err}");
    }

    #[test]
    fn broken_values_are_skipped_with_a_reason() {
        assert_eq!(
            decode_heartbeat(Some(b"af-9"), None)
                .unwrap_err()
                .reason_code(),
            "null_value"
        );
        for (value, code) in [
            ("", "empty_value"),
            (" \n", "empty_value"),
            ("alive", "not_json"),
            (&format!("{PLAIN}x"), "trailing_data"),
            ("[]", "not_an_object"),
        ] {
            assert_eq!(
                decode("af-9", value).unwrap_err().reason_code(),
                code,
                "{value}"
            );
        }
    }

    #[test]
    fn non_string_status_and_timestamp_are_dropped() {
        let hb = decode(
            "af-9",
            r#"{"client_id":"af-9","status":1,"timestamp":null,"metrics":null}"#,
        )
        .unwrap();
        assert_eq!(hb.status, None);
        assert_eq!(hb.sender_timestamp, None);
        assert_eq!(hb.metrics, None);
    }
}
