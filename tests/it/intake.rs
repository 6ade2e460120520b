//! Intake: all-or-nothing batches with field errors, idempotency, and the refusals (401,
//! 413, 415) a mail system can get.

use std::time::Duration;

use http::Method;
use mailhook_test_support::{Receiver, TestGateway};
use serde_json::json;

use crate::{configure, post};

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_with_one_bad_event_is_rejected_whole_with_index_and_field() {
    let gw = TestGateway::start(|_| {}).await;
    let answer = gw
        .api
        .post_events(&json!([
            {"type": "delivery", "msg_id": "good-1"},
            {"type": "delivery", "msg_id": "good-2"},
            {"type": "delivery", "msg_id": "good-3"},
            {"type": "deliverd", "msg_id": "bad-4"},
        ]))
        .await;
    assert_eq!(answer.status, 400);
    let body = answer.json();
    assert_eq!(body["details"][0]["index"], 3);
    assert_eq!(body["details"][0]["field"], "type");
    assert!(
        body["details"][0]["message"]
            .as_str()
            .unwrap()
            .contains("deliverd"),
        "{body}"
    );
    assert_eq!(body["details"].as_array().unwrap().len(), 1);
    for msg_id in ["good-1", "good-2", "good-3"] {
        assert_eq!(
            gw.api.message("default", msg_id).await.status,
            404,
            "{msg_id} must not be stored"
        );
    }

    let answer = gw
        .api
        .post_events(&json!({"type": "open", "msg_id": "m", "colour": "red"}))
        .await;
    assert_eq!(answer.status, 400);
    assert_eq!(answer.json()["details"][0]["field"], "colour");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_duplicate_event_id_is_stored_and_pushed_once() {
    let gw = TestGateway::start(|_| {}).await;
    let receiver = Receiver::start().await;
    configure(&gw.api, "default", &[&receiver], &["delivery"]).await;
    let event = json!({"type": "delivery", "msg_id": "dup", "event_id": "evt-1"});

    let first = gw.api.post_events(&event).await.json();
    assert_eq!(
        (first["accepted"].as_u64(), first["duplicates"].as_u64()),
        (Some(1), Some(0))
    );
    receiver.wait_for(1, Duration::from_secs(10)).await;
    let again = gw.api.post_events(&json!([event, event])).await.json();
    assert_eq!(
        (again["accepted"].as_u64(), again["duplicates"].as_u64()),
        (Some(0), Some(2))
    );
    assert_eq!(again["event_ids"], json!(["evt-1", "evt-1"]));

    // A duplicate within one new batch also counts once.
    let fresh = json!({"type": "delivery", "msg_id": "dup", "event_id": "evt-2"});
    let batch = gw.api.post_events(&json!([fresh, fresh])).await.json();
    assert_eq!(
        (batch["accepted"].as_u64(), batch["duplicates"].as_u64()),
        (Some(1), Some(1))
    );

    receiver.wait_for(2, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ids: Vec<String> = receiver
        .requests()
        .iter()
        .map(|r| r.header("webhook-id").unwrap().to_owned())
        .collect();
    assert_eq!(
        ids,
        vec!["evt-1", "evt-2"],
        "each event pushed exactly once"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn refusals_oversized_body_missing_token_wrong_content_type() {
    let gw = TestGateway::start(|c| c.limits.body_bytes_max = 4096).await;
    let big = json!({"type": "open", "msg_id": "m", "status": {"pad": "x".repeat(5000)}});
    let answer = gw.api.post_events(&big).await;
    assert_eq!(answer.status, 413);
    assert!(answer.json()["error"].as_str().unwrap().contains("4096"));

    let body = json!({"type": "open", "msg_id": "m"}).to_string();
    let answer = gw
        .api
        .send(
            Method::POST,
            "/v1/events",
            None,
            Some("application/json"),
            body.clone(),
        )
        .await;
    assert_eq!(answer.status, 401);
    assert!(
        answer.json()["error"]
            .as_str()
            .unwrap()
            .contains("Authorization")
    );
    let answer = gw
        .api
        .send(
            Method::POST,
            "/v1/events",
            Some("wrong-token-xxxxxxxx"),
            Some("application/json"),
            body.clone(),
        )
        .await;
    assert_eq!(answer.status, 401);
    let answer = gw
        .api
        .send(
            Method::POST,
            "/v1/events",
            Some(&gw.api.admin_token),
            Some("application/json"),
            body.clone(),
        )
        .await;
    assert_eq!(answer.status, 403, "an admin token is not an intake token");

    let answer = gw
        .api
        .send(
            Method::POST,
            "/v1/events",
            Some(&gw.api.intake_token),
            Some("text/plain"),
            body.clone(),
        )
        .await;
    assert_eq!(answer.status, 415);
    assert!(
        answer.json()["error"]
            .as_str()
            .unwrap()
            .contains("text/plain")
    );

    let answer = gw
        .api
        .send(
            Method::POST,
            "/v1/events",
            Some(&gw.api.intake_token),
            Some("application/json"),
            "{nope",
        )
        .await;
    assert_eq!(answer.status, 400);
    assert!(answer.json()["error"].as_str().unwrap().contains("JSON"));

    // Nothing of the above was stored.
    assert_eq!(gw.api.message("default", "m").await.status, 404);
    assert_eq!(
        post(&gw.api, json!({"type": "open", "msg_id": "m"}))
            .await
            .len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn health_and_readiness() {
    let gw = TestGateway::start(|_| {}).await;
    let answer = gw.api.send(Method::GET, "/healthz", None, None, "").await;
    assert_eq!(answer.status, 200);
    let answer = gw.api.send(Method::GET, "/readyz", None, None, "").await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.json()["status"], "ready");
}
