//! The backlog scenario of `cargo xtask bench --backlog`: events accepted while the only
//! receiver is down, held on disk, then drained once it is back.
//!
//! The receiver is "down" as a port where nothing listens (connections refused at once). The
//! gateway makes one attempt per event (`retries_per_address = 0`) and schedules the next
//! round an hour later, so every event waits, failed, in the store. The receiver then comes
//! back on the same port, and replays of the account's failures (by id, 5,000 a request) put
//! them all back in the queue, as an operator would once the receiver is fixed. What issue 9 asks of it: the
//! gateway's memory stays flat however long the queue (it lives on disk), and the time to
//! drain it.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE};
use hyper::{Method, Request, StatusCode};
use tokio::time::Instant;

use super::gateway::{self, Gateway};
use super::load::{self, Intake, Payloads};
use super::sink::{HOOK_PATH, Sink};

/// Issue 9's goal: peak RSS with the whole backlog held, in MiB.
const RSS_TARGET_MIB: f64 = 150.0;
/// The gateway counts as done with the failing attempts once it uses less CPU than this in a
/// second.
const QUIET_CPU_S: f64 = 0.02;
/// Longest wait for the failing attempts to settle, and for the drain.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(900);
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1800);
const REPLAY_TIMEOUT: Duration = Duration::from_secs(60);
/// Event ids per replay request (the answer lists each one).
const REPLAY_IDS_PER_REQUEST: usize = 5000;
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// What the backlog run measured.
pub struct Measured {
    pub events: usize,
    pub intake_per_s: f64,
    /// From the last 202 until the gateway went quiet (every event had its failed attempt).
    pub settle: Duration,
    /// The gateway's peak resident memory up to the moment the receiver came back.
    pub backlog_rss_mib: f64,
    pub replayed: usize,
    /// From the first replay request until the last event's first arrival.
    pub drain: Duration,
    pub drain_per_s: f64,
    /// Peak resident memory over the whole run, the drain and the replay's answer included.
    pub peak_rss_mib: f64,
    pub repeats: usize,
    pub store_bytes: u64,
}

