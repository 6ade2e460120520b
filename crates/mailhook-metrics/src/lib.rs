//! Prometheus metrics: one registry per gateway, typed recording methods whose labels come
//! from small fixed sets (never a MsgId, an event id or a URL), and the text exposition.
//!
//! Handles are registered once through the `metrics` facade's `Recorder` and kept, so
//! recording is an atomic add, with no global recorder: two gateways in one process (as in
//! the tests) never mix their numbers. Per-account labels are opt-in and capped.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use mailhook_core::EventType;
use metrics::{Counter, Gauge, Histogram, Key, Label, Metadata, Recorder, Unit};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use serde::{Deserialize, Serialize};

/// The `[metrics]` config section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Record metrics and serve `GET /metrics`. Off: recording is a no-op and `/metrics` 404.
    pub enabled: bool,
    /// Bearer tokens a scraper must send to `GET /metrics`; empty: no token needed.
    pub tokens: Vec<String>,
    /// Add an `account` label to intake and delivery counters.
    pub per_account: bool,
    /// Accounts labelled by name at most; the rest are folded into `account="other"`.
    pub accounts_max: usize,
}

impl Default for MetricsConfig {
    fn default() -> MetricsConfig {
        MetricsConfig {
            enabled: true,
            tokens: Vec::new(),
            per_account: false,
            accounts_max: 100,
        }
    }
}

/// Why an intake request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    Invalid,
    TooLarge,
    UnsupportedMediaType,
    Unauthorized,
    RateLimited,
    Unavailable,
    Timeout,
}

impl Rejected {
    const ALL: [Rejected; 7] = [
        Rejected::Invalid,
        Rejected::TooLarge,
        Rejected::UnsupportedMediaType,
        Rejected::Unauthorized,
        Rejected::RateLimited,
        Rejected::Unavailable,
        Rejected::Timeout,
    ];

    fn label(self) -> &'static str {
        match self {
            Rejected::Invalid => "invalid",
            Rejected::TooLarge => "too_large",
            Rejected::UnsupportedMediaType => "unsupported_media_type",
            Rejected::Unauthorized => "unauthorized",
            Rejected::RateLimited => "rate_limited",
            Rejected::Unavailable => "unavailable",
            Rejected::Timeout => "timeout",
        }
    }

    /// The reason for an HTTP status intake answered with.
    pub fn from_status(status: u16) -> Rejected {
        match status {
            401 | 403 => Rejected::Unauthorized,
            408 => Rejected::Timeout,
            413 | 431 => Rejected::TooLarge,
            415 => Rejected::UnsupportedMediaType,
            429 => Rejected::RateLimited,
            500..=599 => Rejected::Unavailable,
            _ => Rejected::Invalid,
        }
    }
}

/// What one delivery attempt came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptResult {
    Status2xx,
    Status3xx,
    Status4xx,
    Status5xx,
    Timeout,
    ConnectError,
    TlsError,
    Blocked,
    /// A sink plugin failed (or is suspended or not loaded) before any request was made.
    PluginError,
}

impl AttemptResult {
    const ALL: [AttemptResult; 9] = [
        AttemptResult::Status2xx,
        AttemptResult::Status3xx,
        AttemptResult::Status4xx,
        AttemptResult::Status5xx,
        AttemptResult::Timeout,
        AttemptResult::ConnectError,
        AttemptResult::TlsError,
        AttemptResult::Blocked,
        AttemptResult::PluginError,
    ];

    fn label(self) -> &'static str {
        match self {
            AttemptResult::Status2xx => "2xx",
            AttemptResult::Status3xx => "3xx",
            AttemptResult::Status4xx => "4xx",
            AttemptResult::Status5xx => "5xx",
            AttemptResult::Timeout => "timeout",
            AttemptResult::ConnectError => "connect_error",
            AttemptResult::TlsError => "tls_error",
            AttemptResult::Blocked => "blocked",
            AttemptResult::PluginError => "plugin_error",
        }
    }

    pub fn from_status(status: u16) -> AttemptResult {
        match status {
            200..=299 => AttemptResult::Status2xx,
            300..=399 => AttemptResult::Status3xx,
            400..=499 => AttemptResult::Status4xx,
            _ => AttemptResult::Status5xx,
        }
    }
}

