//! Decoding of `cluster.registry` records, tolerant of every shape and quirk the deployed
//! agents produce: the chart's registration and the other shapes seen in the wild (only
//! `client_id` is required, unknown fields are kept), the tombstone the pre-delete hook
//! sends to deregister, and the registration that chart 2.1.1+ splits at its first colon
//! into key `{"client_id"` and value `"af-9",...}`. Anything else is an error with a stable
//! reason code, so the caller can skip it with a logged reason and a metric; no input
//! panics. The registry key is unreliable, so the tenant is the value's `client_id`.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::client_id::{ClientId, InvalidClientId};

/// What a registry record asks for.
#[derive(Clone, Debug, PartialEq)]
pub enum RegistryMessage {
    /// A client (re-)registers; repeats update metadata.
    Register(Registration),
    /// The chart's pre-delete hook removed the client.
    Deregister(ClientId),
}

impl RegistryMessage {
    /// The client the message is about.
    pub fn client_id(&self) -> &ClientId {
        match self {
            RegistryMessage::Register(r) => &r.client_id,
            RegistryMessage::Deregister(id) => id,
        }
    }
}

/// A decoded registration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Registration {
    /// The validated client id, from the value.
    pub client_id: ClientId,
    /// `cluster_name` when the value had it as a string.
    pub cluster_name: Option<String>,
    /// Every field received, `client_id` included and unknown ones kept.
    pub fields: Map<String, Value>,
    /// The value was a fragment of a colon-split registration that could not be joined
    /// back: only `client_id` (and `cluster_name` when it directly followed) were
    /// salvaged, so `fields` is incomplete and should be merged into known metadata rather
    /// than replace it. A split record that joins back whole is an ordinary registration.
    pub recovered_from_split: bool,
}

/// The largest registration accepted. A registration carries a client's id and a few
/// lines of metadata (a 2.1.x chart's is under 200 bytes); every one is kept in memory and
/// returned by the API, so one of megabytes is an attack or a bug, never metadata.
pub const MAX_REGISTRATION_BYTES: usize = 16 * 1024;

/// Why a registry record could not be decoded.
#[derive(thiserror::Error, Debug)]
pub enum RegistryDecodeError {
    /// The value is larger than [`MAX_REGISTRATION_BYTES`].
    #[error("registry value is {size} bytes, more than the {limit} a registration may have")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The cap.
        limit: usize,
    },
    /// The value is empty or whitespace.
    #[error("registry value is empty")]
    EmptyValue,
    /// The value is not JSON.
    #[error("registry value is not json: {source}")]
    NotJson {
        /// What the JSON parser said.
        source: serde_json::Error,
    },
    /// A JSON value is followed by something other than whitespace.
    #[error("registry value has trailing data after the json value that ends at byte {offset}")]
    TrailingData {
        /// Where the JSON value ends.
        offset: usize,
    },
    /// The value is JSON but not an object.
    #[error("registry value is {found}, not a json object")]
    NotAnObject {
        /// What kind of JSON value it is ("an array", "a string", ...).
        found: &'static str,
    },
    /// The object has no string `client_id`.
    #[error("registry value has no string client_id (found {found})")]
    MissingClientId {
        /// What `client_id` held ("nothing", "null", "a number", ...).
        found: &'static str,
    },
    /// The `client_id` is not a valid client id.
    #[error("registry value has an invalid client_id: {source}")]
    InvalidClientId {
        /// The `client_id` as received.
        raw: String,
        /// Why it is invalid.
        source: InvalidClientId,
    },
    /// A tombstone without a key names no client.
    #[error("registry tombstone has no key, so it names no client to deregister")]
    TombstoneWithoutKey,
    /// A tombstone whose key is not a valid client id.
    #[error("registry tombstone key is not a client id: {source}")]
    InvalidTombstoneKey {
        /// The key, lossily decoded.
        key: String,
        /// Why it is invalid.
        source: InvalidClientId,
    },
    /// A registration split at its first colon from which no client id can be recovered.
    #[error(
        "registry record looks split at its first colon (key {key:?}) and no client id \
         can be recovered from it"
    )]
    UnrecoverableSplit {
        /// The key, lossily decoded and truncated.
        key: String,
    },
}

