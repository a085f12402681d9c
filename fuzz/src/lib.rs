//! The worker's pure decoders, compiled from the worker's own sources so the fuzz build
//! does not need the worker's Kafka, HTTP and SQLite dependencies. The module paths match
//! the worker's (`crate::roles::normalize_common`, `crate::roles::event_normalizer::normalize`,
//! `crate::roles::graph_builder::decode`, …: [`roles`] mirrors `worker/src/roles/`), so the
//! files compile unchanged.
#![allow(dead_code, unused_imports)]

pub mod roles;

/// Splits fuzz input into a Kafka key and value: the first byte is the key's length
/// (255: a null key), the rest after the key is the value (an empty rest: a null value,
/// when the input's length is even, so both cases are reached).
pub fn key_value(data: &[u8]) -> (Option<&[u8]>, Option<&[u8]>) {
    let Some((&first, rest)) = data.split_first() else {
        return (None, None);
    };
    let (key, value) = if first == 255 {
        (None, rest)
    } else {
        let n = (first as usize).min(rest.len());
        (Some(&rest[..n]), &rest[n..])
    };
    let value = if value.is_empty() && data.len() % 2 == 0 {
        None
    } else {
        Some(value)
    };
    (key, value)
}
