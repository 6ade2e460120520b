//! `cargo xtask chaos`: kill the gateway with `kill -9` at random moments while events flow,
//! restart it on the same data dir (and database), and check that every event it answered 202
//! for reached a receiver. Loopback only, bounded in events and time.
//!
//! The sender behaves like a mail system: events have fixed `event_id`s, and a batch that got
//! no 202 (the gateway was down, or died mid-request) is sent again until it does, so a batch
//! stored just before a kill comes back as duplicates, not as new events. Receivers record
//! every 2xx they answer. At the end: accepted (ids with a 202), delivered (accepted ids
//! answered 2xx at least once), lost (accepted, never delivered: must be 0), duplicates (2xx
//! answers beyond the first per id, which at-least-once allows) and the worst delay from the
//! 202 to the first 2xx.

pub(crate) mod sink;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;

use sink::{Behaviour, Sink, mix};

use crate::pgdb::TempDatabase;

/// The PostgreSQL server of chaos and soak runs (default: the local one).
pub(crate) const TEST_PG_ENV: &str = "MAILHOOK_TEST_PG";

const INTAKE_TOKEN: &str = "chaos-intake-token-0123456789";
const ADMIN_TOKEN: &str = "chaos-admin-token-0123456789";
const EVENT_TYPES: [&str; 6] = ["send", "delivery", "open", "click", "bounce", "complaint"];

/// Events per intake request.
const BATCH_MAX: usize = 20;
/// Intake requests in flight at once.
const SENDERS_MAX: usize = 8;
/// How often the sender looks at what is due.
const SEND_TICK: Duration = Duration::from_millis(50);
/// Pause before a batch that got no 202 is sent again.
const RESEND_PAUSE: Duration = Duration::from_millis(100);
/// One intake request's time limit.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// After the sending time, how long batches still not acknowledged keep being sent.
const SEND_GRACE: Duration = Duration::from_secs(60);
/// How long the gateway may take to answer `/healthz` after a (re)start.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long it may take to exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// Lost ids whose state is looked up and printed.
const LOST_SHOWN_MAX: usize = 10;

#[derive(clap::Args)]
pub struct Args {
    /// Events to send, at a steady rate over `--seconds`.
    #[arg(long, default_value_t = 2000)]
    events: usize,
    /// How long events are sent (and the gateway killed), in seconds.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// `kill -9` and restart cycles, at random moments within the sending time.
    #[arg(long, default_value_t = 10)]
    kills: usize,
    /// The store the gateway runs on: `sqlite` (a file in a temp dir) or `postgres` (a fresh
    /// database on `MAILHOOK_TEST_PG`, default postgres://postgres@127.0.0.1:5432).
    #[arg(long, value_enum, default_value_t = StoreKind::Sqlite)]
    store: StoreKind,
    /// Seed of the kill moments and the receivers' failures [default: from the clock].
    #[arg(long)]
    seed: Option<u64>,
    /// After sending, how long to wait for every accepted event to be delivered, in seconds.
    #[arg(long, default_value_t = 120)]
    drain_seconds: u64,
    /// Run the release build of the gateway instead of the debug one.
    #[arg(long)]
    release: bool,
}

impl Args {
    /// The test suite's run: 10 kills in 20 s, on SQLite or on PostgreSQL.
    pub fn short(postgres: bool) -> Args {
        Args {
            events: 600,
            seconds: 20,
            kills: 10,
            store: if postgres {
                StoreKind::Postgres
            } else {
                StoreKind::Sqlite
            },
            seed: None,
            drain_seconds: 120,
            release: false,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum StoreKind {
    Sqlite,
    Postgres,
}

impl StoreKind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            StoreKind::Sqlite => "sqlite",
            StoreKind::Postgres => "postgres",
        }
    }
}

pub fn run(root: &Path, args: Args) -> Result<()> {
    ensure!(
        (1..=1_000_000).contains(&args.events),
        "--events {} must be from 1 to 1000000",
        args.events
    );
    ensure!(
        (1..=86_400).contains(&args.seconds),
        "--seconds {} must be from 1 to 86400",
        args.seconds
    );
    ensure!(
        args.kills as u64 <= args.seconds * 2,
        "--kills {} is more than two a second over --seconds {}",
        args.kills,
        args.seconds
    );
    let bin = build(root, args.release)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let report = runtime.block_on(chaos(&args, &bin))?;
    report.print();
    if report.lost > 0 {
        bail!("{} accepted event(s) were never delivered", report.lost);
    }
    if report.accepted == 0 {
        bail!("no event was accepted: nothing was shown");
    }
    Ok(())
}

