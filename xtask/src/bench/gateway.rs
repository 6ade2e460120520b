//! The gateway under test: the release binary as a child process on a fresh data dir, its
//! config written here, and what `/proc` says about its memory and CPU.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, StatusCode};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio::time::Instant;

use super::load::HttpClient;

pub const INTAKE_TOKEN: &str = "bench-intake-token-0123456789";
pub const ADMIN_TOKEN: &str = "bench-admin-token-0123456789";
/// The gateway's per-account intake limit and burst in every bench run: far above what this
/// machine can take, so the limit never answers 429.
const BENCH_INTAKE_LIMIT: u32 = 1_000_000_000;

/// The six event types, all subscribed so nothing is skipped.
const EVENT_TYPES: [&str; 6] = ["send", "delivery", "open", "click", "bounce", "complaint"];

/// How long the gateway may take to answer `/healthz` after its start.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long it may take to exit after SIGTERM (its shutdown grace is 10 s by default).
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// Linux reports process CPU time in clock ticks of USER_HZ, which is 100 on every
/// architecture it runs on; asking `sysconf` would need libc for a constant.
const CLOCK_TICKS_PER_S: f64 = 100.0;

/// What the bench sets in the gateway's config.
pub struct Settings<'a> {
    pub data_dir: &'a Path,
    pub sink_url: &'a str,
    /// `None` keeps the gateway's default.
    pub delivery_concurrency: Option<usize>,
    /// `delivery.in_flight_per_address_max`; `None` keeps the gateway's default.
    pub in_flight_per_address: Option<usize>,
    /// `store.url`; `None` keeps the embedded SQLite store in `data_dir`.
    pub store_url: Option<&'a str>,
    /// A transform plugin run on every event (`--plugin`).
    pub plugin: Option<&'a Path>,
    /// `metrics.enabled = false` (`--compare-metrics`).
    pub metrics_off: bool,
    /// A primary address where nothing listens, before the sink (`--failover`): the sink is
    /// then backup-1, reached once the primary's circuit is open.
    pub down_primary: Option<&'a str>,
    /// One attempt per event and no recovery round within the run (`--backlog`): with the
    /// receiver down, every event stays on disk, failed, until it is replayed.
    pub hold_failures: bool,
    /// `delivery.enabled = false` (`--intake-only`): the gateway only accepts.
    pub delivery_off: bool,
}

/// The running gateway; killed (SIGKILL) if dropped before [`Gateway::stop`].
pub struct Gateway {
    child: Child,
    pid: Pid,
    pub addr: SocketAddr,
}