/// How one plugin call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PluginOutcome {
    /// A transform returned a payload, or a sink its effects.
    Ok,
    /// A transform dropped the event.
    Dropped,
    /// The plugin returned an error, or something the host refused (not JSON, bad effect).
    Error,
    Trap,
    Timeout,
    OutOfFuel,
    OutOfMemory,
    /// The input or the output was over its size limit.
    TooLarge,
    /// Not called: the plugin is suspended after consecutive failures.
    Suspended,
    /// Not called: the plugin's file could not be loaded (missing, broken, forbidden imports).
    Unavailable,
}

impl PluginOutcome {
    pub const ALL: [PluginOutcome; 10] = [
        PluginOutcome::Ok,
        PluginOutcome::Dropped,
        PluginOutcome::Error,
        PluginOutcome::Trap,
        PluginOutcome::Timeout,
        PluginOutcome::OutOfFuel,
        PluginOutcome::OutOfMemory,
        PluginOutcome::TooLarge,
        PluginOutcome::Suspended,
        PluginOutcome::Unavailable,
    ];

    pub fn label(self) -> &'static str {
        match self {
            PluginOutcome::Ok => "ok",
            PluginOutcome::Dropped => "dropped",
            PluginOutcome::Error => "error",
            PluginOutcome::Trap => "trap",
            PluginOutcome::Timeout => "timeout",
            PluginOutcome::OutOfFuel => "out_of_fuel",
            PluginOutcome::OutOfMemory => "out_of_memory",
            PluginOutcome::TooLarge => "too_large",
            PluginOutcome::Suspended => "suspended",
            PluginOutcome::Unavailable => "unavailable",
        }
    }

    /// Whether the call ran and failed: what counts towards suspending a plugin.
    pub fn is_failure(self) -> bool {
        !matches!(
            self,
            PluginOutcome::Ok
                | PluginOutcome::Dropped
                | PluginOutcome::Suspended
                | PluginOutcome::Unavailable
        )
    }
}

/// Seconds buckets for plugin calls: 10 us to 1 s (a call is typically tens of us).
const PLUGIN_SECONDS_BUCKETS: [f64; 16] = [
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0,
];

/// Where an event ended up after a dispatch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    Failed,
    Dead,
    Skipped,
}

/// One counter per outcome and address role (three roles, and `none`).
const OUTCOME_SLOTS: usize = 4 * 4;

impl Outcome {
    fn index(self) -> usize {
        match self {
            Outcome::Delivered => 0,
            Outcome::Failed => 1,
            Outcome::Dead => 2,
            Outcome::Skipped => 3,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::Failed => "failed",
            Outcome::Dead => "dead",
            Outcome::Skipped => "skipped",
        }
    }
}

/// Address roles as label values (`backup_1`, not the header's `backup-1`: Prometheus users
/// write these in PromQL).
const ROLES: [&str; 3] = ["primary", "backup_1", "backup_2"];

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section here is a map or array update that cannot be left half done.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn role_label(index: usize) -> &'static str {
    ROLES[index.min(2)]
}

/// Seconds buckets for attempt and end-to-end latency: 1 ms to 10 min.
const SECONDS_BUCKETS: [f64; 18] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0, 600.0,
];

/// The metrics of one gateway. With `enabled = false` every method does nothing.
pub struct Metrics {
    inner: Option<Inner>,
}

