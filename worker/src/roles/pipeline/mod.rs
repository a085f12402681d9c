//! The pipeline role (`--role pipeline --pipeline NAME --pipelines-file FILE`, one per
//! pipeline and client): consumes the template's input topics and produces its output
//! topic, each record of this client (keyed `<client>::…`, key kept) through the
//! template's stages (`kg_shared::pipeline_template`); a record a stage rejects goes to
//! `dlq.normalized` with the reason, never retried (the same input would fail the same
//! way). Kafka is `crate::pipeline`'s at-least-once loop, as for the normalizers.
//!
//! Files: this one is the role ([`PipelineHandler`], and [`Stages`], bytes in, a record or
//! a rejection out); `flatten.rs`, `validate.rs` and `enrich.rs` are the stages, pure, one
//! concern each; `tests.rs` runs the shipped example template.

mod enrich;
mod flatten;
mod validate;

use chrono::{DateTime, Utc};
use kg_shared::pipeline_template::{PipelineTemplate, PipelineTemplates, Stage};
use kg_shared::ClientId;
use serde_json::{Map, Value};

use super::{null_value, skip_unless_keyed_for, Outcome, RecordHandler};
use crate::config::WorkerConfig;
use crate::WorkerError;

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

/// The template of the pipeline `config` names (`--pipeline`), from its templates file.
pub fn template_of(config: &WorkerConfig) -> Result<PipelineTemplate, WorkerError> {
    let Some(name) = &config.pipeline else {
        return Err(WorkerError::NoPipeline);
    };
    let (templates, file) = match (&config.pipelines_toml, &config.pipelines_file) {
        (Some(text), _) => {
            let file = std::path::PathBuf::from("WORKER_PIPELINES_TOML");
            (PipelineTemplates::parse(text, &file)?, file)
        }
        (None, Some(file)) => (PipelineTemplates::load(file)?, file.clone()),
        (None, None) => return Err(WorkerError::NoPipeline),
    };
    templates
        .pipelines
        .into_iter()
        .find(|template| template.name == *name)
        .ok_or_else(|| WorkerError::UnknownPipeline {
            name: name.clone(),
            file,
        })
}

/// One pipeline for one client: the record handler the at-least-once loop drives.
pub struct PipelineHandler {
    stages: Stages,
    input: &'static [&'static str],
    output: &'static str,
}

impl PipelineHandler {
    pub fn new(template: &PipelineTemplate, client: ClientId) -> Self {
        // The loop asks for `'static` topic names (the built-in roles' are constants);
        // a pipeline's are read once at start and live as long as the process, so they
        // are leaked once, not per record.
        let input: Vec<&'static str> = template
            .input
            .iter()
            .map(|topic| &*Box::leak(topic.clone().into_boxed_str()))
            .collect();
        Self {
            stages: Stages::new(template, client),
            input: Box::leak(input.into_boxed_slice()),
            output: Box::leak(template.output.clone().into_boxed_str()),
        }
    }
}

impl PipelineHandler {
    /// The no-op ceiling on this pipeline's topics (`--passthrough`, benchmarks only).
    pub fn passthrough(&self) -> super::Passthrough {
        super::Passthrough {
            input: self.input,
            output: self.output,
        }
    }
}

impl RecordHandler for PipelineHandler {
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
        if let Some(skipped) = skip_unless_keyed_for(key, &self.stages.client) {
            return skipped;
        }
        let Some(value) = value else {
            return null_value();
        };
        match self.stages.process(value, Utc::now()) {
            Ok(record) => Outcome::Produce {
                topic: self.output,
                key: String::from_utf8_lossy(key.unwrap_or_default()).into_owned(),
                value: serde_json::to_vec(&record).unwrap_or_default(),
            },
            Err(rejection) => Outcome::DeadLetter {
                reason_code: rejection.reason_code(),
                reason: rejection.to_string(),
            },
        }
    }
}

#[cfg(test)]
mod tests;
