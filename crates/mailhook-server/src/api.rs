//! The HTTP API: routing, intake, webhook settings, message lookup, failures and replay,
//! health and readiness. Handlers validate at the edge and leave the rules to the core.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use mailhook_core::EventType;
use mailhook_core::engagement::{Observed, Rules};
use mailhook_core::event::Engagement;
use mailhook_core::event::{IntakeLimits, parse_intake};
use mailhook_core::rate::TokenBucket;
use mailhook_core::settings::validate_settings_with_sinks;
use mailhook_core::signature::{SECRET_BYTES, Secret};
use mailhook_core::time::format_rfc3339_ms;
use mailhook_core::{AccountId, EventId, FieldError, IntakeError};
use mailhook_delivery::{SettingsCache, now_ms};
use mailhook_metrics::{Metrics, Rejected};
use mailhook_store::{EventRecord, Store, StoredSettings, new_event};
use serde_json::{Value, json};

use crate::auth::{Scope, Tokens};
use crate::response::{ApiError, Body, json};

mod stats;
mod test_push;

/// The API's own settings.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    pub tokens: Tokens,
    /// Largest request body accepted (413 above).
    pub body_bytes_max: usize,
    /// Most events in one intake batch (400 above).
    pub batch_events_max: usize,
    /// Longest string in an event's `email` and `status` (400 above).
    pub string_bytes_max: usize,
    /// Deepest JSON nesting in an intake body (400 above).
    pub json_depth_max: usize,
    /// A request body must arrive within this (408 after).
    pub request_read_timeout: Duration,
    /// Events per second each account may send, and the burst it may save up (429 above).
    pub intake_events_per_second: u32,
    pub intake_burst_events: u32,
    /// How long a rotated-out secret keeps signing.
    pub secret_grace: Duration,
    /// Most failures listed in one call.
    pub failures_limit_max: usize,
    /// Longest a test push request waits for the outcome (`delivery.test_timeout`).
    pub test_timeout: Duration,
    /// Bearer tokens for `GET /metrics`; empty: open.
    pub metrics_tokens: Vec<String>,
    /// The SSRF guard's rules, applied to addresses when settings are saved.
    pub address_policy: mailhook_core::net::AddressPolicy,
    /// The configured sink plugins: what a `plugin:<name>` address may name.
    pub sink_plugins: Vec<String>,
}

pub struct Api {
    config: ApiConfig,
    store: Arc<dyn Store>,
    settings: Arc<SettingsCache>,
    bus: mailhook_core::bus::WorkBus,
    /// Intake rate per account. Bounded: past `RATE_ACCOUNTS_MAX` accounts it starts over,
    /// which only ever lets more through, never less.
    rates: Mutex<HashMap<String, TokenBucket>>,
    metrics: Arc<Metrics>,
    /// Machine detection for opens and clicks.
    rules: Arc<Rules>,
    /// Where the dispatcher reports test pushes ("Simulate Send Test") as they go.
    tests: mailhook_delivery::TestPushes,
}

/// Accounts whose intake rate is tracked at once.
const RATE_ACCOUNTS_MAX: usize = 100_000;

impl Api {
    pub fn new(
        config: ApiConfig,
        store: Arc<dyn Store>,
        settings: Arc<SettingsCache>,
        bus: mailhook_core::bus::WorkBus,
        metrics: Arc<Metrics>,
        rules: Arc<Rules>,
        tests: mailhook_delivery::TestPushes,
    ) -> Api {
        Api {
            config,
            store,
            settings,
            bus,
            rates: Mutex::new(HashMap::new()),
            metrics,
            rules,
            tests,
        }
    }

