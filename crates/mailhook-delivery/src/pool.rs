//! Keep-alive HTTP/1.1 connections to plain `http` receivers: per host and port, a stack of
//! idle connections, the most recently used taken first.
//!
//! hyper-util's legacy client pools every scheme, with more machinery per request than a push
//! needs: a pool key of scheme and authority built per request, a connect future raced
//! against every checkout, and a task spawned per response to hand the connection back (perf:
//! ~7.5% of the gateway's CPU end to end, most of it that machinery). A push is one POST and a
//! fully read, bounded answer, so the connection goes back inline. `https` addresses keep
//! that client: TLS, ALPN and HTTP/2 live there.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, Parts};
use http::{HeaderValue, Request, Response, Uri, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::client::legacy::connect::HttpConnector;
use tokio::time::Instant;
use tower_service::Service;

use crate::client::{Cause, Failure, cause, with_cause};
use crate::resolve::GuardedResolver;

type Sender = SendRequest<Full<Bytes>>;

/// Idle connections by host and port, and how long one may stay idle.
pub(crate) struct Http1Pool {
    connector: HttpConnector<GuardedResolver>,
    idle: Mutex<Idle>,
    idle_per_host_max: usize,
    idle_timeout: Duration,
}

struct Idle {
    hosts: HashMap<Authority, Vec<IdleConnection>>,
    /// When connections past their idle time were last closed, across all hosts.
    swept: Instant,
}

struct IdleConnection {
    sender: Sender,
    since: Instant,
}

/// A connection that carried a request: handed back with [`Http1Pool::put_back`] once the
/// answer was read to its end, or dropped (and so closed) otherwise.
pub(crate) struct Lease {
    authority: Authority,
    sender: Sender,
}

impl Http1Pool {
    pub fn new(
        connector: HttpConnector<GuardedResolver>,
        idle_per_host_max: usize,
        idle_timeout: Duration,
    ) -> Http1Pool {
        Http1Pool {
            connector,
            idle: Mutex::new(Idle {
                hosts: HashMap::new(),
                swept: Instant::now(),
            }),
            idle_per_host_max,
            idle_timeout,
        }
    }

    /// Sends `request` (absolute `http` URI) on an idle connection to its host, or a new one.
    /// A request an idle connection could not take (the receiver closed it meanwhile) goes
    /// on the next, then on a new connection: it was never sent, so this repeats nothing.
    pub async fn send(
        &self,
        mut request: Request<Full<Bytes>>,
    ) -> Result<(Response<Incoming>, Lease), Failure> {
        let uri = request.uri().clone();
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| Failure::Other(format!("address `{uri}` has no host")))?;
        if !request.headers().contains_key(header::HOST) {
            request
                .headers_mut()
                .insert(header::HOST, host_header(&authority)?);
        }
        *request.uri_mut() = origin_form(&uri);
        while let Some(mut sender) = self.checkout(&authority) {
            // Handed back after its answer was read; the connection task may not have
            // marked it ready yet, or may have seen the receiver close it.
            if sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(request).await {
                Ok(response) => return Ok((response, Lease { authority, sender })),
                Err(mut err) => match err.take_message() {
                    Some(unsent) => request = unsent,
                    None => return Err(exchange_error(&err.into_error())),
                },
            }
        }
        let mut sender = self.connect(uri).await?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|err| exchange_error(&err))?;
        Ok((response, Lease { authority, sender }))
    }

    /// Keeps a connection whose answer was read to its end for the next request to its host.
    pub fn put_back(&self, lease: Lease) {
        if lease.sender.is_closed() {
            return;
        }
        let now = Instant::now();
        let mut idle = self
            .idle
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let connections = idle.hosts.entry(lease.authority).or_default();
        if connections.len() < self.idle_per_host_max {
            connections.push(IdleConnection {
                sender: lease.sender,
                since: now,
            });
        }
    }

    fn checkout(&self, authority: &Authority) -> Option<Sender> {
        let now = Instant::now();
        let mut idle = self
            .idle
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if now.duration_since(idle.swept) >= self.idle_timeout / 2 {
            idle.swept = now;
            self.sweep(&mut idle.hosts, now);
        }
        let connections = idle.hosts.get_mut(authority)?;
        while let Some(connection) = connections.pop() {
            if !connection.sender.is_closed()
                && now.duration_since(connection.since) < self.idle_timeout
            {
                return Some(connection.sender);
            }
        }
        None
    }

    /// Closes connections idle too long or closed by their receiver, on every host: a host
    /// no longer pushed to would otherwise keep its sockets open.
    fn sweep(&self, hosts: &mut HashMap<Authority, Vec<IdleConnection>>, now: Instant) {
        hosts.retain(|_, connections| {
            connections.retain(|c| {
                !c.sender.is_closed() && now.duration_since(c.since) < self.idle_timeout
            });
            !connections.is_empty()
        });
    }

    async fn connect(&self, uri: Uri) -> Result<Sender, Failure> {
        let mut connector = self.connector.clone();
        let io = connector
            .call(uri)
            .await
            .map_err(|err| connect_error(&err))?;
        let (sender, connection) = http1::handshake(io)
            .await
            .map_err(|err| exchange_error(&err))?;
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, "receiver connection ended with an error");
            }
        });
        Ok(sender)
    }
}

