//! The dispatcher: claims due events in batches, runs each through the failover chain with
//! bounded concurrency, and writes every outcome back in batched completions.
//!
//! An event is worked on in memory only between two waits: an immediate move to the next
//! address happens in the same task, while a retry after a backoff is written back to the
//! store as `due_at`. So a restart resumes every event where it stood, and a long backoff
//! holds no memory.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use mailhook_core::AccountId;
use mailhook_core::breaker::{Breaker, BreakerPolicy, Transition};
use mailhook_core::bus::WorkBus;
use mailhook_core::chain::{ChainPos, Next, RetryPolicy, choose_address};
use mailhook_core::filter;
use mailhook_core::settings::Role;
use mailhook_core::signature::signature_header;
use mailhook_store::{AttemptRecord, Completion, EventState, Job, Lease, Store, StoredSettings};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;

use crate::address::{AddressTable, Admission};
use crate::client::{AttemptHeaders, AttemptKind, ClientOptions, HttpClient};
use crate::config::DeliveryConfig;
use crate::plugins::{self, Prepared};
use crate::resolve::GuardedResolver;
use crate::settings_cache::SettingsCache;
use crate::test_push::{SentAttempt, TestPushes};
use mailhook_metrics::{AttemptResult, Metrics, Outcome as Recorded};

/// Wall-clock Unix milliseconds: the time base of everything persisted.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Completions buffered before the tasks producing them wait.
const COMPLETIONS_QUEUED_MAX: usize = 4096;
/// Completions written in one store call.
const COMPLETIONS_PER_WRITE_MAX: usize = 1024;
/// How long a batch of completions is retried while the store is unavailable.
const COMPLETE_RETRY_FOR: Duration = Duration::from_secs(15);
/// Pause after a store error before the next claim, so a sick store is not hammered.
const STORE_ERROR_PAUSE: Duration = Duration::from_secs(1);

enum ToCompleter {
    Done(Completion),
    Flush(oneshot::Sender<()>),
}

struct Inner {
    store: Arc<dyn Store>,
    config: DeliveryConfig,
    retry: RetryPolicy,
    breaker_policy: BreakerPolicy,
    client: HttpClient,
    settings: Arc<SettingsCache>,
    bus: WorkBus,
    breakers: Mutex<HashMap<String, Breaker>>,
    /// Per-address in-flight slots and deferral pace (head-of-line isolation).
    address_slots: AddressTable,
    /// Claims being worked on, by event id, with their lease token (to release them).
    in_flight: Mutex<HashMap<i64, i64>>,
    tests: TestPushes,
    completions: mpsc::Sender<ToCompleter>,
    metrics: Arc<Metrics>,
    /// Transforms and sinks; `None` when no plugin is configured.
    plugins: Option<mailhook_plugin_host::PluginHost>,
}

/// The dispatcher's optional parts.
#[derive(Default)]
pub struct DispatcherExtras {
    /// The WASM plugin host: account transform chains and `plugin:<name>` sink addresses.
    pub plugins: Option<mailhook_plugin_host::PluginHost>,
}

/// A running dispatcher. `shutdown` stops it; dropping it leaves it running until the
/// runtime ends.
pub struct Dispatcher {
    inner: Arc<Inner>,
    stop: watch::Sender<bool>,
    run: tokio::task::JoinHandle<JoinSet<()>>,
    completer: tokio::task::JoinHandle<()>,
}

