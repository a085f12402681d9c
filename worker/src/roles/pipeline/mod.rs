//! The pipeline role (issue 14; not a `Role` yet): an operator-defined chain of stages
//! (`kg_shared::pipeline_template`) run per record. So far the pure part: bytes in, a
//! record or a rejection out. The Kafka side will be `crate::pipeline`'s at-least-once
//! loop, as for the normalizers. `flatten.rs`, `validate.rs` and `enrich.rs` are the
//! stages, one concern each.

mod enrich;
mod flatten;
mod validate;

use chrono::{DateTime, Utc};
use kg_shared::pipeline_template::{PipelineTemplate, Stage};
use kg_shared::ClientId;
use serde_json::{Map, Value};

pub use validate::Violation;

/// A record between stages: a flat JSON object.
pub type Record = Map<String, Value>;

/// Why a record leaves the pipeline without reaching the sink. Each is permanent: the
/// same input would fail the same way, so it goes to the dead-letter topic, not a retry.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Rejection {
    #[error("not JSON: {0}")]
    Undecodable(String),
    #[error("not a JSON object")]
    NotAnObject,
    #[error("failed validation: {}", describe(.0))]
    Invalid(Vec<Violation>),
}

impl Rejection {
    /// The dead letter's reason code.
    pub fn reason_code(&self) -> &'static str {
        match self {
            Rejection::Undecodable(_) => "undecodable",
            Rejection::NotAnObject => "not_an_object",
            Rejection::Invalid(_) => "validation_failed",
        }
    }
}

fn describe(violations: &[Violation]) -> String {
    violations
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// One pipeline's stages, for one client.
#[derive(Debug, Clone)]
pub struct Stages {
    stages: Vec<Stage>,
    client: ClientId,
}

impl Stages {
    pub fn new(template: &PipelineTemplate, client: ClientId) -> Self {
        Self {
            stages: template.stages.clone(),
            client,
        }
    }

    /// Runs every stage over one input record, at `now`.
    pub fn process(&self, input: &[u8], now: DateTime<Utc>) -> Result<Record, Rejection> {
        let value: Value = serde_json::from_slice(input)
            .map_err(|error| Rejection::Undecodable(error.to_string()))?;
        let Value::Object(mut record) = value else {
            return Err(Rejection::NotAnObject);
        };
        let mut validated = false;
        for stage in &self.stages {
            match stage {
                Stage::Flatten(spec) => record = flatten::flatten(&record, spec),
                Stage::Validate(spec) => {
                    let violations = validate::validate(&record, spec, now);
                    if !violations.is_empty() {
                        return Err(Rejection::Invalid(violations));
                    }
                    validated = true;
                }
                Stage::Enrich(spec) => {
                    enrich::enrich(&mut record, spec, &self.client, now, validated)
                }
            }
        }
        Ok(record)
    }
}

#[cfg(test)]
mod tests;
