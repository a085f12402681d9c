#![no_main]
//! The event attributor's index: state.k8s.resource records (key and value) in sequence.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut index = kg_shared::attribution::OwnerIndex::default();
    for record in data.split(|b| *b == 0xFE) {
        let (key, value) = kg_fuzz::key_value(record);
        let _ = index.apply_resource(key, value);
    }
    let _ = index.len();
});
