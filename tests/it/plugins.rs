//! WASM plugins, built from source by `cargo xtask plugins` and loaded by the real gateway:
//! each example plugin changes what a real receiver gets as its README says; hostile
//! plugins fail only their own calls, with the right outcome metric, while other events
//! flow and the gateway's memory stays bounded; sinks fail over both ways; a plugin file
//! replaced under load changes the output without losing or duplicating an event.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::Method;
use mailhook_plugin_host::{Kind, PluginSpec, Policy};
use mailhook_test_support::plugins::{plugin, plugin_file, use_plugins};
use mailhook_test_support::{Receiver, Reply, TestGateway};
use serde_json::{Value, json};

use crate::metrics::{sample, scrape};
use crate::{attempt_log, configure, post, wait_state};

fn with_config(mut spec: PluginSpec, config: Value) -> PluginSpec {
    spec.config = config.as_object().expect("a JSON object").clone();
    spec
}

fn calls(text: &str, plugin: &str, outcome: &str) -> f64 {
    sample(
        text,
        &format!(r#"mailhook_plugin_calls_total{{plugin="{plugin}",outcome="{outcome}"}}"#),
    )
}

/// Checks the Standard Webhooks signature of a request against the account's secret.
fn verify(secret: &str, request: &mailhook_test_support::Recorded) {
    let mut headers = http::HeaderMap::new();
    for name in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
        headers.insert(name, request.header(name).unwrap().parse().unwrap());
    }
    standardwebhooks::Webhook::new(secret)
        .unwrap()
        .verify(&request.body, &headers)
        .expect("the transformed body is what was signed");
}

#[tokio::test(flavor = "multi_thread")]
async fn uspeedo_format_reshapes_the_payload_into_the_uspeedo_envelope() {
    let gw = TestGateway::start(|c| {
        use_plugins(
            c,
            vec![plugin("uspeedo", "uspeedo-format", Kind::Transform)],
            &[("default", &["uspeedo"])],
        )
    })
    .await;
    let receiver = Receiver::start().await;
    let settings = configure(&gw.api, "default", &[&receiver], &["delivery", "click"]).await;
    post(
        &gw.api,
        json!({"type": "delivery", "msg_id": "<u1@mail.example>", "event_id": "evt-u1",
               "timestamp": "2026-11-27T12:00:00.123Z",
               "email": {"to": "ana@example.com", "subject": "Welcome"},
               "status": {"smtp_code": 250, "response": "250 2.0.0 OK"}}),
    )
    .await;
    let got = receiver.wait_for(1, Duration::from_secs(20)).await;
    assert_eq!(
        got[0].json(),
        json!({"MsgType": 2, "Data": [{
            "SessionNo": "evt-u1", "MsgId": "<u1@mail.example>", "Event": "deliver",
            "ReceiptTime": "2026-11-27 12:00:00", "ReceiptResult": "success",
            "ReceiptCode": 250, "ReceiptDesc": "250 2.0.0 OK",
            "RecipientEmail": "ana@example.com", "Domain": "example.com"
        }]})
    );
    assert_eq!(got[0].header("webhook-id"), Some("evt-u1"));
    verify(settings["secret"].as_str().unwrap(), &got[0]);

    post(
        &gw.api,
        json!({"type": "click", "msg_id": "<u1@mail.example>", "event_id": "evt-u2",
               "email": {"to": "ana@example.com"},
               "status": {"url": "https://shop.example/sale", "ip": "198.51.100.7",
                          "user_agent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36"}}),
    )
    .await;
    let got = receiver.wait_for(2, Duration::from_secs(20)).await;
    let data = &got[1].json()["Data"][0];
    assert_eq!(data["Event"], "click");
    assert_eq!(data["ClickedURL"], "https://shop.example/sale");
    assert_eq!(data["Browser"], "Chrome");
    assert_eq!(data["OS"], "Windows");
    assert_eq!(data["IP"], "198.51.100.7");
}

