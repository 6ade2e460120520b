//! Delivery: the dispatcher that claims due events from the store and carries out the core's
//! failover decisions with a keep-alive hyper client.
#![forbid(unsafe_code)]

mod address;
pub mod client;
pub mod config;
mod dispatcher;
mod error;
mod plugins;
mod pool;
pub mod resolve;
pub mod settings_cache;
pub mod test_push;
pub mod tls;

pub use config::DeliveryConfig;
pub use dispatcher::{Dispatcher, DispatcherExtras, now_ms};
pub use error::{Error, Result};
pub use settings_cache::SettingsCache;
pub use test_push::TestPushes;
