//! Gateways for tests: in-process on 127.0.0.1:0, or the real binary as a child process that
//! can be killed with SIGKILL or stopped with SIGTERM, each on its own temporary data dir.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use mailhook::{Config, Gateway};
use mailhook_delivery::resolve::{BoxFuture, Resolve, SystemResolver};
use tempfile::TempDir;
use tokio::process::{Child, Command};

use crate::client::ApiClient;
use crate::test_db::TestDatabase;

pub const INTAKE_TOKEN: &str = "test-intake-token-0123456789";
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// Selects the store every gateway of the end-to-end suite runs on: unset or `sqlite` for
/// the embedded store in the gateway's temp dir, `postgres` for a fresh database on the
/// local PostgreSQL server per gateway (kept across its restarts, dropped with it).
pub const STORE_ENV: &str = "MAILHOOK_TEST_STORE";

/// Whether this test run puts its gateways on PostgreSQL (see `STORE_ENV`).
pub fn test_store_is_postgres() -> bool {
    match std::env::var(STORE_ENV).as_deref() {
        Err(_) | Ok("") | Ok("sqlite") => false,
        Ok("postgres") => true,
        Ok(other) => panic!("{STORE_ENV}={other} is not understood: use sqlite or postgres"),
    }
}

/// A fresh database when the run is on PostgreSQL.
async fn test_database() -> Option<TestDatabase> {
    if test_store_is_postgres() {
        Some(TestDatabase::create().await)
    } else {
        None
    }
}

/// A config for tests: loopback, fixed tokens, fast retries, no recovery rounds.
pub fn test_config(data_dir: &Path) -> Config {
    let mut config = Config {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        data_dir: data_dir.to_path_buf(),
        ..Config::default()
    };
    config.auth.intake_tokens = vec![INTAKE_TOKEN.to_owned()];
    config.auth.admin_tokens = vec![ADMIN_TOKEN.to_owned()];
    config.security.allow_private_addresses = true;
    config.delivery.retry_backoff = vec![Duration::from_millis(20)];
    config.delivery.attempt_timeout = Duration::from_millis(1000);
    config.delivery.connect_timeout = Duration::from_millis(500);
    config.delivery.recovery_schedule = vec![];
    config.delivery.idle_poll = Duration::from_millis(200);
    config.shutdown.grace = Duration::from_secs(5);
    config.log.level = "warn".to_owned();
    config
}

/// A gateway running inside the test process.
pub struct TestGateway {
    pub gateway: Option<Gateway>,
    pub api: ApiClient,
    pub dir: TempDir,
    /// The gateway's PostgreSQL database (`STORE_ENV=postgres`); last, so it is dropped
    /// after the gateway.
    pub db: Option<TestDatabase>,
}

impl TestGateway {
    /// Starts with `test_config`, changed by `tweak`.
    pub async fn start(tweak: impl FnOnce(&mut Config)) -> TestGateway {
        TestGateway::start_with_resolver(tweak, Arc::new(SystemResolver)).await
    }

    /// Starts with a name resolver of the test's choosing (see `StaticResolver`).
    pub async fn start_with_resolver(
        tweak: impl FnOnce(&mut Config),
        resolver: Arc<dyn Resolve>,
    ) -> TestGateway {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = test_database().await;
        let url = db.as_ref().map(|db| db.url().to_owned());
        let gateway = launch(dir.path(), url.as_deref(), tweak, resolver).await;
        let api = ApiClient::new(gateway.local_addr(), INTAKE_TOKEN, ADMIN_TOKEN);
        TestGateway {
            gateway: Some(gateway),
            api,
            dir,
            db,
        }
    }

    /// Shuts down and starts again on the same data dir with a new config tweak.
    pub async fn restart(&mut self, tweak: impl FnOnce(&mut Config)) {
        self.shutdown().await;
        let url = self.db.as_ref().map(|db| db.url().to_owned());
        let gateway = launch(
            self.dir.path(),
            url.as_deref(),
            tweak,
            Arc::new(SystemResolver),
        )
        .await;
        self.api = ApiClient::new(gateway.local_addr(), INTAKE_TOKEN, ADMIN_TOKEN);
        self.gateway = Some(gateway);
    }

