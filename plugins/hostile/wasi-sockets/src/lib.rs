//! Hostile test plugin: opens a TCP connection of its own. Built for wasm32-wasip2 it
//! imports `wasi:sockets`, which mailhook refuses to link: the plugin never loads, and its
//! calls fail (`unavailable`) with the reason.

use std::io::Write;

use mailhook_plugin_sdk::{Event, Outcome};

fn transform(event: Event) -> Result<Outcome, String> {
    let target = event.payload["status"]["target"]
        .as_str()
        .unwrap_or("127.0.0.1:9");
    let mut stream = std::net::TcpStream::connect(target).map_err(|err| err.to_string())?;
    stream
        .write_all(event.payload.to_string().as_bytes())
        .map_err(|err| err.to_string())?;
    Ok(Outcome::Payload(event.payload))
}

mailhook_plugin_sdk::export_transform!(transform);
