//! The web console in a real browser (headless Chromium over WebDriver): sign in, settings
//! that persist and show field errors, "Simulate Send Test" across a failing primary, push
//! disabled, message lookup, failures and replay, the overview. Each page is saved as a
//! screenshot in `<target>/console-screenshots/`.

use std::time::Duration;

use fantoccini::Locator;
use http::Method;
use mailhook_test_support::{ADMIN_TOKEN, Browser, Receiver, Reply, TestGateway};
use serde_json::{Value, json};

use crate::{configure, post, wait_state};

fn base(gw: &TestGateway) -> String {
    gw.api.base.clone()
}

/// Signs in through the page and waits for the overview.
async fn sign_in(browser: &Browser, gw: &TestGateway) {
    browser.goto(&format!("{}/", base(gw))).await;
    browser.fill("#token", ADMIN_TOKEN).await;
    browser.click("#signin-button").await;
    browser.find("#page-overview:not([hidden])").await;
}

/// Opens a page through the top bar, as a person would.
async fn open_page(browser: &Browser, page: &str) {
    browser
        .click(&format!("#nav a[data-page=\"{page}\"]"))
        .await;
    browser.find(&format!("#page-{page}:not([hidden])")).await;
}

async fn settings(gw: &TestGateway, account: &str) -> Value {
    gw.api
        .admin(
            Method::GET,
            &format!("/v1/accounts/{account}/webhook"),
            None,
        )
        .await
        .json()
}

