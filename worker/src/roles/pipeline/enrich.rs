//! The enrich stage's processing metadata (seed 004): when the record was processed, by
//! which processor, and whether it was validated on the way.

use chrono::{DateTime, SecondsFormat, Utc};
use kg_shared::pipeline_template::Enrich;
use kg_shared::ClientId;
use serde_json::Value;

use super::Record;

pub fn enrich(
    record: &mut Record,
    spec: &Enrich,
    client: &ClientId,
    now: DateTime<Utc>,
    validated: bool,
) {
    record.insert(
        "processed_at".into(),
        Value::String(now.to_rfc3339_opts(SecondsFormat::Millis, true)),
    );
    record.insert(
        "processor_id".into(),
        Value::String(spec.processor_id.replace("{client}", client.as_str())),
    );
    let status = if validated { "valid" } else { "unchecked" };
    record.insert("validation_status".into(), Value::String(status.into()));
}
