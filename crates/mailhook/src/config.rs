//! The gateway's configuration: built-in defaults, then the TOML file, then `MAILHOOK_...`
//! environment variables (`__` for nesting), loaded with figment. Unknown keys are errors
//! that name the key. `config/mailhook.toml` is the commented reference of every key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use mailhook_delivery::DeliveryConfig;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address the HTTP API listens on.
    pub listen: SocketAddr,
    /// Where the embedded store, the generated tokens and the lock file live.
    pub data_dir: PathBuf,
    pub store: StoreConfig,
    pub auth: AuthConfig,
    pub delivery: DeliveryConfig,
    pub security: SecurityConfig,
    pub tls: TlsConfig,
    pub signing: SigningConfig,
    pub limits: LimitsConfig,
    pub shutdown: ShutdownConfig,
    pub log: LogConfig,
    pub metrics: mailhook_metrics::MetricsConfig,
    pub engagement: EngagementConfig,
    /// WASM plugins: payload transforms and custom sinks.
    pub plugins: mailhook_plugin_host::PluginsConfig,
    /// Webhook settings saved at start (overwriting what the API saved for these accounts).
    pub accounts: Vec<AccountSeed>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("./data"),
            store: StoreConfig::default(),
            auth: AuthConfig::default(),
            delivery: DeliveryConfig::default(),
            security: SecurityConfig::default(),
            tls: TlsConfig::default(),
            signing: SigningConfig::default(),
            limits: LimitsConfig::default(),
            shutdown: ShutdownConfig::default(),
            log: LogConfig::default(),
            metrics: mailhook_metrics::MetricsConfig::default(),
            engagement: EngagementConfig::default(),
            plugins: mailhook_plugin_host::PluginsConfig::default(),
            accounts: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `sqlite://PATH`, or `postgres://user@host:port/db` for a store several nodes share;
    /// empty means `sqlite://<data_dir>/mailhook.db`.
    pub url: String,
    /// Most events written in one group-commit transaction (SQLite).
    pub events_per_commit_max: usize,
    /// Write requests queued for the writer before intake waits (SQLite back-pressure).
    pub write_queue_max: usize,
    /// Read-only connections for lookups (SQLite).
    pub read_connections: usize,
    /// The writer's page cache in bytes (SQLite).
    pub cache_bytes_max: usize,
    /// Most pooled connections to PostgreSQL (one more is kept for LISTEN).
    pub pool_size_max: usize,
    /// Opening a PostgreSQL connection, or waiting for a free pooled one, may take this long;
    /// then the call fails as unavailable (intake answers 503, `/readyz` not ready).
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Delivered and skipped events (and their attempts) are deleted this long after they
    /// came to rest. Failed, dead and pending events are kept.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// How often the pruning of old events runs.
    #[serde(with = "humantime_serde")]
    pub prune_interval: Duration,
    /// Most events deleted in one pruning transaction; a run goes on batch after batch
    /// while there is more to delete.
    pub prune_batch_max: usize,
}

