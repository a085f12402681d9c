//! The graph builder (being written).