/// Builds the gateway binary (debug or release); its path.
pub(crate) fn build(root: &Path, release: bool) -> Result<PathBuf> {
    let mut build = crate::cargo(root);
    build.args(["build", "-p", "mailhook", "--bin", "mailhook"]);
    if release {
        build.arg("--release");
    }
    crate::run(&mut build)?;
    let profile = if release { "release" } else { "debug" };
    let bin = crate::target_dir(root)?.join(profile).join("mailhook");
    ensure!(
        bin.is_file(),
        "{} is missing after the build",
        bin.display()
    );
    Ok(bin)
}

/// What one run came to.
struct Report {
    store: StoreKind,
    seed: u64,
    events: usize,
    seconds: u64,
    kills: usize,
    restart_worst: Duration,
    down_total: Duration,
    accepted: usize,
    unacknowledged: usize,
    delivered: usize,
    lost: usize,
    duplicates: usize,
    delivered_unacknowledged: usize,
    delay_worst: Duration,
    delay_p50: Duration,
    delay_p99: Duration,
    requests: u64,
    drain: Duration,
}

impl Report {
    fn print(&self) {
        let s = |d: Duration| format!("{:.2} s", d.as_secs_f64());
        println!(
            "mailhook chaos ({}, seed {}): {} events over {} s, {} kill -9 and restart cycles \
             (worst restart {}, {} down in all)",
            self.store.name(),
            self.seed,
            self.events,
            self.seconds,
            self.kills,
            s(self.restart_worst),
            s(self.down_total)
        );
        println!(
            "  accepted     {:>8}   events with a 202 ({} never acknowledged)",
            self.accepted, self.unacknowledged
        );
        println!(
            "  delivered    {:>8}   accepted events answered 2xx by a receiver",
            self.delivered
        );
        println!(
            "  lost         {:>8}   accepted, never delivered (must be 0)",
            self.lost
        );
        println!(
            "  duplicates   {:>8}   2xx answers beyond the first per event ({} requests in all)",
            self.duplicates, self.requests
        );
        println!(
            "  worst delay  {:>10} from the 202 to the first 2xx (p50 {}, p99 {}); drained {} after sending",
            s(self.delay_worst),
            s(self.delay_p50),
            s(self.delay_p99),
            s(self.drain)
        );
        if self.delivered_unacknowledged > 0 {
            println!(
                "  also delivered: {} event(s) stored just before a kill whose 202 never arrived",
                self.delivered_unacknowledged
            );
        }
    }
}