impl Default for StoreConfig {
    fn default() -> StoreConfig {
        let sqlite = mailhook_store::sqlite::SqliteOptions::default();
        let postgres = mailhook_store::postgres::PostgresOptions::default();
        StoreConfig {
            url: String::new(),
            events_per_commit_max: sqlite.events_per_commit_max,
            write_queue_max: sqlite.write_queue_max,
            read_connections: sqlite.read_connections,
            cache_bytes_max: sqlite.cache_bytes_max,
            pool_size_max: postgres.pool_size_max,
            connect_timeout: postgres.connect_timeout,
            retention: Duration::from_secs(7 * 24 * 3600),
            prune_interval: Duration::from_secs(60),
            prune_batch_max: 1000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Tokens accepted on `POST /v1/events`. Empty: one is generated on first start, kept in
    /// `data_dir/intake_token` and printed once.
    pub intake_tokens: Vec<String>,
    /// Tokens accepted on the admin API. Empty: generated like the intake token.
    pub admin_tokens: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecurityConfig {
    /// Allow pushes to loopback, private, link-local and other internal addresses (the SSRF
    /// guard off). For local setups and tests.
    pub allow_private_addresses: bool,
    /// Internal ranges pushes may reach anyway, as CIDRs (`"10.20.0.0/16"`).
    pub allowed_cidrs: Vec<ipnet::IpNet>,
}

impl SecurityConfig {
    pub fn address_policy(&self) -> mailhook_core::net::AddressPolicy {
        mailhook_core::net::AddressPolicy {
            allow_private: self.allow_private_addresses,
            allowed: self.allowed_cidrs.clone(),
        }
    }
}

/// HTTPS to receivers and TLS on the listener. File paths are PEM files, relative to the
/// working directory; an empty path means none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// CA certificates trusted for receivers besides the roots below (a private PKI).
    pub extra_ca_files: Vec<PathBuf>,
    /// Trust the operating system's certificate store for receivers.
    pub use_system_roots: bool,
    /// Trust the Mozilla roots built into the binary for receivers.
    pub use_builtin_roots: bool,
    /// Client certificate chain presented to receivers that ask for one (mTLS).
    pub client_cert_file: PathBuf,
    /// Private key of `client_cert_file`.
    pub client_key_file: PathBuf,
    /// Certificate chain of the API listener; set with `listen_key_file` to serve HTTPS.
    pub listen_cert_file: PathBuf,
    /// Private key of `listen_cert_file`.
    pub listen_key_file: PathBuf,
}

impl Default for TlsConfig {
    fn default() -> TlsConfig {
        TlsConfig {
            extra_ca_files: Vec::new(),
            use_system_roots: false,
            use_builtin_roots: true,
            client_cert_file: PathBuf::new(),
            client_key_file: PathBuf::new(),
            listen_cert_file: PathBuf::new(),
            listen_key_file: PathBuf::new(),
        }
    }
}

impl TlsConfig {
    /// What the delivery client's TLS config is built from.
    pub fn client_settings(&self) -> mailhook_delivery::tls::TlsClientSettings {
        let set = |path: &PathBuf| (!path.as_os_str().is_empty()).then(|| path.clone());
        mailhook_delivery::tls::TlsClientSettings {
            extra_ca_files: self.extra_ca_files.clone(),
            use_system_roots: self.use_system_roots,
            use_builtin_roots: self.use_builtin_roots,
            client_cert_file: set(&self.client_cert_file),
            client_key_file: set(&self.client_key_file),
        }
    }

    /// The listener's certificate and key files, when it serves HTTPS.
    pub fn listen_files(&self) -> Option<(&Path, &Path)> {
        (!self.listen_cert_file.as_os_str().is_empty()).then_some((
            self.listen_cert_file.as_path(),
            self.listen_key_file.as_path(),
        ))
    }

    fn validate(&self) -> Result<(), String> {
        let pairs = [
            ("client", &self.client_cert_file, &self.client_key_file),
            ("listen", &self.listen_cert_file, &self.listen_key_file),
        ];
        for (what, cert, key) in pairs {
            if cert.as_os_str().is_empty() != key.as_os_str().is_empty() {
                return Err(format!(
                    "tls.{what}_cert_file and tls.{what}_key_file must be set together (or both left empty)"
                ));
            }
        }
        if let Some(i) = self
            .extra_ca_files
            .iter()
            .position(|path| path.as_os_str().is_empty())
        {
            return Err(format!("tls.extra_ca_files[{i}] is empty: name a PEM file"));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SigningConfig {
    /// After `secret/rotate`, the old secret keeps signing alongside the new one this long.
    #[serde(with = "humantime_serde")]
    pub secret_rotation_grace: Duration,
}

impl Default for SigningConfig {
    fn default() -> SigningConfig {
        SigningConfig {
            secret_rotation_grace: Duration::from_secs(24 * 3600),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest request body, in bytes (413 above).
    pub body_bytes_max: usize,
    /// Most events in one intake batch (400 above).
    pub batch_events_max: usize,
    /// Longest string or key inside an event's `email` and `status`, in bytes (400 above).
    pub string_bytes_max: usize,
    /// Deepest nesting of arrays and objects in an intake body (400 above).
    pub json_depth_max: usize,
    /// Most failures listed by one `GET .../failures` (`limit` above it is a 400).
    pub failures_limit_max: usize,
    /// Events per second each account may post (429 with Retry-After above).
    pub intake_events_per_second: u32,
    /// Events an account may post at once after a quiet spell (the bucket's size).
    pub intake_burst_events: u32,
    /// Largest request head (request line and headers), in bytes (431 above).
    pub header_bytes_max: usize,
    /// Client connections open at once; past it, new ones wait in the listen backlog.
    pub connections_max: usize,
    /// A request's headers, and then its body, must arrive within this: a slow client is
    /// cut off (the connection closed, or 408 for a slow body).
    #[serde(with = "humantime_serde")]
    pub request_read_timeout: Duration,
}

impl Default for LimitsConfig {
    fn default() -> LimitsConfig {
        LimitsConfig {
            body_bytes_max: 8 * 1024 * 1024,
            batch_events_max: 1000,
            string_bytes_max: 16 * 1024,
            json_depth_max: 32,
            failures_limit_max: 1000,
            intake_events_per_second: 50_000,
            intake_burst_events: 100_000,
            header_bytes_max: 16 * 1024,
            connections_max: 4096,
            request_read_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// On SIGTERM: how long open requests and in-flight deliveries may finish before the
    /// rest are released (they are delivered after the next start).
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> ShutdownConfig {
        ShutdownConfig {
            grace: Duration::from_secs(10),
        }
    }
}

/// Machine detection for opens and clicks.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngagementConfig {
    /// A rules file like `config/engagement-rules.toml`; empty: the rules built in (that file).
    pub rules_file: PathBuf,
}

/// The rules file shipped in `config/`, built into the binary as the default.
pub const DEFAULT_ENGAGEMENT_RULES: &str = include_str!("../../../config/engagement-rules.toml");

impl EngagementConfig {
    pub fn load_rules(&self) -> Result<mailhook_core::engagement::Rules, String> {
        let (text, origin) = if self.rules_file.as_os_str().is_empty() {
            (
                DEFAULT_ENGAGEMENT_RULES.to_owned(),
                "the built-in rules".to_owned(),
            )
        } else {
            let text = std::fs::read_to_string(&self.rules_file).map_err(|err| {
                format!(
                    "engagement.rules_file `{}` cannot be read: {err}",
                    self.rules_file.display()
                )
            })?;
            (
                text,
                format!("engagement.rules_file `{}`", self.rules_file.display()),
            )
        };
        let rules: mailhook_core::engagement::Rules = toml::from_str(&text)
            .map_err(|err| format!("{origin} is not a valid rules file: {err}"))?;
        rules.validate().map_err(|err| format!("{origin}: {err}"))?;
        Ok(rules)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A tracing filter (`info`, `mailhook=debug,info`); `RUST_LOG` overrides it.
    pub level: String,
    /// `text` or `json`.
    pub format: String,
}

impl Default for LogConfig {
    fn default() -> LogConfig {
        LogConfig {
            level: "info".to_owned(),
            format: "text".to_owned(),
        }
    }
}

/// Webhook settings for one account, as in `PUT /v1/accounts/{id}/webhook`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountSeed {
    pub id: String,
    #[serde(default)]
    pub enabled: bool,
    #[serde(default)]
    pub addresses: Vec<String>,
    #[serde(default)]
    pub events: Vec<String>,
}

/// `store.url` with the password, if any, replaced by `(hidden)`: for printing the config.
pub fn redact_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    // userinfo ends at the last `@` before the first `/` (a password may hold `@` encoded).
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_owned();
    };
    match rest[..at].split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:(hidden){}", &rest[at..]),
        None => url.to_owned(),
    }
}

/// Where the store lives, parsed from `store.url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    Sqlite(PathBuf),
    /// A `postgres://` (or `postgresql://`) URL, as libpq reads it.
    Postgres(String),
}

impl Config {
    /// Loads defaults, then `file` (when given), then the environment.
    pub fn load(file: Option<&Path>) -> Result<Config, String> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            if !file.is_file() {
                return Err(format!(
                    "config file `{}` does not exist or is not a file",
                    file.display()
                ));
            }
            figment = figment.merge(Toml::file_exact(file));
        }
        // MAILHOOK_CONFIG names the file itself; it is not a key.
        figment = figment.merge(Env::prefixed("MAILHOOK_").ignore(&["config"]).split("__"));
        Config::from_figment(&figment)
    }

    pub fn from_figment(figment: &Figment) -> Result<Config, String> {
        let config: Config = figment.extract().map_err(|err| {
            err.into_iter()
                .map(|e| format!("config error: {e}"))
                .collect::<Vec<_>>()
                .join("\n")
        })?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), String> {
        self.delivery.validate()?;
        self.plugins.validate()?;
        self.engagement.load_rules()?;
        if self.metrics.accounts_max == 0 {
            return Err("metrics.accounts_max must be at least 1".to_owned());
        }
        self.store_location()?;
        self.tls.validate()?;
        if !matches!(self.log.format.as_str(), "text" | "json") {
            return Err(format!(
                "log.format = `{}` must be `text` or `json`",
                self.log.format
            ));
        }
        let limits = &self.limits;
        if limits.body_bytes_max < 1024 {
            return Err(format!(
                "limits.body_bytes_max = {} must be at least 1024",
                limits.body_bytes_max
            ));
        }
        if !(1..=100_000).contains(&limits.batch_events_max) {
            return Err(format!(
                "limits.batch_events_max = {} must be from 1 to 100000",
                limits.batch_events_max
            ));
        }
        if limits.string_bytes_max < 256 || !(4..=128).contains(&limits.json_depth_max) {
            return Err(format!(
                "limits.string_bytes_max = {} must be at least 256 and limits.json_depth_max = {} from 4 to 128",
                limits.string_bytes_max, limits.json_depth_max
            ));
        }
        if limits.intake_events_per_second == 0
            || limits.intake_burst_events < limits.batch_events_max as u32
        {
            return Err(format!(
                "limits.intake_events_per_second must be at least 1 and limits.intake_burst_events = {} at least \
                 limits.batch_events_max = {}, or a full batch could never pass",
                limits.intake_burst_events, limits.batch_events_max
            ));
        }
        if limits.header_bytes_max < 8192
            || limits.connections_max == 0
            || limits.request_read_timeout.is_zero()
        {
            return Err(
                "limits.header_bytes_max must be at least 8192, limits.connections_max at least 1 \
                        and limits.request_read_timeout above 0"
                    .to_owned(),
            );
        }
        if limits.failures_limit_max == 0 {
            return Err("limits.failures_limit_max must be at least 1".to_owned());
        }
        if self.store.events_per_commit_max == 0
            || self.store.write_queue_max == 0
            || self.store.read_connections == 0
        {
            return Err("store.events_per_commit_max, store.write_queue_max and store.read_connections must be at least 1".to_owned());
        }
        if self.store.pool_size_max == 0 || self.store.prune_batch_max == 0 {
            return Err(
                "store.pool_size_max and store.prune_batch_max must be at least 1".to_owned(),
            );
        }
        if self.store.connect_timeout.is_zero() || self.store.prune_interval.is_zero() {
            return Err(
                "store.connect_timeout and store.prune_interval must be above 0".to_owned(),
            );
        }
        if self.store.retention.is_zero() {
            return Err("store.retention must be above 0".to_owned());
        }
        for (i, token) in self
            .auth
            .intake_tokens
            .iter()
            .chain(&self.auth.admin_tokens)
            .enumerate()
        {
            if token.len() < 16 || !token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(format!(
                    "auth token #{} is too weak: tokens need at least 16 visible ASCII characters",
                    i + 1
                ));
            }
        }
        Ok(())
    }

    pub fn store_location(&self) -> Result<StoreLocation, String> {
        let url = self.store.url.trim();
        if url.is_empty() {
            return Ok(StoreLocation::Sqlite(self.data_dir.join("mailhook.db")));
        }
        if let Some(path) = url.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err(
                    "store.url `sqlite://` needs a file path, e.g. sqlite://./data/mailhook.db"
                        .to_owned(),
                );
            }
            return Ok(StoreLocation::Sqlite(PathBuf::from(path)));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            // Checked here so a typo stops the start with the key named, not at connect.
            mailhook_store::postgres::parse_url(url).map_err(|err| match err {
                mailhook_store::Error::Unavailable(message) => message,
                other => other.to_string(),
            })?;
            return Ok(StoreLocation::Postgres(url.to_owned()));
        }
        Err(format!(
            "store.url `{url}` is not understood: use sqlite://PATH or postgres://user@host:port/db"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use figment::Jail;

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail API returns its own large error
    fn layers_file_then_env_and_names_unknown_keys() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "m.toml",
                r#"
                listen = "127.0.0.1:9000"
                [delivery]
                retry_backoff = ["10ms", "20ms"]
                attempt_timeout = "2s"
                "#,
            )?;
            jail.set_env("MAILHOOK_DELIVERY__ATTEMPT_TIMEOUT", "5s");
            jail.set_env("MAILHOOK_CONFIG", "m.toml");
            let config = Config::load(Some(Path::new("m.toml"))).expect("loads");
            assert_eq!(config.listen.port(), 9000);
            assert_eq!(
                config.delivery.retry_backoff,
                vec![Duration::from_millis(10), Duration::from_millis(20)]
            );
            assert_eq!(config.delivery.attempt_timeout, Duration::from_secs(5));

            jail.create_file("bad.toml", "[delivery]\nretries = 3\n")?;
            let err = Config::load(Some(Path::new("bad.toml"))).unwrap_err();
            assert!(err.contains("retries"), "{err}");
            jail.create_file("bad2.toml", "[delivery]\nretry_after_max = \"soon\"\n")?;
            let err = Config::load(Some(Path::new("bad2.toml"))).unwrap_err();
            assert!(
                err.contains("retry_after_max") && err.contains("soon"),
                "{err}"
            );
            Ok(())
        });
    }

    #[test]
    fn store_urls_select_the_backend_and_passwords_are_hidden_when_shown() {
        let mut config = Config::default();
        // (url, location or error words)
        let cases: [(&str, Result<StoreLocation, &str>); 5] = [
            (
                "",
                Ok(StoreLocation::Sqlite(PathBuf::from("./data/mailhook.db"))),
            ),
            (
                "sqlite:///tmp/m.db",
                Ok(StoreLocation::Sqlite(PathBuf::from("/tmp/m.db"))),
            ),
            (
                "postgres://mh@127.0.0.1:5432/mailhook",
                Ok(StoreLocation::Postgres(
                    "postgres://mh@127.0.0.1:5432/mailhook".into(),
                )),
            ),
            (
                "postgres://mh@127.0.0.1:notaport/db",
                Err("not a valid PostgreSQL URL"),
            ),
            ("mysql://x", Err("sqlite://PATH or postgres://")),
        ];
        for (url, expected) in cases {
            config.store.url = url.to_owned();
            match expected {
                Ok(location) => assert_eq!(config.store_location(), Ok(location), "{url}"),
                Err(words) => {
                    let err = config.store_location().unwrap_err();
                    assert!(err.contains(words), "{url}: {err}");
                }
            }
        }
        let shown = [
            (
                "postgres://mh:s3cret@db:5432/m",
                "postgres://mh:(hidden)@db:5432/m",
            ),
            ("postgres://mh@db/m", "postgres://mh@db/m"),
            ("sqlite://./data/m.db", "sqlite://./data/m.db"),
        ];
        for (url, expected) in shown {
            assert_eq!(redact_password(url), expected);
        }
    }

    #[test]
    fn tls_files_come_in_pairs() {
        let mut config = Config::default();
        assert!(config.validate().is_ok());
        assert_eq!(config.tls.listen_files(), None);
        assert_eq!(config.tls.client_settings().client_cert_file, None);

        config.tls.client_cert_file = PathBuf::from("client.pem");
        let err = config.validate().unwrap_err();
        assert_eq!(
            err,
            "tls.client_cert_file and tls.client_key_file must be set together (or both left empty)"
        );
        config.tls.client_key_file = PathBuf::from("client.key");
        assert!(config.validate().is_ok());
        assert_eq!(
            config.tls.client_settings().client_key_file,
            Some(PathBuf::from("client.key"))
        );

        config.tls.listen_key_file = PathBuf::from("listen.key");
        let err = config.validate().unwrap_err();
        assert!(
            err.starts_with("tls.listen_cert_file and tls.listen_key_file"),
            "{err}"
        );
        config.tls.listen_cert_file = PathBuf::from("listen.pem");
        assert_eq!(
            config.tls.listen_files(),
            Some((Path::new("listen.pem"), Path::new("listen.key")))
        );

        config.tls.extra_ca_files = vec![PathBuf::new()];
        assert!(
            config
                .validate()
                .unwrap_err()
                .contains("tls.extra_ca_files[0]")
        );
    }

    #[test]
    fn plugins_load_from_toml_with_their_own_config_and_are_checked() {
        let text = r#"
            [plugins]
            dir = "/opt/mailhook/plugins"
            [[plugins.load]]
            name = "uspeedo-format"
            file = "uspeedo_format.wasm"
            kind = "transform"
            policy = "fail_open"
            config = { time_format = "unix", nested = { a = [1, 2] } }
            timeout = "20ms"
            [[plugins.load]]
            name = "slack-sink"
            file = "slack_sink.wasm"
            kind = "sink"
            [[plugins.transforms]]
            account = "default"
            chain = ["uspeedo-format"]
        "#;
        let load = |text: &str| {
            let figment =
                Figment::from(Serialized::defaults(Config::default())).merge(Toml::string(text));
            Config::from_figment(&figment)
        };
        let config = load(text).expect("loads");
        let spec = &config.plugins.load[0];
        assert_eq!(spec.policy, mailhook_plugin_host::Policy::FailOpen);
        assert_eq!(spec.config["nested"]["a"][1], 2);
        assert_eq!(spec.timeout, Some(Duration::from_millis(20)));
        assert_eq!(config.plugins.sink_names(), vec!["slack-sink".to_owned()]);
        // What the test support writes for the real binary reads back the same.
        let round_trip = toml::to_string(&config).expect("serializes");
        assert_eq!(load(&round_trip).expect("loads again"), config);

        let err = load(&text.replace("chain = [\"uspeedo-format\"]", "chain = [\"slack-sink\"]"))
            .unwrap_err();
        assert!(
            err.contains("plugins.transforms[0].chain") && err.contains("not a transform"),
            "{err}"
        );
        let err =
            load(&text.replace("kind = \"sink\"", "kind = \"sink\"\nfuel_max = 3")).unwrap_err();
        assert!(err.contains("fuel_max"), "{err}");
    }

    /// Every key of the config struct must appear in the commented reference, and the
    /// reference must load as it is.
    #[test]
    fn reference_file_lists_every_key() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/mailhook.toml");
        let text = std::fs::read_to_string(&path).expect("config/mailhook.toml exists");
        let reference: toml::Table = toml::from_str(&text).expect("reference parses as TOML");
        let figment =
            Figment::from(Serialized::defaults(Config::default())).merge(Toml::string(&text));
        Config::from_figment(&figment).expect("reference loads as a config");

        let defaults = toml::Table::try_from(Config::default()).expect("defaults serialize");
        let mut missing = Vec::new();
        collect_missing(&defaults, &reference, "", &text, &mut missing);
        assert!(
            missing.is_empty(),
            "keys missing from config/mailhook.toml: {missing:?}"
        );
    }

    fn collect_missing(
        defaults: &toml::Table,
        reference: &toml::Table,
        prefix: &str,
        text: &str,
        missing: &mut Vec<String>,
    ) {
        for (key, value) in defaults {
            let path = format!("{prefix}{key}");
            match (value, reference.get(key)) {
                (toml::Value::Table(inner), Some(toml::Value::Table(reference_inner))) => {
                    collect_missing(inner, reference_inner, &format!("{path}."), text, missing)
                }
                // Arrays of tables (accounts) are documented as a commented example.
                (toml::Value::Array(_), None) if text.contains(&format!("[[{path}]]")) => {}
                (_, None) => missing.push(path),
                _ => {}
            }
        }
    }
}