pub async fn run(
    events: usize,
    clients: usize,
    delivery_concurrency: Option<usize>,
    payloads: &Arc<Payloads>,
    bin: &Path,
    dir: &Path,
) -> Result<Measured> {
    // The receiver's port: free now, and nothing listens on it until it "comes back".
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let url = format!("http://{port}{HOOK_PATH}");
    let data_dir = dir.join("data");
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let settings = gateway::Settings {
        data_dir: &data_dir,
        sink_url: &url,
        delivery_concurrency,
        in_flight_per_address: None,
        store_url: None,
        plugin: None,
        metrics_off: false,
        down_primary: None,
        delivery_off: false,
        hold_failures: true,
    };
    let client = load::http_client();
    let mut gateway = Gateway::start(bin, dir, &settings, &client).await?;

    eprintln!("bench: backlog: {events} events in while the receiver is down");
    let intake = Arc::new(Intake::new(payloads.batches.len()));
    let intake_uri: hyper::Uri = format!("http://{}/v1/events", gateway.addr).parse()?;
    let run = load::gateway_intake(
        &client,
        &intake_uri,
        gateway::INTAKE_TOKEN,
        payloads,
        clients,
        &intake,
        None,
    )
    .await
    .context("intake failed")?;
    let intake_per_s = events as f64 / (run.finished - run.started).as_secs_f64().max(1e-9);

    // Every event gets one attempt, refused; then the gateway has nothing to do for an hour.
    let settling = Instant::now();
    loop {
        gateway.check_running()?;
        let before = gateway.cpu_seconds()?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        if gateway.cpu_seconds()? - before < QUIET_CPU_S {
            break;
        }
        if settling.elapsed() > SETTLE_TIMEOUT {
            bail!("the gateway was still busy {SETTLE_TIMEOUT:?} after the intake");
        }
    }
    let settle = settling.elapsed();
    let backlog_rss_mib = gateway.rss_peak_bytes()? as f64 / (1024.0 * 1024.0);
    eprintln!(
        "bench: backlog held after {:.1} s; peak RSS so far {backlog_rss_mib:.1} MiB; receiver back, replaying",
        settle.as_secs_f64()
    );

    let sink = Sink::start_at(port, events).await?;
    let back = Instant::now();
    // In slices of ids: one replay of everything answers with every id at once.
    let mut replayed = 0;
    for first in (0..events).step_by(REPLAY_IDS_PER_REQUEST) {
        let ids: Vec<String> = (first..events.min(first + REPLAY_IDS_PER_REQUEST))
            .map(|i| format!("bench-{i}"))
            .collect();
        let body = serde_json::to_vec(&serde_json::json!({ "event_ids": ids }))?;
        let replay = Request::builder()
            .method(Method::POST)
            .uri(format!(
                "http://{}/v1/accounts/default/failures/replay",
                gateway.addr
            ))
            .header(AUTHORIZATION, format!("Bearer {}", gateway::ADMIN_TOKEN))
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))?;
        let (status, _, body, _) = load::send(&client, replay, REPLAY_TIMEOUT).await?;
        ensure!(
            status == StatusCode::OK,
            "replay answered {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(500)])
        );
        let answer: serde_json::Value =
            serde_json::from_slice(&body).context("the replay's answer is not JSON")?;
        replayed += answer["replayed"]
            .as_u64()
            .context("the replay's answer has no `replayed`")? as usize;
    }
    ensure!(
        replayed == events,
        "{replayed} events were replayed, not {events}: some were not failed (delivered, or still \
         in their first attempt) when the receiver came back"
    );

    let mut next_progress = Instant::now() + PROGRESS_EVERY;
    while sink.arrivals.distinct() < events {
        gateway.check_running()?;
        if back.elapsed() > DRAIN_TIMEOUT {
            bail!(
                "{} of {events} delivered {DRAIN_TIMEOUT:?} after the receiver came back",
                sink.arrivals.distinct()
            );
        }
        if Instant::now() >= next_progress {
            eprintln!(
                "bench: {:>6.1} s after the replay: delivered {}/{events}",
                back.elapsed().as_secs_f64(),
                sink.arrivals.distinct()
            );
            next_progress += PROGRESS_EVERY;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let last = sink.arrivals.last().context("no arrival recorded")?;
    let drain = last.duration_since(back);
    let peak_rss_mib = gateway.rss_peak_bytes()? as f64 / (1024.0 * 1024.0);
    let repeats = sink.arrivals.repeats();
    gateway.stop().await?;
    Ok(Measured {
        events,
        intake_per_s,
        settle,
        backlog_rss_mib,
        replayed,
        drain,
        drain_per_s: events as f64 / drain.as_secs_f64().max(1e-9),
        peak_rss_mib,
        repeats,
        store_bytes: gateway::dir_bytes(&data_dir),
    })
}

pub fn print(w: &mut String, m: &Measured, commit: &str, cpu: &str) {
    writeln!(
        w,
        "mailhook bench --backlog: {} events, receiver down then back, commit {commit}, {cpu}",
        m.events
    )
    .unwrap();
    writeln!(
        w,
        "intake while down        {:>10.0} events/s accepted (each then failed once, refused)",
        m.intake_per_s
    )
    .unwrap();
    writeln!(
        w,
        "backlog held             {:>10.1} s after the last 202, all {} failed and on disk",
        m.settle.as_secs_f64(),
        m.replayed
    )
    .unwrap();
    writeln!(
        w,
        "peak RSS, backlog held   {:>10.1} MiB   (target < {RSS_TARGET_MIB:.0} MiB: {})",
        m.backlog_rss_mib,
        if m.backlog_rss_mib < RSS_TARGET_MIB {
            "met"
        } else {
            "NOT met"
        }
    )
    .unwrap();
    writeln!(
        w,
        "drain                    {:>10.1} s from the replay to the last first arrival ({:.0} events/s)",
        m.drain.as_secs_f64(),
        m.drain_per_s
    )
    .unwrap();
    writeln!(
        w,
        "peak RSS, whole run      {:>10.1} MiB (the drain included)",
        m.peak_rss_mib
    )
    .unwrap();
    writeln!(
        w,
        "repeated deliveries      {:>10}; store {:.1} MiB after the run",
        m.repeats,
        m.store_bytes as f64 / (1024.0 * 1024.0)
    )
    .unwrap();
}
