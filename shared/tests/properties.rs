//! Property tests for the tolerant decoders and the key hot path: no input panics, the
//! hand-written client id check agrees with the documented pattern, the prefix check
//! agrees with full key parsing, and dead letters keep the exact original bytes.

use chrono::{TimeZone, Utc};
use kg_shared::dlq::DeadLetter;
use kg_shared::heartbeat::decode_heartbeat;
use kg_shared::keys::{key_belongs_to, parse_key};
use kg_shared::registry::{decode_registry, RegistryMessage};
use kg_shared::ClientId;
use proptest::prelude::*;

/// `^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`, spelled out as directly as possible.
fn reference_is_client_id(s: &str) -> bool {
    let chars: Vec<char> = s.chars().collect();
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    match chars.as_slice() {
        [] => false,
        [only] => alnum(*only),
        [first, middle @ .., last] => {
            alnum(*first)
                && alnum(*last)
                && middle.len() <= 61
                && middle.iter().all(|&c| alnum(c) || c == '-')
        }
    }
}

fn client_id() -> impl Strategy<Value = String> {
    "[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
}

fn option_bytes() -> impl Strategy<Value = Option<Vec<u8>>> {
    proptest::option::of(proptest::collection::vec(any::<u8>(), 0..200))
}

proptest! {
    #[test]
    fn parse_key_never_panics(key in proptest::collection::vec(any::<u8>(), 0..200)) {
        if let Some(k) = parse_key(&key) {
            prop_assert!(ClientId::parse(k.tenant).is_ok());
            prop_assert!(!k.rest.is_empty());
        }
    }

    #[test]
    fn decode_registry_never_panics(key in option_bytes(), value in option_bytes()) {
        let _ = decode_registry(key.as_deref(), value.as_deref());
    }

    #[test]
    fn decode_heartbeat_never_panics(key in option_bytes(), value in option_bytes()) {
        let _ = decode_heartbeat(key.as_deref(), value.as_deref());
    }

    #[test]
    fn decoders_never_panic_on_json_like_input(
        key in "[{}\":a-z_ ,]{0,20}",
        value in "[{}\\[\\]\":,a-z0-9_ \\\\-]{0,80}",
    ) {
        let _ = decode_registry(Some(key.as_bytes()), Some(value.as_bytes()));
        let _ = decode_heartbeat(Some(key.as_bytes()), Some(value.as_bytes()));
    }

    #[test]
    fn colon_split_of_any_valid_registration_decodes_to_the_same_client(
        id in client_id(),
        name in "[ -~]{0,20}",
    ) {
        let line = serde_json::json!({"client_id": id, "cluster_name": name}).to_string();
        let (key, value) = line.split_once(':').unwrap();
        let msg = decode_registry(Some(key.as_bytes()), Some(value.as_bytes())).unwrap();
        match msg {
            RegistryMessage::Register(r) => {
                prop_assert_eq!(r.client_id.as_str(), id.as_str());
                prop_assert_eq!(r.cluster_name.as_deref(), Some(name.as_str()));
            }
            other => prop_assert!(false, "unexpected {:?}", other),
        }
    }

    #[test]
    fn client_id_parse_agrees_with_the_reference(s in "[a-z0-9A-Z_.-]{0,70}|\\PC{0,10}") {
        prop_assert_eq!(ClientId::parse(&s).is_ok(), reference_is_client_id(&s), "{:?}", s);
        prop_assert_eq!(ClientId::is_valid(&s), reference_is_client_id(&s));
    }

    #[test]
    fn generated_client_ids_parse(s in client_id()) {
        let id = ClientId::parse(&s).unwrap();
        prop_assert_eq!(id.as_str(), s.as_str());
    }

    #[test]
    fn key_belongs_to_agrees_with_parse_key(
        tenant in client_id(),
        other in client_id(),
        sep in prop_oneof![Just("::"), Just("|")],
        rest in "[a-z0-9:|-]{1,30}",
    ) {
        let key = format!("{tenant}{sep}{rest}");
        let parsed = parse_key(key.as_bytes()).unwrap();
        prop_assert_eq!(parsed.tenant, tenant.as_str());
        let tenant_id = ClientId::parse(&tenant).unwrap();
        let other_id = ClientId::parse(&other).unwrap();
        prop_assert!(key_belongs_to(key.as_bytes(), &tenant_id));
        prop_assert_eq!(key_belongs_to(key.as_bytes(), &other_id), other == tenant);
    }

    #[test]
    fn key_belongs_to_implies_parse_key_tenant(
        key in proptest::collection::vec(any::<u8>(), 0..60),
        id in client_id(),
    ) {
        let client = ClientId::parse(&id).unwrap();
        if let Some(k) = parse_key(&key) {
            prop_assert_eq!(key_belongs_to(&key, &client), k.tenant == id);
        }
        let mut prefixed = id.clone().into_bytes();
        prefixed.extend_from_slice(b"::");
        prefixed.extend_from_slice(&key);
        prop_assert_eq!(key_belongs_to(&prefixed, &client), !key.is_empty());
    }

    #[test]
    fn dead_letter_original_bytes_round_trip(
        value in option_bytes(),
        key in option_bytes(),
        offset in any::<i64>(),
    ) {
        let at = Utc.with_ymd_and_hms(2025, 10, 28, 8, 31, 0).unwrap();
        let dl = DeadLetter::new(
            "not_json", "reason", "raw.k8s.events", 1, offset,
            key.as_deref(), value.as_deref(), None, at,
        );
        prop_assert_eq!(dl.original_bytes(), value.clone());
        let back: DeadLetter = serde_json::from_slice(&dl.to_json()).unwrap();
        prop_assert_eq!(back.original_bytes(), value);
        prop_assert_eq!(back, dl);
    }
}