    /// Charges each account of a batch for its events, all or nothing: `Err` with the
    /// time until every one of them could pass.
    fn charge_intake(&self, events: &[mailhook_core::Event]) -> Result<()> {
        let mut costs: HashMap<&str, u32> = HashMap::new();
        for event in events {
            *costs.entry(event.account.as_str()).or_default() += 1;
        }
        let (rate, burst, now) = (
            self.config.intake_events_per_second,
            self.config.intake_burst_events,
            now_ms(),
        );
        let mut rates = self
            .rates
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if rates.len() + costs.len() > RATE_ACCOUNTS_MAX {
            rates.clear();
        }
        let mut charged = Vec::with_capacity(costs.len());
        let mut wait_ms = 0;
        for (account, cost) in &costs {
            let mut bucket = rates
                .get(*account)
                .copied()
                .unwrap_or_else(|| TokenBucket::full(burst, now));
            match bucket.take(*cost, rate, burst, now) {
                Ok(()) => charged.push((*account, bucket)),
                Err(wait) => wait_ms = wait_ms.max(wait),
            }
        }
        if wait_ms > 0 {
            let secs = wait_ms.div_ceil(1000);
            return Err(ApiError {
                retry_after_secs: Some(secs),
                ..ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    format!(
                        "intake rate limit: at most {rate} events/s per account with bursts of {burst} \
                         (limits.intake_events_per_second, limits.intake_burst_events); retry in {secs} s"
                    ),
                )
            });
        }
        for (account, bucket) in charged {
            rates.insert(account.to_owned(), bucket);
        }
        Ok(())
    }
}

type Result<T, E = ApiError> = std::result::Result<T, E>;

impl Api {
    pub async fn handle(self: Arc<Self>, request: Request<Incoming>) -> Response<Body> {
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        match self.route(request).await {
            Ok(response) => response,
            Err(err) => {
                if err.status.is_server_error() {
                    tracing::warn!(%method, %path, status = err.status.as_u16(), error = %err.message, "request failed");
                } else {
                    tracing::debug!(%method, %path, status = err.status.as_u16(), error = %err.message, "request refused");
                }
                err.into_response()
            }
        }
    }

    async fn route(&self, request: Request<Incoming>) -> Result<Response<Body>> {
        let path = request.uri().path().to_owned();
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let method = request.method().clone();
        match (&method, segments.as_slice()) {
            (&Method::GET, ["healthz"]) => Ok(json(StatusCode::OK, &json!({"status": "ok"}))),
            (&Method::GET, ["readyz"]) => self.readyz().await,
            (&Method::POST, ["v1", "events"]) => {
                let started = tokio::time::Instant::now();
                let answer = match self.config.tokens.check(request.headers(), Scope::Intake) {
                    Ok(()) => self.intake(request).await,
                    Err(err) => Err(err),
                };
                let rejected = answer
                    .as_ref()
                    .err()
                    .map(|e| Rejected::from_status(e.status.as_u16()));
                self.metrics.intake_request(started.elapsed(), rejected);
                answer
            }
            (&Method::GET, ["metrics"]) => self.metrics_text(request.headers()).await,
            (&Method::GET, ["openapi.json"]) => Ok(crate::openapi::serve()),
            (_, ["v1", "events"]) => Err(method_not_allowed("POST")),
            // The console's static files hold no data: no token needed (its data calls
            // send one).
            (&Method::GET | &Method::HEAD, [""]) => Ok(crate::console::redirect()),
            (&Method::GET | &Method::HEAD, ["console", ..]) => Ok(crate::console::serve(&path)),
            (_, ["v1", ..]) => {
                self.config.tokens.check(request.headers(), Scope::Admin)?;
                self.admin(request, &method, &segments).await
            }
            _ => Err(no_route(&method, &path, &segments)),
        }
    }

