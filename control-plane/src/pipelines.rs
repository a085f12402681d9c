//! Which pipelines a client runs beyond the operator's defaults: the names its
//! registration asks for in `pipelines` (a JSON list of names, or one comma-separated
//! string, as a Helm value may flatten it). A name is run only when the templates file
//! defines it with `requestable = true` (the operator's allowlist); anything else is
//! refused with a reason, and never run. Pure: the controller renders what is accepted and
//! records a lifecycle event for each refusal.

use kg_shared::pipeline_template::PipelineTemplate;
use serde_json::Value;

/// The registration field that asks for pipelines.
pub const FIELD: &str = "pipelines";
/// The most names one registration may ask for; the rest are refused.
pub const MAX_REQUESTS: usize = 16;
/// The longest name echoed back in a refusal (an agent's field is not ours to log whole).
const ECHO_LEN: usize = 64;

/// What a registration's request comes to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Requests {
    /// Requestable pipelines asked for, in the order asked, each once (defaults, which
    /// run anyway, are left out).
    pub accepted: Vec<String>,
    pub refused: Vec<Refused>,
}

/// A name that will not run, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// As asked, cut to 64 characters.
    pub name: String,
    pub reason: RefusalReason,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalReason {
    /// `pipelines` is neither a list of strings nor a string.
    NotAList,
    /// No pipeline of that name in the templates file.
    Unknown,
    /// Defined, but the operator has not allowed clients to ask for it.
    NotRequestable,
    /// Past the first [`MAX_REQUESTS`] names: one refusal, naming the first name past
    /// them, stands for every name from there on.
    TooMany,
}

impl RefusalReason {
    /// The metric label and the event's reason code.
    pub fn code(self) -> &'static str {
        match self {
            RefusalReason::NotAList => "not_a_list",
            RefusalReason::Unknown => "unknown",
            RefusalReason::NotRequestable => "not_requestable",
            RefusalReason::TooMany => "too_many",
        }
    }

    /// What an operator reads.
    pub fn explain(self) -> &'static str {
        match self {
            RefusalReason::NotAList => "the registration's pipelines field must be a list of names or a comma-separated string",
            RefusalReason::Unknown => "no pipeline of that name in the templates file",
            RefusalReason::NotRequestable => "the templates file does not let clients ask for it (requestable = false)",
            RefusalReason::TooMany => {
                "a registration may ask for 16 pipelines at most; this name and every one after it are ignored"
            }
        }
    }
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.name, self.reason.explain())
    }
}

/// What the registration's `pipelines` value asks for, against the operator's templates.
pub fn requested(value: Option<&Value>, templates: &[PipelineTemplate]) -> Requests {
    let names: Vec<String> = match value {
        None | Some(Value::Null) => return Requests::default(),
        Some(Value::String(list)) => list.split(',').map(|n| n.trim().to_string()).collect(),
        Some(Value::Array(items)) if items.iter().all(Value::is_string) => items
            .iter()
            .filter_map(Value::as_str)
            .map(|n| n.trim().to_string())
            .collect(),
        Some(other) => {
            return Requests {
                accepted: Vec::new(),
                refused: vec![Refused {
                    name: echo(&other.to_string()),
                    reason: RefusalReason::NotAList,
                }],
            }
        }
    };
    let mut requests = Requests::default();
    let mut seen = std::collections::HashSet::new();
    for name in names.into_iter().filter(|n| !n.is_empty()) {
        if !seen.insert(name.clone()) {
            continue;
        }
        let refuse = |reason| Refused {
            name: echo(&name),
            reason,
        };
        if seen.len() > MAX_REQUESTS {
            // One refusal for the whole rest, however long: a registration cannot flood
            // the client's events.
            requests.refused.push(refuse(RefusalReason::TooMany));
            break;
        }
        match templates.iter().find(|t| t.name == name) {
            None => requests.refused.push(refuse(RefusalReason::Unknown)),
            Some(template) if template.default => {}
            Some(template) if template.requestable => requests.accepted.push(name),
            Some(_) => requests.refused.push(refuse(RefusalReason::NotRequestable)),
        }
    }
    requests
}

