//! Hostile test plugin: never returns (a busy loop). The host must stop it at its fuel
//! budget or its time limit, and fail only this call.

use mailhook_plugin_sdk::{Event, Outcome};

fn transform(_event: Event) -> Result<Outcome, String> {
    let mut spins = 0u64;
    loop {
        spins = spins.wrapping_add(1);
        // Keeps the loop from being optimized into something else.
        std::hint::black_box(spins);
    }
}

mailhook_plugin_sdk::export_transform!(transform);
