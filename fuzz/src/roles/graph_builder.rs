//! The graph builder's decoders, from the worker's sources (`crate::roles::graph_builder::…`;
//! `decode.rs` names its siblings `super::model` and `super::scoring`).

#[path = "../../../worker/src/roles/graph_builder/decode.rs"]
pub mod decode;
#[path = "../../../worker/src/roles/graph_builder/model.rs"]
pub mod model;
#[path = "../../../worker/src/roles/graph_builder/scoring.rs"]
pub mod scoring;
