//! Delivery errors.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] mailhook_store::Error),
    /// A TLS file named in the config cannot be used; `key` is the config key that names it.
    #[error("{key} `{}`: {problem}", path.display())]
    TlsFile {
        key: String,
        path: PathBuf,
        problem: String,
    },
    /// The TLS settings do not make a usable client config.
    #[error("{0}")]
    TlsSettings(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
