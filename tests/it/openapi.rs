//! The OpenAPI document (`docs/openapi.json`) and the pushed payload's JSON Schema
//! (`docs/schema/event.json`) against the code: every route the router answers is in the
//! document and the reverse, the live gateway serves it and answers every documented
//! operation with a documented status and body, every example request is valid and accepted,
//! and real pushed payloads of every type validate against the event schema.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::Method;
use mailhook_test_support::{Answer, Receiver, TestGateway};
use serde_json::{Value, json};

use crate::configure;

const METHODS: [&str; 5] = ["get", "put", "post", "delete", "head"];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the workspace root")
        .to_path_buf()
}

fn document() -> Value {
    let path = root().join("docs/openapi.json");
    let text = std::fs::read_to_string(&path).unwrap();
    serde_json::from_str(&text)
        .unwrap_or_else(|err| panic!("{} is not JSON: {err}", path.display()))
}

/// A validator for the document's `#/components/...` schema at `pointer` (or any schema
/// whose `$ref`s point into the document's components).
fn validator(doc: &Value, schema: &Value) -> jsonschema::Validator {
    let mut schema = schema.clone();
    if let Value::Object(fields) = &mut schema {
        fields.insert("components".to_owned(), doc["components"].clone());
    }
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .should_validate_formats(true)
        .build(&schema)
        .unwrap_or_else(|err| panic!("schema does not compile: {err}: {schema}"))
}

