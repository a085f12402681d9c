//! The split stage: one record per element of a list field (an Alertmanager webhook
//! payload's `alerts`), each element an object, with the parent's `keep` fields copied in
//! where the element has no field of that name.

use kg_shared::pipeline_template::{Split, MAX_SPLIT};
use serde_json::Value;

use super::{Record, Rejection};

pub fn split(mut record: Record, spec: &Split) -> Result<Vec<Record>, Rejection> {
    let elements = match record.remove(&spec.field) {
        Some(Value::Array(elements)) => elements,
        Some(other) => {
            return Err(Rejection::Unsplittable(format!(
                "{:?} is {}, not a list",
                spec.field,
                kind_of(&other)
            )))
        }
        None => {
            return Err(Rejection::Unsplittable(format!(
                "the record has no {:?} field",
                spec.field
            )))
        }
    };
    if elements.len() > MAX_SPLIT {
        return Err(Rejection::Unsplittable(format!(
            "{:?} has {} elements, more than the {MAX_SPLIT} one record may be split into",
            spec.field,
            elements.len()
        )));
    }
    let kept: Vec<(&String, &Value)> = spec
        .keep
        .iter()
        .filter_map(|field| record.get(field).map(|value| (field, value)))
        .collect();
    elements
        .into_iter()
        .enumerate()
        .map(|(index, element)| match element {
            Value::Object(mut element) => {
                for (field, value) in &kept {
                    if !element.contains_key(*field) {
                        element.insert((*field).clone(), (*value).clone());
                    }
                }
                Ok(element)
            }
            other => Err(Rejection::Unsplittable(format!(
                "{}[{index}] is {}, not an object",
                spec.field,
                kind_of(&other)
            ))),
        })
        .collect()
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec() -> Split {
        Split {
            field: "alerts".into(),
            keep: vec!["receiver".into(), "status".into()],
        }
    }

    fn record(value: Value) -> Record {
        value.as_object().unwrap().clone()
    }

    #[test]
    fn each_element_becomes_a_record_with_the_kept_fields_it_lacks() {
        let payload = record(json!({
            "receiver": "kg", "status": "firing", "groupKey": "{}:{}",
            "alerts": [
                {"fingerprint": "a", "status": "firing"},
                {"fingerprint": "b", "status": "resolved"}
            ]
        }));
        let records = split(payload, &spec()).unwrap();
        assert_eq!(
            records,
            vec![
                record(json!({"fingerprint": "a", "status": "firing", "receiver": "kg"})),
                record(json!({"fingerprint": "b", "status": "resolved", "receiver": "kg"})),
            ]
        );
    }

    #[test]
    fn an_empty_list_makes_no_record() {
        assert_eq!(
            split(record(json!({"alerts": []})), &spec()).unwrap(),
            vec![]
        );
    }

    #[test]
    fn what_cannot_be_split_says_why() {
        let cases = [
            (json!({"receiver": "kg"}), "no \"alerts\" field"),
            (json!({"alerts": {"a": 1}}), "is an object, not a list"),
            (
                json!({"alerts": [{"a": 1}, 7]}),
                "alerts[1] is a number, not an object",
            ),
        ];
        for (input, expected) in cases {
            let Err(Rejection::Unsplittable(reason)) = split(record(input.clone()), &spec()) else {
                panic!("{input} was split");
            };
            assert!(reason.contains(expected), "{input}: {reason}");
        }
        let long = json!({ "alerts": vec![json!({}); MAX_SPLIT + 1] });
        assert!(matches!(
            split(record(long), &spec()),
            Err(Rejection::Unsplittable(reason)) if reason.contains("more than")
        ));
    }
}
