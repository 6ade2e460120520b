//! Outbound TLS: the rustls client config every HTTPS delivery uses: which roots are trusted
//! (the built-in Mozilla roots, the OS store, extra CA files for a private PKI) and the client
//! certificate presented to receivers that ask for one (mTLS).
//!
//! Only the `ring` provider is used, passed explicitly, so no process-wide default provider
//! has to be installed and aws-lc-rs (which needs cmake) is never built. ALPN (h2, http/1.1)
//! is not set here: the hyper-rustls connector sets it from the HTTP versions it enables and
//! refuses a config that already has it.
//!
//! Also here: how a TLS failure is put in words for the attempt log, and a connector wrapper
//! that keeps the TLS error a connection died of. With TLS 1.3 a server judges the client's
//! certificate only after the handshake, so its refusal arrives as an alert on the first read;
//! hyper then often reports the request as just "connection closed", and the wrapper is how
//! the attempt still says why. When the alert and the close arrive before the client's first
//! writes, a write fails with "broken pipe" or "reset" and hyper never reads; the wrapper then
//! holds that write until one read of its own is ready, so the alert sitting unread in the
//! socket still names the cause.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use http::Uri;
use hyper::rt::{Read, ReadBuf, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection};
use rustls::{AlertDescription, CertificateError, ClientConfig, RootCertStore};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::{Error, Result};

/// What the client TLS config is built from: the `[tls]` keys that concern delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsClientSettings {
    /// PEM files of CA certificates trusted besides the other roots (a private PKI).
    pub extra_ca_files: Vec<PathBuf>,
    /// Trust the operating system's certificate store.
    pub use_system_roots: bool,
    /// Trust the Mozilla roots compiled into the binary (webpki-roots).
    pub use_builtin_roots: bool,
    /// PEM certificate chain presented to receivers that ask for a client certificate.
    pub client_cert_file: Option<PathBuf>,
    /// PEM private key of `client_cert_file`.
    pub client_key_file: Option<PathBuf>,
}

impl Default for TlsClientSettings {
    fn default() -> TlsClientSettings {
        TlsClientSettings {
            extra_ca_files: Vec::new(),
            use_system_roots: false,
            use_builtin_roots: true,
            client_cert_file: None,
            client_key_file: None,
        }
    }
}

/// The ring crypto provider, shared by every config mailhook builds.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds the client config from `settings`, reading every file now so a bad one stops the
/// start instead of failing each delivery.
pub fn client_config(settings: &TlsClientSettings) -> Result<Arc<ClientConfig>> {
    let roots = root_store(settings)?;
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|err| Error::TlsSettings(format!("tls: no usable protocol versions: {err}")))?
        .with_root_certificates(roots);
    let config = match (&settings.client_cert_file, &settings.client_key_file) {
        (None, None) => builder.with_no_client_auth(),
        (Some(cert_file), Some(key_file)) => {
            let chain = read_certificates("tls.client_cert_file", cert_file)?;
            let key = read_private_key("tls.client_key_file", key_file)?;
            builder.with_client_auth_cert(chain, key).map_err(|err| {
                Error::TlsSettings(format!(
                    "tls.client_cert_file `{}` and tls.client_key_file `{}` cannot be used together: {err}",
                    cert_file.display(),
                    key_file.display()
                ))
            })?
        }
        _ => {
            return Err(Error::TlsSettings(
                "tls.client_cert_file and tls.client_key_file must be set together (or both left empty)"
                    .to_owned(),
            ));
        }
    };
    Ok(Arc::new(config))
}

