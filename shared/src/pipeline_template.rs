//! Pipeline templates: the operator-written TOML file that names each pipeline, what it
//! reads and writes, and its stages in order. The control plane reads it at start (and
//! refuses to start on an error); each pipeline worker reads the same file and runs its
//! own template. Errors name the file, the line, the column and the field, because an
//! operator fixes them by hand:
//!
//! ```toml
//! [[pipeline]]
//! name = "traffic-flatten"
//! input = ["traffic-raw"]
//! output = "traffic-events"
//!
//! [[pipeline.stage]]
//! kind = "flatten"
//! fields = { speed = "traffic_data.speed_mph", highway = "location.highway" }
//!
//! [[pipeline.stage]]
//! kind = "validate"
//! required = ["speed", "highway"]
//! ranges = { speed = { min = 0, max = 120 } }
//!
//! [[pipeline.stage]]
//! kind = "enrich"
//! processor_id = "stream-processor-{client}"
//! ```

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;

mod delay;
mod graph;
mod retry;
mod split;

pub use delay::{Delay, EndWhen, StateCheck};
pub use graph::{GraphLookup, OnUnavailable, MAX_LOOKUP_ITEMS};
pub use retry::{RetryLadder, MAX_RUNGS};
pub use split::{Split, MAX_SPLIT};

/// The longest pipeline name, so that worker names (`kg-pipeline-<name>.<client>`) stay
/// short enough to read and type in `docker logs`.
pub const MAX_NAME_LEN: usize = 20;

/// Every pipeline an operator defined.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PipelineTemplates {
    pub pipelines: Vec<PipelineTemplate>,
}

/// One pipeline: inputs, stages in order, and the output its records are sunk to.
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineTemplate {
    /// Lowercase letters, digits and '-': part of the container and consumer group names.
    pub name: String,
    /// The topics it consumes (records keyed `<client>::…`; other clients' are skipped).
    pub input: Vec<String>,
    /// The topic it produces to, keyed `<client>::…`.
    pub output: String,
    /// Run for every client, unless the operator configures otherwise.
    pub default: bool,
    /// A client's registration may ask for it (`"pipelines": ["<name>"]`): the operator's
    /// allowlist. A pipeline neither default nor requestable runs for no client.
    pub requestable: bool,
    pub stages: Vec<Stage>,
    /// How long a record whose stage failed for a while waits before each new attempt.
    pub retry: RetryLadder,
    /// Its own text in the file, from its `[[pipeline]]` header to the next: a templates
    /// file of this pipeline alone, which the control plane hands to its workers (so a
    /// change to another pipeline does not touch this one's workers).
    pub source: String,
}

/// A pipeline as the file has it: each stage a table whose `kind` picks its shape. The
/// stages are read in a second step, one at a time, so an error inside one can name its
/// field (serde's tagged enums buffer a table and forget where they were in it).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTemplate {
    name: toml::Spanned<String>,
    input: Vec<String>,
    output: String,
    #[serde(default)]
    default: bool,
    #[serde(default)]
    requestable: bool,
    #[serde(default)]
    retry: RetryLadder,
    #[serde(default, rename = "stage")]
    stages: Vec<toml::Table>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTemplates {
    #[serde(default, rename = "pipeline")]
    pipelines: Vec<RawTemplate>,
}

/// One stage of a pipeline.
#[derive(Debug, Clone, PartialEq)]
pub enum Stage {
    /// One record per element of a list field (at most one per pipeline, before a delay).
    Split(Split),
    Flatten(Flatten),
    Validate(Validate),
    Enrich(Enrich),
    /// Lookups in the client's graph.
    Graph(GraphLookup),
    /// Holds records until a due time, re-checking a state topic (at most one per pipeline).
    Delay(Delay),
}

/// Nested objects into flat fields: each output field from a dotted path of the input
/// (`speed = "traffic_data.speed_mph"`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Flatten {
    pub fields: BTreeMap<String, String>,
    /// Keep the input's top-level scalar fields that no mapping names.
    #[serde(default)]
    pub keep_unmapped: bool,
}

