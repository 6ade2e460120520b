//! Tests of the SQLite store on real database files.

use mailhook_core::chain::ChainPos;
use mailhook_core::event::{EventId, MsgId};
use mailhook_core::settings::Role;
use mailhook_core::signature::{SECRET_BYTES, Secret};
use mailhook_core::{AccountId, Event, EventType, WebhookSettings, WebhookUrl};
use tempfile::TempDir;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{mpsc, oneshot};

use super::ops::{self, Op};
use super::reads;
use super::writer::{Msg, Request, Writer};
use super::{SqliteOptions, SqliteStore, now_ms, schema};
use crate::{
    AttemptRecord, Completion, Error, EventState, Lease, NewEvent, Result, Store, new_event,
};

/// Well after every insert of a test: claims at this time see every event as due.
fn later() -> i64 {
    now_ms() + 60_000
}

fn open(dir: &TempDir) -> SqliteStore {
    SqliteStore::open(&dir.path().join("mailhook.db"), SqliteOptions::default()).unwrap()
}

#[test]
fn the_first_engagement_look_up_uses_the_msg_id_index_not_a_scan_of_the_account() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let conn = rusqlite::Connection::open(dir.path().join("mailhook.db")).unwrap();
    let plan: Vec<String> = conn
        .prepare(&format!("EXPLAIN QUERY PLAN {}", ops::SEEN_BEFORE))
        .unwrap()
        .query_map(rusqlite::params!["default", "m", "open"], |row| row.get(3))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    assert!(
        plan.iter().any(|step| step.contains("events_by_message")),
        "{plan:?}"
    );
    drop(store);
}

/// The steps of SQLite's plan for `sql`.
fn query_plan(
    conn: &rusqlite::Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> Vec<String> {
    conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
        .unwrap()
        .query_map(params, |row| row.get(3))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap()
}

#[test]
fn each_lane_is_walked_in_due_order_on_its_own_partial_index() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let conn = rusqlite::Connection::open(dir.path().join("mailhook.db")).unwrap();
    for (lane, index) in [
        (ops::Lane::First, "events_due_first"),
        (ops::Lane::Retry, "events_due_retry"),
    ] {
        for plan in [
            query_plan(&conn, lane.due_sql(), [0]),
            query_plan(&conn, lane.queue_sql(), []),
        ] {
            // The first-attempt lane, a backlog's under load, is walked without reading a
            // row; the retry lane reads each row to check `attempts > 0` (SQLite proves only
            // an equality from a partial index's predicate).
            let expected = match lane {
                ops::Lane::First => format!("USING COVERING INDEX {index}"),
                ops::Lane::Retry => format!("USING INDEX {index}"),
            };
            assert!(
                plan.iter().any(|s| s.contains(&expected)),
                "{lane:?}: {plan:?}"
            );
            assert!(
                !plan.iter().any(|s| s.contains("TEMP B-TREE")),
                "{lane:?}: {plan:?}"
            );
        }
    }
    drop(store);
}

#[test]
fn reads_that_run_per_event_or_per_scrape_never_scan_the_events_table() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let conn = rusqlite::Connection::open(dir.path().join("mailhook.db")).unwrap();
    // A scan reads every stored event; these run for each open/click and each /metrics.
    let first_delivery = query_plan(
        &conn,
        reads::FIRST_DELIVERY,
        rusqlite::params!["default", "m"],
    );
    assert!(
        first_delivery
            .iter()
            .any(|step| step.contains("events_by_message")),
        "{first_delivery:?}"
    );
    let queue = query_plan(&conn, reads::QUEUE_STATS, []);
    assert!(
        queue.iter().all(|step| !step.starts_with("SCAN events ")
            && step != "SCAN events"
            && !step.contains("events_by_state")),
        "{queue:?}"
    );
    assert!(
        queue.iter().any(|step| step.contains("events_due_first"))
            && queue.iter().any(|step| step.contains("events_due_retry")),
        "{queue:?}"
    );
    drop(store);
}

/// A store holding one event, `e` of account `default`, due at once.
async fn open_with_one_event(dir: &TempDir) -> SqliteStore {
    let store = open(dir);
    store
        .insert_events(vec![event("default", "e", "m", 1)])
        .await
        .unwrap();
    store
}

fn account(name: &str) -> AccountId {
    AccountId::parse(name).unwrap()
}

fn event(account_name: &str, event_id: &str, msg_id: &str, timestamp_ms: i64) -> NewEvent {
    new_event(Event {
        event_id: EventId::parse(event_id).unwrap(),
        event_type: EventType::Delivery,
        account: account(account_name),
        msg_id: MsgId::parse(msg_id).unwrap(),
        timestamp_ms,
        test: false,
        email: mailhook_core::event::JsonObject::empty(),
        status: mailhook_core::event::JsonObject::empty(),
        engagement: None,
    })
}

fn attempt(number: u32, role: Role, status: Option<u16>, at_ms: i64) -> AttemptRecord {
    AttemptRecord {
        number,
        role,
        url: format!("https://{}.example/hook", role.as_str()),
        status,
        error: status.is_none().then(|| "connection refused".to_owned()),
        duration_ms: 12,
        at_ms,
    }
}

/// A completion that puts an event at rest in `state`.
fn at_rest(lease: Lease, state: EventState, detail: Option<&str>) -> Completion {
    Completion {
        id: lease.id,
        lease_token: lease.token,
        state,
        pos: ChainPos::default(),
        due_at_ms: None,
        attempts: Vec::new(),
        detail: detail.map(str::to_owned),
        delivered_to: None,
    }
}

fn settings(enabled: bool, addresses: &[&str], events: &[EventType]) -> WebhookSettings {
    WebhookSettings {
        enabled,
        addresses: addresses
            .iter()
            .map(|a| WebhookUrl::parse(a).unwrap())
            .collect(),
        events: events.to_vec(),
    }
}