fn root_store(settings: &TlsClientSettings) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    if settings.use_builtin_roots {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    if settings.use_system_roots {
        let found = rustls_native_certs::load_native_certs();
        // OS stores carry the odd certificate webpki cannot parse; skipping those is what
        // every rustls client does, and the rest are still trusted.
        let (added, skipped) = roots.add_parsable_certificates(found.certs);
        if added == 0 {
            let why = found
                .errors
                .first()
                .map(|err| format!(": {err}"))
                .unwrap_or_default();
            return Err(Error::TlsSettings(format!(
                "tls.use_system_roots = true, but no certificate could be loaded from the operating system's store{why}"
            )));
        }
        if skipped > 0 || !found.errors.is_empty() {
            tracing::debug!(
                added,
                skipped,
                errors = found.errors.len(),
                "system roots loaded with some left out"
            );
        }
    }
    for (i, path) in settings.extra_ca_files.iter().enumerate() {
        let key = format!("tls.extra_ca_files[{i}]");
        for (n, cert) in read_certificates(&key, path)?.into_iter().enumerate() {
            roots.add(cert).map_err(|err| Error::TlsFile {
                key: key.clone(),
                path: path.clone(),
                problem: format!("certificate #{} is not a usable CA: {err}", n + 1),
            })?;
        }
    }
    if roots.is_empty() {
        return Err(Error::TlsSettings(
            "no trusted roots for HTTPS: tls.use_builtin_roots and tls.use_system_roots are false \
             and tls.extra_ca_files is empty"
                .to_owned(),
        ));
    }
    Ok(roots)
}

/// Every certificate in the PEM file at `path`; at least one.
pub fn read_certificates(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let file_error = |problem: String| Error::TlsFile {
        key: key.to_owned(),
        path: path.to_path_buf(),
        problem,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|err| file_error(pem_problem(err)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| file_error(pem_problem(err)))?;
    if certs.is_empty() {
        return Err(file_error(
            "no certificate found (expected PEM `BEGIN CERTIFICATE` blocks)".to_owned(),
        ));
    }
    Ok(certs)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) in the PEM file at `path`.
pub fn read_private_key(key: &str, path: &Path) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path).map_err(|err| Error::TlsFile {
        key: key.to_owned(),
        path: path.to_path_buf(),
        problem: match err {
            pem::Error::NoItemsFound => {
                "no private key found (expected a PEM PKCS#8, PKCS#1 or SEC1 key)".to_owned()
            }
            other => pem_problem(other),
        },
    })
}

fn pem_problem(err: pem::Error) -> String {
    match err {
        pem::Error::Io(err) => format!("cannot read: {err}"),
        other => format!("not valid PEM: {other}"),
    }
}

/// The rustls error behind `cause`. tokio-rustls and hyper-rustls wrap it in an `io::Error`,
/// sometimes twice, and `io::Error::source` skips the wrapped error, so the walk looks inside.
pub(crate) fn tls_cause<'a>(
    cause: &'a (dyn std::error::Error + 'static),
) -> Option<&'a rustls::Error> {
    let mut current = cause;
    loop {
        if let Some(tls) = current.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        current = current.downcast_ref::<io::Error>()?.get_ref()?;
    }
}

/// "TLS error: invalid peer certificate: UnknownIssuer", with a hint at the config key when
/// the usual fix is one.
pub(crate) fn describe_tls_error(err: &rustls::Error) -> String {
    let hint = match err {
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            " (the receiver's certificate is not signed by a trusted CA; a private CA goes in \
             tls.extra_ca_files)"
        }
        rustls::Error::AlertReceived(AlertDescription::CertificateRequired) => {
            " (the receiver requires a client certificate: set tls.client_cert_file and \
             tls.client_key_file)"
        }
        _ => "",
    };
    format!("TLS error: {err}{hint}")
}

/// Where a connection keeps the first TLS error it read or wrote, described. Reached from a
/// failed request through the connection's `Connected` extras (`capture_connection`).
#[derive(Clone, Default)]
pub(crate) struct TlsErrorSlot(Arc<OnceLock<String>>);

impl TlsErrorSlot {
    pub(crate) fn get(&self) -> Option<&str> {
        self.0.get().map(String::as_str)
    }

    fn record(&self, err: &io::Error) {
        if let Some(tls) = tls_cause(err) {
            // Only the first: later errors on a dead connection say less.
            let _ = self.0.set(describe_tls_error(tls));
        }
    }
}

