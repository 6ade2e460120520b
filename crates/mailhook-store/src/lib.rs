//! Storage: the `Store` trait every backend implements, and the embedded SQLite backend.
//!
//! The store is the queue: an event is on disk before intake answers 202, its place in the
//! failover chain is written back after each step, and a claim is a lease that expires, so
//! a crash never loses work, it only delays it.
#![forbid(unsafe_code)]

mod error;
pub mod sqlite;
mod types;

pub use error::{Error, Result};
pub use types::*;

use async_trait::async_trait;
use mailhook_core::signature::Secret;
use mailhook_core::{AccountId, Event, WebhookSettings};

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Stores a batch durably (committed and synced) before returning. Idempotent on
    /// `(account, event_id)`: an event already stored, or repeated within the batch, counts as
    /// a duplicate and is not stored again. Concurrent calls share transactions (group commit).
    async fn insert_events(&self, events: Vec<NewEvent>) -> Result<InsertOutcome>;

    /// Claims up to `limit` events whose `due_at <= now_ms`, oldest due first, and leases them
    /// until `now_ms + lease_ms`: until then no other claim returns them.
    async fn claim_due(&self, now_ms: i64, limit: usize, lease_ms: i64) -> Result<Vec<Job>>;

    /// Writes back what the dispatcher did with claimed events: attempts made, new state and
    /// chain position, next due time. Ends their leases.
    async fn complete(&self, completions: Vec<Completion>) -> Result<()>;

    /// Ends leases without any change (graceful shutdown): the events are due again at once.
    async fn release(&self, ids: Vec<i64>) -> Result<()>;

    /// The earliest `due_at` of any event, leased or not, so the dispatcher knows how long
    /// it may sleep.
    async fn next_due_at(&self) -> Result<Option<i64>>;

    async fn get_settings(&self, account: &AccountId) -> Result<Option<StoredSettings>>;

    /// Saves settings; generates the account's secret (from `new_secret`) on the first save
    /// and keeps the existing one after.
    async fn put_settings(
        &self,
        account: &AccountId,
        settings: WebhookSettings,
        new_secret: Secret,
        now_ms: i64,
    ) -> Result<StoredSettings>;

    /// Makes `new_secret` current; the old one keeps signing until `grace_until_ms`.
    /// `None` when the account has never been saved.
    async fn rotate_secret(
        &self,
        account: &AccountId,
        new_secret: Secret,
        grace_until_ms: i64,
        now_ms: i64,
    ) -> Result<Option<StoredSettings>>;

    /// Every event of one email (one MsgId) of an account, oldest first, with attempts.
    async fn message(&self, account: &AccountId, msg_id: &str) -> Result<Vec<EventRecord>>;

    /// One event with its attempts.
    async fn event(&self, account: &AccountId, event_id: &str) -> Result<Option<EventRecord>>;

    /// `failed` and `dead` events of an account, most recent first.
    async fn failures(&self, account: &AccountId, limit: usize) -> Result<Vec<EventRecord>>;

    /// Queues failed and dead events again from the primary, with a fresh recovery schedule:
    /// the listed ones, or all of the account's when `event_ids` is `None`. Returns the
    /// event ids queued (ids that are not failed or dead are left alone).
    async fn replay(
        &self,
        account: &AccountId,
        event_ids: Option<Vec<String>>,
        now_ms: i64,
    ) -> Result<Vec<String>>;

    /// Is the store reachable and writable.
    async fn ping(&self) -> Result<()>;

    /// Flushes pending writes and closes. Calls after this fail with `Error::Closed`.
    async fn close(&self) -> Result<()>;
}

/// Convenience for callers that hold a validated event.
pub fn new_event(event: Event) -> NewEvent {
    let body = event.render_payload();
    NewEvent { event, body }
}
