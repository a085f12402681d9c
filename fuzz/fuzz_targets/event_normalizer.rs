#![no_main]
//! raw.k8s.events values, as the event normalizer reads them.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let client = kg_shared::ClientId::parse("af-9").expect("a valid id");
    if let Ok(event) = kg_fuzz::roles::event_normalizer::normalize::normalize_event(&client, data) {
        let _ = kg_fuzz::roles::normalize_common::to_json(&event);
    }
});