struct Inner {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    per_account: bool,
    accounts_max: usize,
    labelled_accounts: Mutex<HashMap<String, ()>>,
    /// `mailhook_deliveries_total` counters already registered: a delivery finds its counter
    /// here instead of building a key (labels, hashing, the registry's lock) per event, which
    /// perf put at ~2% of the gateway's CPU. Without account labels.
    outcomes: Mutex<[Option<Counter>; OUTCOME_SLOTS]>,
    /// The same for each account labelled as itself (at most `accounts_max`; accounts past
    /// the cap are counted as `other` through the slow path, so no name grows this).
    account_outcomes: Mutex<HashMap<Box<str>, [Option<Counter>; OUTCOME_SLOTS]>>,
    intake_events: Vec<Counter>,
    intake_rejected: Vec<Counter>,
    intake_duplicates: Counter,
    intake_duration: Histogram,
    attempts: Vec<Counter>,
    attempt_duration: Vec<Histogram>,
    failovers: Vec<Counter>,
    deferrals: Vec<Counter>,
    replays: Counter,
    circuit_opened: Vec<Counter>,
    circuit_closed: Vec<Counter>,
    circuits_open: Gauge,
    delivery_latency: Histogram,
    queue_depth: Gauge,
    queue_oldest_age: Gauge,
}

const META: Metadata<'static> =
    Metadata::new("mailhook", metrics::Level::INFO, Some("mailhook_metrics"));

