//! `worker/src/roles/` as far as the decoders reach into it: the helpers the roles' pure
//! parts share, the normalizers' transforms and the graph builder's decoders, each at the
//! worker's module path. One file per role folder, because a `#[path]` inside an inline
//! `mod x { … }` resolves from a directory `x/` that would have to exist.

#[path = "../../../worker/src/roles/normalize_common.rs"]
pub mod normalize_common;

pub mod event_normalizer;
pub mod graph_builder;
pub mod log_normalizer;
