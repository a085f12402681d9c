#![no_main]
//! Record keys: tenant extraction and the attribution key parser.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(key) = kg_shared::keys::parse_key(data) {
        let _ = (key.entity_type(), key.entity_id());
        if let Ok(tenant) = kg_shared::ClientId::parse(key.tenant) {
            // The parser says the tenant has a client id's shape: it must parse as one,
            // and the key must belong to it.
            assert!(kg_shared::keys::key_belongs_to(data, &tenant));
        }
    }
    let _ = kg_shared::attribution::resource_key_uid(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = kg_shared::ClientId::parse(text);
    }
});
