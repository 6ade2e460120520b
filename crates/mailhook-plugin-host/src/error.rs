//! Plugin host errors: why the host could not start. A plugin call's failure is not an
//! error of this kind but a [`crate::CallError`], with the outcome the metrics count.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The `[plugins]` section is not usable; the message names the key.
    #[error("{0}")]
    Config(String),
    /// wasmtime refused the engine settings derived from the config.
    #[error("cannot set up the WebAssembly engine: {0}")]
    Engine(String),
    /// A thread the host needs could not be started.
    #[error("cannot start the plugin {what} thread: {source}")]
    Thread {
        what: &'static str,
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
