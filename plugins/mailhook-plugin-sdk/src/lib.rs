//! The mailhook plugin SDK: write a payload transform or a sink as one Rust function over a
//! typed [`Event`], and export it with [`export_transform!`] or [`export_sink!`].
//!
//! ```text
//! use mailhook_plugin_sdk::{Event, Outcome};
//!
//! fn transform(mut event: Event) -> Result<Outcome, String> {
//!     event.payload["seen_by"] = "my-plugin".into();
//!     Ok(Outcome::Payload(event.payload))
//! }
//!
//! mailhook_plugin_sdk::export_transform!(transform);
//! ```
//!
//! Build with `cargo build --release --target wasm32-unknown-unknown`, linked with
//! `wasm-component-ld` (see `docs/plugins.md`); the `.wasm` in
//! `target/wasm32-unknown-unknown/release/` is the plugin file. The WIT interface the SDK hides is
//! `plugins/wit/plugin.wit` (`mailhook:plugin@0.1.0`).
//!
//! Off wasm (in `cargo test` on your machine) the host imports are replaced by
//! [`testing`]: set the config a test runs with, read back what the plugin logged.

use serde::de::DeserializeOwned;
pub use serde_json::{self, Map, Value, json};

pub mod text;

#[cfg(all(target_arch = "wasm32", target_os = "unknown", feature = "allocator"))]
mod arena;

#[doc(hidden)]
pub mod bindings {
    //! What wit-bindgen generates from `plugins/wit/plugin.wit`. Plugins use the typed
    //! wrappers of the crate root instead.
    // Generated code: the lowered `http-request` record has as many parameters as it has.
    #![allow(clippy::too_many_arguments)]
    wit_bindgen::generate!({
        path: "../wit",
        world: "plugin",
        pub_export_macro: true,
        export_macro_name: "__export_plugin",
        default_bindings_module: "mailhook_plugin_sdk::bindings",
    });
}

use bindings::mailhook::plugin::types as wit;

/// One event, as the host hands it to a plugin.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The account the event belongs to.
    pub account: String,
    /// `send`, `delivery`, `open`, `click`, `bounce` or `complaint`.
    pub event_type: String,
    /// The event's id (the `webhook-id` receivers deduplicate on).
    pub event_id: String,
    /// The MsgId that ties all events of one email together.
    pub msg_id: String,
    /// The JSON body a receiver would get (after the transforms before this one), parsed
    /// with its key order kept.
    pub payload: Value,
}

impl Event {
    /// An event for tests: metadata and payload as a receiver of mailhook's own format sees
    /// them (`type`, `event_id`, `account`, `msg_id` are read from the payload).
    pub fn from_payload(payload: Value) -> Event {
        let text = |key: &str| payload[key].as_str().unwrap_or_default().to_owned();
        Event {
            account: text("account"),
            event_type: text("type"),
            event_id: text("event_id"),
            msg_id: text("msg_id"),
            payload,
        }
    }
}

/// One event with its payload as the JSON text the host sent, unparsed: for transforms that
/// change a few fields of every event and should not pay for parsing and writing out the
/// whole payload. Find a field with [`text::locate`] and splice the new text in; export the
/// function with [`export_raw_transform!`]. The host checks that the text returned is JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawEvent {
    pub account: String,
    pub event_type: String,
    pub event_id: String,
    pub msg_id: String,
    /// The JSON body a receiver would get (after the transforms before this one), as text.
    pub payload: String,
}

impl RawEvent {
    /// An event for tests, like [`Event::from_payload`].
    pub fn from_payload(payload: &Value) -> RawEvent {
        let event = Event::from_payload(payload.clone());
        RawEvent {
            account: event.account,
            event_type: event.event_type,
            event_id: event.event_id,
            msg_id: event.msg_id,
            payload: payload.to_string(),
        }
    }
}

/// What a raw transform decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawOutcome {
    /// Push this JSON text instead.
    Payload(String),
    /// Do not push the event, as [`Outcome::Drop`].
    Drop(String),
}

/// What a transform decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Push this payload instead.
    Payload(Value),
    /// Do not push the event: mailhook records it as `skipped` with the reason
    /// "dropped by plugin <name>: <this text>" (nothing after the name when empty).
    Drop(String),
}

/// A log level for [`log`] and [`Effect::Log`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Debug,
    Info,
    Warn,
    Error,
}

