//! The HTTP server: intake and admin API on hyper, with graceful shutdown.
#![forbid(unsafe_code)]

pub mod api;
pub mod auth;
pub mod console;
mod error;
pub mod openapi;
pub mod response;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;

pub use api::{Api, ApiConfig};
pub use auth::Tokens;
pub use error::{Error, Result};

/// How long a client has to finish the TLS handshake. Without a bound, a client that opens a
/// connection and sends nothing would hold its task and file descriptor forever; 10 s is
/// far more than a handshake needs even across a slow link.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How the listener treats its clients.
pub struct ServerOptions {
    /// How long open requests may finish after `shutdown`.
    pub grace: Duration,
    /// Serve HTTPS with this acceptor.
    pub tls: Option<TlsAcceptor>,
    /// Connections served at once; more wait in the listen backlog.
    pub connections_max: usize,
    /// Largest request head; hyper answers 431 above it.
    pub header_bytes_max: usize,
    /// A request head must arrive within this, or the connection is closed (slow-loris).
    pub header_read_timeout: Duration,
}

/// A running server. `shutdown` stops accepting, lets open requests finish for up to the
/// grace period, then returns.
pub struct Server {
    local_addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Serves `api` on an already-bound listener, over TLS when `options.tls` is given.
    pub fn start(
        listener: TcpListener,
        api: Arc<Api>,
        options: ServerOptions,
    ) -> std::io::Result<Server> {
        let local_addr = listener.local_addr()?;
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(serve(listener, api, stopped, options));
        Ok(Server {
            local_addr,
            stop,
            task,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

async fn serve(
    listener: TcpListener,
    api: Arc<Api>,
    mut stopped: watch::Receiver<bool>,
    options: ServerOptions,
) {
    let ServerOptions {
        grace,
        tls,
        connections_max,
        header_bytes_max,
        header_read_timeout,
    } = options;
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .max_buf_size(header_bytes_max);
    builder
        .http2()
        .max_header_list_size(u32::try_from(header_bytes_max).unwrap_or(u32::MAX));
    // A permit per open connection: at the limit the loop stops accepting, and new clients
    // wait in the kernel's backlog instead of costing memory here.
    let slots = Arc::new(Semaphore::new(connections_max));
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            _ = stopped.changed() => break,
        };
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        // Out of file descriptors and the like: pause instead of spinning.
                        tracing::warn!(error = %err, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let api = api.clone();
                let builder = builder.clone();
                // Taken now, so a shutdown signalled while the handshake runs still reaches
                // the connection once it is served.
                let watcher = graceful.watcher();
                let tls = tls.clone();
                // The handshake runs in the connection's own task: a slow or silent client
                // never holds up the accept loop.
                tokio::spawn(async move {
                    let _slot = slot;
                    let Some(acceptor) = tls else {
                        return serve_connection(&builder, TokioIo::new(stream), api, watcher, peer).await;
                    };
                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            serve_connection(&builder, TokioIo::new(stream), api, watcher, peer).await;
                        }
                        Ok(Err(err)) => {
                            tracing::debug!(%peer, error = %err, "TLS handshake failed");
                        }
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
            _ = stopped.changed() => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("open connections did not finish within the shutdown grace period");
    }
}

/// Serves HTTP/1.1 or HTTP/2 (the builder tells them apart by the first bytes) on one
/// connection until it ends or a graceful shutdown finishes it.
async fn serve_connection<I>(
    builder: &auto::Builder<TokioExecutor>,
    io: I,
    api: Arc<Api>,
    watcher: Watcher,
    peer: SocketAddr,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = service_fn(move |request| {
        let api = api.clone();
        async move { Ok::<_, std::convert::Infallible>(api.handle(request).await) }
    });
    let connection = builder.serve_connection(io, service).into_owned();
    if let Err(err) = watcher.watch(connection).await {
        tracing::debug!(%peer, error = %err, "connection ended with an error");
    }
}
