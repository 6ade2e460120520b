//! Fuzz target: `parse_intake` on arbitrary bytes never panics, and what it accepts renders
//! to a payload that is JSON carrying the accepted event's fields.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailhook_core::event::{EventId, IntakeLimits, parse_intake};
use serde_json::Value;

const LIMITS: IntakeLimits = IntakeLimits {
    batch_events_max: 1000,
    string_bytes_max: 16 * 1024,
    json_depth_max: 32,
};

fuzz_target!(|data: &[u8]| {
    let mut n = 0u64;
    let mut new_id = || {
        n += 1;
        EventId::parse(&format!("generated-{n}")).expect("a generated id is valid")
    };
    let Ok(events) = parse_intake(data, LIMITS, 1_795_780_800_123, &mut new_id) else {
        return;
    };
    assert!(!events.is_empty() && events.len() <= LIMITS.batch_events_max);
    for event in &events {
        let payload: Value =
            serde_json::from_slice(&event.render_payload()).expect("the payload is JSON");
        assert_eq!(payload["event_id"], event.event_id.as_str());
        assert_eq!(payload["type"], event.event_type.as_str());
        assert_eq!(payload["account"], event.account.as_str());
        assert_eq!(payload["msg_id"], event.msg_id.as_str());
        assert!(
            payload["timestamp"]
                .as_str()
                .is_some_and(|t| t.ends_with('Z'))
        );
        assert_eq!(payload["engagement"].is_object(), event.is_engagement());
    }
});
