//! Wiring: opens the store, seeds accounts, starts the dispatcher and the HTTP server, and
//! takes them down in the order that loses nothing.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use mailhook_core::AccountId;
use mailhook_core::bus::WorkBus;
use mailhook_core::settings::validate_settings_with_sinks;
use mailhook_core::signature::{SECRET_BYTES, Secret};
use mailhook_delivery::resolve::{GuardedResolver, Resolve, SystemResolver};
use mailhook_delivery::{Dispatcher, DispatcherExtras, SettingsCache, now_ms};
use mailhook_metrics::Metrics;
use mailhook_server::{Api, ApiConfig, Server, ServerOptions, Tokens};
use mailhook_store::Store;
use mailhook_store::postgres::{PostgresOptions, PostgresStore};
use mailhook_store::sqlite::{SqliteOptions, SqliteStore};
use serde_json::json;

use crate::config::{Config, StoreLocation};
use crate::prune::Pruner;

/// A running gateway.
pub struct Gateway {
    server: Server,
    dispatcher: Dispatcher,
    plugins: Option<mailhook_plugin_host::PluginHost>,
    store: Arc<dyn Store>,
    pruner: Pruner,
    tokens: Tokens,
    grace: std::time::Duration,
    _lock: File,
}

impl Gateway {
    /// Starts everything on `config`. Binds `config.listen` (port 0 picks a free one).
    pub async fn start(config: Config) -> anyhow::Result<Gateway> {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {} (listen)", config.listen))?;
        Gateway::start_on(config, listener).await
    }

    pub async fn start_on(
        config: Config,
        listener: tokio::net::TcpListener,
    ) -> anyhow::Result<Gateway> {
        Gateway::start_with(config, listener, Arc::new(SystemResolver)).await
    }

    /// Starts with a given name resolver (tests map names to chosen IPs with it); the SSRF
    /// guard checks whatever it answers.
    pub async fn start_with(
        config: Config,
        listener: tokio::net::TcpListener,
        resolver: Arc<dyn Resolve>,
    ) -> anyhow::Result<Gateway> {
        config.validate().map_err(anyhow::Error::msg)?;
        // TLS files are read before anything starts, so a bad one stops the start at once.
        let client_tls = mailhook_delivery::tls::client_config(&config.tls.client_settings())
            .context("cannot set up TLS for deliveries")?;
        let listen_tls = match config.tls.listen_files() {
            Some((cert_file, key_file)) => Some(
                mailhook_server::tls::acceptor(cert_file, key_file)
                    .context("cannot set up TLS on the listener")?,
            ),
            None => None,
        };
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("cannot create data_dir `{}`", config.data_dir.display()))?;
        let lock = lock_data_dir(&config.data_dir)?;
        let tokens = Tokens {
            intake: tokens_or_generated(&config.auth.intake_tokens, &config.data_dir, "intake")?,
            admin: tokens_or_generated(&config.auth.admin_tokens, &config.data_dir, "admin")?,
        };

        let store: Arc<dyn Store> = match config.store_location().map_err(anyhow::Error::msg)? {
            StoreLocation::Sqlite(path) => {
                let options = SqliteOptions {
                    events_per_commit_max: config.store.events_per_commit_max,
                    write_queue_max: config.store.write_queue_max,
                    read_connections: config.store.read_connections,
                    cache_bytes_max: config.store.cache_bytes_max,
                };
                let store = SqliteStore::open(&path, options).with_context(|| {
                    format!("cannot open the SQLite store `{}`", path.display())
                })?;
                tracing::info!(path = %path.display(), "store: embedded SQLite");
                Arc::new(store)
            }
            StoreLocation::Postgres(url) => {
                let options = PostgresOptions {
                    pool_size_max: config.store.pool_size_max,
                    connect_timeout: config.store.connect_timeout,
                    node_id: node_id(&config.data_dir)?,
                };
                let node = options.node_id.clone();
                let store = PostgresStore::open(&url, options)
                    .await
                    .context("cannot open the PostgreSQL store (store.url)")?;
                tracing::info!(node = %node, "store: PostgreSQL, shared with other nodes");
                Arc::new(store)
            }
        };
        seed_accounts(&config, store.as_ref()).await?;

