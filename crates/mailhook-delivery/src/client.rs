//! One HTTP attempt: POST the signed payload, wait for a 2xx within the timeout, and say
//! what happened in words a receiver's owner can act on.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::capture_connection;
use hyper_util::rt::TokioExecutor;
use mailhook_core::chain::Outcome;
use tokio::time::Instant;

use crate::pool::Http1Pool;
use crate::resolve::{GuardError, GuardedResolver};
use crate::tls::{KeepTlsErrors, TlsErrorSlot, describe_tls_error, tls_cause};

/// What every push says it is: `mailhook/<version>`.
const USER_AGENT: &str = concat!("mailhook/", env!("CARGO_PKG_VERSION"));

const JSON: &str = "application/json";
/// Headers of every attempt: content type, user agent and the five below.
const ATTEMPT_HEADERS: usize = 7;
const WEBHOOK_ID: &str = "webhook-id";
const WEBHOOK_TIMESTAMP: &str = "webhook-timestamp";
const WEBHOOK_SIGNATURE: &str = "webhook-signature";
const MAILHOOK_ATTEMPT: &str = "mailhook-attempt";
const MAILHOOK_ADDRESS: &str = "mailhook-address";

/// The headers of one attempt, besides content type and user agent.
#[derive(Debug, Clone)]
pub struct AttemptHeaders {
    pub webhook_id: String,
    pub webhook_timestamp: i64,
    pub webhook_signature: String,
    pub attempt: u32,
    pub address_role: &'static str,
}

/// What one attempt came to, for the attempt log and the chain.
#[derive(Debug, Clone)]
pub struct AttemptResult {
    pub outcome: Outcome,
    pub kind: AttemptKind,
    pub status: Option<u16>,
    pub error: Option<String>,
    pub duration: Duration,
}

/// The kind of ending an attempt had, for metrics and alerting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptKind {
    /// The receiver answered with this status.
    Status(u16),
    Timeout,
    /// No connection: refused, unreachable, name not found.
    Connect,
    Tls,
    /// The SSRF guard refused the address's IP.
    Blocked,
    /// Connected, then the exchange broke (reset, malformed answer).
    Other,
    /// A sink plugin failed before any request was made (or is suspended, or not loaded).
    Plugin,
}

/// What the client is built from.
pub struct ClientOptions {
    pub connect_timeout: Duration,
    pub attempt_timeout: Duration,
    pub response_bytes_max: usize,
    /// Idle keep-alive connections kept per receiver, and for how long.
    pub idle_per_address_max: usize,
    pub idle_timeout: Duration,
    pub resolver: GuardedResolver,
    /// Roots and client certificate for `https` addresses (see `tls::client_config`).
    pub tls: Arc<rustls::ClientConfig>,
}

/// A keep-alive HTTP client shared by every delivery.
#[derive(Clone)]
pub struct HttpClient {
    /// `https` addresses: TLS, ALPN, HTTP/2.
    client: Client<KeepTlsErrors<HttpsConnector<HttpConnector<GuardedResolver>>>, Full<Bytes>>,
    /// Plain `http` addresses, the common case behind a load balancer or on a private network.
    http1: Arc<Http1Pool>,
    guard: GuardedResolver,
    attempt_timeout: Duration,
    response_bytes_max: usize,
}

impl HttpClient {
    pub fn new(options: ClientOptions) -> HttpClient {
        let ClientOptions {
            connect_timeout,
            attempt_timeout,
            response_bytes_max,
            idle_per_address_max,
            idle_timeout,
            resolver,
            tls,
        } = options;
        let mut connector = HttpConnector::new_with_resolver(resolver.clone());
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_nodelay(true);
        // The TLS layer above takes `https` URIs; the TCP connector must let them through.
        connector.enforce_http(false);
        let http1 = Arc::new(Http1Pool::new(
            connector.clone(),
            idle_per_address_max,
            idle_timeout,
        ));
        // ALPN offers h2 and http/1.1: the receiver picks, and a plain `http` address stays
        // HTTP/1.1 (no h2c), as before.
        let connector = HttpsConnectorBuilder::new()
            .with_tls_config(Arc::unwrap_or_clone(tls))
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(connector);
        let connector = KeepTlsErrors(connector);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(idle_timeout)
            .pool_max_idle_per_host(idle_per_address_max)
            .build(connector);
        HttpClient {
            client,
            http1,
            guard: resolver,
            attempt_timeout,
            response_bytes_max,
        }
    }

