//! The bench's load: pre-generated event payloads, and the clients that POST them, either
//! straight to the sink (the raw baselines) or to the gateway's intake.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::{BufMut, Bytes, BytesMut};
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::sink::EVENTS_HEADER;

/// A raw POST to the sink must be answered within this.
const RAW_TIMEOUT: Duration = Duration::from_secs(30);
/// An intake POST must be answered within this (a fsync under load can take a while, but not
/// this long).
const INTAKE_TIMEOUT: Duration = Duration::from_secs(60);
/// 503 and 429 answers one intake batch may get before the bench gives up.
const INTAKE_RETRIES_MAX: u32 = 60;
/// Longest `Retry-After` honoured; the bench wants to keep the pressure on.
const RETRY_AFTER_MAX: Duration = Duration::from_secs(5);
/// The wait after a 503 or 429 without a usable `Retry-After`.
const RETRY_AFTER_DEFAULT: Duration = Duration::from_secs(1);
/// Bytes of a response body read (error messages, the 202's event ids).
const RESPONSE_BYTES_MAX: usize = 1024 * 1024;

/// Every event, serialized, alone and grouped into batches.
pub struct Payloads {
    /// Event `i` has `event_id` `bench-<i>`.
    pub events: Vec<Bytes>,
    /// JSON arrays of `batch` consecutive events (the last may be shorter).
    pub batches: Vec<Bytes>,
    pub batch: usize,
}

impl Payloads {
    pub fn generate(events: usize, batch: usize) -> Payloads {
        let events: Vec<Bytes> = (0..events).map(|i| Bytes::from(event(i))).collect();
        let batches = events
            .chunks(batch)
            .map(|chunk| {
                let len = chunk.iter().map(|e| e.len() + 1).sum::<usize>() + 1;
                let mut body = BytesMut::with_capacity(len);
                body.put_u8(b'[');
                for (k, event) in chunk.iter().enumerate() {
                    if k > 0 {
                        body.put_u8(b',');
                    }
                    body.put_slice(event);
                }
                body.put_u8(b']');
                body.freeze()
            })
            .collect();
        Payloads {
            events,
            batches,
            batch,
        }
    }

    /// The events of batch `k`: `first..first + count`.
    pub fn batch_range(&self, k: usize) -> (usize, usize) {
        let first = k * self.batch;
        (first, self.batch.min(self.events.len() - first))
    }

    pub fn mean_event_bytes(&self) -> usize {
        self.events.iter().map(Bytes::len).sum::<usize>() / self.events.len().max(1)
    }
}

/// A batch of `count` warm-up events, `warmup-0` on: bench events in all but the name, which
/// the sink counts apart.
pub fn warmup_batch(count: usize) -> Bytes {
    let events: Vec<serde_json::Value> = (0..count)
        .map(|k| event_value(format!("{}{k}", super::sink::WARMUP_PREFIX), k))
        .collect();
    Bytes::from(serde_json::to_vec(&events).expect("a json! value serializes"))
}

/// One `delivery` event as a mail system would report it, ~350 bytes.
fn event(i: usize) -> Vec<u8> {
    serde_json::to_vec(&event_value(format!("bench-{i}"), i)).expect("a json! value serializes")
}

/// Event `i`'s fields, named `event_id`.
fn event_value(event_id: String, i: usize) -> serde_json::Value {
    serde_json::json!({
        "type": "delivery",
        "event_id": event_id,
        "msg_id": format!("<20261127120000.{i:08}@mta1.example.com>"),
        "email": {
            "subject": format!("Your order #{i:08} has shipped"),
            "from": "Example Shop <orders@shop.example.com>",
            "to": format!("customer{i}@mail.example.org"),
            "tags": ["transactional", "orders"],
        },
        "status": {
            "smtp_code": 250,
            "response": format!("250 2.0.0 OK 1795780800 {i:x}.1 - gsmtp"),
            "mx_host": "mx1.mail.example.org",
        },
    })
}

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// A keep-alive client that opens as many connections as there are requests in flight.
pub fn http_client() -> HttpClient {
    let mut connector = HttpConnector::new();
    // Request and response are one small write each: Nagle would only add delay.
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .build(connector)
}

/// What one load run measured.
pub struct Run {
    pub started: Instant,
    /// When the last request was answered.
    pub finished: Instant,
    /// Round trip of each request (the last attempt, for retried ones).
    pub round_trips: Vec<Duration>,
}