/// Checks on the flat record; a record that fails one is dead-lettered with the reasons,
/// never retried.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Validate {
    #[serde(default)]
    pub required: Vec<String>,
    #[serde(default)]
    pub types: BTreeMap<String, FieldType>,
    #[serde(default)]
    pub ranges: BTreeMap<String, NumberRange>,
    #[serde(default)]
    pub timestamp: Option<TimestampRule>,
}

impl Validate {
    /// Ranges a number can fall in: no `nan` bound (it would turn the check off), and a
    /// minimum not above the maximum.
    fn checked(self) -> Result<Self, (String, String)> {
        for (field, range) in &self.ranges {
            for (which, bound) in [("min", range.min), ("max", range.max)] {
                if bound.is_some_and(f64::is_nan) {
                    return Err((format!("ranges.{field}.{which}"), "nan is no bound".into()));
                }
            }
            if let (Some(min), Some(max)) = (range.min, range.max) {
                if min > max {
                    return Err((
                        format!("ranges.{field}"),
                        format!("min {min} is above max {max}: nothing would pass"),
                    ));
                }
            }
        }
        Ok(self)
    }
}

/// Processing metadata: `processed_at`, `processor_id` (`{client}` is replaced by the
/// client id) and `validation_status`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Enrich {
    pub processor_id: String,
}

/// The stage kinds, as `kind` names them.
pub const STAGE_KINDS: &[&str] = &["split", "flatten", "validate", "enrich", "graph", "delay"];

impl Stage {
    pub fn kind(&self) -> &'static str {
        match self {
            Stage::Split(_) => "split",
            Stage::Flatten(_) => "flatten",
            Stage::Validate(_) => "validate",
            Stage::Enrich(_) => "enrich",
            Stage::Graph(_) => "graph",
            Stage::Delay(_) => "delay",
        }
    }

    /// A stage from its table; the error's path is within the table.
    fn from_table(mut table: toml::Table, output: &str) -> Result<Self, (String, String)> {
        let kind = match table.remove("kind") {
            Some(toml::Value::String(kind)) => kind,
            Some(other) => {
                return Err((
                    "kind".into(),
                    format!("a string is required, not {}", other.type_str()),
                ))
            }
            None => return Err(("kind".into(), format!("missing; one of {STAGE_KINDS:?}"))),
        };
        fn read<T: serde::de::DeserializeOwned>(table: toml::Table) -> Result<T, (String, String)> {
            serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|error| {
                (
                    error.path().to_string(),
                    error.into_inner().message().to_string(),
                )
            })
        }
        match kind.as_str() {
            "split" => read::<Split>(table)
                .and_then(Split::checked)
                .map(Stage::Split),
            "flatten" => read(table).map(Stage::Flatten),
            "validate" => read::<Validate>(table)
                .and_then(Validate::checked)
                .map(Stage::Validate),
            "enrich" => read(table).map(Stage::Enrich),
            "graph" => read::<GraphLookup>(table)
                .and_then(GraphLookup::checked)
                .map(Stage::Graph),
            "delay" => read::<Delay>(table)
                .and_then(|delay| delay.checked(output))
                .map(Stage::Delay),
            other => Err((
                "kind".into(),
                format!("unknown stage kind {other:?}; one of {STAGE_KINDS:?}"),
            )),
        }
    }
}

/// `stage` after `earlier`: one delay and one split at most, and no split after a delay
/// (a held record is one record).
fn in_order(stage: Stage, earlier: &[Stage]) -> Result<Stage, (String, String)> {
    let has = |kind: &str| earlier.iter().any(|s| s.kind() == kind);
    match &stage {
        Stage::Delay(_) if has("delay") => Err((
            "kind".into(),
            "a pipeline holds records in one delay stage at most".into(),
        )),
        Stage::Split(_) if has("split") => Err((
            "kind".into(),
            "a pipeline splits records once at most".into(),
        )),
        Stage::Split(_) if has("delay") => Err((
            "kind".into(),
            "a split must come before the delay stage: a held record is one record".into(),
        )),
        _ => Ok(stage),
    }
}

/// A field's JSON type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FieldType {
    String,
    Number,
    Integer,
    Boolean,
    Object,
    Array,
}

/// Inclusive bounds of a numeric field; either may be absent.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NumberRange {
    pub min: Option<f64>,
    pub max: Option<f64>,
}

