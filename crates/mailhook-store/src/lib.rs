//! Storage: the `Store` trait every backend implements, the embedded SQLite backend and the
//! PostgreSQL backend that several gateway nodes share.
//!
//! The store is the queue: an event is on disk before intake answers 202, its place in the
//! failover chain is written back after each step, and a claim is a lease that expires, so
//! a crash never loses work, it only delays it.
#![forbid(unsafe_code)]

mod error;
mod lanes;
pub mod postgres;
pub mod sqlite;
mod types;

pub use error::{Error, Result};
pub use types::*;

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use mailhook_core::bus::WorkBus;
use mailhook_core::signature::Secret;
use mailhook_core::{AccountId, Event, WebhookSettings};

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Stores a batch durably (committed and synced) before returning. Idempotent on
    /// `(account, event_id)`: an event already stored, or repeated within the batch, counts as
    /// a duplicate and is not stored again. Concurrent calls share transactions (group commit).
    async fn insert_events(&self, events: Vec<NewEvent>) -> Result<InsertOutcome>;

    /// Claims up to `limit` events whose `due_at <= now_ms` and leases them until
    /// `now_ms + lease_ms`: until then no other claim (from this node or another) returns
    /// them, and each returned `Job` carries a new `lease_token`.
    ///
    /// Two lanes share the batch, each oldest due first: first attempts (events never
    /// attempted) and the rest (retries after a backoff, recovery rounds, replays). The
    /// retry lane gets a quarter of `limit` (see `lanes::split`), the first-attempt lane the
    /// rest, and a lane with less due work leaves its share to the other. So a backlog of
    /// late retries never delays new events, and new events never starve retries. Jobs come
    /// back in insertion order.
    async fn claim_due(&self, now_ms: i64, limit: usize, lease_ms: i64) -> Result<Vec<Job>>;

    /// Writes back what the dispatcher did with claimed events: attempts made, new state and
    /// chain position, next due time. Ends their leases. A completion whose `lease_token`
    /// is not the event's latest claim (its lease ran out and the event was claimed again)
    /// is ignored, attempts included, and logged. Shared, so a caller that retries the write
    /// keeps the batch without copying it first.
    async fn complete(&self, completions: Arc<[Completion]>) -> Result<()>;

    /// Ends leases without any change (graceful shutdown): the events are due again at once.
    /// Leases that are no longer the latest claim, or already completed, are left alone.
    async fn release(&self, leases: Vec<Lease>) -> Result<()>;

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

    /// Deletes up to `batch_max` events that came to rest as `delivered` or `skipped` before
    /// `settled_before_ms`, with their attempts, oldest first; returns how many. `failed`,
    /// `dead` and `pending` events are never pruned. With a shared store only one node
    /// prunes at a time: the others return 0 at once.
    async fn prune(&self, settled_before_ms: i64, batch_max: usize) -> Result<usize>;

    /// Asks the store to ring `bus` when another writer (another gateway node sharing the
    /// store) adds or frees work, so this node's dispatcher wakes at once instead of at its
    /// next poll. The embedded store has no other writer: the default does nothing.
    fn subscribe_work(&self, bus: WorkBus) {
        let _ = bus;
    }

    /// Event counts by type and state, of one account or (`None`) of all. Meant to be
    /// cheap enough for a console that refreshes every few seconds (an index-only scan in
    /// SQLite). The default says the backend does not count yet.
    async fn stats(&self, account: Option<&AccountId>) -> Result<Stats> {
        let _ = account;
        Err(Error::Unsupported("event statistics".to_owned()))
    }

    /// Events waiting for delivery (pending, or failed with a recovery round due, in flight
    /// included) and the accept time of the oldest of them, for the queue gauges.
    async fn queue_stats(&self) -> Result<QueueStats>;

    /// The time of the `delivery` event of each of these MsgIds that has one (the earliest,
    /// if several), for the fast-click rule of machine detection.
    async fn delivery_times(
        &self,
        account: &AccountId,
        msg_ids: Vec<String>,
    ) -> Result<HashMap<String, i64>>;

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
