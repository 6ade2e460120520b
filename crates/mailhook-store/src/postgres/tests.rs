//! Tests of the PostgreSQL store against the local server, each on a fresh database: the
//! same behaviours as the SQLite store's tests, plus what sharing adds (several stores on one
//! database claiming at once, leases taken over, stale completions, LISTEN/NOTIFY, pruning
//! by one node at a time, migrations racing).

// The helper lives in the test-support crate; it is compiled in here by path because that
// crate depends on this one.
#[allow(dead_code)]
#[path = "../../../mailhook-test-support/src/test_db.rs"]
mod test_db;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use mailhook_core::bus::WorkBus;
use mailhook_core::chain::ChainPos;
use mailhook_core::event::{EventId, MsgId};
use mailhook_core::settings::Role;
use mailhook_core::signature::{SECRET_BYTES, Secret};
use mailhook_core::{AccountId, Event, EventType, WebhookSettings, WebhookUrl};
use test_db::TestDatabase;

use super::{PostgresOptions, PostgresStore};
use crate::sqlite::now_ms;
use crate::{AttemptRecord, Completion, Error, EventState, Lease, NewEvent, Store, new_event};

fn later() -> i64 {
    now_ms() + 60_000
}

async fn open_as(db: &TestDatabase, node: &str) -> PostgresStore {
    PostgresStore::open(
        db.url(),
        PostgresOptions {
            node_id: node.to_owned(),
            pool_size_max: 4,
            ..PostgresOptions::default()
        },
    )
    .await
    .unwrap()
}

