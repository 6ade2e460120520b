//! End-to-end tests: the gateway (in-process or the real binary) on 127.0.0.1 with a real
//! SQLite file, real HTTP receivers scripted to fail, and nothing mocked.

mod console;
mod delivery;
mod disk_full;
mod durability;
mod hostile;
mod intake;
mod limits;
mod metrics;
mod openapi;
mod plugins;
mod readme;
mod retention;
mod security;
mod settings;
mod store_faults;
mod test_push;
mod tls;

use std::time::Duration;

use mailhook_test_support::{ApiClient, Receiver};
use serde_json::{Value, json};

/// Saves settings for `account` and checks they were accepted.
async fn configure(
    api: &ApiClient,
    account: &str,
    receivers: &[&Receiver],
    events: &[&str],
) -> Value {
    let addresses: Vec<String> = receivers.iter().map(|r| r.url()).collect();
    let answer = api
        .put_webhook(
            account,
            &json!({"enabled": true, "addresses": addresses, "events": events}),
        )
        .await;
    assert_eq!(
        answer.status,
        200,
        "settings saved: {}",
        String::from_utf8_lossy(&answer.body)
    );
    answer.json()
}

/// Posts events and checks they were accepted; returns the event ids.
async fn post(api: &ApiClient, events: Value) -> Vec<String> {
    let answer = api.post_events(&events).await;
    assert_eq!(
        answer.status,
        202,
        "accepted: {}",
        String::from_utf8_lossy(&answer.body)
    );
    answer.json()["event_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

/// The message lookup once its one event reached `state`.
async fn wait_state(api: &ApiClient, account: &str, msg_id: &str, state: &str) -> Value {
    let event = api
        .wait_message(account, msg_id, Duration::from_secs(20), |m| {
            m["events"].as_array().is_some_and(|events| {
                events.iter().all(|e| e["state"] == state) && !events.is_empty()
            })
        })
        .await;
    event["events"][0].clone()
}

/// `(address, status)` of each attempt, in order.
fn attempt_log(event: &Value) -> Vec<(String, Option<u64>)> {
    event["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["address"].as_str().unwrap().to_owned(),
                a["status"].as_u64(),
            )
        })
        .collect()
}
