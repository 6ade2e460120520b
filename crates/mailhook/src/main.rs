//! The `mailhook` binary: parses the command line, loads the config, runs the gateway until
//! SIGTERM or Ctrl-C, then shuts down gracefully (a second signal exits at once).
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mailhook::{Config, Gateway};

/// mimalloc rather than glibc's malloc: intake parses every event into small JSON maps that
/// the store's writer thread frees, and glibc's per-thread arenas made malloc and free about
/// a third of the gateway's CPU in `cargo xtask bench --intake-only` (perf).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "mailhook",
    version,
    about = "Pushes email lifecycle events to webhooks, signed, with failover"
)]
struct Cli {
    /// Config file (TOML). Without one, built-in defaults: embedded SQLite under ./data.
    #[arg(long, global = true, env = "MAILHOOK_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (the default).
    Serve,
    /// Load and check the config, print it as TOML (tokens hidden), and exit.
    CheckConfig,
    /// Apply pending schema migrations to the store (`store.url`) and exit. `serve` does
    /// this too at start; run it alone to upgrade a shared PostgreSQL store before the nodes.
    Migrate,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("mailhook: {err}");
            return ExitCode::from(mailhook::exit::CONFIG);
        }
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::CheckConfig => {
            let mut shown = config.clone();
            for token in shown
                .auth
                .intake_tokens
                .iter_mut()
                .chain(shown.auth.admin_tokens.iter_mut())
            {
                *token = "(hidden)".to_owned();
            }
            shown.store.url = mailhook::config::redact_password(&shown.store.url);
            // A plugin's config is opaque to mailhook and may hold secrets (a Slack webhook
            // URL): its keys are shown, not its values.
            for plugin in &mut shown.plugins.load {
                for value in plugin.config.values_mut() {
                    *value = "(hidden)".into();
                }
            }
            match toml::to_string_pretty(&shown) {
                Ok(text) => {
                    println!("{text}");
                    ExitCode::SUCCESS
                }
                Err(err) => {
                    eprintln!("mailhook: cannot print config: {err}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Serve => serve(config),
        Command::Migrate => migrate(config),
    }
}

fn migrate(config: Config) -> ExitCode {
    mailhook::init_logging(&config.log);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("mailhook: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(mailhook::migrate(&config)) {
        Ok(message) => {
            println!("mailhook: {message}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("mailhook: cannot migrate: {err:#}");
            ExitCode::from(mailhook::exit::for_start_error(&err))
        }
    }
}

fn serve(config: Config) -> ExitCode {
    mailhook::init_logging(&config.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("mailhook: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let gateway = match Gateway::start(config).await {
            Ok(gateway) => gateway,
            Err(err) => {
                tracing::error!("cannot start: {err:#}");
                eprintln!("mailhook: cannot start: {err:#}");
                return ExitCode::from(mailhook::exit::for_start_error(&err));
            }
        };
        wait_for_signal().await;
        tokio::select! {
            () = gateway.shutdown() => ExitCode::SUCCESS,
            () = wait_for_signal() => {
                tracing::warn!("second signal: exiting without finishing; unfinished deliveries resume on the next start");
                ExitCode::from(mailhook::exit::INTERRUPTED)
            }
        }
    })
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(term) => term,
        Err(err) => {
            tracing::error!(error = %err, "cannot listen for SIGTERM; only Ctrl-C stops the gateway");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupt received"),
    }
}