#[tokio::test(flavor = "multi_thread")]
async fn sign_in_then_settings_persist_after_reload_and_a_bad_address_shows_its_field_error() {
    let gw = TestGateway::start(|_| {}).await;
    let receivers = [
        Receiver::start().await,
        Receiver::start().await,
        Receiver::start().await,
    ];
    let browser = Browser::start().await;

    // `/` leads to the console, which asks for a token first.
    browser.goto(&format!("{}/", base(&gw))).await;
    browser.find("#page-signin:not([hidden])").await;
    assert!(
        browser
            .client
            .current_url()
            .await
            .unwrap()
            .path()
            .starts_with("/console/")
    );
    browser.screenshot("01-sign-in").await;
    browser.fill("#token", "not-the-admin-token-0000").await;
    browser.click("#signin-button").await;
    browser
        .wait_text("#token-error", |t| t.contains("not an admin token"))
        .await;
    browser.fill("#token", ADMIN_TOKEN).await;
    browser.click("#signin-button").await;
    browser.find("#page-overview:not([hidden])").await;
    let stored = browser
        .script("return [sessionStorage.getItem('mailhook.token'), localStorage.length];")
        .await;
    assert_eq!(
        stored,
        json!([ADMIN_TOKEN, 0]),
        "the token lives in sessionStorage only"
    );

    // Three addresses, two event types, push on.
    open_page(&browser, "settings").await;
    browser
        .wait_text("#settings-status", |t| t.contains("Never saved"))
        .await;
    browser.click("label[for=\"enabled\"]").await;
    for (i, receiver) in receivers.iter().enumerate() {
        browser
            .fill(&format!("#address-{i}"), &receiver.url())
            .await;
    }
    browser
        .click("input[name=\"events\"][value=\"delivery\"]")
        .await;
    browser
        .click("input[name=\"events\"][value=\"bounce\"]")
        .await;
    browser.click("#save-settings").await;
    browser
        .wait_text("#settings-status", |t| t == "Saved.")
        .await;
    let saved = settings(&gw, "default").await;
    let urls: Vec<String> = receivers.iter().map(Receiver::url).collect();
    assert_eq!(saved["enabled"], true);
    assert_eq!(saved["addresses"], json!(urls));
    assert_eq!(saved["events"], json!(["delivery", "bounce"]));

    // After a reload the page shows what was saved.
    browser.client.refresh().await.unwrap();
    browser.find("#page-settings:not([hidden])").await;
    browser
        .wait_text("#settings-status", |t| t.starts_with("Last saved"))
        .await;
    for (i, url) in urls.iter().enumerate() {
        assert_eq!(&browser.value(&format!("#address-{i}")).await, url);
    }
    assert!(browser.is_checked("#enabled").await);
    for (event_type, checked) in [
        ("send", false),
        ("delivery", true),
        ("bounce", true),
        ("click", false),
    ] {
        let css = format!("input[name=\"events\"][value=\"{event_type}\"]");
        assert_eq!(browser.is_checked(&css).await, checked, "{event_type}");
    }

    // The secret is hidden until revealed; rotation shows the new one.
    let secret = saved["secret"].as_str().unwrap().to_owned();
    assert!(!browser.text("#secret").await.contains(&secret[8..]));
    browser.click("#reveal-secret").await;
    browser.wait_text("#secret", |t| t == secret).await;
    browser.click("#copy-secret").await;
    browser.wait_text("#secret-status", |t| !t.is_empty()).await;
    browser.screenshot("02-webhook-settings").await;
    browser.click("#rotate-secret").await;
    browser
        .client
        .accept_alert()
        .await
        .expect("confirm the rotation");
    browser
        .wait_text("#secret-status", |t| {
            t.contains("previous one keeps signing")
        })
        .await;
    let rotated = settings(&gw, "default").await["secret"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(rotated, secret);
    assert_eq!(browser.text("#secret").await, rotated);

    // A bad backup address: the API's message next to that field, nothing saved.
    browser.fill("#address-1", "ftp://files.example/hook").await;
    browser.click("#save-settings").await;
    let error = browser
        .wait_text(
            "#settings-form .field-error[data-field=\"address-1\"]",
            |t| !t.is_empty(),
        )
        .await;
    assert!(error.contains("scheme `ftp`"), "{error}");
    assert!(browser.is_shown("#settings-error").await);
    assert!(
        !browser
            .is_shown("#settings-form .field-error[data-field=\"address-0\"]")
            .await
    );
    let classes = browser
        .find("#address-1")
        .await
        .attr("class")
        .await
        .unwrap();
    assert_eq!(classes.as_deref(), Some("invalid"));
    browser.screenshot("03-settings-field-error").await;
    assert_eq!(
        settings(&gw, "default").await["addresses"],
        json!(urls),
        "nothing saved"
    );

    // Enabled without any event type: the error sits under the types.
    browser.fill("#address-1", &urls[1]).await;
    browser
        .click("input[name=\"events\"][value=\"delivery\"]")
        .await;
    browser
        .click("input[name=\"events\"][value=\"bounce\"]")
        .await;
    browser.click("#save-settings").await;
    browser
        .wait_text("#settings-form .field-error[data-field=\"events\"]", |t| {
            t.contains("no event type")
        })
        .await;
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn simulate_send_test_shows_both_addresses_the_payload_and_the_headers() {
    let gw = TestGateway::start(|_| {}).await;
    let primary = Receiver::start().await;
    let backup = Receiver::start().await;
    primary.set_default(Reply::status(503));
    configure(&gw.api, "default", &[&primary, &backup], &["delivery"]).await;
    let browser = Browser::start().await;
    sign_in(&browser, &gw).await;
    open_page(&browser, "test").await;

    browser
        .find("#test-type")
        .await
        .select_by_value("click")
        .await
        .unwrap();
    browser.click("#run-test").await;
    let verdict = browser
        .wait_text("#test-verdict", |t| t.starts_with("Delivered"))
        .await;
    assert!(
        verdict.contains("backup-1") && verdict.contains(&backup.url()),
        "{verdict}"
    );

    let rows = browser
        .client
        .find_all(Locator::Css("#test-attempts tbody tr"))
        .await
        .unwrap();
    let mut texts = Vec::new();
    for row in rows {
        texts.push(row.text().await.unwrap());
    }
    assert_eq!(texts.len(), 5, "{texts:#?}");
    for text in &texts[..4] {
        assert!(
            text.contains("primary") && text.contains("503") && text.contains("ms"),
            "{text}"
        );
    }
    assert!(
        texts[4].contains("backup-1") && texts[4].contains("200"),
        "{}",
        texts[4]
    );

    // The receivers confirm it: four refusals at the primary, one push at the backup, and
    // the page shows exactly what the backup got.
    assert_eq!(primary.count(), 4);
    let got = backup.wait_for(1, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 1);
    let shown: Value = serde_json::from_str(&browser.text("#test-payload").await).unwrap();
    assert_eq!(shown, got[0].json());
    assert_eq!(shown["test"], true);
    assert_eq!(shown["type"], "click");
    let headers = browser.text("#test-headers").await;
    for name in [
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
        "mailhook-address",
    ] {
        assert!(headers.contains(name), "{name} in {headers}");
    }
    assert!(headers.contains(got[0].header("webhook-signature").unwrap()));
    browser.screenshot("04-simulate-send-test").await;
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn disabled_push_skips_real_events_lookup_shows_the_timeline_and_a_failure_replays() {
    let gw = TestGateway::start(|_| {}).await;
    let receiver = Receiver::start().await;
    configure(
        &gw.api,
        "default",
        &[&receiver],
        &["send", "delivery", "open", "bounce"],
    )
    .await;
    let msg_id = "<20261127.order-1@shop.example>";
    for event_type in ["send", "delivery", "open"] {
        post(
            &gw.api,
            json!({"type": event_type, "msg_id": msg_id,
                   "email": {"subject": "Your order", "to": "ana@example.com"}}),
        )
        .await;
    }
    receiver.wait_for(3, Duration::from_secs(10)).await;

    let browser = Browser::start().await;
    sign_in(&browser, &gw).await;

    // Push off, through the page; a real event after that is skipped, never pushed.
    open_page(&browser, "settings").await;
    browser
        .wait_text("#settings-status", |t| t.starts_with("Last saved"))
        .await;
    assert!(browser.is_checked("#enabled").await);
    browser.click("label[for=\"enabled\"]").await;
    browser.click("#save-settings").await;
    browser
        .wait_text("#settings-status", |t| t == "Saved.")
        .await;
    assert_eq!(settings(&gw, "default").await["enabled"], false);
    post(
        &gw.api,
        json!({"type": "bounce", "msg_id": msg_id, "status": {"class": "hard", "smtp_code": 550}}),
    )
    .await;

    // Look the email up: three delivered events and the skipped bounce.
    open_page(&browser, "messages").await;
    browser.fill("#msg-id", msg_id).await;
    browser.click("#lookup-button").await;
    let timeline = browser
        .wait_text("#timeline", |t| t.contains("push is disabled"))
        .await;
    assert!(timeline.contains("4 events"), "{timeline}");
    let cards = browser
        .client
        .find_all(Locator::Css("#timeline article.event"))
        .await
        .unwrap();
    let mut states = Vec::new();
    for card in cards {
        states.push(card.attr("class").await.unwrap().unwrap_or_default());
    }
    assert_eq!(
        states
            .iter()
            .filter(|c| c.contains("state-delivered"))
            .count(),
        3,
        "{states:?}"
    );
    assert!(states[3].contains("state-skipped"), "{states:?}");
    assert_eq!(receiver.count(), 3, "the bounce was not pushed");
    browser.screenshot("05-message-lookup").await;

    // A push that fails everywhere is dead (no recovery rounds in tests); replay it from the
    // failures page once the receiver is back.
    let failing = Receiver::start().await;
    failing.set_default(Reply::status(500));
    configure(&gw.api, "default", &[&failing], &["delivery"]).await;
    post(&gw.api, json!({"type": "delivery", "msg_id": "m-fails"})).await;
    wait_state(&gw.api, "default", "m-fails", "dead").await;
    open_page(&browser, "failures").await;
    let table = browser
        .wait_text("#failures-table tbody", |t| t.contains("m-fails"))
        .await;
    assert!(table.contains("dead") && table.contains("500"), "{table}");
    browser.screenshot("06-failures").await;
    failing.set_default(Reply::ok());
    browser.click("#failures-table .replay-one").await;
    browser
        .wait_text("#failures-status", |t| t.contains("Queued 1 event"))
        .await;
    let event = wait_state(&gw.api, "default", "m-fails", "delivered").await;
    assert_eq!(event["delivered_to"], "primary");
    assert_eq!(failing.count(), 5, "4 failed attempts, then the replay");
    browser.click("#refresh-failures").await;
    browser.find("#failures-empty:not([hidden])").await;

    // The overview counts what happened.
    open_page(&browser, "overview").await;
    browser.wait_text("#ov-received", |t| t == "5").await;
    assert_eq!(browser.text("#ov-delivered").await, "4");
    let types = browser.text("#ov-types").await;
    assert!(types.contains("bounce"), "{types}");
    browser.screenshot("07-overview").await;
    browser.close().await;
}
