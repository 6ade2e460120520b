//! Hostile test plugin: allocates until memory runs out. The host must cap its memory and
//! fail only this call (out of memory), the gateway's own memory untouched.

use mailhook_plugin_sdk::{Event, Outcome};

fn transform(_event: Event) -> Result<Outcome, String> {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        // Touch every page, so the memory is really used.
        hoard.push(vec![0xA5; 1024 * 1024]);
        std::hint::black_box(&hoard);
    }
}

mailhook_plugin_sdk::export_transform!(transform);