    async fn admin(
        &self,
        request: Request<Incoming>,
        method: &Method,
        segments: &[&str],
    ) -> Result<Response<Body>> {
        match (method, segments) {
            (&Method::GET, ["v1", "accounts", account, "webhook"]) => {
                self.get_webhook(&account_id(account)?).await
            }
            (&Method::PUT, ["v1", "accounts", account, "webhook"]) => {
                let account = account_id(account)?;
                let body = self.json_body(request).await?;
                self.put_webhook(&account, &body).await
            }
            (&Method::POST, ["v1", "accounts", account, "webhook", "secret", "rotate"]) => {
                self.rotate_secret(&account_id(account)?).await
            }
            (&Method::GET, ["v1", "accounts", account, "failures"]) => {
                let account = account_id(account)?;
                let limit = query_param(&request, "limit")
                    .map(|v| {
                        v.parse::<usize>()
                            .ok()
                            .filter(|n| (1..=self.config.failures_limit_max).contains(n))
                            .ok_or_else(|| {
                                field_error(
                                    StatusCode::BAD_REQUEST,
                                    "limit",
                                    format!(
                                        "limit `{v}` must be a whole number from 1 to {}",
                                        self.config.failures_limit_max
                                    ),
                                )
                            })
                    })
                    .transpose()?
                    .unwrap_or(100);
                self.failures(&account, limit).await
            }
            (&Method::POST, ["v1", "accounts", account, "failures", "replay"]) => {
                let account = account_id(account)?;
                let body = self.json_body_or_empty(request).await?;
                self.replay(&account, &body).await
            }
            (&Method::POST, ["v1", "accounts", account, "webhook", "test"]) => {
                let account = account_id(account)?;
                let body = self.json_body_or_empty(request).await?;
                self.test_push(&account, &body).await
            }
            (&Method::GET, ["v1", "stats"]) => {
                let account = query_param(&request, "account")
                    .map(|a| account_id(&a))
                    .transpose()?;
                self.stats(account.as_ref()).await
            }
            (&Method::GET, ["v1", "messages", msg_id]) => {
                let msg_id = percent_decode(msg_id, "msg_id")?;
                let account = match query_param(&request, "account") {
                    Some(a) => account_id(&a)?,
                    None => AccountId::default_account(),
                };
                self.message(&account, &msg_id).await
            }
            _ => Err(no_route(method, request.uri().path(), segments)),
        }
    }

    async fn readyz(&self) -> Result<Response<Body>> {
        match self.store.ping().await {
            Ok(()) => Ok(json(StatusCode::OK, &json!({"status": "ready"}))),
            Err(err) => {
                tracing::warn!(error = %err, "not ready: store unreachable");
                Err(ApiError::unavailable(format!("not ready: {err}")))
            }
        }
    }

    async fn intake(&self, request: Request<Incoming>) -> Result<Response<Body>> {
        require_json(&request)?;
        let body = self.read_body(request).await?;
        let limits = IntakeLimits {
            batch_events_max: self.config.batch_events_max,
            string_bytes_max: self.config.string_bytes_max,
            json_depth_max: self.config.json_depth_max,
        };
        let mut new_id = || {
            EventId::parse(&uuid::Uuid::now_v7().to_string())
                .unwrap_or_else(|_| unreachable!("a UUID is a valid event id"))
        };
        let events =
            parse_intake(&body, limits, now_ms(), &mut new_id).map_err(|err| match err {
                IntakeError::Invalid(details) => ApiError::bad_request(format!(
                    "{} invalid field(s); nothing was stored",
                    details.len()
                ))
                .with_details(details),
                other => ApiError::bad_request(other.to_string()),
            })?;
        self.charge_intake(&events)?;
        let mut events = events;
        self.detect_machines(&mut events).await?;
        let recorded: Vec<_> = events
            .iter()
            .map(|e| {
                (
                    e.account.clone(),
                    e.event_type,
                    e.engagement.as_ref().and_then(|g| g.machine_reason.clone()),
                )
            })
            .collect();
        let outcome = self
            .store
            .insert_events(events.into_iter().map(new_event).collect())
            .await?;
        if outcome.accepted > 0 {
            self.bus.ring();
        }
        self.metrics.intake_duplicates(outcome.duplicates);
        for (i, (account, event_type, reason)) in recorded.iter().enumerate() {
            if outcome.stored.get(i) == Some(&true) {
                self.metrics.intake_event(account.as_str(), *event_type);
                if matches!(event_type, EventType::Open | EventType::Click) {
                    self.metrics.engagement(
                        *event_type,
                        reason.as_deref(),
                        outcome.unique.get(i) == Some(&true),
                    );
                }
            }
        }
        Ok(json(
            StatusCode::ACCEPTED,
            &json!({"accepted": outcome.accepted, "duplicates": outcome.duplicates, "event_ids": outcome.event_ids}),
        ))
    }

