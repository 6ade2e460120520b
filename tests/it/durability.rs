//! Durability with the real binary: what got a 202 survives `kill -9`, and SIGTERM stops
//! intake, finishes or releases deliveries, and loses nothing.

use std::collections::HashSet;
use std::time::Duration;

use mailhook_test_support::{GatewayProcess, Receiver, Reply};
use serde_json::{Value, json};

use crate::{configure, post};

fn batch(prefix: &str, n: usize) -> Value {
    Value::Array(
        (0..n)
            .map(|i| json!({"type": "delivery", "msg_id": format!("{prefix}-{i}")}))
            .collect(),
    )
}

/// Distinct webhook-ids the receiver has seen.
fn received_ids(receiver: &Receiver) -> HashSet<String> {
    receiver
        .requests()
        .iter()
        .map(|r| r.header("webhook-id").unwrap().to_owned())
        .collect()
}

/// Waits until `earlier` and what the receiver got since cover `expected`.
async fn wait_delivered(
    receiver: &Receiver,
    earlier: &HashSet<String>,
    expected: &HashSet<String>,
    timeout: Duration,
) {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let got: HashSet<String> = received_ids(receiver).union(earlier).cloned().collect();
        if expected.is_subset(&got) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {} accepted events delivered within {timeout:?}",
            expected.intersection(&got).count(),
            expected.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn accepted_events_survive_kill_9_right_after_the_202() {
    let receiver = Receiver::start().await;
    // The receiver holds every request, so at the kill the events are accepted and some
    // are in flight: neither delivered nor forgotten.
    receiver.set_default(Reply::delay(Duration::from_secs(30), Reply::ok()));
    let mut gw =
        GatewayProcess::start(|c| c.delivery.attempt_timeout = Duration::from_secs(20)).await;
    configure(&gw.api, "default", &[&receiver], &["delivery"]).await;

    let mut accepted = HashSet::new();
    for round in 0..3 {
        accepted.extend(post(&gw.api, batch(&format!("k{round}"), 40)).await);
    }
    gw.kill9().await;
    assert_eq!(accepted.len(), 120);

    // Whatever reached the receiver before the kill was never answered: only what arrives
    // after the restart counts.
    receiver.clear();
    receiver.set_default(Reply::ok());
    gw.spawn().await;
    wait_delivered(
        &receiver,
        &HashSet::new(),
        &accepted,
        Duration::from_secs(30),
    )
    .await;
    gw.terminate(Duration::from_secs(20)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_stops_intake_finishes_or_releases_deliveries_and_loses_nothing() {
    let receiver = Receiver::start().await;
    receiver.set_default(Reply::delay(Duration::from_millis(400), Reply::ok()));
    let mut gw = GatewayProcess::start(|c| {
        c.shutdown.grace = Duration::from_millis(1500);
        c.delivery.concurrency = 4;
    })
    .await;
    configure(&gw.api, "default", &[&receiver], &["delivery"]).await;
    let accepted: HashSet<String> = post(&gw.api, batch("t", 30)).await.into_iter().collect();

    tokio::time::sleep(Duration::from_millis(200)).await;
    gw.send_sigterm();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // New events are no longer taken: the listener is closed.
    let refused = gw
        .api
        .try_post_events(&json!({"type": "delivery", "msg_id": "late"}))
        .await;
    assert!(
        !matches!(refused, Ok(ref a) if a.status == 202),
        "intake after SIGTERM must not accept: {refused:?}"
    );
    let code = gw.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(code, Some(0), "clean exit");
    let before_restart = received_ids(&receiver);
    assert!(
        !before_restart.is_empty(),
        "deliveries went on until the shutdown"
    );
    assert!(
        before_restart.len() < accepted.len(),
        "the rest was released, not rushed: {}",
        before_restart.len()
    );
    receiver.clear();

    gw.spawn().await;
    wait_delivered(
        &receiver,
        &before_restart,
        &accepted,
        Duration::from_secs(30),
    )
    .await;
    gw.terminate(Duration::from_secs(20)).await;
    // Deliveries that finished during the grace period were recorded as delivered and are
    // not sent again; the released ones are.
    let after_restart = received_ids(&receiver);
    assert!(
        after_restart.len() < accepted.len(),
        "finished deliveries were recorded before exit; resent after restart: {} of {}",
        after_restart.len(),
        accepted.len()
    );
}