/// A connector whose streams keep their TLS errors in a [`TlsErrorSlot`].
#[derive(Clone)]
pub(crate) struct KeepTlsErrors<C>(pub C);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<C> tower_service::Service<Uri> for KeepTlsErrors<C>
where
    C: tower_service::Service<Uri>,
    C::Response: Connection + Read + Write + Unpin + Send + 'static,
    C::Future: Send + 'static,
    C::Error: Into<BoxError>,
{
    type Response = TlsErrorKeeping<C::Response>;
    type Error = BoxError;
    type Future = crate::resolve::BoxFuture<Result<Self::Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.0.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.0.call(uri);
        Box::pin(async move {
            let inner = connecting.await.map_err(Into::into)?;
            Ok(TlsErrorKeeping {
                inner,
                slot: TlsErrorSlot::default(),
                failed_write: None,
            })
        })
    }
}

/// A stream that records the first TLS error of its reads and writes.
pub(crate) struct TlsErrorKeeping<S> {
    inner: S,
    slot: TlsErrorSlot,
    /// A write that failed and waits for the read that may find the receiver's alert.
    failed_write: Option<io::Error>,
}

impl<S: Read + Unpin> TlsErrorKeeping<S> {
    /// A write's result, after a look for the receiver's alert when it failed for a reason
    /// that is not TLS. In TLS 1.3 a receiver judges the client certificate after the
    /// handshake, and its alert and close can beat the client's first writes, which then fail
    /// with "broken pipe" or "reset" while the alert saying why sits unread in the socket
    /// (the kernel keeps received data readable after a reset). So the write reads once: until
    /// that read is ready the write is pending (a reset socket is always ready to read, so
    /// this is about one wake-up, and the attempt's timeout bounds it in any case), and an
    /// alert found is returned as the write's error and kept in the slot. Anything else read
    /// is dropped: the connection is dead either way.
    fn after_write<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        let err = match polled {
            Poll::Ready(Err(err)) if self.slot.get().is_none() => err,
            other => return other,
        };
        if tls_cause(&err).is_some() || !closed_by_peer(&err) {
            self.slot.record(&err);
            return Poll::Ready(Err(err));
        }
        self.failed_write = Some(err);
        self.poll_failed_write(cx).map(Err)
    }

    /// The error of the write that failed, once the read for a pending alert is ready: the
    /// alert if one was read, else the write's own error.
    fn poll_failed_write(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let mut scratch = [0u8; 512];
        let mut buf = ReadBuf::new(&mut scratch);
        let Poll::Ready(read) = Pin::new(&mut self.inner).poll_read(cx, buf.unfilled()) else {
            return Poll::Pending;
        };
        let written = self
            .failed_write
            .take()
            .expect("only called with a failed write kept");
        Poll::Ready(match read.as_ref().err().and_then(|err| tls_cause(err)) {
            Some(tls) => {
                let alert = io::Error::new(io::ErrorKind::InvalidData, tls.clone());
                self.slot.record(&alert);
                alert
            }
            None => written,
        })
    }

    /// Resumes a write that is waiting for the read after a failure (see `after_write`).
    fn resume_failed_write<T>(&mut self, cx: &mut Context<'_>) -> Option<Poll<io::Result<T>>> {
        self.failed_write
            .is_some()
            .then(|| self.poll_failed_write(cx).map(Err))
    }
}

/// A write error that says the peer closed or reset the connection.
fn closed_by_peer(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
    )
}

impl<S: Connection> Connection for TlsErrorKeeping<S> {
    fn connected(&self) -> Connected {
        self.inner.connected().extra(self.slot.clone())
    }
}

impl<S: Read + Unpin> Read for TlsErrorKeeping<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Err(err)) = &polled {
            self.slot.record(err);
        }
        polled
    }
}

