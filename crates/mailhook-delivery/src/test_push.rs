//! Waiters for test pushes (the console's "Simulate Send Test"): the API registers the event
//! before storing it, the dispatcher reports each attempt and the outcome, and the API's
//! request wakes on each report instead of polling the store.
//!
//! Why a registry and not a 50 ms poll of `Store::event`: the request wakes the moment the
//! chain settles, costs no store reads while it waits (a wait can last up to a minute), and
//! sees what the store never keeps: the exact headers of each attempt, and attempts made
//! before a backoff whose completion is not written yet (what a timed-out answer shows).
//! It only sees what this node's dispatcher does, so with a store shared by several nodes
//! the API still reads the event back now and then (see `mailhook-server`'s test handler).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use mailhook_core::settings::Role;
use mailhook_store::{AttemptRecord, Completion, EventState};
use tokio::sync::watch;

/// Test pushes watched at once; more are refused (the API answers 429), so a client cannot
/// grow the registry without bound.
pub const TEST_WATCHES_MAX: usize = 64;

/// One attempt of a test push, with the headers it was sent with.
#[derive(Debug, Clone)]
pub struct SentAttempt {
    pub record: AttemptRecord,
    /// Name and value of every header sent, in order.
    pub headers: Vec<(String, String)>,
    /// The body sent: the payload exactly as the receiver got it.
    pub body: Bytes,
}

/// Where a test push stands, as far as this node's dispatcher knows.
#[derive(Debug, Clone, Default)]
pub struct TestProgress {
    pub attempts: Vec<SentAttempt>,
    /// Set when the chain came to rest for now: delivered, failed (every address failed),
    /// dead or skipped. `None` while it is pending, including while it waits out a backoff.
    pub settled: Option<Settled>,
    /// When a pending push is tried next (after a backoff), in Unix milliseconds.
    pub next_attempt_at_ms: Option<i64>,
}

/// The outcome of a chain run that came to rest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settled {
    pub state: EventState,
    pub delivered_to: Option<Role>,
    /// The last error (failed, dead) or the reason it was skipped.
    pub detail: Option<String>,
}

/// Too many test pushes are being watched already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooManyWatches;

type Key = (String, String);

/// The registry, shared by the dispatcher and the API. Cheap to clone.
#[derive(Clone, Default)]
pub struct TestPushes {
    watches: Arc<Mutex<HashMap<Key, watch::Sender<TestProgress>>>>,
}

impl TestPushes {
    pub fn new() -> TestPushes {
        TestPushes::default()
    }

    /// Starts watching `event_id` of `account`. Call it before the event is stored, so no
    /// report can come before the watch. Dropping the `TestWatch` ends it.
    pub fn watch(&self, account: &str, event_id: &str) -> Result<TestWatch, TooManyWatches> {
        let key = (account.to_owned(), event_id.to_owned());
        let mut watches = lock(&self.watches);
        if watches.len() >= TEST_WATCHES_MAX {
            return Err(TooManyWatches);
        }
        let (sender, receiver) = watch::channel(TestProgress::default());
        watches.insert(key.clone(), sender);
        Ok(TestWatch {
            owner: self.clone(),
            key,
            receiver,
        })
    }

    /// Records one attempt of a watched push; a push nobody watches is left alone.
    pub(crate) fn attempted(&self, account: &str, event_id: &str, attempt: SentAttempt) {
        self.update(account, event_id, |progress| {
            progress.attempts.push(attempt);
            progress.next_attempt_at_ms = None;
        });
    }

    /// Records where a chain run left a watched push, once its completion is in the store.
    pub(crate) fn completed(&self, account: &str, event_id: &str, completion: &Completion) {
        self.update(account, event_id, |progress| {
            if completion.state == EventState::Pending {
                progress.next_attempt_at_ms = completion.due_at_ms;
            } else {
                progress.settled = Some(Settled {
                    state: completion.state,
                    delivered_to: completion.delivered_to,
                    detail: completion.detail.clone(),
                });
            }
        });
    }

