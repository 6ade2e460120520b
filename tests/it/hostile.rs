//! Hostile receivers: each way a receiver can misbehave (errors, throttling, 410, redirects,
//! bodies that never end, trickle, are huge or are cut by a reset, a wrong HTTP version, a TLS
//! handshake that stalls) gets the treatment README "What a receiver gets" and SECURITY.md
//! document, and a slow address never holds up deliveries to another one.

use std::time::Duration;

use mailhook_test_support::{Receiver, Reply, TestGateway};
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::metrics::{sample, scrape};
use crate::{attempt_log, configure, post, wait_state};

/// The response bytes the gateway reads in these tests (`delivery.response_bytes_max`).
const RESPONSE_BYTES_MAX: usize = 64 * 1024;

/// A gateway whose retries are quick and whose breaker never opens (one event's treatment
/// is under test, not the breaker's).
async fn gateway(tweak: impl FnOnce(&mut mailhook::Config)) -> TestGateway {
    TestGateway::start(|c| {
        c.delivery.attempt_timeout = Duration::from_millis(1000);
        c.delivery.retry_backoff = vec![Duration::from_millis(20)];
        c.delivery.circuit_failure_threshold = 1000;
        c.delivery.response_bytes_max = RESPONSE_BYTES_MAX;
        tweak(c);
    })
    .await
}

/// Pushes one `delivery` event for `msg` through `primary` then `backup`; the event once
/// delivered.
async fn deliver_one(gw: &TestGateway, primary: &Receiver, backup: &Receiver, msg: &str) -> Value {
    configure(&gw.api, "default", &[primary, backup], &["delivery"]).await;
    post(&gw.api, json!({"type": "delivery", "msg_id": msg})).await;
    wait_state(&gw.api, "default", msg, "delivered").await
}

