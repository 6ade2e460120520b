//! The mailhook gateway as a library: configuration and wiring, so the binary and the
//! end-to-end tests start exactly the same thing.
#![forbid(unsafe_code)]

pub mod config;
pub mod exit;
mod gateway;
mod prune;

pub use config::Config;
pub use gateway::{Gateway, migrate};

/// Sets up logging from `log.level` (or `RUST_LOG`) and `log.format`.
pub fn init_logging(config: &config::LogConfig) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.level));
    // tokio-postgres logs every statement with its parameters at debug level, and those
    // include webhook secrets; at info it relays the server's notices (`... already exists,
    // skipping` at every start). Whatever level is asked for, it logs warnings only.
    let filter = match "tokio_postgres=warn".parse() {
        Ok(cap) => filter.add_directive(cap),
        Err(_) => filter,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if config.format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
