//! Dead-letter envelopes for `dlq.normalized` and `dlq.raw`. A record that cannot be
//! processed is wrapped with its reason, where it came from (topic, partition, offset)
//! and when it failed, and the original bytes are kept exactly: as text when they are
//! UTF-8, in base64 when they are not, so an operator can replay or inspect it.
//!
//! Up to [`ORIGINAL_LIMIT`] bytes, that is. A larger value (the very records that are
//! dead-lettered for being too large) would make the dead letter too large for the broker
//! as well: its first [`ORIGINAL_LIMIT`] bytes are kept, with its size and SHA-256, which
//! is enough to find the record and tell it apart.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::client_id::ClientId;

/// The most bytes of an original value a dead letter carries.
pub const ORIGINAL_LIMIT: usize = 64 * 1024;

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
    /// Its offset (the first of a run, for a dead letter that stands for several).
    pub source_offset: i64,
    /// The last offset, for a dead letter that stands for a run of records that could not
    /// be read at all (a corrupt batch): the consumer skipped `source_offset..=` this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_last_offset: Option<i64>,
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
    /// Set when the original was longer than [`ORIGINAL_LIMIT`] and only its start is
    /// kept: its full size and digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truncated: Option<Truncated>,
    /// Every attempt that failed, oldest first, for a record that went up a pipeline's
    /// retry ladder before it was given up (`retries_exhausted`); empty otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempts: Vec<Attempt>,
}

/// One failed attempt of a record that was retried.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Attempt {
    pub at: DateTime<Utc>,
    pub reason: String,
}

/// What identifies an original value too large to keep whole.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Truncated {
    /// The original's size in bytes.
    pub size: usize,
    /// Its SHA-256, hex.
    pub sha256: String,
    /// How many of its bytes the dead letter keeps.
    pub kept: usize,
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
        let truncated = value.filter(|v| v.len() > ORIGINAL_LIMIT).map(|v| {
            let digest = Sha256::digest(v);
            Truncated {
                size: v.len(),
                sha256: digest.iter().map(|b| format!("{b:02x}")).collect(),
                kept: ORIGINAL_LIMIT,
            }
        });
        let kept = value.map(|v| &v[..v.len().min(ORIGINAL_LIMIT)]);
        let (original, original_base64) = match kept.map(std::str::from_utf8) {
            None => (None, None),
            Some(Ok(text)) => (Some(text.to_owned()), None),
            // A cut through a multi-byte character is still text, less its last character.
            Some(Err(error)) if truncated.is_some() && error.error_len().is_none() => {
                let text = &kept.unwrap_or_default()[..error.valid_up_to()];
                (Some(String::from_utf8_lossy(text).into_owned()), None)
            }
            Some(Err(_)) => (None, kept.map(|v| STANDARD.encode(v))),
        };
        DeadLetter {
            reason_code: reason_code.to_owned(),
            reason: reason.into(),
            source_topic: source_topic.to_owned(),
            source_partition: partition,
            source_offset: offset,
            source_last_offset: None,
            failed_at,
            client_id: client_id.map(|c| c.as_str().to_owned()),
            key: key.map(|k| String::from_utf8_lossy(k).into_owned()),
            original,
            original_base64,
            truncated,
            attempts: Vec::new(),
        }
    }

    /// With the failed attempts of a record given up after its retries.
    pub fn with_attempts(mut self, attempts: Vec<Attempt>) -> Self {
        self.attempts = attempts;
        self
    }

    /// Stands for the offsets `first..=last` of a partition that could not be read at all,
    /// so no key or value is known: what was skipped, and why.
    pub fn skipped_run(
        reason_code: &str,
        reason: impl Into<String>,
        source_topic: &str,
        partition: i32,
        first: i64,
        last: i64,
        failed_at: DateTime<Utc>,
    ) -> Self {
        let mut letter = Self::new(
            reason_code,
            reason,
            source_topic,
            partition,
            first,
            None,
            None,
            None,
            failed_at,
        );
        letter.source_last_offset = Some(last);
        letter
    }

    /// The envelope as JSON, ready to produce.
    pub fn to_json(&self) -> Vec<u8> {
        // Strings, integers and a timestamp cannot fail to serialize; the fallback only
        // exists so that this path has no panic in it.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The exact original value bytes (their start, when [`DeadLetter::truncated`] says
    /// so), or `None` for a null value (or a base64 field that was tampered with).
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
    fn a_skipped_run_names_its_first_and_last_offsets_and_nothing_else() {
        let dl = DeadLetter::skipped_run(
            "unreadable",
            "cannot decode",
            "cluster.heartbeat",
            3,
            40,
            44,
            at(),
        );
        let json: serde_json::Value = serde_json::from_slice(&dl.to_json()).unwrap();
        assert_eq!(json["source_offset"], 40);
        assert_eq!(json["source_last_offset"], 44);
        assert_eq!(json["source_partition"], 3);
        assert!(json.get("key").is_none() && json.get("original").is_none());
        // A single record's letter has no last offset.
        let single = DeadLetter::new("r", "x", "t", 0, 1, None, None, None, at());
        assert!(
            serde_json::from_slice::<serde_json::Value>(&single.to_json())
                .unwrap()
                .get("source_last_offset")
                .is_none()
        );
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
    fn an_oversized_original_keeps_its_start_size_and_digest() {
        let value = vec![b'x'; ORIGINAL_LIMIT * 3];
        let dl = DeadLetter::new(
            "too_large",
            "big",
            "t",
            1,
            9,
            Some(b"k"),
            Some(&value),
            None,
            at(),
        );
        let truncated = dl.truncated.clone().expect("marked truncated");
        assert_eq!(truncated.size, ORIGINAL_LIMIT * 3);
        assert_eq!(truncated.kept, ORIGINAL_LIMIT);
        assert_eq!(truncated.sha256.len(), 64);
        assert_eq!(dl.original.as_deref().map(str::len), Some(ORIGINAL_LIMIT));
        assert!(dl.to_json().len() < ORIGINAL_LIMIT + 1024);
        // A cut inside a multi-byte character still leaves text.
        let mut text = vec![b'a'; ORIGINAL_LIMIT - 1];
        text.extend_from_slice("é".repeat(10).as_bytes());
        let dl = DeadLetter::new("too_large", "big", "t", 1, 9, None, Some(&text), None, at());
        assert_eq!(
            dl.original.as_deref().map(str::len),
            Some(ORIGINAL_LIMIT - 1)
        );
        // Small values are kept whole and carry no marker.
        let dl = DeadLetter::new("x", "y", "t", 0, 0, None, Some(b"small"), None, at());
        assert!(dl.truncated.is_none());
        assert!(!String::from_utf8(dl.to_json())
            .unwrap()
            .contains("truncated"));
    }

    #[test]
    fn null_value_has_no_original() {
        let dl = DeadLetter::new("null_value", "null", "t", 0, 0, None, None, None, at());
        assert_eq!(dl.original_bytes(), None);
        let back: DeadLetter = serde_json::from_slice(&dl.to_json()).unwrap();
        assert_eq!(back, dl);
    }
}
