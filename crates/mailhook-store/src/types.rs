//! The rows the store takes and gives back.

use std::sync::Arc;

use mailhook_core::chain::ChainPos;
use mailhook_core::settings::Role;
use mailhook_core::signature::Secret;
use mailhook_core::{Event, EventType, WebhookSettings};

/// An event to store, with its payload rendered once.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub event: Event,
    pub body: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InsertOutcome {
    pub accepted: usize,
    pub duplicates: usize,
    /// One per event, in request order (duplicates included).
    pub event_ids: Vec<String>,
    /// One per event: stored now (`false` for a duplicate).
    pub stored: Vec<bool>,
    /// One per event: the first open (or click) of its MsgId, decided inside the insert's
    /// transaction so it is exact however requests race. `false` for other types.
    pub unique: Vec<bool>,
}

impl InsertOutcome {
    /// An outcome with room for `events` events and none counted yet.
    pub fn with_capacity(events: usize) -> InsertOutcome {
        InsertOutcome {
            accepted: 0,
            duplicates: 0,
            event_ids: Vec::with_capacity(events),
            stored: Vec::with_capacity(events),
            unique: Vec::with_capacity(events),
        }
    }

    /// Counts the request's next event: stored now or a duplicate, and whether it is the
    /// first open (or click) of its MsgId.
    pub fn record(&mut self, event_id: &str, stored: bool, unique: bool) {
        if stored {
            self.accepted += 1;
        } else {
            self.duplicates += 1;
        }
        self.event_ids.push(event_id.to_owned());
        self.stored.push(stored);
        self.unique.push(stored && unique);
    }
}

/// Life states of an event, as the API shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventState {
    Pending,
    Delivered,
    Failed,
    Dead,
    Skipped,
}

impl EventState {
    pub fn as_str(self) -> &'static str {
        match self {
            EventState::Pending => "pending",
            EventState::Delivered => "delivered",
            EventState::Failed => "failed",
            EventState::Dead => "dead",
            EventState::Skipped => "skipped",
        }
    }

    /// Whether the event is at rest for good (`delivered` or `skipped`): retention may
    /// prune it. `failed` and `dead` events wait for replay and are kept.
    pub fn is_settled(self) -> bool {
        matches!(self, EventState::Delivered | EventState::Skipped)
    }

    pub const ALL: [EventState; 5] = [
        EventState::Pending,
        EventState::Delivered,
        EventState::Failed,
        EventState::Dead,
        EventState::Skipped,
    ];

    pub fn parse(text: &str) -> Option<EventState> {
        EventState::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

/// A claimed event, leased to the dispatcher that claimed it.
#[derive(Debug, Clone)]
pub struct Job {
    /// The store's own key for the event.
    pub id: i64,
    pub account: String,
    pub event_id: String,
    pub msg_id: String,
    pub event_type: EventType,
    pub test: bool,
    pub body: Arc<[u8]>,
    pub pos: ChainPos,
    /// Attempts made so far over the whole chain and every round.
    pub attempts: u32,
    pub accepted_at_ms: i64,
    /// Which claim of the event this is (it grows with every claim). A completion or a
    /// release carries it back, and the store ignores one whose claim is no longer the
    /// latest: a dispatcher whose lease ran out cannot overwrite the outcome of the one that
    /// took the event over.
    pub lease_token: i64,
}

impl Job {
    /// What `Store::release` needs to end this claim.
    pub fn lease(&self) -> Lease {
        Lease {
            id: self.id,
            token: self.lease_token,
        }
    }
}

/// One claim of one event: its store id and the claim's `Job::lease_token`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Lease {
    pub id: i64,
    pub token: i64,
}

/// One HTTP attempt (or plugin call) and what came of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptRecord {
    /// 1-based over the event's whole life.
    pub number: u32,
    pub role: Role,
    pub url: String,
    pub status: Option<u16>,
    pub error: Option<String>,
    pub duration_ms: u64,
    pub at_ms: i64,
}

/// What the dispatcher writes back for one claimed event.
#[derive(Debug, Clone)]
pub struct Completion {
    pub id: i64,
    /// The `Job::lease_token` of the claim this completes.
    pub lease_token: i64,
    pub state: EventState,
    pub pos: ChainPos,
    /// Next time the event is due (retry or recovery round); `None` when it is at rest.
    pub due_at_ms: Option<i64>,
    pub attempts: Vec<AttemptRecord>,
    /// For `failed`/`dead`: the last error; for `skipped`: the reason.
    pub detail: Option<String>,
    pub delivered_to: Option<Role>,
}

/// Settings as stored: what the account asked for plus its secrets.
#[derive(Debug, Clone)]
pub struct StoredSettings {
    pub settings: WebhookSettings,
    pub secret: Secret,
    /// The secret before the last rotation, and when it stops signing.
    pub previous_secret: Option<(Secret, i64)>,
    pub updated_at_ms: i64,
}

impl StoredSettings {
    /// The secrets that sign a push at `now_ms`: the current one, and the previous one
    /// while its grace period lasts.
    pub fn signing_secrets(&self, now_ms: i64) -> Vec<&Secret> {
        let mut secrets = vec![&self.secret];
        if let Some((previous, until_ms)) = &self.previous_secret
            && now_ms < *until_ms
        {
            secrets.push(previous);
        }
        secrets
    }
}

/// An event as the admin API shows it.
#[derive(Debug, Clone)]
pub struct EventRecord {
    pub event_id: String,
    pub account: String,
    pub msg_id: String,
    pub event_type: EventType,
    pub timestamp_ms: i64,
    pub accepted_at_ms: i64,
    pub test: bool,
    pub state: EventState,
    pub detail: Option<String>,
    pub delivered_to: Option<Role>,
    pub due_at_ms: Option<i64>,
    pub round: u32,
    pub attempts: Vec<AttemptRecord>,
}

/// How many events sit in each state, for one event type or for test pushes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StateCounts {
    pub pending: u64,
    pub delivered: u64,
    pub failed: u64,
    pub dead: u64,
    pub skipped: u64,
}

impl StateCounts {
    /// Every event counted, whatever its state: the events received.
    pub fn total(&self) -> u64 {
        self.pending + self.delivered + self.failed + self.dead + self.skipped
    }

    pub fn add(&mut self, state: EventState, count: u64) {
        let slot = match state {
            EventState::Pending => &mut self.pending,
            EventState::Delivered => &mut self.delivered,
            EventState::Failed => &mut self.failed,
            EventState::Dead => &mut self.dead,
            EventState::Skipped => &mut self.skipped,
        };
        *slot += count;
    }
}

/// Event counts of an account (or of every account) by type and state, as stored: the
/// console's overview. Test pushes are counted apart so they do not inflate real traffic.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Real events, one entry per type in `EventType::ALL` order (zeros included).
    pub by_type: Vec<(EventType, StateCounts)>,
    /// Test pushes ("Simulate Send Test"), every type together.
    pub tests: StateCounts,
}

impl Stats {
    /// Counts `count` events of `event_type` (a test push when `test`) in `state`.
    pub fn add(&mut self, event_type: EventType, test: bool, state: EventState, count: u64) {
        if self.by_type.is_empty() {
            self.by_type = EventType::ALL
                .into_iter()
                .map(|t| (t, StateCounts::default()))
                .collect();
        }
        if test {
            self.tests.add(state, count);
        } else if let Some((_, counts)) = self.by_type.iter_mut().find(|(t, _)| *t == event_type) {
            counts.add(state, count);
        }
    }
}

/// What waits in the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueStats {
    pub depth: u64,
    pub oldest_accepted_at_ms: Option<i64>,
}
