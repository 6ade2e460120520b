//! Delivery: the dispatcher that claims due events from the store and carries out the core's
//! failover decisions with a keep-alive hyper client.
#![forbid(unsafe_code)]

pub mod client;
pub mod config;
mod dispatcher;
mod error;
pub mod resolve;
pub mod settings_cache;
pub mod tls;

pub use config::DeliveryConfig;
pub use dispatcher::{Dispatcher, now_ms};
pub use error::{Error, Result};
pub use settings_cache::SettingsCache;
