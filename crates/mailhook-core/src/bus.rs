//! The in-process work bus: intake rings it after a commit, so an idle dispatcher wakes at
//! once instead of polling the store.

use std::sync::Arc;

use tokio::sync::Notify;

/// A cheap, cloneable doorbell. Rings coalesce: many commits wake the dispatcher once.
#[derive(Clone, Default)]
pub struct WorkBus {
    bell: Arc<Notify>,
}

impl WorkBus {
    pub fn new() -> WorkBus {
        WorkBus::default()
    }

    /// Says that new work may be due.
    pub fn ring(&self) {
        self.bell.notify_one();
    }

    /// Waits for the next ring (or one that came since the last wait).
    pub async fn rung(&self) {
        self.bell.notified().await;
    }
}