    /// Fills each open's and click's `engagement` with what the rules say. The fast-click
    /// rule needs the MsgId's delivery time: one store read per account for the clicks of a
    /// request, none when there are no clicks.
    async fn detect_machines(&self, events: &mut [mailhook_core::Event]) -> Result<()> {
        let mut clicks: HashMap<AccountId, Vec<String>> = HashMap::new();
        for e in events.iter().filter(|e| e.event_type == EventType::Click) {
            clicks
                .entry(e.account.clone())
                .or_default()
                .push(e.msg_id.as_str().to_owned());
        }
        let mut delivered: HashMap<(AccountId, String), i64> = HashMap::new();
        for (account, msg_ids) in clicks {
            for (msg_id, at) in self.store.delivery_times(&account, msg_ids).await? {
                delivered.insert((account.clone(), msg_id), at);
            }
        }
        for event in events.iter_mut().filter(|e| e.is_engagement()) {
            let status = event.status.to_map();
            let seen = Observed {
                event_type: event.event_type,
                status: &status,
                delivered_at_ms: delivered
                    .get(&(event.account.clone(), event.msg_id.as_str().to_owned()))
                    .copied(),
                timestamp_ms: event.timestamp_ms,
            };
            let reason = self.rules.detect(&seen);
            event.engagement = Some(Engagement::detected(reason.as_deref()));
        }
        Ok(())
    }

    /// The Prometheus exposition, with the queue gauges read from the store now.
    async fn metrics_text(&self, headers: &http::HeaderMap) -> Result<Response<Body>> {
        if !self.metrics.enabled() {
            return Err(ApiError::not_found(
                "metrics are off (metrics.enabled = false)",
            ));
        }
        if !self.config.metrics_tokens.is_empty() {
            let tokens = Tokens {
                intake: self.config.metrics_tokens.clone(),
                admin: Vec::new(),
            };
            tokens.check(headers, Scope::Intake).map_err(|mut err| {
                err.message =
                    "GET /metrics needs `Authorization: Bearer <metrics token>` (metrics.tokens)"
                        .to_owned();
                err
            })?;
        }
        // A store that cannot answer must not fail the scrape: the other series still tell.
        match self.store.queue_stats().await {
            Ok(queue) => {
                let oldest = queue
                    .oldest_accepted_at_ms
                    .map_or(0, |at| (now_ms() - at).max(0) as u64);
                self.metrics
                    .queue(queue.depth, Duration::from_millis(oldest));
            }
            Err(err) => tracing::warn!(error = %err, "cannot read queue depth for /metrics"),
        }
        let text = self.metrics.render().unwrap_or_default();
        let mut response = Response::new(http_body_util::Full::new(Bytes::from(text)));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        Ok(response)
    }

    async fn get_webhook(&self, account: &AccountId) -> Result<Response<Body>> {
        let stored = self.store.get_settings(account).await?;
        Ok(json(StatusCode::OK, &settings_json(stored.as_ref())))
    }