        let bus = WorkBus::new();
        // Other nodes' intake, releases and replays wake this node's dispatcher too.
        store.subscribe_work(bus.clone());
        let pruner = Pruner::start(
            store.clone(),
            config.store.retention,
            config.store.prune_interval,
            config.store.prune_batch_max,
        );
        let settings = Arc::new(SettingsCache::new(
            store.clone(),
            config.delivery.settings_ttl,
        ));
        let policy = config.security.address_policy();
        let resolver = GuardedResolver {
            inner: resolver,
            policy: Arc::new(policy.clone()),
        };
        let metrics = Arc::new(Metrics::new(&config.metrics));
        let rules = Arc::new(config.engagement.load_rules().map_err(anyhow::Error::msg)?);
        let plugins = start_plugins(&config, metrics.clone()).await?;
        let dispatcher = Dispatcher::start(
            store.clone(),
            config.delivery.clone(),
            settings.clone(),
            bus.clone(),
            resolver,
            client_tls,
            metrics.clone(),
            DispatcherExtras {
                plugins: plugins.clone(),
            },
        );
        let limits = &config.limits;
        let api = Arc::new(Api::new(
            ApiConfig {
                tokens: tokens.clone(),
                body_bytes_max: limits.body_bytes_max,
                batch_events_max: limits.batch_events_max,
                string_bytes_max: limits.string_bytes_max,
                json_depth_max: limits.json_depth_max,
                request_read_timeout: limits.request_read_timeout,
                intake_events_per_second: limits.intake_events_per_second,
                intake_burst_events: limits.intake_burst_events,
                secret_grace: config.signing.secret_rotation_grace,
                failures_limit_max: limits.failures_limit_max,
                test_timeout: config.delivery.test_timeout,
                address_policy: policy,
                sink_plugins: config.plugins.sink_names(),
                metrics_tokens: config.metrics.tokens.clone(),
            },
            store.clone(),
            settings,
            bus,
            metrics,
            rules,
            dispatcher.test_pushes(),
        ));
        let scheme = if listen_tls.is_some() {
            "https"
        } else {
            "http"
        };
        let options = ServerOptions {
            grace: config.shutdown.grace,
            tls: listen_tls,
            connections_max: config.limits.connections_max,
            header_bytes_max: config.limits.header_bytes_max,
            header_read_timeout: config.limits.request_read_timeout,
        };
        let server = Server::start(listener, api, options)?;
        tracing::info!(listen = %server.local_addr(), scheme, "mailhook is up");
        Ok(Gateway {
            server,
            dispatcher,
            plugins,
            store,
            pruner,
            tokens,
            grace: config.shutdown.grace,
            _lock: lock,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// The first intake token (for tests and tools started with the gateway).
    pub fn intake_token(&self) -> &str {
        &self.tokens.intake[0]
    }

    pub fn admin_token(&self) -> &str {
        &self.tokens.admin[0]
    }

    pub fn dispatcher(&self) -> &Dispatcher {
        &self.dispatcher
    }

    /// The plugin host, when plugins are configured.
    pub fn plugins(&self) -> Option<&mailhook_plugin_host::PluginHost> {
        self.plugins.as_ref()
    }

    /// Stops taking requests (open ones finish), lets deliveries finish or releases them,
    /// then flushes and closes the store.
    pub async fn shutdown(self) {
        tracing::info!("shutting down: no new requests");
        self.server.shutdown().await;
        self.dispatcher.shutdown(self.grace).await;
        self.pruner.shutdown().await;
        if let Err(err) = self.store.close().await {
            tracing::warn!(error = %err, "store did not close cleanly");
        }
        tracing::info!("shut down");
    }
}

/// Applies pending schema migrations to the configured store and says where it stands
/// (`mailhook migrate`). PostgreSQL: safe while nodes run (the migration transaction holds an
/// advisory lock). SQLite: takes the data-dir lock, so it refuses while the gateway runs
/// (opening the file also frees the leases of a crashed run, which only the owner may do).
pub async fn migrate(config: &Config) -> anyhow::Result<String> {
    match config.store_location().map_err(anyhow::Error::msg)? {
        StoreLocation::Sqlite(path) => {
            std::fs::create_dir_all(&config.data_dir).with_context(|| {
                format!("cannot create data_dir `{}`", config.data_dir.display())
            })?;
            let _lock = lock_data_dir(&config.data_dir)?;
            if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create `{}`", dir.display()))?;
            }
            let store = SqliteStore::open(&path, SqliteOptions::default())
                .with_context(|| format!("cannot open the SQLite store `{}`", path.display()))?;
            store.close().await?;
            Ok(format!("SQLite store `{}` is up to date", path.display()))
        }
        StoreLocation::Postgres(url) => {
            let version = mailhook_store::postgres::migrate(&url, config.store.connect_timeout)
                .await
                .context("cannot migrate the PostgreSQL store (store.url)")?;
            Ok(format!("PostgreSQL store is at schema version {version}"))
        }
    }
}

/// This node's name among the nodes sharing a PostgreSQL store: kept in `data_dir/node_id`,
/// generated on first start. It names the leases this node holds, and at start the node
/// takes back the leases its name still holds (a crash left them); the data-dir lock makes
/// sure no other live process has the same name, as long as no two nodes were given copies
/// of one data_dir.
fn node_id(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join("node_id");
    if path.exists() {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read `{}`", path.display()))?;
        let id = text.trim();
        if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_graphic()) {
            bail!(
                "`{}` holds no usable node id (1 to 64 visible ASCII characters); delete it to generate one",
                path.display()
            );
        }
        return Ok(id.to_owned());
    }
    let mut bytes = [0u8; 9];
    getrandom::fill(&mut bytes).map_err(|err| anyhow::anyhow!("OS random source failed: {err}"))?;
    let host = std::env::var("HOSTNAME").unwrap_or_default();
    let host: String = host
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '.')
        .take(40)
        .collect();
    let id = if host.is_empty() {
        format!("node-{}", URL_SAFE_NO_PAD.encode(bytes))
    } else {
        format!("{host}-{}", URL_SAFE_NO_PAD.encode(bytes))
    };
    write_private(&path, &id)?;
    Ok(id)
}

