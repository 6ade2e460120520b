//! `cargo xtask <task>`: the project's tasks beyond `cargo build` (test, ci, bench).

mod bench;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(bin_name = "cargo xtask", about = "mailhook project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// The full suite a fresh machine can run: builds the gateway binary, then runs every test
    /// (nextest when installed, else `cargo test`), without doctests.
    Test(TestArgs),
    /// What CI checks: `cargo fmt --check`, clippy with `-D warnings`, then `test`.
    Ci(TestArgs),
    /// Timing goals (not written yet).
    Bench(bench::Args),
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
    test(root, args)
}

fn test(root: &Path, args: &TestArgs) -> Result<()> {
    // The end-to-end tests spawn this binary from the target dir: build it first so it is fresh.
    run(cargo(root).args(["build", "-p", "mailhook", "--bin", "mailhook"]))?;
    let mut tests = cargo(root);
    if nextest_installed(root) {
        // nextest does not run doctests.
        tests.args(["nextest", "run", "--workspace", "--no-fail-fast"]);
    } else {
        eprintln!("xtask: cargo-nextest not found, using cargo test");
        // `--tests` selects lib, bin and integration test targets, leaving out doctests.
        tests.args(["test", "--workspace", "--no-fail-fast", "--tests"]);
    }
    tests.args(&args.args);
    run(&mut tests)
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

fn workspace_root() -> PathBuf {
    let xtask_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    xtask_dir
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}