fn attempt_error(event: &Value, i: usize) -> String {
    event["attempts"][i]["error"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn attempt_ms(event: &Value, i: usize) -> u64 {
    event["attempts"][i]["duration_ms"].as_u64().unwrap()
}

fn primary(status: Option<u64>) -> (String, Option<u64>) {
    ("primary".to_owned(), status)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_5xx_is_retried_on_the_same_address() {
    let gw = gateway(|_| {}).await;
    let (first, backup) = (Receiver::start_raw().await, Receiver::start().await);
    first.script([Reply::status(500), Reply::status(502)]);
    let event = deliver_one(&gw, &first, &backup, "five").await;
    assert_eq!(
        attempt_log(&event),
        [primary(Some(500)), primary(Some(502)), primary(Some(200))]
    );
    assert_eq!(backup.count(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn retry_after_on_429_and_503_is_honoured_up_to_retry_after_max() {
    let gw = gateway(|c| c.delivery.retry_after_max = Duration::from_millis(1500)).await;
    let (first, backup) = (Receiver::start_raw().await, Receiver::start().await);
    // Asks for an hour, then for one second in an HTTP-date far in the past (= at once).
    first.script([
        Reply::retry_after(429, "3600"),
        Reply::retry_after(503, "Wed, 21 Oct 2015 07:28:00 GMT"),
    ]);
    let event = deliver_one(&gw, &first, &backup, "throttled").await;
    assert_eq!(
        attempt_log(&event),
        [primary(Some(429)), primary(Some(503)), primary(Some(200))]
    );
    let got = first.requests();
    let capped = got[1].at - got[0].at;
    assert!(
        capped >= Duration::from_millis(1400) && capped < Duration::from_secs(10),
        "an hour's Retry-After waited retry_after_max (1.5 s), not the 20 ms backoff nor an hour: {capped:?}"
    );
    let past = got[2].at - got[1].at;
    assert!(
        past < Duration::from_millis(1400),
        "a Retry-After date in the past waits only the backoff: {past:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_410_moves_on_to_the_next_address_without_retries() {
    let gw = gateway(|_| {}).await;
    let (first, backup) = (Receiver::start_raw().await, Receiver::start().await);
    first.set_default(Reply::status(410));
    let event = deliver_one(&gw, &first, &backup, "gone").await;
    assert_eq!(
        attempt_log(&event),
        [primary(Some(410)), ("backup-1".to_owned(), Some(200))]
    );
    assert_eq!(first.count(), 1, "410 is not retried");
    assert!(attempt_error(&event, 0).contains("410"));
}

#[tokio::test(flavor = "multi_thread")]
async fn redirects_are_not_followed() {
    let gw = gateway(|_| {}).await;
    let (first, backup) = (Receiver::start_raw().await, Receiver::start().await);
    let elsewhere = Receiver::start().await;
    first.script([
        Reply::redirect(302, &elsewhere.url()),
        Reply::redirect(307, &elsewhere.url()),
        Reply::redirect(308, &elsewhere.url()),
    ]);
    let event = deliver_one(&gw, &first, &backup, "redirected").await;
    assert_eq!(
        attempt_log(&event),
        [
            primary(Some(302)),
            primary(Some(307)),
            primary(Some(308)),
            primary(Some(200))
        ]
    );
    assert!(
        attempt_error(&event, 0).contains("redirects are not followed"),
        "{event}"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(elsewhere.count(), 0, "the Location was never requested");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_that_never_ends_is_cut_at_response_bytes_max_and_the_status_stands() {
    let gw = gateway(|_| {}).await;
    let (first, backup) = (Receiver::start_raw().await, Receiver::start().await);
    first.push(Reply::Endless(200));
    let event = deliver_one(&gw, &first, &backup, "endless").await;
    assert_eq!(attempt_log(&event), [primary(Some(200))]);
    assert!(
        attempt_ms(&event, 0) < 1000,
        "read stopped at the limit, not at the timeout"
    );
    // The gateway dropped the connection: the receiver's writes fail soon after, having
    // filled at most the loopback socket buffers beyond what was read.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sent = first.bytes_sent();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        first.bytes_sent(),
        sent,
        "the endless body is no longer read"
    );
    assert!(sent < 32 * 1024 * 1024, "{sent} bytes sent");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_huge_body_is_read_only_up_to_response_bytes_max() {
    let gw = gateway(|_| {}).await;
    let (first, backup) = (Receiver::start_raw().await, Receiver::start().await);
    let huge = 256 * 1024 * 1024;
    first.push(Reply::HugeBody(200, huge));
    let event = deliver_one(&gw, &first, &backup, "huge").await;
    assert_eq!(attempt_log(&event), [primary(Some(200))]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sent = first.bytes_sent() as usize;
    assert!(
        sent < huge / 8,
        "the gateway stopped reading (and dropped the connection) early: {sent} of {huge} bytes sent"
    );
    // The next event still gets through on a fresh connection.
    post(&gw.api, json!({"type": "delivery", "msg_id": "after-huge"})).await;
    wait_state(&gw.api, "default", "after-huge", "delivered").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trickling_body_hits_the_attempt_timeout_and_is_retried() {
    let gw = gateway(|_| {}).await;
    let (first, backup) = (Receiver::start_raw().await, Receiver::start().await);
    first.push(Reply::Trickle(200, Duration::from_millis(50)));
    let event = deliver_one(&gw, &first, &backup, "trickle").await;
    assert_eq!(attempt_log(&event), [primary(None), primary(Some(200))]);
    assert!(
        attempt_error(&event, 0).contains("timed out"),
        "{}",
        attempt_error(&event, 0)
    );
    let took = attempt_ms(&event, 0);
    assert!(
        (950..3000).contains(&took),
        "the attempt ended at attempt_timeout (1 s): {took} ms"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reset_before_the_answer_fails_the_attempt_and_after_a_2xx_status_does_not() {
    let gw = gateway(|_| {}).await;
    let (first, backup) = (Receiver::start_raw().await, Receiver::start().await);
    first.script([
        Reply::Reset,
        Reply::ResetMidBody(500),
        Reply::ResetMidBody(200),
    ]);
    let event = deliver_one(&gw, &first, &backup, "reset").await;
    // No answer, then a 500 whose body was cut, then a 200 whose body was cut: the status
    // line is the receiver's answer, what follows it does not change it.
    assert_eq!(
        attempt_log(&event),
        [primary(None), primary(Some(500)), primary(Some(200))]
    );
    let error = attempt_error(&event, 0);
    assert!(!error.is_empty(), "{event}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_http_version_fails_the_attempt_whatever_status_it_claims() {
    let gw = gateway(|_| {}).await;
    let (first, backup) = (Receiver::start_raw().await, Receiver::start().await);
    first.script([
        Reply::WrongVersion("HTTP/2.0".to_owned()),
        Reply::WrongVersion("ICY".to_owned()),
    ]);
    let event = deliver_one(&gw, &first, &backup, "version").await;
    assert_eq!(
        attempt_log(&event),
        [primary(None), primary(None), primary(Some(200))]
    );
    for i in 0..2 {
        let error = attempt_error(&event, i);
        assert!(error.contains("request failed"), "{error}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tls_handshake_that_stalls_ends_at_the_attempt_timeout_then_fails_over() {
    let gw = gateway(|c| c.delivery.retries_per_address = 0).await;
    let stalled = Receiver::start_stalled_tls().await;
    let backup = Receiver::start().await;
    let event = deliver_one(&gw, &stalled, &backup, "stall").await;
    assert_eq!(
        attempt_log(&event),
        [primary(None), ("backup-1".to_owned(), Some(200))]
    );
    assert!(
        attempt_error(&event, 0).contains("timed out"),
        "{}",
        attempt_error(&event, 0)
    );
    assert!(stalled.connections() >= 1, "the gateway did connect");
    let took = attempt_ms(&event, 0);
    assert!((950..3000).contains(&took), "{took} ms");
}

/// With few delivery slots and two per address, `slow` gets a backlog first; then events for
/// another account's fast receiver must arrive while `slow` still holds its requests.
async fn assert_a_slow_address_does_not_hold_up_a_fast_one(slow_reply: Reply, slow_raw: bool) {
    const IN_FLIGHT_MAX: usize = 2;
    let gw = TestGateway::start(|c| {
        c.delivery.concurrency = 8;
        c.delivery.in_flight_per_address_max = IN_FLIGHT_MAX;
        c.delivery.claim_batch_max = 8;
        c.delivery.attempt_timeout = Duration::from_secs(4);
        // An attempt cut off by the timeout is retried once, after the slow address answers.
        c.delivery.retries_per_address = 1;
        c.delivery.circuit_failure_threshold = 1000;
    })
    .await;
    let slow = if slow_raw {
        Receiver::start_raw().await
    } else {
        Receiver::start().await
    };
    slow.set_default(slow_reply);
    let fast = Receiver::start().await;
    configure(&gw.api, "slow", &[&slow], &["delivery"]).await;
    configure(&gw.api, "fast", &[&fast], &["delivery"]).await;

    let backlog: Vec<Value> = (0..40)
        .map(|i| json!({"type": "delivery", "msg_id": format!("slow-{i}"), "account": "slow"}))
        .collect();
    post(&gw.api, Value::Array(backlog)).await;
    // The slow address is saturated: both of its slots hold a request it does not answer.
    slow.wait_for(IN_FLIGHT_MAX, Duration::from_secs(5)).await;

    let started = Instant::now();
    let fast_events: Vec<Value> = (0..20)
        .map(|i| json!({"type": "delivery", "msg_id": format!("fast-{i}"), "account": "fast"}))
        .collect();
    post(&gw.api, Value::Array(fast_events)).await;
    fast.wait_for(20, Duration::from_secs(3)).await;
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_secs(3),
        "fast deliveries waited {waited:?} behind the slow address"
    );
    assert_eq!(
        slow.count(),
        IN_FLIGHT_MAX,
        "never more than in_flight_per_address_max requests at once to the slow address"
    );

    // What did not fit went back to the store, and the metric says so.
    let deferred = sample(
        &scrape(&gw.api).await,
        r#"mailhook_delivery_deferrals_total{address="primary"}"#,
    );
    assert!(
        deferred >= 1.0,
        "the slow address's events were deferred, and counted: {deferred}"
    );

    // Nothing deferred is lost: once the slow address answers, every event gets there.
    slow.set_default(Reply::ok());
    for i in 0..40 {
        let event = wait_state(&gw.api, "slow", &format!("slow-{i}"), "delivered").await;
        assert_eq!(event["delivered_to"], "primary");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hanging_address_never_holds_up_another_one() {
    assert_a_slow_address_does_not_hold_up_a_fast_one(
        Reply::delay(Duration::from_secs(3), Reply::ok()),
        false,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trickling_address_never_holds_up_another_one() {
    assert_a_slow_address_does_not_hold_up_a_fast_one(
        Reply::Trickle(200, Duration::from_millis(100)),
        true,
    )
    .await;
}
