//! Scriptable webhook receivers: real HTTP/1.1 servers on 127.0.0.1 (or HTTPS with HTTP/1.1 and
//! HTTP/2, see [`Receiver::start_tls`]) that record every request and answer as a test scripts them.
//!
//! A [`Receiver`] answers each request with the next [`Reply`] from its script, or with its
//! default reply once the script is empty. It can be stopped (the port then refuses connections)
//! and restarted on the same port, to play a receiver that goes down and comes back.
//!
//! ```no_run
//! # async fn demo() {
//! use mailhook_test_support::{Receiver, Reply};
//! use std::time::Duration;
//!
//! let receiver = Receiver::start().await;
//! receiver.script([Reply::status(503), Reply::Drop]);
//! // ... point the gateway at receiver.url() ...
//! let got = receiver.wait_for(3, Duration::from_secs(5)).await;
//! assert_eq!(got[2].replied, 200);
//! # }
//! ```

use std::collections::VecDeque;
use std::future;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

mod raw;

/// The path every receiver is reachable at: [`Receiver::url`] ends with it.
pub const HOOK_PATH: &str = "/hook";

/// Request bodies larger than this are not recorded; the connection is closed instead.
pub const BODY_BYTES_MAX: usize = 16 * 1024 * 1024;

/// Pending connections the listening socket queues before refusing more.
const LISTEN_BACKLOG: u32 = 1024;

/// How long the accept loop pauses after an accept error (for instance, out of file
/// descriptors) before trying again, so it does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(10);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How a receiver answers one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// Answers with this status. The body is `ok` for 2xx, `status <code>` otherwise.
    Status(u16),
    /// Answers with this status and these extra response headers (for instance `retry-after`).
    StatusWithHeaders(u16, Vec<(String, String)>),
    /// Waits this long, then answers with the inner reply.
    Delay(Duration, Box<Reply>),
    /// Closes the connection without sending any response.
    Drop,
    /// Never answers; the connection stays open until the client gives up or the receiver stops.
    Hang,
    // The variants below misbehave below HTTP's level; only a raw receiver
    // ([`Receiver::start_raw`]) can play them.
    /// Answers with this status and a chunked body that never ends, sent as fast as the
    /// client reads it.
    Endless(u16),
    /// Answers with this status, then trickles a body that never ends: one byte per interval.
    Trickle(u16, Duration),
    /// Answers with this status and a body of this many bytes (with its `content-length`).
    HugeBody(u16, usize),
    /// Answers with this status and a `content-length` of 64 KiB, sends 100 bytes of the
    /// body, then resets the connection (TCP RST).
    ResetMidBody(u16),
    /// Resets the connection (TCP RST) without any response.
    Reset,
    /// Answers `200 OK` with this HTTP version in the status line (say `HTTP/2.0` on an
    /// HTTP/1.1 connection, or `ICY`): a response no HTTP/1.1 client may take.
    WrongVersion(String),
}

impl Reply {
    /// `200 ok`.
    pub fn ok() -> Reply {
        Reply::Status(200)
    }

    /// Answers with `code`.
    pub fn status(code: u16) -> Reply {
        Reply::Status(code)
    }

    /// Waits `delay`, then answers with `then`.
    pub fn delay(delay: Duration, then: Reply) -> Reply {
        Reply::Delay(delay, Box::new(then))
    }

    /// A redirect (`code` is 301, 302, 303, 307 or 308) to `location`.
    pub fn redirect(code: u16, location: &str) -> Reply {
        Reply::StatusWithHeaders(code, vec![("location".to_owned(), location.to_owned())])
    }

    /// `code` (429 or 503) with `retry-after: <value>` (seconds or an HTTP date).
    pub fn retry_after(code: u16, value: &str) -> Reply {
        Reply::StatusWithHeaders(code, vec![("retry-after".to_owned(), value.to_owned())])
    }

    /// Whether only a raw receiver ([`Receiver::start_raw`]) can carry this reply out.
    pub fn needs_raw(&self) -> bool {
        match self {
            Reply::Status(_) | Reply::StatusWithHeaders(..) | Reply::Drop | Reply::Hang => false,
            Reply::Delay(_, then) => then.needs_raw(),
            Reply::Endless(_)
            | Reply::Trickle(..)
            | Reply::HugeBody(..)
            | Reply::ResetMidBody(_)
            | Reply::Reset
            | Reply::WrongVersion(_) => true,
        }
    }