fn errors(validator: &jsonschema::Validator, value: &Value) -> Vec<String> {
    validator
        .iter_errors(value)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

/// `(METHOD, /path/{param})` of every operation in the document.
fn documented(doc: &Value) -> BTreeSet<(String, String)> {
    let mut operations = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in METHODS {
            if item.get(method).is_some() {
                operations.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    operations
}

/// `(METHOD, /path/{param})` of every arm of the router's `match` in `mailhook-server/src/api*`:
/// `(&Method::GET | &Method::HEAD, ["v1", "accounts", account, "webhook"])` is GET and HEAD of
/// `/v1/accounts/{account}/webhook`. Arms whose method is `_` answer 404/405 and are left out.
fn routed() -> BTreeSet<(String, String)> {
    let dir = root().join("crates/mailhook-server/src");
    let mut sources = vec![dir.join("api.rs")];
    if let Ok(entries) = std::fs::read_dir(dir.join("api")) {
        sources.extend(entries.flatten().map(|e| e.path()));
    }
    let mut routes = BTreeSet::new();
    for source in sources {
        let text = std::fs::read_to_string(&source).unwrap();
        let mut rest = text.as_str();
        while let Some(start) = rest.find("(&Method::") {
            rest = &rest[start + 1..];
            let end = rest.find("])").expect("a route arm ends with `])`");
            let arm = &rest[..end];
            let (methods, segments) = arm.split_once(", [").expect("`(methods, [segments])`");
            let segments: Vec<&str> = segments.split(',').map(str::trim).collect();
            let path = if segments == ["\"\""] {
                "/".to_owned()
            } else {
                segments
                    .iter()
                    .map(
                        |s| match s.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
                            Some(literal) => literal.to_owned(),
                            // `..` after "console": any file of the console.
                            None if *s == ".." => "{file}".to_owned(),
                            None => format!("{{{s}}}"),
                        },
                    )
                    .fold(String::new(), |path, segment| path + "/" + &segment)
            };
            for method in methods.split('|') {
                let method = method.trim().trim_start_matches("&Method::");
                routes.insert((method.to_owned(), path.clone()));
            }
        }
    }
    routes
}

#[test]
fn every_route_the_router_answers_is_documented_and_every_documented_route_is_routed() {
    let doc = document();
    let documented = documented(&doc);
    let routed = routed();
    assert!(routed.len() >= 15, "the router was found: {routed:?}");
    let undocumented: Vec<_> = routed.difference(&documented).collect();
    let unrouted: Vec<_> = documented.difference(&routed).collect();
    assert!(
        undocumented.is_empty() && unrouted.is_empty(),
        "routes missing from docs/openapi.json: {undocumented:?}; documented but not routed: {unrouted:?}"
    );
}

#[test]
fn the_document_is_openapi_3_1_and_every_example_request_is_valid() {
    let doc = document();
    assert_eq!(doc["openapi"], "3.1.0");
    let mut examples = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in METHODS {
            let Some(operation) = item.get(method) else {
                continue;
            };
            assert!(
                operation["operationId"].is_string() && operation["responses"].is_object(),
                "{method} {path} has an operationId and responses"
            );
            let Some(content) = operation["requestBody"]["content"]["application/json"].as_object()
            else {
                continue;
            };
            let check = validator(&doc, &content["schema"]);
            for (name, example) in content["examples"].as_object().unwrap() {
                let found = errors(&check, &example["value"]);
                assert!(
                    found.is_empty(),
                    "{method} {path} example `{name}`: {found:?}"
                );
                examples += 1;
            }
        }
    }
    assert!(examples >= 8, "{examples} examples");
    // The schemas refuse what the code refuses (spot checks of the strictest rules).
    let intake = validator(&doc, &json!({"$ref": "#/components/schemas/IntakeRequest"}));
    for bad in [
        json!({"type": "delivery"}),
        json!({"type": "delivered", "msg_id": "m"}),
        json!({"type": "send", "msg_id": "m", "extra": 1}),
        json!({"type": "send", "msg_id": "m", "account": "a b"}),
        json!([]),
    ] {
        assert!(!errors(&intake, &bad).is_empty(), "{bad} must be invalid");
    }
}

/// A concrete URL path for a documented one.
fn concrete(path: &str) -> String {
    path.replace("{account}", "default")
        .replace("{msg_id}", "openapi-1")
        .replace("{file}", "console.css")
}

/// Checks `answer` is one of `operation`'s documented responses, with a body of its schema.
fn check_answer(doc: &Value, label: &str, operation: &Value, answer: &Answer) {
    let status = answer.status.as_u16().to_string();
    let Some(documented) = operation["responses"].get(&status) else {
        panic!(
            "{label}: status {status} is not documented: {}",
            String::from_utf8_lossy(&answer.body)
        );
    };
    if let Some(schema) = documented["content"]["application/json"].get("schema") {
        let body: Value = serde_json::from_slice(&answer.body).unwrap_or_else(|err| {
            panic!(
                "{label}: {status} body is not JSON ({err}): {}",
                String::from_utf8_lossy(&answer.body)
            )
        });
        let found = errors(&validator(doc, schema), &body);
        assert!(found.is_empty(), "{label}: {status} body {body}: {found:?}");
    }
    if let Some(headers) = documented["headers"].as_object() {
        for name in headers.keys() {
            assert!(
                answer.headers.contains_key(name.to_lowercase().as_str()),
                "{label}: {status} lacks header {name}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_live_gateway_serves_the_document_and_answers_every_operation_as_documented() {
    let doc = document();
    let gw = TestGateway::start(|_| {}).await;
    let served = gw
        .api
        .send(Method::GET, "/openapi.json", None, None, "")
        .await;
    assert_eq!(served.status, 200);
    assert_eq!(
        served.headers["content-type"], "application/json",
        "served as JSON"
    );
    let served: Value = serde_json::from_slice(&served.body).unwrap();
    assert_eq!(served, doc, "the served document is docs/openapi.json");

    let receiver = Receiver::start().await;
    let live_settings = || json!({"enabled": true, "addresses": [receiver.url()], "events": ["delivery", "send", "bounce", "open"]});
    // Events for the lookups, and a failure to list and replay.
    gw.api
        .post_events(&json!({"type": "delivery", "msg_id": "openapi-1"}))
        .await;

    // Settings first (the test push needs an address), then the rest in document order.
    let mut operations: Vec<(String, String, Value)> = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in METHODS {
            if let Some(operation) = item.get(method) {
                operations.push((method.to_uppercase(), path.clone(), operation.clone()));
            }
        }
    }
    operations.sort_by_key(|(method, path, _)| !(method == "PUT" && path.ends_with("/webhook")));
    for (method, path, operation) in &operations {
        let label = format!("{method} {path}");
        let token = if path == "/v1/events" {
            Some(gw.api.intake_token.clone())
        } else if path.starts_with("/v1/") {
            Some(gw.api.admin_token.clone())
        } else {
            None
        };
        let examples: Vec<Value> =
            operation["requestBody"]["content"]["application/json"]["examples"]
                .as_object()
                .map(|examples| examples.values().map(|e| e["value"].clone()).collect())
                .unwrap_or_default();
        let bodies: Vec<Option<Value>> = if examples.is_empty() {
            vec![None]
        } else {
            examples.into_iter().map(Some).collect()
        };
        for body in bodies {
            let method = Method::from_bytes(method.as_bytes()).unwrap();
            let (content_type, bytes) = match &body {
                Some(body) => (Some("application/json"), body.to_string()),
                None => (None, String::new()),
            };
            let answer = gw
                .api
                .send(
                    method.clone(),
                    &concrete(path),
                    token.as_deref(),
                    content_type,
                    bytes,
                )
                .await;
            check_answer(&doc, &label, operation, &answer);
            if let Some(body) = &body {
                assert!(
                    answer.status.is_success(),
                    "{label}: example {} refused: {}",
                    body,
                    String::from_utf8_lossy(&answer.body)
                );
            } else {
                assert!(
                    answer.status.is_success() || answer.status.is_redirection(),
                    "{label}: {} {}",
                    answer.status,
                    String::from_utf8_lossy(&answer.body)
                );
            }
        }
        if method == "PUT" {
            configure_live(&gw, &live_settings()).await;
        }
    }
    // Without a token, what needs one is refused as documented.
    for (method, path, operation) in &operations {
        if !path.starts_with("/v1/") {
            continue;
        }
        let answer = gw
            .api
            .send(
                Method::from_bytes(method.as_bytes()).unwrap(),
                &concrete(path),
                None,
                None,
                "",
            )
            .await;
        assert_eq!(answer.status, 401, "{method} {path}");
        check_answer(
            &doc,
            &format!("{method} {path} without a token"),
            operation,
            &answer,
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_documented_path_asked_with_another_method_answers_405_with_the_documented_allow() {
    let doc = document();
    let gw = TestGateway::start(|_| {}).await;
    for (path, item) in doc["paths"].as_object().unwrap() {
        let mut documented: Vec<String> = METHODS
            .iter()
            .filter(|m| item.get(**m).is_some())
            .map(|m| m.to_uppercase())
            .collect();
        documented.sort();
        for method in ["TRACE", "PATCH", "DELETE"] {
            if documented.iter().any(|m| m == method) {
                continue;
            }
            let answer = gw
                .api
                .send(
                    Method::from_bytes(method.as_bytes()).unwrap(),
                    &concrete(path),
                    Some(&gw.api.admin_token.clone()),
                    None,
                    "",
                )
                .await;
            assert_eq!(answer.status, 405, "{method} {path}");
            let mut allow: Vec<String> = answer.headers["allow"]
                .to_str()
                .unwrap()
                .split(',')
                .map(|m| m.trim().to_owned())
                .collect();
            allow.sort();
            assert_eq!(allow, documented, "Allow of {path}");
            assert!(answer.json()["error"].is_string());
        }
    }
    let unknown = gw
        .api
        .send(Method::GET, "/v2/nothing", None, None, "")
        .await;
    assert_eq!(unknown.status, 404);
}

async fn configure_live(gw: &TestGateway, settings: &Value) {
    let answer = gw.api.put_webhook("default", settings).await;
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
}

fn event_schema() -> jsonschema::Validator {
    let text = std::fs::read_to_string(root().join("docs/schema/event.json")).unwrap();
    let schema: Value = serde_json::from_str(&text).unwrap();
    jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .expect("docs/schema/event.json compiles")
}

#[tokio::test(flavor = "multi_thread")]
async fn pushed_payloads_of_every_type_and_a_test_push_match_the_event_schema() {
    let schema = event_schema();
    let gw = TestGateway::start(|_| {}).await;
    let receiver = Receiver::start().await;
    let types = ["send", "delivery", "open", "click", "bounce", "complaint"];
    configure(&gw.api, "acme", &[&receiver], &types).await;
    let events: Vec<Value> = types
        .iter()
        .enumerate()
        .map(|(i, t)| {
            json!({
                "type": t, "msg_id": "<schema@mail.example>", "account": "acme",
                "timestamp": 1_795_780_800_123i64 + i as i64,
                "email": {"subject": "Hi", "from": "a@x.example", "to": ["b@y.example"], "tags": ["t"], "metadata": {"k": [1, {"d": null}]}},
                "status": {"smtp_code": 250, "ip": "17.58.0.1", "user_agent": "Mozilla/5.0", "url": "https://x.example"}
            })
        })
        .chain([json!({"type": "delivery", "msg_id": "bare", "account": "acme"})])
        .collect();
    crate::post(&gw.api, Value::Array(events)).await;
    let test = gw
        .api
        .admin(
            Method::POST,
            "/v1/accounts/acme/webhook/test",
            Some(&json!({"type": "click"})),
        )
        .await;
    assert_eq!(test.status, 200);
    let got = receiver.wait_for(8, Duration::from_secs(20)).await;
    let mut seen = BTreeSet::new();
    for request in &got {
        let payload = request.json();
        let found = errors(&schema, &payload);
        assert!(found.is_empty(), "{payload}: {found:?}");
        seen.insert((
            payload["type"].as_str().unwrap().to_owned(),
            payload["test"] == true,
        ));
    }
    assert_eq!(seen.len(), 7, "every type, and a test push: {seen:?}");

    // The schema is strict: what the contract does not promise does not validate.
    let mut extra = got[0].json();
    extra["surprise"] = json!(1);
    assert!(!errors(&schema, &extra).is_empty());
    let mut no_engagement = got
        .iter()
        .map(|r| r.json())
        .find(|p| p["type"] == "open")
        .unwrap();
    no_engagement.as_object_mut().unwrap().remove("engagement");
    assert!(!errors(&schema, &no_engagement).is_empty());
}
