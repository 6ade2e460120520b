//! Test plugin: adds `"stamp": "b"` to every payload, so a test can tell which build of a
//! plugin file handled an event (the hot-reload test replaces stamp-a with stamp-b).

use mailhook_plugin_sdk::{Event, Outcome};

fn transform(mut event: Event) -> Result<Outcome, String> {
    match event.payload.as_object_mut() {
        Some(object) => {
            object.insert("stamp".to_owned(), "b".into());
            Ok(Outcome::Payload(event.payload))
        }
        None => Err("the payload is not a JSON object".to_owned()),
    }
}

mailhook_plugin_sdk::export_transform!(transform);