    /// The status the client finally gets, or 0 when it gets no response ([`Reply::Drop`],
    /// [`Reply::Hang`]).
    /// For the low-level replies, the status of the status line they send (0 for
    /// [`Reply::Reset`] and [`Reply::WrongVersion`], whose answer is no HTTP status at all).
    pub fn final_status(&self) -> u16 {
        match self {
            Reply::Status(code)
            | Reply::StatusWithHeaders(code, _)
            | Reply::Endless(code)
            | Reply::Trickle(code, _)
            | Reply::HugeBody(code, _)
            | Reply::ResetMidBody(code) => *code,
            Reply::Delay(_, then) => then.final_status(),
            Reply::Drop | Reply::Hang | Reply::Reset | Reply::WrongVersion(_) => 0,
        }
    }

    /// Panics, in the test that scripted it, on a reply the server could not send.
    fn assert_valid(&self) {
        match self {
            Reply::Status(code) => assert_status_valid(*code),
            Reply::StatusWithHeaders(code, headers) => {
                assert_status_valid(*code);
                for (name, value) in headers {
                    assert!(
                        HeaderName::from_bytes(name.as_bytes()).is_ok(),
                        "receiver reply: invalid header name {name:?}"
                    );
                    assert!(
                        HeaderValue::from_str(value).is_ok(),
                        "receiver reply: invalid value {value:?} for header {name:?}"
                    );
                }
            }
            Reply::Delay(_, then) => then.assert_valid(),
            Reply::Endless(code)
            | Reply::Trickle(code, _)
            | Reply::HugeBody(code, _)
            | Reply::ResetMidBody(code) => assert_status_valid(*code),
            Reply::WrongVersion(version) => assert!(
                !version.is_empty() && version.bytes().all(|b| b.is_ascii_graphic()),
                "receiver reply: version {version:?} must be visible ASCII without spaces"
            ),
            Reply::Drop | Reply::Hang | Reply::Reset => {}
        }
    }
}

fn assert_status_valid(code: u16) {
    assert!(
        (200..=999).contains(&code) && StatusCode::from_u16(code).is_ok(),
        "receiver reply: status {code} cannot be sent (expected 200..=999)"
    );
}

/// One request as the receiver got it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    /// The request path, without the query.
    pub path: String,
    /// Header names in lower case, in the order received; values decoded lossily as UTF-8.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    /// When the body had been fully read. A `tokio::time::Instant` (see STYLE.md) so it agrees
    /// with tokio timers; `.into_std()` gives a `std::time::Instant`.
    pub at: Instant,
    /// The status answered, or 0 when the request got no response ([`Reply::Drop`],
    /// [`Reply::Hang`]). Already set when the request is recorded, before the reply is sent.
    pub replied: u16,
    /// The HTTP version of the request: HTTP/2 only over TLS, when the client chose it by ALPN.
    pub version: Version,
    /// Over TLS, the DER of the first certificate the client presented (mTLS), if any.
    pub client_cert: Option<Vec<u8>>,
}

