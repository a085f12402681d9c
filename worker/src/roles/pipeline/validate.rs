//! The validate stage, seed 004's three layers: fields present, types and numeric ranges,
//! and a timestamp neither in the future nor too old. Every violation is reported, not
//! only the first, so one dead letter says everything that is wrong with a record.

use chrono::{DateTime, TimeDelta, Utc};
use kg_shared::pipeline_template::{FieldType, TimestampRule, Validate};
use serde::Serialize;
use serde_json::Value;

use super::Record;

/// One check a record failed.
#[derive(Debug, Clone, PartialEq, Serialize, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct Violation {
    pub field: String,
    pub reason: String,
}

pub fn validate(record: &Record, spec: &Validate, now: DateTime<Utc>) -> Vec<Violation> {
    let mut violations = Vec::new();
    let mut violated = |field: &str, reason: String| {
        violations.push(Violation {
            field: field.to_string(),
            reason,
        });
    };
    for field in &spec.required {
        if record.get(field).is_none_or(Value::is_null) {
            violated(field, "missing".into());
        }
    }
    for (field, expected) in &spec.types {
        if let Some(value) = record.get(field).filter(|v| !v.is_null()) {
            if !has_type(value, *expected) {
                violated(
                    field,
                    format!(
                        "expected {}, got {}",
                        type_name(*expected),
                        json_type(value)
                    ),
                );
            }
        }
    }
    for (field, range) in &spec.ranges {
        let Some(value) = record.get(field).filter(|v| !v.is_null()) else {
            continue;
        };
        let Some(number) = value.as_f64() else {
            violated(
                field,
                format!("expected a number, got {}", json_type(value)),
            );
            continue;
        };
        if range.min.is_some_and(|min| number < min) || range.max.is_some_and(|max| number > max) {
            let bound = |b: Option<f64>| b.map_or("…".to_string(), |b| b.to_string());
            violated(
                field,
                format!(
                    "{number} is outside {} to {}",
                    bound(range.min),
                    bound(range.max)
                ),
            );
        }
    }
    if let Some(rule) = &spec.timestamp {
        if let Some(reason) = timestamp_violation(record, rule, now) {
            violated(&rule.field, reason);
        }
    }
    violations
}

/// Why the rule's timestamp field fails, if it does: unreadable, in the future, or older
/// than allowed. An absent field is `required`'s business.
fn timestamp_violation(
    record: &Record,
    rule: &TimestampRule,
    now: DateTime<Utc>,
) -> Option<String> {
    let value = record.get(&rule.field).filter(|v| !v.is_null())?;
    let Some(at) = parse_timestamp(value) else {
        return Some(format!(
            "not a timestamp (RFC 3339 or epoch milliseconds): {value}"
        ));
    };
    // A bound too large for the time arithmetic is no bound at all, not a panic.
    let bound = |secs: u64| i64::try_from(secs).ok().and_then(TimeDelta::try_seconds);
    let latest = bound(rule.max_skew_secs).and_then(|skew| now.checked_add_signed(skew));
    let max_age = bound(rule.max_age_secs);
    if latest.is_some_and(|latest| at > latest) {
        Some(format!("{} is in the future", at.to_rfc3339()))
    } else if max_age.is_some_and(|max_age| now.signed_duration_since(at) > max_age) {
        Some(format!(
            "{} is older than {} s",
            at.to_rfc3339(),
            rule.max_age_secs
        ))
    } else {
        None
    }
}

pub(super) fn parse_timestamp(value: &Value) -> Option<DateTime<Utc>> {
    match value {
        Value::String(text) => DateTime::parse_from_rfc3339(text)
            .ok()
            .map(|at| at.with_timezone(&Utc)),
        Value::Number(millis) => DateTime::from_timestamp_millis(millis.as_i64()?),
        _ => None,
    }
}

fn has_type(value: &Value, expected: FieldType) -> bool {
    match expected {
        FieldType::String => value.is_string(),
        FieldType::Number => value.is_number(),
        FieldType::Integer => value.is_i64() || value.is_u64(),
        FieldType::Boolean => value.is_boolean(),
        FieldType::Object => value.is_object(),
        FieldType::Array => value.is_array(),
    }
}

fn type_name(expected: FieldType) -> &'static str {
    match expected {
        FieldType::String => "a string",
        FieldType::Number => "a number",
        FieldType::Integer => "an integer",
        FieldType::Boolean => "a boolean",
        FieldType::Object => "an object",
        FieldType::Array => "an array",
    }
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bound_too_large_for_time_arithmetic_is_no_bound_not_a_panic() {
        let now = DateTime::from_timestamp(1_760_000_000, 0).unwrap();
        let rule = |max_age_secs, max_skew_secs| Validate {
            required: Vec::new(),
            types: Default::default(),
            ranges: Default::default(),
            timestamp: Some(TimestampRule {
                field: "at".into(),
                max_age_secs,
                max_skew_secs,
            }),
        };
        let record = |millis: i64| {
            let mut record = Record::new();
            record.insert("at".into(), millis.into());
            record
        };
        let ancient = record(0);
        let future = record(now.timestamp_millis() + 3_600_000);
        for huge in [u64::MAX, i64::MAX as u64, 10_u64.pow(17)] {
            assert!(validate(&ancient, &rule(huge, 0), now).is_empty(), "{huge}");
            assert!(validate(&future, &rule(60, huge), now).is_empty(), "{huge}");
        }
        assert_eq!(validate(&ancient, &rule(60, 0), now).len(), 1);
        assert_eq!(validate(&future, &rule(60, 0), now).len(), 1);
    }
}
