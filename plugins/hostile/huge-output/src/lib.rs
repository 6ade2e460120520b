//! Hostile test plugin: returns a payload of 1 MiB (valid JSON), 4 times the host's
//! output limit. The host must refuse it (too large) and fail only this call.

use mailhook_plugin_sdk::{Event, Outcome, json};

fn transform(_event: Event) -> Result<Outcome, String> {
    let filler = "x".repeat(1024 * 1024);
    Ok(Outcome::Payload(json!({ "filler": filler })))
}

mailhook_plugin_sdk::export_transform!(transform);
