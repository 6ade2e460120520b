//! Security: the SSRF guard at save time and at connect time, and token kinds.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use mailhook_test_support::{Receiver, StaticResolver, TestGateway};
use serde_json::json;

use crate::{attempt_log, post, wait_state};

fn guarded(c: &mut mailhook::Config) {
    c.security.allow_private_addresses = false;
}

#[tokio::test(flavor = "multi_thread")]
async fn internal_literal_addresses_are_refused_at_save_unless_allowed() {
    let gw = TestGateway::start(guarded).await;
    let receiver = Receiver::start().await;
    let port = receiver.addr().port();
    let internal = [
        format!("http://127.0.0.1:{port}/hook"),
        format!("http://[::1]:{port}/hook"),
        format!("http://[::ffff:127.0.0.1]:{port}/hook"),
        format!("http://localhost:{port}/hook"),
        "http://10.0.0.1/hook".to_owned(),
        "http://169.254.169.254/latest/meta-data".to_owned(),
    ];
    for address in &internal {
        let answer = gw
            .api
            .put_webhook(
                "default",
                &json!({"enabled": true, "addresses": [address], "events": ["open"]}),
            )
            .await;
        assert_eq!(answer.status, 422, "{address}");
        let body = answer.json();
        assert_eq!(body["details"][0]["field"], "addresses[0]");
        assert!(
            body["details"][0]["message"]
                .as_str()
                .unwrap()
                .contains("allow_private_addresses"),
            "{body}"
        );
    }
    assert_eq!(receiver.count(), 0);

    let mut gw = gw;
    gw.restart(|c| {
        guarded(c);
        c.security.allowed_cidrs = vec!["127.0.0.0/8".parse().unwrap()];
    })
    .await;
    let answer = gw
        .api
        .put_webhook(
            "default",
            &json!({"enabled": true, "addresses": [receiver.url()], "events": ["open"]}),
        )
        .await;
    assert_eq!(answer.status, 200, "an allow-listed range is accepted");
    post(&gw.api, json!({"type": "open", "msg_id": "allowed"})).await;
    wait_state(&gw.api, "default", "allowed", "delivered").await;
    assert_eq!(receiver.count(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_name_that_resolves_to_an_internal_ip_is_refused_without_connecting() {
    let receiver = Receiver::start().await;
    let resolver = StaticResolver(HashMap::from([(
        "rebind.test".to_owned(),
        vec!["127.0.0.1".parse().unwrap()],
    )]));
    let gw = TestGateway::start_with_resolver(guarded, Arc::new(resolver)).await;
    let address = format!("http://rebind.test:{}/hook", receiver.addr().port());
    let answer = gw
        .api
        .put_webhook(
            "default",
            &json!({"enabled": true, "addresses": [address], "events": ["click"]}),
        )
        .await;
    assert_eq!(
        answer.status, 200,
        "a name passes the save; it is checked at every connect"
    );
    post(&gw.api, json!({"type": "click", "msg_id": "rebind"})).await;
    let event = wait_state(&gw.api, "default", "rebind", "dead").await;
    assert_eq!(
        attempt_log(&event),
        vec![("primary".to_owned(), None)],
        "refused once, not retried against the same IP"
    );
    let error = event["attempts"][0]["error"].as_str().unwrap();
    assert!(
        error.contains("SSRF guard") && error.contains("127.0.0.1"),
        "{error}"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(receiver.count(), 0, "no connection was made");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_literal_saved_before_the_guard_was_on_is_refused_at_connect_time() {
    let receiver = Receiver::start().await;
    let mut gw = TestGateway::start(|_| {}).await;
    let answer = gw
        .api
        .put_webhook(
            "default",
            &json!({"enabled": true, "addresses": [receiver.url()], "events": ["send"]}),
        )
        .await;
    assert_eq!(answer.status, 200);
    gw.restart(guarded).await;
    post(&gw.api, json!({"type": "send", "msg_id": "literal"})).await;
    let event = wait_state(&gw.api, "default", "literal", "dead").await;
    assert!(
        event["attempts"][0]["error"]
            .as_str()
            .unwrap()
            .contains("loopback"),
        "{event}"
    );
    assert_eq!(receiver.count(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn after_rotation_both_secrets_sign_during_the_grace_period_then_only_the_new_one() {
    let gw =
        TestGateway::start(|c| c.signing.secret_rotation_grace = Duration::from_millis(1500)).await;
    let receiver = Receiver::start().await;
    let saved = gw
        .api
        .put_webhook(
            "default",
            &json!({"enabled": true, "addresses": [receiver.url()], "events": ["open"]}),
        )
        .await;
    let old = saved.json()["secret"].as_str().unwrap().to_owned();
    let rotated = gw
        .api
        .admin(
            http::Method::POST,
            "/v1/accounts/default/webhook/secret/rotate",
            None,
        )
        .await
        .json();
    let new = rotated["secret"].as_str().unwrap().to_owned();
    assert_ne!(old, new);

    let verifies = |request: &mailhook_test_support::Recorded, secret: &str| {
        let mut headers = http::HeaderMap::new();
        for name in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
            headers.insert(name, request.header(name).unwrap().parse().unwrap());
        }
        standardwebhooks::Webhook::new(secret)
            .unwrap()
            .verify(&request.body, &headers)
            .is_ok()
    };

    post(&gw.api, json!({"type": "open", "msg_id": "during"})).await;
    let during = receiver.wait_for(1, Duration::from_secs(10)).await[0].clone();
    assert_eq!(
        during
            .header("webhook-signature")
            .unwrap()
            .split(' ')
            .count(),
        2
    );
    assert!(
        verifies(&during, &old),
        "a receiver still on the old secret accepts it"
    );
    assert!(
        verifies(&during, &new),
        "a receiver already on the new secret accepts it"
    );

    tokio::time::sleep(Duration::from_millis(1600)).await;
    post(&gw.api, json!({"type": "open", "msg_id": "after"})).await;
    let after = receiver.wait_for(2, Duration::from_secs(10)).await[1].clone();
    assert_eq!(
        after
            .header("webhook-signature")
            .unwrap()
            .split(' ')
            .count(),
        1
    );
    assert!(verifies(&after, &new));
    assert!(
        !verifies(&after, &old),
        "the old secret no longer signs after its grace period"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_and_secrets_never_appear_in_the_log() {
    use http::Method;
    let receiver = Receiver::start().await;
    let failing = Receiver::start().await;
    failing.set_default(mailhook_test_support::Reply::status(500));
    let mut gw = mailhook_test_support::GatewayProcess::start_logged(|c| {
        c.log.level = "debug".to_owned();
        c.delivery.retries_per_address = 0;
    })
    .await;
    let api = gw.api.clone();
    let saved = api
        .put_webhook("default", &json!({"enabled": true, "addresses": [failing.url(), receiver.url()], "events": ["delivery", "open"]}))
        .await
        .json();
    let first_secret = saved["secret"].as_str().unwrap().to_owned();
    let second_secret = api
        .admin(
            Method::POST,
            "/v1/accounts/default/webhook/secret/rotate",
            None,
        )
        .await
        .json()["secret"]
        .as_str()
        .unwrap()
        .to_owned();
    post(
        &api,
        json!([{"type": "delivery", "msg_id": "log-1"}, {"type": "open", "msg_id": "log-2"}]),
    )
    .await;
    receiver.wait_for(2, Duration::from_secs(10)).await;
    // Refused requests log too: wrong token, wrong kind, bad settings.
    api.send(
        Method::POST,
        "/v1/events",
        Some("not-the-token-at-all"),
        Some("application/json"),
        "{}",
    )
    .await;
    api.send(
        Method::GET,
        "/v1/accounts/default/webhook",
        Some(&api.intake_token),
        None,
        "",
    )
    .await;
    api.put_webhook(
        "default",
        &json!({"enabled": true, "addresses": ["ftp://x"], "events": []}),
    )
    .await;
    api.message("default", "log-1").await;
    gw.terminate(Duration::from_secs(20)).await;

    let log = gw.log();
    assert!(
        log.contains("webhook settings saved"),
        "the log was captured: {log}"
    );
    let signatures: Vec<String> = receiver
        .requests()
        .iter()
        .map(|r| r.header("webhook-signature").unwrap().to_owned())
        .collect();
    let mut secrets = vec![
        api.intake_token.clone(),
        api.admin_token.clone(),
        first_secret.clone(),
        second_secret.clone(),
    ];
    // The key without its prefix, in case something logs the decoded form's base64.
    secrets.push(first_secret.trim_start_matches("whsec_").to_owned());
    secrets.push(second_secret.trim_start_matches("whsec_").to_owned());
    for signature in &signatures {
        secrets.extend(
            signature
                .split(' ')
                .map(|s| s.trim_start_matches("v1,").to_owned()),
        );
    }
    for secret in &secrets {
        assert!(
            !log.contains(secret.as_str()),
            "the log contains a secret: {secret}"
        );
    }
}
