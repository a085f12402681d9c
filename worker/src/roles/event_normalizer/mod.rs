//! The event normalizer (`--role event-normalizer`, one per client): consumes
//! `raw.k8s.events` and produces `events.normalized`, one normalized event per raw Event
//! keyed for its client; a record it cannot normalize goes to `dlq.normalized`.
//!
//! Files: this one is the role (its [`EventNormalizer`] handler: whose record it is, and
//! what goes where); [`normalize`] is the pure transform (raw Event → [`NormalizedEvent`]);
//! `tests.rs` pins it.
//!
//! [`NormalizedEvent`]: kg_shared::records::NormalizedEvent

pub mod normalize;
#[cfg(test)]
mod tests;

use kg_shared::keys::event_output_key;
use kg_shared::topics::EVENTS_NORMALIZED;
use kg_shared::{ClientId, Role};

use self::normalize::normalize_event;
use super::{null_value, skip_unless_keyed_for, Outcome, RecordHandler};

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
                value: crate::roles::normalize_common::to_json(&event),
            },
            Err(error) => Outcome::DeadLetter {
                reason_code: error.reason_code(),
                reason: error.to_string(),
            },
        }
    }
}
