//! Store faults at start, with the real binary: a damaged or unreadable SQLite file stops the
//! start with a message naming the file and a defined exit code (never a panic), and the data
//! directory's lock keeps a second gateway out while the first runs, and only then.

use std::time::Duration;

use mailhook::exit;
use mailhook_test_support::GatewayProcess;
use serde_json::json;

use crate::post;

const EXIT_WAIT: Duration = Duration::from_secs(30);

/// The embedded SQLite store in the data dir, whatever store the suite runs on.
fn sqlite(c: &mut mailhook::Config) {
    c.store.url = String::new();
}

fn assert_clean_failure(stderr: &str) {
    assert!(
        !stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"),
        "a start failure is an error, not a panic:\n{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_that_is_not_a_database_stops_the_start_with_exit_code_store_corrupt() {
    let gw = GatewayProcess::prepare(sqlite).await;
    let data = gw.dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let garbage: Vec<u8> = (0..64 * 1024u32).map(|i| (i * 7919 % 251) as u8).collect();
    std::fs::write(data.join("mailhook.db"), garbage).unwrap();

    let (code, stderr) = GatewayProcess::run_to_exit(&gw.config_path, EXIT_WAIT).await;
    assert_eq!(code, Some(i32::from(exit::STORE_CORRUPT)), "{stderr}");
    assert!(
        stderr.contains("mailhook.db") && stderr.contains("corrupt"),
        "the message names the file and the problem:\n{stderr}"
    );
    assert_clean_failure(&stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_database_damaged_after_use_stops_the_start_with_exit_code_store_corrupt() {
    let mut gw = GatewayProcess::prepare(sqlite).await;
    gw.spawn().await;
    let events: Vec<_> = (0..300)
        .map(|i| json!({"type": "send", "msg_id": format!("m-{i}"), "email": {"subject": "x".repeat(500)}}))
        .collect();
    post(&gw.api, json!(events)).await;
    assert_eq!(gw.terminate(EXIT_WAIT).await, Some(0));

    // Keep the header (page 1: the file still says it is SQLite), scramble every page after.
    let path = gw.dir.path().join("data").join("mailhook.db");
    let mut bytes = std::fs::read(&path).unwrap();
    assert!(bytes.len() > 16 * 4096, "{} bytes", bytes.len());
    for (i, byte) in bytes.iter_mut().enumerate().skip(4096) {
        *byte = (i * 31 % 253) as u8;
    }
    std::fs::write(&path, bytes).unwrap();

    let (code, stderr) = GatewayProcess::run_to_exit(&gw.config_path, EXIT_WAIT).await;
    assert_eq!(code, Some(i32::from(exit::STORE_CORRUPT)), "{stderr}");
    assert!(stderr.contains("mailhook.db"), "{stderr}");
    assert_clean_failure(&stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreadable_store_file_stops_the_start_with_exit_code_store_unavailable() {
    let gw = GatewayProcess::prepare(sqlite).await;
    // A directory where the file should be: unreadable as a database even to root (which
    // file permissions would not stop).
    std::fs::create_dir_all(gw.dir.path().join("data").join("mailhook.db")).unwrap();

    let (code, stderr) = GatewayProcess::run_to_exit(&gw.config_path, EXIT_WAIT).await;
    assert_eq!(code, Some(i32::from(exit::STORE_UNAVAILABLE)), "{stderr}");
    assert!(stderr.contains("mailhook.db"), "{stderr}");
    assert_clean_failure(&stderr);
}

/// A copy of `config_path` on another port, same data dir: a second gateway on it.
fn second_config(gw: &GatewayProcess) -> std::path::PathBuf {
    let text = std::fs::read_to_string(&gw.config_path).unwrap();
    let other = mailhook_test_support::gateway::free_port();
    assert!(text.contains(&gw.addr.to_string()));
    let path = gw.dir.path().join("second.toml");
    std::fs::write(
        &path,
        text.replace(&gw.addr.to_string(), &other.to_string()),
    )
    .unwrap();
    path
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_gateway_on_the_same_data_dir_is_refused_until_the_first_is_gone() {
    let mut first = GatewayProcess::start_logged(|_| {}).await;
    let second = second_config(&first);

    let (code, stderr) = GatewayProcess::run_to_exit(&second, EXIT_WAIT).await;
    assert_eq!(code, Some(i32::from(exit::DATA_DIR_IN_USE)), "{stderr}");
    assert!(
        stderr.contains("in use by another mailhook process"),
        "{stderr}"
    );
    assert_clean_failure(&stderr);
    assert!(first.api.healthz().await, "the first gateway is unaffected");
    post(&first.api, json!({"type": "send", "msg_id": "still-mine"})).await;

    // The lock dies with its process, even with kill -9: no stale lock to clean up by hand,
    // and a gateway starts on the data dir at once, with what the first stored.
    first.kill9().await;
    first.spawn().await;
    let found = first.api.message("default", "still-mine").await;
    assert_eq!(found.status, 200);
    assert_eq!(found.json()["events"].as_array().unwrap().len(), 1);
    // While it runs, the second config is refused again.
    let (code, _) = GatewayProcess::run_to_exit(&second, EXIT_WAIT).await;
    assert_eq!(code, Some(i32::from(exit::DATA_DIR_IN_USE)));
    assert_eq!(first.terminate(EXIT_WAIT).await, Some(0));
}
