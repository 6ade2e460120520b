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

    pub fn parse(text: &str) -> Option<EventState> {
        [
            EventState::Pending,
            EventState::Delivered,
            EventState::Failed,
            EventState::Dead,
            EventState::Skipped,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
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
