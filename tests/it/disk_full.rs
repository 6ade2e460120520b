//! A full disk, for real: the gateway (the real binary, on the embedded SQLite store) keeps its
//! data dir on an 8 MiB tmpfs this test mounts, which a filler file then fills. Intake must
//! answer 503 with `Retry-After` (never 500), lose nothing it acknowledged, and take events
//! again by itself once the filler is deleted.
//!
//! Mounting needs root (CI runs as root); elsewhere the test fails saying so.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use mailhook_test_support::{GatewayProcess, Receiver};
use serde_json::{Value, json};

use crate::configure;

/// A tmpfs of `size`, unmounted (lazily, in case something still holds it) when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("run mount");
        assert!(
            output.status.success(),
            "this test mounts a small tmpfs to fill it and needs root (CI runs as root): \
             mount said {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Writes zeros to `path` until the filesystem refuses more; the bytes written.
fn fill(path: &Path) -> u64 {
    let mut file = std::fs::File::create(path).unwrap();
    let block = vec![0u8; 64 * 1024];
    let mut written = 0u64;
    loop {
        match file.write(&block) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(err) => {
                assert_eq!(
                    err.raw_os_error(),
                    Some(28),
                    "filling stopped on ENOSPC, not {err}"
                );
                break;
            }
        }
    }
    // Whatever the page cache still holds must reach the filesystem's count too.
    let _ = file.sync_all();
    written
}

fn events(prefix: &str, n: usize) -> Value {
    Value::Array(
        (0..n)
            .map(|i| {
                json!({"type": "delivery", "msg_id": format!("{prefix}-{i}"),
                       "event_id": format!("{prefix}-{i}"),
                       "email": {"subject": "s".repeat(200)}})
            })
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_gets_503_with_retry_after_loses_nothing_and_intake_resumes_when_space_returns()
{
    let disk = Tmpfs::mount("8m");
    let data_dir: PathBuf = disk.path().join("data");
    let receiver = Receiver::start().await;
    let mut gw = GatewayProcess::start_logged(|c| {
        c.data_dir = data_dir.clone();
        // The embedded store in the data dir on the small disk, whatever the suite runs on.
        c.store.url = String::new();
    })
    .await;
    configure(&gw.api, "default", &[&receiver], &["delivery"]).await;

    let mut accepted: HashSet<String> = HashSet::new();
    let mut post = async |api: &mailhook_test_support::ApiClient, body: &Value| {
        let answer = api.post_events(body).await;
        if answer.status == 202 {
            for id in answer.json()["event_ids"].as_array().unwrap() {
                accepted.insert(id.as_str().unwrap().to_owned());
            }
        }
        answer
    };
    assert_eq!(post(&gw.api, &events("before", 50)).await.status, 202);

    let filler = disk.path().join("filler");
    let filled = fill(&filler);
    assert!(filled > 0, "the filler took the free space");

    // The store may still have room in pages it already owns; soon every write needs more.
    let mut refused = None;
    for round in 0..200 {
        let answer = post(&gw.api, &events(&format!("full{round}"), 20)).await;
        match answer.status.as_u16() {
            202 => continue,
            503 => {
                refused = Some(answer);
                break;
            }
            other => panic!(
                "a full disk must get 503, got {other}: {}",
                String::from_utf8_lossy(&answer.body)
            ),
        }
    }
    let refused = refused.expect("intake answered 503 once the disk was full");
    let retry_after = refused
        .headers
        .get("retry-after")
        .expect("503 carries Retry-After")
        .to_str()
        .unwrap()
        .parse::<u64>()
        .expect("Retry-After in seconds");
    assert!(retry_after >= 1, "{retry_after}");
    assert!(
        refused.json()["error"]
            .as_str()
            .unwrap()
            .contains("retry later"),
        "{}",
        String::from_utf8_lossy(&refused.body)
    );
    // A second refused request is refused the same way (the store did not wedge into 500s).
    let again = gw.api.post_events(&events("again", 5)).await;
    assert_eq!(again.status, 503);

    // Space returns: intake resumes by itself, no restart.
    std::fs::remove_file(&filler).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let answer = post(&gw.api, &events("after", 20)).await;
        if answer.status == 202 {
            break;
        }
        assert_eq!(
            answer.status,
            503,
            "{}",
            String::from_utf8_lossy(&answer.body)
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "intake did not resume within 15 s of space returning"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Everything acknowledged, before, during and after, reaches the receiver.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let got: HashSet<String> = receiver
            .requests()
            .iter()
            .filter_map(|r| r.header("webhook-id").map(str::to_owned))
            .collect();
        let missing = accepted.difference(&got).count();
        if missing == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{missing} of {} acknowledged events not delivered; gateway log:\n{}",
            accepted.len(),
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(gw.terminate(Duration::from_secs(20)).await, Some(0));
    assert!(
        !gw.log().contains("panicked"),
        "no panic in the gateway:\n{}",
        gw.log()
    );
}
