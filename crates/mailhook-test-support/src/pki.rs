//! A throwaway PKI for TLS tests: a CA, a server certificate for `localhost` and 127.0.0.1, and
//! a client certificate, both signed by the CA; written as PEM files (so a gateway config can
//! name them) and offered as rustls configs for receivers and clients.
//!
//! ```no_run
//! # async fn demo() {
//! use mailhook_test_support::{Receiver, TestPki};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let pki = TestPki::generate(dir.path());
//! let receiver = Receiver::start_tls(pki.server_config()).await;
//! // ... trust pki.ca_cert_file in the gateway's tls.extra_ca_files ...
//! # }
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// The CA and the certificates it signed, on disk and in memory.
pub struct TestPki {
    /// The CA certificate (PEM): what `tls.extra_ca_files` trusts.
    pub ca_cert_file: PathBuf,
    /// The server certificate (PEM), for `localhost` and 127.0.0.1, signed by the CA.
    pub server_cert_file: PathBuf,
    pub server_key_file: PathBuf,
    /// The client certificate (PEM), for mTLS, signed by the CA.
    pub client_cert_file: PathBuf,
    pub client_key_file: PathBuf,
    ca: CertificateDer<'static>,
    server: CertificateDer<'static>,
    server_key: PrivatePkcs8KeyDer<'static>,
    client: CertificateDer<'static>,
}

impl TestPki {
    /// Generates a fresh CA and certificates and writes them into `dir` as `ca.pem`,
    /// `server.pem`, `server.key`, `client.pem` and `client.key`.
    pub fn generate(dir: &Path) -> TestPki {
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "mailhook test CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
        let issuer = Issuer::new(ca_params, &ca_key);

        let leaf = |names: Vec<String>, common_name: &str, usage: ExtendedKeyUsagePurpose| {
            let key = KeyPair::generate().expect("leaf key");
            let mut params = CertificateParams::new(names).expect("leaf params");
            params
                .distinguished_name
                .push(DnType::CommonName, common_name);
            params.extended_key_usages = vec![usage];
            let cert = params.signed_by(&key, &issuer).expect("leaf certificate");
            (cert, key)
        };
        let (server, server_key) = leaf(
            vec!["localhost".to_owned(), "127.0.0.1".to_owned()],
            "localhost",
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (client, client_key) = leaf(
            vec!["mailhook-client".to_owned()],
            "mailhook test client",
            ExtendedKeyUsagePurpose::ClientAuth,
        );

        let write = |name: &str, pem: String| {
            let path = dir.join(name);
            std::fs::write(&path, pem)
                .unwrap_or_else(|err| panic!("pki: cannot write {}: {err}", path.display()));
            path
        };
        TestPki {
            ca_cert_file: write("ca.pem", ca.pem()),
            server_cert_file: write("server.pem", server.pem()),
            server_key_file: write("server.key", server_key.serialize_pem()),
            client_cert_file: write("client.pem", client.pem()),
            client_key_file: write("client.key", client_key.serialize_pem()),
            ca: ca.der().clone(),
            server: server.der().clone(),
            server_key: PrivatePkcs8KeyDer::from(server_key.serialize_der()),
            client: client.der().clone(),
        }
    }

    /// The CA certificate, DER.
    pub fn ca_der(&self) -> &CertificateDer<'static> {
        &self.ca
    }

    /// The client certificate, DER: what a receiver requiring mTLS sees.
    pub fn client_der(&self) -> &CertificateDer<'static> {
        &self.client
    }

    /// A server config with the server certificate, no client authentication, and ALPN
    /// h2 and http/1.1.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.server_config_with(WebPkiClientVerifier::no_client_auth())
    }

    /// Like `server_config`, but a client must present a certificate signed by the CA.
    pub fn server_config_requiring_client_cert(&self) -> Arc<ServerConfig> {
        let verifier = WebPkiClientVerifier::builder_with_provider(
            Arc::new(self.roots()),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .expect("client verifier");
        self.server_config_with(verifier)
    }

    /// Like `server_config`, offering only `http/1.1` by ALPN.
    pub fn server_config_http1_only(&self) -> Arc<ServerConfig> {
        let mut config = Arc::unwrap_or_clone(self.server_config());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }

    /// A client config that trusts only the CA, without ALPN (hyper-rustls sets it).
    pub fn client_config(&self) -> ClientConfig {
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(self.roots())
            .with_no_client_auth()
    }

    fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.clone()).expect("CA is a usable root");
        roots
    }

    fn server_config_with(
        &self,
        verifier: Arc<dyn rustls::server::danger::ClientCertVerifier>,
    ) -> Arc<ServerConfig> {
        let mut config =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("protocol versions")
                .with_client_cert_verifier(verifier)
                .with_single_cert(
                    vec![self.server.clone()],
                    PrivateKeyDer::Pkcs8(self.server_key.clone_key()),
                )
                .expect("server certificate and key go together");
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(config)
    }
}
