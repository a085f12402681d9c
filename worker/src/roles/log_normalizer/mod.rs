//! The log normalizer (`--role log-normalizer`, one per client): consumes `raw.k8s.logs`
//! and produces `logs.normalized`, one normalized log line per record of its client; a
//! record it cannot normalize goes to `dlq.normalized`.
//!
//! Files: this one is the role (its [`LogNormalizer`] handler: whose record it is, from
//! the key or else the body, and what goes where); [`normalize`] is the pure transform
//! (log shipper record → [`NormalizedLog`]); `tests.rs` pins it.
//!
//! [`NormalizedLog`]: kg_shared::records::NormalizedLog

pub mod normalize;
#[cfg(test)]
mod tests;

use kg_shared::keys::log_output_key;
use kg_shared::topics::LOGS_NORMALIZED;
use kg_shared::{ClientId, Role};

use self::normalize::{log_tenant_from_body, normalize_log};
use super::{key_ownership, null_value, Outcome, RecordHandler};

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
                    value: crate::roles::normalize_common::to_json(&log),
                }
            }
            Err(error) => Outcome::DeadLetter {
                reason_code: error.reason_code(),
                reason: error.to_string(),
            },
        }
    }
}
