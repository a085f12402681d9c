//! What each role does with one input record, as a pure decision: skip it (another
//! tenant's, or nobody's), produce a normalized record, or dead-letter it. Kafka stays in
//! [`crate::pipeline`].

use kg_shared::keys::{event_output_key, key_belongs_to, log_output_key, parse_key};
use kg_shared::topics::{EVENTS_NORMALIZED, LOGS_NORMALIZED};
use kg_shared::{ClientId, Role};

use crate::normalize::{log_tenant_from_body, normalize_event, normalize_log};

/// The decision for one record.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// Keyed for another tenant: skipped on the key bytes alone.
    Foreign,
    /// No tenant can be read from it: counted, never claimed.
    Unattributed,
    /// Ours, normalized: produce `value` to `topic` under `key`.
    Produce {
        topic: &'static str,
        key: String,
        value: Vec<u8>,
    },
    /// Ours, but it cannot be normalized.
    DeadLetter {
        reason_code: &'static str,
        reason: String,
    },
    /// Ours, taken into the handler's own batch, written by [`RecordHandler::flush`].
    Absorbed,
    /// Ours, valid, and nothing to do with it (a low-signal log line for the graph).
    Ignored,
}

/// One role's record handling.
pub trait RecordHandler: Send + Sync + 'static {
    /// The topics this role consumes.
    fn input_topics(&self) -> &'static [&'static str];
    /// Decides what to do with one record of `topic` (`timestamp_ms`: the Kafka record's
    /// timestamp, for records that carry no time of their own).
    fn handle(
        &self,
        topic: &str,
        timestamp_ms: Option<i64>,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
    ) -> Outcome;

    /// Writes what the batch absorbed; called before the batch's offsets are committed,
    /// and again (with the same contents) after a failure, so it must be idempotent.
    fn flush(&self) -> Result<(), FlushError> {
        Ok(())
    }
}

/// Why a handler could not write what its batch absorbed; the batch is not committed and
/// the write is tried again.
#[derive(Debug, thiserror::Error)]
pub enum FlushError {
    /// The graph builder's store refused the batch.
    #[error(transparent)]
    Store(#[from] crate::graph::StoreError),
}

/// The handler of a normalizer role serving `client`; None for roles with state of their
/// own (the graph builder), which [`crate::run`] builds.
pub fn normalizer_for(role: Role, client: ClientId) -> Option<Box<dyn RecordHandler>> {
    match role {
        Role::EventNormalizer => Some(Box::new(EventNormalizer { client })),
        Role::LogNormalizer => Some(Box::new(LogNormalizer { client })),
        Role::GraphBuilder | Role::EventAttributor => None,
    }
}

/// The no-op ceiling of a normalizer role (`--passthrough`, benchmarks only): every input
/// record goes out unchanged, key and value, to the role's output topic. Same consumer,
/// producer, batches and commits as the real role; only the processing is missing.
pub struct Passthrough {
    pub input: &'static [&'static str],
    pub output: &'static str,
}

impl Passthrough {
    /// The pass-through of a normalizer role; None for the graph builder, which writes no
    /// topic.
    pub fn for_role(role: Role) -> Option<Self> {
        let output = match role {
            Role::EventNormalizer => EVENTS_NORMALIZED,
            Role::LogNormalizer => LOGS_NORMALIZED,
            Role::GraphBuilder | Role::EventAttributor => return None,
        };
        Some(Self {
            input: role.input_topics(),
            output,
        })
    }
}

impl RecordHandler for Passthrough {
    fn input_topics(&self) -> &'static [&'static str] {
        self.input
    }

    fn handle(
        &self,
        _topic: &str,
        _timestamp_ms: Option<i64>,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
    ) -> Outcome {
        Outcome::Produce {
            topic: self.output,
            key: String::from_utf8_lossy(key.unwrap_or_default()).into_owned(),
            value: value.unwrap_or_default().to_vec(),
        }
    }
}

/// Where a record's tenant comes from its key: ours, another's, or none at all.
pub(crate) fn key_ownership(key: Option<&[u8]>, client: &ClientId) -> Option<bool> {
    let key = key?;
    if key_belongs_to(key, client) {
        return Some(true);
    }
    parse_key(key).map(|_| false)
}

/// For roles whose tenant comes from the key alone: the outcome of a record that is not
/// this client's (another tenant's, or nobody's), or None when it is ours.
pub(crate) fn skip_unless_keyed_for(key: Option<&[u8]>, client: &ClientId) -> Option<Outcome> {
    match key_ownership(key, client) {
        None => Some(Outcome::Unattributed),
        Some(false) => Some(Outcome::Foreign),
        Some(true) => None,
    }
}

fn null_value() -> Outcome {
    Outcome::DeadLetter {
        reason_code: "null_value",
        reason: "record has a null value".into(),
    }
}

/// raw.k8s.events → events.normalized, keyed `<id>::<event_id>`.
pub struct EventNormalizer {
    pub client: ClientId,
}

impl RecordHandler for EventNormalizer {
    fn input_topics(&self) -> &'static [&'static str] {
        Role::EventNormalizer.input_topics()
    }

    fn handle(
        &self,
        _topic: &str,
        _timestamp_ms: Option<i64>,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
    ) -> Outcome {
        if let Some(skipped) = skip_unless_keyed_for(key, &self.client) {
            return skipped;
        }
        let Some(value) = value else {
            return null_value();
        };
        match normalize_event(&self.client, value) {
            Ok(event) => Outcome::Produce {
                topic: EVENTS_NORMALIZED,
                key: event_output_key(&self.client, &event.event_id),
                value: crate::normalize::to_json(&event),
            },
            Err(error) => Outcome::DeadLetter {
                reason_code: error.reason_code(),
                reason: error.to_string(),
            },
        }
    }
}

/// raw.k8s.logs → logs.normalized, keyed `<id>::<pod uid>` (or the log id when the pod is
/// unknown). Vector's raw records carry no key; their tenant is the body's `client_id`.
pub struct LogNormalizer {
    pub client: ClientId,
}

impl RecordHandler for LogNormalizer {
    fn input_topics(&self) -> &'static [&'static str] {
        Role::LogNormalizer.input_topics()
    }

    fn handle(
        &self,
        _topic: &str,
        _timestamp_ms: Option<i64>,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
    ) -> Outcome {
        match key_ownership(key, &self.client) {
            Some(false) => return Outcome::Foreign,
            Some(true) => {}
            None => {
                // Unkeyed (or tenant-less) records are only ours if the body says so; this
                // parses one field, and only for records the key could not attribute.
                match value.and_then(log_tenant_from_body) {
                    Some(tenant) if tenant == self.client => {}
                    Some(_) => return Outcome::Foreign,
                    None => return Outcome::Unattributed,
                }
            }
        }
        let Some(value) = value else {
            return null_value();
        };
        match normalize_log(&self.client, value) {
            Ok(log) => {
                let id = log
                    .pod_uid
                    .as_deref()
                    .filter(|uid| !uid.is_empty())
                    .unwrap_or(&log.log_id);
                Outcome::Produce {
                    topic: LOGS_NORMALIZED,
                    key: log_output_key(&self.client, id),
                    value: crate::normalize::to_json(&log),
                }
            }
            Err(error) => Outcome::DeadLetter {
                reason_code: error.reason_code(),
                reason: error.to_string(),
            },
        }
    }
}