/// Claims everything due and returns `event_id -> lease`.
async fn claim_ids(store: &SqliteStore) -> Vec<(String, Lease)> {
    let jobs = store.claim_due(later(), 100, 1000).await.unwrap();
    jobs.into_iter()
        .map(|j| (j.lease(), j.event_id))
        .map(|(l, e)| (e, l))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn insert_counts_duplicates_across_requests_and_within_a_batch_in_request_order() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir);
    let cases: Vec<(Vec<NewEvent>, usize, usize, Vec<&str>)> = vec![
        // (batch, accepted, duplicates, event_ids)
        (
            vec![
                event("default", "b", "m1", 1),
                event("default", "a", "m1", 2),
            ],
            2,
            0,
            vec!["b", "a"],
        ),
        // `a` stored by the previous request, `c` repeated within this batch
        (
            vec![
                event("default", "c", "m1", 3),
                event("default", "a", "m1", 2),
                event("default", "c", "m1", 3),
            ],
            1,
            2,
            vec!["c", "a", "c"],
        ),
        // the same event id in another account is another event
        (vec![event("other", "a", "m1", 2)], 1, 0, vec!["a"]),
    ];
    for (batch, accepted, duplicates, event_ids) in cases {
        let outcome = store.insert_events(batch).await.unwrap();
        assert_eq!(outcome.accepted, accepted, "{outcome:?}");
        assert_eq!(outcome.duplicates, duplicates, "{outcome:?}");
        assert_eq!(outcome.event_ids, event_ids);
    }
    let stored = store.message(&account("default"), "m1").await.unwrap();
    let ids: Vec<_> = stored.iter().map(|e| e.event_id.as_str()).collect();
    assert_eq!(ids, ["b", "a", "c"]);
    assert!(
        stored
            .iter()
            .all(|e| e.state == EventState::Pending && e.due_at_ms.is_some())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn claim_returns_due_events_once_and_not_again_until_the_lease_expires() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir);
    let before = now_ms();
    let batch: Vec<_> = (0..3)
        .map(|i| event("default", &format!("e{i}"), "m", i))
        .collect();
    let bodies: Vec<Vec<u8>> = batch.iter().map(|e| e.body.clone()).collect();
    store.insert_events(batch).await.unwrap();
    let now = later();
    let lease_ms = 30_000;

    // (claim at, limit, event ids returned)
    let steps: [(i64, usize, &[&str]); 5] = [
        (before - 1, 10, &[]),                     // not due yet
        (now, 2, &["e0", "e1"]),                   // the oldest due first, up to the limit
        (now, 10, &["e2"]),                        // the rest; the first two are leased
        (now + lease_ms - 1, 10, &[]),             // all leased until the lease ends
        (now + lease_ms, 10, &["e0", "e1", "e2"]), // lease over: due again
    ];
    for (at, limit, expected) in steps {
        let jobs = store.claim_due(at, limit, lease_ms).await.unwrap();
        let ids: Vec<_> = jobs.iter().map(|j| j.event_id.as_str()).collect();
        assert_eq!(ids, expected, "claim at {at} limit {limit}");
        for job in &jobs {
            let i: usize = job.event_id[1..].parse().unwrap();
            assert_eq!(&*job.body, bodies[i].as_slice());
            assert_eq!(job.pos, ChainPos::default());
            assert_eq!(job.attempts, 0);
            assert_eq!(job.event_type, EventType::Delivery);
            assert!(job.accepted_at_ms >= before && job.accepted_at_ms <= now_ms());
        }
    }
    assert_eq!(store.next_due_at().await.unwrap(), Some(now + 2 * lease_ms));
}

