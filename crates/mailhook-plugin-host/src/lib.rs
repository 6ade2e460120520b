//! The WASM plugin host: payload transforms and custom sinks (WIT package
//! `mailhook:plugin@0.1.0`, in `plugins/wit/`) run under wasmtime with hard limits.
//!
//! Each plugin file is compiled once (and cached on disk) into a pre-instantiated
//! component; every call gets a fresh store from the pooling allocator with a fuel budget,
//! an epoch deadline and a memory cap, on a plugin thread (never a tokio worker). A call
//! that traps, loops or exhausts its memory fails alone. Plugin files are polled and
//! reloaded when they change: the new version is swapped in behind an `Arc`, so calls in
//! flight finish on the old one.
#![forbid(unsafe_code)]

mod bindings;
pub mod config;
mod error;
mod pool;
mod runtime;
mod watch;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

pub use mailhook_metrics::PluginOutcome;
use mailhook_metrics::{Metrics, PluginMetrics};
use sha2::{Digest, Sha256};
use tokio::time::Instant;

pub use crate::config::{CallLimits, Kind, PluginSpec, PluginsConfig, Policy, TransformChain};
pub use crate::error::{Error, Result};
use crate::pool::Pool;
use crate::runtime::{CallContext, Loaded, Runtime, TransformReturn};

/// The event a plugin is called with.
#[derive(Debug, Clone)]
pub struct CallInput {
    pub account: String,
    pub event_type: String,
    pub event_id: String,
    pub msg_id: String,
    /// JSON text: mailhook's payload, or what earlier transforms made of it.
    pub payload: String,
}

/// What a transform decided, checked by the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transformed {
    /// Push this JSON text (valid JSON, within `plugins.output_bytes_max`).
    Payload(String),
    /// Do not push; the reason the plugin gave (may be empty).
    Drop(String),
}

/// An HTTP request a sink asked for, checked by the host (method, URL syntax, headers,
/// sizes); the delivery client makes it, through the SSRF guard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRequest {
    pub method: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// Why a plugin call gave no result; `outcome` is what the metrics count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallError {
    pub outcome: PluginOutcome,
    pub message: String,
}

