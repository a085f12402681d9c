#![no_main]
//! cluster.heartbeat records, both agent streams.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (key, value) = kg_fuzz::key_value(data);
    if let Err(error) = kg_shared::heartbeat::decode_heartbeat(key, value) {
        let _ = (
            error.reason_code(),
            error.to_string(),
            error.invalid_client_id(),
        );
    }
});