    fn update(&self, account: &str, event_id: &str, change: impl FnOnce(&mut TestProgress)) {
        let watches = lock(&self.watches);
        // Keyed by owned strings; a lookup by borrowed parts would need a second map type,
        // and test pushes are rare enough that two small allocations do not matter.
        if let Some(sender) = watches.get(&(account.to_owned(), event_id.to_owned())) {
            sender.send_modify(change);
        }
    }

    /// Test pushes being watched now.
    pub fn watching(&self) -> usize {
        lock(&self.watches).len()
    }
}

/// A watch on one test push. Dropping it unregisters the push.
pub struct TestWatch {
    owner: TestPushes,
    key: Key,
    receiver: watch::Receiver<TestProgress>,
}

impl TestWatch {
    /// Waits for the next report (attempt or outcome). Returns at once when one came since
    /// the last `progress`.
    pub async fn changed(&mut self) {
        // The sender lives in the registry until this watch drops, so this only fails if
        // the registry was dropped; then nothing will ever report and waiting is pointless.
        if self.receiver.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// What is known now; marks it seen.
    pub fn progress(&mut self) -> TestProgress {
        self.receiver.borrow_and_update().clone()
    }
}

impl Drop for TestWatch {
    fn drop(&mut self) {
        lock(&self.owner.watches).remove(&self.key);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Each critical section is one map operation that cannot be left half done.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use mailhook_core::chain::ChainPos;

    fn attempt(number: u32) -> SentAttempt {
        SentAttempt {
            record: AttemptRecord {
                number,
                role: Role::Primary,
                url: "http://127.0.0.1:1/hook".to_owned(),
                status: Some(503),
                error: Some("503".to_owned()),
                duration_ms: 1,
                at_ms: 1,
            },
            headers: vec![("webhook-id".to_owned(), "e1".to_owned())],
            body: Bytes::from_static(b"{}"),
        }
    }

    fn completion(state: EventState, due_at_ms: Option<i64>) -> Completion {
        Completion {
            id: 1,
            lease_token: 1,
            state,
            pos: ChainPos::default(),
            due_at_ms,
            attempts: Vec::new(),
            detail: None,
            delivered_to: (state == EventState::Delivered).then_some(Role::Backup1),
        }
    }

    #[tokio::test]
    async fn a_watch_sees_attempts_then_the_outcome_and_unregisters_on_drop() {
        let pushes = TestPushes::new();
        let mut watch = pushes.watch("acme", "e1").unwrap();
        pushes.attempted("acme", "other", attempt(9));
        pushes.attempted("acme", "e1", attempt(1));
        watch.changed().await;
        assert_eq!(watch.progress().attempts.len(), 1);

        pushes.completed("acme", "e1", &completion(EventState::Pending, Some(77)));
        watch.changed().await;
        let progress = watch.progress();
        assert_eq!(
            (progress.settled, progress.next_attempt_at_ms),
            (None, Some(77))
        );

        pushes.completed("acme", "e1", &completion(EventState::Delivered, None));
        watch.changed().await;
        let settled = watch.progress().settled.unwrap();
        assert_eq!(
            (settled.state, settled.delivered_to),
            (EventState::Delivered, Some(Role::Backup1))
        );

        assert_eq!(pushes.watching(), 1);
        drop(watch);
        assert_eq!(pushes.watching(), 0);
        // Reports about a push nobody watches any more are dropped quietly.
        pushes.attempted("acme", "e1", attempt(2));
    }

    #[test]
    fn watches_are_limited() {
        let pushes = TestPushes::new();
        let held: Vec<TestWatch> = (0..TEST_WATCHES_MAX)
            .map(|i| pushes.watch("acme", &format!("e{i}")).unwrap())
            .collect();
        assert_eq!(pushes.watch("acme", "one-more").err(), Some(TooManyWatches));
        drop(held);
        assert!(pushes.watch("acme", "one-more").is_ok());
    }
}