impl CallError {
    pub fn new(outcome: PluginOutcome, message: impl Into<String>) -> CallError {
        CallError {
            outcome,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Where a plugin stands, for the logs, the tests and operators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginStatus {
    pub name: String,
    pub kind: Kind,
    /// The SHA-256 (hex) of the file in use; `None` when none could be loaded.
    pub loaded_sha256: Option<String>,
    /// Why the file could not be loaded (the last try).
    pub error: Option<String>,
    pub suspended: bool,
}

/// Methods a sink may ask for.
const METHODS: [&str; 5] = ["POST", "PUT", "PATCH", "GET", "DELETE"];
/// Headers the host sets or that would change how the request is framed.
const RESERVED_HEADERS: [&str; 5] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "user-agent",
];

/// The running plugin host of one gateway. Cheap to clone.
#[derive(Clone)]
pub struct PluginHost {
    inner: Arc<Inner>,
}

struct Inner {
    runtime: Runtime,
    pool: Pool,
    slots: HashMap<String, Arc<Slot>>,
    chains: HashMap<String, Vec<String>>,
    input_bytes_max: usize,
    output_bytes_max: usize,
    effects_max: usize,
    failures_before_suspend: u32,
    metrics: Arc<Metrics>,
    /// Compiled files by (content hash, kind): a file used by two plugins, or reloaded to
    /// content seen before, is not compiled again.
    compiled: Mutex<CompiledFiles>,
}

/// Compiled plugin files by (SHA-256 of the bytes, kind).
type CompiledFiles = HashMap<([u8; 32], Kind), Arc<Loaded>>;

/// One configured plugin: its settings and the version of its file in use.
struct Slot {
    name: Arc<str>,
    path: PathBuf,
    kind: Kind,
    policy: Policy,
    context: Arc<CallContext>,
    current: RwLock<Current>,
    /// The file's (mtime, length, inode) when last looked at, to see changes.
    stamp: Mutex<Option<watch::Stamp>>,
    failures: AtomicU32,
    suspended: AtomicBool,
    metrics: PluginMetrics,
}

#[derive(Clone)]
struct Current {
    loaded: Option<(Arc<Loaded>, [u8; 32])>,
    error: Option<String>,
}

impl PluginHost {
    /// Loads every configured plugin and starts the plugin threads, the epoch ticker and
    /// (unless `reload_poll` is 0) the file watcher. A plugin whose file cannot be loaded is
    /// logged at ERROR and its calls fail (`unavailable`) until the file is fixed: the
    /// gateway and the other plugins carry on.
    pub fn start(
        config: &PluginsConfig,
        cache_dir: Option<&Path>,
        metrics: Arc<Metrics>,
    ) -> Result<PluginHost> {
        config.validate().map_err(Error::Config)?;
        let memory_bytes_max = config
            .load
            .iter()
            .map(|spec| config.limits_of(spec).memory_bytes_max)
            .max()
            .unwrap_or(config.memory_bytes_max);
        let threads = config.threads as u32;
        let runtime = Runtime::new(threads, memory_bytes_max, cache_dir)?;
        let pool = Pool::start(config.threads, config.queue_max, runtime.engine.clone())?;
        let slots = config
            .load
            .iter()
            .map(|spec| {
                let name: Arc<str> = Arc::from(spec.name.as_str());
                let context = CallContext {
                    plugin: name.clone(),
                    config: Arc::from(serde_json::Value::Object(spec.config.clone()).to_string()),
                    limits: config.limits_of(spec),
                    log_lines_max: config.log_lines_max,
                    log_line_bytes_max: config.log_line_bytes_max,
                };
                let slot = Slot {
                    name,
                    path: config.path_of(spec),
                    kind: spec.kind,
                    policy: spec.policy,
                    context: Arc::new(context),
                    current: RwLock::new(Current {
                        loaded: None,
                        error: Some("not loaded yet".to_owned()),
                    }),
                    stamp: Mutex::new(None),
                    failures: AtomicU32::new(0),
                    suspended: AtomicBool::new(false),
                    metrics: metrics.plugin(&spec.name),
                };
                (spec.name.clone(), Arc::new(slot))
            })
            .collect();
        let chains = config
            .transforms
            .iter()
            .map(|chain| (chain.account.clone(), chain.chain.clone()))
            .collect();
        let inner = Arc::new(Inner {
            runtime,
            pool,
            slots,
            chains,
            input_bytes_max: config.input_bytes_max,
            output_bytes_max: config.output_bytes_max,
            effects_max: config.effects_max,
            failures_before_suspend: config.failures_before_suspend,
            metrics,
            compiled: Mutex::new(HashMap::new()),
        });
        for slot in inner.slots.values() {
            inner.refresh(slot, true);
        }
        if !config.reload_poll.is_zero() {
            watch::start(Arc::downgrade(&inner), config.reload_poll)?;
        }
        Ok(PluginHost { inner })
    }

    /// The transforms every event of `account` goes through, in order.
    pub fn chain(&self, account: &str) -> &[String] {
        self.inner
            .chains
            .get(account)
            .map_or(&[], |chain| chain.as_slice())
    }

    /// The failure policy of plugin `name` (`fail_closed` for an unknown name).
    pub fn policy(&self, name: &str) -> Policy {
        self.inner
            .slots
            .get(name)
            .map_or(Policy::FailClosed, |slot| slot.policy)
    }

    /// Where each plugin stands, by name.
    pub fn status(&self) -> Vec<PluginStatus> {
        let mut all: Vec<PluginStatus> = self
            .inner
            .slots
            .values()
            .map(|slot| {
                let current = read(&slot.current);
                PluginStatus {
                    name: slot.name.to_string(),
                    kind: slot.kind,
                    loaded_sha256: current.loaded.as_ref().map(|(_, hash)| hex(hash)),
                    error: current.error.clone(),
                    suspended: slot.suspended.load(Ordering::Relaxed),
                }
            })
            .collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// Looks at every plugin file now and reloads the changed ones (the watcher does this
    /// every `reload_poll`). Blocks while compiling: call it from a blocking context.
    pub fn reload_changed(&self) {
        for slot in self.inner.slots.values() {
            self.inner.refresh(slot, false);
        }
    }

    /// Runs transform `name` on `input`.
    pub async fn transform(&self, name: &str, input: CallInput) -> Result<Transformed, CallError> {
        let inner = &self.inner;
        let (slot, loaded) = inner.ready(name, Kind::Transform, &input)?;
        let context = slot.context.clone();
        let output_bytes_max = inner.output_bytes_max;
        let started = Instant::now();
        let (result, ran) = inner
            .pool
            .run(move |engine| {
                let began = Instant::now();
                let event = wit_event(input);
                let result = runtime::call_transform(engine, &loaded, &context, &event)
                    .and_then(|returned| check_transformed(returned, output_bytes_max));
                (result, began.elapsed())
            })
            .await
            .unwrap_or_else(|| (Err(pool_gone()), started.elapsed()));
        let outcome = match &result {
            Ok(Transformed::Payload(_)) => PluginOutcome::Ok,
            Ok(Transformed::Drop(_)) => PluginOutcome::Dropped,
            Err(err) => err.outcome,
        };
        inner.finish(&slot, outcome, ran, result.as_ref().err());
        result
    }

    /// Runs sink `name` on `input`: the HTTP requests to make (its log lines are written).
    pub async fn sink(&self, name: &str, input: CallInput) -> Result<Vec<HttpRequest>, CallError> {
        let inner = &self.inner;
        let (slot, loaded) = inner.ready(name, Kind::Sink, &input)?;
        let context = slot.context.clone();
        let (output_bytes_max, effects_max) = (inner.output_bytes_max, inner.effects_max);
        let started = Instant::now();
        let (result, ran) = inner
            .pool
            .run(move |engine| {
                let began = Instant::now();
                let event = wit_event(input);
                let result =
                    runtime::call_sink(engine, &loaded, &context, &event).and_then(|effects| {
                        check_effects(effects, &context, effects_max, output_bytes_max)
                    });
                (result, began.elapsed())
            })
            .await
            .unwrap_or_else(|| (Err(pool_gone()), started.elapsed()));
        let outcome = match &result {
            Ok(_) => PluginOutcome::Ok,
            Err(err) => err.outcome,
        };
        inner.finish(&slot, outcome, ran, result.as_ref().err());
        result
    }
}

impl Inner {
    /// The plugin and its loaded file, if it may be called now.
    fn ready(
        &self,
        name: &str,
        kind: Kind,
        input: &CallInput,
    ) -> Result<(Arc<Slot>, Arc<Loaded>), CallError> {
        let Some(slot) = self.slots.get(name).filter(|slot| slot.kind == kind) else {
            // Config validation makes this unreachable for chains and saved addresses, but
            // an address saved before a restart with another config may name anything.
            return Err(CallError::new(
                PluginOutcome::Unavailable,
                format!(
                    "no {} plugin named `{name}` is configured ([[plugins.load]])",
                    kind.as_str()
                ),
            ));
        };
        let refuse = |outcome: PluginOutcome, message: String| {
            slot.metrics.call(outcome, None);
            Err(CallError::new(outcome, message))
        };
        if slot.suspended.load(Ordering::Relaxed) {
            return refuse(
                PluginOutcome::Suspended,
                format!(
                    "plugin `{name}` is suspended after {} consecutive failures; replace or fix its file to resume it",
                    self.failures_before_suspend
                ),
            );
        }
        let current = read(&slot.current);
        let Some((loaded, _)) = current.loaded else {
            return refuse(
                PluginOutcome::Unavailable,
                format!(
                    "plugin `{name}` is not loaded: `{}`: {}",
                    slot.path.display(),
                    current.error.as_deref().unwrap_or("unknown error")
                ),
            );
        };
        if input.payload.len() > self.input_bytes_max {
            return refuse(
                PluginOutcome::TooLarge,
                format!(
                    "the payload is {} bytes; plugins get at most {} (plugins.input_bytes_max)",
                    input.payload.len(),
                    self.input_bytes_max
                ),
            );
        }
        Ok((slot.clone(), loaded))
    }

    /// Counts a call and suspends the plugin after too many failures in a row.
    fn finish(
        &self,
        slot: &Slot,
        outcome: PluginOutcome,
        ran: Duration,
        error: Option<&CallError>,
    ) {
        slot.metrics.call(outcome, Some(ran));
        if !outcome.is_failure() {
            slot.failures.store(0, Ordering::Relaxed);
            return;
        }
        let failures = slot.failures.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::debug!(plugin = %slot.name, outcome = outcome.label(), failures, error = error.map(|e| e.message.as_str()), "plugin call failed");
        if self.failures_before_suspend > 0
            && failures >= self.failures_before_suspend
            && !slot.suspended.swap(true, Ordering::Relaxed)
        {
            self.metrics.plugin_suspended(&slot.name);
            tracing::error!(
                plugin = %slot.name, failures, last_error = error.map(|e| e.message.as_str()),
                "plugin suspended after consecutive failures: its calls fail at once until its file is replaced"
            );
        }
    }

    /// Loads the plugin's file if it changed since last time (or `first`): compiles it
    /// (or reuses the compiled copy of the same bytes) and swaps it in. A file that cannot
    /// be loaded leaves the previous version in use.
    fn refresh(&self, slot: &Slot, first: bool) {
        let stamp = watch::Stamp::of(&slot.path);
        {
            let mut seen = lock(&slot.stamp);
            if !first && *seen == stamp {
                return;
            }
            *seen = stamp;
        }
        let had = read(&slot.current).loaded.clone();
        let loaded = std::fs::read(&slot.path)
            .map_err(|err| format!("cannot read the file: {err}"))
            .and_then(|bytes| {
                let hash: [u8; 32] = Sha256::digest(&bytes).into();
                if had.as_ref().is_some_and(|(_, old)| *old == hash) {
                    return Ok(None);
                }
                let cached = lock(&self.compiled).get(&(hash, slot.kind)).cloned();
                let loaded = match cached {
                    Some(loaded) => loaded,
                    None => {
                        let loaded = Arc::new(self.runtime.load(&bytes, slot.kind)?);
                        lock(&self.compiled).insert((hash, slot.kind), loaded.clone());
                        loaded
                    }
                };
                Ok(Some((loaded, hash)))
            });
        match loaded {
            Ok(None) => {}
            Ok(Some((loaded, hash))) => {
                *write(&slot.current) = Current {
                    loaded: Some((loaded, hash)),
                    error: None,
                };
                slot.failures.store(0, Ordering::Relaxed);
                let resumed = slot.suspended.swap(false, Ordering::Relaxed);
                if resumed {
                    self.metrics.plugin_resumed();
                }
                if first {
                    tracing::info!(plugin = %slot.name, kind = slot.kind.as_str(), file = %slot.path.display(), sha256 = %hex(&hash), "plugin loaded");
                } else {
                    self.metrics.plugin_reloaded(&slot.name, true);
                    tracing::info!(plugin = %slot.name, file = %slot.path.display(), sha256 = %hex(&hash), resumed, "plugin file changed: new version in use");
                }
                // Compiled copies no plugin uses any more are let go.
                lock(&self.compiled).retain(|_, loaded| Arc::strong_count(loaded) > 1);
            }
            Err(error) => {
                if !first {
                    self.metrics.plugin_reloaded(&slot.name, false);
                }
                let kept = had.is_some();
                tracing::error!(
                    plugin = %slot.name, file = %slot.path.display(), %error,
                    previous_version_kept = kept,
                    "plugin file cannot be loaded; {}",
                    if kept { "the previous version stays in use" } else { "its calls fail until the file is fixed" }
                );
                write(&slot.current).error = Some(error);
            }
        }
    }
}

fn wit_event(input: CallInput) -> bindings::types::Event {
    bindings::types::Event {
        account: input.account,
        event_type: input.event_type,
        event_id: input.event_id,
        msg_id: input.msg_id,
        payload: input.payload,
    }
}

fn check_transformed(
    returned: TransformReturn,
    output_bytes_max: usize,
) -> Result<Transformed, CallError> {
    match returned {
        TransformReturn::Drop(reason) => Ok(Transformed::Drop(cut(reason, 200))),
        TransformReturn::Payload(payload) if payload.len() > output_bytes_max => {
            Err(CallError::new(
                PluginOutcome::TooLarge,
                format!(
                    "the plugin returned a payload of {} bytes; at most {output_bytes_max} (plugins.output_bytes_max)",
                    payload.len()
                ),
            ))
        }
        TransformReturn::Payload(payload) => {
            match serde_json::from_str::<serde::de::IgnoredAny>(&payload) {
                Ok(_) => Ok(Transformed::Payload(payload)),
                Err(err) => Err(CallError::new(
                    PluginOutcome::Error,
                    format!("the plugin returned a payload that is not JSON: {err}"),
                )),
            }
        }
    }
}

/// Checks a sink's effects and writes its log lines; returns the requests to make.
fn check_effects(
    effects: Vec<bindings::types::Effect>,
    context: &CallContext,
    effects_max: usize,
    output_bytes_max: usize,
) -> Result<Vec<HttpRequest>, CallError> {
    use bindings::types::Effect;
    if effects.len() > effects_max {
        return Err(CallError::new(
            PluginOutcome::TooLarge,
            format!(
                "the plugin returned {} effects; at most {effects_max} (plugins.effects_max)",
                effects.len()
            ),
        ));
    }
    let body_bytes: usize = effects
        .iter()
        .map(|effect| match effect {
            Effect::Http(request) => request.body.len(),
            Effect::Log(_) => 0,
        })
        .sum();
    if body_bytes > output_bytes_max {
        return Err(CallError::new(
            PluginOutcome::TooLarge,
            format!(
                "the plugin's requests carry {body_bytes} bytes; at most {output_bytes_max} (plugins.output_bytes_max)"
            ),
        ));
    }
    let mut requests = Vec::new();
    let mut log = runtime::EffectLog::new(context);
    for effect in effects {
        match effect {
            Effect::Log((level, line)) => log.write(level, &line),
            Effect::Http(request) => requests.push(check_request(request)?),
        }
    }
    Ok(requests)
}

fn check_request(request: bindings::types::HttpRequest) -> Result<HttpRequest, CallError> {
    let bad = |message: String| Err(CallError::new(PluginOutcome::Error, message));
    let method = request.method.to_ascii_uppercase();
    if !METHODS.contains(&method.as_str()) {
        return bad(format!(
            "the plugin asked for method `{}`; allowed: {}",
            cut(request.method, 20),
            METHODS.join(", ")
        ));
    }
    match mailhook_core::WebhookUrl::parse(&request.url) {
        Ok(url) if url.plugin().is_none() => {}
        Ok(_) => return bad("a sink cannot send to another plugin".to_owned()),
        Err(message) => return bad(format!("the plugin asked for a bad URL: {message}")),
    }
    for (name, value) in &request.headers {
        let valid_name = !name.is_empty()
            && name.len() <= 128
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b));
        if !valid_name
            || value.len() > 4096
            || value.bytes().any(|b| b.is_ascii_control() && b != b'\t')
        {
            return bad(format!(
                "the plugin asked for an invalid header `{}`",
                cut(name.clone(), 64)
            ));
        }
        if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
            return bad(format!(
                "the plugin may not set the `{name}` header; the host sets it"
            ));
        }
    }
    Ok(HttpRequest {
        method,
        url: request.url,
        headers: request.headers,
        body: request.body,
    })
}

fn pool_gone() -> CallError {
    CallError::new(
        PluginOutcome::Error,
        "the call ended without a result: the plugin threads are stopping, or the host failed",
    )
}

fn cut(mut text: String, bytes_max: usize) -> String {
    if text.len() > bytes_max {
        let mut end = bytes_max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

// Every critical section below is a plain replace or lookup that cannot be left half done,
// so a poisoned lock still holds a consistent value.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn read<T: Clone>(lock: &RwLock<T>) -> T {
    lock.read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .clone()
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