/// `Host` as an HTTP/1.1 client sends it: the port only when it is not 80.
fn host_header(authority: &Authority) -> Result<HeaderValue, Failure> {
    let value = match authority.port_u16() {
        Some(80) | None => HeaderValue::from_str(authority.host()),
        Some(port) => HeaderValue::from_str(&format!("{}:{port}", authority.host())),
    };
    value.map_err(|_| Failure::Other(format!("host `{authority}` is not a valid Host header")))
}

/// The request target of an HTTP/1.1 request to an origin server: path and query only.
fn origin_form(uri: &Uri) -> Uri {
    match uri.path_and_query() {
        Some(path) if path.as_str() != "/" => {
            let mut parts = Parts::default();
            parts.path_and_query = Some(path.clone());
            Uri::from_parts(parts).unwrap_or_default()
        }
        _ => Uri::default(),
    }
}

/// What a failed connect says: the SSRF guard's refusal as it is, else its innermost cause.
fn connect_error(err: &(dyn std::error::Error + 'static)) -> Failure {
    match cause(Some(err)) {
        Cause::Known(failure) => failure,
        Cause::Innermost(last) => Failure::Connect(with_cause("connect error", last)),
    }
}

/// What a broken exchange says: hyper's words and their innermost cause.
fn exchange_error(err: &hyper::Error) -> Failure {
    use std::error::Error as _;
    match cause(err.source()) {
        Cause::Known(failure) => failure,
        Cause::Innermost(last) => {
            Failure::Other(with_cause(&format!("request failed: {err}"), last))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_leaves_out_the_default_port_only() {
        let host = |authority: &str| {
            let value = host_header(&authority.parse().unwrap()).unwrap_or_else(|_| panic!());
            value.to_str().unwrap().to_owned()
        };
        assert_eq!(host("example.com"), "example.com");
        assert_eq!(host("example.com:80"), "example.com");
        assert_eq!(host("127.0.0.1:8080"), "127.0.0.1:8080");
        assert_eq!(host("[::1]:9000"), "[::1]:9000");
        assert_eq!(host("user@example.com:81"), "example.com:81");
    }

    #[test]
    fn the_target_is_the_path_and_query() {
        let target = |uri: &str| origin_form(&uri.parse().unwrap()).to_string();
        assert_eq!(target("http://h:1/hooks/mail?x=1"), "/hooks/mail?x=1");
        assert_eq!(target("http://h:1/"), "/");
        assert_eq!(target("http://h:1"), "/");
    }
}