#[tokio::test(flavor = "multi_thread")]
async fn redact_recipient_masks_recipients_and_ips_before_signing() {
    let gw = TestGateway::start(|c| {
        use_plugins(
            c,
            vec![
                plugin("redact", "redact-recipient", Kind::Transform),
                with_config(
                    plugin("redact-hash", "redact-recipient", Kind::Transform),
                    json!({"mode": "hash", "salt": "pepper", "fields": ["/email/to"]}),
                ),
            ],
            &[("default", &["redact"]), ("hashed", &["redact-hash"])],
        )
    })
    .await;
    let receiver = Receiver::start().await;
    let settings = configure(&gw.api, "default", &[&receiver], &["open"]).await;
    post(
        &gw.api,
        json!({"type": "open", "msg_id": "r1", "email": {"to": "Ana Lima <ana@example.com>", "from": "news@shop.example"},
               "status": {"ip": "198.51.100.77", "user_agent": "Mozilla/5.0"}}),
    )
    .await;
    let got = receiver.wait_for(1, Duration::from_secs(20)).await;
    let body = got[0].json();
    assert_eq!(body["email"]["to"], "a***@example.com");
    assert_eq!(body["email"]["from"], "news@shop.example");
    assert_eq!(body["status"]["ip"], "198.51.100.0");
    assert_eq!(body["msg_id"], "r1");
    verify(settings["secret"].as_str().unwrap(), &got[0]);

    let hashed = Receiver::start().await;
    configure(&gw.api, "hashed", &[&hashed], &["open"]).await;
    post(
        &gw.api,
        json!({"type": "open", "account": "hashed", "msg_id": "r2", "email": {"to": "ANA@example.com"},
               "status": {"ip": "198.51.100.77"}}),
    )
    .await;
    let body = hashed.wait_for(1, Duration::from_secs(20)).await[0].json();
    let to = body["email"]["to"].as_str().unwrap();
    assert!(to.starts_with("sha256:") && to.len() == 7 + 64, "{to}");
    assert_eq!(
        body["status"]["ip"], "198.51.100.77",
        "only the fields named are touched"
    );

    // A recipient given twice (intake keeps `email` as it came): masking one of the two
    // would leave the other for a receiver whose parser takes it, so the call fails and,
    // fail_closed, nothing is pushed.
    let raw = r#"{"type": "open", "msg_id": "r3", "email": {"to": "ana@example.com", "to": "bob@example.com"}}"#;
    let answer = gw.api.post_events_raw(raw).await;
    assert_eq!(
        answer.status,
        202,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    let event = wait_state(&gw.api, "default", "r3", "dead").await;
    let error = event["last_error"].as_str().unwrap();
    assert!(error.contains("twice"), "{error}");
    assert_eq!(receiver.count(), 1, "nothing unredacted was pushed");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_call_finds_the_plugin_memory_as_a_fresh_instance_has_it() {
    // One plugin thread, so every call reuses the same pool slot, memory and all: what one
    // call wrote must be gone before the next (the reset only rewrites the pages a call
    // dirtied when the kernel can say which, so this checks that it finds them all).
    let gw = TestGateway::start(|c| {
        use_plugins(
            c,
            vec![PluginSpec {
                // Reading and writing 1 MiB a byte at a time takes more than the default.
                fuel: Some(1_000_000_000),
                ..plugin("witness", "memory-witness", Kind::Transform)
            }],
            &[("default", &["witness"])],
        );
        c.plugins.threads = 1;
    })
    .await;
    let receiver = Receiver::start().await;
    configure(&gw.api, "default", &[&receiver], &["delivery"]).await;
    const EVENTS: usize = 30;
    let batch: Vec<Value> = (0..EVENTS)
        .map(|i| json!({"type": "delivery", "msg_id": format!("w-{i}")}))
        .collect();
    post(&gw.api, Value::Array(batch)).await;
    for i in 0..EVENTS {
        wait_state(&gw.api, "default", &format!("w-{i}"), "delivered").await;
    }
    let got = receiver.requests();
    assert_eq!(got.len(), EVENTS);
    for request in &got {
        assert_eq!(
            request.json()["witness"],
            json!({"calls": 1, "static_clean": true, "heap_clean": true}),
            "{}",
            request.json()["msg_id"]
        );
    }
}

/// Whether `needle` occurs in `haystack`.
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

#[test]
fn sdk_plugins_are_components_that_import_only_the_host_interface() {
    // Built for wasm32-unknown-unknown, a plugin's component is its module and mailhook's
    // two host functions: every call instantiates it, and a wasm32-wasip2 build brings the
    // WASI adapter and a few dozen WASI imports along. A component's import names are plain
    // text in the file, so a `wasi:` anywhere in it is one of those imports.
    for name in [
        "redact-recipient",
        "uspeedo-format",
        "tag-filter",
        "slack-sink",
    ] {
        let bytes = std::fs::read(plugin_file(name)).unwrap();
        assert!(
            bytes.starts_with(b"\0asm\x0d\0\x01\0"),
            "{name} is not a component (linked without wasm-component-ld?)"
        );
        assert!(contains(&bytes, b"mailhook:plugin/host@0.1.0"), "{name}");
        assert!(!contains(&bytes, b"wasi:"), "{name} imports WASI");
    }
    // The hostile plugins that reach for the system are built for wasm32-wasip2, where Rust's
    // standard library imports WASI's files and sockets: what the hostile test refuses.
    let files = std::fs::read(plugin_file("wasi-files")).unwrap();
    assert!(contains(&files, b"wasi:filesystem/"));
    let sockets = std::fs::read(plugin_file("wasi-sockets")).unwrap();
    assert!(contains(&sockets, b"wasi:sockets/"));
}

#[tokio::test(flavor = "multi_thread")]
async fn tag_filter_drops_unmatched_events_as_skipped() {
    let gw = TestGateway::start(|c| {
        use_plugins(
            c,
            vec![with_config(
                plugin("tag-filter", "tag-filter", Kind::Transform),
                json!({"any": ["welcome"], "none": ["internal"]}),
            )],
            &[("default", &["tag-filter"])],
        )
    })
    .await;
    let receiver = Receiver::start().await;
    configure(&gw.api, "default", &[&receiver], &["delivery"]).await;
    post(
        &gw.api,
        json!([
            {"type": "delivery", "msg_id": "t-keep", "email": {"tags": ["welcome", "eu"]}},
            {"type": "delivery", "msg_id": "t-promo", "email": {"tags": ["promo"]}},
            {"type": "delivery", "msg_id": "t-internal", "email": {"tags": ["welcome", "internal"]}},
        ]),
    )
    .await;
    let dropped = wait_state(&gw.api, "default", "t-promo", "skipped").await;
    assert_eq!(
        dropped["reason"],
        r#"dropped by plugin tag-filter: tags ["promo"] have none of ["welcome"]"#
    );
    assert!(dropped["attempts"].as_array().unwrap().is_empty());
    let internal = wait_state(&gw.api, "default", "t-internal", "skipped").await;
    assert_eq!(
        internal["reason"],
        "dropped by plugin tag-filter: tag `internal` is excluded"
    );
    wait_state(&gw.api, "default", "t-keep", "delivered").await;
    let got = receiver.requests();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].json()["msg_id"], "t-keep");
    assert_eq!(
        got[0].json()["email"],
        json!({"tags": ["welcome", "eu"]}),
        "kept events pass unchanged"
    );
    assert_eq!(calls(&scrape(&gw.api).await, "tag-filter", "dropped"), 2.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn slack_sink_posts_bounces_and_complaints_as_an_address_of_the_chain() {
    let slack = Receiver::start().await;
    let slack_url = slack.url();
    let gw = TestGateway::start(move |c| {
        use_plugins(
            c,
            vec![with_config(
                plugin("slack-sink", "slack-sink", Kind::Sink),
                json!({"webhook_url": slack_url, "channel": "#mail-alerts"}),
            )],
            &[],
        )
    })
    .await;
    let answer = gw
        .api
        .put_webhook(
            "default",
            &json!({"enabled": true, "addresses": ["plugin:slack-sink"], "events": ["bounce", "complaint", "delivery"]}),
        )
        .await;
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    post(
        &gw.api,
        json!([
            {"type": "bounce", "msg_id": "s1", "email": {"to": "ana@example.com", "subject": "Welcome"},
             "status": {"class": "hard", "smtp_code": 550, "diagnostic": "5.1.1 user unknown"}},
            {"type": "complaint", "msg_id": "s2", "email": {"to": "bob@example.com"}, "status": {"feedback_type": "abuse"}},
            {"type": "delivery", "msg_id": "s3", "email": {"to": "cy@example.com"}},
        ]),
    )
    .await;
    for msg in ["s1", "s2", "s3"] {
        let event = wait_state(&gw.api, "default", msg, "delivered").await;
        assert_eq!(event["delivered_to"], "primary");
        assert_eq!(event["attempts"][0]["url"], "plugin:slack-sink");
    }
    let mut texts: Vec<String> = slack
        .requests()
        .iter()
        .map(|r| {
            assert_eq!(r.header("content-type"), Some("application/json"));
            assert_eq!(r.json()["channel"], "#mail-alerts");
            r.json()["text"].as_str().unwrap().to_owned()
        })
        .collect();
    texts.sort();
    assert_eq!(
        texts,
        vec![
            ":rotating_light: complaint (abuse) from bob@example.com (account default, MsgId s2)".to_owned(),
            ":warning: hard bounce for ana@example.com \"Welcome\" (account default, MsgId s1) 550: 5.1.1 user unknown".to_owned(),
        ],
        "deliveries are accepted by the sink and not posted"
    );

    // A sink is validated like any address: an unknown one is refused at save time.
    let answer = gw
        .api
        .put_webhook(
            "default",
            &json!({"enabled": true, "addresses": ["plugin:nope"], "events": ["bounce"]}),
        )
        .await;
    assert_eq!(answer.status, 422);
    assert_eq!(answer.json()["details"][0]["field"], "addresses[0]");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_sink_primary_falls_over_to_the_http_backup_and_the_reverse() {
    let slack = Receiver::start().await;
    let slack_url = slack.url();
    let gw = TestGateway::start(move |c| {
        c.delivery.retries_per_address = 1;
        use_plugins(
            c,
            vec![
                with_config(
                    plugin("slack-sink", "slack-sink", Kind::Sink),
                    json!({"webhook_url": slack_url}),
                ),
                // A sink that fails in the plugin itself: its config lacks webhook_url.
                plugin("broken-sink", "slack-sink", Kind::Sink),
            ],
            &[],
        )
    })
    .await;
    let backup = Receiver::start().await;
    let primary = Receiver::start().await;
    primary.set_default(Reply::status(500));

    // The sink as primary: its target answers 500, then the plugin itself fails.
    slack.set_default(Reply::status(500));
    let set =
        |addresses: Value| json!({"enabled": true, "addresses": addresses, "events": ["bounce"]});
    let answer = gw
        .api
        .put_webhook("default", &set(json!(["plugin:slack-sink", backup.url()])))
        .await;
    assert_eq!(answer.status, 200);
    post(
        &gw.api,
        json!({"type": "bounce", "msg_id": "f1", "email": {"to": "a@x.example"}}),
    )
    .await;
    let event = wait_state(&gw.api, "default", "f1", "delivered").await;
    assert_eq!(event["delivered_to"], "backup-1");
    assert_eq!(
        attempt_log(&event),
        vec![
            ("primary".to_owned(), Some(500)),
            ("primary".to_owned(), Some(500)),
            ("backup-1".to_owned(), Some(200)),
        ]
    );
    assert!(
        event["attempts"][0]["error"]
            .as_str()
            .unwrap()
            .starts_with("plugin slack-sink: request to its target failed: receiver answered 500"),
        "{event:#}"
    );
    assert_eq!(
        slack.count(),
        2,
        "the sink's request was made once per attempt"
    );
    assert_eq!(backup.requests()[0].json()["msg_id"], "f1");

    let answer = gw
        .api
        .put_webhook("default", &set(json!(["plugin:broken-sink", backup.url()])))
        .await;
    assert_eq!(answer.status, 200);
    post(&gw.api, json!({"type": "bounce", "msg_id": "f2"})).await;
    let event = wait_state(&gw.api, "default", "f2", "delivered").await;
    assert_eq!(event["delivered_to"], "backup-1");
    let error = event["attempts"][0]["error"].as_str().unwrap();
    assert!(
        error.starts_with("plugin broken-sink failed (error): invalid plugin config")
            && error.contains("webhook_url"),
        "{error}"
    );

    // The reverse: an HTTP primary that fails, the sink as backup.
    slack.set_default(Reply::ok());
    let answer = gw
        .api
        .put_webhook("default", &set(json!([primary.url(), "plugin:slack-sink"])))
        .await;
    assert_eq!(answer.status, 200);
    post(
        &gw.api,
        json!({"type": "bounce", "msg_id": "f3", "email": {"to": "c@x.example"}}),
    )
    .await;
    let event = wait_state(&gw.api, "default", "f3", "delivered").await;
    assert_eq!(event["delivered_to"], "backup-1");
    assert_eq!(
        attempt_log(&event),
        vec![
            ("primary".to_owned(), Some(500)),
            ("primary".to_owned(), Some(500)),
            ("backup-1".to_owned(), Some(200)),
        ]
    );
    assert_eq!(event["attempts"][2]["url"], "plugin:slack-sink");
    let last = slack.requests().pop().unwrap().json();
    assert!(
        last["text"].as_str().unwrap().contains("MsgId f3"),
        "{last}"
    );
    let metrics = scrape(&gw.api).await;
    assert_eq!(
        sample(
            &metrics,
            r#"mailhook_delivery_attempts_total{address="primary",result="plugin_error"}"#
        ),
        2.0
    );
}

/// `VmRSS` of this process (the in-process gateway), in bytes.
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .and_then(|kib| kib.trim().parse().ok())
        .expect("a VmRSS line");
    kib * 1024
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_plugins_fail_only_their_own_calls_and_memory_stays_bounded() {
    // Each hostile plugin is one account's transform; `good` has a healthy transform.
    let hostile: [(&str, &str, &str); 7] = [
        ("spin", "spin", "timeout"),
        ("spin-fuel", "spin", "out_of_fuel"),
        ("memory-bomb", "memory-bomb", "out_of_memory"),
        ("trap", "trap", "trap"),
        ("huge-output", "huge-output", "too_large"),
        ("wasi-files", "wasi-files", "unavailable"),
        ("wasi-sockets", "wasi-sockets", "unavailable"),
    ];
    let gw = TestGateway::start(|c| {
        let mut plugins: Vec<PluginSpec> = hostile
            .iter()
            .map(|(name, file, _)| plugin(name, file, Kind::Transform))
            .collect();
        // Enough fuel to spin past the time limit: `spin` must be stopped by the clock, and
        // `memory-bomb` (which fills every page it gets) by its memory cap.
        plugins[0].fuel = Some(1_000_000_000_000);
        plugins[2].fuel = Some(1_000_000_000_000);
        plugins[2].timeout = Some(Duration::from_secs(2));
        // And `huge-output` must get as far as returning its 1 MiB.
        plugins[4].fuel = Some(1_000_000_000_000);
        plugins[4].timeout = Some(Duration::from_secs(2));
        plugins.push(plugin("stamp", "stamp-a", Kind::Transform));
        let chains: Vec<(String, Vec<&str>)> = hostile
            .iter()
            .map(|(name, _, _)| (name.to_string(), vec![*name]))
            .chain([("good".to_owned(), vec!["stamp"])])
            .collect();
        let chains: Vec<(&str, &[&str])> = chains
            .iter()
            .map(|(a, c)| (a.as_str(), c.as_slice()))
            .collect();
        use_plugins(c, plugins, &chains);
        c.plugins.failures_before_suspend = 0;
        c.delivery.concurrency = 64;
    })
    .await;
    let status = gw.gateway().plugins().expect("plugins configured").status();
    for name in ["wasi-files", "wasi-sockets"] {
        let plugin = status.iter().find(|s| s.name == name).unwrap();
        assert_eq!(plugin.loaded_sha256, None);
        let error = plugin.error.as_deref().unwrap();
        assert!(
            error.contains("wasi:filesystem/") || error.contains("wasi:sockets/"),
            "{name} must be refused for importing WASI files or sockets: {error}"
        );
    }

    let receiver = Receiver::start().await;
    for (account, _, _) in &hostile {
        configure(&gw.api, account, &[&receiver], &["delivery"]).await;
    }
    configure(&gw.api, "good", &[&receiver], &["delivery"]).await;

    // A warm-up round, then the burst the memory is measured over.
    let rss_before = rss_bytes();
    const ROUNDS: usize = 6;
    const GOOD_PER_ROUND: usize = 20;
    for round in 0..ROUNDS {
        let mut batch = Vec::new();
        for (account, _, _) in &hostile {
            batch.push(json!({"type": "delivery", "account": account, "msg_id": format!("{account}-{round}")}));
        }
        for i in 0..GOOD_PER_ROUND {
            batch.push(json!({"type": "delivery", "account": "good", "msg_id": format!("good-{round}-{i}")}));
        }
        post(&gw.api, Value::Array(batch)).await;
    }
    // Every good event arrives, transformed, while the hostile ones fail around them.
    let got = receiver
        .wait_for(ROUNDS * GOOD_PER_ROUND, Duration::from_secs(60))
        .await;
    assert!(
        got.iter()
            .all(|r| r.json()["stamp"] == "a" && r.json()["account"] == "good")
    );
    for (account, _, outcome) in &hostile {
        for round in 0..ROUNDS {
            let event = wait_state(&gw.api, account, &format!("{account}-{round}"), "dead").await;
            let error = event["last_error"].as_str().unwrap();
            assert!(
                error.starts_with(&format!("plugin {account} failed ({outcome})")),
                "{account}: {error}"
            );
            assert!(
                event["attempts"].as_array().unwrap().is_empty(),
                "never pushed"
            );
        }
    }
    let rss_after = rss_bytes();
    let metrics = scrape(&gw.api).await;
    for (name, _, outcome) in &hostile {
        assert_eq!(
            calls(&metrics, name, outcome),
            ROUNDS as f64,
            "{name} {outcome}"
        );
        assert_eq!(calls(&metrics, name, "ok"), 0.0, "{name}");
    }
    assert_eq!(
        calls(&metrics, "stamp", "ok"),
        (ROUNDS * GOOD_PER_ROUND) as f64
    );
    // Six memory bombs of 32 MiB each, spins and 1 MiB outputs went through: the growth
    // stays within the pool's few instances, not the sum of what the plugins asked for.
    let grown = rss_after.saturating_sub(rss_before);
    assert!(
        grown < 160 * 1024 * 1024,
        "RSS grew by {} MiB (from {} MiB)",
        grown / (1024 * 1024),
        rss_before / (1024 * 1024)
    );
    assert!(
        receiver.requests().len() == ROUNDS * GOOD_PER_ROUND,
        "hostile events are never pushed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn failure_policies_and_suspension() {
    let gw = TestGateway::start(|c| {
        let mut open = plugin("trap-open", "trap", Kind::Transform);
        open.policy = Policy::FailOpen;
        use_plugins(
            c,
            vec![open, plugin("trap-closed", "trap", Kind::Transform)],
            &[("open", &["trap-open"]), ("closed", &["trap-closed"])],
        );
        c.plugins.failures_before_suspend = 3;
    })
    .await;
    let receiver = Receiver::start().await;
    configure(&gw.api, "open", &[&receiver], &["delivery"]).await;
    configure(&gw.api, "closed", &[&receiver], &["delivery"]).await;

    // fail_open: the untransformed payload is pushed.
    post(
        &gw.api,
        json!({"type": "delivery", "account": "open", "msg_id": "o1", "event_id": "o1"}),
    )
    .await;
    let got = receiver.wait_for(1, Duration::from_secs(20)).await;
    let body = got[0].json();
    assert_eq!(
        (body["event_id"].as_str(), body["account"].as_str()),
        (Some("o1"), Some("open"))
    );

    // fail_closed: not pushed, dead (no recovery rounds in tests) with the plugin's error;
    // after 3 failures in a row the plugin is suspended and its calls fail at once.
    for i in 0..5 {
        post(
            &gw.api,
            json!({"type": "delivery", "account": "closed", "msg_id": format!("c{i}")}),
        )
        .await;
        let event = wait_state(&gw.api, "closed", &format!("c{i}"), "dead").await;
        let error = event["last_error"].as_str().unwrap().to_owned();
        let expected = if i < 3 {
            "plugin trap-closed failed (trap)"
        } else {
            "plugin trap-closed failed (suspended)"
        };
        assert!(error.starts_with(expected), "event {i}: {error}");
    }
    let metrics = scrape(&gw.api).await;
    assert_eq!(calls(&metrics, "trap-closed", "trap"), 3.0);
    assert_eq!(calls(&metrics, "trap-closed", "suspended"), 2.0);
    assert_eq!(
        sample(
            &metrics,
            r#"mailhook_plugin_suspensions_total{plugin="trap-closed"}"#
        ),
        1.0
    );
    assert_eq!(sample(&metrics, "mailhook_plugins_suspended"), 1.0);
    assert_eq!(receiver.count(), 1);

    // Replayable: a failed event is kept and queued again on request.
    let answer = gw
        .api
        .admin(
            Method::POST,
            "/v1/accounts/closed/failures/replay",
            Some(&json!({})),
        )
        .await;
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn replacing_a_plugin_file_under_load_changes_the_output_without_losing_or_duplicating_events()
 {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("stamp.wasm");
    std::fs::copy(plugin_file("stamp-a"), &live).unwrap();
    let live_path = live.clone();
    let gw = TestGateway::start(move |c| {
        let mut stamp = plugin("stamp", "stamp-a", Kind::Transform);
        stamp.file = live_path;
        use_plugins(c, vec![stamp], &[("default", &["stamp"])]);
    })
    .await;
    let receiver = Receiver::start().await;
    configure(&gw.api, "default", &[&receiver], &["delivery"]).await;

    // A steady load: batches of 10 every 20 ms, in the background, until the new file has
    // been in use for a while (bounded: at most 1500 batches).
    let api = gw.api.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut ids = Vec::new();
            for batch in 0..1500 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let events: Vec<Value> = (0..10)
                    .map(|i| json!({"type": "delivery", "msg_id": format!("h-{batch}-{i}")}))
                    .collect();
                ids.extend(post(&api, Value::Array(events)).await);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            ids
        }
    });
    receiver.wait_for(50, Duration::from_secs(30)).await;
    // Replaced as a deployment should: written next to it, then renamed over it.
    let next = dir.path().join("stamp.wasm.new");
    std::fs::copy(plugin_file("stamp-b"), &next).unwrap();
    std::fs::rename(&next, &live).unwrap();
    // The watcher polls every 100 ms and compiles the new file before it swaps it in, which
    // takes a while on a busy machine: the load goes on until the reload is reported, and
    // 1.5 s more.
    let reloaded = r#"mailhook_plugin_reloads_total{plugin="stamp",result="ok"}"#;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while sample(&scrape(&gw.api).await, reloaded) < 1.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the replaced plugin file was not reloaded within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let reloaded_at = tokio::time::Instant::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::SeqCst);
    let ids = load.await.unwrap();
    assert!(ids.len() < 15_000, "the load ran to its bound");
    let got = receiver.wait_for(ids.len(), Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got_all = receiver.requests();
    assert_eq!(got_all.len(), ids.len(), "no event delivered twice");
    let arrived: HashSet<&str> = got
        .iter()
        .map(|r| r.header("webhook-id").unwrap())
        .collect();
    assert_eq!(
        arrived,
        ids.iter().map(String::as_str).collect(),
        "no event lost"
    );

    let mut stamps: HashMap<String, usize> = HashMap::new();
    for request in &got_all {
        let stamp = request.json()["stamp"].as_str().unwrap().to_owned();
        // Well after the reload was reported, only the new version runs.
        if request.at > reloaded_at + Duration::from_secs(1) {
            assert_eq!(
                stamp, "b",
                "an event long after the reload ran the old file"
            );
        }
        *stamps.entry(stamp).or_default() += 1;
    }
    assert!(
        stamps.get("a").copied().unwrap_or(0) >= 50 && stamps.get("b").copied().unwrap_or(0) > 0,
        "{stamps:?}"
    );
    assert_eq!(sample(&scrape(&gw.api).await, reloaded), 1.0);
}