impl Metrics {
    pub fn new(config: &MetricsConfig) -> Metrics {
        if !config.enabled {
            return Metrics { inner: None };
        }
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), &SECONDS_BUCKETS)
            .and_then(|builder| {
                // A full match wins over the suffix one.
                builder.set_buckets_for_metric(
                    Matcher::Full("mailhook_plugin_call_duration_seconds".to_owned()),
                    &PLUGIN_SECONDS_BUCKETS,
                )
            })
            .unwrap_or_else(|_| unreachable!("the bucket lists are not empty"))
            .build_recorder();
        let handle = recorder.handle();
        describe(&recorder);
        let counter = |name: &'static str, labels: Vec<Label>| {
            recorder.register_counter(&Key::from_parts(name, labels), &META)
        };
        let histogram = |name: &'static str, labels: Vec<Label>| {
            recorder.register_histogram(&Key::from_parts(name, labels), &META)
        };
        let gauge = |name: &'static str| recorder.register_gauge(&Key::from_name(name), &META);
        let intake_events = EventType::ALL
            .iter()
            .map(|t| {
                counter(
                    "mailhook_intake_events_total",
                    vec![Label::new("type", t.as_str())],
                )
            })
            .collect();
        let intake_rejected = Rejected::ALL
            .iter()
            .map(|r| {
                counter(
                    "mailhook_intake_rejected_requests_total",
                    vec![Label::new("reason", r.label())],
                )
            })
            .collect();
        let attempts = ROLES
            .iter()
            .flat_map(|role| {
                AttemptResult::ALL.iter().map(|result| {
                    counter(
                        "mailhook_delivery_attempts_total",
                        vec![
                            Label::new("address", *role),
                            Label::new("result", result.label()),
                        ],
                    )
                })
            })
            .collect::<Vec<_>>();
        let by_role = |name: &'static str| {
            ROLES
                .iter()
                .map(|r| counter(name, vec![Label::new("address", *r)]))
                .collect::<Vec<_>>()
        };
        let inner = Inner {
            intake_events,
            intake_rejected,
            intake_duplicates: counter("mailhook_intake_duplicates_total", vec![]),
            intake_duration: histogram("mailhook_intake_request_duration_seconds", vec![]),
            attempts,
            attempt_duration: ROLES
                .iter()
                .map(|r| {
                    histogram(
                        "mailhook_delivery_attempt_duration_seconds",
                        vec![Label::new("address", *r)],
                    )
                })
                .collect(),
            failovers: by_role("mailhook_delivery_failovers_total"),
            deferrals: by_role("mailhook_delivery_deferrals_total"),
            replays: counter("mailhook_replayed_events_total", vec![]),
            circuit_opened: ROLES
                .iter()
                .map(|r| {
                    counter(
                        "mailhook_circuit_transitions_total",
                        vec![Label::new("address", *r), Label::new("to", "open")],
                    )
                })
                .collect(),
            circuit_closed: ROLES
                .iter()
                .map(|r| {
                    counter(
                        "mailhook_circuit_transitions_total",
                        vec![Label::new("address", *r), Label::new("to", "closed")],
                    )
                })
                .collect(),
            circuits_open: gauge("mailhook_circuits_open"),
            delivery_latency: histogram("mailhook_delivery_latency_seconds", vec![]),
            queue_depth: gauge("mailhook_queue_depth_events"),
            queue_oldest_age: gauge("mailhook_queue_oldest_age_seconds"),
            per_account: config.per_account,
            accounts_max: config.accounts_max,
            labelled_accounts: Mutex::new(HashMap::new()),
            outcomes: Mutex::new([const { None }; OUTCOME_SLOTS]),
            account_outcomes: Mutex::new(HashMap::new()),
            recorder,
            handle,
        };
        // Outcomes and engagement are registered up front too, so every series exists (at 0)
        // from the first scrape: rate() and alerts then work without a warm-up.
        for outcome in [
            Outcome::Delivered,
            Outcome::Failed,
            Outcome::Dead,
            Outcome::Skipped,
        ] {
            for role in ROLES.iter().copied().chain(["none"]) {
                if (outcome == Outcome::Delivered) != (role == "none") {
                    inner.outcome_counter(None, outcome, role).increment(0);
                }
            }
        }
        for t in [EventType::Open, EventType::Click] {
            inner.engagement_counter(t, None).increment(0);
            inner.unique_counter(t).increment(0);
        }
        Metrics { inner: Some(inner) }
    }

    pub fn enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> Option<String> {
        let inner = self.inner.as_ref()?;
        inner.handle.run_upkeep();
        Some(inner.handle.render())
    }

    pub fn intake_request(&self, duration: Duration, rejected: Option<Rejected>) {
        let Some(inner) = &self.inner else { return };
        inner.intake_duration.record(duration.as_secs_f64());
        if let Some(reason) = rejected {
            let i = Rejected::ALL.iter().position(|r| *r == reason).unwrap_or(0);
            inner.intake_rejected[i].increment(1);
        }
    }

    /// Events stored by intake (duplicates not included).
    pub fn intake_event(&self, account: &str, event_type: EventType) {
        let Some(inner) = &self.inner else { return };
        match inner.account_label(account) {
            None => inner.intake_events[type_index(event_type)].increment(1),
            Some(account) => inner
                .recorder
                .register_counter(
                    &Key::from_parts(
                        "mailhook_intake_events_total",
                        vec![
                            Label::new("type", event_type.as_str()),
                            Label::new("account", account),
                        ],
                    ),
                    &META,
                )
                .increment(1),
        }
    }

    pub fn intake_duplicates(&self, count: usize) {
        if let Some(inner) = &self.inner {
            inner.intake_duplicates.increment(count as u64);
        }
    }

    pub fn attempt(&self, address: usize, result: AttemptResult, duration: Duration) {
        let Some(inner) = &self.inner else { return };
        let r = AttemptResult::ALL
            .iter()
            .position(|x| *x == result)
            .unwrap_or(0);
        inner.attempts[address.min(2) * AttemptResult::ALL.len() + r].increment(1);
        inner.attempt_duration[address.min(2)].record(duration.as_secs_f64());
    }

    /// Where an event stands after a dispatch; `address` is the index that took it when
    /// delivered.
    pub fn outcome(&self, account: &str, outcome: Outcome, address: Option<usize>) {
        let Some(inner) = &self.inner else { return };
        inner
            .cached_outcome_counter(account, outcome, address)
            .increment(1);
    }

    /// The chain moved on from address `from` to the next one.
    pub fn failover(&self, from: usize) {
        if let Some(inner) = &self.inner {
            inner.failovers[from.min(2)].increment(1);
        }
    }

    /// An event went back to the store, due later, because address `address` had no slot
    /// free soon (head-of-line isolation): each one costs a store write and a second claim.
    pub fn deferred(&self, address: usize) {
        if let Some(inner) = &self.inner {
            inner.deferrals[address.min(2)].increment(1);
        }
    }

    pub fn replayed(&self, count: usize) {
        if let Some(inner) = &self.inner {
            inner.replays.increment(count as u64);
        }
    }

    pub fn circuit_opened(&self, address: usize) {
        if let Some(inner) = &self.inner {
            inner.circuit_opened[address.min(2)].increment(1);
            inner.circuits_open.increment(1.0);
        }
    }

    pub fn circuit_closed(&self, address: usize) {
        if let Some(inner) = &self.inner {
            inner.circuit_closed[address.min(2)].increment(1);
            inner.circuits_open.decrement(1.0);
        }
    }

    /// Time from intake's 202 to the receiver's 2xx.
    pub fn delivery_latency(&self, latency: Duration) {
        if let Some(inner) = &self.inner {
            inner.delivery_latency.record(latency.as_secs_f64());
        }
    }

    pub fn queue(&self, depth: u64, oldest_age: Duration) {
        if let Some(inner) = &self.inner {
            inner.queue_depth.set(depth as f64);
            inner.queue_oldest_age.set(oldest_age.as_secs_f64());
        }
    }

    /// An open or click accepted at intake, human or machine (with the rule that said so),
    /// and whether it was the first of its kind for its MsgId.
    pub fn engagement(&self, event_type: EventType, machine_reason: Option<&str>, unique: bool) {
        let Some(inner) = &self.inner else { return };
        inner
            .engagement_counter(event_type, machine_reason)
            .increment(1);
        if unique {
            inner.unique_counter(event_type).increment(1);
        }
    }
}

