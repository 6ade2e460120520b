//! Server errors: what can stop the server from starting.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A TLS file named in the config cannot be used; `key` is the config key that names it.
    #[error("{key} `{}`: {problem}", path.display())]
    TlsFile {
        key: &'static str,
        path: PathBuf,
        problem: String,
    },
    /// The certificate chain and the key do not make a usable server config.
    #[error(
        "tls.listen_cert_file `{}` and tls.listen_key_file `{}` cannot be used together: {source}",
        cert_file.display(),
        key_file.display()
    )]
    TlsKeyPair {
        cert_file: PathBuf,
        key_file: PathBuf,
        source: rustls::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
