//! The delay stage's decisions, pure: given a held session, the latest state of its key
//! and `now`, what happens to it. The pending store keeps the sessions, the scheduler acts
//! on these decisions; neither decides anything.

use chrono::{DateTime, Duration, Utc};
use kg_shared::pipeline_template::Delay;
use serde_json::Value;

/// What a held session's check says.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Its state left `hold_while`: drop or divert it, never emit it.
    Violated { state: Value },
    /// Due, and its state holds: emit it (through the stages after the delay).
    Emit,
    /// Not due yet, and its state holds: check again at `next_check`.
    Recheck { next_check: DateTime<Utc> },
}

/// When a session held at `held_at` is due, and when it is first checked.
pub fn schedule(delay: &Delay, held_at: DateTime<Utc>) -> (DateTime<Utc>, DateTime<Utc>) {
    let due = later(held_at, delay.hold);
    let first_check = later(held_at, delay.check_every).min(due);
    (due, first_check)
}

/// The check of a session due at `due`, at `now`, with `state` the checked field's value
/// in the latest state record of its key (None: no record seen yet, which holds; a record
/// without the field reads as null).
pub fn decide(
    delay: &Delay,
    due: DateTime<Utc>,
    state: Option<&Value>,
    now: DateTime<Utc>,
) -> Step {
    if let (Some(check), Some(state)) = (&delay.check, state) {
        if !check.hold_while.contains(state) {
            return Step::Violated {
                state: state.clone(),
            };
        }
    }
    if now >= due {
        return Step::Emit;
    }
    Step::Recheck {
        next_check: later(now, delay.check_every).min(due),
    }
}

/// When a record's hold starts: its `hold_from` time when it has one no later than `now`,
/// else `now` (a time in the future would stretch the hold).
pub fn held_from(
    delay: &Delay,
    record: &serde_json::Map<String, Value>,
    now: DateTime<Utc>,
) -> DateTime<Utc> {
    delay
        .hold_from
        .as_ref()
        .and_then(|field| record.get(field))
        .and_then(super::validate::parse_timestamp)
        .map_or(now, |at| at.min(now))
}

/// Whether a record ends its session's hold instead of being held (`end_when`).
pub fn ends_hold(delay: &Delay, record: &serde_json::Map<String, Value>) -> bool {
    delay.end_when.as_ref().is_some_and(|end| {
        end.equals
            .contains(record.get(&end.field).unwrap_or(&Value::Null))
    })
}

/// The session a record belongs to: its `key` field, as text (a string as it is, any
/// other scalar as JSON); None when it has none.
pub fn session_of(delay: &Delay, record: &serde_json::Map<String, Value>) -> Option<String> {
    match record.get(&delay.key)? {
        Value::String(text) if !text.is_empty() => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        Value::Bool(flag) => Some(flag.to_string()),
        _ => None,
    }
}

/// `at` plus `duration`, or the end of time when that cannot be represented (the template
/// caps holds at 10 years, so only a clock gone far wrong gets there).
fn later(at: DateTime<Utc>, duration: std::time::Duration) -> DateTime<Utc> {
    Duration::from_std(duration)
        .ok()
        .and_then(|span| at.checked_add_signed(span))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kg_shared::pipeline_template::StateCheck;
    use serde_json::json;

    fn cooling() -> Delay {
        Delay {
            key: "server_id".into(),
            hold: std::time::Duration::from_secs(48 * 3600),
            check_every: std::time::Duration::from_secs(2 * 3600),
            check: Some(StateCheck {
                topic: "servers.power".into(),
                field: "power".into(),
                hold_while: vec![json!("off")],
                divert_violations_to: None,
            }),
            hold_from: None,
            end_when: None,
        }
    }

    fn at(hours: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000, 0).unwrap() + Duration::hours(hours)
    }

    #[test]
    fn a_session_is_due_after_the_hold_and_first_checked_after_one_interval() {
        assert_eq!(schedule(&cooling(), at(0)), (at(48), at(2)));
        let mut short = cooling();
        short.check_every = short.hold;
        assert_eq!(schedule(&short, at(0)), (at(48), at(48)));
    }

    #[test]
    fn each_check_decides_from_the_latest_state_and_the_clock() {
        let off = json!("off");
        let on = json!("on");
        let no_field = Value::Null;
        // (what, state, now, step)
        let cases = [
            (
                "no state yet holds",
                None,
                at(2),
                Step::Recheck { next_check: at(4) },
            ),
            (
                "off holds",
                Some(&off),
                at(2),
                Step::Recheck { next_check: at(4) },
            ),
            (
                "the last check lands on the due time",
                Some(&off),
                at(47),
                Step::Recheck { next_check: at(48) },
            ),
            ("due and off: emitted", Some(&off), at(48), Step::Emit),
            ("late and off: emitted", Some(&off), at(60), Step::Emit),
            (
                "on: violated",
                Some(&on),
                at(2),
                Step::Violated { state: json!("on") },
            ),
            (
                "on at the due time: violated, not emitted",
                Some(&on),
                at(48),
                Step::Violated { state: json!("on") },
            ),
            (
                "a state without the field: violated",
                Some(&no_field),
                at(2),
                Step::Violated { state: Value::Null },
            ),
        ];
        for (what, state, now, step) in cases {
            assert_eq!(decide(&cooling(), at(48), state, now), step, "{what}");
        }
    }

    #[test]
    fn without_a_check_only_the_clock_decides() {
        let mut delay = cooling();
        delay.check = None;
        let on = json!("on");
        assert_eq!(decide(&delay, at(48), Some(&on), at(48)), Step::Emit);
        assert_eq!(
            decide(&delay, at(48), Some(&on), at(1)),
            Step::Recheck { next_check: at(3) }
        );
    }

    #[test]
    fn times_past_the_end_of_time_stay_there_instead_of_panicking() {
        let mut delay = cooling();
        delay.hold = std::time::Duration::from_secs(u64::MAX / 4);
        let (due, _) = schedule(&delay, at(0));
        assert_eq!(due, DateTime::<Utc>::MAX_UTC);
        assert!(matches!(
            decide(&delay, due, None, at(1)),
            Step::Recheck { .. }
        ));
    }

    #[test]
    fn the_session_is_the_key_field_as_text() {
        let delay = cooling();
        let record = |value: Value| json!({ "server_id": value }).as_object().unwrap().clone();
        assert_eq!(
            session_of(&delay, &record(json!("s1"))).as_deref(),
            Some("s1")
        );
        assert_eq!(
            session_of(&delay, &record(json!(42))).as_deref(),
            Some("42")
        );
        assert_eq!(session_of(&delay, &record(json!(""))), None);
        assert_eq!(session_of(&delay, &record(json!({"a": 1}))), None);
        assert_eq!(session_of(&delay, &serde_json::Map::new()), None);
    }
}