impl Gateway {
    /// Writes `dir/mailhook.toml`, starts `bin` on it and returns once `/healthz` answers 200.
    pub async fn start(
        bin: &Path,
        dir: &Path,
        settings: &Settings<'_>,
        client: &HttpClient,
    ) -> Result<Gateway> {
        let addr = free_port()?;
        let config_path = dir.join("mailhook.toml");
        std::fs::write(&config_path, config_toml(addr, settings)?)
            .with_context(|| format!("cannot write {}", config_path.display()))?;
        let mut command = Command::new(bin);
        command.arg("--config").arg(&config_path).arg("serve");
        for name in crate::config_overriding_env() {
            command.env_remove(name);
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let id = child.id().context("the gateway exited at once")?;
        let pid = Pid::from_raw(i32::try_from(id).context("pid out of range")?);
        let mut gateway = Gateway { child, pid, addr };
        gateway.wait_healthy(client).await?;
        Ok(gateway)
    }

    async fn wait_healthy(&mut self, client: &HttpClient) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        let uri: hyper::Uri = format!("http://{}/healthz", self.addr).parse()?;
        loop {
            let request = Request::get(uri.clone()).body(Full::new(Bytes::new()))?;
            let answer =
                tokio::time::timeout(Duration::from_secs(1), client.request(request)).await;
            if let Ok(Ok(response)) = answer
                && response.status() == StatusCode::OK
            {
                return Ok(());
            }
            self.check_running()?;
            if Instant::now() >= deadline {
                bail!("the gateway did not answer /healthz within {START_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Fails when the gateway has exited.
    pub fn check_running(&mut self) -> Result<()> {
        match self.child.try_wait()? {
            Some(status) => bail!("the gateway exited unexpectedly with {status}"),
            None => Ok(()),
        }
    }

    /// The exit status, if the gateway exits within `wait`.
    pub async fn exit_within(&mut self, wait: Duration) -> Option<std::process::ExitStatus> {
        tokio::time::timeout(wait, self.child.wait())
            .await
            .ok()
            .and_then(Result::ok)
    }

    /// Peak resident set size so far (`VmHWM`), in bytes.
    pub fn rss_peak_bytes(&self) -> Result<u64> {
        rss_peak_bytes(&format!("/proc/{}/status", self.pid))
    }

    /// User plus system CPU time used so far, in seconds.
    pub fn cpu_seconds(&self) -> Result<f64> {
        cpu_seconds(&format!("/proc/{}/stat", self.pid))
    }

    /// SIGTERM, then waits for the exit (SIGKILL after [`STOP_TIMEOUT`]).
    pub async fn stop(mut self) -> Result<()> {
        kill(self.pid, Signal::SIGTERM).context("cannot send SIGTERM to the gateway")?;
        match tokio::time::timeout(STOP_TIMEOUT, self.child.wait()).await {
            Ok(status) => {
                let status = status?;
                if !status.success() {
                    eprintln!("bench: the gateway exited with {status} after SIGTERM");
                }
                Ok(())
            }
            Err(_) => {
                self.child.kill().await?;
                bail!("the gateway did not exit within {STOP_TIMEOUT:?} of SIGTERM")
            }
        }
    }
}

/// The config file: loopback, fixed tokens, one account pushing every type to the sink.
fn config_toml(addr: SocketAddr, settings: &Settings<'_>) -> Result<String> {
    let mut delivery = serde_json::json!({});
    if let Some(concurrency) = settings.delivery_concurrency {
        delivery["concurrency"] = concurrency.into();
    }
    if settings.hold_failures {
        delivery["retries_per_address"] = 0.into();
        delivery["recovery_schedule"] = serde_json::json!(["1h"]);
    }
    if settings.delivery_off {
        delivery["enabled"] = false.into();
    }
    if let Some(in_flight) = settings.in_flight_per_address {
        delivery["in_flight_per_address_max"] = in_flight.into();
    }
    let mut config = serde_json::json!({
        "listen": addr.to_string(),
        "data_dir": settings.data_dir.to_str().context("the temp dir is not UTF-8")?,
        "auth": { "intake_tokens": [INTAKE_TOKEN], "admin_tokens": [ADMIN_TOKEN] },
        "delivery": delivery,
        "security": { "allow_private_addresses": true },
        // Capacity, not policy, is measured: the default per-account intake limit (50,000
        // events/s after a burst of 100,000) would otherwise cap every run above 100,000
        // events at about that rate (the load client waits out each 429's Retry-After).
        "limits": {
            "intake_events_per_second": BENCH_INTAKE_LIMIT,
            "intake_burst_events": BENCH_INTAKE_LIMIT,
        },
        "log": { "level": "warn" },
        "accounts": [{
            "id": "default",
            "enabled": true,
            "addresses": settings.down_primary.into_iter().chain([settings.sink_url]).collect::<Vec<_>>(),
            "events": EVENT_TYPES,
        }],
    });
    if settings.hold_failures {
        // One WARN per failed event is the gateway's duty, and a million of them the log's.
        config["log"] = serde_json::json!({ "level": "error" });
    }
    if let Some(url) = settings.store_url {
        config["store"] = serde_json::json!({ "url": url });
    }
    if settings.metrics_off {
        config["metrics"] = serde_json::json!({ "enabled": false });
    }
    if let Some(file) = settings.plugin {
        config["plugins"] = super::plugin::config(file, settings.data_dir)?;
    }
    // The toml crate escapes paths and places tables after plain keys, as TOML requires.
    Ok(toml::to_string(&config)?)
}

/// The gateway's `/metrics` exposition text.
pub async fn metrics_text(client: &HttpClient, addr: SocketAddr) -> Result<String> {
    use http_body_util::BodyExt as _;
    let uri: hyper::Uri = format!("http://{addr}/metrics").parse()?;
    let response = client
        .request(Request::get(uri).body(Full::new(Bytes::new()))?)
        .await
        .context("cannot scrape the gateway's /metrics")?;
    let body = response.into_body().collect().await?.to_bytes();
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// Events the gateway at `addr` counts as accepted (`mailhook_intake_events_total`, every
/// type), from its `/metrics`.
pub async fn accepted_events(client: &HttpClient, addr: SocketAddr) -> Result<usize> {
    let text = metrics_text(client, addr).await?;
    let mut total = 0.0;
    for line in text.lines() {
        let series = line.split([' ', '{']).next().unwrap_or_default();
        if series == "mailhook_intake_events_total" {
            let value = line.rsplit_once(' ').map_or("", |(_, v)| v);
            total += value
                .parse::<f64>()
                .with_context(|| format!("a sample that is not a number in /metrics: {line}"))?;
        }
    }
    Ok(total as usize)
}

/// A port that was free a moment ago (the gateway binds it right after).
fn free_port() -> Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("cannot bind 127.0.0.1:0")?;
    Ok(listener.local_addr()?)
}

/// `VmHWM` of a `/proc/<pid>/status` file, in bytes.
pub fn rss_peak_bytes(status_path: &str) -> Result<u64> {
    let status = std::fs::read_to_string(status_path)
        .with_context(|| format!("cannot read {status_path}"))?;
    let kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .and_then(|kib| kib.trim().parse::<u64>().ok())
        .with_context(|| format!("no VmHWM line in {status_path}"))?;
    Ok(kib * 1024)
}

/// utime + stime of a `/proc/<pid>/stat` file, in seconds.
pub fn cpu_seconds(stat_path: &str) -> Result<f64> {
    let stat =
        std::fs::read_to_string(stat_path).with_context(|| format!("cannot read {stat_path}"))?;
    // The command name (field 2) is in parentheses and may hold spaces: count from after it.
    // utime and stime are fields 14 and 15, i.e. 12 and 13 after the name.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |n: usize| fields.get(n).and_then(|f| f.parse::<u64>().ok());
    match (ticks(11), ticks(12)) {
        (Some(utime), Some(stime)) => Ok((utime + stime) as f64 / CLOCK_TICKS_PER_S),
        _ => bail!("cannot read utime and stime from {stat_path}"),
    }
}

/// Bytes of the files under `dir` (the store's size after the run).
pub fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => dir_bytes(&entry.path()),
            Ok(meta) => meta.len(),
            Err(_) => 0,
        })
        .sum()
}