/// A timestamp field (RFC 3339, or milliseconds since the epoch) that may be neither in
/// the future (beyond `max_skew_secs`) nor older than `max_age_secs`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimestampRule {
    pub field: String,
    pub max_age_secs: u64,
    #[serde(default)]
    pub max_skew_secs: u64,
}

/// Why a templates file was refused: where, which field, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}:{line}:{column}: {field}: {message}", file.display())]
pub struct TemplateError {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    /// The field's path, e.g. `pipeline[0].stage[1].ranges.speed.min`.
    pub field: String,
    pub message: String,
}

impl PipelineTemplates {
    /// Reads and checks the templates file at `path`.
    pub fn load(path: &Path) -> Result<Self, TemplateError> {
        let text = std::fs::read_to_string(path).map_err(|error| TemplateError {
            file: path.to_path_buf(),
            line: 0,
            column: 0,
            field: String::new(),
            message: format!("cannot read it: {error}"),
        })?;
        Self::parse(&text, path)
    }

    /// Parses and checks `text`; `file` names it in errors.
    pub fn parse(text: &str, file: &Path) -> Result<Self, TemplateError> {
        let at = |span: Option<Range<usize>>, field: String, message: String| {
            let (line, column) = span.map_or((0, 0), |span| line_and_column(text, span.start));
            TemplateError {
                file: file.to_path_buf(),
                line,
                column,
                field,
                message,
            }
        };
        let deserializer = toml::Deserializer::new(text);
        let raw: RawTemplates =
            serde_path_to_error::deserialize(deserializer).map_err(|error| {
                // `toml::Spanned` reads its value through a private field: not the
                // operator's to see.
                let field = error
                    .path()
                    .to_string()
                    .replace(".$__serde_spanned_private_value", "");
                // serde_path_to_error writes the empty path (the file itself) as ".".
                let field = if field == "." { String::new() } else { field };
                let inner = error.into_inner();
                at(inner.span(), field, inner.message().to_string())
            })?;
        let mut pipelines = Vec::with_capacity(raw.pipelines.len());
        for (n, pipeline) in raw.pipelines.into_iter().enumerate() {
            check(&pipeline, &pipelines).map_err(|(field, message)| {
                at(
                    Some(pipeline.name.span()),
                    format!("pipeline[{n}].{field}"),
                    message,
                )
            })?;
            let mut stages = Vec::with_capacity(pipeline.stages.len());
            for (m, table) in pipeline.stages.into_iter().enumerate() {
                let stage = Stage::from_table(table, &pipeline.output)
                    .and_then(|stage| in_order(stage, &stages));
                let stage = stage.map_err(|(inner, message)| {
                    // A missing field is reported at the stage itself (path ".").
                    let inner = if inner == "." { String::new() } else { inner };
                    let field = if inner.is_empty() {
                        format!("pipeline[{n}].stage[{m}]")
                    } else {
                        format!("pipeline[{n}].stage[{m}].{inner}")
                    };
                    let span = stage_line(text, n, m, &inner).map(|start| start..start);
                    at(span, field, message)
                })?;
                stages.push(stage);
            }
            let source = pipeline_source(text, n).ok_or_else(|| {
                at(
                    Some(pipeline.name.span()),
                    format!("pipeline[{n}]"),
                    "its [[pipeline]] header must be a line of its own".into(),
                )
            })?;
            pipelines.push(PipelineTemplate {
                source,
                name: pipeline.name.into_inner(),
                input: pipeline.input,
                output: pipeline.output,
                default: pipeline.default,
                requestable: pipeline.requestable,
                retry: pipeline.retry,
                stages,
            });
        }
        Ok(Self { pipelines })
    }

    /// The pipeline named `name`.
    pub fn get(&self, name: &str) -> Option<&PipelineTemplate> {
        self.pipelines.iter().find(|p| p.name == name)
    }
}

