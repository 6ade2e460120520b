//! Retention, on whichever store the run uses: delivered and skipped events are pruned once
//! they have been at rest longer than `store.retention`; failed and dead ones are kept.

use std::time::Duration;

use mailhook_test_support::{Receiver, Reply, TestGateway};
use serde_json::json;

use crate::{configure, post, wait_state};

#[tokio::test(flavor = "multi_thread")]
async fn delivered_and_skipped_events_are_pruned_after_the_retention_and_failures_are_kept() {
    let gw = TestGateway::start(|c| {
        c.store.retention = Duration::from_millis(1500);
        c.store.prune_interval = Duration::from_millis(200);
        c.store.prune_batch_max = 2;
        c.delivery.retries_per_address = 0;
    })
    .await;
    let receiver = Receiver::start().await;
    configure(&gw.api, "default", &[&receiver], &["delivery", "bounce"]).await;
    // Three delivered (more than one batch of 2), one skipped, one dead.
    post(
        &gw.api,
        json!([
            {"type": "delivery", "msg_id": "kept-short-1"},
            {"type": "delivery", "msg_id": "kept-short-2"},
            {"type": "delivery", "msg_id": "kept-short-3"},
            {"type": "open", "msg_id": "skipped"},
        ]),
    )
    .await;
    for msg in ["kept-short-1", "kept-short-2", "kept-short-3"] {
        wait_state(&gw.api, "default", msg, "delivered").await;
    }
    wait_state(&gw.api, "default", "skipped", "skipped").await;
    receiver.set_default(Reply::status(500));
    post(&gw.api, json!({"type": "bounce", "msg_id": "failing"})).await;
    wait_state(&gw.api, "default", "failing", "dead").await;

    // Still there well within the retention.
    assert_eq!(gw.api.message("default", "kept-short-1").await.status, 200);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    for msg in ["kept-short-1", "kept-short-2", "kept-short-3", "skipped"] {
        while gw.api.message("default", msg).await.status != 404 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{msg} was not pruned after the retention"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let dead = gw.api.message("default", "failing").await;
    assert_eq!(dead.status, 200, "a dead event is kept for replay");
    assert_eq!(dead.json()["events"][0]["state"], "dead");
}