    async fn put_webhook(&self, account: &AccountId, body: &Value) -> Result<Response<Body>> {
        let settings = validate_settings_with_sinks(
            body,
            &self.config.address_policy,
            Some(&self.config.sink_plugins),
        )
        .map_err(|details| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid webhook settings; nothing was saved",
            )
            .with_details(details)
        })?;
        let stored = self
            .store
            .put_settings(account, settings, new_secret()?, now_ms())
            .await?;
        self.settings.invalidate(account);
        tracing::info!(%account, enabled = stored.settings.enabled, addresses = stored.settings.addresses.len(), "webhook settings saved");
        Ok(json(StatusCode::OK, &settings_json(Some(&stored))))
    }

    async fn rotate_secret(&self, account: &AccountId) -> Result<Response<Body>> {
        let now = now_ms();
        let grace_until = now + self.config.secret_grace.as_millis() as i64;
        let stored = self
            .store
            .rotate_secret(account, new_secret()?, grace_until, now)
            .await?
            .ok_or_else(|| {
                ApiError::not_found(format!(
                    "account `{account}` has no webhook settings yet; save them first"
                ))
            })?;
        self.settings.invalidate(account);
        tracing::info!(%account, "webhook secret rotated");
        Ok(json(
            StatusCode::OK,
            &json!({"secret": stored.secret.expose(), "previous_secret_expires_at": format_rfc3339_ms(grace_until)}),
        ))
    }

    async fn message(&self, account: &AccountId, msg_id: &str) -> Result<Response<Body>> {
        let events = self.store.message(account, msg_id).await?;
        if events.is_empty() {
            return Err(ApiError::not_found(format!(
                "no events with msg_id `{msg_id}` for account `{account}`"
            )));
        }
        let events: Vec<Value> = events.iter().map(event_json).collect();
        Ok(json(
            StatusCode::OK,
            &json!({"msg_id": msg_id, "account": account, "events": events}),
        ))
    }

    async fn failures(&self, account: &AccountId, limit: usize) -> Result<Response<Body>> {
        let events = self.store.failures(account, limit).await?;
        let events: Vec<Value> = events.iter().map(event_json).collect();
        Ok(json(
            StatusCode::OK,
            &json!({"account": account, "events": events}),
        ))
    }

    async fn replay(&self, account: &AccountId, body: &Value) -> Result<Response<Body>> {
        let Value::Object(fields) = body else {
            return Err(field_error(
                StatusCode::BAD_REQUEST,
                "",
                "body must be an object: {\"event_ids\": [...]} or {}".into(),
            ));
        };
        if let Some(key) = fields.keys().find(|k| k.as_str() != "event_ids") {
            return Err(field_error(
                StatusCode::BAD_REQUEST,
                key,
                format!("unknown field `{key}`; allowed: event_ids"),
            ));
        }
        let ids = match fields.get("event_ids") {
            None | Some(Value::Null) => None,
            Some(Value::Array(items)) => Some(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| {
                        v.as_str().map(str::to_owned).ok_or_else(|| {
                            field_error(
                                StatusCode::BAD_REQUEST,
                                &format!("event_ids[{i}]"),
                                "event id must be a string".into(),
                            )
                        })
                    })
                    .collect::<Result<Vec<_>>>()?,
            ),
            Some(_) => {
                return Err(field_error(
                    StatusCode::BAD_REQUEST,
                    "event_ids",
                    "event_ids must be an array of strings".into(),
                ));
            }
        };
        let replayed = self.store.replay(account, ids, now_ms()).await?;
        self.metrics.replayed(replayed.len());
        if !replayed.is_empty() {
            self.bus.ring();
        }
        tracing::info!(%account, events = replayed.len(), "failures queued for replay");
        Ok(json(
            StatusCode::OK,
            &json!({"replayed": replayed.len(), "event_ids": replayed}),
        ))
    }

    /// Reads a body within `body_bytes_max`: 413 above it, before reading when the length
    /// is announced.
    async fn read_body(&self, request: Request<Incoming>) -> Result<Bytes> {
        let max = self.config.body_bytes_max;
        let too_large = || {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body is larger than {max} bytes (limits.body_bytes_max)"),
            )
        };
        let announced = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if announced.is_some_and(|n| n > max as u64) {
            return Err(too_large());
        }
        let timeout = self.config.request_read_timeout;
        let read = Limited::new(request.into_body(), max).collect();
        match tokio::time::timeout(timeout, read).await {
            Ok(Ok(collected)) => Ok(collected.to_bytes()),
            Ok(Err(err)) if err.is::<http_body_util::LengthLimitError>() => Err(too_large()),
            Ok(Err(err)) => Err(ApiError::bad_request(format!(
                "cannot read request body: {err}"
            ))),
            Err(_) => Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "request body did not arrive within {} (limits.request_read_timeout)",
                    humantime_serde::re::humantime::format_duration(timeout)
                ),
            )),
        }
    }

    async fn json_body(&self, request: Request<Incoming>) -> Result<Value> {
        require_json(&request)?;
        let body = self.read_body(request).await?;
        serde_json::from_slice(&body)
            .map_err(|err| ApiError::bad_request(format!("body is not valid JSON: {err}")))
    }

    async fn json_body_or_empty(&self, request: Request<Incoming>) -> Result<Value> {
        let announced_empty = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() == b"0");
        if announced_empty || !request.headers().contains_key(header::CONTENT_TYPE) {
            let body = self.read_body(request).await?;
            if body.iter().all(u8::is_ascii_whitespace) {
                return Ok(json!({}));
            }
            return serde_json::from_slice(&body)
                .map_err(|err| ApiError::bad_request(format!("body is not valid JSON: {err}")));
        }
        self.json_body(request).await
    }
}

fn method_not_allowed(allowed: &'static str) -> ApiError {
    ApiError {
        allow: Some(allowed),
        ..ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("method not allowed here; use {allowed}"),
        )
    }
}