/// What the types alone cannot say of a pipeline: its name, whether an earlier one has
/// it, its topics, that it has stages. The error's field, within the pipeline.
fn check(pipeline: &RawTemplate, earlier: &[PipelineTemplate]) -> Result<(), (String, String)> {
    let name = pipeline.name.get_ref();
    if !is_name(name) {
        return Err((
            "name".into(),
            format!(
                "{name:?} is not a pipeline name: 1 to {MAX_NAME_LEN} lowercase letters, digits and '-', starting with a letter"
            ),
        ));
    }
    if earlier.iter().any(|p| p.name == *name) {
        return Err(("name".into(), format!("{name:?} is defined twice")));
    }
    if pipeline.input.is_empty() || pipeline.input.iter().any(|t| t.trim().is_empty()) {
        return Err(("input".into(), "at least one topic, none empty".into()));
    }
    if pipeline.output.trim().is_empty() {
        return Err(("output".into(), "a topic is required".into()));
    }
    if let Some(reserved) = pipeline
        .input
        .iter()
        .find(|t| *t == crate::topics::DLQ_NORMALIZED)
    {
        return Err((
            "input".into(),
            format!("{reserved:?} is where pipelines dead-letter: a pipeline reading it would read its own rejections"),
        ));
    }
    if pipeline.input.contains(&pipeline.output) {
        return Err((
            "output".into(),
            format!(
                "{:?} is also an input: the pipeline would read its own output",
                pipeline.output
            ),
        ));
    }
    if pipeline.stages.is_empty() {
        return Err(("stage".into(), "at least one stage".into()));
    }
    pipeline.retry.clone().checked()?;
    Ok(())
}

/// Whether `line` is the table header `header`, however TOML lets it be written: spaces
/// inside the brackets, a comment after it.
fn is_header(line: &str, header: &str) -> bool {
    let code = line.split('#').next().unwrap_or_default();
    code.chars()
        .filter(|c| !c.is_whitespace())
        .eq(header.chars())
}

/// The text of the `n`-th `[[pipeline]]` table of `text`: from its header to the next
/// one, or to the end. None when the headers cannot be told apart by line (written in a
/// form the scan does not know), rather than handing a worker every pipeline.
fn pipeline_source(text: &str, n: usize) -> Option<String> {
    let mut offset = 0;
    let headers: Vec<usize> = text
        .split_inclusive('\n')
        .filter_map(|line| {
            let start = offset;
            offset += line.len();
            is_header(line, "[[pipeline]]").then_some(start)
        })
        .collect();
    let start = *headers.get(n)?;
    let end = headers.get(n + 1).copied().unwrap_or(text.len());
    Some(text[start..end].to_string())
}

/// The consumer group of pipeline `name` serving `client`: `pipeline-<name>.<client>`.
/// A dot, which neither a pipeline name nor a client id may hold, between the two: with a
/// dash, pipeline `traffic` of client `eu-1` and pipeline `traffic-eu` of client `1` would
/// share a group (and a worker name), and each would commit the other's records unread.
pub fn consumer_group(name: &str, client: &crate::ClientId) -> String {
    format!("pipeline-{name}.{client}")
}

/// The worker (container) name of pipeline `name` serving `client`:
/// `kg-pipeline-<name>.<client>` (the dot as in [`consumer_group`]).
pub fn worker_name(name: &str, client: &crate::ClientId) -> String {
    format!("kg-pipeline-{name}.{client}")
}

