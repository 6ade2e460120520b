//! The bench's webhook sink: an HTTP/1.1 server on 127.0.0.1 that answers `200 ok` to every
//! request and records when each bench event first arrived.
//!
//! Events are named `bench-<i>`, so arrivals live in a flat array of atomics indexed by `i`
//! instead of a locked map: recording costs one compare-and-swap, so the sink stays far from
//! being the bottleneck it is meant to measure against.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

/// The path the sink is reached at; any path is accepted, this one is what the bench uses.
pub const HOOK_PATH: &str = "/hook";

/// The `event_id` prefix of warm-up events: counted apart, never as bench events.
pub const WARMUP_PREFIX: &str = "warmup-";

/// Header a raw batched POST uses to say how many events (from its `webhook-id` on) it holds.
pub const EVENTS_HEADER: &str = "x-bench-events";

/// Largest request body read; a larger one closes the connection (nothing the bench sends
/// comes near it).
const BODY_BYTES_MAX: usize = 16 * 1024 * 1024;

/// How long the accept loop pauses after an accept error (out of file descriptors) so it does
/// not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(10);

/// What the sink saw, shared with the bench.
pub struct Arrivals {
    /// The zero of `first_ns`.
    pub base: Instant,
    /// Per event `i`: nanoseconds after `base` plus 1 of its first arrival, 0 while none.
    first_ns: Vec<AtomicU64>,
    /// Events that arrived at least once.
    distinct: AtomicUsize,
    /// Event arrivals, repeats included.
    events: AtomicUsize,
    /// Requests without a `webhook-id` the sink can map to a bench event.
    foreign: AtomicUsize,
    /// Arrivals of warm-up events (`warmup-<k>`), sent before a run's clock starts.
    warmups: AtomicUsize,
}

impl Arrivals {
    fn new(base: Instant, events: usize) -> Arrivals {
        Arrivals {
            base,
            first_ns: (0..events).map(|_| AtomicU64::new(0)).collect(),
            distinct: AtomicUsize::new(0),
            events: AtomicUsize::new(0),
            foreign: AtomicUsize::new(0),
            warmups: AtomicUsize::new(0),
        }
    }

    pub fn distinct(&self) -> usize {
        self.distinct.load(Ordering::Relaxed)
    }

    /// Arrivals beyond the first of each event (at-least-once delivery repeats).
    pub fn repeats(&self) -> usize {
        self.events.load(Ordering::Relaxed) - self.distinct()
    }

    pub fn foreign(&self) -> usize {
        self.foreign.load(Ordering::Relaxed)
    }

    /// Arrivals of warm-up events, repeats included.
    pub fn warmups(&self) -> usize {
        self.warmups.load(Ordering::Relaxed)
    }

    /// When event `i` first arrived.
    pub fn first(&self, i: usize) -> Option<Instant> {
        match self.first_ns[i].load(Ordering::Relaxed) {
            0 => None,
            ns => Some(self.base + Duration::from_nanos(ns - 1)),
        }
    }

    /// The last first-arrival over all events that arrived.
    pub fn last(&self) -> Option<Instant> {
        let ns = self
            .first_ns
            .iter()
            .map(|at| at.load(Ordering::Relaxed))
            .max()?;
        (ns > 0).then(|| self.base + Duration::from_nanos(ns - 1))
    }

    fn record(&self, first: usize, count: usize, at: Instant) {
        let ns = u64::try_from(at.duration_since(self.base).as_nanos()).unwrap_or(u64::MAX - 1) + 1;
        let Some(slots) = first
            .checked_add(count)
            .and_then(|end| self.first_ns.get(first..end))
        else {
            self.foreign.fetch_add(1, Ordering::Relaxed);
            return;
        };
        self.events.fetch_add(count, Ordering::Relaxed);
        let mut new = 0;
        for slot in slots {
            if slot
                .compare_exchange(0, ns, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
            {
                new += 1;
            }
        }
        self.distinct.fetch_add(new, Ordering::Relaxed);
    }
}

/// A running sink; it stops (with its connections) when dropped.
pub struct Sink {
    addr: SocketAddr,
    pub arrivals: Arc<Arrivals>,
    server: JoinHandle<()>,
}

impl Sink {
    /// Starts a sink for events `bench-0` to `bench-<events - 1>` on the current runtime.
    pub async fn start(events: usize) -> Result<Sink> {
        Sink::start_at(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), events).await
    }

