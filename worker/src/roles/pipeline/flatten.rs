//! The flatten stage: nested objects into flat fields, each output field read from a
//! dotted path of the input (`speed = "traffic_data.speed_mph"`; a numeric segment indexes
//! an array). A path that leads nowhere leaves its field out: `validate` says whether
//! that is allowed.

use kg_shared::pipeline_template::Flatten;
use serde_json::Value;

use super::Record;

pub fn flatten(input: &Record, spec: &Flatten) -> Record {
    let mut output = Record::new();
    if spec.keep_unmapped {
        for (key, value) in input {
            if !value.is_object() && !value.is_array() {
                output.insert(key.clone(), value.clone());
            }
        }
    }
    for (field, path) in &spec.fields {
        if let Some(value) = lookup(input, path) {
            output.insert(field.clone(), value.clone());
        }
    }
    output
}

/// The value at a dotted `path` of `record`, if there is one.
fn lookup<'a>(record: &'a Record, path: &str) -> Option<&'a Value> {
    let mut segments = path.split('.');
    let mut value = record.get(segments.next()?)?;
    for segment in segments {
        value = match value {
            Value::Object(object) => object.get(segment)?,
            Value::Array(items) => items.get(segment.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(value)
}