/// An HTTP request for the host to make on a sink's behalf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRequest {
    pub method: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpRequest {
    /// `POST url` with `body` as JSON (`content-type: application/json`).
    pub fn post_json(url: impl Into<String>, body: &Value) -> HttpRequest {
        HttpRequest {
            method: "POST".to_owned(),
            url: url.into(),
            headers: vec![("content-type".to_owned(), "application/json".to_owned())],
            body: body.to_string().into_bytes(),
        }
    }
}

/// Something a sink wants done for an event. The sink's attempt succeeds when the plugin
/// returns without error and every [`Effect::Http`] answers 2xx in time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    Http(HttpRequest),
    Log(Level, String),
}

/// The plugin's own config (the `config` table of its `[[plugins.load]]` entry), as JSON.
pub fn config_value() -> Value {
    serde_json::from_str(&host::config()).unwrap_or(Value::Null)
}

/// The plugin's config read into `T`; the error names what did not fit.
pub fn config<T: DeserializeOwned>() -> Result<T, String> {
    serde_json::from_str(&host::config()).map_err(|err| format!("invalid plugin config: {err}"))
}

/// Writes a line to mailhook's log, with the plugin's name. The host cuts long lines and
/// caps the lines of one call.
pub fn log(level: Level, message: impl AsRef<str>) {
    host::log(level, message.as_ref());
}

/// Host imports: the real ones on wasm, [`testing`]'s stand-ins elsewhere.
mod host {
    use super::Level;

    #[cfg(target_arch = "wasm32")]
    pub fn config() -> String {
        super::bindings::mailhook::plugin::host::config()
    }

    #[cfg(target_arch = "wasm32")]
    pub fn log(level: Level, message: &str) {
        super::bindings::mailhook::plugin::host::log(super::level_to_wit(level), message);
    }

    #[cfg(not(target_arch = "wasm32"))]
    pub fn config() -> String {
        super::testing::CONFIG.with(|config| config.borrow().clone())
    }

    #[cfg(not(target_arch = "wasm32"))]
    pub fn log(level: Level, message: &str) {
        super::testing::LOGGED.with(|logged| logged.borrow_mut().push((level, message.to_owned())));
    }
}

/// Stand-ins for the host imports in native tests (`cargo test` in `plugins/`).
#[cfg(not(target_arch = "wasm32"))]
pub mod testing {
    use std::cell::RefCell;

    use super::{Level, Value};

    thread_local! {
        pub(crate) static CONFIG: RefCell<String> = RefCell::new("{}".to_owned());
        pub(crate) static LOGGED: RefCell<Vec<(Level, String)>> = const { RefCell::new(Vec::new()) };
    }

    /// The config [`crate::config`] returns on this thread from now on.
    pub fn set_config(config: Value) {
        CONFIG.with(|c| *c.borrow_mut() = config.to_string());
    }

    /// The lines logged on this thread so far, emptied.
    pub fn take_logged() -> Vec<(Level, String)> {
        LOGGED.with(|logged| std::mem::take(&mut *logged.borrow_mut()))
    }
}

#[cfg(target_arch = "wasm32")]
fn level_to_wit(level: Level) -> wit::LogLevel {
    match level {
        Level::Debug => wit::LogLevel::Debug,
        Level::Info => wit::LogLevel::Info,
        Level::Warn => wit::LogLevel::Warn,
        Level::Error => wit::LogLevel::Error,
    }
}

fn level_to_wit_effect(level: Level) -> wit::LogLevel {
    match level {
        Level::Debug => wit::LogLevel::Debug,
        Level::Info => wit::LogLevel::Info,
        Level::Warn => wit::LogLevel::Warn,
        Level::Error => wit::LogLevel::Error,
    }
}

fn raw_event_from_wit(event: wit::Event) -> RawEvent {
    RawEvent {
        account: event.account,
        event_type: event.event_type,
        event_id: event.event_id,
        msg_id: event.msg_id,
        payload: event.payload,
    }
}

fn event_from_wit(event: wit::Event) -> Result<Event, String> {
    let raw = raw_event_from_wit(event);
    let payload = serde_json::from_str(&raw.payload)
        .map_err(|err| format!("the payload is not JSON: {err}"))?;
    Ok(Event {
        account: raw.account,
        event_type: raw.event_type,
        event_id: raw.event_id,
        msg_id: raw.msg_id,
        payload,
    })
}

impl From<Outcome> for RawOutcome {
    fn from(outcome: Outcome) -> RawOutcome {
        match outcome {
            Outcome::Payload(payload) => RawOutcome::Payload(payload.to_string()),
            Outcome::Drop(reason) => RawOutcome::Drop(reason),
        }
    }
}