/// Runs `job(0..jobs)` on `workers` concurrent tasks, each taking the next job when done with
/// one. The first failure stops the run.
async fn drive<F, Fut>(workers: usize, jobs: usize, job: F) -> Result<Run>
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<Duration>> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for _ in 0..workers.min(jobs) {
        let next = next.clone();
        let job = job.clone();
        tasks.spawn(async move {
            let mut round_trips = Vec::with_capacity(jobs / workers + 1);
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= jobs {
                    return Ok::<_, anyhow::Error>((round_trips, Instant::now()));
                }
                round_trips.push(job(k).await?);
            }
        });
    }
    let mut round_trips = Vec::with_capacity(jobs);
    let mut finished = started;
    while let Some(done) = tasks.join_next().await {
        // Returning early drops `tasks`, which aborts the other workers.
        let (times, last) = done.context("a load task panicked")??;
        round_trips.extend(times);
        finished = finished.max(last);
    }
    Ok(Run {
        started,
        finished,
        round_trips,
    })
}

/// Raw baseline "one POST per event": what the gateway's delivery does, without the gateway.
pub async fn raw_one_per_post(
    client: &HttpClient,
    sink: &Uri,
    payloads: &Arc<Payloads>,
    senders: usize,
) -> Result<Run> {
    let (client, sink, payloads) = (client.clone(), sink.clone(), payloads.clone());
    drive(senders, payloads.events.len(), move |i| {
        let request = Request::builder()
            .method(Method::POST)
            .uri(sink.clone())
            .header(CONTENT_TYPE, "application/json")
            .header("webhook-id", format!("bench-{i}"))
            .body(Full::new(payloads.events[i].clone()));
        let client = client.clone();
        async move {
            let (status, _, body, round_trip) = send(&client, request?, RAW_TIMEOUT).await?;
            if status != StatusCode::OK {
                bail!("sink answered {status}: {}", String::from_utf8_lossy(&body));
            }
            Ok(round_trip)
        }
    })
    .await
}

/// Raw baseline "batched": what the gateway's intake gets, without the gateway.
pub async fn raw_batched(
    client: &HttpClient,
    sink: &Uri,
    payloads: &Arc<Payloads>,
    clients: usize,
) -> Result<Run> {
    let (client, sink, payloads) = (client.clone(), sink.clone(), payloads.clone());
    drive(clients, payloads.batches.len(), move |k| {
        let (first, count) = payloads.batch_range(k);
        let request = Request::builder()
            .method(Method::POST)
            .uri(sink.clone())
            .header(CONTENT_TYPE, "application/json")
            .header("webhook-id", format!("bench-{first}"))
            .header(EVENTS_HEADER, count)
            .body(Full::new(payloads.batches[k].clone()));
        let client = client.clone();
        async move {
            let (status, _, body, round_trip) = send(&client, request?, RAW_TIMEOUT).await?;
            if status != StatusCode::OK {
                bail!("sink answered {status}: {}", String::from_utf8_lossy(&body));
            }
            Ok(round_trip)
        }
    })
    .await
}

/// What the intake clients share beyond the run itself.
pub struct Intake {
    /// The zero of `accepted_ns`.
    pub base: Instant,
    /// Per batch: nanoseconds after `base` at which its 202 arrived.
    pub accepted_ns: Vec<AtomicU64>,
    /// Events accepted so far (for progress lines).
    pub accepted: AtomicUsize,
    /// 503 answers (store busy) that were retried.
    pub busy_retries: AtomicUsize,
    /// 429 answers (the account's intake rate limit) that were retried.
    pub throttled_retries: AtomicUsize,
}

impl Intake {
    pub fn new(batches: usize) -> Intake {
        Intake {
            base: Instant::now(),
            accepted_ns: (0..batches).map(|_| AtomicU64::new(0)).collect(),
            accepted: AtomicUsize::new(0),
            busy_retries: AtomicUsize::new(0),
            throttled_retries: AtomicUsize::new(0),
        }
    }

    pub fn accepted_at(&self, batch: usize) -> Instant {
        self.base + Duration::from_nanos(self.accepted_ns[batch].load(Ordering::Relaxed))
    }
}