    pub fn gateway(&self) -> &Gateway {
        self.gateway.as_ref().expect("gateway running")
    }

    pub async fn shutdown(&mut self) {
        if let Some(gateway) = self.gateway.take() {
            gateway.shutdown().await;
        }
    }
}

async fn launch(
    dir: &Path,
    store_url: Option<&str>,
    tweak: impl FnOnce(&mut Config),
    resolver: Arc<dyn Resolve>,
) -> Gateway {
    let mut config = test_config(dir);
    if let Some(url) = store_url {
        config.store.url = url.to_owned();
    }
    tweak(&mut config);
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .expect("bind");
    Gateway::start_with(config, listener, resolver)
        .await
        .expect("gateway starts")
}

/// A resolver that knows only the names it is given: tests point names at chosen IPs.
pub struct StaticResolver(pub HashMap<String, Vec<IpAddr>>);

impl Resolve for StaticResolver {
    fn lookup(&self, host: &str) -> BoxFuture<std::io::Result<Vec<IpAddr>>> {
        let found = self.0.get(host).cloned().ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{host} is not in the test's resolver"),
            )
        });
        Box::pin(async move { found })
    }
}

/// Path of the `mailhook` binary built next to the test executable (`cargo xtask test`
/// builds it first), or `MAILHOOK_BIN`.
pub fn mailhook_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("MAILHOOK_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test> -> target/<profile>/mailhook
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test exe lives in target/<profile>/deps");
    let bin = profile_dir.join("mailhook");
    assert!(
        bin.is_file(),
        "{} is missing: build it with `cargo build -p mailhook` (cargo xtask test does) or set MAILHOOK_BIN",
        bin.display()
    );
    bin
}

/// Keeps the test suite's own `MAILHOOK_*` variables (`MAILHOOK_TEST_STORE`, `MAILHOOK_BIN`,
/// ...) out of `command`'s environment: the gateway reads every one of them as a config key.
pub fn without_suite_env(command: &mut Command) -> &mut Command {
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("MAILHOOK_") {
            command.env_remove(name);
        }
    }
    command
}

/// The real `mailhook` binary as a child process.
pub struct GatewayProcess {
    pub child: Option<Child>,
    pub api: ApiClient,
    pub config_path: PathBuf,
    pub addr: SocketAddr,
    pub dir: TempDir,
    /// Where the gateway's stderr (its log) goes; `None`: the test's own stderr.
    pub log_path: Option<PathBuf>,
    /// The PostgreSQL database it runs on, shared with the other nodes of a test; last, so
    /// it is dropped after the process is killed.
    pub db: Option<Arc<TestDatabase>>,
}

impl GatewayProcess {
    /// Writes the config (with a free port) and starts the binary; returns once `/healthz`
    /// answers.
    pub async fn start(tweak: impl FnOnce(&mut Config)) -> GatewayProcess {
        let db = test_database().await.map(Arc::new);
        GatewayProcess::start_inner(tweak, false, db).await
    }

    /// Like `start`, with the gateway's log written to `log_path` for the test to read.
    pub async fn start_logged(tweak: impl FnOnce(&mut Config)) -> GatewayProcess {
        let db = test_database().await.map(Arc::new);
        GatewayProcess::start_inner(tweak, true, db).await
    }

    /// A node on the PostgreSQL database `db`, which other nodes of the test share; its log
    /// is captured like `start_logged`.
    pub async fn start_node(
        db: Arc<TestDatabase>,
        tweak: impl FnOnce(&mut Config),
    ) -> GatewayProcess {
        GatewayProcess::start_inner(tweak, true, Some(db)).await
    }

    async fn start_inner(
        tweak: impl FnOnce(&mut Config),
        capture_log: bool,
        db: Option<Arc<TestDatabase>>,
    ) -> GatewayProcess {
        let mut process = GatewayProcess::prepare_inner(tweak, capture_log, db);
        process.spawn().await;
        process
    }