/// One plugin's call metrics (`Metrics::plugin`): counters by outcome and the latency of
/// the calls that ran. No-ops when metrics are off.
pub struct PluginMetrics {
    calls: [Counter; PluginOutcome::ALL.len()],
    duration: Histogram,
}

impl PluginMetrics {
    /// One call and how it ended; `duration` is the time it ran (`None`: not run).
    pub fn call(&self, outcome: PluginOutcome, duration: Option<Duration>) {
        self.calls[outcome as usize].increment(1);
        if let Some(duration) = duration {
            self.duration.record(duration.as_secs_f64());
        }
    }
}

/// Plugin metrics. Plugin names come from the config, so they are a small bounded set.
impl Metrics {
    /// The call metrics of `plugin`, registered now, so every outcome series exists (at 0)
    /// from the first scrape. The plugin host keeps them with the plugin: a call then
    /// records with two atomic adds instead of building two keys (labels, hashing, the
    /// registry's lock) every time.
    pub fn plugin(&self, plugin: &str) -> PluginMetrics {
        let Some(inner) = &self.inner else {
            return PluginMetrics {
                calls: std::array::from_fn(|_| Counter::noop()),
                duration: Histogram::noop(),
            };
        };
        inner
            .plugin_counter("mailhook_plugin_suspensions_total", plugin)
            .increment(0);
        let calls = PluginOutcome::ALL.map(|outcome| {
            let counter = inner.recorder.register_counter(
                &Key::from_parts(
                    "mailhook_plugin_calls_total",
                    vec![
                        Label::new("plugin", plugin.to_owned()),
                        Label::new("outcome", outcome.label()),
                    ],
                ),
                &META,
            );
            counter.increment(0);
            counter
        });
        let duration = inner.recorder.register_histogram(
            &Key::from_parts(
                "mailhook_plugin_call_duration_seconds",
                vec![Label::new("plugin", plugin.to_owned())],
            ),
            &META,
        );
        PluginMetrics { calls, duration }
    }

    /// `plugin` was suspended after consecutive failures.
    pub fn plugin_suspended(&self, plugin: &str) {
        let Some(inner) = &self.inner else { return };
        inner
            .plugin_counter("mailhook_plugin_suspensions_total", plugin)
            .increment(1);
        inner
            .recorder
            .register_gauge(&Key::from_name("mailhook_plugins_suspended"), &META)
            .increment(1.0);
    }

