//! Hostile test plugin: reads a file of the host. Built for wasm32-wasip2 it imports
//! `wasi:filesystem`, which mailhook refuses to link: the plugin never loads, and its calls
//! fail (`unavailable`) with the reason.

use mailhook_plugin_sdk::{Event, Outcome, json};

fn transform(event: Event) -> Result<Outcome, String> {
    let path = event.payload["status"]["path"]
        .as_str()
        .unwrap_or("/etc/passwd");
    let stolen = std::fs::read_to_string(path).map_err(|err| err.to_string())?;
    Ok(Outcome::Payload(json!({ "stolen": stolen })))
}

mailhook_plugin_sdk::export_transform!(transform);
