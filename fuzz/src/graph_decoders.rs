//! The graph builder's decoders, from the worker's sources (`crate::graph::…`).

#[path = "../../worker/src/graph/decode.rs"]
pub mod decode;
#[path = "../../worker/src/graph/model.rs"]
pub mod model;
#[path = "../../worker/src/graph/scoring.rs"]
pub mod scoring;
