//! Delivery: the contract's body, headers and signature; the subscription filter; the
//! failover chain with retries, recovery rounds, dead events and replay; the circuit breaker.

use std::time::Duration;

use http::Method;
use mailhook_test_support::{Receiver, Reply, TestGateway};
use serde_json::json;

use crate::{attempt_log, configure, post, wait_state};

#[tokio::test(flavor = "multi_thread")]
async fn a_subscribed_event_reaches_the_primary_signed_as_the_contract_says() {
    let gw = TestGateway::start(|_| {}).await;
    let primary = Receiver::start().await;
    let backup = Receiver::start().await;
    let settings = configure(
        &gw.api,
        "acme",
        &[&primary, &backup],
        &["delivery", "bounce"],
    )
    .await;
    let secret = settings["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"));

    post(
        &gw.api,
        json!({
            "type": "delivery", "msg_id": "<m1@mail.example>", "account": "acme", "event_id": "evt-42",
            "timestamp": "2026-11-27T12:00:00.123Z",
            "email": {"subject": "Welcome", "from": "a@x.example", "to": "b@y.example", "tags": ["t"], "metadata": {"k": 1}},
            "status": {"smtp_code": 250, "response": "250 OK", "mx_host": "mx.y.example"}
        }),
    )
    .await;
    let got = primary.wait_for(1, Duration::from_secs(10)).await;
    let request = &got[0];
    assert_eq!(request.method, "POST");
    assert_eq!(request.header("content-type"), Some("application/json"));
    assert_eq!(
        request.header("user-agent"),
        Some(concat!("mailhook/", "0.0.0"))
    );
    assert_eq!(request.header("webhook-id"), Some("evt-42"));
    assert_eq!(request.header("mailhook-attempt"), Some("1"));
    assert_eq!(request.header("mailhook-address"), Some("primary"));
    let ts: i64 = request
        .header("webhook-timestamp")
        .unwrap()
        .parse()
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(
        (now - ts).abs() < 30,
        "webhook-timestamp is the attempt time"
    );
    assert_eq!(
        String::from_utf8(request.body.to_vec()).unwrap(),
        r#"{"event_id":"evt-42","type":"delivery","account":"acme","msg_id":"<m1@mail.example>","timestamp":"2026-11-27T12:00:00.123Z","test":false,"email":{"subject":"Welcome","from":"a@x.example","to":"b@y.example","tags":["t"],"metadata":{"k":1}},"status":{"smtp_code":250,"response":"250 OK","mx_host":"mx.y.example"}}"#
    );

    // An independent implementation of the Standard Webhooks check.
    let mut headers = http::HeaderMap::new();
    for name in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
        headers.insert(name, request.header(name).unwrap().parse().unwrap());
    }
    let verifier = standardwebhooks::Webhook::new(&secret).unwrap();
    verifier
        .verify(&request.body, &headers)
        .expect("signature verifies");
    let tampered = request
        .body
        .iter()
        .copied()
        .map(|b| if b == b'W' { b'V' } else { b })
        .collect::<Vec<_>>();
    assert!(
        verifier.verify(&tampered, &headers).is_err(),
        "a changed body fails the check"
    );

    assert_eq!(backup.count(), 0);
    let event = wait_state(&gw.api, "acme", "%3Cm1@mail.example%3E", "delivered").await;
    assert_eq!(event["delivered_to"], "primary");
    assert_eq!(attempt_log(&event), vec![("primary".to_owned(), Some(200))]);
}

/// `delivery.idle_connections_per_address_max = 0` keeps no connection open between
/// pushes: each one connects anew, and each is delivered.
#[tokio::test(flavor = "multi_thread")]
async fn with_no_idle_connections_kept_each_push_opens_its_own() {
    let gw = TestGateway::start(|c| c.delivery.idle_connections_per_address_max = 0).await;
    let receiver = Receiver::start().await;
    configure(&gw.api, "acme", &[&receiver], &["open"]).await;
    for n in 1..=3 {
        let event = json!({"type": "open", "msg_id": format!("m{n}"), "account": "acme", "event_id": format!("e{n}")});
        post(&gw.api, event).await;
        receiver.wait_for(n, Duration::from_secs(10)).await;
    }
    assert_eq!(receiver.connections(), 3, "three pushes, three connections");
}