impl Recorded {
    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body parsed as JSON; panics with the body in the message when it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|err| {
            panic!(
                "receiver: body of {} {} is not JSON ({err}): {:?}",
                self.method,
                self.path,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// A scriptable HTTP/1.1 receiver on `127.0.0.1`. Clones share the same server; the server
/// stops when the last clone is dropped.
#[derive(Clone)]
pub struct Receiver {
    inner: Arc<Inner>,
}

/// Owned only by [`Receiver`] clones (never by the server's tasks), so its drop stops the server.
struct Inner {
    shared: Arc<Shared>,
}

/// What the server's tasks and the [`Receiver`] share.
struct Shared {
    addr: SocketAddr,
    /// `Some` for an HTTPS receiver: every connection is a TLS handshake first.
    tls: Option<TlsAcceptor>,
    /// How connections are served.
    mode: Mode,
    /// TCP connections accepted so far (all modes).
    connections: AtomicUsize,
    /// Response bytes written so far (raw mode only).
    bytes_sent: AtomicU64,
    state: Mutex<State>,
    /// Number of recorded requests, for [`Receiver::wait_for`].
    count: watch::Sender<usize>,
}

/// How a receiver serves its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// hyper's HTTP/1.1 server (or HTTP/1.1 and HTTP/2 over TLS).
    Hyper,
    /// A hand-written HTTP/1.1 exchange that can misbehave below HTTP (`raw.rs`).
    Raw,
    /// Accepts TCP connections and then never reads or writes: a TLS handshake that stalls.
    Stall,
}

struct State {
    default: Reply,
    script: VecDeque<Reply>,
    recorded: Vec<Recorded>,
    /// `Some` while serving. The accept task borrows it on each poll, so [`Receiver::stop`]
    /// closes the port at once by taking it out.
    listener: Option<TcpListener>,
    accept_task: Option<AbortHandle>,
    connections: Vec<AbortHandle>,
}

impl Receiver {
    /// Starts a receiver on `127.0.0.1:0` on the current tokio runtime. It answers `200 ok` until
    /// scripted otherwise.
    pub async fn start() -> Receiver {
        Receiver::start_with(None)
    }

    /// Starts an HTTPS receiver on `127.0.0.1:0` with `config` (see [`crate::TestPki`]). It
    /// serves HTTP/1.1 and HTTP/2, as the client chooses by ALPN among those `config` offers,
    /// and records the client certificate of each request.
    pub async fn start_tls(config: Arc<ServerConfig>) -> Receiver {
        Receiver::start_with(Some(TlsAcceptor::from(config)))
    }

    /// Starts a raw HTTP/1.1 receiver on `127.0.0.1:0`: it reads each request itself and can
    /// carry out every [`Reply`], including those that misbehave below HTTP (a body that never
    /// ends or trickles, a reset mid-body, a wrong HTTP version). Requests must carry their
    /// body with `content-length` (the gateway's do).
    pub async fn start_raw() -> Receiver {
        Receiver::start_mode(None, Mode::Raw)
    }

    /// Starts a receiver whose TLS handshake stalls: it accepts TCP connections on
    /// `127.0.0.1:0` and never reads or writes a byte. [`Receiver::url`] is `https://...`;
    /// nothing is ever recorded, [`Receiver::connections`] counts the connections.
    pub async fn start_stalled_tls() -> Receiver {
        Receiver::start_mode(None, Mode::Stall)
    }

    fn start_with(tls: Option<TlsAcceptor>) -> Receiver {
        Receiver::start_mode(tls, Mode::Hyper)
    }

    fn start_mode(tls: Option<TlsAcceptor>, mode: Mode) -> Receiver {
        let listener = bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
            .unwrap_or_else(|err| panic!("receiver: cannot bind 127.0.0.1:0: {err}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|err| panic!("receiver: cannot read the bound address: {err}"));
        let shared = Arc::new(Shared {
            addr,
            tls,
            mode,
            connections: AtomicUsize::new(0),
            bytes_sent: AtomicU64::new(0),
            state: Mutex::new(State {
                default: Reply::ok(),
                script: VecDeque::new(),
                recorded: Vec::new(),
                listener: None,
                accept_task: None,
                connections: Vec::new(),
            }),
            count: watch::Sender::new(0),
        });
        shared.serve(listener);
        Receiver {
            inner: Arc::new(Inner { shared }),
        }
    }

    /// `http://127.0.0.1:PORT/hook`, or `https://localhost:PORT/hook` for an HTTPS receiver
    /// (the name its test certificate is for).
    pub fn url(&self) -> String {
        let shared = &self.inner.shared;
        if shared.tls.is_none() && shared.mode != Mode::Stall {
            format!("http://{}{HOOK_PATH}", self.addr())
        } else {
            format!("https://localhost:{}{HOOK_PATH}", self.addr().port())
        }
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.inner.shared.connections.load(Ordering::SeqCst)
    }

    /// Response bytes written so far, head and body (raw receivers only; 0 otherwise).
    pub fn bytes_sent(&self) -> u64 {
        self.inner.shared.bytes_sent.load(Ordering::SeqCst)
    }

    /// The address the receiver listens on; the same across [`Receiver::restart`].
    pub fn addr(&self) -> SocketAddr {
        self.inner.shared.addr
    }

    /// The reply used when the script is empty.
    pub fn set_default(&self, reply: Reply) {
        self.check(&reply);
        self.inner.shared.lock().default = reply;
    }

    /// Appends one reply to the script; each request takes the next one.
    pub fn push(&self, reply: Reply) {
        self.check(&reply);
        self.inner.shared.lock().script.push_back(reply);
    }

    /// Appends these replies to the script, in order.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        let replies: Vec<Reply> = replies.into_iter().collect();
        replies.iter().for_each(|reply| self.check(reply));
        self.inner.shared.lock().script.extend(replies);
    }

    /// Panics, in the test that scripted it, on a reply this receiver cannot carry out.
    fn check(&self, reply: &Reply) {
        reply.assert_valid();
        assert!(
            !reply.needs_raw() || self.inner.shared.mode == Mode::Raw,
            "receiver reply {reply:?} needs a raw receiver (Receiver::start_raw)"
        );
    }

    /// Stops serving: the port is closed at once, so new connections are refused, and open
    /// connections (including keep-alive ones and those in [`Reply::Hang`]) are closed.
    /// Recorded requests, the script and the default are kept. Stopping twice is harmless.
    pub fn stop(&self) {
        self.inner.shared.stop();
    }

    /// Serves again on the same port (after [`Receiver::stop`]; if still running it stops
    /// first). Panics if another socket took the port in the meantime.
    pub async fn restart(&self) {
        let shared = &self.inner.shared;
        shared.stop();
        let listener = bind(shared.addr).unwrap_or_else(|err| {
            panic!(
                "receiver: cannot bind {} again on restart: {err}",
                shared.addr
            )
        });
        shared.serve(listener);
    }

    /// Every request recorded so far (since the last [`Receiver::clear`]), in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.inner.shared.lock().recorded.clone()
    }

    /// How many requests have been recorded (since the last [`Receiver::clear`]).
    pub fn count(&self) -> usize {
        self.inner.shared.lock().recorded.len()
    }

    /// Waits until at least `n` requests are recorded and returns all recorded requests (maybe
    /// more than `n`). Panics, saying how many arrived, if `timeout` passes first.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Recorded> {
        let mut count = self.inner.shared.count.subscribe();
        let reached = tokio::time::timeout(timeout, count.wait_for(|&count| count >= n)).await;
        if reached.is_err() {
            panic!(
                "receiver {}: expected {n} request(s) within {timeout:?}, {} arrived",
                self.url(),
                self.count()
            );
        }
        self.requests()
    }

    /// Forgets the recorded requests. The script and the default stay as they are.
    pub fn clear(&self) {
        let mut state = self.inner.shared.lock();
        state.recorded.clear();
        self.inner.shared.count.send_replace(0);
    }
}

impl std::fmt::Debug for Receiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver")
            .field("addr", &self.addr())
            .finish_non_exhaustive()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shared.stop();
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state half-updated in a way that
        // matters to a test, so a poisoned lock is still used.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Starts the accept task on `listener`.
    fn serve(self: &Arc<Self>, listener: TcpListener) {
        let mut state = self.lock();
        debug_assert!(state.listener.is_none() && state.accept_task.is_none());
        state.listener = Some(listener);
        let task = tokio::spawn(Arc::clone(self).accept_loop());
        state.accept_task = Some(task.abort_handle());
    }