async fn chaos(args: &Args, bin: &Path) -> Result<Report> {
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    let dir = tempfile::Builder::new()
        .prefix("mailhook-chaos-")
        .tempdir()
        .context("cannot create a temp dir")?;
    let database = match args.store {
        StoreKind::Sqlite => None,
        StoreKind::Postgres => Some(TempDatabase::create("chaos", TEST_PG_ENV).await?),
    };
    let primary = Sink::start(Behaviour::Flaky, seed).await?;
    let backup = Sink::start(Behaviour::Steady, seed).await?;
    let mut gateway = GatewayProcess::configure(
        bin,
        dir.path(),
        &[&primary.url, &backup.url],
        database.as_ref().map(|db| db.url.as_str()),
    )?;
    gateway.spawn().await?;
    eprintln!(
        "chaos: gateway on {} ({}), log {}",
        gateway.addr,
        args.store.name(),
        gateway.log_path.display()
    );

    let client = http_client();
    let started = Instant::now();
    let sending = Duration::from_secs(args.seconds);
    let accepted_at: Arc<Mutex<HashMap<usize, Instant>>> = Arc::default();
    let sender = tokio::spawn(send_all(
        client.clone(),
        gateway.addr,
        args.events,
        sending,
        accepted_at.clone(),
    ));
    let kill_at = kill_moments(seed, args.kills, sending);
    let mut restart_worst = Duration::ZERO;
    let mut down_total = Duration::ZERO;
    let mut killed = 0;
    for at in kill_at {
        tokio::time::sleep_until(started + at).await;
        let down = Instant::now();
        gateway
            .kill9()
            .await
            .with_context(|| format!("kill #{}", killed + 1))?;
        gateway.spawn().await.with_context(|| {
            format!(
                "the gateway did not come back after kill #{}; its log:\n{}",
                killed + 1,
                gateway.log_tail()
            )
        })?;
        let took = down.elapsed();
        restart_worst = restart_worst.max(took);
        down_total += took;
        killed += 1;
    }
    let unacknowledged = sender.await.context("the sender task failed")??;
    let sent_by = Instant::now();

    // Drain: every accepted event must reach a receiver.
    let accepted_at = std::mem::take(&mut *lock(&accepted_at));
    let deadline = Instant::now() + Duration::from_secs(args.drain_seconds);
    let delivered = loop {
        let delivered = merged(&primary, &backup);
        let missing = accepted_at
            .keys()
            .filter(|i| !delivered.contains_key(&event_id(**i)))
            .count();
        if missing == 0 || Instant::now() >= deadline {
            break delivered;
        }
        gateway.check_running()?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let drain = sent_by.elapsed();
    let mut lost: Vec<usize> = accepted_at
        .keys()
        .copied()
        .filter(|i| !delivered.contains_key(&event_id(*i)))
        .collect();
    lost.sort_unstable();
    for i in lost.iter().take(LOST_SHOWN_MAX) {
        let state = lookup(&client, gateway.addr, *i).await;
        eprintln!("chaos: lost {}: {state}", event_id(*i));
    }
    let mut delays: Vec<Duration> = accepted_at
        .iter()
        .filter_map(|(i, at)| {
            delivered
                .get(&event_id(*i))
                .map(|(first, _)| first.saturating_duration_since(*at))
        })
        .collect();
    delays.sort_unstable();
    let percentile = |p: f64| -> Duration {
        if delays.is_empty() {
            return Duration::ZERO;
        }
        let i = ((delays.len() - 1) as f64 * p).round() as usize;
        delays[i.min(delays.len() - 1)]
    };
    let duplicates = delivered
        .iter()
        .filter(|(id, _)| id.starts_with("chaos-"))
        .map(|(_, (_, count))| count - 1)
        .sum();
    let delivered_unacknowledged = delivered
        .keys()
        .filter_map(|id| id.strip_prefix("chaos-")?.parse::<usize>().ok())
        .filter(|i| !accepted_at.contains_key(i))
        .count();
    let code = gateway.terminate().await?;
    if code != Some(0) {
        eprintln!("chaos: the gateway exited with {code:?} after SIGTERM");
    }
    if let Some(database) = database {
        database.drop_database().await?;
    }
    Ok(Report {
        store: args.store,
        seed,
        events: args.events,
        seconds: args.seconds,
        kills: killed,
        restart_worst,
        down_total,
        accepted: accepted_at.len(),
        unacknowledged,
        delivered: accepted_at.len() - lost.len(),
        lost: lost.len(),
        duplicates,
        delivered_unacknowledged,
        delay_worst: delays.last().copied().unwrap_or_default(),
        delay_p50: percentile(0.5),
        delay_p99: percentile(0.99),
        requests: primary.deliveries.requests() + backup.deliveries.requests(),
        drain,
    })
}

fn event_id(i: usize) -> String {
    format!("chaos-{i}")
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Critical sections are single map updates.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Both receivers' 2xx answers by id: the first one's time, and how many in all.
pub(crate) fn merged(primary: &Sink, backup: &Sink) -> HashMap<String, (Instant, usize)> {
    let mut all = primary.deliveries.snapshot();
    for (id, (first, count)) in backup.deliveries.snapshot() {
        all.entry(id)
            .and_modify(|(f, c)| {
                *f = (*f).min(first);
                *c += count;
            })
            .or_insert((first, count));
    }
    all
}

/// `kills` moments within the middle 90% of `sending`, in order, at least 200 ms apart when
/// there is room, drawn from `seed`.
fn kill_moments(seed: u64, kills: usize, sending: Duration) -> Vec<Duration> {
    let span_ms = sending.as_millis() as u64;
    let (from, to) = (span_ms / 20, span_ms - span_ms / 20);
    let mut moments: Vec<u64> = (0..kills as u64)
        .map(|k| from + mix(seed ^ (k.wrapping_mul(0xA24B_AED4_963E_E407))) % (to - from).max(1))
        .collect();
    moments.sort_unstable();
    let gap = (span_ms / (kills as u64 * 4).max(1)).min(200);
    for i in 1..moments.len() {
        moments[i] = moments[i].max(moments[i - 1] + gap);
    }
    moments.into_iter().map(Duration::from_millis).collect()
}

pub(crate) type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub(crate) fn http_client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector)
}