async fn fresh() -> (TestDatabase, PostgresStore) {
    let db = TestDatabase::create().await;
    let store = open_as(&db, "node-a").await;
    (db, store)
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

async fn claim_ids(store: &PostgresStore) -> Vec<(String, Lease)> {
    let jobs = store.claim_due(later(), 100, 1000).await.unwrap();
    jobs.into_iter()
        .map(|j| (j.event_id.clone(), j.lease()))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn insert_counts_duplicates_across_requests_and_within_a_batch_in_request_order() {
    let (_db, store) = fresh().await;
    // (batch, accepted, duplicates, event_ids, stored)
    type Case = (Vec<NewEvent>, usize, usize, Vec<&'static str>, Vec<bool>);
    let cases: Vec<Case> = vec![
        (
            vec![
                event("default", "b", "m1", 1),
                event("default", "a", "m1", 2),
            ],
            2,
            0,
            vec!["b", "a"],
            vec![true, true],
        ),
        (
            vec![
                event("default", "c", "m1", 3),
                event("default", "a", "m1", 2),
                event("default", "c", "m1", 3),
            ],
            1,
            2,
            vec!["c", "a", "c"],
            vec![true, false, false],
        ),
        (
            vec![event("other", "a", "m1", 2)],
            1,
            0,
            vec!["a"],
            vec![true],
        ),
    ];
    for (batch, accepted, duplicates, event_ids, stored) in cases {
        let outcome = store.insert_events(batch).await.unwrap();
        assert_eq!(outcome.accepted, accepted, "{outcome:?}");
        assert_eq!(outcome.duplicates, duplicates, "{outcome:?}");
        assert_eq!(outcome.event_ids, event_ids);
        assert_eq!(outcome.stored, stored);
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
    let (_db, store) = fresh().await;
    let before = now_ms();
    let batch: Vec<_> = (0..3)
        .map(|i| event("default", &format!("e{i}"), "m", i))
        .collect();
    let bodies: Vec<Vec<u8>> = batch.iter().map(|e| e.body.clone()).collect();
    store.insert_events(batch).await.unwrap();
    let now = later();
    let lease_ms = 30_000;
    let steps: [(i64, usize, &[&str]); 5] = [
        (before - 1, 10, &[]),
        (now, 2, &["e0", "e1"]),
        (now, 10, &["e2"]),
        (now + lease_ms - 1, 10, &[]),
        (now + lease_ms, 10, &["e0", "e1", "e2"]),
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
            assert!(job.accepted_at_ms >= before && job.accepted_at_ms <= now_ms());
        }
    }
    assert_eq!(store.next_due_at().await.unwrap(), Some(now + 2 * lease_ms));
}

#[tokio::test(flavor = "multi_thread")]
async fn complete_writes_state_and_attempts_and_a_stale_claim_cannot_overwrite_them() {
    let (_db, store) = fresh().await;
    store
        .insert_events(vec![
            event("default", "delivered", "m", 2_000),
            event("default", "sent", "m", 1_000),
            event("default", "retrying", "m", 3_000),
        ])
        .await
        .unwrap();
    let claimed = claim_ids(&store).await;
    let lease = |name: &str| claimed.iter().find(|(e, _)| e == name).unwrap().1;
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
                    pos: ChainPos {
                        address: 1,
                        tries: 0,
                        round: 0,
                    },
                    attempts: vec![
                        attempt(2, Role::Backup1, Some(200), 20),
                        attempt(1, Role::Primary, None, 10),
                    ],
                    delivered_to: Some(Role::Backup1),
                    ..at_rest(lease("delivered"), EventState::Delivered, None)
                },
                at_rest(lease("sent"), EventState::Skipped, Some("push is disabled")),
                Completion {
                    pos: retry_pos,
                    due_at_ms: Some(retry_at),
                    attempts: vec![attempt(1, Role::Primary, Some(500), 30)],
                    detail: Some("status 500 \0 with a NUL".to_owned()),
                    ..at_rest(lease("retrying"), EventState::Pending, None)
                },
            ]
            .into(),
        )
        .await
        .unwrap();
    let events = store.message(&account("default"), "m").await.unwrap();
    let shown: Vec<_> = events
        .iter()
        .map(|e| (e.event_id.as_str(), e.state, e.delivered_to))
        .collect();
    assert_eq!(
        shown,
        [
            ("sent", EventState::Skipped, None),
            ("delivered", EventState::Delivered, Some(Role::Backup1)),
            ("retrying", EventState::Pending, None),
        ]
    );
    assert_eq!(
        events[1].attempts,
        [
            attempt(1, Role::Primary, None, 10),
            attempt(2, Role::Backup1, Some(200), 20)
        ]
    );
    assert_eq!(events[0].detail.as_deref(), Some("push is disabled"));
    assert!(events[2].detail.as_deref().unwrap().contains("with a NUL"));
    assert_eq!(store.next_due_at().await.unwrap(), Some(retry_at));

    // The retry is claimed (lease 1 ms), the lease runs out and another claim takes it over.
    let first = store.claim_due(retry_at, 10, 1).await.unwrap();
    assert_eq!(
        (first[0].event_id.as_str(), first[0].pos, first[0].attempts),
        ("retrying", retry_pos, 1)
    );
    let second = store.claim_due(retry_at + 1, 10, 60_000).await.unwrap();
    assert_eq!(second.len(), 1);
    assert!(second[0].lease_token > first[0].lease_token);
    // The newer claim delivers; the stale one reports a failure afterwards: ignored.
    store
        .complete(
            vec![Completion {
                attempts: vec![attempt(2, Role::Backup1, Some(200), 40)],
                delivered_to: Some(Role::Backup1),
                ..at_rest(second[0].lease(), EventState::Delivered, None)
            }]
            .into(),
        )
        .await
        .unwrap();
    store
        .complete(
            vec![Completion {
                attempts: vec![attempt(2, Role::Backup1, Some(503), 41)],
                due_at_ms: Some(retry_at + 5),
                ..at_rest(first[0].lease(), EventState::Pending, Some("status 503"))
            }]
            .into(),
        )
        .await
        .unwrap();
    // A stale release is ignored too: the event stays at rest.
    store.release(vec![first[0].lease()]).await.unwrap();
    let retried = store
        .event(&account("default"), "retrying")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(retried.state, EventState::Delivered);
    assert_eq!(retried.due_at_ms, None);
    assert_eq!(
        retried.attempts.last().map(|a| a.status),
        Some(Some(200)),
        "{retried:?}"
    );
    assert!(
        store
            .event(&account("default"), "nope")
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn release_makes_a_claimed_event_due_at_once_and_leaves_others_alone() {
    let (_db, store) = fresh().await;
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
    assert!(store.claim_due(now, 10, 1000).await.unwrap().is_empty());
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
async fn a_backlog_of_retries_does_not_delay_first_attempts() {
    let (_db, store) = fresh().await;
    // 20 events fail their first attempt and are due for a retry long before the new ones
    // arrive: oldest-due-first alone would hand out only retries.
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

    // Batches of 8: 6 first attempts and 2 retries each, while both lanes have work.
    let jobs = store.claim_due(later(), 8, 60_000).await.unwrap();
    let fresh = jobs.iter().filter(|j| j.attempts == 0).count();
    assert_eq!((fresh, jobs.len() - fresh), (6, 2));
    // A lane with less due work than its share leaves the rest to the other.
    let jobs = store.claim_due(later(), 100, 60_000).await.unwrap();
    let fresh = jobs.iter().filter(|j| j.attempts == 0).count();
    assert_eq!((fresh, jobs.len() - fresh), (14, 18));
}

#[tokio::test(flavor = "multi_thread")]
async fn nodes_claiming_at_once_never_get_the_same_event() {
    let db = TestDatabase::create().await;
    let stores: Vec<Arc<PostgresStore>> = vec![
        Arc::new(open_as(&db, "node-a").await),
        Arc::new(open_as(&db, "node-b").await),
        Arc::new(open_as(&db, "node-c").await),
    ];
    let total = 3000;
    for (chunk, store) in stores.iter().enumerate() {
        let batch = (0..total / 3)
            .map(|i| event("default", &format!("e{chunk}-{i}"), "m", i as i64))
            .collect();
        store.insert_events(batch).await.unwrap();
    }
    // Each store runs four claimers in a loop until nothing is left.
    let mut tasks = Vec::new();
    for store in &stores {
        for _ in 0..4 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let mut got = Vec::new();
                loop {
                    let jobs = store.claim_due(later(), 37, 600_000).await.unwrap();
                    if jobs.is_empty() {
                        return got;
                    }
                    got.extend(jobs.into_iter().map(|j| j.event_id));
                }
            }));
        }
    }
    let mut seen = HashSet::new();
    let mut claims = 0;
    for task in tasks {
        for id in task.await.unwrap() {
            claims += 1;
            assert!(seen.insert(id.clone()), "{id} was claimed twice");
        }
    }
    assert_eq!((claims, seen.len()), (total, total));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_node_takes_back_its_own_leases_and_only_those() {
    let db = TestDatabase::create().await;
    let a = open_as(&db, "node-a").await;
    let b = open_as(&db, "node-b").await;
    a.insert_events(vec![event("default", "of-a", "m", 1)])
        .await
        .unwrap();
    assert_eq!(a.claim_due(later(), 10, 3_600_000).await.unwrap().len(), 1);
    b.insert_events(vec![event("default", "of-b", "m", 2)])
        .await
        .unwrap();
    assert_eq!(b.claim_due(later(), 10, 3_600_000).await.unwrap().len(), 1);
    drop(a);
    // Node a comes back (a crash leaves nothing else behind): its lease ends at once, the
    // one node b holds stays.
    let a = open_as(&db, "node-a").await;
    let jobs = a.claim_due(later(), 10, 1000).await.unwrap();
    assert_eq!(
        jobs.iter().map(|j| j.event_id.as_str()).collect::<Vec<_>>(),
        ["of-a"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn nodes_starting_together_migrate_once() {
    let db = TestDatabase::create().await;
    let opening: Vec<_> = (0..4)
        .map(|n| {
            let url = db.url().to_owned();
            tokio::spawn(async move {
                PostgresStore::open(
                    &url,
                    PostgresOptions {
                        node_id: format!("n{n}"),
                        pool_size_max: 2,
                        ..PostgresOptions::default()
                    },
                )
                .await
            })
        })
        .collect();
    for open in opening {
        open.await.unwrap().unwrap();
    }
    assert_eq!(
        super::migrate(db.url(), Duration::from_secs(5))
            .await
            .unwrap(),
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_insert_on_one_node_rings_the_bus_of_another() {
    let db = TestDatabase::create().await;
    let a = open_as(&db, "node-a").await;
    let b = open_as(&db, "node-b").await;
    let bus = WorkBus::new();
    b.subscribe_work(bus.clone());
    // The listener rings once when it is connected: wait for that first.
    tokio::time::timeout(Duration::from_secs(10), bus.rung())
        .await
        .expect("the LISTEN connection comes up");
    a.insert_events(vec![event("default", "e", "m", 1)])
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), bus.rung())
        .await
        .expect("node b hears of node a's insert");
    b.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn settings_first_save_sets_the_secret_later_saves_keep_it_and_rotation_keeps_the_previous() {
    let (_db, store) = fresh().await;
    let acct = account("shop");
    let secret = |n: u8| Secret::from_bytes([n; SECRET_BYTES]);
    let settings = |enabled, addresses: &[&str], events: &[EventType]| WebhookSettings {
        enabled,
        addresses: addresses
            .iter()
            .map(|a| WebhookUrl::parse(a).unwrap())
            .collect(),
        events: events.to_vec(),
    };
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
    let second = settings(
        false,
        &["https://b.example/x", "http://c.example:8080/"],
        &[EventType::Open, EventType::Click],
    );
    let saved = store
        .put_settings(&acct, second.clone(), secret(2), 200)
        .await
        .unwrap();
    assert_eq!((&saved.settings, &saved.secret), (&second, &secret(1)));
    let rotated = store
        .rotate_secret(&acct, secret(3), 86_400_300, 300)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rotated.secret, secret(3));
    assert_eq!(rotated.previous_secret, Some((secret(1), 86_400_300)));
    store
        .put_settings(&acct, first.clone(), secret(4), 400)
        .await
        .unwrap();
    let read = store.get_settings(&acct).await.unwrap().unwrap();
    assert_eq!((&read.settings, &read.secret), (&first, &secret(3)));
    assert_eq!(read.previous_secret, Some((secret(1), 86_400_300)));
}

#[tokio::test(flavor = "multi_thread")]
async fn replay_requeues_only_failed_and_dead_events_and_failures_lists_them() {
    let (_db, store) = fresh().await;
    let names = ["delivered", "failed", "dead", "skipped", "pending"];
    let batch: Vec<_> = names.iter().map(|n| event("default", n, "m", 1)).collect();
    store.insert_events(batch).await.unwrap();
    let claimed = claim_ids(&store).await;
    let completions = claimed
        .iter()
        .filter(|(name, _)| name != "pending")
        .map(|(name, lease)| {
            let state = EventState::parse(name).unwrap();
            Completion {
                pos: ChainPos {
                    address: 2,
                    tries: 3,
                    round: 2,
                },
                due_at_ms: (state == EventState::Failed).then_some(i64::MAX),
                ..at_rest(*lease, state, Some("status 503"))
            }
        })
        .collect();
    store.complete(completions).await.unwrap();
    let failures = store.failures(&account("default"), 10).await.unwrap();
    assert_eq!(
        failures
            .iter()
            .map(|e| e.event_id.as_str())
            .collect::<Vec<_>>(),
        ["dead", "failed"]
    );
    assert_eq!(
        store.failures(&account("default"), 1).await.unwrap().len(),
        1
    );

    let listed = ["delivered", "dead", "missing", "dead", "failed"]
        .map(str::to_owned)
        .to_vec();
    let replayed = store
        .replay(&account("default"), Some(listed), 43)
        .await
        .unwrap();
    assert_eq!(replayed, ["dead", "failed"]);
    for name in ["dead", "failed"] {
        let e = store
            .event(&account("default"), name)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (e.state, e.due_at_ms, e.round, e.detail.as_deref()),
            (EventState::Pending, Some(43), 0, None)
        );
    }
    assert!(
        store
            .failures(&account("default"), 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .replay(&account("default"), None, 44)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn prune_deletes_old_delivered_and_skipped_events_with_their_attempts_in_batches() {
    let (db, store) = fresh().await;
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
    // Nothing settled before the cutoff yet.
    assert_eq!(store.prune(now_ms() - 60_000, 10).await.unwrap(), 0);
    let cutoff = now_ms() + 1;
    // (batch_max, deleted): bounded batches, oldest first, until only kept ones remain.
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
    // Their attempts went with them.
    let (client, connection) = tokio_postgres::connect(db.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let attempts: i64 = client
        .query_one("SELECT count(*) FROM attempts", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(attempts, 1);

    // While another node holds the pruning lock, a prune does nothing.
    store
        .insert_events(vec![event("default", "d7", "m", 1)])
        .await
        .unwrap();
    let lease = claim_ids(&store).await[0].1;
    store
        .complete(vec![at_rest(lease, EventState::Delivered, None)].into())
        .await
        .unwrap();
    client
        .execute("SELECT pg_advisory_lock($1)", &[&super::schema::PRUNE_LOCK])
        .await
        .unwrap();
    assert_eq!(store.prune(now_ms() + 1, 10).await.unwrap(), 0);
    client
        .execute(
            "SELECT pg_advisory_unlock($1)",
            &[&super::schema::PRUNE_LOCK],
        )
        .await
        .unwrap();
    assert_eq!(store.prune(now_ms() + 1, 10).await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_row_that_cannot_be_read_is_corrupt_and_claims_park_it() {
    let (db, store) = fresh().await;
    store
        .insert_events(vec![
            event("default", "bad", "m", 1),
            event("default", "good", "m", 2),
        ])
        .await
        .unwrap();
    let (client, connection) = tokio_postgres::connect(db.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
        .execute(
            "UPDATE events SET type = 'teleport' WHERE event_id = 'bad'",
            &[],
        )
        .await
        .unwrap();
    match store.event(&account("default"), "bad").await {
        Err(Error::Corrupt(message)) => assert!(message.contains("teleport"), "{message}"),
        other => panic!("expected Corrupt, got {other:?}"),
    }
    let jobs = store.claim_due(later(), 10, 1000).await.unwrap();
    assert_eq!(
        jobs.iter().map(|j| j.event_id.as_str()).collect::<Vec<_>>(),
        ["good"]
    );
    let parked: String = client
        .query_one("SELECT state FROM events WHERE event_id = 'bad'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(parked, "dead");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_server_is_unavailable_and_a_closed_store_is_closed() {
    // Nothing listens on port 1: connecting fails at once.
    let err = PostgresStore::open(
        "postgres://postgres@127.0.0.1:1/nothing",
        PostgresOptions {
            connect_timeout: Duration::from_secs(2),
            ..PostgresOptions::default()
        },
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::Unavailable(_)), "{err:?}");

    let (_db, store) = fresh().await;
    store.ping().await.unwrap();
    store.close().await.unwrap();
    let acct = account("default");
    let closed = [
        store
            .insert_events(vec![event("default", "late", "m", 1)])
            .await
            .err(),
        store.claim_due(0, 10, 1000).await.err(),
        store.next_due_at().await.err(),
        store.get_settings(&acct).await.err(),
        store.message(&acct, "m").await.err(),
        store.ping().await.err(),
        store.close().await.err(),
    ];
    for (i, err) in closed.into_iter().enumerate() {
        assert!(matches!(err, Some(Error::Closed)), "call {i}: {err:?}");
    }
}

fn open_event(event_id: &str, msg_id: &str) -> NewEvent {
    let mut event = event("acme", event_id, msg_id, 1).event;
    event.event_type = EventType::Open;
    event.engagement = Some(mailhook_core::event::Engagement::detected(None));
    new_event(event)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_first_open_of_a_msg_id_is_unique_exactly_and_its_payload_says_so() {
    let (_db, store) = fresh().await;
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
}

#[tokio::test(flavor = "multi_thread")]
async fn nodes_racing_on_the_first_open_of_one_email_call_exactly_one_unique() {
    let db = TestDatabase::create().await;
    let a = Arc::new(open_as(&db, "node-a").await);
    let b = Arc::new(open_as(&db, "node-b").await);
    // 40 emails, each opened once through each node at the same moment.
    let mut racing = Vec::new();
    for m in 0..40 {
        for (node, store) in [("a", a.clone()), ("b", b.clone())] {
            racing.push(tokio::spawn(async move {
                let outcome = store
                    .insert_events(vec![open_event(&format!("{node}{m}"), &format!("m{m}"))])
                    .await
                    .unwrap();
                (m, outcome.unique[0])
            }));
        }
    }
    let mut unique_per_email = [0; 40];
    for race in racing {
        let (m, unique) = race.await.unwrap();
        unique_per_email[m] += usize::from(unique);
    }
    assert!(
        unique_per_email.iter().all(|&n| n == 1),
        "{unique_per_email:?}"
    );
}
