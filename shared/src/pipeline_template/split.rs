//! The split stage: one input record carrying a list (an Alertmanager webhook payload and
//! its `alerts`) becomes one record per element, each with some of its parent's fields.
//!
//! ```toml
//! [[pipeline.stage]]
//! kind = "split"
//! field = "alerts"
//! keep = ["receiver", "externalURL"]
//! ```

use serde::Deserialize;

/// The most elements one record may be split into: a record past it is rejected whole,
/// so that one input cannot make an unbounded batch.
pub const MAX_SPLIT: usize = 10_000;

/// Each element of the array field `field` (an object) becomes a record; the parent's
/// `keep` fields are copied into each, without overwriting the element's own.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Split {
    pub field: String,
    #[serde(default)]
    pub keep: Vec<String>,
}

impl Split {
    pub(super) fn checked(self) -> Result<Self, (String, String)> {
        if self.field.trim().is_empty() {
            return Err((
                "field".into(),
                "the name of an array field is required".into(),
            ));
        }
        if self.keep.contains(&self.field) {
            return Err((
                "keep".into(),
                format!(
                    "{:?} is the field split: it cannot be kept as well",
                    self.field
                ),
            ));
        }
        Ok(self)
    }
}
