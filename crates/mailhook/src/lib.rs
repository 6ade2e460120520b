//! The mailhook gateway as a library: configuration and wiring, so the binary and the
//! end-to-end tests start exactly the same thing.
#![forbid(unsafe_code)]

pub mod config;
mod gateway;

pub use config::Config;
pub use gateway::Gateway;

/// Sets up logging from `log.level` (or `RUST_LOG`) and `log.format`.
pub fn init_logging(config: &config::LogConfig) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if config.format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
