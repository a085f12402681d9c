//! The event normalizer's pure transform (`crate::roles::event_normalizer::normalize`).

#[path = "../../../worker/src/roles/event_normalizer/normalize.rs"]
pub mod normalize;