/// The methods a known path takes (the `Allow` of a 405), or `None` for an unknown path.
/// `tests/it/openapi.rs` checks it against every path of `docs/openapi.json`.
fn allowed_methods(segments: &[&str]) -> Option<&'static str> {
    match segments {
        ["healthz"] | ["readyz"] | ["metrics"] | ["openapi.json"] | ["v1", "stats"] => Some("GET"),
        ["v1", "messages", _] | ["v1", "accounts", _, "failures"] => Some("GET"),
        [""] | ["console", ..] => Some("GET, HEAD"),
        ["v1", "events"]
        | ["v1", "accounts", _, "webhook", "secret", "rotate"]
        | ["v1", "accounts", _, "webhook", "test"]
        | ["v1", "accounts", _, "failures", "replay"] => Some("POST"),
        ["v1", "accounts", _, "webhook"] => Some("GET, PUT"),
        _ => None,
    }
}

/// 405 with `Allow` for a known path asked with another method, else 404.
fn no_route(method: &Method, path: &str, segments: &[&str]) -> ApiError {
    match allowed_methods(segments) {
        Some(allowed) => method_not_allowed(allowed),
        None => ApiError::not_found(format!("no such endpoint: {method} {path}")),
    }
}

fn field_error(status: StatusCode, field: &str, message: String) -> ApiError {
    ApiError::new(status, message.clone()).with_details(vec![FieldError::new(field, message)])
}

fn require_json(request: &Request<Incoming>) -> Result<()> {
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let media = content_type.split(';').next().unwrap_or("").trim();
    if media.eq_ignore_ascii_case("application/json") {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "content-type must be application/json, got `{}`",
                if content_type.is_empty() {
                    "(none)"
                } else {
                    content_type
                }
            ),
        ))
    }
}

fn account_id(segment: &str) -> Result<AccountId> {
    let text = percent_decode(segment, "account")?;
    AccountId::parse(&text)
        .map_err(|message| field_error(StatusCode::BAD_REQUEST, "account", message))
}

fn percent_decode(segment: &str, field: &str) -> Result<String> {
    percent_encoding::percent_decode_str(segment)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| {
            field_error(
                StatusCode::BAD_REQUEST,
                field,
                format!("{field} is not valid UTF-8 once percent-decoded"),
            )
        })
}

fn query_param(request: &Request<Incoming>, name: &str) -> Option<String> {
    let query = request.uri().query()?;
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// A fresh secret from the OS's secure random source.
fn new_secret() -> Result<Secret> {
    let mut bytes = [0u8; SECRET_BYTES];
    getrandom::fill(&mut bytes).map_err(|err| {
        tracing::error!(error = %err, "the OS random source failed");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot generate a secret now",
        )
    })?;
    Ok(Secret::from_bytes(bytes))
}

fn settings_json(stored: Option<&StoredSettings>) -> Value {
    match stored {
        None => {
            json!({"enabled": false, "addresses": [], "events": [], "secret": null, "updated_at": null})
        }
        Some(s) => json!({
            "enabled": s.settings.enabled,
            "addresses": s.settings.addresses,
            "events": s.settings.events,
            "secret": s.secret.expose(),
            "updated_at": format_rfc3339_ms(s.updated_at_ms),
        }),
    }
}

fn event_json(e: &EventRecord) -> Value {
    let attempts: Vec<Value> = e
        .attempts
        .iter()
        .map(|a| {
            json!({
                "number": a.number,
                "address": a.role.as_str(),
                "url": a.url,
                "status": a.status,
                "error": a.error,
                "duration_ms": a.duration_ms,
                "at": format_rfc3339_ms(a.at_ms),
            })
        })
        .collect();
    let state = e.state.as_str();
    json!({
        "event_id": e.event_id,
        "type": e.event_type,
        "msg_id": e.msg_id,
        "timestamp": format_rfc3339_ms(e.timestamp_ms),
        "accepted_at": format_rfc3339_ms(e.accepted_at_ms),
        "test": e.test,
        "state": state,
        "delivered_to": e.delivered_to.map(|r| r.as_str()),
        "reason": if state == "skipped" { e.detail.as_deref() } else { None },
        "last_error": if state != "skipped" { e.detail.as_deref() } else { None },
        "next_attempt_at": e.due_at_ms.map(format_rfc3339_ms),
        "round": e.round,
        "attempts": attempts,
    })
}
