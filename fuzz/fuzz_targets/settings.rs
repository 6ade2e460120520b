//! Fuzz target: `validate_settings` on arbitrary JSON never panics, what it accepts keeps
//! the contract's rules (at most 3 distinct addresses; when enabled, at least one address and
//! one event type), and accepted settings validate again to themselves.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailhook_core::net::AddressPolicy;
use mailhook_core::settings::validate_settings;
use serde_json::{Value, json};

fuzz_target!(|data: &[u8]| {
    // Non-JSON bytes still make a body: the validator is handed whatever parsed.
    let body: Value = serde_json::from_slice(data)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(data).into_owned()));
    for policy in [
        AddressPolicy::default(),
        AddressPolicy {
            allow_private: true,
            allowed: Vec::new(),
        },
    ] {
        let Ok(settings) = validate_settings(&body, &policy) else {
            continue;
        };
        assert!(settings.addresses.len() <= 3);
        for (i, a) in settings.addresses.iter().enumerate() {
            assert!(!settings.addresses[..i].contains(a), "duplicate {a}");
        }
        if settings.enabled {
            assert!(!settings.addresses.is_empty() && !settings.events.is_empty());
        }
        let again = json!({
            "enabled": settings.enabled,
            "addresses": settings.addresses.iter().map(|a| a.as_str()).collect::<Vec<_>>(),
            "events": settings.events.iter().map(|e| e.as_str()).collect::<Vec<_>>(),
        });
        let revalidated = validate_settings(&again, &policy).expect("accepted settings stay valid");
        assert_eq!(revalidated, settings);
    }
});