impl Dispatcher {
    /// Starts claiming. `resolver` carries the SSRF policy every connection is checked by;
    /// `tls` the roots and client certificate of `https` addresses (`tls::client_config`).
    // Each argument is a distinct, required collaborator wired once by the binary; the
    // optional ones live in `DispatcherExtras`.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        store: Arc<dyn Store>,
        config: DeliveryConfig,
        settings: Arc<SettingsCache>,
        bus: WorkBus,
        resolver: GuardedResolver,
        tls: Arc<rustls::ClientConfig>,
        metrics: Arc<Metrics>,
        extras: DispatcherExtras,
    ) -> Dispatcher {
        let (completions, completions_rx) = mpsc::channel(COMPLETIONS_QUEUED_MAX);
        let client = HttpClient::new(ClientOptions {
            connect_timeout: config.connect_timeout,
            attempt_timeout: config.attempt_timeout,
            response_bytes_max: config.response_bytes_max,
            idle_per_address_max: config.idle_connections_per_address_max,
            idle_timeout: config.idle_connection_timeout,
            resolver,
            tls,
        });
        let address_slots = AddressTable::new(config.in_flight_per_address_max);
        let inner = Arc::new(Inner {
            store,
            retry: config.retry_policy(),
            breaker_policy: config.breaker_policy(),
            config,
            client,
            settings,
            bus,
            breakers: Mutex::new(HashMap::new()),
            address_slots,
            in_flight: Mutex::new(HashMap::new()),
            tests: TestPushes::new(),
            completions,
            metrics,
            plugins: extras.plugins,
        });
        let (stop, stopped) = watch::channel(false);
        let completer = tokio::spawn(run_completer(
            inner.store.clone(),
            inner.bus.clone(),
            completions_rx,
        ));
        let run = tokio::spawn(run_claims(inner.clone(), stopped));
        Dispatcher {
            inner,
            stop,
            run,
            completer,
        }
    }

    /// The registry the API watches test pushes ("Simulate Send Test") through.
    pub fn test_pushes(&self) -> TestPushes {
        self.inner.tests.clone()
    }

    /// Whether the circuit of `url` is open now (for tests and the console).
    pub fn circuit_open(&self, url: &str) -> bool {
        lock(&self.inner.breakers)
            .get(url)
            .is_some_and(Breaker::is_open)
    }

    /// Stops claiming, lets in-flight deliveries finish for up to `grace`, then abandons the
    /// rest and releases them in the store (they are due again at once on the next start),
    /// and writes every outcome before returning.
    pub async fn shutdown(self, grace: Duration) {
        let _ = self.stop.send(true);
        let mut tasks = match self.run.await {
            Ok(tasks) => tasks,
            Err(err) => {
                tracing::error!(error = %err, "dispatcher loop ended abnormally");
                JoinSet::new()
            }
        };
        let finished =
            tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
        if finished.is_err() {
            tasks.shutdown().await;
        }
        let (flushed, flushed_rx) = oneshot::channel();
        if self
            .inner
            .completions
            .send(ToCompleter::Flush(flushed))
            .await
            .is_ok()
        {
            let _ = flushed_rx.await;
        }
        let abandoned: Vec<Lease> = lock(&self.inner.in_flight)
            .drain()
            .map(|(id, token)| Lease { id, token })
            .collect();
        if !abandoned.is_empty() {
            tracing::info!(
                events = abandoned.len(),
                "releasing deliveries still in flight at shutdown"
            );
            if let Err(err) = self.inner.store.release(abandoned).await {
                tracing::warn!(error = %err, "cannot release in-flight events; they are due again when their lease ends");
            }
        }
        drop(self.inner);
        self.completer.abort();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section here is a map update that cannot be left half done.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Claims due work while there is room, and sleeps until the next due time, a ring of the
/// bus, or `idle_poll`, whichever comes first. Returns the tasks still running at stop.
async fn run_claims(inner: Arc<Inner>, mut stopped: watch::Receiver<bool>) -> JoinSet<()> {
    let mut tasks = JoinSet::new();
    if !inner.config.enabled {
        tracing::info!(
            "delivery is off on this node (delivery.enabled = false): events are accepted and stored, and pushed by a node with delivery on"
        );
        while !*stopped.borrow() {
            if stopped.changed().await.is_err() {
                break;
            }
        }
        return tasks;
    }
    let lease_ms = inner.config.lease.as_millis() as i64;
    loop {
        while tasks.try_join_next().is_some() {}
        if *stopped.borrow() {
            return tasks;
        }
        let room = inner.config.concurrency.saturating_sub(tasks.len());
        // Below the refill mark, wait for more slots: a claim is a round trip to the store (a
        // write on PostgreSQL, a turn of the writer thread on SQLite), and claiming the one or
        // two slots each finished delivery frees would cost one per event.
        if room == 0 || (room < refill_mark(&inner.config) && !tasks.is_empty()) {
            tokio::select! {
                _ = tasks.join_next() => {}
                _ = stopped.changed() => {}
            }
            continue;
        }
        let asked = room.min(inner.config.claim_batch_max);
        let now = now_ms();
        let jobs = match inner.store.claim_due(now, asked, lease_ms).await {
            Ok(jobs) => jobs,
            Err(err) => {
                tracing::warn!(error = %err, "cannot claim due events; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(STORE_ERROR_PAUSE) => {}
                    _ = stopped.changed() => {}
                }
                continue;
            }
        };
        let claimed = jobs.len();
        for job in jobs {
            lock(&inner.in_flight).insert(job.id, job.lease_token);
            // Boxed: a task moves its whole future when it is spawned, finished and joined,
            // and this one holds every state of a chain's attempts (several KiB). Three
            // copies of that per event were ~1.3% of the gateway's CPU end to end (perf);
            // a box is one allocation and a pointer to move.
            tasks.spawn(Box::pin(deliver(inner.clone(), job)));
        }
        if claimed == asked {
            continue;
        }
        let wait = match inner.store.next_due_at().await {
            Ok(Some(due)) => {
                Duration::from_millis((due - now_ms()).max(0) as u64).min(inner.config.idle_poll)
            }
            Ok(None) => inner.config.idle_poll,
            Err(_) => STORE_ERROR_PAUSE,
        };
        if wait.is_zero() && claimed > 0 {
            continue;
        }
        tokio::select! {
            _ = inner.bus.rung() => {}
            _ = tokio::time::sleep(wait.max(Duration::from_millis(1))) => {}
            _ = stopped.changed() => {}
        }
    }
}

/// The fewest free slots worth a claim while deliveries run: a quarter of what one claim may
/// take, so a saturated dispatcher claims in batches, and an idle one (no task) claims at once.
fn refill_mark(config: &DeliveryConfig) -> usize {
    (config.concurrency.min(config.claim_batch_max) / 4).max(1)
}

/// Runs one claimed event as far as it goes now, then hands its completion to the writer.
async fn deliver(inner: Arc<Inner>, job: Job) {
    let id = job.id;
    let (test, accepted_at_ms) = (job.test, job.accepted_at_ms);
    let account = job.account.clone();
    let watched_test = job.test.then(|| job.event_id.clone());
    let completion = run_chain(&inner, job).await;
    let report = watched_test.map(|event_id| (event_id, completion.clone()));
    if !test {
        record_outcome(&inner.metrics, &account, accepted_at_ms, &completion);
    }
    if inner
        .completions
        .send(ToCompleter::Done(completion))
        .await
        .is_ok()
    {
        lock(&inner.in_flight).remove(&id);
    }
    if let Some((event_id, completion)) = report {
        // The waiting API request reads the event back as soon as it hears: let the
        // completion reach the store first, so what it reads agrees with what it heard.
        let (flushed, flushed_rx) = oneshot::channel();
        if inner
            .completions
            .send(ToCompleter::Flush(flushed))
            .await
            .is_ok()
        {
            let _ = flushed_rx.await;
        }
        inner.tests.completed(&account, &event_id, &completion);
    }
}

async fn run_chain(inner: &Inner, job: Job) -> Completion {
    let mut done = Completion {
        id: job.id,
        lease_token: job.lease_token,
        state: EventState::Pending,
        pos: job.pos,
        due_at_ms: None,
        attempts: Vec::new(),
        detail: None,
        delivered_to: None,
    };
    let settings = match AccountId::parse(&job.account) {
        Ok(account) => inner.settings.get(&account).await,
        Err(message) => {
            done.state = EventState::Dead;
            done.detail = Some(format!("stored account is invalid: {message}"));
            return done;
        }
    };
    let settings = match settings {
        Ok(settings) => settings,
        Err(err) => {
            tracing::warn!(error = %err, account = %job.account, "cannot read settings; will retry");
            done.due_at_ms = Some(now_ms() + STORE_ERROR_PAUSE.as_millis() as i64);
            return done;
        }
    };
    if let Err(reason) = filter::decide(
        settings.as_ref().map(|s| &s.settings),
        job.event_type,
        job.test,
    ) {
        tracing::debug!(account = %job.account, event_id = %job.event_id, reason = %reason.message(), "skipped");
        done.state = EventState::Skipped;
        done.detail = Some(reason.message());
        return done;
    }
    let Some(settings) = settings else {
        unreachable!("decide passes only with settings")
    };
    let addresses = settings.settings.addresses.len();
    let mut pos = job.pos;
    if pos.address >= addresses {
        // The account has fewer addresses than when this event last stood here.
        pos = ChainPos {
            address: addresses - 1,
            tries: 0,
            round: pos.round,
        };
    }
    // Transforms run at every dispatch, before signing: the signed body is the transformed
    // one, and a replay after a plugin fix runs the fixed plugin.
    let body = match plugins::transform(inner.plugins.as_ref(), &job).await {
        Prepared::Body(body) => body,
        Prepared::Dropped(reason) => {
            tracing::debug!(account = %job.account, event_id = %job.event_id, reason = %reason, "skipped");
            done.state = EventState::Skipped;
            done.detail = Some(reason);
            return done;
        }
        Prepared::Failed(error) => {
            // Not pushed, failed like a chain whose every address failed: recovery rounds
            // run it again (and the plugin with it), then it is dead, and replayable.
            done.detail = Some(error);
            let last = ChainPos {
                address: addresses - 1,
                tries: 0,
                round: pos.round,
            };
            match inner.retry.next_address(last, addresses) {
                Next::ChainFailed { pos: at, retry_in } => {
                    done.state = EventState::Failed;
                    done.pos = at;
                    done.due_at_ms = Some(now_ms() + retry_in.as_millis() as i64);
                }
                _ => {
                    done.state = EventState::Dead;
                    done.pos = pos;
                }
            }
            return done;
        }
    };
    let mut number = job.attempts;
    loop {
        let now = now_ms();
        let urls = &settings.settings.addresses;
        let chosen = {
            let mut breakers = lock(&inner.breakers);
            choose_address(pos.address, addresses, |i| {
                with_breaker(&mut breakers, urls[i].as_str(), |b| {
                    b.allow(&inner.breaker_policy, now)
                })
            })
        };
        let next = match chosen {
            None => inner.retry.next_address(
                ChainPos {
                    address: addresses - 1,
                    ..pos
                },
                addresses,
            ),
            Some(index) => {
                if index != pos.address {
                    // Skipped past open circuits.
                    inner.metrics.failover(pos.address);
                    pos = ChainPos {
                        address: index,
                        tries: 0,
                        round: pos.round,
                    };
                }
                // A saturated address does not keep this event (and its concurrency slot)
                // waiting: it goes back to the store, due when the address has room. Test
                // pushes wait instead: their caller is watching for the outcome.
                let slots = inner
                    .address_slots
                    .get(settings.settings.addresses[index].as_str());
                let _slot = match slots.admit(now_ms(), !job.test).await {
                    Admission::Go(slot) => slot,
                    Admission::Defer { until_ms } => {
                        inner.metrics.deferred(index);
                        tracing::debug!(account = %job.account, event_id = %job.event_id, address = Role::of_index(index).as_str(), "address saturated: deferred");
                        done.pos = pos;
                        done.due_at_ms = Some(until_ms);
                        return done;
                    }
                };
                number += 1;
                let record = attempt(inner, &job, &settings, index, number, body.clone()).await;
                slots.observed(Duration::from_millis(record.0.duration_ms));
                let outcome = record.1;
                done.detail = record.0.error.clone();
                done.attempts.push(record.0);
                inner.retry.after_attempt(pos, addresses, outcome)
            }
        };
        match next {
            Next::Delivered => {
                done.state = EventState::Delivered;
                done.delivered_to = Some(Role::of_index(pos.address));
                done.detail = None;
                done.pos = pos;
                return done;
            }
            Next::Attempt { pos: at, delay } if delay.is_zero() => {
                if at.address != pos.address {
                    inner.metrics.failover(pos.address);
                }
                pos = at;
            }
            Next::Attempt { pos: at, delay } => {
                done.pos = at;
                done.due_at_ms = Some(now_ms() + delay.as_millis() as i64);
                return done;
            }
            Next::ChainFailed { pos: at, retry_in } => {
                tracing::warn!(
                    account = %job.account, event_id = %job.event_id, round = pos.round,
                    error = done.detail.as_deref().unwrap_or("every address skipped"),
                    retry_in = %humantime_serde::re::humantime::format_duration(retry_in),
                    "every address failed; event is failed and will be retried"
                );
                done.state = EventState::Failed;
                done.pos = at;
                done.due_at_ms = Some(now_ms() + retry_in.as_millis() as i64);
                return done;
            }
            Next::Dead => {
                tracing::warn!(
                    account = %job.account, event_id = %job.event_id,
                    error = done.detail.as_deref().unwrap_or("every address skipped"),
                    "every address failed and no recovery round is left; event is dead (replayable)"
                );
                done.state = EventState::Dead;
                done.pos = pos;
                return done;
            }
        }
    }
}

/// Runs `f` on the circuit breaker of `url`. Looked up by `&str` first: the URL is copied
/// into the table once, not on every event (an allocation per event before), and the usual
/// case is one lookup.
fn with_breaker<R>(
    breakers: &mut HashMap<String, Breaker>,
    url: &str,
    f: impl FnOnce(&mut Breaker) -> R,
) -> R {
    match breakers.get_mut(url) {
        Some(breaker) => f(breaker),
        None => f(breakers.entry(url.to_owned()).or_default()),
    }
}

/// Counts where a dispatch left the event. Test pushes are left out: they would skew the
/// figures operators alert on.
fn record_outcome(metrics: &Metrics, account: &str, accepted_at_ms: i64, done: &Completion) {
    let (outcome, address) = match done.state {
        EventState::Delivered => {
            let latency = Duration::from_millis((now_ms() - accepted_at_ms).max(0) as u64);
            metrics.delivery_latency(latency);
            (Recorded::Delivered, done.delivered_to.map(role_index))
        }
        EventState::Failed => (Recorded::Failed, None),
        EventState::Dead => (Recorded::Dead, None),
        EventState::Skipped => (Recorded::Skipped, None),
        // Still on its way (a retry is scheduled): nothing to count yet.
        EventState::Pending => return,
    };
    metrics.outcome(account, outcome, address);
}

fn role_index(role: Role) -> usize {
    match role {
        Role::Primary => 0,
        Role::Backup1 => 1,
        Role::Backup2 => 2,
    }
}

fn attempt_label(kind: AttemptKind) -> AttemptResult {
    match kind {
        AttemptKind::Status(code) => AttemptResult::from_status(code),
        AttemptKind::Timeout => AttemptResult::Timeout,
        AttemptKind::Connect | AttemptKind::Other => AttemptResult::ConnectError,
        AttemptKind::Tls => AttemptResult::TlsError,
        AttemptKind::Blocked => AttemptResult::Blocked,
        AttemptKind::Plugin => AttemptResult::PluginError,
    }
}

/// One signed POST to address `index` (the caller holds one of the address's in-flight
/// slots); records the result in the address's circuit breaker.
async fn attempt(
    inner: &Inner,
    job: &Job,
    settings: &StoredSettings,
    index: usize,
    number: u32,
    body: Bytes,
) -> (AttemptRecord, mailhook_core::chain::Outcome) {
    let url = settings.settings.addresses[index].as_str();
    let role = Role::of_index(index);
    let at_ms = now_ms();
    let timestamp = at_ms / 1000;
    let headers = AttemptHeaders {
        webhook_id: job.event_id.clone(),
        webhook_timestamp: timestamp,
        webhook_signature: signature_header(
            settings.signing_secrets(at_ms),
            &job.event_id,
            timestamp,
            &body,
        ),
        attempt: number,
        address_role: role.as_str(),
    };
    // A test push reports the bytes it sent (a cheap clone: `Bytes` is shared).
    let sent_body = job.test.then(|| body.clone());
    let result = match settings.settings.addresses[index].plugin() {
        Some(sink) => {
            plugins::sink_attempt(inner.plugins.as_ref(), &inner.client, sink, job, &body).await
        }
        None => inner.client.post(url, body, &headers).await,
    };
    inner
        .metrics
        .attempt(index, attempt_label(result.kind), result.duration);
    let success = result.error.is_none();
    let transition = {
        let mut breakers = lock(&inner.breakers);
        with_breaker(&mut breakers, url, |b| {
            b.record(&inner.breaker_policy, success, now_ms())
        })
    };
    match transition {
        Some(Transition::Opened) => {
            inner.metrics.circuit_opened(index);
            tracing::warn!(account = %job.account, address = role.as_str(), "circuit opened: address skipped until it recovers")
        }
        Some(Transition::Closed) => {
            inner.metrics.circuit_closed(index);
            tracing::info!(account = %job.account, address = role.as_str(), "circuit closed: address recovered")
        }
        None => {}
    }
    tracing::debug!(
        account = %job.account, event_id = %job.event_id, address = role.as_str(), attempt = number,
        status = result.status, error = result.error.as_deref(), "attempt"
    );
    let record = AttemptRecord {
        number,
        role,
        url: url.to_owned(),
        status: result.status,
        error: result.error,
        duration_ms: result.duration.as_millis() as u64,
        at_ms,
    };
    if let Some(body) = sent_body {
        // A sink plugin gets the body, not HTTP headers: report none for it.
        let headers = match settings.settings.addresses[index].plugin() {
            Some(_) => Vec::new(),
            None => HttpClient::headers(&headers),
        };
        let sent = SentAttempt {
            record: record.clone(),
            headers,
            body,
        };
        inner.tests.attempted(&job.account, &job.event_id, sent);
    }
    (record, result.outcome)
}

/// Writes one batch of completions, retrying while the store is unavailable (a database
/// restarting, a connection being replaced) for up to `COMPLETE_RETRY_FOR`: an outcome
/// written late is better than a second delivery after the lease. Delivery tasks wait on the
/// full completion queue meanwhile (back-pressure), so nothing grows.
async fn complete_retrying(
    store: &dyn Store,
    batch: Vec<Completion>,
) -> mailhook_store::Result<()> {
    // Shared between tries: copying the batch for each one was a clone of every
    // completion's strings and attempts on every write, the first included.
    let batch: Arc<[Completion]> = batch.into();
    let deadline = tokio::time::Instant::now() + COMPLETE_RETRY_FOR;
    let mut pause = Duration::from_millis(50);
    loop {
        match store.complete(batch.clone()).await {
            Err(mailhook_store::Error::Unavailable(reason))
                if tokio::time::Instant::now() + pause < deadline =>
            {
                tracing::warn!(error = %reason, events = batch.len(), "cannot record delivery outcomes yet; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
            done => return done,
        }
    }
}

/// Writes completions in batches; rings the bus so retries that came due are seen at once.
async fn run_completer(store: Arc<dyn Store>, bus: WorkBus, mut rx: mpsc::Receiver<ToCompleter>) {
    let mut batch = Vec::new();
    let mut flushes = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(message) = next.take() {
            match message {
                ToCompleter::Done(completion) => batch.push(completion),
                ToCompleter::Flush(done) => flushes.push(done),
            }
            if batch.len() < COMPLETIONS_PER_WRITE_MAX {
                next = rx.try_recv().ok();
            }
        }
        if !batch.is_empty() {
            let rescheduled = batch.iter().any(|c| c.due_at_ms.is_some());
            let count = batch.len();
            if let Err(err) = complete_retrying(store.as_ref(), std::mem::take(&mut batch)).await {
                tracing::error!(
                    error = %err, events = count,
                    "cannot record delivery outcomes; these events will be delivered again when their lease ends"
                );
            } else if rescheduled {
                bus.ring();
            }
        }
        for done in flushes.drain(..) {
            let _ = done.send(());
        }
    }
}