impl RegistryDecodeError {
    /// A short, stable label for metrics.
    pub fn reason_code(&self) -> &'static str {
        match self {
            RegistryDecodeError::TooLarge { .. } => "too_large",
            RegistryDecodeError::EmptyValue => "empty_value",
            RegistryDecodeError::NotJson { .. } => "not_json",
            RegistryDecodeError::TrailingData { .. } => "trailing_data",
            RegistryDecodeError::NotAnObject { .. } => "not_an_object",
            RegistryDecodeError::MissingClientId { .. } => "missing_client_id",
            RegistryDecodeError::InvalidClientId { .. } => "invalid_client_id",
            RegistryDecodeError::TombstoneWithoutKey
            | RegistryDecodeError::InvalidTombstoneKey { .. } => "bad_tombstone_key",
            RegistryDecodeError::UnrecoverableSplit { .. } => "unrecoverable_split",
        }
    }

    /// Whether a client id was found but is invalid (in the value or a tombstone's key),
    /// which the caller counts on a dedicated metric.
    pub fn invalid_client_id(&self) -> bool {
        matches!(
            self,
            RegistryDecodeError::InvalidClientId { .. }
                | RegistryDecodeError::InvalidTombstoneKey { .. }
        )
    }

    /// The underlying client id error, if any.
    pub fn client_id_error(&self) -> Option<&InvalidClientId> {
        match self {
            RegistryDecodeError::InvalidClientId { source, .. }
            | RegistryDecodeError::InvalidTombstoneKey { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Decodes one `cluster.registry` record. `value` is `None` for a Kafka null (tombstone).
pub fn decode_registry(
    key: Option<&[u8]>,
    value: Option<&[u8]>,
) -> Result<RegistryMessage, RegistryDecodeError> {
    let Some(value) = value else {
        return decode_tombstone(key);
    };
    if value.len() > MAX_REGISTRATION_BYTES {
        return Err(RegistryDecodeError::TooLarge {
            size: value.len(),
            limit: MAX_REGISTRATION_BYTES,
        });
    }
    // Checked before the split shape, which an empty value would otherwise also match.
    if value.iter().all(u8::is_ascii_whitespace) {
        return Err(RegistryDecodeError::EmptyValue);
    }
    if let Some(key) = key.filter(|k| is_split_shape(k, value)) {
        return decode_split(key, value);
    }
    let fields = parse_object(value).map_err(ObjectError::into_registry)?;
    registration_from_fields(fields, false).map(RegistryMessage::Register)
}

fn decode_tombstone(key: Option<&[u8]>) -> Result<RegistryMessage, RegistryDecodeError> {
    let key = key.ok_or(RegistryDecodeError::TombstoneWithoutKey)?;
    let key = String::from_utf8_lossy(key);
    ClientId::parse(&key)
        .map(RegistryMessage::Deregister)
        .map_err(|source| RegistryDecodeError::InvalidTombstoneKey {
            key: truncate(&key),
            source,
        })
}

fn registration_from_fields(
    fields: Map<String, Value>,
    recovered_from_split: bool,
) -> Result<Registration, RegistryDecodeError> {
    let raw = match fields.get("client_id") {
        Some(Value::String(s)) => s,
        other => {
            return Err(RegistryDecodeError::MissingClientId {
                found: json_kind(other),
            })
        }
    };
    let client_id =
        ClientId::parse(raw).map_err(|source| RegistryDecodeError::InvalidClientId {
            raw: raw.clone(),
            source,
        })?;
    let cluster_name = match fields.get("cluster_name") {
        Some(Value::String(s)) => Some(s.clone()),
        _ => None,
    };
    Ok(Registration {
        client_id,
        cluster_name,
        fields,
        recovered_from_split,
    })
}

/// The chart's split producer leaves the opening of the object in the key and the rest,
/// which cannot start an object of its own, in the value.
fn is_split_shape(key: &[u8], value: &[u8]) -> bool {
    trim_json_ws(key).first() == Some(&b'{') && trim_json_ws(value).first() != Some(&b'{')
}

fn decode_split(key: &[u8], value: &[u8]) -> Result<RegistryMessage, RegistryDecodeError> {
    // The producer cut the line at its first colon, so putting the colon back restores it
    // whenever nothing else went wrong.
    let mut joined = Vec::with_capacity(key.len() + 1 + value.len());
    joined.extend_from_slice(key);
    joined.push(b':');
    joined.extend_from_slice(value);
    if let Ok(fields) = parse_object(&joined) {
        tracing::debug!("joined a registry record that was split at its first colon");
        return registration_from_fields(fields, false).map(RegistryMessage::Register);
    }
    let unrecoverable = || RegistryDecodeError::UnrecoverableSplit {
        key: truncate(&String::from_utf8_lossy(key)),
    };
    // Only when the key is exactly the opening of a `client_id` member is the value's
    // leading string known to be the client id; any other key makes it a guess.
    if !key_opens_client_id(key) {
        return Err(unrecoverable());
    }
    let (raw, rest) = leading_string(value).ok_or_else(unrecoverable)?;
    let rest = trim_json_ws(rest);
    if !matches!(rest.first(), None | Some(b',') | Some(b'}')) {
        return Err(unrecoverable());
    }
    let client_id =
        ClientId::parse(&raw).map_err(|source| RegistryDecodeError::InvalidClientId {
            raw: raw.clone(),
            source,
        })?;
    let cluster_name = rest.strip_prefix(b",").and_then(following_cluster_name);
    let mut fields = Map::new();
    fields.insert("client_id".into(), Value::String(raw));
    if let Some(name) = &cluster_name {
        fields.insert("cluster_name".into(), Value::String(name.clone()));
    }
    Ok(RegistryMessage::Register(Registration {
        client_id,
        cluster_name,
        fields,
        recovered_from_split: true,
    }))
}

/// Whether the key is `{`, then the string `"client_id"`, then nothing (modulo whitespace).
fn key_opens_client_id(key: &[u8]) -> bool {
    let Some(after_brace) = trim_json_ws(key).strip_prefix(b"{") else {
        return false;
    };
    matches!(
        leading_string(after_brace),
        Some((name, rest)) if name == "client_id" && trim_json_ws(rest).is_empty()
    )
}

/// `"cluster_name":"<string>"` at the start of `bytes`, if that is what follows.
fn following_cluster_name(bytes: &[u8]) -> Option<String> {
    let (name, rest) = leading_string(bytes)?;
    if name != "cluster_name" {
        return None;
    }
    let rest = trim_json_ws(rest).strip_prefix(b":")?;
    let (value, rest) = leading_string(rest)?;
    matches!(trim_json_ws(rest).first(), None | Some(b',') | Some(b'}')).then_some(value)
}

/// One complete JSON string literal at the start of `bytes` (after whitespace), and what
/// follows it.
fn leading_string(bytes: &[u8]) -> Option<(String, &[u8])> {
    let bytes = trim_start_json_ws(bytes);
    if bytes.first() != Some(&b'"') {
        return None;
    }
    let mut stream = serde_json::Deserializer::from_slice(bytes).into_iter::<String>();
    match stream.next() {
        Some(Ok(s)) => Some((s, &bytes[stream.byte_offset()..])),
        _ => None,
    }
}

fn is_json_ws(b: &u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

fn trim_start_json_ws(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !is_json_ws(b))
        .unwrap_or(bytes.len());
    &bytes[start..]
}

fn trim_json_ws(bytes: &[u8]) -> &[u8] {
    let bytes = trim_start_json_ws(bytes);
    let end = bytes
        .iter()
        .rposition(|b| !is_json_ws(b))
        .map_or(0, |i| i + 1);
    &bytes[..end]
}

/// How much of a key an error message quotes.
const QUOTE_LIMIT: usize = 80;

fn truncate(s: &str) -> String {
    match s.char_indices().nth(QUOTE_LIMIT) {
        Some((cut, _)) => format!("{}…", &s[..cut]),
        None => s.to_owned(),
    }
}

/// The JSON kind of a value, for error messages.
pub(crate) fn json_kind(value: Option<&Value>) -> &'static str {
    match value {
        None => "nothing",
        Some(Value::Null) => "null",
        Some(Value::Bool(_)) => "a boolean",
        Some(Value::Number(_)) => "a number",
        Some(Value::String(_)) => "a string",
        Some(Value::Array(_)) => "an array",
        Some(Value::Object(_)) => "an object",
    }
}

/// Why bytes are not one JSON object; shared with the heartbeat decoder, which maps it to
/// its own error type.
#[derive(Debug)]
pub(crate) enum ObjectError {
    Empty,
    NotJson(serde_json::Error),
    TrailingData { offset: usize },
    NotAnObject { found: &'static str },
}

impl ObjectError {
    fn into_registry(self) -> RegistryDecodeError {
        match self {
            ObjectError::Empty => RegistryDecodeError::EmptyValue,
            ObjectError::NotJson(source) => RegistryDecodeError::NotJson { source },
            ObjectError::TrailingData { offset } => RegistryDecodeError::TrailingData { offset },
            ObjectError::NotAnObject { found } => RegistryDecodeError::NotAnObject { found },
        }
    }
}

/// Parses bytes that must hold exactly one JSON object, telling apart the ways they fail.
pub(crate) fn parse_object(bytes: &[u8]) -> Result<Map<String, Value>, ObjectError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ObjectError::Empty);
    }
    let mut stream = serde_json::Deserializer::from_slice(bytes).into_iter::<Value>();
    let value = match stream.next() {
        Some(Ok(value)) => value,
        Some(Err(e)) => return Err(ObjectError::NotJson(e)),
        // Only whitespace left, which the emptiness check above has already caught for
        // ASCII whitespace; keep a reason for the rest rather than assume.
        None => return Err(ObjectError::Empty),
    };
    let offset = stream.byte_offset();
    if !trim_start_json_ws(&bytes[offset..]).is_empty() {
        return Err(ObjectError::TrailingData { offset });
    }
    match value {
        Value::Object(fields) => Ok(fields),
        other => Err(ObjectError::NotAnObject {
            found: json_kind(Some(&other)),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHART: &str = r#"{"client_id":"af-9","cluster_name":"prod-eu","region":"unknown","timestamp":"2025-10-28T08:30:00Z","chart_version":"2.1.2"}"#;
    const WITH_METADATA: &str = r#"{"client_id":"af-9","cluster_name":"af-9","version":"2.1.0","registered_at":"2025-10-28T08:30:00Z","metadata":{"namespace":"observability","release_name":"kg","chart_version":"2.1.0"}}"#;
    const TEST_CLIENT: &str =
        r#"{"client_id":"test-client-001","cluster_name":"test-cluster","k8s_version":"1.28"}"#;

    fn register(key: Option<&str>, value: &str) -> Registration {
        match decode_registry(key.map(str::as_bytes), Some(value.as_bytes())) {
            Ok(RegistryMessage::Register(r)) => r,
            other => panic!("expected a registration, got {other:?}"),
        }
    }

    fn error(key: Option<&str>, value: Option<&[u8]>) -> RegistryDecodeError {
        decode_registry(key.map(str::as_bytes), value).unwrap_err()
    }

    #[test]
    fn a_registration_over_the_cap_is_refused_before_it_is_parsed() {
        let padding = "x".repeat(MAX_REGISTRATION_BYTES);
        let value = format!(r#"{{"client_id":"af-9","padding":"{padding}"}}"#);
        let err = error(Some("af-9"), Some(value.as_bytes()));
        assert_eq!(err.reason_code(), "too_large");
        assert!(err.to_string().contains(&value.len().to_string()), "{err}");
        // At the cap it is still a registration.
        let padding = "x".repeat(MAX_REGISTRATION_BYTES - 40);
        let value = format!(r#"{{"client_id":"af-9","p":"{padding}"}}"#);
        assert!(value.len() <= MAX_REGISTRATION_BYTES);
        assert_eq!(register(Some("af-9"), &value).client_id.as_str(), "af-9");
    }

    #[test]
    fn chart_registration_is_decoded_with_all_fields() {
        let r = register(Some("af-9"), CHART);
        assert_eq!(r.client_id, "af-9");
        assert_eq!(r.cluster_name.as_deref(), Some("prod-eu"));
        assert_eq!(r.fields["chart_version"], "2.1.2");
        assert_eq!(r.fields["region"], "unknown");
        assert_eq!(r.fields.len(), 5);
        assert!(!r.recovered_from_split);
    }

    #[test]
    fn registration_with_metadata_keeps_unknown_fields() {
        let r = register(Some("af-9"), WITH_METADATA);
        assert_eq!(r.client_id, "af-9");
        assert_eq!(r.cluster_name.as_deref(), Some("af-9"));
        assert_eq!(r.fields["metadata"]["release_name"], "kg");
        assert_eq!(r.fields["version"], "2.1.0");
    }

    #[test]
    fn test_client_registration_needs_only_client_id() {
        let r = register(Some("test-client-001"), TEST_CLIENT);
        assert_eq!(r.client_id, "test-client-001");
        assert_eq!(r.cluster_name.as_deref(), Some("test-cluster"));
        assert_eq!(r.fields["k8s_version"], "1.28");
        let minimal = register(None, r#"{"client_id":"af-9"}"#);
        assert_eq!(minimal.cluster_name, None);
    }

    #[test]
    fn the_key_is_ignored_in_favour_of_the_value() {
        assert_eq!(register(Some("other"), CHART).client_id, "af-9");
        assert_eq!(register(Some("NOT VALID"), CHART).client_id, "af-9");
    }

    #[test]
    fn tombstone_deregisters_the_client_named_by_the_key() {
        let msg = decode_registry(Some(b"af-9"), None).unwrap();
        assert_eq!(
            msg,
            RegistryMessage::Deregister(ClientId::parse("af-9").unwrap())
        );
        assert_eq!(msg.client_id(), "af-9");
    }

    #[test]
    fn tombstone_with_an_invalid_key_is_an_invalid_client_id() {
        let err = error(Some("AF_9"), None);
        assert_eq!(err.reason_code(), "bad_tombstone_key");
        assert!(err.invalid_client_id());
        assert_eq!(
            err.client_id_error().unwrap().reason_code(),
            "bad_character"
        );
        assert!(err.to_string().contains("\"AF_9\""), "{err}");
        let err = error(None, None);
        assert_eq!(err.reason_code(), "bad_tombstone_key");
        assert!(!err.invalid_client_id());
    }

    #[test]
    fn colon_split_registration_is_joined_back_whole() {
        let (key, value) = CHART.split_once(':').unwrap();
        assert_eq!(key, r#"{"client_id""#);
        assert!(value.starts_with(r#""af-9","cluster_name":"#));
        let r = register(Some(key), value);
        assert_eq!(r, register(Some("af-9"), CHART));
        assert!(!r.recovered_from_split);
    }

    #[test]
    fn colon_split_registration_recovers_client_id() {
        // A fragment that no longer joins into an object: truncated after the name.
        let r = register(
            Some(r#"{"client_id""#),
            r#""af-9","cluster_name":"af-9","regi"#,
        );
        assert_eq!(r.client_id, "af-9");
        assert_eq!(r.cluster_name.as_deref(), Some("af-9"));
        assert!(r.recovered_from_split);
        assert_eq!(r.fields.len(), 2);

        let r = register(Some(r#"{"client_id""#), r#""af-9","region":"#);
        assert_eq!((r.client_id.as_str(), r.cluster_name), ("af-9", None));
        let r = register(Some(r#"{ "client_id" "#), r#" "af-9"} trailing"#);
        assert_eq!(r.client_id, "af-9");
        assert!(r.recovered_from_split);
    }

    #[test]
    fn colon_split_with_an_ambiguous_leading_string_is_unrecoverable() {
        for (key, value) in [
            (r#"{"client_id""#, r#""af-9"#),
            (r#"{"client_id""#, r#""af-9" x"#),
            (r#"{"client_id""#, "af-9,"),
            (r#"{"cluster_name""#, r#""af-9","#),
            ("{", r#""af-9","#),
        ] {
            let err = error(Some(key), Some(value.as_bytes()));
            assert_eq!(err.reason_code(), "unrecoverable_split", "{key} / {value}");
            assert!(!err.invalid_client_id());
        }
    }

    #[test]
    fn colon_split_with_an_invalid_client_id_is_an_invalid_client_id() {
        let err = error(Some(r#"{"client_id""#), Some(br#""Af 9","x":"#));
        assert_eq!(err.reason_code(), "invalid_client_id");
        assert!(err.invalid_client_id());
    }

    #[test]
    fn empty_value_is_skipped_with_a_reason() {
        for value in [&b""[..], b"  \n"] {
            let err = error(Some("af-9"), Some(value));
            assert_eq!(err.reason_code(), "empty_value");
            assert_eq!(err.to_string(), "registry value is empty");
            let err = error(Some(r#"{"client_id""#), Some(value));
            assert_eq!(err.reason_code(), "empty_value");
        }
    }

    #[test]
    fn non_json_value_is_skipped_with_a_reason() {
        for value in [
            &b"af-9"[..],
            b"client_id=af-9",
            b"{\"client_id\":",
            b"\xff\xfe",
        ] {
            let err = error(Some("af-9"), Some(value));
            assert_eq!(err.reason_code(), "not_json", "{err}");
            assert!(err.to_string().starts_with("registry value is not json: "));
        }
    }

    #[test]
    fn json_with_trailing_data_is_skipped_with_a_reason() {
        let value = format!("{CHART}\n{CHART}");
        let err = error(Some("af-9"), Some(value.as_bytes()));
        assert_eq!(err.reason_code(), "trailing_data");
        assert!(
            matches!(err, RegistryDecodeError::TrailingData { offset } if offset == CHART.len())
        );
        let ok = format!("  {CHART} \r\n");
        assert_eq!(register(Some("af-9"), &ok).client_id, "af-9");
    }

    #[test]
    fn json_that_is_not_an_object_is_skipped_with_a_reason() {
        for (value, found) in [
            ("[1]", "an array"),
            ("\"af-9\"", "a string"),
            ("null", "null"),
        ] {
            let err = error(Some("af-9"), Some(value.as_bytes()));
            assert_eq!(err.reason_code(), "not_an_object");
            assert_eq!(
                err.to_string(),
                format!("registry value is {found}, not a json object")
            );
        }
    }

    #[test]
    fn object_without_a_string_client_id_is_skipped_with_a_reason() {
        for (value, found) in [
            (r#"{"cluster_name":"x"}"#, "nothing"),
            (r#"{"client_id":9}"#, "a number"),
            (r#"{"client_id":null}"#, "null"),
        ] {
            let err = error(Some("af-9"), Some(value.as_bytes()));
            assert_eq!(err.reason_code(), "missing_client_id");
            assert!(err.to_string().contains(found), "{err}");
        }
    }

    #[test]
    fn invalid_client_id_in_the_value_carries_the_raw_id() {
        let err = error(Some("af-9"), Some(br#"{"client_id":"../AF-9"}"#));
        assert_eq!(err.reason_code(), "invalid_client_id");
        assert!(err.invalid_client_id());
        match err {
            RegistryDecodeError::InvalidClientId { raw, source } => {
                assert_eq!(raw, "../AF-9");
                assert_eq!(source.reason_code(), "bad_character");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn deeply_nested_json_is_an_error_not_a_crash() {
        let value = "[".repeat(10_000);
        let err = error(Some("af-9"), Some(value.as_bytes()));
        assert_eq!(err.reason_code(), "not_json");
    }
}
