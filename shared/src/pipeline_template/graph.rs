//! The graph stage: looks up the resources a record names in the client's graph (the graph
//! builder's store, read-only) and adds what an operator reads first about them: the
//! recent events and error logs of those resources and their neighbours, and the blast
//! radius (what depends on them).
//!
//! ```toml
//! [[pipeline.stage]]
//! kind = "graph"
//! namespace = "namespace"
//! resources = { pod = "Pod", deployment = "Deployment", node = "Node" }
//! at = "startsAt"
//! window = "1h"
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

/// The most related events or blast-radius resources a record may ask for.
pub const MAX_LOOKUP_ITEMS: usize = 1_000;

/// Which record fields name resources, and how far to look.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GraphLookup {
    /// The record field with the namespace of the resources it names (cluster-scoped
    /// kinds, such as `Node`, ignore it).
    #[serde(default)]
    pub namespace: Option<String>,
    /// Record field → the kind of resource it names: `{ pod = "Pod", node = "Node" }`.
    pub resources: BTreeMap<String, String>,
    /// The record field with the time to look back from (RFC 3339, or milliseconds since
    /// the epoch; an alert's `startsAt`); without it, or when the record has none, now.
    #[serde(default)]
    pub at: Option<String>,
    /// How far before that time related events are looked for.
    #[serde(
        default = "default_window",
        deserialize_with = "super::delay::duration"
    )]
    pub window: Duration,
    /// The most related events, and the most error logs, added to a record.
    #[serde(default = "default_max_events")]
    pub max_events: usize,
    /// The most resources of the blast radius added to a record.
    #[serde(default = "default_max_blast_radius")]
    pub max_blast_radius: usize,
    /// What to do when the graph cannot be read (not written yet, or failing).
    #[serde(default)]
    pub on_unavailable: OnUnavailable,
}

/// What a graph stage does with a record when the client's graph cannot be read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnUnavailable {
    /// Let it go on, marked `graph_status = "unavailable"` with the reason: an alert late
    /// for its graph is worse than an alert without it.
    #[default]
    Emit,
    /// Try it again later, up the pipeline's retry ladder; after the last rung it goes to
    /// the dead-letter topic with every attempt's reason.
    Retry,
}

fn default_window() -> Duration {
    Duration::from_secs(3600)
}

fn default_max_events() -> usize {
    20
}

fn default_max_blast_radius() -> usize {
    100
}

impl GraphLookup {
    pub(super) fn checked(self) -> Result<Self, (String, String)> {
        if self.resources.is_empty() {
            return Err((
                "resources".into(),
                "at least one field naming a resource, e.g. { pod = \"Pod\" }".into(),
            ));
        }
        if let Some((field, _)) = self
            .resources
            .iter()
            .find(|(_, kind)| kind.trim().is_empty())
        {
            return Err((format!("resources.{field}"), "a kind is required".into()));
        }
        if self.window.is_zero() {
            return Err(("window".into(), "must be above zero".into()));
        }
        for (field, value) in [
            ("max_events", self.max_events),
            ("max_blast_radius", self.max_blast_radius),
        ] {
            if !(1..=MAX_LOOKUP_ITEMS).contains(&value) {
                return Err((
                    field.into(),
                    format!("{value} is not within 1..={MAX_LOOKUP_ITEMS}"),
                ));
            }
        }
        Ok(self)
    }
}