#[tokio::test(flavor = "multi_thread")]
async fn complete_writes_state_and_attempts_and_message_shows_them_in_order() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir);
    // Inserted out of timestamp order: `message` sorts by the event's own time.
    store
        .insert_events(vec![
            event("default", "delivered", "m", 2_000),
            event("default", "sent", "m", 1_000),
            event("default", "retrying", "m", 3_000),
        ])
        .await
        .unwrap();
    let claimed = claim_ids(&store).await;
    let id = |name: &str| claimed.iter().find(|(e, _)| e == name).unwrap().1;
    let retry_at = later() + 5_000;
    let retry_pos = ChainPos {
        address: 1,
        tries: 1,
        round: 0,
    };
    store
        .complete(
            vec![
                Completion {
                    state: EventState::Delivered,
                    pos: ChainPos {
                        address: 1,
                        tries: 0,
                        round: 0,
                    },
                    due_at_ms: None,
                    // given out of order: stored and shown by number
                    attempts: vec![
                        attempt(2, Role::Backup1, Some(200), 20),
                        attempt(1, Role::Primary, None, 10),
                    ],
                    detail: None,
                    delivered_to: Some(Role::Backup1),
                    ..at_rest(id("delivered"), EventState::Delivered, None)
                },
                at_rest(id("sent"), EventState::Skipped, Some("push is disabled")),
                Completion {
                    state: EventState::Pending,
                    pos: retry_pos,
                    due_at_ms: Some(retry_at),
                    attempts: vec![attempt(1, Role::Primary, Some(500), 30)],
                    detail: Some("status 500".to_owned()),
                    delivered_to: None,
                    ..at_rest(id("retrying"), EventState::Pending, None)
                },
            ]
            .into(),
        )
        .await
        .unwrap();

    let events = store.message(&account("default"), "m").await.unwrap();
    let shown: Vec<_> = events
        .iter()
        .map(|e| {
            (
                e.event_id.as_str(),
                e.state,
                e.delivered_to,
                e.detail.as_deref(),
                e.due_at_ms,
            )
        })
        .collect();
    assert_eq!(
        shown,
        [
            (
                "sent",
                EventState::Skipped,
                None,
                Some("push is disabled"),
                None
            ),
            (
                "delivered",
                EventState::Delivered,
                Some(Role::Backup1),
                None,
                None
            ),
            (
                "retrying",
                EventState::Pending,
                None,
                Some("status 500"),
                Some(retry_at)
            ),
        ]
    );
    assert_eq!(
        events[1].attempts,
        [
            attempt(1, Role::Primary, None, 10),
            attempt(2, Role::Backup1, Some(200), 20)
        ]
    );
    assert!(events[0].attempts.is_empty());
    assert_eq!(
        store
            .event(&account("default"), "retrying")
            .await
            .unwrap()
            .unwrap()
            .attempts
            .len(),
        1
    );
    assert!(
        store
            .event(&account("default"), "nope")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .message(&account("other"), "m")
            .await
            .unwrap()
            .is_empty()
    );

    // Only the retrying event is due again, and a claim carries its place in the chain.
    assert_eq!(store.next_due_at().await.unwrap(), Some(retry_at));
    let jobs = store.claim_due(retry_at, 10, 1000).await.unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(
        (jobs[0].event_id.as_str(), jobs[0].pos, jobs[0].attempts),
        ("retrying", retry_pos, 1)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn release_makes_a_claimed_event_due_at_once_and_leaves_others_alone() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir);
    store
        .insert_events(vec![
            event("default", "leased", "m", 1),
            event("default", "done", "m", 2),
        ])
        .await
        .unwrap();
    let claimed = claim_ids(&store).await;
    let done = claimed.iter().find(|(e, _)| e == "done").unwrap().1;
    store
        .complete(vec![at_rest(done, EventState::Delivered, None)].into())
        .await
        .unwrap();
    let now = later();
    assert!(
        store.claim_due(now, 10, 1000).await.unwrap().is_empty(),
        "still leased"
    );

    // Releasing every id: the completed one has no lease and must not become due.
    store
        .release(claimed.iter().map(|(_, lease)| *lease).collect())
        .await
        .unwrap();
    assert_eq!(store.next_due_at().await.unwrap(), Some(0));
    let jobs = store.claim_due(now, 10, 1000).await.unwrap();
    let ids: Vec<_> = jobs.iter().map(|j| j.event_id.as_str()).collect();
    assert_eq!(ids, ["leased"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn reopen_after_drop_makes_leased_events_due_at_once() {
    let dir = TempDir::new().unwrap();
    let store = open_with_one_event(&dir).await;
    let hour_ms = 3_600_000;
    assert_eq!(
        store.claim_due(later(), 10, hour_ms).await.unwrap().len(),
        1
    );
    drop(store);

    let store = open(&dir);
    let due = store.next_due_at().await.unwrap().unwrap();
    assert!(
        due <= now_ms(),
        "due at once, not after the hour-long lease"
    );
    let jobs = store.claim_due(now_ms(), 10, 1000).await.unwrap();
    assert_eq!(
        jobs.iter().map(|j| j.event_id.as_str()).collect::<Vec<_>>(),
        ["e"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn settings_first_save_sets_the_secret_later_saves_keep_it_and_rotation_keeps_the_previous() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir);
    let acct = account("shop");
    let secret = |n: u8| Secret::from_bytes([n; SECRET_BYTES]);
    assert!(store.get_settings(&acct).await.unwrap().is_none());
    assert!(
        store
            .rotate_secret(&acct, secret(9), 5_000, 1_000)
            .await
            .unwrap()
            .is_none()
    );

    let first = settings(true, &["https://a.example/hook"], &[EventType::Delivery]);
    let saved = store
        .put_settings(&acct, first.clone(), secret(1), 100)
        .await
        .unwrap();
    assert_eq!(
        (&saved.settings, &saved.secret, saved.updated_at_ms),
        (&first, &secret(1), 100)
    );
    assert!(saved.previous_secret.is_none());

    let second = settings(
        false,
        &["https://b.example/x", "http://c.example:8080/"],
        &[EventType::Open, EventType::Click],
    );
    let saved = store
        .put_settings(&acct, second.clone(), secret(2), 200)
        .await
        .unwrap();
    assert_eq!(
        (&saved.settings, &saved.secret, saved.updated_at_ms),
        (&second, &secret(1), 200)
    );

    let rotated = store
        .rotate_secret(&acct, secret(3), 86_400_300, 300)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rotated.secret, secret(3));
    assert_eq!(rotated.previous_secret, Some((secret(1), 86_400_300)));
    assert_eq!((&rotated.settings, rotated.updated_at_ms), (&second, 300));

    // A save after rotation keeps both secrets; a read gives the same as the writes did.
    store
        .put_settings(&acct, first.clone(), secret(4), 400)
        .await
        .unwrap();
    let read = store.get_settings(&acct).await.unwrap().unwrap();
    assert_eq!((&read.settings, &read.secret), (&first, &secret(3)));
    assert_eq!(read.previous_secret, Some((secret(1), 86_400_300)));
    assert_eq!(read.signing_secrets(86_400_299), [&secret(3), &secret(1)]);
    assert_eq!(read.signing_secrets(86_400_300), [&secret(3)]);
    assert!(
        store
            .get_settings(&account("other"))
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replay_ends_the_claim_of_a_recovery_round_so_its_late_completion_is_ignored() {
    let dir = TempDir::new().unwrap();
    let store = open_with_one_event(&dir).await;
    let (_, first) = claim_ids(&store).await.pop().unwrap();
    // Every address failed; the recovery round is due at once and a dispatcher takes it.
    store
        .complete(
            vec![Completion {
                due_at_ms: Some(0),
                ..at_rest(first, EventState::Failed, Some("status 503"))
            }]
            .into(),
        )
        .await
        .unwrap();
    let (_, round) = claim_ids(&store).await.pop().unwrap();
    assert!(round.token > first.token);
    assert!(claim_ids(&store).await.is_empty(), "held by the round");

    assert_eq!(
        store.replay(&account("default"), None, 42).await.unwrap(),
        ["e"]
    );
    // The round ends later, delivered: too late, the replay started the event over.
    store
        .complete(vec![at_rest(round, EventState::Delivered, None)].into())
        .await
        .unwrap();
    let stored = store
        .event(&account("default"), "e")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (stored.state, stored.due_at_ms),
        (EventState::Pending, Some(42))
    );
    let (_, replayed) = claim_ids(&store).await.pop().unwrap();
    assert!(replayed.token > round.token);
}

#[tokio::test(flavor = "multi_thread")]
async fn replay_requeues_only_failed_and_dead_events() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir);
    let names = ["delivered", "failed", "dead", "skipped", "pending"];
    let batch: Vec<_> = names.iter().map(|n| event("default", n, "m", 1)).collect();
    store.insert_events(batch).await.unwrap();
    store
        .insert_events(vec![event("other", "failed", "m", 1)])
        .await
        .unwrap();

    let fail_all = async |store: &SqliteStore| {
        let claimed = claim_ids(store).await;
        let completions = claimed
            .iter()
            .filter(|(name, _)| name != "pending")
            .map(|(name, id)| {
                let state = EventState::parse(name).unwrap();
                Completion {
                    pos: ChainPos {
                        address: 2,
                        tries: 3,
                        round: 2,
                    },
                    due_at_ms: (state == EventState::Failed).then_some(i64::MAX),
                    ..at_rest(*id, state, Some("status 503"))
                }
            })
            .collect();
        store.complete(completions).await.unwrap();
    };
    fail_all(&store).await;

    let replayed = store.replay(&account("default"), None, 42).await.unwrap();
    assert_eq!(replayed, ["failed", "dead"]);
    let events = store.message(&account("default"), "m").await.unwrap();
    for e in &events {
        match e.event_id.as_str() {
            "failed" | "dead" => {
                assert_eq!(
                    (e.state, e.due_at_ms, e.round, e.detail.as_deref()),
                    (EventState::Pending, Some(42), 0, None)
                );
            }
            "pending" => assert_eq!(e.state, EventState::Pending),
            other => assert_eq!(e.state.as_str(), other, "untouched"),
        }
    }
    let jobs = store.claim_due(42, 10, 1000).await.unwrap();
    assert!(
        jobs.iter().all(|j| j.pos == ChainPos::default()),
        "chain starts from the primary"
    );
    // The other account's failed event was not touched.
    let other = store
        .event(&account("other"), "failed")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(other.state, EventState::Failed);

    // Listed ids: only those failed or dead are queued, each once.
    store
        .release(jobs.iter().map(|j| j.lease()).collect())
        .await
        .unwrap();
    fail_all(&store).await;
    let listed = ["delivered", "dead", "missing", "dead", "failed"]
        .map(str::to_owned)
        .to_vec();
    let replayed = store
        .replay(&account("default"), Some(listed), 43)
        .await
        .unwrap();
    assert_eq!(replayed, ["dead", "failed"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn failures_lists_failed_and_dead_newest_first_up_to_the_limit() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir);
    let names = ["f1", "d2", "ok3", "f4", "d5"];
    store
        .insert_events(names.iter().map(|n| event("default", n, "m", 1)).collect())
        .await
        .unwrap();
    let claimed = claim_ids(&store).await;
    let completions = claimed
        .iter()
        .map(|(name, id)| {
            let state = match &name[..1] {
                "f" => EventState::Failed,
                "d" => EventState::Dead,
                _ => EventState::Delivered,
            };
            at_rest(*id, state, Some(&format!("last error of {name}")))
        })
        .collect();
    store.complete(completions).await.unwrap();

    let cases: [(usize, &[&str]); 3] = [
        (10, &["d5", "f4", "d2", "f1"]),
        (2, &["d5", "f4"]),
        (0, &[]),
    ];
    for (limit, expected) in cases {
        let failures = store.failures(&account("default"), limit).await.unwrap();
        let ids: Vec<_> = failures.iter().map(|e| e.event_id.as_str()).collect();
        assert_eq!(ids, expected, "limit {limit}");
        for f in &failures {
            assert_eq!(f.detail, Some(format!("last error of {}", f.event_id)));
        }
    }
    assert!(
        store
            .failures(&account("other"), 10)
            .await
            .unwrap()
            .is_empty()
    );
}

#[test]
fn a_claim_is_compiled_once_whatever_limit_and_time_it_is_given() {
    let dir = TempDir::new().unwrap();
    let conn = schema::open_writer(&dir.path().join("mailhook.db"), 1 << 20).unwrap();
    let events = (0..8)
        .map(|i| event("default", &format!("e{i}"), "m", i))
        .collect();
    let mut memory = ops::Memory::default();
    ops::Insert { events }.apply(&conn, &mut memory).unwrap();
    // Each claim binds another limit and another "now", as the dispatcher's do.
    for (i, limit) in [1, 2, 3, 1].into_iter().enumerate() {
        let jobs = ops::Claim {
            now_ms: later() + i as i64,
            limit,
            lease_ms: 60_000,
            retry_share: 0,
        }
        .apply(&conn, &mut memory)
        .unwrap();
        assert_eq!(jobs.len(), limit);
    }
    let claim = conn.prepare_cached(ops::Lane::First.due_sql()).unwrap();
    assert_eq!(
        claim.get_status(rusqlite::StatementStatus::RePrepare),
        0,
        "the claim statement was compiled again after a binding changed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn group_commit_shares_transactions_between_concurrent_inserts() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir);
    let requests = 200;
    let before = store.commits();
    let tasks: Vec<_> = (0..requests)
        .map(|r| {
            let store = store.clone();
            tokio::spawn(async move {
                let batch = (0..10)
                    .map(|i| event("default", &format!("r{r}-{i}"), "m", 1))
                    .collect();
                store.insert_events(batch).await
            })
        })
        .collect();
    for task in tasks {
        let outcome = task.await.unwrap().unwrap();
        assert_eq!((outcome.accepted, outcome.duplicates), (10, 0));
    }
    let commits = store.commits() - before;
    println!("{requests} concurrent insert requests took {commits} commits");
    assert!(
        commits < requests,
        "{commits} commits for {requests} requests"
    );
    assert_eq!(
        store.message(&account("default"), "m").await.unwrap().len(),
        2000
    );
}

/// Queues a write without waiting, so a test can line up a group before the writer runs.
fn queue<O: Op>(
    queue: &mpsc::Sender<Msg>,
    op: O,
) -> impl Future<Output = std::result::Result<Result<O::Output>, oneshot::error::RecvError>> + use<O>
{
    let (reply, replied) = oneshot::channel();
    queue
        .try_send(Msg::Write(Box::new(Request::new(op, reply))))
        .unwrap();
    async move { replied.await.map(|(answer, _op)| answer) }
}

/// Runs a writer over what `fill` queued (then a shutdown) and returns its commit count.
fn run_writer(
    dir: &TempDir,
    events_per_commit_max: usize,
    fill: impl FnOnce(&mpsc::Sender<Msg>),
) -> u64 {
    let conn = schema::open_writer(&dir.path().join("mailhook.db"), 1 << 20).unwrap();
    let (sender, receiver) = mpsc::channel(64);
    fill(&sender);
    let (ack, _acked) = oneshot::channel();
    sender.try_send(Msg::Shutdown(ack)).unwrap();
    let commits = Arc::new(AtomicU64::new(0));
    let writer = Writer::new(conn, receiver, events_per_commit_max, Arc::clone(&commits));
    std::thread::spawn(move || writer.run()).join().unwrap();
    commits.load(Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_request_fails_alone_when_its_group_is_retried_one_by_one() {
    let dir = TempDir::new().unwrap();
    let mut replies = None;
    let commits = run_writer(&dir, 10_000, |sender| {
        let first = queue(
            sender,
            ops::Insert {
                events: vec![event("default", "a", "m", 1)],
            },
        );
        // The first claim of this writer: event 1, token 1.
        let claim = queue(
            sender,
            ops::Claim {
                now_ms: later(),
                limit: 1,
                lease_ms: 60_000,
                retry_share: 0,
            },
        );
        // A duration past i64::MAX cannot be bound: this request fails inside the group.
        let too_long = AttemptRecord {
            duration_ms: u64::MAX,
            ..attempt(1, Role::Primary, None, 1)
        };
        let bad = queue(
            sender,
            ops::Complete {
                completions: vec![Completion {
                    attempts: vec![too_long],
                    ..at_rest(Lease { id: 1, token: 1 }, EventState::Delivered, None)
                }]
                .into(),
            },
        );
        let second = queue(
            sender,
            ops::Insert {
                events: vec![event("default", "b", "m", 2)],
            },
        );
        replies = Some((first, claim, bad, second));
    });
    let (first, claim, bad, second) = replies.unwrap();
    assert_eq!(first.await.unwrap().unwrap().accepted, 1);
    let claimed = claim.await.unwrap().unwrap();
    assert_eq!(
        claimed
            .iter()
            .map(|j| (j.id, j.lease_token))
            .collect::<Vec<_>>(),
        [(1, 1)],
        "claimed again, with the same token, after the group rolled back"
    );
    assert!(bad.await.unwrap().is_err());
    assert_eq!(second.await.unwrap().unwrap().accepted, 1);
    // The shared transaction rolled back; each request then committed alone, but the bad one.
    assert_eq!(commits, 3);
    let store = open(&dir);
    let stored = store.message(&account("default"), "m").await.unwrap();
    assert_eq!(
        stored
            .iter()
            .map(|e| (e.event_id.as_str(), e.state))
            .collect::<Vec<_>>(),
        [("a", EventState::Pending), ("b", EventState::Pending)]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_group_holds_at_most_events_per_commit_max_events() {
    let dir = TempDir::new().unwrap();
    // Five queued requests of 4 events with a cap of 10: groups of 8, 8 and 4.
    let mut replies = Vec::new();
    let commits = run_writer(&dir, 10, |sender| {
        for r in 0..5 {
            let batch = (0..4)
                .map(|i| event("default", &format!("r{r}-{i}"), "m", 1))
                .collect();
            replies.push(queue(sender, ops::Insert { events: batch }));
        }
    });
    for reply in replies {
        assert_eq!(reply.await.unwrap().unwrap().accepted, 4);
    }
    assert_eq!(commits, 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn opening_a_file_that_is_not_a_database_is_an_error() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("mailhook.db");
    std::fs::write(
        &path,
        "this is not a SQLite database, just text. ".repeat(100),
    )
    .unwrap();
    match SqliteStore::open(&path, SqliteOptions::default()) {
        Err(Error::Corrupt(message)) => {
            assert!(message.contains("mailhook.db"), "{message}");
        }
        Err(other) => panic!("expected Corrupt, got {other:?}"),
        Ok(_) => panic!("opened a text file as a database"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_row_that_cannot_be_read_is_corrupt_and_claims_park_it() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir);
    store
        .insert_events(vec![
            event("default", "bad", "m", 1),
            event("default", "good", "m", 2),
        ])
        .await
        .unwrap();
    let raw = rusqlite::Connection::open(dir.path().join("mailhook.db")).unwrap();
    raw.execute(
        "UPDATE events SET type = 'teleport' WHERE event_id = 'bad'",
        [],
    )
    .unwrap();
    drop(raw);

    match store.event(&account("default"), "bad").await {
        Err(Error::Corrupt(message)) => assert!(
            message.contains("`type`") && message.contains("teleport"),
            "{message}"
        ),
        other => panic!("expected Corrupt, got {other:?}"),
    }
    // The claim still hands out the good event; the bad one is parked as dead.
    let jobs = store.claim_due(later(), 10, 1000).await.unwrap();
    assert_eq!(
        jobs.iter().map(|j| j.event_id.as_str()).collect::<Vec<_>>(),
        ["good"]
    );
    assert!(
        store
            .claim_due(later() + 10_000, 10, 1000)
            .await
            .unwrap()
            .iter()
            .all(|j| j.event_id == "good")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn close_runs_queued_writes_and_every_call_after_it_is_closed() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir);
    store.ping().await.unwrap();
    let acct = account("default");
    let tasks: Vec<_> = (0..20)
        .map(|r| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .insert_events(vec![event("default", &format!("q{r}"), "m", 1)])
                    .await
            })
        })
        .collect();
    // Let some of them reach the queue first, so close() has queued writes to run.
    tokio::task::yield_now().await;
    store.close().await.unwrap();
    let mut stored = Vec::new();
    for (r, task) in tasks.into_iter().enumerate() {
        match task.await.unwrap() {
            Ok(_) => stored.push(format!("q{r}")),
            Err(Error::Closed) => {}
            Err(other) => panic!("insert failed with {other:?}"),
        }
    }
    println!(
        "{} of 20 inserts racing close() were stored, the rest closed",
        stored.len()
    );

    let secret = Secret::from_bytes([1; SECRET_BYTES]);
    let closed = [
        store
            .insert_events(vec![event("default", "late", "m", 1)])
            .await
            .err(),
        store.claim_due(0, 10, 1000).await.err(),
        store
            .complete(
                vec![at_rest(
                    Lease { id: 1, token: 1 },
                    EventState::Delivered,
                    None,
                )]
                .into(),
            )
            .await
            .err(),
        store.release(vec![Lease { id: 1, token: 1 }]).await.err(),
        store.next_due_at().await.err(),
        store.get_settings(&acct).await.err(),
        store
            .put_settings(&acct, WebhookSettings::default(), secret.clone(), 1)
            .await
            .err(),
        store.rotate_secret(&acct, secret, 1, 1).await.err(),
        store.message(&acct, "m").await.err(),
        store.event(&acct, "q0").await.err(),
        store.failures(&acct, 10).await.err(),
        store.replay(&acct, None, 1).await.err(),
        store.ping().await.err(),
        store.close().await.err(),
    ];
    for (i, err) in closed.into_iter().enumerate() {
        assert!(matches!(err, Some(Error::Closed)), "call {i}: {err:?}");
    }

    // Every insert that was answered Ok is on disk.
    drop(store);
    let store = open(&dir);
    let on_disk: Vec<_> = store
        .message(&acct, "m")
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.event_id)
        .collect();
    for id in &stored {
        assert!(
            on_disk.contains(id),
            "{id} was acknowledged but is not stored"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn stats_count_events_by_type_and_state_with_test_pushes_apart() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir);
    let of_type = |account_name: &str, id: &str, event_type: EventType, test: bool| {
        let mut e = event(account_name, id, "m1", 1).event;
        e.event_type = event_type;
        e.test = test;
        new_event(e)
    };
    store
        .insert_events(vec![
            of_type("acme", "d1", EventType::Delivery, false),
            of_type("acme", "d2", EventType::Delivery, false),
            of_type("acme", "b1", EventType::Bounce, false),
            of_type("acme", "t1", EventType::Click, true),
            of_type("other", "o1", EventType::Open, false),
        ])
        .await
        .unwrap();
    let leases = claim_ids(&store).await;
    let lease = |id: &str| leases.iter().find(|(e, _)| e == id).unwrap().1;
    store
        .complete(
            vec![
                at_rest(lease("d1"), EventState::Delivered, None),
                at_rest(lease("b1"), EventState::Skipped, Some("not subscribed")),
                at_rest(lease("t1"), EventState::Dead, Some("refused")),
            ]
            .into(),
        )
        .await
        .unwrap();

    let acme = store.stats(Some(&account("acme"))).await.unwrap();
    let types: Vec<EventType> = acme.by_type.iter().map(|(t, _)| *t).collect();
    assert_eq!(types, EventType::ALL, "every type listed, in order");
    let of =
        |stats: &crate::Stats, t: EventType| stats.by_type.iter().find(|(x, _)| *x == t).unwrap().1;
    let delivery = of(&acme, EventType::Delivery);
    assert_eq!(
        (delivery.total(), delivery.delivered, delivery.pending),
        (2, 1, 1)
    );
    assert_eq!(
        (
            of(&acme, EventType::Bounce).skipped,
            of(&acme, EventType::Click).total()
        ),
        (1, 0)
    );
    assert_eq!(
        (acme.tests.total(), acme.tests.dead),
        (1, 1),
        "test pushes apart"
    );
    assert_eq!(
        of(&acme, EventType::Open).total(),
        0,
        "other accounts left out"
    );

    let all = store.stats(None).await.unwrap();
    assert_eq!(of(&all, EventType::Open).pending, 1);
    let received: u64 = all.by_type.iter().map(|(_, c)| c.total()).sum();
    assert_eq!(received, 4);

    let nobody = store.stats(Some(&account("nobody"))).await.unwrap();
    assert_eq!(nobody.by_type.len(), 6);
    assert!(nobody.by_type.iter().all(|(_, c)| c.total() == 0));
}

fn open_event(event_id: &str, msg_id: &str) -> NewEvent {
    let mut event = event("acme", event_id, msg_id, 1).event;
    event.event_type = EventType::Open;
    event.engagement = Some(mailhook_core::event::Engagement::detected(None));
    new_event(event)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_first_open_of_a_msg_id_is_unique_exactly_and_its_payload_says_so() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir);
    // Two opens of m1 in one batch, one of m2, then m1 again and a duplicate in a later request.
    let first = store
        .insert_events(vec![
            open_event("o1", "m1"),
            open_event("o2", "m1"),
            open_event("o3", "m2"),
        ])
        .await
        .unwrap();
    assert_eq!(first.unique, vec![true, false, true]);
    assert_eq!(first.stored, vec![true, true, true]);
    let again = store
        .insert_events(vec![open_event("o4", "m1"), open_event("o1", "m1")])
        .await
        .unwrap();
    assert_eq!(again.unique, vec![false, false]);
    assert_eq!(again.stored, vec![true, false]);
    // A delivery of m3 does not make a later open of m3 less unique.
    store
        .insert_events(vec![event("acme", "d3", "m3", 1)])
        .await
        .unwrap();
    assert_eq!(
        store
            .insert_events(vec![open_event("o5", "m3")])
            .await
            .unwrap()
            .unique,
        vec![true]
    );

    let jobs = store.claim_due(later(), 100, 1000).await.unwrap();
    let body_of = |id: &str| -> serde_json::Value {
        let job = jobs.iter().find(|j| j.event_id == id).unwrap();
        serde_json::from_slice(&job.body).unwrap()
    };
    assert_eq!(body_of("o1")["engagement"]["unique"], true);
    assert_eq!(body_of("o2")["engagement"]["unique"], false);
    assert_eq!(body_of("o3")["engagement"]["unique"], true);
    assert_eq!(body_of("o4")["engagement"]["unique"], false);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_completion_or_release_of_a_claim_that_is_no_longer_the_latest_is_ignored() {
    let dir = TempDir::new().unwrap();
    let store = open_with_one_event(&dir).await;
    // Claimed with a 1 ms lease that runs out; a second claim takes the event over.
    let now = later();
    let first = store.claim_due(now, 10, 1).await.unwrap();
    let second = store.claim_due(now + 1, 10, 60_000).await.unwrap();
    assert_eq!((first.len(), second.len()), (1, 1));
    assert!(second[0].lease_token > first[0].lease_token);
    store
        .complete(
            vec![Completion {
                attempts: vec![attempt(1, Role::Primary, Some(200), 5)],
                delivered_to: Some(Role::Primary),
                ..at_rest(second[0].lease(), EventState::Delivered, None)
            }]
            .into(),
        )
        .await
        .unwrap();
    // The first claimant reports late (a failure, a retry due) and releases: both ignored.
    store
        .complete(
            vec![Completion {
                attempts: vec![attempt(1, Role::Primary, Some(503), 6)],
                due_at_ms: Some(now + 5),
                ..at_rest(first[0].lease(), EventState::Pending, Some("status 503"))
            }]
            .into(),
        )
        .await
        .unwrap();
    store.release(vec![first[0].lease()]).await.unwrap();
    let e = store
        .event(&account("default"), "e")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((e.state, e.due_at_ms), (EventState::Delivered, None));
    assert_eq!(e.attempts, [attempt(1, Role::Primary, Some(200), 5)]);
    assert_eq!(store.next_due_at().await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backlog_of_retries_does_not_delay_first_attempts() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir);
    let old: Vec<_> = (0..20)
        .map(|i| event("default", &format!("old{i}"), "m", i))
        .collect();
    store.insert_events(old).await.unwrap();
    let claimed = store.claim_due(later(), 100, 1000).await.unwrap();
    let completions = claimed
        .iter()
        .map(|job| Completion {
            due_at_ms: Some(1),
            attempts: vec![attempt(1, Role::Primary, Some(500), 1)],
            ..at_rest(job.lease(), EventState::Pending, Some("status 500"))
        })
        .collect();
    store.complete(completions).await.unwrap();
    let new: Vec<_> = (0..20)
        .map(|i| event("default", &format!("new{i}"), "m", i))
        .collect();
    store.insert_events(new).await.unwrap();
    // Retries due long ago do not fill the batch: 6 new events and 2 retries of 8.
    let jobs = store.claim_due(later(), 8, 60_000).await.unwrap();
    let fresh = jobs.iter().filter(|j| j.attempts == 0).count();
    assert_eq!((fresh, jobs.len() - fresh), (6, 2));
    // A lane with less due work than its share leaves the rest to the other.
    let jobs = store.claim_due(later(), 100, 60_000).await.unwrap();
    let fresh = jobs.iter().filter(|j| j.attempts == 0).count();
    assert_eq!((fresh, jobs.len() - fresh), (14, 18));
}

#[tokio::test(flavor = "multi_thread")]
async fn prune_deletes_old_delivered_and_skipped_events_with_their_attempts_in_batches() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir);
    let names = ["d1", "d2", "d3", "s4", "f5", "p6"];
    store
        .insert_events(names.iter().map(|n| event("default", n, "m", 1)).collect())
        .await
        .unwrap();
    let claimed = claim_ids(&store).await;
    let completions = claimed
        .iter()
        .filter(|(name, _)| name != "p6")
        .map(|(name, lease)| {
            let state = match &name[..1] {
                "d" => EventState::Delivered,
                "s" => EventState::Skipped,
                _ => EventState::Failed,
            };
            Completion {
                attempts: vec![attempt(1, Role::Primary, Some(200), 1)],
                ..at_rest(*lease, state, None)
            }
        })
        .collect();
    store.complete(completions).await.unwrap();
    assert_eq!(store.prune(now_ms() - 60_000, 10).await.unwrap(), 0);
    let cutoff = now_ms() + 1;
    for (batch_max, deleted) in [(3, 3), (3, 1), (3, 0)] {
        assert_eq!(store.prune(cutoff, batch_max).await.unwrap(), deleted);
    }
    let left: Vec<_> = store
        .message(&account("default"), "m")
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.event_id)
        .collect();
    assert_eq!(left, ["f5", "p6"]);
    let raw = rusqlite::Connection::open(dir.path().join("mailhook.db")).unwrap();
    let attempts: i64 = raw
        .query_row("SELECT count(*) FROM attempts", [], |row| row.get(0))
        .unwrap();
    assert_eq!(attempts, 1, "the pruned events' attempts went with them");
}

#[test]
fn the_writer_page_cache_is_the_configured_size() {
    let dir = TempDir::new().unwrap();
    let conn = schema::open_writer(&dir.path().join("mailhook.db"), 8 * 1024 * 1024).unwrap();
    let kib: i64 = conn
        .pragma_query_value(None, "cache_size", |row| row.get(0))
        .unwrap();
    // Negative: KiB rather than pages.
    assert_eq!(kib, -8192);
}

/// Rows of (account, type, test, state, count) that `sql` selects from the store's file.
fn count_rows(dir: &TempDir, sql: &str) -> Vec<(String, String, bool, String, i64)> {
    let raw = rusqlite::Connection::open(dir.path().join("mailhook.db")).unwrap();
    let mut select = raw.prepare(sql).unwrap();
    select
        .query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap()
}

/// The counts the console reads, straight from the events: what `event_counts` must say.
fn counted_from_events(dir: &TempDir) -> Vec<(String, String, bool, String, i64)> {
    count_rows(
        dir,
        "SELECT account, type, test, state, COUNT(*) FROM events
         GROUP BY account, type, test, state ORDER BY 1, 2, 3, 4",
    )
}

/// What `event_counts` says, zero rows left out.
fn counted_in_table(dir: &TempDir) -> Vec<(String, String, bool, String, i64)> {
    count_rows(
        dir,
        "SELECT account, type, test, state, n FROM event_counts WHERE n != 0
         ORDER BY 1, 2, 3, 4",
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn event_counts_agree_with_the_events_through_every_kind_of_write() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir);
    let check = |step: &str| {
        let from_events = counted_from_events(&dir);
        assert!(!from_events.is_empty());
        assert_eq!(counted_in_table(&dir), from_events, "after {step}");
    };
    let mut test_push = event("acme", "t1", "m2", 3);
    test_push.event.test = true;
    store
        .insert_events(vec![
            event("acme", "d1", "m1", 1),
            event("acme", "f1", "m1", 2),
            event("acme", "f2", "m1", 2),
            event("acme", "r1", "m1", 2),
            event("acme", "d1", "m1", 1),
            test_push,
            event("other", "s1", "m3", 4),
        ])
        .await
        .unwrap();
    check("inserts, one of them a duplicate");

    let leases = claim_ids(&store).await;
    let lease = |id: &str| leases.iter().find(|(e, _)| e == id).unwrap().1;
    let stale = lease("r1");
    store
        .complete(
            vec![
                at_rest(lease("d1"), EventState::Delivered, None),
                // Failed, with a recovery round to come.
                Completion {
                    due_at_ms: Some(later() + 5_000),
                    ..at_rest(lease("f1"), EventState::Failed, Some("all down"))
                },
                at_rest(lease("f2"), EventState::Dead, Some("all down")),
                at_rest(lease("t1"), EventState::Delivered, None),
                at_rest(lease("s1"), EventState::Skipped, Some("not subscribed")),
                // Still pending: a retry was scheduled (no change of state).
                Completion {
                    due_at_ms: Some(later() + 5_000),
                    ..at_rest(stale, EventState::Pending, None)
                },
            ]
            .into(),
        )
        .await
        .unwrap();
    check("completions to every state");

    // A recovery round of f1 is claimed (from `failed`) and ends dead.
    let round = store.claim_due(later() + 10_000, 100, 1000).await.unwrap();
    let f1 = round.iter().find(|j| j.event_id == "f1").unwrap().lease();
    let r1 = round.iter().find(|j| j.event_id == "r1").unwrap().lease();
    store
        .complete(vec![at_rest(f1, EventState::Dead, Some("rounds over"))].into())
        .await
        .unwrap();
    check("a claimed failed event completed as dead");
    // A completion of a claim that is no longer the latest changes nothing.
    store
        .complete(vec![at_rest(stale, EventState::Delivered, None)].into())
        .await
        .unwrap();
    check("a stale completion");
    store
        .complete(vec![at_rest(r1, EventState::Delivered, None)].into())
        .await
        .unwrap();

    let requeued = store
        .replay(
            &account("acme"),
            Some(vec!["f1".to_owned(), "f1".to_owned()]),
            later(),
        )
        .await
        .unwrap();
    assert_eq!(requeued, ["f1"]);
    check("a replay of one event, named twice");
    let requeued = store.replay(&account("acme"), None, later()).await.unwrap();
    assert_eq!(requeued, ["f2"]);
    check("a replay of every failure");

    let pruned = store.prune(now_ms() + 1, 100).await.unwrap();
    assert_eq!(pruned, 4, "d1, t1, s1 and r1 were at rest");
    check("a prune");

    // Reopened: the counts were written, not only kept in memory.
    store.close().await.unwrap();
    let store = open(&dir);
    let stats = store.stats(Some(&account("acme"))).await.unwrap();
    let pending: u64 = stats.by_type.iter().map(|(_, c)| c.pending).sum();
    assert_eq!(pending, 2, "f1 and f2, replayed");
    check("a reopen");
}

#[test]
fn opening_an_older_database_counts_its_events_once() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("mailhook.db");
    {
        // A database as the version before the counts table left it.
        let raw = rusqlite::Connection::open(&path).unwrap();
        for sql in &schema::MIGRATIONS[..3] {
            raw.execute_batch(sql).unwrap();
        }
        raw.pragma_update(None, "user_version", 3).unwrap();
        raw.execute_batch(
            "INSERT INTO events (account, event_id, msg_id, type, timestamp_ms, accepted_at_ms,
                 test, body, state) VALUES
                 ('acme', 'a', 'm', 'open', 1, 1, 0, x'7b7d', 'delivered'),
                 ('acme', 'b', 'm', 'open', 1, 1, 0, x'7b7d', 'delivered'),
                 ('acme', 'c', 'm', 'bounce', 1, 1, 0, x'7b7d', 'dead'),
                 ('other', 'd', 'm', 'open', 1, 1, 1, x'7b7d', 'pending')",
        )
        .unwrap();
    }
    drop(schema::open_writer(&path, 1 << 20).unwrap());
    assert_eq!(counted_in_table(&dir), counted_from_events(&dir));
    assert_eq!(counted_in_table(&dir).len(), 3);
    // Opening again migrates nothing and counts nothing twice.
    drop(schema::open_writer(&path, 1 << 20).unwrap());
    assert_eq!(counted_in_table(&dir), counted_from_events(&dir));
}
