//! Tenant extraction from record keys. Every per-client consumer reads every partition of
//! the shared topics and keeps only its own tenant's records, so deciding "not mine" must
//! cost next to nothing: these functions look at key bytes only, never allocate and never
//! parse a value. Three key forms are in use: `<id>::<type>::<id>`, `<id>::<id>` and the
//! historic `<id>|<id>`; anything else has no tenant and must be counted, not claimed.

use crate::client_id::{is_valid_bytes, ClientId};

/// Which of the three key forms a key has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyForm {
    /// `<client_id>::<entity_type>::<entity_id>`.
    Triple,
    /// `<client_id>::<entity_id>`.
    Pair,
    /// `<client_id>|<entity_id>`.
    Pipe,
}

/// A key split into its tenant and the rest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TenantKey<'a> {
    /// The first segment; it has the shape of a valid client id.
    pub tenant: &'a str,
    /// Everything after the first separator; never empty.
    pub rest: &'a str,
    /// The form the key has.
    pub form: KeyForm,
}

impl<'a> TenantKey<'a> {
    /// The entity type of a [`KeyForm::Triple`] key (`event` in `af-9::event::4f1c`).
    pub fn entity_type(&self) -> Option<&'a str> {
        match self.form {
            KeyForm::Triple => self.rest.split_once("::").map(|(t, _)| t),
            KeyForm::Pair | KeyForm::Pipe => None,
        }
    }

    /// The entity id: the last part of a triple key, the rest of the others.
    pub fn entity_id(&self) -> &'a str {
        match self.form {
            KeyForm::Triple => self.rest.split_once("::").map_or(self.rest, |(_, id)| id),
            KeyForm::Pair | KeyForm::Pipe => self.rest,
        }
    }
}

/// Where the first separator (`::` or `|`, whichever comes first) starts, and its length.
fn first_separator(key: &[u8]) -> Option<(usize, usize)> {
    let mut i = 0;
    while i < key.len() {
        match key[i] {
            b'|' => return Some((i, 1)),
            b':' if key.get(i + 1) == Some(&b':') => return Some((i, 2)),
            _ => i += 1,
        }
    }
    None
}

/// Splits a key into tenant and rest. `None` when the key has no tenant: no separator, an
/// empty tenant or rest, bytes that are not UTF-8, or a first segment that is not shaped
/// like a client id.
pub fn parse_key(key: &[u8]) -> Option<TenantKey<'_>> {
    let (at, sep_len) = first_separator(key)?;
    let tenant = &key[..at];
    let rest = &key[at + sep_len..];
    if rest.is_empty() || !is_valid_bytes(tenant) {
        return None;
    }
    // A valid tenant is ASCII, so only the rest needs checking.
    let tenant = std::str::from_utf8(tenant).ok()?;
    let rest = std::str::from_utf8(rest).ok()?;
    let form = if sep_len == 1 {
        KeyForm::Pipe
    } else if rest.contains("::") {
        KeyForm::Triple
    } else {
        KeyForm::Pair
    };
    Some(TenantKey { tenant, rest, form })
}

/// Whether `key` belongs to `client`: it starts with the id, then `::` or `|`, then at
/// least one byte. A prefix comparison only, for the skip-foreign-records hot path; it
/// agrees with [`parse_key`]'s tenant on every key that `parse_key` accepts (a valid id
/// holds no `:` or `|`, so the separator after it is the key's first one).
pub fn key_belongs_to(key: &[u8], client: &ClientId) -> bool {
    let id = client.as_str().as_bytes();
    let Some(after) = key.strip_prefix(id) else {
        return false;
    };
    matches!(after, [b'|', _, ..] | [b':', b':', _, ..])
}

/// The key of a normalized event: `<client_id>::<event_id>`.
pub fn event_output_key(client: &ClientId, event_id: &str) -> String {
    pair_key(client, event_id)
}

/// The key of a normalized log record: `<client_id>::<id>`.
pub fn log_output_key(client: &ClientId, id: &str) -> String {
    pair_key(client, id)
}