/// A pipeline name: a letter, then lowercase letters, digits and '-', not ending in '-'.
pub fn is_name(name: &str) -> bool {
    (1..=MAX_NAME_LEN).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Where in `text` stage `stage` of pipeline `pipeline` has the key `field` (a path within
/// the stage) starts: that key's line, else the stage's header. Counted from the table
/// headers, since a stage is read from a table that no longer knows its place.
fn stage_line(text: &str, pipeline: usize, stage: usize, field: &str) -> Option<usize> {
    let key = field.split(['.', '[']).next().unwrap_or_default();
    // Byte offsets of each line, with the line trimmed.
    let mut offset = 0;
    let lines: Vec<(usize, &str)> = text
        .split_inclusive('\n')
        .map(|line| {
            let start = offset;
            offset += line.len();
            (start, line.trim())
        })
        .collect();
    let pipeline_start = lines
        .iter()
        .enumerate()
        .filter(|(_, (_, line))| is_header(line, "[[pipeline]]"))
        .nth(pipeline)?
        .0;
    let mut stages = lines[pipeline_start + 1..]
        .iter()
        .enumerate()
        .take_while(|(_, (_, line))| !is_header(line, "[[pipeline]]"))
        .filter(|(_, (_, line))| is_header(line, "[[pipeline.stage]]"))
        .map(|(n, _)| pipeline_start + 1 + n);
    let header = stages.nth(stage)?;
    let block = lines[header + 1..]
        .iter()
        .take_while(|(_, line)| !line.starts_with("[["));
    // No key (a field missing from the stage): the stage's header.
    let named = block.clone().filter(|_| !key.is_empty()).find(|(_, line)| {
        line.strip_prefix(key)
            .is_some_and(|after| after.trim_start().starts_with('='))
            || line.starts_with(&format!("[pipeline.stage.{key}"))
    });
    Some(named.unwrap_or(&lines[header]).0)
}

/// The 1-based line and column of byte `offset` in `text`.
fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |nl| before.len() - nl - 1)
        + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<PipelineTemplates, TemplateError> {
        PipelineTemplates::parse(text, Path::new("pipelines.toml"))
    }

    const TRAFFIC: &str = r#"
[[pipeline]]
name = "traffic-flatten"
input = ["traffic-raw"]
output = "traffic-events"
default = true

[[pipeline.stage]]
kind = "flatten"
fields = { speed = "traffic_data.speed_mph", highway = "location.highway" }

[[pipeline.stage]]
kind = "validate"
required = ["speed", "highway"]
types = { speed = "number", highway = "string" }
ranges = { speed = { min = 0, max = 120 } }
timestamp = { field = "timestamp", max_age_secs = 31536000 }

[[pipeline.stage]]
kind = "enrich"
processor_id = "stream-processor-{client}"
"#;

    #[test]
    fn a_well_formed_file_parses_into_its_stages_in_order() {
        let templates = parse(TRAFFIC).unwrap();
        let pipeline = templates.get("traffic-flatten").unwrap();
        assert!(pipeline.default);
        let kinds: Vec<&str> = pipeline.stages.iter().map(Stage::kind).collect();
        assert_eq!(kinds, ["flatten", "validate", "enrich"]);
        let Stage::Validate(validate) = &pipeline.stages[1] else {
            panic!("not a validate stage")
        };
        assert_eq!(
            validate.ranges["speed"],
            NumberRange {
                min: Some(0.0),
                max: Some(120.0)
            }
        );
        assert_eq!(validate.types["highway"], FieldType::String);
    }

    #[test]
    fn errors_name_the_line_the_column_and_the_field() {
        // (what is wrong, the file, line, field, words the message must have)
        let cases = [
            (
                "an unknown field in a stage",
                TRAFFIC.replace("required = [", "requird = ["),
                14,
                "pipeline[0].stage[1].requird",
                "unknown field `requird`",
            ),
            (
                "a range bound of the wrong type",
                TRAFFIC.replace("min = 0,", "min = \"zero\","),
                16,
                "pipeline[0].stage[1].ranges.speed.min",
                "invalid type",
            ),
            (
                "an unknown stage kind",
                TRAFFIC.replace("kind = \"enrich\"", "kind = \"enrichh\""),
                20,
                "pipeline[0].stage[2].kind",
                "unknown stage kind \"enrichh\"",
            ),
            (
                "a name that cannot be part of a container name",
                TRAFFIC.replace("traffic-flatten", "Traffic_Flatten"),
                3,
                "pipeline[0].name",
                "is not a pipeline name",
            ),
            (
                "a pipeline reading its own output",
                TRAFFIC.replace("[\"traffic-raw\"]", "[\"traffic-events\"]"),
                3,
                "pipeline[0].output",
                "would read its own output",
            ),
            (
                "a name defined twice",
                format!("{TRAFFIC}{}", TRAFFIC.replace("default = true", "")),
                24,
                "pipeline[1].name",
                "defined twice",
            ),
        ];
        for (case, text, line, field, words) in cases {
            let error = parse(&text).expect_err(case);
            assert_eq!(error.line, line, "{case}: {error}");
            assert_eq!(error.field, field, "{case}: {error}");
            assert!(error.message.contains(words), "{case}: {error}");
            assert!(
                error
                    .to_string()
                    .starts_with(&format!("pipelines.toml:{line}:")),
                "{case}: {error}"
            );
        }
    }

    #[test]
    fn a_name_of_the_wrong_type_names_the_field_as_written() {
        let error = parse("[[pipeline]]\nname = 1\n").unwrap_err();
        assert_eq!((error.line, error.field.as_str()), (2, "pipeline[0].name"));
    }

    #[test]
    fn ranges_that_pass_nothing_or_check_nothing_and_a_dead_letter_input_are_refused() {
        let cases = [
            (
                TRAFFIC.replace("min = 0, max = 120", "min = nan, max = 120"),
                "pipeline[0].stage[1].ranges.speed.min",
                16,
            ),
            (
                TRAFFIC.replace("min = 0, max = 120", "min = 130, max = 120"),
                "pipeline[0].stage[1].ranges.speed",
                16,
            ),
            (
                TRAFFIC.replace("[\"traffic-raw\"]", "[\"traffic-raw\", \"dlq.normalized\"]"),
                "pipeline[0].input",
                3,
            ),
            (
                TRAFFIC.replace("processor_id = \"stream-processor-{client}\"", ""),
                "pipeline[0].stage[2]",
                19,
            ),
        ];
        for (text, field, line) in cases {
            let error = parse(&text).unwrap_err();
            assert_eq!((error.field.as_str(), error.line), (field, line), "{error}");
        }
    }

    #[test]
    fn an_empty_file_has_no_pipelines_and_a_pipeline_needs_a_stage() {
        assert!(parse("").unwrap().pipelines.is_empty());
        let error =
            parse("[[pipeline]]\nname = \"a\"\ninput = [\"x\"]\noutput = \"y\"\n").unwrap_err();
        assert_eq!(error.field, "pipeline[0].stage");
    }

    #[test]
    fn each_pipelines_own_text_is_a_templates_file_of_it_alone() {
        let two = format!(
            "{TRAFFIC}{}",
            TRAFFIC
                .replace("traffic-flatten", "second")
                .replace("default = true", "")
        );
        let templates = parse(&two).unwrap();
        assert_eq!(templates.pipelines.len(), 2);
        for pipeline in &templates.pipelines {
            let alone = parse(&pipeline.source).unwrap();
            assert_eq!(alone.pipelines.len(), 1);
            assert_eq!(alone.pipelines[0].name, pipeline.name);
            assert_eq!(alone.pipelines[0].stages, pipeline.stages);
        }
        assert!(!templates.pipelines[0].source.contains("second"));
    }

    #[test]
    fn headers_are_found_with_spaces_inside_and_comments_after() {
        let spaced = TRAFFIC
            .replace("[[pipeline]]", "[[ pipeline ]]  # traffic")
            .replace("[[pipeline.stage]]", "[[ pipeline.stage ]]");
        let error = parse(&spaced.replace("required = [", "requird = [")).unwrap_err();
        assert_eq!(
            (error.line, error.field.as_str()),
            (14, "pipeline[0].stage[1].requird")
        );
        let two = format!("{spaced}{}", spaced.replace("traffic-flatten", "second"));
        let templates = parse(&two).unwrap();
        assert!(!templates.pipelines[0].source.contains("second"));
        assert!(templates.pipelines[1].source.starts_with("[[ pipeline ]]"));
    }

    #[test]
    fn names_fit_container_names() {
        for (name, ok) in [
            ("alerts", true),
            ("alert-enrichment", true),
            ("a1", true),
            ("1a", false),
            ("a-", false),
            ("", false),
            ("with_underscore", false),
            ("a-name-longer-than-twenty", false),
        ] {
            assert_eq!(is_name(name), ok, "{name:?}");
        }
    }

    const COOLING: &str = r#"
[[pipeline]]
name = "server-cooling"
input = ["servers.poweroff"]
output = "servers.demise"

[[pipeline.stage]]
kind = "delay"
key = "server_id"
hold = "48h"
check_every = "2h"
check = { topic = "servers.power", field = "power", hold_while = ["off"] }
"#;

    #[test]
    fn a_delay_stage_reads_its_durations_and_its_check() {
        let templates = parse(COOLING).unwrap();
        let Stage::Delay(delay) = &templates.get("server-cooling").unwrap().stages[0] else {
            panic!("not a delay stage")
        };
        assert_eq!(delay.key, "server_id");
        assert_eq!(delay.hold, std::time::Duration::from_secs(48 * 3600));
        assert_eq!(delay.check_every, std::time::Duration::from_secs(2 * 3600));
        let check = delay.check.as_ref().unwrap();
        assert_eq!(check.topic, "servers.power");
        assert_eq!(check.hold_while, [serde_json::json!("off")]);
        assert_eq!(check.divert_violations_to, None);
    }

    #[test]
    fn a_delay_that_cannot_hold_or_check_is_refused_at_its_line() {
        // (what is wrong, the file, line, field, words the message must have)
        let cases = [
            (
                "not a duration",
                COOLING.replace("hold = \"48h\"", "hold = \"two days\""),
                10,
                "pipeline[0].stage[0].hold",
                "not a duration",
            ),
            (
                "a hold beyond time arithmetic",
                COOLING.replace("hold = \"48h\"", "hold = \"300000years\""),
                10,
                "pipeline[0].stage[0].hold",
                "longest hold",
            ),
            (
                "a check less often than the hold",
                COOLING.replace("check_every = \"2h\"", "check_every = \"49h\""),
                11,
                "pipeline[0].stage[0].check_every",
                "longer than the hold",
            ),
            (
                "a check of the pipeline's own output",
                COOLING.replace("topic = \"servers.power\"", "topic = \"servers.demise\""),
                12,
                "pipeline[0].stage[0].check.topic",
                "its own records",
            ),
            (
                "a check no state can pass",
                COOLING.replace("hold_while = [\"off\"]", "hold_while = []"),
                12,
                "pipeline[0].stage[0].check.hold_while",
                "at least one value",
            ),
            (
                "a second delay",
                format!("{COOLING}\n[[pipeline.stage]]\nkind = \"delay\"\nkey = \"k\"\nhold = \"1s\"\ncheck_every = \"1s\"\n"),
                15,
                "pipeline[0].stage[1].kind",
                "one delay stage at most",
            ),
        ];
        for (what, text, line, field, words) in cases {
            let error = parse(&text).expect_err(what);
            assert_eq!(error.line, line, "{what}: {error}");
            assert_eq!(error.field, field, "{what}: {error}");
            assert!(error.message.contains(words), "{what}: {error}");
        }
    }

    const ALERTS: &str = include_str!("../../examples/pipelines/alert-enrichment.toml");

    #[test]
    fn the_alert_template_splits_looks_up_the_graph_and_ends_holds_on_resolution() {
        let templates = parse(ALERTS).unwrap();
        let alerts = templates.get("alert-enrichment").unwrap();
        assert!(alerts.default);
        assert_eq!(alerts.input, ["alerts.raw", "raw.prom.alerts"]);
        let kinds: Vec<&str> = alerts.stages.iter().map(Stage::kind).collect();
        assert_eq!(
            kinds,
            ["split", "flatten", "validate", "delay", "graph", "enrich"]
        );
        let Stage::Delay(delay) = &alerts.stages[3] else {
            panic!("not a delay")
        };
        assert_eq!(delay.hold_from.as_deref(), Some("startsAt"));
        let end = delay.end_when.as_ref().unwrap();
        assert_eq!(
            (end.field.as_str(), &end.equals[..]),
            ("status", &[serde_json::json!("resolved")][..])
        );
        let Stage::Graph(graph) = &alerts.stages[4] else {
            panic!("not a graph stage")
        };
        assert_eq!(graph.resources["pod"], "Pod");
        assert_eq!(graph.window, std::time::Duration::from_secs(3600));
    }

    #[test]
    fn splits_graph_lookups_and_hold_ends_that_cannot_work_are_refused_at_their_line() {
        let line_of = |needle: &str| ALERTS.lines().position(|l| l.contains(needle)).unwrap() + 1;
        // (what is wrong, the file, line, field, words the message must have)
        let cases = [
            (
                "a split keeping the list it splits",
                ALERTS.replace("keep = [\"receiver\"", "keep = [\"alerts\", \"receiver\""),
                line_of("keep = ["),
                "pipeline[0].stage[0].keep",
                "cannot be kept",
            ),
            (
                "a graph stage naming no resource",
                ALERTS.replace(
                    &ALERTS[ALERTS.find("resources = {").unwrap()..ALERTS.find("\nat = ").unwrap()],
                    "resources = {}",
                ),
                line_of("resources = {"),
                "pipeline[0].stage[4].resources",
                "at least one field",
            ),
            (
                "a graph stage asking for too much",
                ALERTS.replace("max_events = 20", "max_events = 100000"),
                line_of("max_events"),
                "pipeline[0].stage[4].max_events",
                "not within",
            ),
            (
                "a hold no record ends",
                ALERTS.replace("equals = [\"resolved\"]", "equals = []"),
                line_of("end_when"),
                "pipeline[0].stage[3].end_when.equals",
                "at least one value",
            ),
            (
                "a second split",
                format!("{ALERTS}\n[[pipeline.stage]]\nkind = \"split\"\nfield = \"x\"\n"),
                ALERTS.lines().count() + 3,
                "pipeline[0].stage[6].kind",
                "once at most",
            ),
            (
                "a split after the delay",
                ALERTS
                    .replace(
                        "kind = \"split\"",
                        "kind = \"enrich\"\nprocessor_id = \"p\"",
                    )
                    .replace("field = \"alerts\"\n", "")
                    .replace("keep = [\"receiver\", \"externalURL\", \"groupKey\"]\n", "")
                    + "\n[[pipeline.stage]]\nkind = \"split\"\nfield = \"x\"\n",
                ALERTS.lines().count() + 2,
                "pipeline[0].stage[6].kind",
                "before the delay",
            ),
        ];
        for (what, text, line, field, words) in cases {
            assert_ne!(text, ALERTS, "{what}: the case changed nothing");
            let error = parse(&text).expect_err(what);
            assert_eq!(error.line, line, "{what}: {error}");
            assert_eq!(error.field, field, "{what}: {error}");
            assert!(error.message.contains(words), "{what}: {error}");
        }
    }

    #[test]
    fn a_retry_ladder_and_a_retrying_graph_stage_are_read_and_bad_ones_refused_by_field() {
        let retrying = ALERTS
            .replace(
                "default = true\n",
                "default = true\nretry = { delays = [\"30s\", \"2m\"] }\n",
            )
            .replace(
                "max_blast_radius = 100\n",
                "max_blast_radius = 100\non_unavailable = \"retry\"\n",
            );
        let alerts = parse(&retrying).unwrap().pipelines.remove(0);
        assert_eq!(
            alerts.retry.delays,
            [
                std::time::Duration::from_secs(30),
                std::time::Duration::from_secs(120)
            ]
        );
        let Stage::Graph(graph) = &alerts.stages[4] else {
            panic!("not a graph stage")
        };
        assert_eq!(graph.on_unavailable, OnUnavailable::Retry);
        // Without them: seed 001's ladder, and a graph stage that lets records go on.
        let shipped = parse(ALERTS).unwrap().pipelines.remove(0);
        assert_eq!(shipped.retry, RetryLadder::default());
        let Stage::Graph(graph) = &shipped.stages[4] else {
            panic!("not a graph stage")
        };
        assert_eq!(graph.on_unavailable, OnUnavailable::Emit);

        let line_of =
            |text: &str, needle: &str| text.lines().position(|l| l.contains(needle)).unwrap() + 1;
        let cases = [
            (
                retrying.replace("\"2m\"", "\"soon\""),
                "pipeline[0].retry.delays",
                "not a duration",
            ),
            (
                retrying.replace("\"2m\"", "\"0s\""),
                "pipeline[0].retry.delays[1]",
                "above zero",
            ),
            (
                retrying.replace("[\"30s\", \"2m\"]", "[]"),
                "pipeline[0].retry.delays",
                "at least one",
            ),
            (
                retrying.replace("on_unavailable = \"retry\"", "on_unavailable = \"wait\""),
                "pipeline[0].stage[4].on_unavailable",
                "unknown variant",
            ),
        ];
        for (text, field, words) in &cases {
            let error = parse(text).expect_err(field);
            assert_eq!(error.field, *field, "{error}");
            assert!(error.message.contains(words), "{error}");
            assert!(error.line > 0, "{error}");
        }
        // A graph stage's own error is at its line.
        let error = parse(&cases[3].0).unwrap_err();
        assert_eq!(error.line, line_of(&cases[3].0, "on_unavailable"));
    }
}
