#![no_main]
//! raw.k8s.logs values, as the log normalizer reads them.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let client = kg_shared::ClientId::parse("af-9").expect("a valid id");
    let _ = kg_fuzz::normalize::log_tenant_from_body(data);
    if let Ok(log) = kg_fuzz::normalize::normalize_log(&client, data) {
        let _ = kg_fuzz::normalize::to_json(&log);
    }
});
