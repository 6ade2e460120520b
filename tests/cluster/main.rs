//! Several gateway nodes (the real binary) sharing one PostgreSQL database on the local
//! server: work sharing with a node killed mid-run, settings changed through one node seen by
//! the others, and the server itself restarted under load. These always run on PostgreSQL,
//! whatever `MAILHOOK_TEST_STORE` says; `pg_restart` runs alone (see `.config/nextest.toml`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use mailhook_test_support::{GatewayProcess, Receiver, Recorded, Reply, TestDatabase};
use serde_json::{Value, json};
use tokio::time::Instant;

/// Events of the kill test; `MAILHOOK_CLUSTER_EVENTS` raises it (the figure is 30000:
/// `MAILHOOK_CLUSTER_EVENTS=30000 cargo nextest run -p mailhook-tests --test cluster`).
const EVENTS_DEFAULT: usize = 6000;
const EVENTS_ENV: &str = "MAILHOOK_CLUSTER_EVENTS";
/// How long the receiver holds each request: two deliveries of one event less than this
/// apart were in flight at the same time.
const REPLY_DELAY: Duration = Duration::from_millis(20);
/// Lease of the nodes: a killed node's work is taken over this long after its claim.
const LEASE: Duration = Duration::from_secs(3);
const BATCH: usize = 100;

fn node_config(config: &mut mailhook::Config) {
    config.delivery.lease = LEASE;
    config.delivery.attempt_timeout = Duration::from_secs(2);
    config.delivery.concurrency = 64;
    config.delivery.claim_batch_max = 64;
    config.delivery.idle_poll = Duration::from_millis(200);
    // Each node sees the whole load: the per-account intake limit is not what is tested.
    config.limits.intake_events_per_second = 1_000_000;
    config.limits.intake_burst_events = 1_000_000;
}

async fn configure(node: &GatewayProcess, receiver: &Receiver) {
    let answer = node
        .api
        .put_webhook(
            "default",
            &json!({"enabled": true, "addresses": [receiver.url()], "events": ["delivery"]}),
        )
        .await;
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
}

fn batch(prefix: &str, n: usize) -> Value {
    Value::Array(
        (0..n)
            .map(|i| json!({"type": "delivery", "msg_id": format!("{prefix}-{i}")}))
            .collect(),
    )
}

/// Posts one batch; the accepted event ids, or `None` when the node did not take it.
async fn try_post(node: &mailhook_test_support::ApiClient, events: &Value) -> Option<Vec<String>> {
    match node.try_post_events(events).await {
        Ok(answer) if answer.status == 202 => Some(
            answer.json()["event_ids"]
                .as_array()?
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
        ),
        _ => None,
    }
}

/// A direct connection to the test database, for what only the database can tell.
async fn sql(db: &TestDatabase) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(db.url(), tokio_postgres::NoTls)
        .await
        .expect("connect to the test database");
    tokio::spawn(connection);
    client
}

/// Per webhook-id, the times the receiver got it.
fn deliveries(requests: &[Recorded]) -> HashMap<String, Vec<Instant>> {
    let mut by_id: HashMap<String, Vec<Instant>> = HashMap::new();
    for request in requests {
        if let Some(id) = request.header("webhook-id") {
            by_id.entry(id.to_owned()).or_default().push(request.at);
        }
    }
    by_id
}

/// Deliveries of one event that overlapped (less than `REPLY_DELAY` apart): two nodes
/// working on it at the same time.
fn overlapping(by_id: &HashMap<String, Vec<Instant>>) -> usize {
    by_id
        .values()
        .map(|times| {
            let mut times = times.clone();
            times.sort_unstable();
            times
                .windows(2)
                .filter(|w| w[1].duration_since(w[0]) < REPLY_DELAY)
                .count()
        })
        .sum()
}

