//! The README's quick start, run as a new user would paste it: its own text, in a shell, in
//! an empty directory. The only change is `cargo run --release -p mailhook`, which becomes
//! the binary the suite built; every other character is the README's. A session once found
//! step 3 answering 422 (loopback was refused by default) only by pasting it by hand.
//!
//! It uses the README's fixed ports (8080, 9000), which nothing else in the suite binds: every
//! other test listens on a port the kernel picks.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use mailhook_test_support::gateway::{mailhook_bin, without_suite_env};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

const STEP_TIMEOUT: Duration = Duration::from_secs(20);
const CARGO_RUN: &str = "cargo run --release -p mailhook";

/// The commands of the quick start's `sh` block, by step number (`# 1. ...` starts step 1).
fn quick_start_steps(readme: &str) -> BTreeMap<u32, String> {
    let section = readme
        .split("\n## Quick start")
        .nth(1)
        .expect("README has a `## Quick start` section");
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|rest| rest.split("\n```").next())
        .expect("the quick start has an ```sh block");
    let mut steps = BTreeMap::new();
    let mut current = None;
    for line in block.lines() {
        let number = line
            .strip_prefix("# ")
            .and_then(|rest| rest.split_once(". "))
            .and_then(|(n, _)| n.parse::<u32>().ok());
        if let Some(n) = number {
            current = Some(n);
        }
        let n = current.unwrap_or_else(|| panic!("a line before step 1: {line}"));
        let step: &mut String = steps.entry(n).or_default();
        step.push_str(line);
        step.push('\n');
    }
    steps
}

/// A shell for `command`, in `dir`, with none of the suite's `MAILHOOK_*` variables: a new
/// user's terminal. It leads its own process group, so [`Started`] can stop whatever it
/// started (the receiver's `python3` is bash's child, not bash).
fn shell(dir: &Path, command: Option<&str>) -> Command {
    let mut shell = Command::new("bash");
    shell.process_group(0);
    if let Some(command) = command {
        shell.arg("-c").arg(command);
    }
    without_suite_env(&mut shell)
        .env_remove("RUST_LOG")
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    shell
}

/// A started shell; on drop, even when the test panics, its whole process group is killed,
/// so a gateway or receiver never outlives the test holding the README's ports.
struct Started(Child);

