#![no_main]
//! raw.k8s.logs values, as the log normalizer reads them.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let client = kg_shared::ClientId::parse("af-9").expect("a valid id");
    let _ = kg_fuzz::roles::log_normalizer::normalize::log_tenant_from_body(data);
    if let Ok(log) = kg_fuzz::roles::log_normalizer::normalize::normalize_log(&client, data) {
        let _ = kg_fuzz::roles::normalize_common::to_json(&log);
    }
});
