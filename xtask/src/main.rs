//! `cargo xtask <task>`: the project's tasks beyond `cargo build` (test, ci, bench, simulate).

mod bench;
mod browser;
mod chaos;
mod fuzz;
mod pgdb;
mod plugins;
mod schemathesis;
mod simulate;
mod soak;
mod tally;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

use crate::tally::Tally;

#[derive(Parser)]
#[command(bin_name = "cargo xtask", about = "mailhook project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// The full suite a fresh machine can run: builds the gateway binary, runs every test
    /// (nextest when installed, else `cargo test`, without doctests), then the end-to-end
    /// suite again on PostgreSQL (the local server, as `.ci/run` starts it).
    Test(TestArgs),
    /// What CI checks: `cargo fmt --check`, clippy with `-D warnings` (here and in
    /// `plugins/`), then `test`.
    Ci(TestArgs),
    /// Timing goals: the release gateway's throughput and latency against raw HTTP
    /// baselines on this machine.
    Bench(bench::Args),
    /// The console's "Simulate Send Test" from a terminal. Without arguments: starts a
    /// gateway and a receiver here, pushes a test event of each type, prints what arrived
    /// and checks its signature; exits non-zero unless all arrived verified.
    Simulate(simulate::Args),
    /// Kills the gateway with `kill -9` at random moments while events flow, restarts it,
    /// and checks that every event it accepted (202) reached a receiver. Prints accepted,
    /// delivered, lost, duplicates and the worst delay; exits non-zero if any was lost.
    Chaos(chaos::Args),
    /// Coverage-guided fuzzing (libFuzzer, stable toolchain) of the intake parser, the
    /// settings validator and the signing code, each for `--seconds`; exits non-zero on a
    /// crash, leaving the input under `fuzz/artifacts/`.
    Fuzz(fuzz::Args),
    /// Schemathesis (from PyPI, installed when missing) against a live gateway from
    /// `docs/openapi.json`, bounded in time; exits non-zero on any finding.
    Schemathesis(schemathesis::Args),
    /// The gateway under a steady load for a long time (an hour by default), sampling its
    /// memory, open file descriptors and queue depth, to show no leak.
    Soak(soak::Args),
    /// Builds the WASM plugins in `plugins/` (SDK examples, hostile test plugins) for
    /// wasm32-unknown-unknown (the two that must import WASI for wasm32-wasip2), adding the targets
    /// with rustup if needed.
    Plugins,
}

