//! Per-address admission: head-of-line isolation between webhook addresses.
//!
//! At most `delivery.in_flight_per_address_max` (K) requests go to one address at once, and at
//! least K more events may wait in memory for one of its slots. Past that an event waits only
//! if the address keeps up: its answer time says a slot will come within `WAIT_BUDGET`, and
//! it waits no longer than that. Otherwise it is not kept waiting: it goes back to the store,
//! due again when the address is likely to have a free slot (its own virtual queue, paced by
//! how long the address takes to answer). So a slow or hanging address holds at most `2 × K`
//! of the dispatcher's `delivery.concurrency` slots for longer than `WAIT_BUDGET`, and events
//! for other addresses keep being claimed and delivered meanwhile.
//!
//! Why not always defer: waiting in memory costs nothing while the address keeps up, whereas
//! each deferral is a store write and a second claim. A busy address that answers in a few
//! milliseconds (one big customer) would otherwise see most of every claim bounce back to the
//! store and be claimed again, the store's churn eating the CPU the deliveries need.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The longest an event is deferred at once: an address that speeds up again is not left
/// idle with its events scheduled far ahead. A deferred event past this is simply deferred
/// again when claimed.
const DEFER_MAX_MS: i64 = 30_000;
/// The shortest deferral, so a busy address's events do not come straight back.
const DEFER_MIN_MS: i64 = 5;
/// What an address is assumed to take per request before it has answered one.
const DURATION_GUESS_MS: f64 = 100.0;
/// Weight of the newest attempt in the moving average of an address's answer time.
const DURATION_WEIGHT: f64 = 0.2;
/// The longest an event past the first K waiting is kept in memory for a slot: the bound on
/// how long an address that stops answering can hold the dispatcher's slots beyond `2 × K`.
const WAIT_BUDGET: Duration = Duration::from_millis(200);

/// The admission state of every address seen, by URL.
pub(crate) struct AddressTable {
    in_flight_max: usize,
    addresses: Mutex<HashMap<String, Arc<AddressSlots>>>,
}