    /// The same on `addr` (a receiver coming back on the port it had).
    pub async fn start_at(addr: SocketAddr, events: usize) -> Result<Sink> {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("sink: cannot bind {addr}"))?;
        let addr = listener.local_addr().context("sink: no local address")?;
        let arrivals = Arc::new(Arrivals::new(Instant::now(), events));
        let server = tokio::spawn(serve(listener, arrivals.clone()));
        Ok(Sink {
            addr,
            arrivals,
            server,
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}{HOOK_PATH}", self.addr)
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        // Dropping the accept task drops its JoinSet, which aborts every connection task.
        self.server.abort();
    }
}

async fn serve(listener: TcpListener, arrivals: Arc<Arrivals>) {
    let mut connections = JoinSet::new();
    loop {
        // Reap finished connections so the set does not grow with the connection count.
        while connections.try_join_next().is_some() {}
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        // Small request/response pairs: without this, Nagle can hold a response back.
        let _ = stream.set_nodelay(true);
        let arrivals = arrivals.clone();
        connections.spawn(async move {
            let service = service_fn(move |request| handle(request, arrivals.clone()));
            // A client closing its keep-alive connection ends here; nothing to report.
            let _ = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn handle(
    request: Request<Incoming>,
    arrivals: Arc<Arrivals>,
) -> Result<Response<Full<Bytes>>, Box<dyn std::error::Error + Send + Sync>> {
    let id = request
        .headers()
        .get("webhook-id")
        .and_then(|id| id.to_str().ok());
    let warmup = id.is_some_and(|id| id.starts_with(WARMUP_PREFIX));
    let first = id
        .and_then(|id| id.strip_prefix("bench-"))
        .and_then(|i| i.parse::<usize>().ok());
    let count = match request.headers().get(EVENTS_HEADER) {
        None => Some(1),
        Some(count) => count.to_str().ok().and_then(|c| c.parse::<usize>().ok()),
    };
    // The whole body is read before the arrival counts, as a real receiver would have to.
    Limited::new(request.into_body(), BODY_BYTES_MAX)
        .collect()
        .await?;
    let at = Instant::now();
    match (first, count) {
        _ if warmup => {
            arrivals.warmups.fetch_add(1, Ordering::Relaxed);
        }
        (Some(first), Some(count)) => arrivals.record(first, count, at),
        _ => {
            arrivals.foreign.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(ok())
}

fn ok() -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(b"ok")));
    *response.status_mut() = StatusCode::OK;
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::load;

    /// POSTs `body` to the sink as the gateway would push an event named `id`.
    async fn push(client: &load::HttpClient, sink: &Sink, id: &str, body: Bytes) {
        let request = Request::post(sink.url())
            .header("webhook-id", id)
            .body(Full::new(body))
            .unwrap();
        let response = client.request(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn warmup_events_are_counted_apart_from_bench_events() {
        let sink = Sink::start(2).await.unwrap();
        let client = load::http_client();
        let batch: Vec<serde_json::Value> = serde_json::from_slice(&load::warmup_batch(3)).unwrap();
        let ids: Vec<&str> = batch
            .iter()
            .map(|event| event["event_id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["warmup-0", "warmup-1", "warmup-2"]);
        for id in ids {
            push(&client, &sink, id, Bytes::from_static(b"{}")).await;
        }
        push(&client, &sink, "bench-1", Bytes::from_static(b"{}")).await;

        let arrivals = &sink.arrivals;
        assert_eq!(arrivals.warmups(), 3);
        assert_eq!(arrivals.distinct(), 1);
        assert!(arrivals.first(1).is_some() && arrivals.first(0).is_none());
        assert_eq!(arrivals.foreign(), 0);
    }
}
