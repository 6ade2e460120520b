//! Webhook settings through the admin API: the seed's rules, each refusal a 422 naming the
//! problem with nothing saved; defaults; seeding from the config; secret rotation.

use http::Method;
use mailhook_test_support::TestGateway;
use serde_json::{Value, json};

const GOOD: &str = "https://hooks.example/a";

#[tokio::test(flavor = "multi_thread")]
async fn each_invalid_save_is_a_422_naming_the_problem_and_nothing_is_saved() {
    let gw = TestGateway::start(|_| {}).await;
    let saved = gw
        .api
        .put_webhook(
            "acme",
            &json!({"enabled": true, "addresses": [GOOD], "events": ["delivery"]}),
        )
        .await;
    assert_eq!(saved.status, 200);
    let before = gw
        .api
        .admin(Method::GET, "/v1/accounts/acme/webhook", None)
        .await
        .json();

    let four: Vec<String> = (0..4)
        .map(|i| format!("https://h{i}.example/hook"))
        .collect();
    let cases: Vec<(Value, &str, &str)> = vec![
        (
            json!({"enabled": true, "addresses": four, "events": ["open"]}),
            "addresses",
            "at most 3",
        ),
        (
            json!({"enabled": true, "addresses": ["not a url"], "events": ["open"]}),
            "addresses[0]",
            "not an absolute URL",
        ),
        (
            json!({"enabled": true, "addresses": ["ftp://files.example/x"], "events": ["open"]}),
            "addresses[0]",
            "ftp",
        ),
        (
            json!({"enabled": true, "addresses": [GOOD, GOOD], "events": ["open"]}),
            "addresses[1]",
            "twice",
        ),
        (
            json!({"enabled": true, "addresses": [GOOD], "events": ["opened"]}),
            "events[0]",
            "opened",
        ),
        (
            json!({"enabled": true, "addresses": [], "events": ["open"]}),
            "addresses",
            "at least one",
        ),
        (
            json!({"enabled": true, "addresses": [GOOD], "events": []}),
            "events",
            "at least one",
        ),
    ];
    for (body, field, words) in cases {
        let answer = gw.api.put_webhook("acme", &body).await;
        assert_eq!(answer.status, 422, "{body}");
        let json = answer.json();
        let detail = &json["details"][0];
        assert_eq!(detail["field"], field, "{json}");
        assert!(
            detail["message"].as_str().unwrap().contains(words),
            "{json}"
        );
        let after = gw
            .api
            .admin(Method::GET, "/v1/accounts/acme/webhook", None)
            .await
            .json();
        assert_eq!(after, before, "nothing saved after {body}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn defaults_first_save_secret_and_rotation() {
    let gw = TestGateway::start(|_| {}).await;
    let fresh = gw
        .api
        .admin(Method::GET, "/v1/accounts/new/webhook", None)
        .await
        .json();
    assert_eq!(
        fresh,
        json!({"enabled": false, "addresses": [], "events": [], "secret": null, "updated_at": null})
    );
    let rotate = gw
        .api
        .admin(Method::POST, "/v1/accounts/new/webhook/secret/rotate", None)
        .await;
    assert_eq!(rotate.status, 404);

    let first = gw
        .api
        .put_webhook(
            "new",
            &json!({"enabled": true, "addresses": [GOOD], "events": ["open", "click"]}),
        )
        .await
        .json();
    let secret = first["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"));
    assert_eq!(first["events"], json!(["open", "click"]));
    let second = gw
        .api
        .put_webhook(
            "new",
            &json!({"enabled": false, "addresses": [GOOD], "events": ["open"]}),
        )
        .await
        .json();
    assert_eq!(
        second["secret"],
        secret.as_str(),
        "later saves keep the secret"
    );
    assert_eq!(second["enabled"], false);

    let rotated = gw
        .api
        .admin(Method::POST, "/v1/accounts/new/webhook/secret/rotate", None)
        .await
        .json();
    assert_ne!(rotated["secret"], secret.as_str());
    let now = gw
        .api
        .admin(Method::GET, "/v1/accounts/new/webhook", None)
        .await
        .json();
    assert_eq!(now["secret"], rotated["secret"]);

    let answer = gw
        .api
        .admin(Method::GET, "/v1/accounts/bad%20name/webhook", None)
        .await;
    assert_eq!(answer.status, 400);
    assert_eq!(answer.json()["details"][0]["field"], "account");
    let answer = gw
        .api
        .send(
            Method::GET,
            "/v1/accounts/new/webhook",
            Some(&gw.api.intake_token),
            None,
            "",
        )
        .await;
    assert_eq!(answer.status, 403, "an intake token cannot read settings");
}

#[tokio::test(flavor = "multi_thread")]
async fn accounts_in_the_config_are_seeded_at_start() {
    let gw = TestGateway::start(|c| {
        c.accounts = vec![mailhook::config::AccountSeed {
            id: "seeded".into(),
            enabled: true,
            addresses: vec![GOOD.into()],
            events: vec!["bounce".into(), "complaint".into()],
        }]
    })
    .await;
    let got = gw
        .api
        .admin(Method::GET, "/v1/accounts/seeded/webhook", None)
        .await
        .json();
    assert_eq!(got["enabled"], true);
    assert_eq!(got["addresses"], json!([GOOD]));
    assert_eq!(got["events"], json!(["bounce", "complaint"]));
}
