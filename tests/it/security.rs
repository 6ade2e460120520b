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
