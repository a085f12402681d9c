//! Validated client ids. A client id ends up in container names, consumer group names,
//! database names and file paths, so only lowercase DNS labels are accepted
//! (`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`). Holding a [`ClientId`] is the proof that the
//! string was checked; every other way in (serde, `FromStr`, `TryFrom`) goes through
//! [`ClientId::parse`].

use std::borrow::Borrow;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize};

/// The longest client id: a DNS label is at most 63 octets.
pub const MAX_LEN: usize = 63;

/// How much of an offending input an error message quotes, so that a megabyte of garbage
/// on a topic does not become a megabyte of log line.
const QUOTE_LIMIT: usize = 80;

/// A client id that is a lowercase DNS label.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
// `Arc<str>`: the control plane keeps each id in several maps and in every worker spec,
// and clones of it are then free.
pub struct ClientId(Arc<str>);

/// Why a string is not a client id.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum InvalidClientId {
    /// The string is empty.
    #[error("invalid client id \"\": it is empty")]
    Empty,
    /// The string is longer than 63 characters.
    #[error("invalid client id {input:?}: it is {len} characters long, at most 63 are allowed")]
    TooLong {
        /// The input, truncated for quoting.
        input: String,
        /// Its length in characters.
        len: usize,
    },
    /// The string holds a character other than `a-z`, `0-9` and `-`.
    #[error(
        "invalid client id {input:?}: character {character:?} is not allowed at position \
         {position} (only a-z, 0-9 and '-' are)"
    )]
    BadCharacter {
        /// The input, truncated for quoting.
        input: String,
        /// The offending character.
        character: char,
        /// Its position in characters, counting from 0.
        position: usize,
    },
    /// The string starts or ends with `-`.
    #[error("invalid client id {input:?}: it must start and end with a letter or a digit")]
    BadEdge {
        /// The input, truncated for quoting.
        input: String,
    },
}

impl InvalidClientId {
    /// A short, stable label for metrics.
    pub fn reason_code(&self) -> &'static str {
        match self {
            InvalidClientId::Empty => "empty",
            InvalidClientId::TooLong { .. } => "too_long",
            InvalidClientId::BadCharacter { .. } => "bad_character",
            InvalidClientId::BadEdge { .. } => "bad_edge",
        }
    }
}

