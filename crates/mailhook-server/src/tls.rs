//! TLS on the gateway's own listener: a `TlsAcceptor` built from a PEM certificate chain and
//! key, offering h2 and http/1.1 by ALPN (the server speaks both).
//!
//! The ring provider is passed explicitly, so no process-wide default provider is needed.

use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::error::{Error, Result};

const CERT_KEY: &str = "tls.listen_cert_file";
const KEY_KEY: &str = "tls.listen_key_file";

/// Reads `cert_file` (the chain, leaf first) and `key_file` now, so a bad file stops the
/// start with the config key and the file named.
pub fn acceptor(cert_file: &Path, key_file: &Path) -> Result<TlsAcceptor> {
    let file_error = |key: &'static str, path: &Path, problem: String| Error::TlsFile {
        key,
        path: path.to_path_buf(),
        problem,
    };
    let chain = CertificateDer::pem_file_iter(cert_file)
        .map_err(|err| file_error(CERT_KEY, cert_file, pem_problem(err)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| file_error(CERT_KEY, cert_file, pem_problem(err)))?;
    if chain.is_empty() {
        return Err(file_error(
            CERT_KEY,
            cert_file,
            "no certificate found (expected PEM `BEGIN CERTIFICATE` blocks)".to_owned(),
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|err| {
        let problem = match err {
            pem::Error::NoItemsFound => {
                "no private key found (expected a PEM PKCS#8, PKCS#1 or SEC1 key)".to_owned()
            }
            other => pem_problem(other),
        };
        file_error(KEY_KEY, key_file, problem)
    })?;
    let key_pair_error = |source| Error::TlsKeyPair {
        cert_file: cert_file.to_path_buf(),
        key_file: key_file.to_path_buf(),
        source,
    };
    let mut config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(key_pair_error)?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(key_pair_error)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn pem_problem(err: pem::Error) -> String {
    match err {
        pem::Error::Io(err) => format!("cannot read: {err}"),
        other => format!("not valid PEM: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_key_the_file_and_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| dir.path().join(name);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let other_key = rcgen::KeyPair::generate().unwrap();
        std::fs::write(path("cert.pem"), cert.pem()).unwrap();
        std::fs::write(path("key.pem"), key.serialize_pem()).unwrap();
        std::fs::write(path("other.key"), other_key.serialize_pem()).unwrap();

        assert!(acceptor(&path("cert.pem"), &path("key.pem")).is_ok());
        let cases = [
            (
                "nope.pem",
                "key.pem",
                "tls.listen_cert_file `",
                "cannot read",
            ),
            (
                "key.pem",
                "key.pem",
                "tls.listen_cert_file `",
                "no certificate found",
            ),
            (
                "cert.pem",
                "cert.pem",
                "tls.listen_key_file `",
                "no private key found",
            ),
            (
                "cert.pem",
                "other.key",
                "tls.listen_cert_file `",
                "cannot be used together",
            ),
        ];
        for (cert_file, key_file, starts, contains) in cases {
            let message = acceptor(&path(cert_file), &path(key_file))
                .err()
                .unwrap()
                .to_string();
            assert!(message.starts_with(starts), "{message}");
            assert!(message.contains(contains), "{message}");
        }
    }
}
