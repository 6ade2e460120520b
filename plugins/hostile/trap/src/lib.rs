//! Hostile test plugin: panics (built with panic = "abort", a trap). The host must fail
//! only this call and log the panic's message the SDK hands over first.

use mailhook_plugin_sdk::{Event, Outcome};

fn transform(event: Event) -> Result<Outcome, String> {
    panic!("hostile trap plugin refuses event {}", event.event_id);
}

mailhook_plugin_sdk::export_transform!(transform);