fn pair_key(client: &ClientId, id: &str) -> String {
    let mut key = String::with_capacity(client.as_str().len() + 2 + id.len());
    key.push_str(client.as_str());
    key.push_str("::");
    key.push_str(id);
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> ClientId {
        ClientId::parse(s).unwrap()
    }

    #[test]
    fn triple_key_from_the_event_exporter_has_a_tenant() {
        let k = parse_key(b"test-client-001::event::test-123").unwrap();
        assert_eq!(k.tenant, "test-client-001");
        assert_eq!(k.rest, "event::test-123");
        assert_eq!(k.form, KeyForm::Triple);
        assert_eq!(k.entity_type(), Some("event"));
        assert_eq!(k.entity_id(), "test-123");
    }

    #[test]
    fn pair_key_from_the_log_shipper_has_a_tenant() {
        let k = parse_key(b"af-9::0b7e2f4c-1d2a-4c1e-9a3b-5f6e7d8c9b0a").unwrap();
        assert_eq!(k.tenant, "af-9");
        assert_eq!(k.form, KeyForm::Pair);
        assert_eq!(k.entity_type(), None);
        assert_eq!(k.entity_id(), "0b7e2f4c-1d2a-4c1e-9a3b-5f6e7d8c9b0a");
    }

    #[test]
    fn state_and_topology_keys_are_pairs_despite_single_colons() {
        let k = parse_key(b"af-9::Pod:1234").unwrap();
        assert_eq!(
            (k.tenant, k.rest, k.form),
            ("af-9", "Pod:1234", KeyForm::Pair)
        );
        let k = parse_key(b"af-9::edge:pod:ns:name->node:n1").unwrap();
        assert_eq!(k.form, KeyForm::Pair);
        assert_eq!(k.rest, "edge:pod:ns:name->node:n1");
    }

    #[test]
    fn historic_pipe_key_has_a_tenant() {
        let k = parse_key(b"af-9|abc::def").unwrap();
        assert_eq!(
            (k.tenant, k.rest, k.form),
            ("af-9", "abc::def", KeyForm::Pipe)
        );
    }

    #[test]
    fn the_first_separator_splits_the_tenant() {
        assert_eq!(parse_key(b"af-9::x|y").unwrap().tenant, "af-9");
        assert_eq!(parse_key(b"af-9|x::y").unwrap().form, KeyForm::Pipe);
    }

    #[test]
    fn keys_without_a_tenant_are_rejected() {
        for key in [
            &b"4f1c9a2e-uid-only"[..],
            b"",
            b"::x",
            b"|x",
            b"af-9::",
            b"af-9|",
            b"AF-9::x",
            b"-af::x",
            b"af-9:x",
            b"{\"client_id\"",
            b"af-9::\xff\xfe",
        ] {
            assert_eq!(parse_key(key), None, "{:?}", String::from_utf8_lossy(key));
        }
    }

    #[test]
    fn key_belongs_to_compares_the_prefix_and_separator() {
        let af9 = id("af-9");
        assert!(key_belongs_to(b"af-9::event::1", &af9));
        assert!(key_belongs_to(b"af-9::1", &af9));
        assert!(key_belongs_to(b"af-9|1", &af9));
        assert!(!key_belongs_to(b"af-90::1", &af9));
        assert!(!key_belongs_to(b"af-9::", &af9));
        assert!(!key_belongs_to(b"af-9|", &af9));
        assert!(!key_belongs_to(b"af-9:1", &af9));
        assert!(!key_belongs_to(b"af-9", &af9));
        assert!(key_belongs_to(b"af::9::1", &id("af")));
        assert!(!key_belongs_to(b"bf-9::1", &af9));
    }

    #[test]
    fn output_keys_are_pairs() {
        let af9 = id("af-9");
        assert_eq!(event_output_key(&af9, "e1"), "af-9::e1");
        assert_eq!(log_output_key(&af9, "l1"), "af-9::l1");
        assert!(key_belongs_to(
            event_output_key(&af9, "e1").as_bytes(),
            &af9
        ));
    }
}