    fn stop(&self) {
        let mut state = self.lock();
        // Dropping the listener closes the socket now, not when the runtime next runs a task.
        drop(state.listener.take());
        if let Some(task) = state.accept_task.take() {
            task.abort();
        }
        for connection in state.connections.drain(..) {
            connection.abort();
        }
    }

    async fn accept_loop(self: Arc<Self>) {
        loop {
            let accepted = future::poll_fn(|cx| match &self.lock().listener {
                Some(listener) => listener.poll_accept(cx).map(Some),
                None => Poll::Ready(None),
            })
            .await;
            match accepted {
                None => return,
                Some(Ok((stream, _peer))) => self.spawn_connection(stream),
                Some(Err(_)) => tokio::time::sleep(ACCEPT_ERROR_PAUSE).await,
            }
        }
    }

    fn spawn_connection(self: &Arc<Self>, stream: TcpStream) {
        let mut state = self.lock();
        if state.listener.is_none() {
            // Stopped between accept and here: the client must see the receiver as down.
            return;
        }
        self.connections.fetch_add(1, Ordering::SeqCst);
        state.connections.retain(|task| !task.is_finished());
        let task = match self.mode {
            Mode::Hyper => tokio::spawn(Arc::clone(self).serve_connection(stream)),
            Mode::Raw => tokio::spawn(raw::serve(Arc::clone(self), stream)),
            // Held open, silent, until the client gives up or the receiver stops.
            Mode::Stall => tokio::spawn(async move {
                let _stream = stream;
                future::pending::<()>().await
            }),
        };
        state.connections.push(task.abort_handle());
    }