    /// A suspended plugin was resumed (its file changed and loaded).
    pub fn plugin_resumed(&self) {
        let Some(inner) = &self.inner else { return };
        inner
            .recorder
            .register_gauge(&Key::from_name("mailhook_plugins_suspended"), &META)
            .decrement(1.0);
    }

    /// `plugin`'s file changed and was loaded (`ok`) or could not be (the old one stays).
    pub fn plugin_reloaded(&self, plugin: &str, ok: bool) {
        let Some(inner) = &self.inner else { return };
        inner
            .recorder
            .register_counter(
                &Key::from_parts(
                    "mailhook_plugin_reloads_total",
                    vec![
                        Label::new("plugin", plugin.to_owned()),
                        Label::new("result", if ok { "ok" } else { "error" }),
                    ],
                ),
                &META,
            )
            .increment(1);
    }
}

impl Inner {
    fn plugin_counter(&self, name: &'static str, plugin: &str) -> Counter {
        self.recorder.register_counter(
            &Key::from_parts(name, vec![Label::new("plugin", plugin.to_owned())]),
            &META,
        )
    }

    /// The `account` label value: `None` when per-account labels are off; the account's own
    /// name for the first `accounts_max` accounts seen, `other` after.
    fn account_label(&self, account: &str) -> Option<String> {
        if !self.per_account {
            return None;
        }
        let mut seen = self
            .labelled_accounts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if seen.contains_key(account) {
            return Some(account.to_owned());
        }
        if seen.len() < self.accounts_max {
            seen.insert(account.to_owned(), ());
            return Some(account.to_owned());
        }
        Some("other".to_owned())
    }

    /// The counter `outcome_counter` registers for this delivery, from the caches.
    fn cached_outcome_counter(
        &self,
        account: &str,
        outcome: Outcome,
        address: Option<usize>,
    ) -> Counter {
        let slot = outcome.index() * 4 + address.map_or(3, |a| a.min(2));
        let role = address.map(role_label).unwrap_or("none");
        if !self.per_account {
            let mut outcomes = lock(&self.outcomes);
            return outcomes[slot]
                .get_or_insert_with(|| self.outcome_counter(None, outcome, role))
                .clone();
        }
        if let Some(slots) = lock(&self.account_outcomes).get_mut(account)
            && let Some(counter) = &slots[slot]
        {
            return counter.clone();
        }
        let label = self.account_label(account);
        let counter = self.outcome_counter(label.as_deref(), outcome, role);
        if label.as_deref() == Some(account) {
            lock(&self.account_outcomes)
                .entry(account.into())
                .or_insert([const { None }; OUTCOME_SLOTS])[slot] = Some(counter.clone());
        }
        counter
    }

    fn outcome_counter(
        &self,
        account: Option<&str>,
        outcome: Outcome,
        role: &'static str,
    ) -> Counter {
        let mut labels = vec![
            Label::new("outcome", outcome.label()),
            Label::new("address", role),
        ];
        if let Some(account) = account {
            labels.push(Label::new("account", account.to_owned()));
        }
        self.recorder
            .register_counter(&Key::from_parts("mailhook_deliveries_total", labels), &META)
    }

    fn engagement_counter(&self, event_type: EventType, machine_reason: Option<&str>) -> Counter {
        let labels = vec![
            Label::new("type", event_type.as_str()),
            Label::new(
                "kind",
                if machine_reason.is_some() {
                    "machine"
                } else {
                    "human"
                },
            ),
            Label::new("reason", machine_reason.unwrap_or("none").to_owned()),
        ];
        self.recorder.register_counter(
            &Key::from_parts("mailhook_engagement_events_total", labels),
            &META,
        )
    }

    fn unique_counter(&self, event_type: EventType) -> Counter {
        self.recorder.register_counter(
            &Key::from_parts(
                "mailhook_engagement_unique_total",
                vec![Label::new("type", event_type.as_str())],
            ),
            &META,
        )
    }
}