impl Started {
    fn spawn(mut command: Command, what: &str) -> Started {
        Started(
            command
                .spawn()
                .unwrap_or_else(|err| panic!("start {what}: {err}")),
        )
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        if let Some(pid) = self.0.id() {
            let group = nix::unistd::Pid::from_raw(pid as i32);
            let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// Polls `ready` every 100 ms until it holds or `STEP_TIMEOUT` passes.
async fn wait_until(what: &str, mut ready: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while !ready().await {
        assert!(
            start.elapsed() < STEP_TIMEOUT,
            "{what} within {STEP_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn port_open(port: u16) -> bool {
    tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_ok()
}

/// The user's terminal for steps 3 to 5: one shell reading commands as they are typed, so
/// the variables step 3 sets are there for the next steps.
struct Terminal {
    _shell: Started,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
}

impl Terminal {
    /// Runs `commands` and returns what they printed.
    async fn type_in(&mut self, commands: &str) -> String {
        const DONE: &str = "@@readme-step-done";
        let typed = format!("{commands}\necho; echo {DONE}\n");
        self.stdin.write_all(typed.as_bytes()).await.unwrap();
        self.stdin.flush().await.unwrap();
        let mut printed = String::new();
        loop {
            let line = tokio::time::timeout(STEP_TIMEOUT, self.stdout.next_line())
                .await
                .unwrap_or_else(|_| panic!("no end within {STEP_TIMEOUT:?} of:\n{commands}"))
                .unwrap()
                .unwrap_or_else(|| panic!("the shell exited during:\n{commands}"));
            if line == DONE {
                return printed;
            }
            printed.push_str(&line);
            printed.push('\n');
        }
    }
}

fn json(step: u32, printed: &str) -> Value {
    serde_json::from_str(printed.trim())
        .unwrap_or_else(|err| panic!("step {step} printed no JSON ({err}): {printed}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_readme_quick_start_works_as_written() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("read README.md");
    let steps = quick_start_steps(&readme);
    assert_eq!(
        steps.keys().copied().collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5],
        "the quick start's steps"
    );
    for port in [8080, 9000] {
        assert!(
            !port_open(port).await,
            "port {port}, which the quick start uses, is already taken on this machine"
        );
    }
    let dir = tempfile::tempdir().unwrap();

    // 1. The gateway, on its defaults, with the README's environment.
    assert!(
        steps[&1].contains(CARGO_RUN),
        "step 1 runs `{CARGO_RUN}`: {}",
        steps[&1]
    );
    let bin = mailhook_bin().display().to_string();
    let step1 = steps[&1].replace(CARGO_RUN, &format!("exec '{bin}'"));
    let _gateway = Started::spawn(shell(dir.path(), Some(&step1)), "step 1");
    wait_until("the gateway listens on 127.0.0.1:8080", async || {
        port_open(8080).await
    })
    .await;

    // 2. The receiver, printing what it gets.
    let mut receiver = Started::spawn(shell(dir.path(), Some(&steps[&2])), "step 2");
    let mut received = BufReader::new(receiver.0.stdout.take().unwrap()).lines();
    wait_until("the receiver listens on 127.0.0.1:9000", async || {
        port_open(9000).await
    })
    .await;

    let mut terminal = {
        let mut shell = Started::spawn(shell(dir.path(), None), "a shell");
        Terminal {
            stdin: shell.0.stdin.take().unwrap(),
            stdout: BufReader::new(shell.0.stdout.take().unwrap()).lines(),
            _shell: shell,
        }
    };

    // 3. The settings are saved: the answer is the settings, with the signing secret.
    let saved = json(3, &terminal.type_in(&steps[&3]).await);
    assert_eq!(saved["enabled"], true, "{saved}");
    assert_eq!(
        saved["addresses"],
        serde_json::json!(["http://127.0.0.1:9000/hook", "http://127.0.0.1:9001/hook"]),
        "{saved}"
    );
    assert!(
        saved["secret"]
            .as_str()
            .is_some_and(|s| s.starts_with("whsec_")),
        "{saved}"
    );

    // 4. The event is accepted.
    let accepted = json(4, &terminal.type_in(&steps[&4]).await);
    assert_eq!(accepted["accepted"], 1, "{accepted}");
    let event_id = accepted["event_ids"][0].as_str().expect("an event id");

    // The receiver printed it: the webhook id, the primary, and the body.
    let line = tokio::time::timeout(STEP_TIMEOUT, received.next_line())
        .await
        .expect("the receiver printed the push")
        .unwrap()
        .expect("the receiver is running");
    let (id, rest) = line.split_once(' ').expect("id, address, body");
    let (address, body) = rest.split_once(' ').expect("address, body");
    assert_eq!((id, address), (event_id, "primary"), "{line}");
    let body: Value = serde_json::from_str(body).expect("the pushed body is JSON");
    assert_eq!(body["msg_id"], "msg-1");
    assert_eq!(body["type"], "delivery");
    assert_eq!(body["email"]["to"], "ana@example.com");
    assert_eq!(body["status"]["smtp_code"], 250);

    // 5. The lookup shows it delivered to the primary, with the receiver's 200.
    let mut shown = Value::Null;
    wait_until("the lookup shows the event delivered", async || {
        shown = json(5, &terminal.type_in(&steps[&5]).await);
        shown["events"][0]["state"] == "delivered"
    })
    .await;
    let event = &shown["events"][0];
    assert_eq!(event["event_id"], event_id, "{shown}");
    assert_eq!(event["delivered_to"], "primary", "{shown}");
    assert_eq!(event["attempts"][0]["address"], "primary", "{shown}");
    assert_eq!(event["attempts"][0]["status"], 200, "{shown}");
}