impl<S: Read + Write + Unpin> Write for TlsErrorKeeping<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Some(resumed) = self.resume_failed_write(cx) {
            return resumed;
        }
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.after_write(cx, polled)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(resumed) = self.resume_failed_write(cx) {
            return resumed;
        }
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.after_write(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if let Some(resumed) = self.resume_failed_write(cx) {
            return resumed;
        }
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.after_write(cx, polled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Pki {
        dir: tempfile::TempDir,
    }

    impl Pki {
        /// A CA and a client certificate it signed, as PEM files.
        fn new() -> Pki {
            let dir = tempfile::tempdir().unwrap();
            let ca_key = rcgen::KeyPair::generate().unwrap();
            let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            let ca = ca_params.self_signed(&ca_key).unwrap();
            let issuer = rcgen::Issuer::new(ca_params, &ca_key);
            let client_key = rcgen::KeyPair::generate().unwrap();
            let client = rcgen::CertificateParams::new(vec!["client".to_owned()])
                .unwrap()
                .signed_by(&client_key, &issuer)
                .unwrap();
            std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
            std::fs::write(dir.path().join("client.pem"), client.pem()).unwrap();
            std::fs::write(dir.path().join("client.key"), client_key.serialize_pem()).unwrap();
            std::fs::write(dir.path().join("ca.key"), ca_key.serialize_pem()).unwrap();
            std::fs::write(dir.path().join("empty.pem"), "nothing here\n").unwrap();
            Pki { dir }
        }

        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }
    }

    fn error(settings: &TlsClientSettings) -> String {
        client_config(settings).unwrap_err().to_string()
    }

    #[test]
    fn builds_with_builtin_roots_extra_cas_and_a_client_certificate() {
        let pki = Pki::new();
        assert!(client_config(&TlsClientSettings::default()).is_ok());
        let config = client_config(&TlsClientSettings {
            extra_ca_files: vec![pki.path("ca.pem")],
            use_builtin_roots: false,
            client_cert_file: Some(pki.path("client.pem")),
            client_key_file: Some(pki.path("client.key")),
            ..TlsClientSettings::default()
        })
        .unwrap();
        assert!(config.client_auth_cert_resolver.has_certs());
        assert!(
            config.alpn_protocols.is_empty(),
            "the connector sets ALPN itself"
        );
    }

    #[test]
    fn finds_the_rustls_error_inside_io_errors_and_hints_at_the_fix() {
        let unknown = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
        let wrapped = io::Error::other(io::Error::new(io::ErrorKind::InvalidData, unknown));
        let message = describe_tls_error(tls_cause(&wrapped).expect("found"));
        assert!(
            message.starts_with("TLS error: invalid peer certificate: UnknownIssuer (")
                && message.contains("tls.extra_ca_files"),
            "{message}"
        );
        let required = rustls::Error::AlertReceived(AlertDescription::CertificateRequired);
        let message = describe_tls_error(&required);
        assert!(message.contains("tls.client_cert_file"), "{message}");
        assert_eq!(
            describe_tls_error(&rustls::Error::AlertReceived(
                AlertDescription::HandshakeFailure
            )),
            "TLS error: received fatal alert: HandshakeFailure"
        );
        assert!(tls_cause(&io::Error::other("connection reset")).is_none());
    }

    /// A dead connection: every write fails with `write_error`; reads give `reads` in turn.
    struct DeadStream {
        write_error: io::ErrorKind,
        reads: std::collections::VecDeque<Poll<io::Result<()>>>,
        writes: usize,
        reads_made: usize,
    }

    impl DeadStream {
        fn new(write_error: io::ErrorKind, reads: Vec<Poll<io::Result<()>>>) -> DeadStream {
            DeadStream {
                write_error,
                reads: reads.into(),
                writes: 0,
                reads_made: 0,
            }
        }
    }

    impl Read for DeadStream {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: ReadBufCursor<'_>,
        ) -> Poll<io::Result<()>> {
            self.reads_made += 1;
            self.reads.pop_front().expect("no more reads scripted")
        }
    }

    impl Write for DeadStream {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.writes += 1;
            Poll::Ready(Err(self.write_error.into()))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Err(self.write_error.into()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn keeping(stream: DeadStream) -> TlsErrorKeeping<DeadStream> {
        TlsErrorKeeping {
            inner: stream,
            slot: TlsErrorSlot::default(),
            failed_write: None,
        }
    }

    fn write(keeping: &mut TlsErrorKeeping<DeadStream>) -> Poll<io::Result<usize>> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        Pin::new(keeping).poll_write(&mut cx, b"POST / HTTP/1.1\r\n")
    }

    fn alert() -> Poll<io::Result<()>> {
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::AlertReceived(AlertDescription::CertificateRequired),
        )))
    }

    #[test]
    fn a_write_that_loses_the_race_to_the_receivers_alert_fails_with_the_alert() {
        for kind in [io::ErrorKind::BrokenPipe, io::ErrorKind::ConnectionReset] {
            // The reset is seen before the reactor has marked the socket readable.
            let mut stream = keeping(DeadStream::new(kind, vec![Poll::Pending, alert()]));
            assert!(
                write(&mut stream).is_pending(),
                "{kind}: waits for the read"
            );
            let Poll::Ready(Err(err)) = write(&mut stream) else {
                panic!("{kind}: the write fails once the read is ready");
            };
            assert!(
                matches!(
                    tls_cause(&err),
                    Some(rustls::Error::AlertReceived(
                        AlertDescription::CertificateRequired
                    ))
                ),
                "{kind}: {err}"
            );
            assert_eq!(
                (stream.inner.writes, stream.inner.reads_made),
                (1, 2),
                "{kind}"
            );
            let kept = stream.slot.get().expect("the alert is kept");
            assert!(kept.contains("tls.client_cert_file"), "{kept}");
        }
    }

    #[test]
    fn a_failed_write_with_no_alert_to_read_keeps_its_own_error() {
        let reset = Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()));
        let mut stream = keeping(DeadStream::new(io::ErrorKind::BrokenPipe, vec![reset]));
        let Poll::Ready(Err(err)) = write(&mut stream) else {
            panic!("the write fails");
        };
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
        assert_eq!(stream.slot.get(), None);

        // Not a close by the peer: nothing to look for.
        let mut stream = keeping(DeadStream::new(io::ErrorKind::TimedOut, vec![]));
        let Poll::Ready(Err(err)) = write(&mut stream) else {
            panic!("the write fails");
        };
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(stream.inner.reads_made, 0);
    }

    #[test]
    fn errors_name_the_key_the_file_and_the_problem() {
        let pki = Pki::new();
        let only_extra = |files: Vec<PathBuf>| TlsClientSettings {
            extra_ca_files: files,
            use_builtin_roots: false,
            ..TlsClientSettings::default()
        };
        let cases = [
            (
                only_extra(vec![pki.path("ca.pem"), pki.path("missing.pem")]),
                "tls.extra_ca_files[1] `",
                "missing.pem`: cannot read: ",
            ),
            (
                only_extra(vec![pki.path("empty.pem")]),
                "tls.extra_ca_files[0] `",
                "empty.pem`: no certificate found",
            ),
            (
                only_extra(vec![]),
                "no trusted roots",
                "tls.use_builtin_roots",
            ),
            (
                TlsClientSettings {
                    client_cert_file: Some(pki.path("empty.pem")),
                    client_key_file: Some(pki.path("client.key")),
                    ..TlsClientSettings::default()
                },
                "tls.client_cert_file `",
                "empty.pem`: no certificate found",
            ),
            (
                TlsClientSettings {
                    client_cert_file: Some(pki.path("client.pem")),
                    client_key_file: Some(pki.path("client.pem")),
                    ..TlsClientSettings::default()
                },
                "tls.client_key_file `",
                "client.pem`: no private key found",
            ),
            (
                TlsClientSettings {
                    client_cert_file: Some(pki.path("client.pem")),
                    client_key_file: Some(pki.path("ca.key")),
                    ..TlsClientSettings::default()
                },
                "tls.client_cert_file `",
                "cannot be used together",
            ),
            (
                TlsClientSettings {
                    client_cert_file: Some(pki.path("client.pem")),
                    ..TlsClientSettings::default()
                },
                "tls.client_cert_file and tls.client_key_file",
                "together",
            ),
        ];
        for (settings, starts, contains) in cases {
            let message = error(&settings);
            assert!(message.starts_with(starts), "{message}");
            assert!(message.contains(contains), "{message}");
        }
    }
}