/// The gateway run's load: `clients` POST the batches to `/v1/events`, as fast as they are
/// answered, or (with `rate`, events per second) batch k no earlier than its place in a
/// steady stream from the start.
pub async fn gateway_intake(
    client: &HttpClient,
    intake_url: &Uri,
    token: &str,
    payloads: &Arc<Payloads>,
    clients: usize,
    intake: &Arc<Intake>,
    rate: Option<f64>,
) -> Result<Run> {
    let (client, url, payloads, intake) = (
        client.clone(),
        intake_url.clone(),
        payloads.clone(),
        intake.clone(),
    );
    let authorization = HeaderValue::try_from(format!("Bearer {token}"))?;
    drive(clients, payloads.batches.len(), move |k| {
        let (client, url, payloads, intake, authorization) = (
            client.clone(),
            url.clone(),
            payloads.clone(),
            intake.clone(),
            authorization.clone(),
        );
        async move {
            let (first, count) = payloads.batch_range(k);
            if let Some(rate) = rate.filter(|rate| *rate > 0.0) {
                let due = intake.base + Duration::from_secs_f64(first as f64 / rate);
                tokio::time::sleep_until(due).await;
            }
            let mut retries = 0;
            loop {
                let request = Request::builder()
                    .method(Method::POST)
                    .uri(url.clone())
                    .header(AUTHORIZATION, authorization.clone())
                    .header(CONTENT_TYPE, "application/json")
                    .body(Full::new(payloads.batches[k].clone()))?;
                let (status, headers, body, round_trip) =
                    send(&client, request, INTAKE_TIMEOUT).await?;
                match status {
                    StatusCode::ACCEPTED => {
                        let at = Instant::now().duration_since(intake.base);
                        intake.accepted_ns[k].store(
                            u64::try_from(at.as_nanos()).unwrap_or(u64::MAX),
                            Ordering::Relaxed,
                        );
                        intake.accepted.fetch_add(count, Ordering::Relaxed);
                        return Ok(round_trip);
                    }
                    StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS
                        if retries < INTAKE_RETRIES_MAX =>
                    {
                        retries += 1;
                        let counter = if status == StatusCode::SERVICE_UNAVAILABLE {
                            &intake.busy_retries
                        } else {
                            &intake.throttled_retries
                        };
                        counter.fetch_add(1, Ordering::Relaxed);
                        let wait = headers
                            .get(RETRY_AFTER)
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.trim().parse::<u64>().ok())
                            .map_or(RETRY_AFTER_DEFAULT, Duration::from_secs)
                            .min(RETRY_AFTER_MAX);
                        tokio::time::sleep(wait).await;
                    }
                    _ => bail!(
                        "gateway answered {status} to batch {k} (after {retries} retries): {}",
                        String::from_utf8_lossy(&body)
                    ),
                }
            }
        }
    })
    .await
}

/// POSTs `count` warm-up events (`warmup_batch`) to the gateway's intake in one batch.
pub async fn post_warmup(
    client: &HttpClient,
    intake_url: &Uri,
    token: &str,
    count: usize,
) -> Result<()> {
    let request = Request::builder()
        .method(Method::POST)
        .uri(intake_url.clone())
        .header(AUTHORIZATION, format!("Bearer {token}"))
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(warmup_batch(count)))?;
    let (status, _, body, _) = send(client, request, INTAKE_TIMEOUT).await?;
    if status != StatusCode::ACCEPTED {
        bail!(
            "the warm-up batch got {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    Ok(())
}

/// Sends `request`; its status, headers, body and round trip (until the body was read).
pub async fn send(
    client: &HttpClient,
    request: Request<Full<Bytes>>,
    timeout: Duration,
) -> Result<(StatusCode, hyper::HeaderMap, Bytes, Duration)> {
    let uri = request.uri().clone();
    let sent = Instant::now();
    let exchange = async {
        let response = client.request(request).await?;
        let (parts, body) = response.into_parts();
        let body = Limited::new(body, RESPONSE_BYTES_MAX)
            .collect()
            .await
            .map_err(|err| anyhow::anyhow!("reading the response body: {err}"))?
            .to_bytes();
        Ok::<_, anyhow::Error>((parts.status, parts.headers, body))
    };
    let (status, headers, body) = tokio::time::timeout(timeout, exchange)
        .await
        .with_context(|| format!("POST {uri}: no answer within {timeout:?}"))?
        .with_context(|| format!("POST {uri}"))?;
    Ok((status, headers, body, sent.elapsed()))
}
