//! The log normalizer's pure transform (`crate::roles::log_normalizer::normalize`).

#[path = "../../../worker/src/roles/log_normalizer/normalize.rs"]
pub mod normalize;
