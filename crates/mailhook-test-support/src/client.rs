//! A small HTTP client for the gateway's API in tests: real requests, raw answers, over plain
//! HTTP or, against a gateway with listener TLS, HTTPS (HTTP/2 or HTTP/1.1 by ALPN).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode, Version, header};
use http_body_util::{BodyExt, Full};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// One answer from the gateway.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    /// HTTP/1.1, or HTTP/2 when negotiated over TLS.
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|err| {
            panic!(
                "answer {} is not JSON ({err}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

#[derive(Clone)]
pub struct ApiClient {
    pub base: String,
    pub intake_token: String,
    pub admin_token: String,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl ApiClient {
    /// A plain-HTTP client for the gateway on `addr`.
    pub fn new(addr: SocketAddr, intake_token: &str, admin_token: &str) -> ApiClient {
        // Never used for `https` here: trusting nothing keeps a mistaken https base failing.
        let trusts_nothing = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
        ApiClient::with_base(
            format!("http://{addr}"),
            trusts_nothing,
            intake_token,
            admin_token,
        )
    }

    /// An HTTPS client for a gateway with listener TLS on `addr`, reached as `localhost`
    /// and verified with `tls` (e.g. `TestPki::client_config`).
    pub fn new_tls(
        addr: SocketAddr,
        tls: rustls::ClientConfig,
        intake_token: &str,
        admin_token: &str,
    ) -> ApiClient {
        ApiClient::with_base(
            format!("https://localhost:{}", addr.port()),
            tls,
            intake_token,
            admin_token,
        )
    }

    fn with_base(
        base: String,
        tls: rustls::ClientConfig,
        intake_token: &str,
        admin_token: &str,
    ) -> ApiClient {
        let connector = HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .build();
        ApiClient {
            base,
            intake_token: intake_token.to_owned(),
            admin_token: admin_token.to_owned(),
            client: Client::builder(TokioExecutor::new()).build(connector),
        }
    }

    /// Sends anything; `token` None sends no Authorization header.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        content_type: Option<&str>,
        body: impl Into<Bytes>,
    ) -> Answer {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        if let Some(content_type) = content_type {
            request = request.header(header::CONTENT_TYPE, content_type);
        }
        let request = request.body(Full::new(body.into())).expect("request");
        let response = tokio::time::timeout(Duration::from_secs(30), self.client.request(request))
            .await
            .expect("gateway answers within 30 s")
            .expect("request reaches the gateway");
        let status = response.status();
        let version = response.version();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        Answer {
            status,
            version,
            headers,
            body,
        }
    }

    /// Like `post_events`, but a connection error is returned instead of failing the test.
    pub async fn try_post_events(&self, body: &Value) -> Result<Answer, String> {
        let request = Request::builder()
            .method(Method::POST)
            .uri(format!("{}/v1/events", self.base))
            .header(
                header::AUTHORIZATION,
                format!("Bearer {}", self.intake_token),
            )
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .expect("request");
        let response = tokio::time::timeout(Duration::from_secs(10), self.client.request(request))
            .await
            .map_err(|_| "timed out".to_owned())?
            .map_err(|err| err.to_string())?;
        let status = response.status();
        let version = response.version();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|err| err.to_string())?
            .to_bytes();
        Ok(Answer {
            status,
            version,
            headers,
            body,
        })
    }

    pub async fn post_events(&self, body: &Value) -> Answer {
        self.post_events_raw(body.to_string()).await
    }

    /// Posts a body as it is: what a `Value` cannot hold (a key given twice, broken JSON).
    pub async fn post_events_raw(&self, body: impl Into<Bytes>) -> Answer {
        self.send(
            Method::POST,
            "/v1/events",
            Some(&self.intake_token.clone()),
            Some("application/json"),
            body,
        )
        .await
    }

    pub async fn admin(&self, method: Method, path: &str, body: Option<&Value>) -> Answer {
        let (content_type, bytes) = match body {
            Some(body) => (Some("application/json"), Bytes::from(body.to_string())),
            None => (None, Bytes::new()),
        };
        self.send(
            method,
            path,
            Some(&self.admin_token.clone()),
            content_type,
            bytes,
        )
        .await
    }

    pub async fn put_webhook(&self, account: &str, settings: &Value) -> Answer {
        self.admin(
            Method::PUT,
            &format!("/v1/accounts/{account}/webhook"),
            Some(settings),
        )
        .await
    }

    pub async fn message(&self, account: &str, msg_id: &str) -> Answer {
        self.admin(
            Method::GET,
            &format!("/v1/messages/{msg_id}?account={account}"),
            None,
        )
        .await
    }

    /// Polls the message lookup until `check` holds for its JSON, or panics after `timeout`.
    pub async fn wait_message(
        &self,
        account: &str,
        msg_id: &str,
        timeout: Duration,
        check: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let answer = self.message(account, msg_id).await;
            let last = if answer.status == StatusCode::OK {
                answer.json()
            } else {
                Value::Null
            };
            if check(&last) {
                return last;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "message {msg_id} did not reach the expected state within {timeout:?}; last: {last:#}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether `path` answers 200 within a second (readiness probes of other servers).
    pub async fn healthz_path(&self, path: &str) -> bool {
        let request = Request::builder()
            .uri(format!("{}{path}", self.base))
            .body(Full::new(Bytes::new()))
            .expect("request");
        matches!(
            tokio::time::timeout(Duration::from_secs(1), self.client.request(request)).await,
            Ok(Ok(response)) if response.status() == StatusCode::OK
        )
    }

    pub async fn healthz(&self) -> bool {
        let request = Request::builder()
            .uri(format!("{}/healthz", self.base))
            .body(Full::new(Bytes::new()))
            .expect("request");
        matches!(
            tokio::time::timeout(Duration::from_secs(1), self.client.request(request)).await,
            Ok(Ok(response)) if response.status() == StatusCode::OK
        )
    }
}
