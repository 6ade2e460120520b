//! The intake-only scenario of `cargo xtask bench --intake-only`: how fast the gateway accepts
//! batches durably when it does nothing else.
//!
//! The gateway runs with `delivery.enabled = false` (an intake-only node), so the CPUs go to
//! parsing, validating and group-committing the batches, as on a node of a cluster that only
//! takes intake. Next to it, in the same run, the raw baseline: the same clients POSTing the
//! same batches straight to a sink that only counts them. Issue 9 sets 150,000 events/s as
//! the goal for batched intake.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, ensure};

use super::gateway::{self, Gateway};
use super::load::{self, Intake, Payloads};
use super::sink::Sink;
use super::{Plan, own_cpu_seconds, per_100k, rate};

/// Issue 9's goal for batched intake, events/s accepted and durable.
const TARGET_PER_S: f64 = 150_000.0;

/// What one intake-only run measured.
pub struct Measured {
    pub raw_per_s: f64,
    pub raw_bench_cpu_per_100k: f64,
    pub accepted_per_s: f64,
    /// Request round trips of the intake POSTs, ms.
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub gateway_cpu_per_100k: f64,
    pub bench_cpu_per_100k: f64,
    pub rss_peak_mib: f64,
    pub busy_retries: usize,
    /// Batches answered 429; none is expected, the bench's gateway has no practical limit.
    pub throttled_retries: usize,
    pub store_bytes: u64,
    /// The gateway's `/metrics` after the run: events it counts as accepted.
    pub stored: usize,
}

pub async fn run(
    plan: &Plan,
    payloads: &Arc<Payloads>,
    bin: &Path,
    dir: &Path,
) -> Result<Measured> {
    let client = load::http_client();
    eprintln!(
        "bench: raw, batched POSTs to the sink ({} clients)",
        plan.clients
    );
    let sink = Sink::start(plan.events).await?;
    let cpu_before = own_cpu_seconds()?;
    let raw = load::raw_batched(&client, &sink.url().parse()?, payloads, plan.clients).await?;
    let raw_cpu = own_cpu_seconds()? - cpu_before;
    ensure!(
        sink.arrivals.distinct() == plan.events,
        "the sink recorded {} of {} events",
        sink.arrivals.distinct(),
        plan.events
    );

    eprintln!("bench: gateway on SQLite with delivery.enabled = false");
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let data_dir = dir.join("data");
    let sink_url = sink.url();
    let settings = gateway::Settings {
        data_dir: &data_dir,
        sink_url: &sink_url,
        delivery_concurrency: plan.delivery_concurrency,
        in_flight_per_address: plan.in_flight_per_address,
        store_url: None,
        plugin: None,
        metrics_off: false,
        down_primary: None,
        hold_failures: false,
        delivery_off: true,
    };
    let gw = Gateway::start(bin, dir, &settings, &client).await?;
    let intake = Arc::new(Intake::new(payloads.batches.len()));
    let uri: hyper::Uri = format!("http://{}/v1/events", gw.addr).parse()?;
    let gateway_cpu_before = gw.cpu_seconds()?;
    let own_cpu_before = own_cpu_seconds()?;
    let run = load::gateway_intake(
        &client,
        &uri,
        gateway::INTAKE_TOKEN,
        payloads,
        plan.clients,
        &intake,
        None,
    )
    .await?;
    let gateway_cpu = gw.cpu_seconds()? - gateway_cpu_before;
    let own_cpu = own_cpu_seconds()? - own_cpu_before;
    let rss_peak_mib = gw.rss_peak_bytes()? as f64 / (1024.0 * 1024.0);
    let stored = gateway::accepted_events(&client, gw.addr).await?;
    gw.stop().await?;
    // Nothing may have been pushed: the figure is intake alone.
    ensure!(
        sink.arrivals.distinct() == plan.events && sink.arrivals.repeats() == 0,
        "the gateway pushed events with delivery off ({} repeats at the sink)",
        sink.arrivals.repeats()
    );
    let round_trips = super::Latency::of(run.round_trips);
    Ok(Measured {
        raw_per_s: rate(plan.events, raw.finished - raw.started),
        raw_bench_cpu_per_100k: per_100k(raw_cpu, plan.events),
        accepted_per_s: rate(plan.events, run.finished - run.started),
        p50_ms: round_trips.p50,
        p99_ms: round_trips.p99,
        gateway_cpu_per_100k: per_100k(gateway_cpu, plan.events),
        bench_cpu_per_100k: per_100k(own_cpu, plan.events),
        rss_peak_mib,
        busy_retries: intake
            .busy_retries
            .load(std::sync::atomic::Ordering::Relaxed),
        throttled_retries: intake
            .throttled_retries
            .load(std::sync::atomic::Ordering::Relaxed),
        store_bytes: gateway::dir_bytes(&data_dir),
        stored,
    })
}

pub fn print(w: &mut String, header: &str, m: &Measured) {
    writeln!(w, "{header}").unwrap();
    writeln!(
        w,
        "{:<36}{:>10}{:>9}{:>9}{:>14}{:>15}{:>17}",
        "scenario",
        "events/s",
        "p50 ms",
        "p99 ms",
        "peak RSS MiB",
        "gw CPU s/100k",
        "bench CPU s/100k"
    )
    .unwrap();
    writeln!(
        w,
        "{:<36}{:>10.0}{:>9}{:>9}{:>14}{:>15}{:>17.2}",
        "raw, batched POSTs to sink", m.raw_per_s, "-", "-", "-", "-", m.raw_bench_cpu_per_100k
    )
    .unwrap();
    writeln!(
        w,
        "{:<36}{:>10.0}{:>9.2}{:>9.2}{:>14.1}{:>15.2}{:>17.2}",
        "gateway intake only (202, durable)",
        m.accepted_per_s,
        m.p50_ms,
        m.p99_ms,
        m.rss_peak_mib,
        m.gateway_cpu_per_100k,
        m.bench_cpu_per_100k
    )
    .unwrap();
    writeln!(
        w,
        "latency: intake POST round trip; gateway counted {} events accepted; {} batches retried after 503, {} after 429; store {:.1} MiB",
        m.stored,
        m.busy_retries,
        m.throttled_retries,
        m.store_bytes as f64 / (1024.0 * 1024.0)
    )
    .unwrap();
    writeln!(
        w,
        "ratio accepted / raw batched: {:.3}   batched intake {:.0} events/s (target >= {TARGET_PER_S:.0}: {})",
        m.accepted_per_s / m.raw_per_s,
        m.accepted_per_s,
        if m.accepted_per_s >= TARGET_PER_S {
            "met"
        } else {
            "not met"
        }
    )
    .unwrap();
}