fn type_index(event_type: EventType) -> usize {
    EventType::ALL
        .iter()
        .position(|t| *t == event_type)
        .unwrap_or(0)
}

fn describe(recorder: &PrometheusRecorder) {
    let counters: [(&'static str, &'static str); 11] = [
        (
            "mailhook_intake_events_total",
            "Events stored by intake, by type (duplicates not included).",
        ),
        (
            "mailhook_intake_rejected_requests_total",
            "Intake requests refused, by reason.",
        ),
        (
            "mailhook_intake_duplicates_total",
            "Events ignored at intake because their (account, event_id) was stored already.",
        ),
        (
            "mailhook_delivery_attempts_total",
            "Delivery attempts by address role and result.",
        ),
        (
            "mailhook_deliveries_total",
            "Dispatch outcomes: delivered (by the role that took it), failed (recovery scheduled), dead, skipped.",
        ),
        (
            "mailhook_delivery_failovers_total",
            "Moves from an address to the next one in the chain, by the address left.",
        ),
        (
            "mailhook_delivery_deferrals_total",
            "Events put back in the store, due later, because their address had no slot free soon (in_flight_per_address_max), by address role.",
        ),
        (
            "mailhook_replayed_events_total",
            "Failed or dead events queued again by replay.",
        ),
        (
            "mailhook_circuit_transitions_total",
            "Circuit breaker state changes by address role.",
        ),
        (
            "mailhook_engagement_events_total",
            "Opens and clicks by kind (human, machine) and machine-detection reason.",
        ),
        (
            "mailhook_engagement_unique_total",
            "First open or click of a MsgId (exact, decided by the store).",
        ),
    ];
    for (name, help) in counters {
        recorder.describe_counter(name.into(), None, help.into());
    }
    let plugin_counters: [(&'static str, &'static str); 3] = [
        (
            "mailhook_plugin_calls_total",
            "WASM plugin calls by plugin and outcome (ok, dropped, error, trap, timeout, out_of_fuel, out_of_memory, too_large, suspended, unavailable).",
        ),
        (
            "mailhook_plugin_suspensions_total",
            "Plugins suspended after plugins.failures_before_suspend consecutive failures.",
        ),
        (
            "mailhook_plugin_reloads_total",
            "Plugin files reloaded after a change, by result (ok, error: the previous version stays).",
        ),
    ];
    for (name, help) in plugin_counters {
        recorder.describe_counter(name.into(), None, help.into());
    }
    recorder.describe_histogram(
        "mailhook_plugin_call_duration_seconds".into(),
        Some(Unit::Seconds),
        "Time one plugin call ran, instantiation included, by plugin.".into(),
    );
    recorder.describe_gauge(
        "mailhook_plugins_suspended".into(),
        None,
        "Plugins suspended now.".into(),
    );
    let histograms: [(&'static str, &'static str); 3] = [
        (
            "mailhook_intake_request_duration_seconds",
            "Time to answer an intake request, durable commit included.",
        ),
        (
            "mailhook_delivery_attempt_duration_seconds",
            "Duration of one delivery attempt, by address role.",
        ),
        (
            "mailhook_delivery_latency_seconds",
            "Time from intake's 202 to the receiver's 2xx.",
        ),
    ];
    for (name, help) in histograms {
        recorder.describe_histogram(name.into(), Some(Unit::Seconds), help.into());
    }
    recorder.describe_gauge(
        "mailhook_circuits_open".into(),
        None,
        "Addresses whose circuit is open now.".into(),
    );
    recorder.describe_gauge(
        "mailhook_queue_depth_events".into(),
        None,
        "Events waiting for delivery (pending or failed with a recovery round due).".into(),
    );
    recorder.describe_gauge(
        "mailhook_queue_oldest_age_seconds".into(),
        Some(Unit::Seconds),
        "Age of the oldest event waiting for delivery.".into(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_what_it_is_told_and_caps_account_labels() {
        let metrics = Metrics::new(&MetricsConfig {
            per_account: true,
            accounts_max: 1,
            ..MetricsConfig::default()
        });
        metrics.intake_event("a", EventType::Open);
        metrics.intake_event("b", EventType::Open);
        metrics.intake_event("c", EventType::Open);
        metrics.attempt(1, AttemptResult::Status5xx, Duration::from_millis(3));
        metrics.engagement(EventType::Open, Some("apple_mpp"), true);
        let text = metrics.render().unwrap();
        assert!(
            text.contains(r#"mailhook_intake_events_total{type="open",account="a"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"mailhook_intake_events_total{type="open",account="other"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"mailhook_delivery_attempts_total{address="backup_1",result="5xx"} 1"#),
            "{text}"
        );
        assert!(text.contains(
            r#"mailhook_engagement_events_total{type="open",kind="machine",reason="apple_mpp"} 1"#
        ));
        assert!(text.contains(r#"mailhook_engagement_unique_total{type="open"} 1"#));
        assert!(
            text.contains("mailhook_delivery_attempt_duration_seconds_bucket"),
            "histograms, not summaries"
        );
    }

    #[test]
    fn plugin_calls_count_each_outcome_on_its_own_series() {
        let metrics = Metrics::new(&MetricsConfig::default());
        let plugin = metrics.plugin("p");
        for (n, outcome) in PluginOutcome::ALL.into_iter().enumerate() {
            for _ in 0..=n {
                plugin.call(outcome, Some(Duration::from_micros(20)));
            }
        }
        let text = metrics.render().unwrap();
        for (n, outcome) in PluginOutcome::ALL.into_iter().enumerate() {
            let series = format!(
                r#"mailhook_plugin_calls_total{{plugin="p",outcome="{}"}} {}"#,
                outcome.label(),
                n + 1
            );
            assert!(text.contains(&series), "{series} in\n{text}");
        }
        let calls: usize = (1..=PluginOutcome::ALL.len()).sum();
        assert!(
            text.contains(&format!(
                r#"mailhook_plugin_call_duration_seconds_count{{plugin="p"}} {calls}"#
            )),
            "{text}"
        );
        assert!(text.contains(r#"mailhook_plugin_suspensions_total{plugin="p"} 0"#));

        let off = Metrics::new(&MetricsConfig {
            enabled: false,
            ..MetricsConfig::default()
        });
        off.plugin("p").call(PluginOutcome::Ok, None);
    }

    #[test]
    fn delivery_outcomes_count_every_call_per_label_set_with_and_without_account_labels() {
        let plain = Metrics::new(&MetricsConfig::default());
        for _ in 0..3 {
            plain.outcome("a", Outcome::Delivered, Some(1));
        }
        plain.outcome("b", Outcome::Dead, None);
        let text = plain.render().unwrap();
        assert!(
            text.contains(r#"mailhook_deliveries_total{outcome="delivered",address="backup_1"} 3"#),
            "{text}"
        );
        assert!(
            text.contains(r#"mailhook_deliveries_total{outcome="dead",address="none"} 1"#),
            "{text}"
        );

        let labelled = Metrics::new(&MetricsConfig {
            per_account: true,
            accounts_max: 1,
            ..MetricsConfig::default()
        });
        for account in ["a", "a", "b", "c", "a", "b"] {
            labelled.outcome(account, Outcome::Delivered, Some(0));
        }
        let text = labelled.render().unwrap();
        assert!(
            text.contains(
                r#"mailhook_deliveries_total{outcome="delivered",address="primary",account="a"} 3"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"mailhook_deliveries_total{outcome="delivered",address="primary",account="other"} 3"#
            ),
            "past the cap, every account is `other`: {text}"
        );
    }

    #[test]
    fn disabled_records_nothing() {
        let metrics = Metrics::new(&MetricsConfig {
            enabled: false,
            ..MetricsConfig::default()
        });
        metrics.intake_event("a", EventType::Open);
        assert!(metrics.render().is_none());
    }
}