fn transformed_to_wit(outcome: RawOutcome) -> wit::Transformed {
    match outcome {
        RawOutcome::Payload(payload) => wit::Transformed::Payload(payload),
        RawOutcome::Drop(reason) => wit::Transformed::Drop(reason),
    }
}

/// Panics abort the call (the host sees a trap); this makes the panic's message reach
/// mailhook's log first, so the operator sees why.
fn report_panics() {
    #[cfg(target_arch = "wasm32")]
    std::panic::set_hook(Box::new(|info| {
        host::log(Level::Error, &format!("plugin panicked: {info}"));
    }));
}

#[doc(hidden)]
pub fn __run_transform(
    event: wit::Event,
    transform: fn(Event) -> Result<Outcome, String>,
) -> Result<wit::Transformed, String> {
    report_panics();
    let outcome = transform(event_from_wit(event)?)?;
    Ok(transformed_to_wit(outcome.into()))
}

#[doc(hidden)]
pub fn __run_raw_transform(
    event: wit::Event,
    transform: fn(RawEvent) -> Result<RawOutcome, String>,
) -> Result<wit::Transformed, String> {
    report_panics();
    Ok(transformed_to_wit(transform(raw_event_from_wit(event))?))
}

#[doc(hidden)]
pub fn __run_sink(
    event: wit::Event,
    sink: fn(Event) -> Result<Vec<Effect>, String>,
) -> Result<Vec<wit::Effect>, String> {
    report_panics();
    let effects = sink(event_from_wit(event)?)?;
    Ok(effects
        .into_iter()
        .map(|effect| match effect {
            Effect::Http(request) => wit::Effect::Http(wit::HttpRequest {
                method: request.method,
                url: request.url,
                headers: request.headers,
                body: request.body,
            }),
            Effect::Log(level, line) => wit::Effect::Log((level_to_wit_effect(level), line)),
        })
        .collect())
}

#[doc(hidden)]
pub fn __not_a(kind: &str) -> String {
    format!("this plugin is not a {kind}: configure it with the kind it was built as")
}

/// Exports `fn(Event) -> Result<Outcome, String>` as the plugin's transform.
#[macro_export]
macro_rules! export_transform {
    ($transform:path) => {
        $crate::__export_transform_with!($transform, $crate::__run_transform);
    };
}

/// Exports `fn(RawEvent) -> Result<RawOutcome, String>` as the plugin's transform: the
/// payload stays text (see [`RawEvent`]).
#[macro_export]
macro_rules! export_raw_transform {
    ($transform:path) => {
        $crate::__export_transform_with!($transform, $crate::__run_raw_transform);
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __export_transform_with {
    ($transform:path, $run:path) => {
        #[doc(hidden)]
        struct __MailhookPlugin;

        impl $crate::bindings::Guest for __MailhookPlugin {
            fn transform(
                event: $crate::bindings::mailhook::plugin::types::Event,
            ) -> ::core::result::Result<$crate::bindings::mailhook::plugin::types::Transformed, ::std::string::String>
            {
                $run(event, $transform)
            }

            fn deliver(
                _event: $crate::bindings::mailhook::plugin::types::Event,
            ) -> ::core::result::Result<
                ::std::vec::Vec<$crate::bindings::mailhook::plugin::types::Effect>,
                ::std::string::String,
            > {
                ::core::result::Result::Err($crate::__not_a("sink"))
            }
        }

        $crate::bindings::__export_plugin!(__MailhookPlugin with_types_in $crate::bindings);
    };
}

/// Exports `fn(Event) -> Result<Vec<Effect>, String>` as the plugin's sink.
#[macro_export]
macro_rules! export_sink {
    ($sink:path) => {
        #[doc(hidden)]
        struct __MailhookPlugin;

        impl $crate::bindings::Guest for __MailhookPlugin {
            fn transform(
                _event: $crate::bindings::mailhook::plugin::types::Event,
            ) -> ::core::result::Result<$crate::bindings::mailhook::plugin::types::Transformed, ::std::string::String>
            {
                ::core::result::Result::Err($crate::__not_a("transform"))
            }

            fn deliver(
                event: $crate::bindings::mailhook::plugin::types::Event,
            ) -> ::core::result::Result<
                ::std::vec::Vec<$crate::bindings::mailhook::plugin::types::Effect>,
                ::std::string::String,
            > {
                $crate::__run_sink(event, $sink)
            }
        }

        $crate::bindings::__export_plugin!(__MailhookPlugin with_types_in $crate::bindings);
    };
}