/// `name` cut to [`ECHO_LEN`] characters.
fn echo(name: &str) -> String {
    name.chars().take(ECHO_LEN).collect()
}

/// The `pipelines` field of a registration kept as compact JSON (the table's form).
pub fn field_of(registration: &str) -> Option<Value> {
    let mut fields: serde_json::Map<String, Value> = serde_json::from_str(registration).ok()?;
    fields.remove(FIELD)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn templates() -> Vec<PipelineTemplate> {
        let text = r#"
[[pipeline]]
name = "alerts"
input = ["alerts.raw"]
output = "alerts.enriched"
default = true
[[pipeline.stage]]
kind = "enrich"
processor_id = "p"

[[pipeline]]
name = "traffic"
input = ["traffic-raw"]
output = "traffic-events"
requestable = true
[[pipeline.stage]]
kind = "enrich"
processor_id = "p"

[[pipeline]]
name = "internal"
input = ["a"]
output = "b"
[[pipeline.stage]]
kind = "enrich"
processor_id = "p"
"#;
        kg_shared::pipeline_template::PipelineTemplates::parse(text, "p.toml".as_ref())
            .unwrap()
            .pipelines
    }

    fn refused(name: &str, reason: RefusalReason) -> Refused {
        Refused {
            name: name.into(),
            reason,
        }
    }

    #[test]
    fn only_requestable_pipelines_run_and_every_other_name_is_refused_with_its_reason() {
        // (what, the registration's value, accepted, refused)
        let cases = [
            ("no field", None, vec![], vec![]),
            ("null", Some(json!(null)), vec![], vec![]),
            (
                "a list",
                Some(json!(["traffic", "internal", "nope", "alerts", "traffic"])),
                vec!["traffic"],
                vec![
                    refused("internal", RefusalReason::NotRequestable),
                    refused("nope", RefusalReason::Unknown),
                ],
            ),
            (
                "a comma-separated string, as a Helm value",
                Some(json!(" traffic , ,alerts")),
                vec!["traffic"],
                vec![],
            ),
            (
                "neither",
                Some(json!({"traffic": true})),
                vec![],
                vec![refused(r#"{"traffic":true}"#, RefusalReason::NotAList)],
            ),
            (
                "a list with a number",
                Some(json!(["traffic", 7])),
                vec![],
                vec![refused(r#"["traffic",7]"#, RefusalReason::NotAList)],
            ),
        ];
        for (what, value, accepted, refusals) in cases {
            let requests = requested(value.as_ref(), &templates());
            assert_eq!(requests.accepted, accepted, "{what}");
            assert_eq!(requests.refused, refusals, "{what}");
        }
    }

    #[test]
    fn past_sixteen_names_one_refusal_stands_for_the_rest_and_long_names_are_cut() {
        let mut names: Vec<String> = (0..MAX_REQUESTS).map(|n| format!("p{n}")).collect();
        names.push("x".repeat(500));
        names.extend((0..10_000).map(|n| format!("q{n}")));
        names.push("traffic".into());
        let requests = requested(Some(&json!(names)), &templates());
        assert!(requests.accepted.is_empty());
        // 16 unknown names, then one refusal for the 10,002 after them.
        assert_eq!(requests.refused.len(), MAX_REQUESTS + 1);
        let rest = &requests.refused[MAX_REQUESTS];
        assert_eq!(rest.reason, RefusalReason::TooMany);
        assert_eq!(rest.name, "x".repeat(64), "cut to 64 characters");
    }

    #[test]
    fn the_field_is_read_from_the_tables_compact_json() {
        assert_eq!(
            field_of(r#"{"client_id":"c1","pipelines":["traffic"]}"#),
            Some(json!(["traffic"]))
        );
        assert_eq!(field_of(r#"{"client_id":"c1"}"#), None);
        assert_eq!(field_of("not json"), None);
    }
}
