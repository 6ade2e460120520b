//! `cargo xtask fuzz`: coverage-guided fuzzing with libFuzzer on the stable toolchain.
//!
//! cargo-fuzz wants nightly for its sanitizer flags; the coverage instrumentation libFuzzer
//! needs is stable (`-Cpasses=sancov-module` and LLVM's `-sanitizer-coverage-*` options), and
//! the `libfuzzer-sys` crate builds libFuzzer itself with the C++ compiler. So the targets in
//! `fuzz/` (their own workspace, so the flags never reach the main build) are built here with
//! those flags, for the host triple named explicitly so build scripts stay uninstrumented,
//! into their own target dir, and each is run for `--seconds` from a copy of its seeds.
//! A crash fails the task and leaves the input that caused it under `fuzz/artifacts/`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};

/// The targets, in `fuzz/fuzz_targets/`.
pub const TARGETS: [&str; 3] = ["intake", "settings", "signature"];

/// The coverage instrumentation libFuzzer steers by (what cargo-fuzz passes, minus the
/// sanitizer, which needs nightly).
const INSTRUMENT: &str = "-Cpasses=sancov-module \
    -Cllvm-args=-sanitizer-coverage-level=4 \
    -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
    -Cllvm-args=-sanitizer-coverage-pc-table \
    -Cllvm-args=-sanitizer-coverage-trace-compares \
    --cfg fuzzing";

#[derive(clap::Args)]
pub struct Args {
    /// How long each target runs, in seconds.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Targets to run [default: all: intake, settings, signature].
    targets: Vec<String>,
}

impl Args {
    /// A short run of every target, for the test suite.
    pub fn brief(seconds: u64) -> Args {
        Args {
            seconds,
            targets: Vec::new(),
        }
    }
}

pub fn run(root: &Path, args: Args) -> Result<()> {
    ensure!(
        (1..=86_400).contains(&args.seconds),
        "--seconds {} must be from 1 to 86400",
        args.seconds
    );
    let targets: Vec<String> = if args.targets.is_empty() {
        TARGETS.iter().map(|t| (*t).to_owned()).collect()
    } else {
        args.targets.clone()
    };
    if let Some(unknown) = targets.iter().find(|t| !TARGETS.contains(&t.as_str())) {
        bail!(
            "no fuzz target `{unknown}`; there are {}",
            TARGETS.join(", ")
        );
    }
    let fuzz_dir = root.join("fuzz");
    let host = host_triple()?;
    let target_dir = fuzz_target_dir()?;
    let mut build = crate::cargo(&fuzz_dir);
    build
        .args(["build", "--release", "--target", &host])
        .env("RUSTFLAGS", INSTRUMENT)
        .env("CARGO_TARGET_DIR", &target_dir);
    for target in &targets {
        build.args(["--bin", target]);
    }
    crate::run(&mut build)?;

    let artifacts = fuzz_dir.join("artifacts");
    let mut crashed = Vec::new();
    for target in &targets {
        let bin = target_dir.join(&host).join("release").join(target);
        // libFuzzer adds what it finds to its corpus dir: a temp copy keeps the seeds clean.
        let corpus = tempfile::Builder::new()
            .prefix(&format!("mailhook-fuzz-{target}-"))
            .tempdir()?;
        let seeds = fuzz_dir.join("seeds").join(target);
        for seed in std::fs::read_dir(&seeds)
            .with_context(|| format!("cannot read the seeds in {}", seeds.display()))?
        {
            let seed = seed?.path();
            if let Some(name) = seed.file_name() {
                std::fs::copy(&seed, corpus.path().join(name))?;
            }
        }
        let target_artifacts = artifacts.join(target);
        std::fs::create_dir_all(&target_artifacts)?;
        let mut fuzz = Command::new(&bin);
        fuzz.arg(corpus.path())
            .arg(format!("-max_total_time={}", args.seconds))
            // One input may take at most this long, and the process this much memory.
            .arg("-timeout=10")
            .arg("-rss_limit_mb=2048")
            .arg("-max_len=65536")
            .arg("-print_final_stats=1")
            .arg(format!("-artifact_prefix={}/", target_artifacts.display()));
        // libFuzzer reports every new input (thousands of lines): that goes to a log file,
        // and the log shows its final statistics, or its end when the target failed.
        let log_path = corpus.path().with_extension("log");
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("cannot create {}", log_path.display()))?;
        eprintln!("$ {:?} (output in {})", fuzz, log_path.display());
        let status = fuzz
            .stdout(log.try_clone()?)
            .stderr(log)
            .status()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let output = std::fs::read_to_string(&log_path).unwrap_or_default();
        let lines: Vec<&str> = output.lines().collect();
        if status.success() {
            for line in lines.iter().filter(|l| is_final_stat(l)) {
                eprintln!("{target}: {line}");
            }
            // Kept only for a failing run, where it is named in the error.
            let _ = std::fs::remove_file(&log_path);
        } else {
            for line in &lines[lines.len().saturating_sub(60)..] {
                eprintln!("{target}: {line}");
            }
            crashed.push(target.clone());
        }
    }
    if !crashed.is_empty() {
        bail!(
            "fuzz target(s) {} found a failing input; it is under {} \
             (replay it with the target binary in {} and the file as its argument)",
            crashed.join(", "),
            artifacts.display(),
            target_dir.join(&host).join("release").display()
        );
    }
    Ok(())
}

/// libFuzzer's closing lines: how many inputs ran, how fast, and the peak memory.
fn is_final_stat(line: &str) -> bool {
    line.starts_with("Done ") || line.starts_with("stat::")
}

/// The fuzz build's own target dir beside the main one, so its instrumented artifacts
/// never replace the main build's.
fn fuzz_target_dir() -> Result<PathBuf> {
    let main = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => crate::workspace_root().join("target"),
    };
    Ok(main.join("fuzz"))
}

/// `rustc -vV`'s host triple.
fn host_triple() -> Result<String> {
    let output = Command::new("rustc")
        .arg("-vV")
        .output()
        .context("cannot run rustc -vV")?;
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines()
        .find_map(|line| line.strip_prefix("host: "))
        .map(str::to_owned)
        .context("rustc -vV printed no host line")
}