/// Pushes to a plain `http` receiver go over kept-alive connections: one after another,
/// they share one. A connection the receiver closes (`connection: close`) is not used again,
/// and the next push opens a new one instead of failing.
#[tokio::test(flavor = "multi_thread")]
async fn pushes_share_a_kept_alive_connection_and_a_closed_one_is_replaced() {
    let gw = TestGateway::start(|_| {}).await;
    let receiver = Receiver::start().await;
    configure(&gw.api, "acme", &[&receiver], &["open"]).await;
    // One at a time: each push waits for the one before it to arrive.
    let push_in_turn = async |numbers: std::ops::RangeInclusive<usize>| {
        for n in numbers {
            let event = json!({"type": "open", "msg_id": format!("m{n}"), "account": "acme", "event_id": format!("e{n}")});
            post(&gw.api, event).await;
            receiver.wait_for(n, Duration::from_secs(10)).await;
        }
    };
    push_in_turn(1..=10).await;
    assert_eq!(
        receiver.connections(),
        1,
        "ten pushes in a row, one connection"
    );
    let first = &receiver.requests()[0];
    let port = receiver.addr().port();
    assert_eq!(
        first.header("host"),
        Some(format!("127.0.0.1:{port}").as_str())
    );
    assert_eq!(first.path, "/hook");

    receiver.push(Reply::StatusWithHeaders(
        200,
        vec![("connection".to_owned(), "close".to_owned())],
    ));
    push_in_turn(11..=12).await;
    assert_eq!(
        receiver.connections(),
        2,
        "a new connection after the receiver closed one"
    );
    for n in [11, 12] {
        let event = wait_state(&gw.api, "acme", &format!("m{n}"), "delivered").await;
        assert_eq!(attempt_log(&event), vec![("primary".to_owned(), Some(200))]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn unsubscribed_types_and_disabled_push_are_skipped_with_the_reason() {
    let gw = TestGateway::start(|_| {}).await;
    let receiver = Receiver::start().await;
    configure(&gw.api, "default", &[&receiver], &["delivery"]).await;
    post(&gw.api, json!({"type": "open", "msg_id": "unsub"})).await;
    let event = wait_state(&gw.api, "default", "unsub", "skipped").await;
    assert!(
        event["reason"]
            .as_str()
            .unwrap()
            .contains("`open` is not subscribed"),
        "{event}"
    );

    let answer = gw
        .api
        .put_webhook(
            "default",
            &json!({"enabled": false, "addresses": [receiver.url()], "events": ["delivery"]}),
        )
        .await;
    assert_eq!(answer.status, 200);
    post(&gw.api, json!({"type": "delivery", "msg_id": "off"})).await;
    let event = wait_state(&gw.api, "default", "off", "skipped").await;
    assert!(
        event["reason"].as_str().unwrap().contains("disabled"),
        "{event}"
    );

    post(
        &gw.api,
        json!({"type": "delivery", "msg_id": "nobody", "account": "unknown"}),
    )
    .await;
    let event = wait_state(&gw.api, "unknown", "nobody", "skipped").await;
    assert!(
        event["reason"].as_str().unwrap().contains("not configured"),
        "{event}"
    );

    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.count(), 0, "nothing was pushed");
    assert!(event["attempts"].as_array().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn failover_retries_each_address_then_moves_on_in_order() {
    let gw = TestGateway::start(|c| {
        c.delivery.attempt_timeout = Duration::from_millis(300);
        c.delivery.circuit_failure_threshold = 1000;
    })
    .await;
    let primary = Receiver::start().await;
    let backup1 = Receiver::start().await;
    let backup2 = Receiver::start().await;
    primary.set_default(Reply::status(500));
    backup1.set_default(Reply::delay(Duration::from_secs(2), Reply::ok()));
    configure(
        &gw.api,
        "default",
        &[&primary, &backup1, &backup2],
        &["bounce"],
    )
    .await;

    post(
        &gw.api,
        json!({"type": "bounce", "msg_id": "chain", "status": {"class": "hard"}}),
    )
    .await;
    let got = backup2.wait_for(1, Duration::from_secs(20)).await;
    assert_eq!(got[0].header("mailhook-address"), Some("backup-2"));
    assert_eq!(
        got[0].header("mailhook-attempt"),
        Some("9"),
        "counted over the whole chain"
    );
    assert_eq!(primary.count(), 4, "1 attempt + 3 retries on the primary");
    assert_eq!(backup1.count(), 4, "1 attempt + 3 retries on backup-1");
    let ids: Vec<_> = primary
        .requests()
        .iter()
        .chain(backup1.requests().iter())
        .map(|r| r.header("webhook-id").unwrap().to_owned())
        .collect();
    assert!(
        ids.windows(2).all(|w| w[0] == w[1]),
        "the same webhook-id on every attempt and address"
    );

    let event = wait_state(&gw.api, "default", "chain", "delivered").await;
    assert_eq!(event["delivered_to"], "backup-2");
    let mut expected = vec![("primary".to_owned(), Some(500)); 4];
    expected.extend(vec![("backup-1".to_owned(), None); 4]);
    expected.push(("backup-2".to_owned(), Some(200)));
    assert_eq!(attempt_log(&event), expected);
    let attempts = event["attempts"].as_array().unwrap();
    assert!(
        attempts[4]["error"].as_str().unwrap().contains("timed out"),
        "{}",
        attempts[4]
    );
    assert!(attempts[0]["error"].as_str().unwrap().contains("500"));
    let numbers: Vec<u64> = attempts
        .iter()
        .map(|a| a["number"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, (1..=9).collect::<Vec<u64>>());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chain_that_fails_everywhere_is_failed_then_dead_and_replay_delivers_it() {
    let gw = TestGateway::start(|c| {
        c.delivery.retries_per_address = 1;
        c.delivery.recovery_schedule = vec![Duration::from_millis(300), Duration::from_millis(300)];
        c.delivery.circuit_failure_threshold = 1000;
    })
    .await;
    let receivers = [
        Receiver::start().await,
        Receiver::start().await,
        Receiver::start().await,
    ];
    for r in &receivers {
        r.set_default(Reply::status(503));
    }
    configure(
        &gw.api,
        "default",
        &[&receivers[0], &receivers[1], &receivers[2]],
        &["complaint"],
    )
    .await;
    let ids = post(&gw.api, json!({"type": "complaint", "msg_id": "doomed"})).await;

    // First run of the chain: every address tried twice, then `failed` with a recovery round due.
    let failed = wait_state(&gw.api, "default", "doomed", "failed").await;
    assert_eq!(attempt_log(&failed).len(), 6);
    assert!(failed["next_attempt_at"].is_string());
    assert!(failed["last_error"].as_str().unwrap().contains("503"));
    let failures = gw
        .api
        .admin(Method::GET, "/v1/accounts/default/failures", None)
        .await
        .json();
    assert_eq!(failures["events"][0]["event_id"], ids[0].as_str());

    // Two recovery rounds later: dead, with every attempt kept.
    let dead = wait_state(&gw.api, "default", "doomed", "dead").await;
    assert_eq!(attempt_log(&dead).len(), 18);
    assert!(dead["next_attempt_at"].is_null());
    let total: usize = receivers.iter().map(Receiver::count).sum();
    assert_eq!(total, 18);
    let failures = gw
        .api
        .admin(Method::GET, "/v1/accounts/default/failures?limit=10", None)
        .await
        .json();
    assert_eq!(failures["events"][0]["state"], "dead");

    // A receiver is back: replay delivers it.
    receivers[1].set_default(Reply::ok());
    let answer = gw
        .api
        .admin(
            Method::POST,
            "/v1/accounts/default/failures/replay",
            Some(&json!({"event_ids": ids})),
        )
        .await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.json()["replayed"], 1);
    let delivered = wait_state(&gw.api, "default", "doomed", "delivered").await;
    assert_eq!(delivered["delivered_to"], "backup-1");
    assert_eq!(
        receivers[1]
            .requests()
            .iter()
            .filter(|r| r.replied == 200)
            .count(),
        1
    );
    let failures = gw
        .api
        .admin(Method::GET, "/v1/accounts/default/failures", None)
        .await
        .json();
    assert!(failures["events"].as_array().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn seed_behaviour_without_recovery_rounds_logs_the_failure_and_keeps_it_for_replay() {
    let gw = TestGateway::start(|c| c.delivery.retries_per_address = 0).await;
    let receiver = Receiver::start().await;
    receiver.set_default(Reply::status(500));
    configure(&gw.api, "default", &[&receiver], &["send"]).await;
    post(&gw.api, json!({"type": "send", "msg_id": "once"})).await;
    let dead = wait_state(&gw.api, "default", "once", "dead").await;
    assert_eq!(attempt_log(&dead), vec![("primary".to_owned(), Some(500))]);
    receiver.set_default(Reply::ok());
    let answer = gw
        .api
        .admin(Method::POST, "/v1/accounts/default/failures/replay", None)
        .await;
    assert_eq!(answer.json()["replayed"], 1);
    wait_state(&gw.api, "default", "once", "delivered").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_down_primary_trips_the_breaker_and_is_used_again_once_it_recovers() {
    let gw = TestGateway::start(|c| {
        c.delivery.circuit_failure_threshold = 5;
        c.delivery.circuit_cooldown = Duration::from_millis(700);
    })
    .await;
    let primary = Receiver::start().await;
    let backup = Receiver::start().await;
    configure(&gw.api, "default", &[&primary, &backup], &["delivery"]).await;
    primary.stop();

    // Event 1 pays the primary's whole budget (4 attempts): below the threshold of 5.
    post(&gw.api, json!({"type": "delivery", "msg_id": "e1"})).await;
    let e1 = wait_state(&gw.api, "default", "e1", "delivered").await;
    assert_eq!(
        attempt_log(&e1)
            .iter()
            .filter(|(a, _)| a == "primary")
            .count(),
        4
    );
    // Event 2's first failure is the fifth in a row: the circuit opens, it moves on at once.
    post(&gw.api, json!({"type": "delivery", "msg_id": "e2"})).await;
    let e2 = wait_state(&gw.api, "default", "e2", "delivered").await;
    assert_eq!(
        attempt_log(&e2)
            .iter()
            .filter(|(a, _)| a == "primary")
            .count(),
        1
    );
    // Later events skip the primary entirely.
    post(
        &gw.api,
        json!([{"type": "delivery", "msg_id": "e3"}, {"type": "delivery", "msg_id": "e4"}]),
    )
    .await;
    for msg in ["e3", "e4"] {
        let e = wait_state(&gw.api, "default", msg, "delivered").await;
        assert_eq!(
            attempt_log(&e),
            vec![("backup-1".to_owned(), Some(200))],
            "{msg} skipped the open primary"
        );
    }

    // The primary recovers; after the cool-down a probe goes to it and closes the circuit.
    primary.restart().await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    post(&gw.api, json!({"type": "delivery", "msg_id": "e5"})).await;
    let e5 = wait_state(&gw.api, "default", "e5", "delivered").await;
    assert_eq!(e5["delivered_to"], "primary");
    post(&gw.api, json!({"type": "delivery", "msg_id": "e6"})).await;
    let e6 = wait_state(&gw.api, "default", "e6", "delivered").await;
    assert_eq!(attempt_log(&e6), vec![("primary".to_owned(), Some(200))]);
    assert_eq!(backup.count(), 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn retry_after_on_429_is_honoured() {
    let gw = TestGateway::start(|_| {}).await;
    let receiver = Receiver::start().await;
    receiver.push(Reply::StatusWithHeaders(
        429,
        vec![("retry-after".into(), "1".into())],
    ));
    configure(&gw.api, "default", &[&receiver], &["click"]).await;
    post(
        &gw.api,
        json!({"type": "click", "msg_id": "slow-down", "status": {"url": "https://x.example"}}),
    )
    .await;
    let got = receiver.wait_for(2, Duration::from_secs(10)).await;
    let gap = got[1].at - got[0].at;
    assert!(
        gap >= Duration::from_millis(950),
        "second attempt waited for Retry-After (1 s), not the 20 ms backoff: {gap:?}"
    );
    wait_state(&gw.api, "default", "slow-down", "delivered").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_intake_only_node_stores_events_and_a_delivering_node_pushes_them() {
    let mut gw = TestGateway::start(|c| c.delivery.enabled = false).await;
    let primary = Receiver::start().await;
    configure(&gw.api, "acme", &[&primary], &["delivery"]).await;
    post(
        &gw.api,
        json!({
            "type": "delivery", "msg_id": "held", "account": "acme",
            "event_id": "evt-held", "timestamp": "2026-11-27T12:00:00Z",
            "email": {"to": "b@y.example"}, "status": {"smtp_code": 250}
        }),
    )
    .await;
    // Well past the idle poll (1 s): a delivering node would have pushed it by now.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        primary.requests().is_empty(),
        "a node with delivery.enabled = false pushed an event"
    );
    let held = gw.api.message("acme", "held").await.json();
    assert_eq!(held["events"][0]["state"], "pending", "{held:#}");

    // The same store with delivery on (another node, or this one reconfigured) pushes it.
    gw.restart(|_| {}).await;
    let got = primary.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(got[0].header("webhook-id"), Some("evt-held"));
    wait_state(&gw.api, "acme", "held", "delivered").await;
}