/// Sends events `0..events` at a steady rate over `sending`, in batches; records when each got
/// its 202. Returns how many never got one.
pub(crate) async fn send_all(
    client: HttpClient,
    addr: SocketAddr,
    events: usize,
    sending: Duration,
    accepted_at: Arc<Mutex<HashMap<usize, Instant>>>,
) -> Result<usize> {
    let started = Instant::now();
    let give_up = started + sending + SEND_GRACE;
    let senders = Arc::new(Semaphore::new(SENDERS_MAX));
    let mut batches = JoinSet::new();
    let mut next = 0;
    let mut tick = tokio::time::interval(SEND_TICK);
    while next < events {
        tick.tick().await;
        let share = started.elapsed().as_secs_f64() / sending.as_secs_f64().max(1e-3);
        let due = ((share * events as f64).ceil() as usize).min(events);
        while next < due {
            let end = due.min(next + BATCH_MAX);
            let permit = senders.clone().acquire_owned().await?;
            let (client, accepted_at) = (client.clone(), accepted_at.clone());
            batches.spawn(async move {
                let _permit = permit;
                send_batch(&client, addr, next..end, &accepted_at, give_up).await
            });
            next = end;
        }
    }
    let mut unacknowledged = 0;
    while let Some(done) = batches.join_next().await {
        unacknowledged += done.context("a sender task failed")?;
    }
    Ok(unacknowledged)
}

/// Sends one batch until it gets a 202 or `give_up` passes; how many events went
/// unacknowledged.
async fn send_batch(
    client: &HttpClient,
    addr: SocketAddr,
    ids: std::ops::Range<usize>,
    accepted_at: &Mutex<HashMap<usize, Instant>>,
    give_up: Instant,
) -> usize {
    let events: Vec<serde_json::Value> = ids
        .clone()
        .map(|i| {
            serde_json::json!({
                "type": EVENT_TYPES[i % EVENT_TYPES.len()],
                "msg_id": format!("chaos-msg-{}", i / 3),
                "event_id": event_id(i),
                "status": {"chaos": i},
            })
        })
        .collect();
    let body = Bytes::from(serde_json::Value::Array(events).to_string());
    loop {
        let request = Request::post(format!("http://{addr}/v1/events"))
            .header("authorization", format!("Bearer {INTAKE_TOKEN}"))
            .header("content-type", "application/json")
            .body(Full::new(body.clone()));
        let Ok(request) = request else {
            return ids.len();
        };
        let answer = tokio::time::timeout(REQUEST_TIMEOUT, async {
            let response = client.request(request).await.ok()?;
            let status = response.status();
            let _ = response.into_body().collect().await.ok()?;
            Some(status)
        })
        .await;
        if let Ok(Some(StatusCode::ACCEPTED)) = answer {
            let now = Instant::now();
            let mut accepted = lock(accepted_at);
            for i in ids {
                accepted.entry(i).or_insert(now);
            }
            return 0;
        }
        if Instant::now() >= give_up {
            return ids.len();
        }
        tokio::time::sleep(RESEND_PAUSE).await;
    }
}

/// The event's state as the gateway reports it, for a lost event.
async fn lookup(client: &HttpClient, addr: SocketAddr, i: usize) -> String {
    let request = Request::get(format!("http://{addr}/v1/messages/chaos-msg-{}", i / 3))
        .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
        .body(Full::new(Bytes::new()));
    let Ok(request) = request else {
        return "cannot build the lookup".to_owned();
    };
    let answer = async {
        let response = client.request(request).await.ok()?;
        let body = response.into_body().collect().await.ok()?.to_bytes();
        let message: serde_json::Value = serde_json::from_slice(&body).ok()?;
        message["events"]
            .as_array()?
            .iter()
            .find(|e| e["event_id"] == event_id(i).as_str())
            .map(|e| e.to_string())
    };
    answer
        .await
        .unwrap_or_else(|| "not found by the gateway".to_owned())
}