#[derive(clap::Args)]
struct TestArgs {
    /// Passed on to `cargo nextest run` (or `cargo test`), for instance a test filter.
    #[arg(last = true)]
    args: Vec<OsString>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let root = workspace_root();
    let done = match cli.task {
        Task::Test(args) => test(&root, &args),
        Task::Ci(args) => ci(&root, &args),
        Task::Bench(args) => bench::run(args),
        Task::Simulate(args) => simulate::run(&root, args),
        Task::Chaos(args) => chaos::run(&root, args),
        Task::Fuzz(args) => fuzz::run(&root, args),
        Task::Schemathesis(args) => schemathesis::run(&root, args),
        Task::Soak(args) => soak::run(&root, args),
        Task::Plugins => plugins::build(&root).map(drop),
    };
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // `{:#}` prints the cause chain on one line, without a backtrace.
            eprintln!("xtask: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn ci(root: &Path, args: &TestArgs) -> Result<()> {
    run(cargo(root).args(["fmt", "--all", "--", "--check"]))?;
    run(cargo(root).args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The plugins are their own workspace: the same checks, for wasm and for their tests.
    plugins::lint(root)?;
    test(root, args)
}

fn test(root: &Path, args: &TestArgs) -> Result<()> {
    let mut tally = Tally::default();
    let done = test_counted(root, args, &mut tally);
    if done.is_err() && tally.failed == 0 {
        // A step failed before or outside any counted test (a build, an install): the closing
        // line must not read as a clean run.
        tally.failed += 1;
    }
    // Last, alone on its line: what ran in every pass and step, for whoever reads the log's end.
    eprintln!();
    println!("{}", tally.closing_line());
    done
}

fn test_counted(root: &Path, args: &TestArgs, tally: &mut Tally) -> Result<()> {
    // The console's browser tests drive Debian's headless Chromium; the metrics tests Prometheus.
    browser::ensure_installed()?;
    // The plugin tests load the example and hostile plugins, built from source here; the
    // plugins' own unit tests run first.
    plugins::build(root)?;
    plugins::unit_tests(root, tally)?;
    // The end-to-end tests spawn this binary from the target dir: build it first so it is fresh.
    run(cargo(root).args(["build", "-p", "mailhook", "--bin", "mailhook"]))?;
    let nextest = nextest_installed(root);
    if !nextest {
        eprintln!("xtask: cargo-nextest not found, using cargo test");
    }
    // Reliability (issue 8) first, when the whole suite runs: short kill -9 loops on both
    // stores, every fuzz target, and Schemathesis on the live API; each bounded in time. They
    // run before the test passes so that the log ends with the test runner's own summary.
    let reliability = if args.args.is_empty() {
        reliability(root, tally)
    } else {
        Ok(())
    };
    // The end-to-end suite (`tests/it`) with every gateway on a fresh PostgreSQL database of
    // the local server (see `mailhook_test_support::STORE_ENV`).
    let mut on_postgres = test_command(root, nextest, &["-p", "mailhook-tests", "--test", "it"]);
    on_postgres.env("MAILHOOK_TEST_STORE", "postgres");
    on_postgres.args(&args.args);
    let on_postgres = tally::run_counted(&mut on_postgres, tally);
    // Last, every test of the workspace; end-to-end gateways on the embedded SQLite store.
    // The PostgreSQL store's own tests and the multi-node tests (`tests/cluster`) run here too.
    let mut all = test_command(root, nextest, &["--workspace"]);
    all.args(&args.args);
    let all = tally::run_counted(&mut all, tally);
    all.context("the test pass on SQLite failed")?;
    on_postgres.context("the end-to-end pass on PostgreSQL failed")?;
    reliability
}

/// One reliability step, run from the workspace root.
type Step = fn(&Path) -> Result<()>;

/// The reliability steps of `test`: each runs even when one before it failed, and each counts
/// as one test in the closing line.
fn reliability(root: &Path, tally: &mut Tally) -> Result<()> {
    let steps: [(&str, Step); 4] = [
        ("chaos on SQLite", |root| {
            chaos::run(root, chaos::Args::short(false))
        }),
        ("chaos on PostgreSQL", |root| {
            chaos::run(root, chaos::Args::short(true))
        }),
        ("fuzzing", |root| fuzz::run(root, fuzz::Args::brief(20))),
        ("schemathesis", |root| {
            schemathesis::run(root, schemathesis::Args::brief(60))
        }),
    ];
    let mut failed = Vec::new();
    for (name, step) in steps {
        match step(root) {
            Ok(()) => tally.passed += 1,
            Err(err) => {
                eprintln!("xtask: {name} failed: {err:#}");
                tally.failed += 1;
                failed.push(name);
            }
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        bail!("reliability steps failed: {}", failed.join(", "))
    }
}

/// `cargo nextest run` (or `cargo test` without nextest) on `selection`, never stopping at
/// the first failure, without doctests.
fn test_command(root: &Path, nextest: bool, selection: &[&str]) -> Command {
    let mut tests = cargo(root);
    if nextest {
        // nextest does not run doctests.
        tests.args(["nextest", "run", "--no-fail-fast"]);
    } else {
        // `--tests` selects lib, bin and integration test targets, leaving out doctests.
        tests.args(["test", "--no-fail-fast", "--tests"]);
    }
    tests.args(selection);
    tests
}

fn nextest_installed(root: &Path) -> bool {
    cargo(root)
        .args(["nextest", "--version"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// A `cargo` command run from the workspace root: the `cargo` that started us (`$CARGO`) when
/// set. The environment, `CARGO_TARGET_DIR` included, is inherited.
fn cargo(root: &Path) -> Command {
    let program = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(program);
    command.current_dir(root);
    command
}

/// The variables a gateway started by xtask must not inherit, because the config file xtask
/// writes for it alone decides: `MAILHOOK_...` variables (the test suite's among them) would
/// override its keys, and `RUST_LOG` its log level. Remove each with `env_remove`.
fn config_overriding_env() -> Vec<std::ffi::OsString> {
    std::iter::once("RUST_LOG".into())
        .chain(
            std::env::vars_os()
                .map(|(name, _)| name)
                .filter(|name| name.to_string_lossy().starts_with("MAILHOOK_")),
        )
        .collect()
}

/// Prints the command, runs it with inherited stdio, and fails if it does not succeed.
fn run(command: &mut Command) -> Result<()> {
    let shown = show(command);
    eprintln!("$ {shown}");
    let status = command
        .status()
        .with_context(|| format!("cannot start `{shown}`"))?;
    if !status.success() {
        bail!("`{shown}` failed: {status}");
    }
    Ok(())
}

fn show(command: &Command) -> String {
    let program = Path::new(command.get_program())
        .file_name()
        .unwrap_or(command.get_program())
        .to_string_lossy()
        .into_owned();
    std::iter::once(program)
        .chain(
            command
                .get_args()
                .map(|arg| arg.to_string_lossy().into_owned()),
        )
        .collect::<Vec<_>>()
        .join(" ")
}

/// Where cargo puts build outputs (`CARGO_TARGET_DIR`, `build.target-dir`, or `target/`),
/// as cargo itself reports it.
fn target_dir(root: &Path) -> Result<PathBuf> {
    let output = cargo(root)
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run cargo metadata")?;
    if !output.status.success() {
        bail!("cargo metadata failed: {}", output.status);
    }
    let metadata: serde_json::Value =
        serde_json::from_slice(&output.stdout).context("cargo metadata printed no JSON")?;
    let dir = metadata["target_directory"]
        .as_str()
        .context("cargo metadata has no target_directory")?;
    Ok(PathBuf::from(dir))
}

/// The workspace this xtask was started from: `cargo xtask` (a `cargo run` alias) sets
/// `CARGO_MANIFEST_DIR` at run time, and the bench's re-executed release xtask inherits it.
/// Why not only the compile-time value: clones that share one `CARGO_TARGET_DIR` share one
/// xtask binary, which cargo may have built from another clone (a bench `--record` once
/// appended to that clone's docs).
fn workspace_root() -> PathBuf {
    let xtask_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .filter(|dir| dir.join("Cargo.toml").is_file())
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    xtask_dir
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}
