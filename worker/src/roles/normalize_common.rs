//! What the roles' pure parts share: the normalizers' error ([`NormalizeError`]) and output
//! encoding ([`to_json`]), reading a record's JSON without copying (`parse_object`,
//! `JsonStr`), times, the tenant check, and the id hashes. The transforms themselves are
//! the roles': `event_normalizer/normalize.rs` (raw Kubernetes Events →
//! [`NormalizedEvent`](kg_shared::records::NormalizedEvent)) and `log_normalizer/normalize.rs`
//! (the log shipper's records → [`NormalizedLog`](kg_shared::records::NormalizedLog)).
//!
//! It sits beside the role folders, not in one of them, because three roles build on it:
//! both normalizers, and the graph builder's `decode.rs`, which reads what the normalizers
//! write with the same helpers and the same error (and reads raw Events and log records
//! with the normalizers' own transforms). No I/O here: the worker's Kafka edge calls the
//! transforms with a record's value and produces the result, or sends the original bytes
//! and [`NormalizeError::reason_code`] to the DLQ.
//!
//! Inputs are deserialized into borrowed structs (strings point into the input unless
//! JSON escapes force a copy); fields nobody reads are skipped, not built.

use std::borrow::Cow;
use std::fmt;

use kg_shared::ClientId;
use serde::de::{self, IgnoredAny, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::error::Category;

/// How much of a foreign value an error message quotes.
const QUOTE_LIMIT: usize = 80;

/// Why a record could not be normalized. Messages are lowercase and say what was wrong;
/// [`reason_code`](Self::reason_code) gives a stable label for metrics and the DLQ.
#[derive(thiserror::Error, Debug)]
pub enum NormalizeError {
    /// The value is empty or only whitespace.
    #[error("record is empty")]
    Empty,
    /// The value is not JSON (or JSON followed by trailing data, or invalid UTF-8).
    #[error("record is not valid json: {0}")]
    NotJson(#[source] serde_json::Error),
    /// The value is JSON, but not an object.
    #[error("record is a json {0}, not an object")]
    NotAnObject(&'static str),
    /// The value is a JSON object, but a field has the wrong type (or appears twice).
    #[error("record has an unexpected shape: {0}")]
    InvalidShape(#[source] serde_json::Error),
    /// The object lacks what is needed to normalize it.
    #[error("record is missing {0}")]
    MissingField(&'static str),
    /// The body names a tenant other than the worker's own.
    #[error("record belongs to client {found:?}, not to this worker's client {expected}")]
    TenantMismatch {
        /// The worker's client.
        expected: ClientId,
        /// The `client_id` in the body, quoted at most 80 characters long.
        found: String,
    },
}

impl NormalizeError {
    /// A short, stable label for metrics and DLQ records: `empty`, `not_json`,
    /// `not_an_object`, `invalid_shape`, `missing_field`, `tenant_mismatch`.
    pub fn reason_code(&self) -> &'static str {
        match self {
            NormalizeError::Empty => "empty",
            NormalizeError::NotJson(_) => "not_json",
            NormalizeError::NotAnObject(_) => "not_an_object",
            NormalizeError::InvalidShape(_) => "invalid_shape",
            NormalizeError::MissingField(_) => "missing_field",
            NormalizeError::TenantMismatch { .. } => "tenant_mismatch",
        }
    }
}

mod sealed {
    /// The records [`super::to_json`] accepts.
    pub trait Record: serde::Serialize {}
    impl Record for kg_shared::records::NormalizedEvent {}
    impl Record for kg_shared::records::NormalizedLog {}
}

/// A normalized record as the bytes produced on its output topic.
pub fn to_json<R: sealed::Record>(record: &R) -> Vec<u8> {
    // Normalized records hold only strings, numbers, booleans, enums and string-keyed
    // structs, none of which can fail to serialize.
    // A normalized event is typically 600–900 bytes: one allocation, no regrowth.
    let mut out = Vec::with_capacity(1024);
    serde_json::to_writer(&mut out, record).expect("normalized records always serialize");
    out
}

/// Parses `raw` as a JSON object into `T`, sorting failures into the error variants.
pub(crate) fn parse_object<'a, T: Deserialize<'a>>(raw: &'a [u8]) -> Result<T, NormalizeError> {
    // JSON's own whitespace; anything else before the value is a syntax error below.
    let first = raw
        .iter()
        .copied()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
    match first {
        None => Err(NormalizeError::Empty),
        Some(b'{') => {
            // Validating the whole input at once is cheaper than serde_json validating
            // each string it reads. Input with invalid UTF-8 somewhere goes the slower way,
            // which only rejects it when a field that is read holds the bad bytes.
            let parsed = match std::str::from_utf8(raw) {
                Ok(text) => serde_json::from_str(text),
                Err(_) => serde_json::from_slice(raw),
            };
            parsed.map_err(|e| match e.classify() {
                Category::Data => NormalizeError::InvalidShape(e),
                Category::Io | Category::Syntax | Category::Eof => NormalizeError::NotJson(e),
            })
        }
        Some(b) => match serde_json::from_slice::<IgnoredAny>(raw) {
            Ok(_) => Err(NormalizeError::NotAnObject(match b {
                b'[' => "array",
                b'"' => "string",
                b'n' => "null",
                b't' | b'f' => "boolean",
                _ => "number",
            })),
            Err(e) => Err(NormalizeError::NotJson(e)),
        },
    }
}

/// Checks a body's `client_id`, when it has one, against the worker's client.
pub(crate) fn check_tenant(client: &ClientId, body: Option<&str>) -> Result<(), NormalizeError> {
    match body {
        Some(found) if found != client.as_str() => Err(NormalizeError::TenantMismatch {
            expected: client.clone(),
            found: kg_shared::records::truncate_chars(found, QUOTE_LIMIT).to_owned(),
        }),
        _ => Ok(()),
    }
}

/// A JSON string borrowed from the input when it has no escapes, owned otherwise.
/// (serde's own `Cow<str>` always copies unless it is a struct field of that exact type.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct JsonStr<'a>(pub(crate) Cow<'a, str>);

impl<'a> JsonStr<'a> {
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }

    pub(crate) fn into_string(self) -> String {
        self.0.into_owned()
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for JsonStr<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = JsonStr<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(JsonStr(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(JsonStr(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(JsonStr(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(V)
    }
}

/// An optional string field with empty strings read as absent.
pub(crate) fn non_empty<'s>(s: &'s Option<JsonStr<'_>>) -> Option<&'s str> {
    s.as_ref().map(JsonStr::as_str).filter(|s| !s.is_empty())
}

/// Like [`non_empty`], taking the string out.
pub(crate) fn take_non_empty(s: Option<JsonStr<'_>>) -> Option<String> {
    s.filter(|s| !s.as_str().is_empty())
        .map(JsonStr::into_string)
}

/// Parses an RFC 3339 time. Go's zero time (year 1), which some exporters write for an
/// unset time, reads as absent, as does anything unparseable.
pub(crate) fn parse_time(s: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    use chrono::Datelike;
    let t = chrono::DateTime::parse_from_rfc3339(s.trim()).ok()?;
    let t = t.with_timezone(&chrono::Utc);
    (t.year() > 1).then_some(t)
}

/// Feeds a time into an id hash in a form that does not depend on how it was written:
/// `T`, the Unix seconds (i64, little-endian) and the nanoseconds (u32, little-endian)
/// when it parses; `R` and the raw text when it does not; `N` when there is none.
pub(crate) fn hash_time(hasher: &mut xxhash_rust::xxh3::Xxh3, raw: Option<&str>) {
    hash_time_parsed(hasher, raw, raw.and_then(parse_time));
}

/// [`hash_time`] for a caller that has already parsed `raw` into `parsed`.
pub(crate) fn hash_time_parsed(
    hasher: &mut xxhash_rust::xxh3::Xxh3,
    raw: Option<&str>,
    parsed: Option<chrono::DateTime<chrono::Utc>>,
) {
    match (parsed, raw) {
        (Some(t), _) => {
            hasher.update(b"T");
            hasher.update(&t.timestamp().to_le_bytes());
            hasher.update(&t.timestamp_subsec_nanos().to_le_bytes());
        }
        (None, Some(s)) => {
            hasher.update(b"R");
            hasher.update(s.as_bytes());
        }
        (None, None) => hasher.update(b"N"),
    }
}

/// Feeds one string field into an id hash: its length (u64, little-endian) and bytes, so
/// that field boundaries cannot shift between fields.
pub(crate) fn hash_str(hasher: &mut xxhash_rust::xxh3::Xxh3, s: &str) {
    hasher.update(&(s.len() as u64).to_le_bytes());
    hasher.update(s.as_bytes());
}

/// `prefix` and the hash as 16 lower-case hex digits.
pub(crate) fn format_id(prefix: &str, hash: u64) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = String::with_capacity(prefix.len() + 16);
    id.push_str(prefix);
    for shift in (0..16).rev() {
        id.push(HEX[((hash >> (shift * 4)) & 0xf) as usize] as char);
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize, Debug)]
    struct Probe<'a> {
        #[serde(borrow)]
        a: Option<JsonStr<'a>>,
    }

    #[test]
    fn empty_and_blank_records_are_empty() {
        for raw in [&b""[..], b"  \n\t"] {
            let err = parse_object::<Probe>(raw).unwrap_err();
            assert_eq!(err.reason_code(), "empty");
        }
    }

    #[test]
    fn garbage_is_not_json() {
        for raw in [
            &b"not json"[..],
            b"{\"a\":",
            b"{\"a\":\"x\"} trailing",
            b"\"a",
        ] {
            let err = parse_object::<Probe>(raw).unwrap_err();
            assert_eq!(
                err.reason_code(),
                "not_json",
                "{:?}",
                String::from_utf8_lossy(raw)
            );
            assert!(err.to_string().starts_with("record is not valid json"));
        }
    }

    #[test]
    fn json_that_is_not_an_object_says_what_it_is() {
        for (raw, kind) in [
            (&b"[1,2]"[..], "array"),
            (b"\"x\"", "string"),
            (b"null", "null"),
            (b" true", "boolean"),
            (b"42", "number"),
        ] {
            let err = parse_object::<Probe>(raw).unwrap_err();
            assert_eq!(err.reason_code(), "not_an_object");
            assert_eq!(
                err.to_string(),
                format!("record is a json {kind}, not an object")
            );
        }
    }

    #[test]
    fn invalid_utf8_is_rejected_only_where_it_is_read() {
        let err = parse_object::<Probe>(b"{\"a\":\"\xff\"}").unwrap_err();
        assert_eq!(err.reason_code(), "not_json");
        let p: Probe = parse_object(b"{\"a\":\"ok\",\"b\":\"\xff\"}").unwrap();
        assert_eq!(p.a.unwrap().as_str(), "ok");
    }

    #[test]
    fn wrong_field_type_is_an_invalid_shape() {
        let err = parse_object::<Probe>(b"{\"a\": 5}").unwrap_err();
        assert_eq!(err.reason_code(), "invalid_shape");
    }

    #[test]
    fn strings_without_escapes_are_borrowed() {
        let p: Probe = parse_object(br#"{"a":"plain"}"#).unwrap();
        assert!(matches!(p.a, Some(JsonStr(Cow::Borrowed("plain")))));
        let p: Probe = parse_object(br#"{"a":"line\nbreak"}"#).unwrap();
        assert!(matches!(p.a, Some(JsonStr(Cow::Owned(ref s))) if s == "line\nbreak"));
    }

    #[test]
    fn tenant_mismatch_is_reported_with_both_tenants() {
        let me = ClientId::parse("af-9").unwrap();
        assert!(check_tenant(&me, None).is_ok());
        assert!(check_tenant(&me, Some("af-9")).is_ok());
        let err = check_tenant(&me, Some("other")).unwrap_err();
        assert_eq!(err.reason_code(), "tenant_mismatch");
        assert_eq!(
            err.to_string(),
            "record belongs to client \"other\", not to this worker's client af-9"
        );
    }

    #[test]
    fn go_zero_time_and_garbage_times_are_absent() {
        assert!(parse_time("0001-01-01T00:00:00Z").is_none());
        assert!(parse_time("yesterday").is_none());
        assert!(parse_time("").is_none());
        let t = parse_time("2025-10-28T10:31:00.5+02:00").unwrap();
        assert_eq!(t.to_rfc3339(), "2025-10-28T08:31:00.500+00:00");
    }

    #[test]
    fn ids_are_prefix_and_sixteen_hex_digits() {
        assert_eq!(format_id("evt-", 0xab), "evt-00000000000000ab");
        assert_eq!(format_id("log-", u64::MAX), "log-ffffffffffffffff");
    }
}
