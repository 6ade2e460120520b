//! The chaos run's receivers: a primary that sometimes fails or answers late (so kills land
//! on retries, failovers and requests in flight) and a backup that always answers 200. Both
//! record, per `webhook-id`, when each 2xx answer was given.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Largest request body read (the chaos events are tiny).
const BODY_BYTES_MAX: usize = 1024 * 1024;

/// How a sink answers.
#[derive(Clone, Copy)]
pub enum Behaviour {
    /// 1 request in 20 gets a 500, 1 in 20 waits 300 ms before its 200, the rest 200 at once.
    Flaky,
    /// 200 at once.
    Steady,
}

/// Every 2xx answer a sink gave, by webhook-id: the instants they were given.
#[derive(Default)]
pub struct Deliveries {
    by_id: Mutex<HashMap<String, Vec<Instant>>>,
    requests: AtomicU64,
}

impl Deliveries {
    /// Ids answered 2xx at least once, with the first time and the count of 2xx answers.
    pub fn snapshot(&self) -> HashMap<String, (Instant, usize)> {
        lock(&self.by_id)
            .iter()
            .filter_map(|(id, times)| {
                times
                    .first()
                    .map(|first| (id.clone(), (*first, times.len())))
            })
            .collect()
    }

    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    fn delivered(&self, id: String) {
        lock(&self.by_id)
            .entry(id)
            .or_default()
            .push(Instant::now());
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Critical sections are single map updates.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A running sink; stops when dropped.
pub struct Sink {
    pub url: String,
    pub deliveries: Arc<Deliveries>,
    task: JoinHandle<()>,
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Sink {
    pub async fn start(behaviour: Behaviour, seed: u64) -> Result<Sink> {
        let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
            .await
            .context("cannot bind a chaos sink on 127.0.0.1")?;
        let addr = listener.local_addr()?;
        let deliveries = Arc::new(Deliveries::default());
        let counter = Arc::new(AtomicU64::new(seed));
        let task = tokio::spawn(accept(listener, behaviour, deliveries.clone(), counter));
        Ok(Sink {
            url: format!("http://{addr}/hook"),
            deliveries,
            task,
        })
    }
}

async fn accept(
    listener: TcpListener,
    behaviour: Behaviour,
    deliveries: Arc<Deliveries>,
    counter: Arc<AtomicU64>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of file descriptors or similar: pause rather than spin.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let deliveries = deliveries.clone();
        let counter = counter.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                answer(request, behaviour, deliveries.clone(), counter.clone())
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn answer(
    request: Request<Incoming>,
    behaviour: Behaviour,
    deliveries: Arc<Deliveries>,
    counter: Arc<AtomicU64>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    deliveries.requests.fetch_add(1, Ordering::Relaxed);
    let id = request
        .headers()
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    // Reading the whole body first, as a real receiver would before acting on it.
    let _ = Limited::new(request.into_body(), BODY_BYTES_MAX)
        .collect()
        .await;
    let roll = mix(counter.fetch_add(1, Ordering::Relaxed)) % 20;
    let status = match behaviour {
        Behaviour::Steady => StatusCode::OK,
        Behaviour::Flaky if roll == 0 => StatusCode::INTERNAL_SERVER_ERROR,
        Behaviour::Flaky if roll == 1 => {
            tokio::time::sleep(Duration::from_millis(300)).await;
            StatusCode::OK
        }
        Behaviour::Flaky => StatusCode::OK,
    };
    if status.is_success()
        && let Some(id) = id
    {
        // Recorded when the answer is decided: the gateway may be killed before it reads
        // it, which is exactly how a duplicate arises.
        deliveries.delivered(id);
    }
    let mut response = Response::new(Full::new(Bytes::from_static(b"ok")));
    *response.status_mut() = status;
    Ok(response)
}

/// SplitMix64: spreads a counter into well-mixed bits.
pub fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