/// Holds an exclusive lock on the data directory, so two gateways never share one store.
fn lock_data_dir(data_dir: &Path) -> anyhow::Result<File> {
    let path = data_dir.join("mailhook.lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open lock file `{}`", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(crate::exit::DataDirInUse {
            data_dir: data_dir.display().to_string(),
            lock_file: path.display().to_string(),
        }
        .into()),
        Err(std::fs::TryLockError::Error(err)) => {
            Err(err).context(format!("cannot lock `{}`", path.display()))
        }
    }
}

/// The configured tokens, or the one kept in `data_dir/<kind>_token`, generated and printed
/// once on first start.
fn tokens_or_generated(
    configured: &[String],
    data_dir: &Path,
    kind: &str,
) -> anyhow::Result<Vec<String>> {
    if !configured.is_empty() {
        return Ok(configured.to_vec());
    }
    let path: PathBuf = data_dir.join(format!("{kind}_token"));
    if path.exists() {
        let token = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read `{}`", path.display()))?;
        let token = token.trim().to_owned();
        if token.len() < 16 {
            bail!(
                "`{}` holds no usable token; delete it to generate a new one",
                path.display()
            );
        }
        return Ok(vec![token]);
    }
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|err| anyhow::anyhow!("OS random source failed: {err}"))?;
    let token = format!("mh_{kind}_{}", URL_SAFE_NO_PAD.encode(bytes));
    write_private(&path, &token)?;
    // Printed once, on purpose, to the terminal and not the log: this is how the operator
    // learns it. It stays readable in the file, which only the owner may read.
    println!(
        "mailhook: generated {kind} token (kept in {}): {token}",
        path.display()
    );
    Ok(vec![token])
}

fn write_private(path: &Path, content: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = File::options();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot create `{}`", path.display()))?;
    file.write_all(content.as_bytes())?;
    file.sync_all()?;
    Ok(())
}

/// The plugin host, when plugins are configured. It compiles every plugin file before the
/// dispatcher starts (a blocking section: compiling takes a while).
async fn start_plugins(
    config: &Config,
    metrics: Arc<Metrics>,
) -> anyhow::Result<Option<mailhook_plugin_host::PluginHost>> {
    if config.plugins.load.is_empty() {
        return Ok(None);
    }
    let cache_dir = mailhook_plugin_host::config::cache_dir(&config.plugins, &config.data_dir);
    let plugins = config.plugins.clone();
    let host = tokio::task::spawn_blocking(move || {
        mailhook_plugin_host::PluginHost::start(&plugins, Some(&cache_dir), metrics)
    })
    .await
    .context("the plugin host's start panicked")?
    .context("cannot start the plugin host ([plugins])")?;
    Ok(Some(host))
}

/// Saves `[[accounts]]` from the config, each validated like an API save.
async fn seed_accounts(config: &Config, store: &dyn Store) -> anyhow::Result<()> {
    for (i, seed) in config.accounts.iter().enumerate() {
        let account =
            AccountId::parse(&seed.id).map_err(|m| anyhow::anyhow!("accounts[{i}].id: {m}"))?;
        let body =
            json!({"enabled": seed.enabled, "addresses": seed.addresses, "events": seed.events});
        let sinks = config.plugins.sink_names();
        let settings =
            validate_settings_with_sinks(&body, &config.security.address_policy(), Some(&sinks))
                .map_err(|details| {
                    let problems: Vec<String> = details
                        .iter()
                        .map(|d| format!("accounts[{i}].{}: {}", d.field, d.message))
                        .collect();
                    anyhow::anyhow!(
                        "invalid [[accounts]] entry `{}`:\n  {}",
                        seed.id,
                        problems.join("\n  ")
                    )
                })?;
        let mut bytes = [0u8; SECRET_BYTES];
        getrandom::fill(&mut bytes)
            .map_err(|err| anyhow::anyhow!("OS random source failed: {err}"))?;
        store
            .put_settings(&account, settings, Secret::from_bytes(bytes), now_ms())
            .await?;
        tracing::info!(account = %account, "webhook settings seeded from config");
    }
    Ok(())
}