    /// POSTs `body` to `url`. Never fails: every problem becomes a failed result.
    pub async fn post(&self, url: &str, body: Bytes, headers: &AttemptHeaders) -> AttemptResult {
        let started = Instant::now();
        let request = match Self::request(url, body, headers) {
            Ok(request) => request,
            Err(error) => return failed(AttemptKind::Other, error, started.elapsed()),
        };
        self.send(request, started).await
    }

    /// A request a sink plugin asked for: its method, headers and body, through the same
    /// connections, SSRF guard, timeout and response limit as a push. Never fails: every
    /// problem becomes a failed result.
    pub async fn plugin_request(
        &self,
        method: &str,
        url: &str,
        headers: &[(String, String)],
        body: Bytes,
    ) -> AttemptResult {
        let started = Instant::now();
        let request = (|| {
            let uri: http::Uri = url
                .parse()
                .map_err(|err| format!("invalid address `{url}`: {err}"))?;
            if !matches!(uri.scheme_str(), Some("http" | "https")) {
                return Err(format!(
                    "scheme of `{url}` is not supported: only http and https"
                ));
            }
            let method = Method::from_bytes(method.as_bytes())
                .map_err(|err| format!("invalid method `{method}`: {err}"))?;
            let mut request = Request::builder()
                .method(method)
                .uri(uri)
                .header(header::USER_AGENT, USER_AGENT);
            for (name, value) in headers {
                request = request.header(name.as_str(), value.as_str());
            }
            request
                .body(Full::new(body))
                .map_err(|err| format!("cannot build request: {err}"))
        })();
        match request {
            Ok(request) => self.send(request, started).await,
            Err(error) => failed(AttemptKind::Other, error, started.elapsed()),
        }
    }

    async fn send(&self, request: Request<Full<Bytes>>, started: Instant) -> AttemptResult {
        // The connector resolves names through the guard, but takes IP literals as they are.
        if let Some(host) = request.uri().host() {
            let bare = host.trim_start_matches('[').trim_end_matches(']');
            if let Ok(ip) = bare.parse::<std::net::IpAddr>()
                && let Err(blocked) = self.guard.check_literal(host, ip)
            {
                return blocked_result(blocked.to_string(), started.elapsed());
            }
        }
        match tokio::time::timeout(self.attempt_timeout, self.exchange(request)).await {
            Ok(Ok((status, retry_after))) => classify(status, retry_after, started.elapsed()),
            Ok(Err(Failure::Blocked(error))) => blocked_result(error, started.elapsed()),
            Ok(Err(Failure::Tls(error))) => failed(AttemptKind::Tls, error, started.elapsed()),
            Ok(Err(Failure::Connect(error))) => {
                failed(AttemptKind::Connect, error, started.elapsed())
            }
            Ok(Err(Failure::Other(error))) => failed(AttemptKind::Other, error, started.elapsed()),
            Err(_) => failed(
                AttemptKind::Timeout,
                format!(
                    "timed out after {} (delivery.attempt_timeout)",
                    humantime_format(self.attempt_timeout)
                ),
                started.elapsed(),
            ),
        }
    }

