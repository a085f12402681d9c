//! Dead-letter envelopes for `dlq.normalized` and `dlq.raw`. A record that cannot be
//! processed is wrapped with its reason, where it came from (topic, partition, offset)
//! and when it failed, and the original bytes are kept exactly: as text when they are
//! UTF-8, in base64 when they are not, so an operator can replay or inspect it.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::client_id::ClientId;

/// One record that could not be processed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DeadLetter {
    /// A short, stable label (the decoder's `reason_code`).
    pub reason_code: String,
    /// The human-readable reason.
    pub reason: String,
    /// The topic the record was read from.
    pub source_topic: String,
    /// Its partition.
    pub source_partition: i32,
    /// Its offset.
    pub source_offset: i64,
    /// When processing failed.
    pub failed_at: DateTime<Utc>,
    /// The tenant, when one could be attributed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// The record key, decoded lossily: keys are for finding the record, not replaying it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The original value when it is valid UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original: Option<String>,
    /// The original value in standard base64 when it is not valid UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_base64: Option<String>,
}

impl DeadLetter {
    /// Wraps a failed record. `value` is `None` for a Kafka null.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        reason_code: &str,
        reason: impl Into<String>,
        source_topic: &str,
        partition: i32,
        offset: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        client_id: Option<&ClientId>,
        failed_at: DateTime<Utc>,
    ) -> Self {
        let (original, original_base64) = match value.map(std::str::from_utf8) {
            None => (None, None),
            Some(Ok(text)) => (Some(text.to_owned()), None),
            Some(Err(_)) => (None, value.map(|v| STANDARD.encode(v))),
        };
        DeadLetter {
            reason_code: reason_code.to_owned(),
            reason: reason.into(),
            source_topic: source_topic.to_owned(),
            source_partition: partition,
            source_offset: offset,
            failed_at,
            client_id: client_id.map(|c| c.as_str().to_owned()),
            key: key.map(|k| String::from_utf8_lossy(k).into_owned()),
            original,
            original_base64,
        }
    }

    /// The envelope as JSON, ready to produce.
    pub fn to_json(&self) -> Vec<u8> {
        // Strings, integers and a timestamp cannot fail to serialize; the fallback only
        // exists so that this path has no panic in it.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The exact original value bytes, or `None` for a null value (or a base64 field that
    /// was tampered with).
    pub fn original_bytes(&self) -> Option<Vec<u8>> {
        match (&self.original, &self.original_base64) {
            (Some(text), _) => Some(text.as_bytes().to_vec()),
            (None, Some(b64)) => STANDARD.decode(b64).ok(),
            (None, None) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 10, 28, 8, 31, 0).unwrap()
    }

    #[test]
    fn utf8_original_is_kept_as_text() {
        let id = ClientId::parse("af-9").unwrap();
        let value = br#"{"reason":"OOMKilled""#;
        let dl = DeadLetter::new(
            "not_json",
            "event value is not json",
            "raw.k8s.events",
            2,
            41,
            Some(b"af-9::event::test-123"),
            Some(value),
            Some(&id),
            at(),
        );
        assert_eq!(dl.original.as_deref(), Some(r#"{"reason":"OOMKilled""#));
        assert_eq!(dl.original_base64, None);
        assert_eq!(dl.original_bytes().unwrap(), value);
        let json: serde_json::Value = serde_json::from_slice(&dl.to_json()).unwrap();
        assert_eq!(json["source_topic"], "raw.k8s.events");
        assert_eq!(json["source_partition"], 2);
        assert_eq!(json["source_offset"], 41);
        assert_eq!(json["client_id"], "af-9");
        assert_eq!(json["key"], "af-9::event::test-123");
        assert_eq!(json["failed_at"], "2025-10-28T08:31:00Z");
        assert!(json.get("original_base64").is_none());
    }

    #[test]
    fn binary_original_is_kept_in_base64() {
        let value = [0xff, 0x00, 0xfe, b'{'];
        let dl = DeadLetter::new(
            "not_json",
            "bad bytes",
            "raw.k8s.logs",
            0,
            7,
            Some(&[0xff, b'k']),
            Some(&value),
            None,
            at(),
        );
        assert_eq!(dl.original, None);
        assert_eq!(dl.original_bytes().unwrap(), value);
        assert_eq!(dl.key.as_deref(), Some("\u{fffd}k"));
        let json: serde_json::Value = serde_json::from_slice(&dl.to_json()).unwrap();
        assert!(json.get("client_id").is_none());
        assert!(json.get("original").is_none());
    }

    #[test]
    fn null_value_has_no_original() {
        let dl = DeadLetter::new("null_value", "null", "t", 0, 0, None, None, None, at());
        assert_eq!(dl.original_bytes(), None);
        let back: DeadLetter = serde_json::from_slice(&dl.to_json()).unwrap();
        assert_eq!(back, dl);
    }
}