    /// Writes the config like `start_logged` but starts nothing: for tests of a start that
    /// must fail (see `run_to_exit`), or that change the data dir first.
    pub async fn prepare(tweak: impl FnOnce(&mut Config)) -> GatewayProcess {
        let db = test_database().await.map(Arc::new);
        GatewayProcess::prepare_inner(tweak, true, db)
    }

    /// Runs the binary on `config_path` until it exits (within `timeout`); its exit code
    /// and everything it wrote to stderr. For starts that must fail.
    pub async fn run_to_exit(config_path: &Path, timeout: Duration) -> (Option<i32>, String) {
        let mut command = Command::new(mailhook_bin());
        without_suite_env(&mut command);
        let child = command
            .arg("--config")
            .arg(config_path)
            .arg("serve")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn mailhook");
        let output = tokio::time::timeout(timeout, child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("mailhook did not exit within {timeout:?}"))
            .expect("wait for mailhook");
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    fn prepare_inner(
        tweak: impl FnOnce(&mut Config),
        capture_log: bool,
        db: Option<Arc<TestDatabase>>,
    ) -> GatewayProcess {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = test_config(&dir.path().join("data"));
        config.listen = free_port();
        if let Some(db) = &db {
            config.store.url = db.url().to_owned();
        }
        tweak(&mut config);
        let config_path = dir.path().join("mailhook.toml");
        std::fs::write(
            &config_path,
            toml::to_string(&config).expect("config serializes"),
        )
        .expect("write config");
        let addr = config.listen;
        GatewayProcess {
            child: None,
            api: ApiClient::new(addr, INTAKE_TOKEN, ADMIN_TOKEN),
            config_path,
            log_path: capture_log.then(|| dir.path().join("gateway.log")),
            addr,
            dir,
            db,
        }
    }

    /// (Re)starts the binary on the same config and data dir.
    pub async fn spawn(&mut self) {
        assert!(self.child.is_none(), "already running");
        let mut command = Command::new(mailhook_bin());
        without_suite_env(&mut command);
        let child = command
            .arg("--config")
            .arg(&self.config_path)
            .arg("serve")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(match &self.log_path {
                Some(path) => {
                    let file = std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path)
                        .expect("log file");
                    Stdio::from(file)
                }
                None => Stdio::inherit(),
            })
            .kill_on_drop(true)
            .spawn()
            .expect("spawn mailhook");
        self.child = Some(child);
        self.wait_healthy(Duration::from_secs(20)).await;
    }

    async fn wait_healthy(&mut self, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.api.healthz().await {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("mailhook exited during start with {status}");
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "mailhook did not become healthy within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    fn pid(&self) -> nix::unistd::Pid {
        let id = self
            .child
            .as_ref()
            .and_then(Child::id)
            .expect("running child");
        nix::unistd::Pid::from_raw(id as i32)
    }

    /// SIGKILL: no shutdown code runs at all.
    pub async fn kill9(&mut self) {
        nix::sys::signal::kill(self.pid(), nix::sys::signal::Signal::SIGKILL).expect("kill -9");
        let mut child = self.child.take().expect("running child");
        let _ = child.wait().await;
    }

    /// SIGTERM, then waits for the exit; returns the exit code.
    pub async fn terminate(&mut self, timeout: Duration) -> Option<i32> {
        nix::sys::signal::kill(self.pid(), nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
        let mut child = self.child.take().expect("running child");
        let status = tokio::time::timeout(timeout, child.wait())
            .await
            .expect("mailhook exits after SIGTERM within the timeout")
            .expect("wait");
        status.code()
    }

    /// Sends SIGTERM without waiting (to observe the shutdown from outside).
    pub fn send_sigterm(&self) {
        nix::sys::signal::kill(self.pid(), nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    }

    /// Everything the gateway logged so far (needs `start_logged`).
    pub fn log(&self) -> String {
        let path = self.log_path.as_ref().expect("started with start_logged");
        std::fs::read_to_string(path).unwrap_or_default()
    }

    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let mut child = self.child.take().expect("running child");
        let status = tokio::time::timeout(timeout, child.wait())
            .await
            .expect("mailhook exits in time")
            .expect("wait");
        status.code()
    }
}

/// A port that was free a moment ago (the child binds it right after).
pub fn free_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr")
}