    fn request(url: &str, body: Bytes, h: &AttemptHeaders) -> Result<Request<Full<Bytes>>, String> {
        let uri: http::Uri = url
            .parse()
            .map_err(|err| format!("invalid address `{url}`: {err}"))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) {
            return Err(format!(
                "scheme of `{url}` is not supported: only http and https"
            ));
        }
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = uri;
        *request.headers_mut() = Self::header_map(h)?;
        Ok(request)
    }

    /// Every header an attempt is sent with, in order: the one list both the request and a
    /// test push's report ("which headers were sent") are made from, so they cannot differ.
    /// Names known at compile time and values checked once: the request builder would parse
    /// each name and copy each value again, for every attempt.
    fn header_map(h: &AttemptHeaders) -> Result<HeaderMap, String> {
        let invalid = |name: &str| format!("cannot build request: invalid `{name}` header value");
        let mut headers = HeaderMap::with_capacity(ATTEMPT_HEADERS);
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(JSON));
        headers.insert(header::USER_AGENT, HeaderValue::from_static(USER_AGENT));
        headers.insert(
            HeaderName::from_static(WEBHOOK_ID),
            HeaderValue::from_str(&h.webhook_id).map_err(|_| invalid(WEBHOOK_ID))?,
        );
        headers.insert(
            HeaderName::from_static(WEBHOOK_TIMESTAMP),
            HeaderValue::from(h.webhook_timestamp),
        );
        headers.insert(
            HeaderName::from_static(WEBHOOK_SIGNATURE),
            HeaderValue::from_str(&h.webhook_signature).map_err(|_| invalid(WEBHOOK_SIGNATURE))?,
        );
        headers.insert(
            HeaderName::from_static(MAILHOOK_ATTEMPT),
            HeaderValue::from(h.attempt),
        );
        headers.insert(
            HeaderName::from_static(MAILHOOK_ADDRESS),
            HeaderValue::from_static(h.address_role),
        );
        Ok(headers)
    }

    /// The headers an attempt is sent with, as text, for a test push's report; none when
    /// they could not be built (the attempt then failed before sending).
    pub fn headers(h: &AttemptHeaders) -> Vec<(String, String)> {
        Self::header_map(h)
            .map(|headers| {
                headers
                    .iter()
                    .map(|(name, value)| {
                        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
                        (name.as_str().to_owned(), value)
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Sends and reads the whole (bounded) response, so the connection can be reused.
    async fn exchange(
        &self,
        request: Request<Full<Bytes>>,
    ) -> Result<(StatusCode, Option<Duration>), Failure> {
        if request.uri().scheme() == Some(&http::uri::Scheme::HTTP) {
            let (response, lease) = self.http1.send(request).await?;
            let (answer, read_to_end) = self.read_answer(response).await;
            if read_to_end {
                self.http1.put_back(lease);
            }
            return Ok(answer);
        }
        self.exchange_https(request).await
    }

    async fn exchange_https(
        &self,
        mut request: Request<Full<Bytes>>,
    ) -> Result<(StatusCode, Option<Duration>), Failure> {
        // A TLS stream keeps the error the connection died of, to say more than hyper's
        // "connection closed".
        let connection = capture_connection(&mut request);
        let response = self.client.request(request).await.map_err(|err| {
            let tls_error = connection
                .connection_metadata()
                .as_ref()
                .and_then(|connected| {
                    let mut extras = http::Extensions::new();
                    connected.get_extras(&mut extras);
                    extras
                        .get::<TlsErrorSlot>()
                        .and_then(|slot| slot.get().map(str::to_owned))
                });
            describe_client_error(&err, tls_error)
        })?;
        Ok(self.read_answer(response).await.0)
    }

    /// The status and `Retry-After` of an answer, after reading its body (bounded); and
    /// whether the body was read to its end, which a connection must be to carry another
    /// request. A body over the limit is not an error of the answer: the status stands.
    async fn read_answer(
        &self,
        response: http::Response<hyper::body::Incoming>,
    ) -> ((StatusCode, Option<Duration>), bool) {
        let status = response.status();
        let retry_after = response
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(parse_retry_after);
        let read_to_end = Limited::new(response.into_body(), self.response_bytes_max)
            .collect()
            .await
            .is_ok();
        ((status, retry_after), read_to_end)
    }
}

fn classify(
    status: StatusCode,
    retry_after: Option<Duration>,
    duration: Duration,
) -> AttemptResult {
    let code = Some(status.as_u16());
    if status.is_success() {
        return AttemptResult {
            outcome: Outcome::Delivered,
            kind: AttemptKind::Status(status.as_u16()),
            status: code,
            error: None,
            duration,
        };
    }
    let error = if status.is_redirection() {
        format!("receiver answered {status}; redirects are not followed")
    } else if status == StatusCode::GONE {
        format!(
            "receiver answered {status}: the address does not take events, moving on without retries"
        )
    } else {
        format!("receiver answered {status}")
    };
    let honours_retry_after = matches!(
        status,
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
    );
    AttemptResult {
        outcome: Outcome::Failed {
            retry_after: retry_after.filter(|_| honours_retry_after),
            gone: status == StatusCode::GONE,
        },
        kind: AttemptKind::Status(status.as_u16()),
        status: code,
        error: Some(error),
        duration,
    }
}

/// Why an exchange produced no status.
pub(crate) enum Failure {
    /// The SSRF guard refused every IP: retrying the same address cannot help.
    Blocked(String),
    Tls(String),
    Connect(String),
    Other(String),
}

fn blocked_result(error: String, duration: Duration) -> AttemptResult {
    AttemptResult {
        outcome: Outcome::Failed {
            retry_after: None,
            gone: true,
        },
        kind: AttemptKind::Blocked,
        status: None,
        error: Some(error),
        duration,
    }
}

fn failed(kind: AttemptKind, error: String, duration: Duration) -> AttemptResult {
    AttemptResult {
        outcome: Outcome::FAILED,
        kind,
        status: None,
        error: Some(error),
        duration,
    }
}

/// `Retry-After` as delay-seconds or an HTTP date.
fn parse_retry_after(value: &HeaderValue) -> Option<Duration> {
    let text = value.to_str().ok()?.trim();
    if let Ok(secs) = text.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(text).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// What a chain of error causes comes to: a failure it names outright (the SSRF guard's
/// refusal, a TLS error: they say what to do), or else the words of its innermost cause
/// ("connection refused" says more than "client error").
pub(crate) enum Cause {
    Known(Failure),
    Innermost(Option<String>),
}

/// Walks the causes from `first` on. Both clients' errors go through it: hyper-util's for
/// `https`, and the plain `http` pool's connect and exchange errors.
pub(crate) fn cause(first: Option<&(dyn std::error::Error + 'static)>) -> Cause {
    let mut source = first;
    let mut last = None;
    while let Some(cause) = source {
        if let Some(guard) = cause.downcast_ref::<GuardError>() {
            return Cause::Known(match guard {
                GuardError::Blocked { .. } => Failure::Blocked(guard.to_string()),
                other => Failure::Connect(format!("connect error: {other}")),
            });
        }
        if let Some(tls) = tls_cause(cause) {
            return Cause::Known(Failure::Tls(describe_tls_error(tls)));
        }
        last = Some(cause.to_string());
        source = cause.source();
    }
    Cause::Innermost(last)
}

/// `what`, then `: <innermost cause>` when there is one.
pub(crate) fn with_cause(what: &str, innermost: Option<String>) -> String {
    match innermost {
        Some(last) => format!("{what}: {last}"),
        None => what.to_owned(),
    }
}

/// A hyper-util client error in words. `tls_error` is the TLS error the connection recorded,
/// if any: it says more than any other.
fn describe_client_error(
    err: &hyper_util::client::legacy::Error,
    tls_error: Option<String>,
) -> Failure {
    use std::error::Error as _;
    let last = match cause(err.source()) {
        Cause::Known(failure) => return failure,
        Cause::Innermost(last) => last,
    };
    if let Some(tls_error) = tls_error {
        return Failure::Tls(tls_error);
    }
    if err.is_connect() {
        Failure::Connect(with_cause("connect error", last))
    } else {
        Failure::Other(with_cause("request failed", last))
    }
}

fn humantime_format(d: Duration) -> String {
    humantime_serde::re::humantime::format_duration(d).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_carries_exactly_the_headers_a_test_push_reports() {
        let h = AttemptHeaders {
            webhook_id: "evt-1".to_owned(),
            webhook_timestamp: 1_700_000_000,
            webhook_signature: "v1,abc=".to_owned(),
            attempt: 2,
            address_role: "backup-1",
        };
        let request = HttpClient::request("http://127.0.0.1:9/hook", Bytes::from_static(b"{}"), &h)
            .expect("a valid request");
        let sent: Vec<(String, String)> = request
            .headers()
            .iter()
            .map(|(name, value)| (name.as_str().to_owned(), value.to_str().unwrap().to_owned()))
            .collect();
        assert_eq!(sent, HttpClient::headers(&h));
        assert_eq!(request.method(), Method::POST);
        assert_eq!(request.uri(), "http://127.0.0.1:9/hook");
    }

    #[test]
    fn a_header_value_that_cannot_be_sent_is_an_error_naming_the_header() {
        let h = AttemptHeaders {
            webhook_id: "evt\n1".to_owned(),
            webhook_timestamp: 1,
            webhook_signature: "v1,abc=".to_owned(),
            attempt: 1,
            address_role: "primary",
        };
        let err = HttpClient::request("http://127.0.0.1:9/", Bytes::new(), &h).unwrap_err();
        assert!(err.contains("webhook-id"), "{err}");
    }

    #[test]
    fn classifies_statuses() {
        let d = Duration::ZERO;
        let cases = [
            (200, None, Outcome::Delivered),
            (204, None, Outcome::Delivered),
            (302, None, Outcome::FAILED),
            (500, Some(9), Outcome::FAILED),
            (
                410,
                None,
                Outcome::Failed {
                    retry_after: None,
                    gone: true,
                },
            ),
            (
                429,
                Some(9),
                Outcome::Failed {
                    retry_after: Some(Duration::from_secs(9)),
                    gone: false,
                },
            ),
            (
                503,
                Some(3),
                Outcome::Failed {
                    retry_after: Some(Duration::from_secs(3)),
                    gone: false,
                },
            ),
        ];
        for (code, after, expected) in cases {
            let r = classify(
                StatusCode::from_u16(code).unwrap(),
                after.map(Duration::from_secs),
                d,
            );
            assert_eq!(r.outcome, expected, "{code}");
            assert_eq!(r.status, Some(code));
            assert_eq!(r.error.is_none(), expected == Outcome::Delivered);
        }
    }

    #[test]
    fn parses_retry_after() {
        assert_eq!(
            parse_retry_after(&HeaderValue::from_static("120")),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after(&HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT")),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after(&HeaderValue::from_static("soon")), None);
    }
}