    /// Takes the next reply of the script (or the default) and records the request with the
    /// status that reply answers.
    fn record(&self, mut request: Recorded) -> Reply {
        let mut state = self.lock();
        let reply = state
            .script
            .pop_front()
            .unwrap_or_else(|| state.default.clone());
        request.replied = reply.final_status();
        state.recorded.push(request);
        self.count.send_replace(state.recorded.len());
        reply
    }

    async fn serve_connection(self: Arc<Self>, stream: TcpStream) {
        // Signalled by a `Reply::Drop`: the connection is dropped without writing a response.
        let drop_connection = Arc::new(Notify::new());
        let Some(acceptor) = self.tls.clone() else {
            let service = self.service(&drop_connection, None);
            let connection = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = connection => {}
                () = drop_connection.notified() => {}
            }
            return;
        };
        // A failed handshake (say, no client certificate where one is required) just ends the
        // connection: the client sees the TLS error, and nothing is recorded.
        let Ok(stream) = acceptor.accept(stream).await else {
            return;
        };
        let client_cert = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|cert| cert.to_vec());
        let service = self.service(&drop_connection, client_cert);
        let builder = auto::Builder::new(TokioExecutor::new());
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        tokio::select! {
            _ = connection => {}
            () = drop_connection.notified() => {}
        }
    }

    fn service(
        self: &Arc<Self>,
        drop_connection: &Arc<Notify>,
        client_cert: Option<Vec<u8>>,
    ) -> impl hyper::service::Service<
        Request<Incoming>,
        Response = Response<Full<Bytes>>,
        Error = BoxError,
        Future = impl Future<Output = Result<Response<Full<Bytes>>, BoxError>> + Send + 'static,
    > + Clone
    + 'static {
        let shared = Arc::clone(self);
        let drop_connection = Arc::clone(drop_connection);
        service_fn(move |request| {
            Arc::clone(&shared).handle(request, Arc::clone(&drop_connection), client_cert.clone())
        })
    }

    async fn handle(
        self: Arc<Self>,
        request: Request<Incoming>,
        drop_connection: Arc<Notify>,
        client_cert: Option<Vec<u8>>,
    ) -> Result<Response<Full<Bytes>>, BoxError> {
        let (parts, body) = request.into_parts();
        let body = Limited::new(body, BODY_BYTES_MAX)
            .collect()
            .await?
            .to_bytes();
        let headers = parts
            .headers
            .iter()
            .map(|(name, value)| {
                let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
                (name.as_str().to_owned(), value)
            })
            .collect();
        let reply = self.record(Recorded {
            method: parts.method.as_str().to_owned(),
            path: parts.uri.path().to_owned(),
            headers,
            body,
            at: Instant::now(),
            replied: 0,
            version: parts.version,
            client_cert,
        });
        answer(reply, &drop_connection).await
    }
}

/// Carries out `reply`. Never returns for [`Reply::Drop`] and [`Reply::Hang`].
async fn answer(
    mut reply: Reply,
    drop_connection: &Notify,
) -> Result<Response<Full<Bytes>>, BoxError> {
    loop {
        match reply {
            Reply::Status(code) => return response(code, &[]),
            Reply::StatusWithHeaders(code, headers) => return response(code, &headers),
            Reply::Delay(delay, then) => {
                tokio::time::sleep(delay).await;
                reply = *then;
            }
            Reply::Drop => {
                drop_connection.notify_one();
                return future::pending().await;
            }
            Reply::Hang => return future::pending().await,
            // `Receiver::check` keeps these to raw receivers.
            Reply::Endless(_)
            | Reply::Trickle(..)
            | Reply::HugeBody(..)
            | Reply::ResetMidBody(_)
            | Reply::Reset
            | Reply::WrongVersion(_) => {
                unreachable!("a raw-only reply was scripted on a hyper receiver")
            }
        }
    }
}

fn response(code: u16, headers: &[(String, String)]) -> Result<Response<Full<Bytes>>, BoxError> {
    let body = if (200..300).contains(&code) {
        Bytes::from_static(b"ok")
    } else {
        Bytes::from(format!("status {code}"))
    };
    let mut builder = Response::builder()
        .status(code)
        .header(hyper::header::CONTENT_TYPE, "text/plain");
    for (name, value) in headers {
        builder = builder.header(name.as_str(), value.as_str());
    }
    Ok(builder.body(Full::new(body))?)
}