async fn wait_all_delivered(receiver: &Receiver, accepted: &HashSet<String>, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let got: HashSet<String> = deliveries(&receiver.requests()).into_keys().collect();
        let missing = accepted.difference(&got).count();
        if missing == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} of {} accepted events not delivered within {timeout:?}",
            accepted.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn three_nodes_share_the_queue_and_a_node_killed_mid_run_loses_nothing() {
    let events: usize = std::env::var(EVENTS_ENV)
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(EVENTS_DEFAULT);
    let db = Arc::new(TestDatabase::create().await);
    let receiver = Receiver::start().await;
    receiver.set_default(Reply::delay(REPLY_DELAY, Reply::ok()));
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(GatewayProcess::start_node(db.clone(), node_config).await);
    }
    configure(&nodes[0], &receiver).await;
    let apis: Vec<_> = nodes.iter().map(|n| n.api.clone()).collect();
    let killed_id = std::fs::read_to_string(nodes[1].dir.path().join("data/node_id"))
        .expect("node 1 has a node id")
        .trim()
        .to_owned();

    // Three posters, one per node; a batch a node does not take goes to the next node.
    let started = Instant::now();
    let batches = events.div_ceil(BATCH);
    let (accepted_tx, mut accepted_rx) = tokio::sync::mpsc::unbounded_channel::<Vec<String>>();
    let mut posters = Vec::new();
    for poster in 0..3 {
        let apis = apis.clone();
        let accepted_tx = accepted_tx.clone();
        posters.push(tokio::spawn(async move {
            for b in (poster..batches).step_by(3) {
                let n = BATCH.min(events - b * BATCH);
                let body = batch(&format!("b{b}"), n);
                let mut target = poster;
                let ids = loop {
                    if let Some(ids) = try_post(&apis[target], &body).await {
                        break ids;
                    }
                    target = (target + 1) % apis.len();
                    tokio::time::sleep(Duration::from_millis(5)).await;
                };
                let _ = accepted_tx.send(ids);
            }
        }));
    }
    drop(accepted_tx);

    // Halfway through intake, node 1 is killed; what it held leased is its in-flight work.
    let mut accepted = HashSet::new();
    let mut in_flight_at_kill = None;
    let client = sql(&db).await;
    while let Some(ids) = accepted_rx.recv().await {
        accepted.extend(ids);
        if in_flight_at_kill.is_none() && accepted.len() >= events / 2 {
            nodes[1].kill9().await;
            let held: i64 = client
                .query_one(
                    "SELECT count(*) FROM events WHERE leased_by = $1",
                    &[&killed_id],
                )
                .await
                .expect("count the killed node's leases")
                .get(0);
            in_flight_at_kill = Some(held as usize);
        }
    }
    for poster in posters {
        poster.await.expect("poster");
    }
    let intake_done = started.elapsed();
    assert_eq!(
        accepted.len(),
        events,
        "every event was accepted by some node"
    );
    let in_flight_at_kill = in_flight_at_kill.expect("the node was killed");

    // The survivors take over the killed node's work once its lease runs out.
    wait_all_delivered(&receiver, &accepted, Duration::from_secs(120)).await;
    let delivered_in = started.elapsed();
    let by_id = deliveries(&receiver.requests());
    let requests: usize = by_id.values().map(Vec::len).sum();
    let duplicates = requests - by_id.len();
    let overlaps = overlapping(&by_id);
    println!(
        "cluster: {events} events through 3 nodes (one killed with -9 halfway): intake {:.1} s \
         ({:.0} events/s), all delivered after {:.1} s ({:.0} events/s end to end); \
         {duplicates} duplicate deliveries, the killed node held {in_flight_at_kill} leases; \
         {overlaps} overlapping deliveries",
        intake_done.as_secs_f64(),
        events as f64 / intake_done.as_secs_f64(),
        delivered_in.as_secs_f64(),
        events as f64 / delivered_in.as_secs_f64(),
    );
    assert!(
        duplicates <= in_flight_at_kill,
        "{duplicates} duplicates, more than the {in_flight_at_kill} events the killed node held"
    );
    assert_eq!(overlaps, 0, "an event was delivered by two nodes at once");

    // The killed node comes back (its leases were taken over already) and serves again.
    nodes[1].spawn().await;
    let more: HashSet<String> = try_post(&nodes[1].api, &batch("after", 50))
        .await
        .expect("the restarted node takes events")
        .into_iter()
        .collect();
    wait_all_delivered(&receiver, &more, Duration::from_secs(30)).await;
    let stuck: i64 = client
        .query_one(
            "SELECT count(*) FROM events WHERE state <> 'delivered'",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(stuck, 0, "every event is recorded as delivered");
    for node in &mut nodes {
        node.terminate(Duration::from_secs(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn settings_saved_through_one_node_take_effect_on_the_others_within_a_second() {
    let db = Arc::new(TestDatabase::create().await);
    let before = Receiver::start().await;
    let after = Receiver::start().await;
    // Node b alone first: it delivers an event, so it has the settings cached.
    let mut b = GatewayProcess::start_node(db.clone(), node_config).await;
    configure(&b, &before).await;
    try_post(&b.api, &batch("warm", 1)).await.expect("accepted");
    before.wait_for(1, Duration::from_secs(10)).await;

    // Node a saves new settings and leaves, so every event after is delivered by node b:
    // node a's own cache was dropped by the save, node b's expires (settings_ttl, 1 s).
    let mut a = GatewayProcess::start_node(db.clone(), node_config).await;
    configure(&a, &after).await;
    let saved = Instant::now();
    a.terminate(Duration::from_secs(20)).await;
    // Events posted through node b from 1.1 s after the save all go to the new address; the
    // first one that does shows when node b switched.
    let mut switched = None;
    let mut late = 0;
    while saved.elapsed() < Duration::from_millis(2500) {
        let at = saved.elapsed();
        let ids = try_post(&b.api, &batch(&format!("t{}", at.as_millis()), 1))
            .await
            .expect("accepted");
        let id = ids[0].clone();
        let deadline = Instant::now() + Duration::from_secs(5);
        let went_to_after = loop {
            if after
                .requests()
                .iter()
                .any(|r| r.header("webhook-id") == Some(&id))
            {
                break true;
            }
            if before
                .requests()
                .iter()
                .any(|r| r.header("webhook-id") == Some(&id))
            {
                break false;
            }
            assert!(Instant::now() < deadline, "event {id} was not delivered");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        if went_to_after {
            switched.get_or_insert(at);
        } else if at >= Duration::from_millis(1100) {
            late += 1;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let switched = switched.expect("node b used the new settings");
    println!("settings saved on node a were used by node b after {switched:?}");
    assert_eq!(
        late, 0,
        "events posted after the TTL went to the old address"
    );
    assert!(
        before.count() > 1,
        "node b used its cached settings until they expired"
    );
    b.terminate(Duration::from_secs(20)).await;
}

/// The major version directory of the local cluster (`/etc/postgresql/<version>`).
fn cluster_version() -> String {
    std::fs::read_dir("/etc/postgresql")
        .expect("/etc/postgresql lists the local cluster")
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .max()
        .expect("one cluster version")
}

#[tokio::test(flavor = "multi_thread")]
async fn pg_restart_under_load_the_gateway_recovers_by_itself_and_loses_nothing() {
    let db = Arc::new(TestDatabase::create().await);
    let receiver = Receiver::start().await;
    let mut node = GatewayProcess::start_node(db.clone(), |c| {
        node_config(c);
        c.store.connect_timeout = Duration::from_secs(2);
    })
    .await;
    configure(&node, &receiver).await;
    let api = node.api.clone();

    // A steady trickle of batches, through the restart and after it.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let poster = {
        let api = api.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut accepted = HashSet::new();
            let mut refused = 0usize;
            let mut retry_after = true;
            let mut b = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                match api.try_post_events(&batch(&format!("r{b}"), 10)).await {
                    Ok(answer) if answer.status == 202 => {
                        accepted.extend(
                            answer.json()["event_ids"]
                                .as_array()
                                .unwrap()
                                .iter()
                                .map(|v| v.as_str().unwrap().to_owned()),
                        );
                    }
                    Ok(answer) => {
                        assert_eq!(
                            answer.status,
                            503,
                            "{}",
                            String::from_utf8_lossy(&answer.body)
                        );
                        retry_after &= answer.headers.contains_key("retry-after");
                        refused += 1;
                    }
                    Err(err) => panic!("intake must answer, even while the store is down: {err}"),
                }
                b += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (accepted, refused, retry_after)
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;

    let restarting = Instant::now();
    let status = tokio::process::Command::new("pg_ctlcluster")
        .args([
            "--skip-systemctl-redirect",
            &cluster_version(),
            "main",
            "restart",
        ])
        .status()
        .await
        .expect("run pg_ctlcluster");
    assert!(status.success(), "pg_ctlcluster restart: {status}");
    let restarted = restarting.elapsed();

    // Ready again by itself, and taking events again.
    let deadline = Instant::now() + Duration::from_secs(30);
    let ready_after = loop {
        let answer = api.send(http::Method::GET, "/readyz", None, None, "").await;
        if answer.status == 200 {
            break restarting.elapsed();
        }
        assert!(Instant::now() < deadline, "/readyz not back within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let after_restart = try_post(&api, &batch("after-restart", 10))
        .await
        .expect("intake takes events again");
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (mut accepted, refused, retry_after) = poster.await.expect("poster");
    accepted.extend(after_restart);
    assert!(retry_after, "every 503 carried Retry-After");

    wait_all_delivered(&receiver, &accepted, Duration::from_secs(60)).await;
    println!(
        "pg restart: pg_ctlcluster took {:.1} s; /readyz 200 again {:.1} s after it began; \
         {refused} intake requests refused with 503 meanwhile; all {} accepted events delivered",
        restarted.as_secs_f64(),
        ready_after.as_secs_f64(),
        accepted.len()
    );
    node.terminate(Duration::from_secs(20)).await;
}
