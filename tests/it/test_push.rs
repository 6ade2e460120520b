//! The "Simulate Send Test" endpoint: a sample event pushed through the real failover chain,
//! in the format and with the signing of a real event of its type; its limits and errors;
//! and the overview's counts (`GET /v1/stats`).

use std::time::Duration;

use http::Method;
use mailhook_test_support::{Receiver, Recorded, Reply, TestGateway};
use serde_json::{Value, json};

use crate::{configure, post, wait_state};

async fn test_push(gw: &TestGateway, account: &str, body: Option<&Value>) -> (u16, Value) {
    let answer = gw
        .api
        .admin(
            Method::POST,
            &format!("/v1/accounts/{account}/webhook/test"),
            body,
        )
        .await;
    (answer.status.as_u16(), answer.json())
}

fn verify(secret: &str, request: &Recorded) {
    let mut headers = http::HeaderMap::new();
    for name in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
        headers.insert(name, request.header(name).unwrap().parse().unwrap());
    }
    standardwebhooks::Webhook::new(secret)
        .unwrap()
        .verify(&request.body, &headers)
        .expect("signature verifies");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_test_push_fails_over_to_the_backup_even_with_push_off_and_reports_every_attempt() {
    let gw = TestGateway::start(|_| {}).await;
    let primary = Receiver::start().await;
    let backup = Receiver::start().await;
    primary.set_default(Reply::status(503));
    // Push off, no type subscribed: a test push goes out anyway.
    let answer = gw
        .api
        .put_webhook(
            "acme",
            &json!({"enabled": false, "addresses": [primary.url(), backup.url()], "events": []}),
        )
        .await;
    assert_eq!(answer.status, 200);
    let secret = answer.json()["secret"].as_str().unwrap().to_owned();

    let (status, result) = test_push(&gw, "acme", Some(&json!({"type": "bounce"}))).await;
    assert_eq!(status, 200, "{result:#}");
    assert_eq!(result["delivered"], true, "{result:#}");
    assert_eq!(result["timed_out"], false);
    assert_eq!(result["state"], "delivered");
    assert_eq!(result["address"], "backup-1");
    assert_eq!(result["url"], backup.url());
    assert_eq!(result["type"], "bounce");
    assert!(result["msg_id"].as_str().unwrap().starts_with("test-"));
    let attempts = result["attempts"].as_array().unwrap();
    let log: Vec<(&str, Option<u64>)> = attempts
        .iter()
        .map(|a| (a["address"].as_str().unwrap(), a["status"].as_u64()))
        .collect();
    let mut expected = vec![("primary", Some(503)); 4];
    expected.push(("backup-1", Some(200)));
    assert_eq!(
        log, expected,
        "1 attempt + 3 retries on the primary, then the backup"
    );
    assert!(attempts[0]["error"].as_str().unwrap().contains("503"));
    assert_eq!(attempts[0]["url"], primary.url());
    assert!(attempts[4]["error"].is_null());
    assert!(attempts.iter().all(|a| a["duration_ms"].is_u64()));

    // What the backup got is exactly what the answer says was sent.
    let got = backup.wait_for(1, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 1);
    let request = &got[0];
    assert_eq!(
        request.body,
        serde_json::to_vec(&result["payload"]).unwrap()
    );
    assert_eq!(result["payload"]["test"], true);
    assert_eq!(result["payload"]["type"], "bounce");
    assert_eq!(result["payload"]["event_id"], result["event_id"]);
    assert_eq!(result["payload"]["status"]["class"], "hard");
    let headers = result["headers"].as_object().unwrap();
    let names: Vec<&str> = headers.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "content-type",
            "user-agent",
            "webhook-id",
            "webhook-timestamp",
            "webhook-signature",
            "mailhook-attempt",
            "mailhook-address"
        ]
    );
    for (name, value) in headers {
        assert_eq!(request.header(name), value.as_str(), "header {name}");
    }
    assert_eq!(headers["mailhook-attempt"], "5");
    verify(&secret, request);
    assert_eq!(primary.count(), 4);

    // The test event is on record like any other, marked as a test.
    let event = wait_state(
        &gw.api,
        "acme",
        result["msg_id"].as_str().unwrap(),
        "delivered",
    )
    .await;
    assert_eq!(event["test"], true);
    assert_eq!(event["attempts"].as_array().unwrap().len(), 5);
}