/// Binds with SO_REUSEADDR so a stopped receiver can bind its port again despite connections
/// left in TIME_WAIT.
fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::ErrorKind;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const WAIT: Duration = Duration::from_secs(5);

    /// A hyper HTTP/1.1 client connection to `receiver`.
    async fn connect(receiver: &Receiver) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
        let stream = TcpStream::connect(receiver.addr()).await.unwrap();
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(connection);
        sender
    }

    /// Sends `POST /hook` with `body` on `sender`; the status and body of the response.
    async fn post(
        sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
        body: &'static str,
    ) -> Result<(u16, Bytes), hyper::Error> {
        sender.ready().await?;
        let request = Request::post(HOOK_PATH)
            .header("host", "127.0.0.1")
            .header("content-type", "application/json")
            .header("Webhook-Id", "msg_1")
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap();
        let response = sender.send_request(request).await?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }

    /// One request on a fresh connection.
    async fn post_once(
        receiver: &Receiver,
        body: &'static str,
    ) -> Result<(u16, Bytes), hyper::Error> {
        post(&mut connect(receiver).await, body).await
    }

    #[tokio::test]
    async fn default_reply_is_200_ok_and_request_is_recorded() {
        let receiver = Receiver::start().await;
        assert!(receiver.url().starts_with("http://127.0.0.1:"));
        assert!(receiver.url().ends_with("/hook"));

        let (status, body) = post_once(&receiver, r#"{"event":"delivered"}"#)
            .await
            .unwrap();
        assert_eq!((status, &body[..]), (200, &b"ok"[..]));

        let got = receiver.wait_for(1, WAIT).await;
        assert_eq!(got.len(), 1);
        let request = &got[0];
        assert_eq!(request.method, "POST");
        assert_eq!(request.path, "/hook");
        assert_eq!(request.replied, 200);
        assert_eq!(request.header("webhook-id"), Some("msg_1"));
        assert_eq!(request.header("Content-Type"), Some("application/json"));
        assert!(request.headers.iter().any(|(name, _)| name == "webhook-id"));
        assert_eq!(request.json(), serde_json::json!({"event": "delivered"}));
        assert_eq!(receiver.count(), 1);

        receiver.clear();
        assert_eq!(receiver.count(), 0);
        assert!(receiver.requests().is_empty());
    }

    #[tokio::test]
    async fn script_is_used_in_order_then_the_default() {
        let receiver = Receiver::start().await;
        receiver.set_default(Reply::status(204));
        receiver.push(Reply::status(500));
        receiver.script([
            Reply::StatusWithHeaders(429, vec![("Retry-After".into(), "7".into())]),
            Reply::ok(),
        ]);

        // All on one keep-alive connection.
        let mut sender = connect(&receiver).await;
        assert_eq!(post(&mut sender, "1").await.unwrap().0, 500);
        sender.ready().await.unwrap();
        let request = Request::post(HOOK_PATH)
            .body(Full::new(Bytes::from_static(b"2")))
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), 429);
        assert_eq!(response.headers()["retry-after"], "7");
        response.into_body().collect().await.unwrap();
        assert_eq!(post(&mut sender, "3").await.unwrap().0, 200);
        assert_eq!(post(&mut sender, "4").await.unwrap().0, 204);
        assert_eq!(post(&mut sender, "5").await.unwrap().0, 204);

        let got = receiver.wait_for(5, WAIT).await;
        let replied: Vec<u16> = got.iter().map(|r| r.replied).collect();
        assert_eq!(replied, [500, 429, 200, 204, 204]);
        let bodies: Vec<&[u8]> = got.iter().map(|r| &r.body[..]).collect();
        assert_eq!(bodies, [b"1", b"2", b"3", b"4", b"5"]);
    }

    #[tokio::test]
    async fn delay_answers_late_but_records_at_once() {
        let receiver = Receiver::start().await;
        let delay = Duration::from_millis(300);
        receiver.push(Reply::delay(delay, Reply::status(202)));

        let sent = Instant::now();
        let client = tokio::spawn({
            let receiver = receiver.clone();
            async move { post_once(&receiver, "late").await }
        });
        let got = receiver.wait_for(1, WAIT).await;
        assert_eq!(got[0].replied, 202);
        assert!(got[0].at - sent < delay, "recorded only after the delay");
        assert!(!client.is_finished());

        let (status, _) = client.await.unwrap().unwrap();
        assert_eq!(status, 202);
        assert!(sent.elapsed() >= delay);
    }

    #[tokio::test]
    async fn drop_closes_the_connection_without_a_response() {
        let receiver = Receiver::start().await;
        receiver.push(Reply::Drop);

        let error = post_once(&receiver, "x").await.unwrap_err();
        assert!(
            error.is_incomplete_message() || error.is_canceled() || error.is_closed(),
            "unexpected error: {error:?}"
        );
        assert_eq!(receiver.wait_for(1, WAIT).await[0].replied, 0);

        // The default applies again afterwards.
        assert_eq!(post_once(&receiver, "y").await.unwrap().0, 200);
    }

    #[tokio::test]
    async fn hang_never_answers() {
        let receiver = Receiver::start().await;
        receiver.set_default(Reply::Hang);

        let answered =
            tokio::time::timeout(Duration::from_millis(200), post_once(&receiver, "x")).await;
        assert!(answered.is_err(), "hang answered: {answered:?}");
        assert_eq!(receiver.wait_for(1, WAIT).await[0].replied, 0);
    }

    #[tokio::test]
    async fn hand_written_request_is_served() {
        let receiver = Receiver::start().await;
        let mut stream = TcpStream::connect(receiver.addr()).await.unwrap();
        stream
            .write_all(
                b"PUT /hook?x=1 HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Custom: A b\r\n\
                  Content-Length: 5\r\nConnection: close\r\n\r\nhello",
            )
            .await
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
        assert!(response.ends_with("\r\n\r\nok"), "{response}");

        let got = receiver.wait_for(1, WAIT).await;
        assert_eq!(got[0].method, "PUT");
        assert_eq!(got[0].path, "/hook");
        assert_eq!(got[0].header("x-custom"), Some("A b"));
        assert_eq!(&got[0].body[..], b"hello");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stop_refuses_connections_and_restart_serves_on_the_same_port() {
        let receiver = Receiver::start().await;
        let addr = receiver.addr();
        let mut kept_alive = connect(&receiver).await;
        assert_eq!(post(&mut kept_alive, "before").await.unwrap().0, 200);

        receiver.stop();
        let refused = TcpStream::connect(addr).await.unwrap_err();
        assert_eq!(refused.kind(), ErrorKind::ConnectionRefused);
        // The open keep-alive connection is closed too.
        assert!(post(&mut kept_alive, "during").await.is_err());
        receiver.stop();

        receiver.restart().await;
        assert_eq!(receiver.addr(), addr);
        assert_eq!(post_once(&receiver, "after").await.unwrap().0, 200);

        let bodies: Vec<Bytes> = receiver
            .wait_for(2, WAIT)
            .await
            .into_iter()
            .map(|r| r.body)
            .collect();
        assert_eq!(bodies, [&b"before"[..], &b"after"[..]]);
    }

    #[tokio::test]
    async fn a_tls_receiver_serves_https_and_records_the_version_and_client_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let pki = crate::TestPki::generate(dir.path());
        let receiver = Receiver::start_tls(pki.server_config()).await;
        assert!(receiver.url().starts_with("https://localhost:"));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(pki.client_config())
            .https_only()
            .enable_http2()
            .build();
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build(connector);
        let request = Request::post(receiver.url())
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap();
        let response = client.request(request).await.unwrap();
        assert_eq!(response.status(), 200);
        let got = receiver.wait_for(1, WAIT).await;
        assert_eq!(got[0].version, Version::HTTP_2);
        assert_eq!(got[0].client_cert, None);
    }

    #[tokio::test]
    async fn restart_while_running_keeps_serving() {
        let receiver = Receiver::start().await;
        receiver.restart().await;
        assert_eq!(post_once(&receiver, "x").await.unwrap().0, 200);
    }

    #[tokio::test]
    #[should_panic(expected = "expected 2 request(s) within 50ms, 1 arrived")]
    async fn wait_for_panics_with_the_count_that_arrived() {
        let receiver = Receiver::start().await;
        post_once(&receiver, "x").await.unwrap();
        receiver.wait_for(2, Duration::from_millis(50)).await;
    }

    #[tokio::test]
    #[should_panic(expected = "status 42 cannot be sent")]
    async fn invalid_status_panics_when_scripted() {
        Receiver::start()
            .await
            .push(Reply::delay(Duration::ZERO, Reply::status(42)));
    }
}
