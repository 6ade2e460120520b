//! Metrics: exact counters after a scripted scenario, a clean `promtool check metrics`, and
//! every PromQL expression of the shipped dashboard and alerts run by a real Prometheus.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use http::Method;
use mailhook_test_support::{ApiClient, Receiver, Reply, TestGateway};
use serde_json::{Value, json};

use crate::{configure, post, wait_state};

/// The value of one exposition line, e.g. `mailhook_x_total{a="b"}`; 0 when absent.
pub(crate) fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| {
            line.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .map_or(0.0, |value| value.trim().parse().expect("a number"))
}

/// The gateway's `/metrics` text (asserting a 200).
pub(crate) async fn scrape(api: &ApiClient) -> String {
    let answer = api.send(Method::GET, "/metrics", None, None, "").await;
    assert_eq!(answer.status, 200);
    String::from_utf8(answer.body.to_vec()).unwrap()
}

const APPLE_PROXY: (&str, &str) = ("17.58.63.12", "Mozilla/5.0");
const IPHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148";

#[tokio::test(flavor = "multi_thread")]
async fn counters_match_a_scripted_scenario_exactly() {
    let gw = TestGateway::start(|c| c.delivery.retries_per_address = 0).await;
    let primary = Receiver::start().await;
    let backup = Receiver::start().await;
    let doomed = Receiver::start().await;
    doomed.set_default(Reply::status(500));
    // The first push to the primary fails: exactly one failover.
    primary.push(Reply::status(500));
    configure(
        &gw.api,
        "default",
        &[&primary, &backup],
        &["delivery", "bounce", "open", "click"],
    )
    .await;
    configure(&gw.api, "doomed", &[&doomed], &["delivery"]).await;

    post(&gw.api, json!([{"type": "delivery", "msg_id": "m1"}, {"type": "delivery", "msg_id": "m2"}, {"type": "delivery", "msg_id": "m3"}])).await;
    post(&gw.api, json!([{"type": "bounce", "msg_id": "m4", "status": {"class": "hard"}}, {"type": "send", "msg_id": "m4"}])).await;
    post(&gw.api, json!([
        {"type": "open", "msg_id": "m1", "status": {"ip": APPLE_PROXY.0, "user_agent": APPLE_PROXY.1}},
        {"type": "open", "msg_id": "m1", "status": {"ip": "198.51.100.7", "user_agent": IPHONE}},
        {"type": "open", "msg_id": "m2", "status": {"ip": "198.51.100.8", "user_agent": IPHONE}},
        {"type": "click", "msg_id": "m2", "status": {"url": "https://x.example/", "user_agent": "Proofpoint URL Defense"}},
    ])).await;
    post(
        &gw.api,
        json!({"type": "delivery", "msg_id": "d1", "account": "doomed"}),
    )
    .await;
    // Duplicates are counted, not stored twice.
    let dup = json!({"type": "bounce", "msg_id": "m5", "event_id": "same"});
    post(&gw.api, json!([dup, dup])).await;
    // A refused request.
    assert_eq!(
        gw.api
            .send(
                Method::POST,
                "/v1/events",
                None,
                Some("application/json"),
                "{}"
            )
            .await
            .status,
        401
    );

    for msg in ["m1", "m2", "m3", "m5"] {
        gw.api
            .wait_message("default", msg, Duration::from_secs(20), |m| {
                m["events"]
                    .as_array()
                    .is_some_and(|es| es.iter().all(|e| e["state"] == "delivered"))
            })
            .await;
    }
    // m4: the bounce is delivered, the (unsubscribed) send is skipped.
    gw.api
        .wait_message("default", "m4", Duration::from_secs(20), |m| {
            let states: BTreeSet<&str> = m["events"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|e| e["state"].as_str())
                .collect();
            states == BTreeSet::from(["delivered", "skipped"])
        })
        .await;
    wait_state(&gw.api, "doomed", "d1", "dead").await;

    let text = scrape(&gw.api).await;
    let expect = [
        (r#"mailhook_intake_events_total{type="delivery"}"#, 4.0),
        (r#"mailhook_intake_events_total{type="bounce"}"#, 2.0),
        (r#"mailhook_intake_events_total{type="send"}"#, 1.0),
        (r#"mailhook_intake_events_total{type="open"}"#, 3.0),
        (r#"mailhook_intake_events_total{type="click"}"#, 1.0),
        ("mailhook_intake_duplicates_total", 1.0),
        (
            r#"mailhook_intake_rejected_requests_total{reason="unauthorized"}"#,
            1.0,
        ),
        // 3 deliveries + 1 bounce + 1 bounce (m5) + 3 opens + 1 click = 9 pushed for default.
        (
            r#"mailhook_delivery_attempts_total{address="primary",result="2xx"}"#,
            8.0,
        ),
        (
            r#"mailhook_delivery_attempts_total{address="primary",result="5xx"}"#,
            2.0,
        ),
        (
            r#"mailhook_delivery_attempts_total{address="backup_1",result="2xx"}"#,
            1.0,
        ),
        (
            r#"mailhook_delivery_failovers_total{address="primary"}"#,
            1.0,
        ),
        (
            r#"mailhook_deliveries_total{outcome="delivered",address="primary"}"#,
            8.0,
        ),
        (
            r#"mailhook_deliveries_total{outcome="delivered",address="backup_1"}"#,
            1.0,
        ),
        (
            r#"mailhook_deliveries_total{outcome="skipped",address="none"}"#,
            1.0,
        ),
        (
            r#"mailhook_deliveries_total{outcome="dead",address="none"}"#,
            1.0,
        ),
        (
            r#"mailhook_engagement_events_total{type="open",kind="machine",reason="apple_mpp"}"#,
            1.0,
        ),
        (
            r#"mailhook_engagement_events_total{type="open",kind="human",reason="none"}"#,
            2.0,
        ),
        (
            r#"mailhook_engagement_events_total{type="click",kind="machine",reason="scanner"}"#,
            1.0,
        ),
        (r#"mailhook_engagement_unique_total{type="open"}"#, 2.0),
        (r#"mailhook_engagement_unique_total{type="click"}"#, 1.0),
        ("mailhook_delivery_latency_seconds_count", 9.0),
        ("mailhook_queue_depth_events", 0.0),
    ];
    let mut wrong = Vec::new();
    for (series, value) in expect {
        let got = sample(&text, series);
        if got != value {
            wrong.push(format!("{series}: expected {value}, got {got}"));
        }
    }
    assert!(wrong.is_empty(), "{}\n\n{text}", wrong.join("\n"));
    assert!(
        !text.contains("m1") && !text.contains(&primary.url()),
        "no MsgId or URL in any label"
    );

    // The pushed payloads carry the engagement verdicts.
    let opens: Vec<Value> = primary
        .requests()
        .iter()
        .chain(backup.requests().iter())
        .map(|r| r.json())
        .filter(|b| b["type"] == "open")
        .collect();
    let apple = opens
        .iter()
        .find(|b| b["status"]["ip"] == APPLE_PROXY.0)
        .unwrap();
    assert_eq!(
        apple["engagement"],
        json!({"unique": true, "machine": true, "machine_reason": "apple_mpp"})
    );
    let second = opens
        .iter()
        .find(|b| b["msg_id"] == "m1" && b["status"]["ip"] != APPLE_PROXY.0)
        .unwrap();
    assert_eq!(
        second["engagement"],
        json!({"unique": false, "machine": false, "machine_reason": null})
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_exposition_passes_promtool_and_a_metrics_token_is_enforced() {
    let gw =
        TestGateway::start(|c| c.metrics.tokens = vec!["scrape-token-0123456789".into()]).await;
    let answer = gw.api.send(Method::GET, "/metrics", None, None, "").await;
    assert_eq!(answer.status, 401);
    let answer = gw
        .api
        .send(
            Method::GET,
            "/metrics",
            Some("scrape-token-0123456789"),
            None,
            "",
        )
        .await;
    assert_eq!(answer.status, 200);
    let mut child = tokio::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is installed (cargo xtask test installs Debian's prometheus)");
    use tokio::io::AsyncWriteExt;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&answer.body)
        .await
        .unwrap();
    let out = child.wait_with_output().await.unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every PromQL expression in the dashboard and the alerting rules.
fn shipped_expressions() -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("config/grafana/mailhook.json")).unwrap(),
    )
    .unwrap();
    let mut exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| {
            p["targets"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["expr"].as_str().unwrap().to_owned())
        })
        .collect();
    let alerts = std::fs::read_to_string(root.join("config/prometheus/alerts.yml")).unwrap();
    exprs.extend(
        alerts
            .lines()
            .filter_map(|line| line.trim_start().strip_prefix("expr:"))
            .map(|e| e.trim().to_owned()),
    );
    exprs
}

#[tokio::test(flavor = "multi_thread")]
async fn every_dashboard_and_alert_expression_runs_in_a_real_prometheus() {
    let gw = TestGateway::start(|_| {}).await;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let rules = root.join("config/prometheus/alerts.yml");
    let check = std::process::Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(&rules)
        .output()
        .expect("promtool");
    assert!(
        check.status.success(),
        "promtool check rules: {}",
        String::from_utf8_lossy(&check.stdout)
    );

    let dir = tempfile::tempdir().unwrap();
    let port = mailhook_test_support::gateway::free_port().port();
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: mailhook\n    static_configs:\n      - targets: ['{}']\n",
        rules.display(),
        gw.gateway().local_addr()
    );
    std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
    let mut prometheus = tokio::process::Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            dir.path().join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("prometheus is installed (cargo xtask test installs Debian's prometheus)");
    let prom = ApiClient::new(([127, 0, 0, 1], port).into(), "", "");
    let query = |expr: String| {
        let prom = prom.clone();
        async move {
            let encoded: String = url::form_urlencoded::byte_serialize(expr.as_bytes()).collect();
            prom.send(
                Method::GET,
                &format!("/api/v1/query?query={encoded}"),
                None,
                None,
                "",
            )
            .await
        }
    };
    // Wait for Prometheus and its first successful scrape of the gateway.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if prom.healthz_path("/-/ready").await {
            let up = query("up{job=\"mailhook\"}".to_owned()).await.json();
            if up["data"]["result"][0]["value"][1] == "1" {
                break;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "prometheus did not scrape the gateway within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let exposition = scrape(&gw.api).await;
    let exported: BTreeSet<&str> = exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap())
        .collect();
    let exprs = shipped_expressions();
    assert!(exprs.len() >= 20, "found {} expressions", exprs.len());
    for expr in &exprs {
        let answer = query(expr.clone()).await;
        let body = answer.json();
        assert_eq!(
            body["status"], "success",
            "Prometheus refused `{expr}`: {body}"
        );
        let mut rest = expr.as_str();
        while let Some(at) = rest.find("mailhook_") {
            let name: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            assert!(
                exported.contains(name.as_str()),
                "`{expr}` uses {name}, which mailhook does not export"
            );
            rest = &rest[at + name.len()..];
        }
    }
    prometheus.kill().await.ok();
}