/// What a mail system would post for each type, with the contract's usual keys.
fn real_event(event_type: &str, msg_id: &str) -> Value {
    let status = match event_type {
        "send" => json!({"result": "success", "code": 250, "message": "queued as 9A1B2C"}),
        "delivery" => json!({"smtp_code": 250, "response": "250 OK", "mx_host": "mx.example.net"}),
        "open" => json!({"ip": "198.51.100.7", "user_agent": "Mozilla/5.0 (Macintosh)"}),
        "click" => {
            json!({"url": "https://shop.example/x", "ip": "198.51.100.7", "user_agent": "Mozilla/5.0"})
        }
        "bounce" => {
            json!({"class": "soft", "smtp_code": 452, "enhanced_code": "4.2.2", "diagnostic": "mailbox full"})
        }
        "complaint" => json!({"feedback_type": "abuse"}),
        other => panic!("no sample for {other}"),
    };
    json!({
        "type": event_type, "msg_id": msg_id, "account": "acme",
        "email": {"subject": "Hello", "from": "news@shop.example", "to": "bo@example.org",
                  "tags": ["welcome"], "metadata": {"user_id": "42"}},
        "status": status,
    })
}

/// The shape of a JSON value: object keys in order (recursively), and the kind of each leaf.
/// `metadata` is the sender's own object, passed through: only its kind counts.
fn shape(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Array(
            map.iter()
                .map(|(k, v)| match (k.as_str(), v) {
                    ("metadata", Value::Object(_)) => json!([k, "object"]),
                    _ => json!([k, shape(v)]),
                })
                .collect(),
        ),
        Value::Array(items) => json!(["array", items.first().map(shape)]),
        Value::String(_) => json!("string"),
        Value::Number(_) => json!("number"),
        Value::Bool(_) => json!("bool"),
        Value::Null => json!("null"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_test_push_has_the_format_and_signing_of_a_real_event_of_its_type() {
    let gw = TestGateway::start(|_| {}).await;
    let receiver = Receiver::start().await;
    let all = ["send", "delivery", "open", "click", "bounce", "complaint"];
    let settings = configure(&gw.api, "acme", &[&receiver], &all).await;
    let secret = settings["secret"].as_str().unwrap().to_owned();
    let fixed = [
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
        "mailhook-attempt",
        "mailhook-address",
        "content-type",
        "user-agent",
    ];

    for (i, event_type) in all.iter().enumerate() {
        post(
            &gw.api,
            real_event(event_type, &format!("real-{event_type}")),
        )
        .await;
        let real = receiver.wait_for(2 * i + 1, Duration::from_secs(10)).await[2 * i].clone();
        let (status, result) = test_push(&gw, "acme", Some(&json!({"type": event_type}))).await;
        assert_eq!(
            (status, &result["delivered"]),
            (200, &json!(true)),
            "{result:#}"
        );
        let test = receiver.requests()[2 * i + 1].clone();

        let (real_body, test_body) = (real.json(), test.json());
        assert_eq!(real_body["test"], false);
        assert_eq!(test_body["test"], true);
        assert_eq!(test_body["type"], *event_type);
        // Same fields, in the same order, of the same kinds, all the way down.
        assert_eq!(
            shape(&real_body),
            shape(&test_body),
            "{event_type}: {real_body} vs {test_body}"
        );
        // Same headers, and both verify with the account's secret.
        for name in fixed {
            assert!(
                real.header(name).is_some() && test.header(name).is_some(),
                "{event_type}: {name}"
            );
        }
        assert_eq!(real.header("content-type"), test.header("content-type"));
        assert_eq!(real.header("user-agent"), test.header("user-agent"));
        assert_eq!(test.header("webhook-id"), test_body["event_id"].as_str());
        verify(&secret, &real);
        verify(&secret, &test);
        assert!(
            test_body["email"]["subject"]
                .as_str()
                .is_some_and(|s| !s.is_empty())
                && test_body["email"]["to"]
                    .as_str()
                    .is_some_and(|s| s.contains('@')),
            "a realistic sample: {test_body}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_test_push_needs_an_address_and_a_known_type() {
    let gw = TestGateway::start(|_| {}).await;
    let (status, error) = test_push(&gw, "nobody", None).await;
    assert_eq!(status, 422, "{error}");
    assert_eq!(error["details"][0]["field"], "addresses");

    let receiver = Receiver::start().await;
    configure(&gw.api, "acme", &[&receiver], &["delivery"]).await;
    let (status, error) = test_push(&gw, "acme", Some(&json!({"type": "opened"}))).await;
    assert_eq!(status, 422, "{error}");
    assert_eq!(error["details"][0]["field"], "type");
    assert!(error["error"].as_str().unwrap().contains("opened"));
    let (status, error) = test_push(&gw, "acme", Some(&json!({"type": "open", "to": "x"}))).await;
    assert_eq!(status, 400, "{error}");
    assert_eq!(error["details"][0]["field"], "to");
    let answer = gw
        .api
        .send(
            Method::POST,
            "/v1/accounts/acme/webhook/test",
            None,
            None,
            "",
        )
        .await;
    assert_eq!(answer.status, 401);
    assert_eq!(receiver.count(), 0, "nothing was pushed");

    // No body at all: a delivery event.
    let (status, result) = test_push(&gw, "acme", None).await;
    assert_eq!(status, 200, "{result}");
    assert_eq!(result["payload"]["type"], "delivery");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_test_push_that_outlasts_the_timeout_answers_with_what_happened_so_far() {
    let gw = TestGateway::start(|c| {
        c.delivery.test_timeout = Duration::from_millis(1500);
        c.delivery.attempt_timeout = Duration::from_millis(300);
        // A real backoff: after the first failure the next try is due long after the answer.
        c.delivery.retry_backoff = vec![Duration::from_secs(30)];
    })
    .await;
    let primary = Receiver::start().await;
    primary.set_default(Reply::Hang);
    configure(&gw.api, "acme", &[&primary], &["delivery"]).await;

    let started = std::time::Instant::now();
    let (status, result) = test_push(&gw, "acme", Some(&json!({"type": "click"}))).await;
    let waited = started.elapsed();
    assert_eq!(status, 200, "{result}");
    assert_eq!(result["timed_out"], true, "{result:#}");
    assert_eq!(result["delivered"], false);
    assert_eq!(result["state"], "pending");
    assert!(
        waited >= Duration::from_millis(1500) && waited < Duration::from_secs(10),
        "{waited:?}"
    );
    let attempts = result["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 1, "{result:#}");
    assert!(attempts[0]["error"].as_str().unwrap().contains("timed out"));
    assert!(result["next_attempt_at"].is_string(), "{result:#}");
    assert_eq!(result["payload"]["type"], "click");
    assert_eq!(result["payload"]["test"], true);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_overview_counts_events_by_type_and_state_and_keeps_tests_apart() {
    let gw = TestGateway::start(|_| {}).await;
    let receiver = Receiver::start().await;
    configure(&gw.api, "acme", &[&receiver], &["delivery"]).await;
    post(
        &gw.api,
        json!([
            {"type": "delivery", "msg_id": "s1", "account": "acme"},
            {"type": "delivery", "msg_id": "s2", "account": "acme"},
            {"type": "open", "msg_id": "s3", "account": "acme"},
            {"type": "delivery", "msg_id": "elsewhere", "account": "other"},
        ]),
    )
    .await;
    wait_state(&gw.api, "acme", "s1", "delivered").await;
    wait_state(&gw.api, "acme", "s2", "delivered").await;
    wait_state(&gw.api, "acme", "s3", "skipped").await;
    let (status, _) = test_push(&gw, "acme", None).await;
    assert_eq!(status, 200);

    let answer = gw
        .api
        .admin(Method::GET, "/v1/stats?account=acme", None)
        .await;
    assert_eq!(answer.status, 200);
    let stats = answer.json();
    let row = |t: &str| {
        stats["types"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["type"] == t)
            .unwrap()
            .clone()
    };
    assert_eq!(stats["types"].as_array().unwrap().len(), 6);
    assert_eq!(
        (
            row("delivery")["received"].as_u64(),
            row("delivery")["delivered"].as_u64()
        ),
        (Some(2), Some(2))
    );
    assert_eq!(row("open")["skipped"], 1);
    assert_eq!(stats["totals"]["received"], 3, "{stats:#}");
    assert_eq!(stats["tests"]["delivered"], 1);
    assert_eq!(stats["failures"], 0);
    assert!(stats["queue_depth"].is_u64() && stats["queue"]["depth"].is_u64());

    let all = gw.api.admin(Method::GET, "/v1/stats", None).await.json();
    assert_eq!(all["totals"]["received"], 4);
    let bad = gw
        .api
        .admin(Method::GET, "/v1/stats?account=no%20spaces", None)
        .await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json()["details"][0]["field"], "account");
    let anonymous = gw.api.send(Method::GET, "/v1/stats", None, None, "").await;
    assert_eq!(anonymous.status, 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_console_is_served_without_a_token_with_security_headers() {
    let gw = TestGateway::start(|_| {}).await;
    let root = gw.api.send(Method::GET, "/", None, None, "").await;
    assert_eq!(root.status, 302);
    assert_eq!(root.headers["location"], "/console/");
    let page = gw.api.send(Method::GET, "/console/", None, None, "").await;
    assert_eq!(page.status, 200);
    assert!(
        page.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(String::from_utf8_lossy(&page.body).contains("Simulate Send Test"));
    let csp = page.headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("default-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert_eq!(page.headers["x-content-type-options"], "nosniff");
    let script = gw
        .api
        .send(Method::GET, "/console/app.js", None, None, "")
        .await;
    assert_eq!(script.status, 200);
    assert!(
        script.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
    let missing = gw
        .api
        .send(Method::GET, "/console/secrets.txt", None, None, "")
        .await;
    assert_eq!(missing.status, 404);
    assert!(
        missing.json()["error"]
            .as_str()
            .unwrap()
            .contains("secrets.txt")
    );
}