/// The real binary on a config written once; killed and started again on the same files.
pub(crate) struct GatewayProcess {
    bin: PathBuf,
    config_path: PathBuf,
    log_path: PathBuf,
    pub(crate) addr: SocketAddr,
    child: Option<Child>,
    client: HttpClient,
}

impl GatewayProcess {
    pub(crate) fn configure(
        bin: &Path,
        dir: &Path,
        addresses: &[&str],
        store_url: Option<&str>,
    ) -> Result<GatewayProcess> {
        let addr = {
            let probe =
                std::net::TcpListener::bind("127.0.0.1:0").context("cannot bind 127.0.0.1:0")?;
            probe.local_addr()?
        };
        let data_dir = dir.join("data");
        let mut config = serde_json::json!({
            "listen": addr.to_string(),
            "data_dir": data_dir.to_str().context("the temp dir is not UTF-8")?,
            "auth": { "intake_tokens": [INTAKE_TOKEN], "admin_tokens": [ADMIN_TOKEN] },
            "delivery": {
                "retry_backoff": ["50ms", "200ms"],
                "attempt_timeout": "2s",
                "recovery_schedule": ["1s", "2s", "5s"],
                "idle_poll": "200ms",
            },
            "security": { "allow_private_addresses": true },
            "limits": { "intake_events_per_second": 1_000_000, "intake_burst_events": 1_000_000 },
            "log": { "level": "warn" },
            "accounts": [{
                "id": "default",
                "enabled": true,
                "addresses": addresses,
                "events": EVENT_TYPES,
            }],
        });
        if let Some(url) = store_url {
            config["store"] = serde_json::json!({ "url": url });
        }
        let config_path = dir.join("mailhook.toml");
        std::fs::write(&config_path, toml::to_string(&config)?)
            .with_context(|| format!("cannot write {}", config_path.display()))?;
        Ok(GatewayProcess {
            bin: bin.to_owned(),
            config_path,
            log_path: dir.join("gateway.log"),
            addr,
            child: None,
            client: http_client(),
        })
    }

    pub(crate) async fn spawn(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .with_context(|| format!("cannot open {}", self.log_path.display()))?;
        let mut command = Command::new(&self.bin);
        command.arg("--config").arg(&self.config_path).arg("serve");
        for name in crate::config_overriding_env() {
            command.env_remove(name);
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", self.bin.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let request = Request::get(format!("http://{}/healthz", self.addr))
                .body(Full::new(Bytes::new()))?;
            let answer =
                tokio::time::timeout(Duration::from_secs(1), self.client.request(request)).await;
            if let Ok(Ok(response)) = answer
                && response.status() == StatusCode::OK
            {
                return Ok(());
            }
            self.check_running()?;
            if Instant::now() >= deadline {
                bail!("the gateway did not answer /healthz within {START_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub(crate) fn pid(&self) -> Result<Pid> {
        let id = self
            .child
            .as_ref()
            .and_then(Child::id)
            .context("the gateway is not running")?;
        Ok(Pid::from_raw(
            i32::try_from(id).context("pid out of range")?,
        ))
    }

    pub(crate) fn check_running(&mut self) -> Result<()> {
        if let Some(child) = self.child.as_mut()
            && let Some(status) = child.try_wait()?
        {
            bail!(
                "the gateway exited unexpectedly with {status}; its log:\n{}",
                self.log_tail()
            );
        }
        Ok(())
    }

    async fn kill9(&mut self) -> Result<()> {
        kill(self.pid()?, Signal::SIGKILL).context("kill -9")?;
        if let Some(mut child) = self.child.take() {
            child.wait().await?;
        }
        Ok(())
    }

    pub(crate) async fn terminate(&mut self) -> Result<Option<i32>> {
        kill(self.pid()?, Signal::SIGTERM).context("SIGTERM")?;
        let mut child = self.child.take().context("the gateway is not running")?;
        match tokio::time::timeout(STOP_TIMEOUT, child.wait()).await {
            Ok(status) => Ok(status?.code()),
            Err(_) => {
                child.kill().await?;
                bail!("the gateway did not exit within {STOP_TIMEOUT:?} of SIGTERM")
            }
        }
    }

    /// The last lines of the gateway's log.
    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}
