#![no_main]
//! The graph builder's four input topics: the first byte picks the topic.
use libfuzzer_sys::fuzz_target;

const TOPICS: [&str; 4] = [
    "events.normalized",
    "logs.normalized",
    "state.k8s.resource",
    "state.k8s.topology",
];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let topic = TOPICS[pick as usize % TOPICS.len()];
    let (key, value) = kg_fuzz::key_value(rest);
    if let Err(error) =
        kg_fuzz::roles::graph_builder::decode::decode_input_at(topic, key, value, None)
    {
        let _ = (error.reason_code(), error.to_string());
    }
});
