//! `cargo xtask schemathesis`: property-based API testing of the live gateway from its own
//! OpenAPI document. Installs Schemathesis from PyPI when missing, starts the debug gateway on
//! a free loopback port, runs every check (see `tests/schemathesis.toml`) for a bounded time,
//! and fails on any finding: a 5xx, a response outside the document, an input the document
//! allows refused or one it forbids accepted, a wrong answer to an undocumented method.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

/// The Schemathesis release the checks were written against.
const VERSION: &str = "4.32.5";
const INTAKE_TOKEN: &str = "schemathesis-intake-token-0123456789";
const ADMIN_TOKEN: &str = "schemathesis-admin-token-0123456789";
/// How long the gateway may take to answer `/healthz`.
const START_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(clap::Args)]
pub struct Args {
    /// Time budget of the run, in seconds (Schemathesis's `--max-time`).
    #[arg(long, default_value_t = 90)]
    seconds: u64,
    /// Seed, for a reproducible run [default: Schemathesis picks one and prints it].
    #[arg(long)]
    seed: Option<u64>,
}

impl Args {
    pub fn brief(seconds: u64) -> Args {
        Args {
            seconds,
            seed: None,
        }
    }
}

pub fn run(root: &Path, args: Args) -> Result<()> {
    ensure!(
        (1..=86_400).contains(&args.seconds),
        "--seconds {} must be from 1 to 86400",
        args.seconds
    );
    ensure_installed()?;
    crate::run(crate::cargo(root).args(["build", "-p", "mailhook", "--bin", "mailhook"]))?;
    let bin = crate::target_dir(root)?.join("debug").join("mailhook");
    let dir = tempfile::Builder::new()
        .prefix("mailhook-schemathesis-")
        .tempdir()?;
    let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let config = format!(
        "listen = \"{addr}\"\n\
         data_dir = \"{data}\"\n\
         [store]\nurl = \"\"\n\
         [auth]\nintake_tokens = [\"{INTAKE_TOKEN}\"]\nadmin_tokens = [\"{ADMIN_TOKEN}\"]\n\
         [security]\nallow_private_addresses = true\n\
         [delivery]\ntest_timeout = \"2s\"\nattempt_timeout = \"1s\"\nconnect_timeout = \"500ms\"\n\
         recovery_schedule = []\n\
         [log]\nlevel = \"warn\"\n",
        data = dir.path().join("data").display()
    );
    let config_path = dir.path().join("mailhook.toml");
    std::fs::write(&config_path, config)?;
    let log_path = dir.path().join("gateway.log");
    let mut gateway = Command::new(&bin);
    gateway.arg("--config").arg(&config_path).arg("serve");
    for name in crate::config_overriding_env() {
        gateway.env_remove(name);
    }
    let mut gateway = Gateway(
        gateway
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_path)?)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?,
    );
    wait_healthy(&mut gateway, addr)?;

    let mut schemathesis = Command::new("python3");
    schemathesis
        .args(["-m", "schemathesis.cli", "--config-file"])
        .arg(root.join("tests/schemathesis.toml"))
        .arg("run")
        .arg(format!("http://{addr}/openapi.json"))
        .arg(format!("--max-time={}", args.seconds))
        .arg("--report=junit")
        .arg("--report-dir")
        .arg(dir.path().join("report"))
        .env("MAILHOOK_ST_INTAKE_TOKEN", INTAKE_TOKEN)
        .env("MAILHOOK_ST_ADMIN_TOKEN", ADMIN_TOKEN)
        // Its hypothesis database and reports stay in the temp dir, out of the work tree.
        .current_dir(dir.path());
    if let Some(seed) = args.seed {
        schemathesis.arg(format!("--seed={seed}"));
    }
    let found = crate::run(&mut schemathesis);
    let alive = gateway.0.try_wait()?.is_none();
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    drop(gateway);
    if log.contains("panicked") {
        bail!("the gateway panicked during the run; its log:\n{log}");
    }
    ensure!(alive, "the gateway exited during the run; its log:\n{log}");
    found.context("Schemathesis found problems (see above; `st replay <id>` reproduces one)")
}

/// The gateway process, killed when dropped.
struct Gateway(std::process::Child);

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_healthy(gateway: &mut Gateway, addr: std::net::SocketAddr) -> Result<()> {
    use std::io::{Read, Write};
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Some(status) = gateway.0.try_wait()? {
            bail!("the gateway exited during start with {status}");
        }
        let answered = std::net::TcpStream::connect(addr).and_then(|mut stream| {
            stream.set_read_timeout(Some(Duration::from_secs(1)))?;
            stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
            let mut answer = String::new();
            stream.read_to_string(&mut answer)?;
            Ok(answer.starts_with("HTTP/1.1 200"))
        });
        if matches!(answered, Ok(true)) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("the gateway did not answer /healthz within {START_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Installs Schemathesis from PyPI when `python3 -m schemathesis.cli` is not there yet.
fn ensure_installed() -> Result<()> {
    let present = Command::new("python3")
        .args(["-m", "schemathesis.cli", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if present {
        return Ok(());
    }
    eprintln!("xtask: installing schemathesis {VERSION} from PyPI");
    crate::run(Command::new("python3").args([
        "-m",
        "pip",
        "install",
        "--quiet",
        &format!("schemathesis=={VERSION}"),
    ]))
}
