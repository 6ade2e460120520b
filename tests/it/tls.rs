//! TLS: HTTPS delivery verified against a private CA, certificate errors in the attempt log,
//! client certificates (mTLS), HTTP/2 by ALPN, and HTTPS on the gateway's own listener. Every
//! certificate comes from a test CA generated here (`TestPki`).

use std::time::Duration;

use http::{Method, StatusCode, Version};
use mailhook_test_support::{
    ADMIN_TOKEN, ApiClient, INTAKE_TOKEN, Receiver, TestGateway, TestPki, test_config,
};
use serde_json::json;
use tempfile::TempDir;

use crate::{attempt_log, configure, post, wait_state};

const WAIT: Duration = Duration::from_secs(10);

fn pki() -> (TempDir, TestPki) {
    let dir = tempfile::tempdir().expect("temp dir");
    let pki = TestPki::generate(dir.path());
    (dir, pki)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_https_receiver_signed_by_a_trusted_private_ca_gets_the_event() {
    let (_dir, pki) = pki();
    let receiver = Receiver::start_tls(pki.server_config_http1_only()).await;
    assert!(receiver.url().starts_with("https://localhost:"));
    let ca = pki.ca_cert_file.clone();
    let gw = TestGateway::start(|c| c.tls.extra_ca_files = vec![ca]).await;
    configure(&gw.api, "default", &[&receiver], &["delivery"]).await;
    post(
        &gw.api,
        json!({"type": "delivery", "msg_id": "tls-trusted", "event_id": "evt-tls"}),
    )
    .await;

    let got = receiver.wait_for(1, WAIT).await;
    assert_eq!(got[0].header("webhook-id"), Some("evt-tls"));
    assert_eq!(got[0].json()["msg_id"], "tls-trusted");
    assert_eq!(got[0].version, Version::HTTP_11);
    assert_eq!(got[0].client_cert, None, "no client certificate configured");
    let event = wait_state(&gw.api, "default", "tls-trusted", "delivered").await;
    assert_eq!(attempt_log(&event), vec![("primary".to_owned(), Some(200))]);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_untrusted_certificate_fails_the_attempt_with_a_certificate_error() {
    let (_dir, pki) = pki();
    let receiver = Receiver::start_tls(pki.server_config()).await;
    // The defaults trust the built-in public roots only: the test CA is unknown.
    let gw = TestGateway::start(|c| c.delivery.retries_per_address = 0).await;
    configure(&gw.api, "default", &[&receiver], &["bounce"]).await;
    post(
        &gw.api,
        json!({"type": "bounce", "msg_id": "tls-untrusted"}),
    )
    .await;

    let event = wait_state(&gw.api, "default", "tls-untrusted", "dead").await;
    assert_eq!(attempt_log(&event), vec![("primary".to_owned(), None)]);
    let error = event["attempts"][0]["error"].as_str().unwrap();
    assert!(
        error.starts_with("TLS error: invalid peer certificate: UnknownIssuer"),
        "{error}"
    );
    assert!(error.contains("tls.extra_ca_files"), "{error}");
    assert_eq!(receiver.count(), 0, "no request went over the rejected TLS");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_receiver_requiring_mtls_gets_the_configured_client_certificate() {
    let (_dir, pki) = pki();
    let receiver = Receiver::start_tls(pki.server_config_requiring_client_cert()).await;
    let (ca, cert, key) = (
        pki.ca_cert_file.clone(),
        pki.client_cert_file.clone(),
        pki.client_key_file.clone(),
    );
    let gw = TestGateway::start(|c| {
        c.tls.extra_ca_files = vec![ca];
        c.tls.client_cert_file = cert;
        c.tls.client_key_file = key;
    })
    .await;
    configure(&gw.api, "default", &[&receiver], &["open"]).await;
    post(&gw.api, json!({"type": "open", "msg_id": "mtls"})).await;

    let got = receiver.wait_for(1, WAIT).await;
    assert_eq!(
        got[0].client_cert.as_deref(),
        Some(pki.client_der().as_ref()),
        "the receiver saw the configured client certificate"
    );
    let event = wait_state(&gw.api, "default", "mtls", "delivered").await;
    assert_eq!(attempt_log(&event), vec![("primary".to_owned(), Some(200))]);
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_client_certificate_an_mtls_receiver_refuses_the_handshake() {
    let (_dir, pki) = pki();
    let receiver = Receiver::start_tls(pki.server_config_requiring_client_cert()).await;
    let ca = pki.ca_cert_file.clone();
    let gw = TestGateway::start(|c| {
        c.tls.extra_ca_files = vec![ca];
        c.delivery.retries_per_address = 0;
    })
    .await;
    configure(&gw.api, "default", &[&receiver], &["open"]).await;
    post(&gw.api, json!({"type": "open", "msg_id": "no-client-cert"})).await;

    let event = wait_state(&gw.api, "default", "no-client-cert", "dead").await;
    assert_eq!(attempt_log(&event), vec![("primary".to_owned(), None)]);
    let error = event["attempts"][0]["error"].as_str().unwrap();
    // The receiver's alert names the missing setting even when the alert and close beat the
    // client's first write in TLS 1.3 (the write then waits for the read that finds it).
    assert!(
        error.starts_with("TLS error: received fatal alert: CertificateRequired"),
        "{error}"
    );
    assert!(error.contains("tls.client_cert_file"), "{error}");
    assert_eq!(receiver.count(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn http2_is_used_when_the_receiver_offers_it_by_alpn() {
    let (_dir, pki) = pki();
    let receiver = Receiver::start_tls(pki.server_config()).await;
    let ca = pki.ca_cert_file.clone();
    let gw = TestGateway::start(|c| c.tls.extra_ca_files = vec![ca]).await;
    configure(&gw.api, "default", &[&receiver], &["click"]).await;
    post(
        &gw.api,
        json!([{"type": "click", "msg_id": "h2-a"}, {"type": "click", "msg_id": "h2-b"}]),
    )
    .await;

    let got = receiver.wait_for(2, WAIT).await;
    assert!(
        got.iter().all(|r| r.version == Version::HTTP_2),
        "{:?}",
        got.iter().map(|r| r.version).collect::<Vec<_>>()
    );
    wait_state(&gw.api, "default", "h2-a", "delivered").await;
    wait_state(&gw.api, "default", "h2-b", "delivered").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_listener_serves_the_api_over_https() {
    let (_dir, pki) = pki();
    let (cert, key) = (pki.server_cert_file.clone(), pki.server_key_file.clone());
    let gw = TestGateway::start(|c| {
        c.tls.listen_cert_file = cert;
        c.tls.listen_key_file = key;
    })
    .await;
    let addr = gw.gateway().local_addr();
    let api = ApiClient::new_tls(addr, pki.client_config(), INTAKE_TOKEN, ADMIN_TOKEN);

    let health = api.send(Method::GET, "/healthz", None, None, "").await;
    assert_eq!(health.status, StatusCode::OK);
    assert_eq!(health.version, Version::HTTP_2, "h2 offered by ALPN");
    let receiver = Receiver::start().await;
    configure(&api, "default", &[&receiver], &["send"]).await;
    post(&api, json!({"type": "send", "msg_id": "over-https"})).await;
    receiver.wait_for(1, WAIT).await;
    wait_state(&api, "default", "over-https", "delivered").await;

    // Plain HTTP on the TLS port gets no answer: the handshake fails and the connection ends.
    let plain = ApiClient::new(addr, INTAKE_TOKEN, ADMIN_TOKEN);
    assert!(
        plain
            .try_post_events(&json!({"type": "send", "msg_id": "plain"}))
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_tls_file_stops_the_start_naming_the_key_and_the_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_pki_dir, pki) = pki();
    let mut config = test_config(&dir.path().join("data"));
    config.tls.listen_cert_file = dir.path().join("missing.pem");
    config.tls.listen_key_file = pki.server_key_file.clone();
    let Err(err) = mailhook::Gateway::start(config).await else {
        panic!("a gateway with a missing certificate file must not start");
    };
    let message = format!("{err:#}");
    assert!(
        message.contains("tls.listen_cert_file `") && message.contains("missing.pem`: cannot read"),
        "{message}"
    );
}