impl AddressTable {
    pub(crate) fn new(in_flight_max: usize) -> AddressTable {
        AddressTable {
            in_flight_max: in_flight_max.max(1),
            addresses: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn get(&self, url: &str) -> Arc<AddressSlots> {
        lock(&self.addresses)
            .entry(url.to_owned())
            .or_insert_with(|| Arc::new(AddressSlots::new(self.in_flight_max)))
            .clone()
    }
}

/// One address: its in-flight slots and the pace of its virtual queue.
pub(crate) struct AddressSlots {
    in_flight_max: usize,
    slots: Arc<Semaphore>,
    pace: Arc<Mutex<Pace>>,
}

struct Pace {
    /// Events waiting in memory for a slot.
    waiting: usize,
    /// Moving average of how long the address takes per request, in milliseconds.
    duration_ms: f64,
    /// Where the address's virtual queue of deferred events ends (Unix ms).
    horizon_ms: i64,
}

/// What an event may do about an address now.
pub(crate) enum Admission {
    /// Send: the slot is held until this is dropped.
    Go(OwnedSemaphorePermit),
    /// The address is saturated: put the event back, due at this time (Unix ms).
    Defer { until_ms: i64 },
}

impl AddressSlots {
    fn new(in_flight_max: usize) -> AddressSlots {
        AddressSlots {
            in_flight_max,
            slots: Arc::new(Semaphore::new(in_flight_max)),
            pace: Arc::new(Mutex::new(Pace {
                waiting: 0,
                duration_ms: DURATION_GUESS_MS,
                horizon_ms: 0,
            })),
        }
    }

    /// A slot at once; or after waiting behind fewer than `in_flight_max` others; or, behind
    /// more, after a wait the address's pace predicts within `WAIT_BUDGET` (and bounded by it);
    /// else (when `may_defer`) a time to come back.
    pub(crate) async fn admit(&self, now_ms: i64, may_defer: bool) -> Admission {
        if let Ok(permit) = Arc::clone(&self.slots).try_acquire_owned() {
            return Admission::Go(permit);
        }
        let bounded = {
            let mut pace = lock(&self.pace);
            let beyond = may_defer && pace.waiting >= self.in_flight_max;
            if beyond && !pace.slot_within_budget(pace.waiting, self.in_flight_max) {
                return Admission::Defer {
                    until_ms: pace.defer(now_ms, self.in_flight_max),
                };
            }
            pace.waiting += 1;
            beyond
        };
        // Counts down however the wait ends, the task being aborted at shutdown included.
        let _waiting = Waiting(Arc::clone(&self.pace));
        let acquire = Arc::clone(&self.slots).acquire_owned();
        let acquired = if bounded {
            match tokio::time::timeout(WAIT_BUDGET, acquire).await {
                Ok(acquired) => acquired,
                // The address stopped keeping up while this waited: back to the store.
                Err(_) => {
                    let later = now_ms.saturating_add(WAIT_BUDGET.as_millis() as i64);
                    return Admission::Defer {
                        until_ms: lock(&self.pace).defer(later, self.in_flight_max),
                    };
                }
            }
        } else {
            acquire.await
        };
        match acquired {
            Ok(permit) => Admission::Go(permit),
            // The semaphore is never closed; were it, coming back later is still right.
            Err(_) => Admission::Defer {
                until_ms: now_ms + DEFER_MAX_MS,
            },
        }
    }

    /// Feeds how long a request to the address took into its pace.
    pub(crate) fn observed(&self, duration: Duration) {
        let mut pace = lock(&self.pace);
        let ms = duration.as_secs_f64() * 1000.0;
        pace.duration_ms = pace.duration_ms * (1.0 - DURATION_WEIGHT) + ms * DURATION_WEIGHT;
    }
}

impl Pace {
    /// Whether an event behind `ahead` waiting ones would get a slot within `WAIT_BUDGET`,
    /// slots freeing at `in_flight_max` per answer time.
    fn slot_within_budget(&self, ahead: usize, in_flight_max: usize) -> bool {
        let predicted_ms = (ahead as f64 + 1.0) * self.duration_ms / in_flight_max as f64;
        predicted_ms <= WAIT_BUDGET.as_secs_f64() * 1000.0
    }

    /// The next place in the address's virtual queue: behind the requests in flight and
    /// those waiting, then one slot time (answer time / slots) behind the previous deferral.
    fn defer(&mut self, now_ms: i64, in_flight_max: usize) -> i64 {
        let slots = in_flight_max as f64;
        let slot_ms = (self.duration_ms / slots).max(1.0);
        let ahead_ms = (slots + self.waiting as f64) * slot_ms;
        let earliest = now_ms.saturating_add(ahead_ms.ceil() as i64);
        self.horizon_ms = self
            .horizon_ms
            .max(earliest)
            .saturating_add(slot_ms.ceil() as i64);
        self.horizon_ms
            .clamp(now_ms + DEFER_MIN_MS, now_ms + DEFER_MAX_MS)
    }
}

struct Waiting(Arc<Mutex<Pace>>);

impl Drop for Waiting {
    fn drop(&mut self) {
        let mut pace = lock(&self.0);
        pace.waiting = pace.waiting.saturating_sub(1);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section here is a counter update that cannot be left half done.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn past_the_slots_and_as_many_waiting_events_are_deferred_in_queue_order() {
        let table = AddressTable::new(2);
        let slow = table.get("http://slow.example/hook");
        // A second per answer: a slot for a third waiter would take longer than the budget.
        lock(&slow.pace).duration_ms = 1000.0;
        let now = 1_000_000;
        let mut held = Vec::new();
        for _ in 0..2 {
            match slow.admit(now, true).await {
                Admission::Go(permit) => held.push(permit),
                Admission::Defer { .. } => panic!("a free slot was refused"),
            }
        }
        // Two wait in memory (they would get the next free slots).
        let mut waiters = Vec::new();
        for _ in 0..2 {
            let slow = Arc::clone(&slow);
            waiters.push(tokio::spawn(async move {
                matches!(slow.admit(now, true).await, Admission::Go(_))
            }));
        }
        while lock(&slow.pace).waiting < 2 {
            tokio::task::yield_now().await;
        }
        // The fifth is deferred, the sixth behind it; a test push (no deferral) waits.
        let Admission::Defer { until_ms: first } = slow.admit(now, true).await else {
            panic!("a saturated address took a fifth event")
        };
        let Admission::Defer { until_ms: second } = slow.admit(now, true).await else {
            panic!("a saturated address took a sixth event")
        };
        assert!(first > now && second > first, "{now} < {first} < {second}");
        assert!(second - now <= DEFER_MAX_MS);
        // Another address is not affected at all.
        assert!(matches!(
            table.get("http://fast.example/hook").admit(now, true).await,
            Admission::Go(_)
        ));
        // Slots freed: the waiters get them, and the waiting count goes back to zero.
        held.clear();
        for waiter in waiters {
            assert!(waiter.await.unwrap());
        }
        assert_eq!(lock(&slow.pace).waiting, 0);
    }

    #[tokio::test]
    async fn an_address_that_keeps_up_keeps_more_waiting_but_only_within_the_budget() {
        let table = AddressTable::new(2);
        let fast = table.get("http://fast.example/hook");
        // 2 ms per answer: ten waiters are served in ~10 ms, well within the budget.
        lock(&fast.pace).duration_ms = 2.0;
        let now = 1_000_000;
        let mut held = Vec::new();
        for _ in 0..2 {
            match fast.admit(now, true).await {
                Admission::Go(permit) => held.push(permit),
                Admission::Defer { .. } => panic!("a free slot was refused"),
            }
        }
        let mut waiters = Vec::new();
        for _ in 0..10 {
            let fast = Arc::clone(&fast);
            waiters.push(tokio::spawn(async move { fast.admit(now, true).await }));
        }
        // All ten wait in memory (an address without the budget rule would defer eight).
        tokio::time::timeout(Duration::from_secs(5), async {
            while lock(&fast.pace).waiting < 10 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("ten events wait for a fast address");
        // The address stops answering (the slots stay held): the waiters past the first two
        // give up after the budget and are deferred; the first two keep waiting.
        let started = std::time::Instant::now();
        let mut deferred = 0;
        for waiter in waiters.drain(2..).collect::<Vec<_>>() {
            match waiter.await.unwrap() {
                Admission::Defer { until_ms } => {
                    assert!(until_ms > now);
                    deferred += 1;
                }
                Admission::Go(_) => panic!("a waiter got a slot nobody freed"),
            }
        }
        assert_eq!(deferred, 8);
        assert!(started.elapsed() >= WAIT_BUDGET - Duration::from_millis(50));
        assert_eq!(lock(&fast.pace).waiting, 2);
        // Slots freed: the two patient waiters get them.
        held.clear();
        for waiter in waiters {
            assert!(matches!(waiter.await.unwrap(), Admission::Go(_)));
        }
    }

    #[test]
    fn waiting_past_the_slots_follows_the_predicted_wait() {
        let pace = |duration_ms| Pace {
            waiting: 0,
            duration_ms,
            horizon_ms: 0,
        };
        // 64 slots at 2 ms: 6,000 ahead still get a slot within 200 ms.
        assert!(pace(2.0).slot_within_budget(6_000, 64));
        assert!(!pace(2.0).slot_within_budget(7_000, 64));
        // 64 slots at 1 s: only 12 may wait (predicted 203 ms for the 13th).
        assert!(pace(1000.0).slot_within_budget(11, 64));
        assert!(!pace(1000.0).slot_within_budget(12, 64));
    }

    #[test]
    fn deferrals_follow_the_address_pace_and_are_capped() {
        let mut pace = Pace {
            waiting: 0,
            duration_ms: 1000.0,
            horizon_ms: 0,
        };
        // 4 slots, 1 s per request: a slot frees every 250 ms.
        let first = pace.defer(0, 4);
        let second = pace.defer(0, 4);
        assert_eq!(first, 1250);
        assert_eq!(second - first, 250);
        let mut hanging = Pace {
            waiting: 0,
            duration_ms: 10_000_000.0,
            horizon_ms: 0,
        };
        assert_eq!(hanging.defer(0, 1), DEFER_MAX_MS);
        let mut fast = Pace {
            waiting: 0,
            duration_ms: 0.0,
            horizon_ms: 0,
        };
        assert!(fast.defer(0, 64) >= DEFER_MIN_MS);
    }
}
