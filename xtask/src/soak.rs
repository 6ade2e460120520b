//! `cargo xtask soak`: the gateway under a steady load for a long time (an hour by default),
//! sampling its resident memory, open file descriptors and queue depth, to show none of them
//! grows without bound. Loopback only; the same gateway, receivers and sender as `chaos`,
//! without the kills.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use tokio::time::Instant;

use crate::chaos::sink::{Behaviour, Sink};
use crate::chaos::{GatewayProcess, StoreKind, TEST_PG_ENV, http_client, send_all};
use crate::pgdb::TempDatabase;

#[derive(clap::Args)]
pub struct Args {
    /// How long to run, in minutes.
    #[arg(long, default_value_t = 60)]
    minutes: u64,
    /// Events per second, sent in batches of up to 20.
    #[arg(long, default_value_t = 200)]
    rate: u64,
    /// Seconds between two samples.
    #[arg(long, default_value_t = 30)]
    sample_seconds: u64,
    /// The store: `sqlite` or `postgres` (a fresh database on `MAILHOOK_TEST_PG`).
    #[arg(long, value_enum, default_value_t = StoreKind::Sqlite)]
    store: StoreKind,
    /// Run the release build of the gateway instead of the debug one.
    #[arg(long)]
    release: bool,
}

/// One sample of the gateway's state.
struct Sample {
    at: Duration,
    rss_bytes: u64,
    fds: usize,
    queue_depth: f64,
    accepted: usize,
    delivered: usize,
}

pub fn run(root: &std::path::Path, args: Args) -> Result<()> {
    ensure!(
        (1..=24 * 60).contains(&args.minutes),
        "--minutes {} must be from 1 to 1440",
        args.minutes
    );
    ensure!(
        (1..=100_000).contains(&args.rate),
        "--rate {} must be from 1 to 100000",
        args.rate
    );
    ensure!(
        args.sample_seconds >= 1,
        "--sample-seconds must be at least 1"
    );
    let bin = crate::chaos::build(root, args.release)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(soak(&args, &bin))
}

async fn soak(args: &Args, bin: &std::path::Path) -> Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("mailhook-soak-")
        .tempdir()?;
    let database = match args.store {
        StoreKind::Sqlite => None,
        StoreKind::Postgres => Some(TempDatabase::create("soak", TEST_PG_ENV).await?),
    };
    let primary = Sink::start(Behaviour::Flaky, 1).await?;
    let backup = Sink::start(Behaviour::Steady, 1).await?;
    let mut gateway = GatewayProcess::configure(
        bin,
        dir.path(),
        &[&primary.url, &backup.url],
        database.as_ref().map(|db| db.url.as_str()),
    )?;
    gateway.spawn().await?;
    let pid = gateway.pid()?;
    let duration = Duration::from_secs(args.minutes * 60);
    let events = usize::try_from(args.rate * duration.as_secs()).context("too many events")?;
    println!(
        "mailhook soak ({}): {} events/s for {} min, a sample every {} s",
        args.store.name(),
        args.rate,
        args.minutes,
        args.sample_seconds
    );
    println!(
        "{:>8} {:>10} {:>5} {:>7} {:>10} {:>10}",
        "t", "rss", "fds", "queue", "accepted", "delivered"
    );
    let accepted_at: Arc<Mutex<HashMap<usize, Instant>>> = Arc::default();
    let client = http_client();
    let sender = tokio::spawn(send_all(
        client.clone(),
        gateway.addr,
        events,
        duration,
        accepted_at.clone(),
    ));
    let started = Instant::now();
    let mut samples = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs(args.sample_seconds));
    while !sender.is_finished() {
        tick.tick().await;
        gateway.check_running()?;
        let delivered = crate::chaos::merged(&primary, &backup).len();
        let sample = Sample {
            at: started.elapsed(),
            rss_bytes: rss_bytes(pid.as_raw())?,
            fds: open_fds(pid.as_raw())?,
            queue_depth: queue_depth(&client, gateway.addr).await.unwrap_or(f64::NAN),
            accepted: lock(&accepted_at).len(),
            delivered,
        };
        println!(
            "{:>7}s {:>8.1}MiB {:>5} {:>7} {:>10} {:>10}",
            sample.at.as_secs(),
            sample.rss_bytes as f64 / (1024.0 * 1024.0),
            sample.fds,
            sample.queue_depth,
            sample.accepted,
            sample.delivered
        );
        samples.push(sample);
    }
    let unacknowledged = sender.await??;
    let code = gateway.terminate().await?;
    if let Some(database) = database {
        database.drop_database().await?;
    }
    summarize(&samples, unacknowledged, code)
}

/// Compares the first and last quarters of the run.
fn summarize(samples: &[Sample], unacknowledged: usize, code: Option<i32>) -> Result<()> {
    if samples.len() < 4 {
        println!("too few samples to compare the start and the end of the run");
        return Ok(());
    }
    let quarter = samples.len() / 4;
    let mean = |part: &[Sample], f: &dyn Fn(&Sample) -> f64| {
        part.iter().map(f).sum::<f64>() / part.len() as f64
    };
    let (first, last) = (&samples[..quarter], &samples[samples.len() - quarter..]);
    let rss = |s: &Sample| s.rss_bytes as f64 / (1024.0 * 1024.0);
    let fds = |s: &Sample| s.fds as f64;
    let queue = |s: &Sample| s.queue_depth;
    println!(
        "first quarter: rss {:.1} MiB, fds {:.0}, queue {:.0}; last quarter: rss {:.1} MiB, fds {:.0}, queue {:.0}; \
         {unacknowledged} events never acknowledged; exit code after SIGTERM {code:?}",
        mean(first, &rss),
        mean(first, &fds),
        mean(first, &queue),
        mean(last, &rss),
        mean(last, &fds),
        mean(last, &queue)
    );
    if code != Some(0) {
        bail!("the gateway did not exit cleanly after SIGTERM: {code:?}");
    }
    Ok(())
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// `VmRSS` of the process, in bytes.
fn rss_bytes(pid: i32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .and_then(|kib| kib.trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .with_context(|| format!("no VmRSS line in {path}"))
}

/// Open file descriptors of the process.
fn open_fds(pid: i32) -> Result<usize> {
    let path = format!("/proc/{pid}/fd");
    Ok(std::fs::read_dir(&path)
        .with_context(|| format!("cannot list {path}"))?
        .count())
}

/// `mailhook_queue_depth_events` from the gateway's `/metrics`.
async fn queue_depth(client: &crate::chaos::HttpClient, addr: std::net::SocketAddr) -> Option<f64> {
    let request = Request::get(format!("http://{addr}/metrics"))
        .body(Full::new(Bytes::new()))
        .ok()?;
    let response = tokio::time::timeout(Duration::from_secs(5), client.request(request))
        .await
        .ok()?
        .ok()?;
    let body = response.into_body().collect().await.ok()?.to_bytes();
    String::from_utf8_lossy(&body)
        .lines()
        .find_map(|line| line.strip_prefix("mailhook_queue_depth_events "))
        .and_then(|value| value.trim().parse().ok())
}