/// Whether `bytes` has the shape of a client id. Allocation-free, for the key hot path.
pub(crate) fn is_valid_bytes(bytes: &[u8]) -> bool {
    let (Some(&first), Some(&last)) = (bytes.first(), bytes.last()) else {
        return false;
    };
    bytes.len() <= MAX_LEN
        && first != b'-'
        && last != b'-'
        && bytes
            .iter()
            .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// The input cut to [`QUOTE_LIMIT`] characters, on a character boundary.
fn quote(input: &str) -> String {
    match input.char_indices().nth(QUOTE_LIMIT) {
        Some((cut, _)) => format!("{}…", &input[..cut]),
        None => input.to_owned(),
    }
}

impl ClientId {
    /// Checks `s` and wraps it.
    pub fn parse(s: &str) -> Result<ClientId, InvalidClientId> {
        Self::check(s)?;
        Ok(ClientId(s.into()))
    }

    /// Whether `s` is a valid client id, without building one.
    pub fn is_valid(s: &str) -> bool {
        is_valid_bytes(s.as_bytes())
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id as an owned string.
    pub fn into_string(self) -> String {
        self.0.to_string()
    }

    fn check(s: &str) -> Result<(), InvalidClientId> {
        if is_valid_bytes(s.as_bytes()) {
            return Ok(());
        }
        if s.is_empty() {
            return Err(InvalidClientId::Empty);
        }
        // A bad character is reported before the length: for a long run of garbage the
        // character says more about what went wrong than the count does.
        if let Some((position, character)) = s
            .chars()
            .enumerate()
            .find(|&(_, c)| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'))
        {
            return Err(InvalidClientId::BadCharacter {
                input: quote(s),
                character,
                position,
            });
        }
        // Only ASCII is left, so bytes and characters count the same.
        if s.len() > MAX_LEN {
            return Err(InvalidClientId::TooLong {
                input: quote(s),
                len: s.len(),
            });
        }
        Err(InvalidClientId::BadEdge { input: quote(s) })
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for ClientId {
    type Err = InvalidClientId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ClientId::parse(s)
    }
}

impl TryFrom<String> for ClientId {
    type Error = InvalidClientId;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        ClientId::check(&s)?;
        Ok(ClientId(s.into()))
    }
}

impl TryFrom<&str> for ClientId {
    type Error = InvalidClientId;

    fn try_from(s: &str) -> Result<Self, Self::Error> {
        ClientId::parse(s)
    }
}

impl From<ClientId> for String {
    fn from(id: ClientId) -> String {
        id.0.to_string()
    }
}

impl AsRef<str> for ClientId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

// Lets maps keyed by `ClientId` be looked up with a `&str`; sound because the derived
// `Hash`, `Eq` and `Ord` are those of the inner string.
impl Borrow<str> for ClientId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for ClientId {
    fn eq(&self, other: &str) -> bool {
        &*self.0 == other
    }
}

impl PartialEq<&str> for ClientId {
    fn eq(&self, other: &&str) -> bool {
        &*self.0 == *other
    }
}

impl<'de> Deserialize<'de> for ClientId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        ClientId::try_from(s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deployed_client_ids_are_accepted() {
        for id in ["af-9", "test-client-001", "a", "0", "a1", &"a".repeat(63)] {
            assert_eq!(ClientId::parse(id).unwrap().as_str(), id);
        }
    }

    #[test]
    fn empty_id_is_rejected_as_empty() {
        let err = ClientId::parse("").unwrap_err();
        assert_eq!(err, InvalidClientId::Empty);
        assert_eq!(err.reason_code(), "empty");
        assert!(err.to_string().contains("empty"));
    }

    #[test]
    fn sixty_four_characters_are_too_long() {
        let err = ClientId::parse(&"a".repeat(64)).unwrap_err();
        assert_eq!(err.reason_code(), "too_long");
        assert!(err.to_string().contains("64 characters"), "{err}");
    }

    #[test]
    fn uppercase_is_rejected_with_its_position() {
        let err = ClientId::parse("af-9X").unwrap_err();
        assert_eq!(
            err,
            InvalidClientId::BadCharacter {
                input: "af-9X".into(),
                character: 'X',
                position: 4
            }
        );
        assert_eq!(err.reason_code(), "bad_character");
        assert_eq!(
            err.to_string(),
            "invalid client id \"af-9X\": character 'X' is not allowed at position 4 \
             (only a-z, 0-9 and '-' are)"
        );
    }

    #[test]
    fn path_and_shell_characters_are_rejected() {
        for id in ["../etc", "a/b", "a b", "a;rm", "a.b", "a_b", "é", "a\0"] {
            let err = ClientId::parse(id).unwrap_err();
            assert_eq!(err.reason_code(), "bad_character", "{id:?}");
        }
    }

    #[test]
    fn leading_or_trailing_dash_is_a_bad_edge() {
        for id in ["-a", "a-", "-"] {
            let err = ClientId::parse(id).unwrap_err();
            assert_eq!(err.reason_code(), "bad_edge", "{id:?}");
            assert!(err.to_string().contains("start and end"));
        }
    }

    #[test]
    fn long_garbage_is_quoted_truncated() {
        let input = "É".repeat(1000);
        let msg = ClientId::parse(&input).unwrap_err().to_string();
        assert!(msg.len() < 400, "{msg}");
        assert!(msg.contains('…'));
    }

    #[test]
    fn deserialize_validates() {
        let ok: ClientId = serde_json::from_str("\"af-9\"").unwrap();
        assert_eq!(ok, "af-9");
        let err = serde_json::from_str::<ClientId>("\"AF-9\"").unwrap_err();
        assert!(err.to_string().contains("not allowed"), "{err}");
        assert_eq!(serde_json::to_string(&ok).unwrap(), "\"af-9\"");
    }

    #[test]
    fn from_str_and_try_from_agree_with_parse() {
        assert_eq!("af-9".parse::<ClientId>(), ClientId::parse("af-9"));
        assert_eq!(ClientId::try_from("x-".to_string()), ClientId::parse("x-"));
        assert_eq!(ClientId::parse("af-9").unwrap().to_string(), "af-9");
    }
}
