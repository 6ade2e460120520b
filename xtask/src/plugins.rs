//! `cargo xtask plugins`: builds the WASM plugins in `plugins/` (the SDK's examples and the
//! hostile plugins the tests load) for wasm32-wasip2, adding that target with rustup when
//! this toolchain lacks it. They go to `<target dir>/plugins/wasm32-wasip2/release/`, where
//! the tests look for them; the plugins workspace has its own target dir there, so its
//! builds never fight the host workspace's over features or locks.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

/// The target plugins are built for: the component model, with no system access granted
/// by mailhook (see crates/mailhook-plugin-host).
const WASM_TARGET: &str = "wasm32-wasip2";

/// Builds every plugin; returns the directory holding the `.wasm` files.
pub fn build(root: &Path) -> Result<PathBuf> {
    ensure_target()?;
    let target_dir = crate::target_dir(root)?.join("plugins");
    crate::run(
        crate::cargo(&root.join("plugins"))
            .args(["build", "--release", "--target", WASM_TARGET])
            .env("CARGO_TARGET_DIR", &target_dir),
    )?;
    let out = target_dir.join(WASM_TARGET).join("release");
    eprintln!("xtask: plugins built in {}", out.display());
    Ok(out)
}

/// The plugins' own unit tests, on this machine (the SDK stands in for the host there).
pub fn unit_tests(root: &Path, tally: &mut crate::tally::Tally) -> Result<()> {
    let target_dir = crate::target_dir(root)?.join("plugins");
    crate::tally::run_counted(
        crate::cargo(&root.join("plugins"))
            .args(["test", "--workspace"])
            .env("CARGO_TARGET_DIR", &target_dir),
        tally,
    )
}

/// `cargo fmt --check` and clippy with `-D warnings` over the plugins, for the wasm target
/// they are built for and the host their tests run on.
pub fn lint(root: &Path) -> Result<()> {
    ensure_target()?;
    let target_dir = crate::target_dir(root)?.join("plugins");
    let plugins = root.join("plugins");
    crate::run(crate::cargo(&plugins).args(["fmt", "--all", "--", "--check"]))?;
    for target in [None, Some(WASM_TARGET)] {
        let mut clippy = crate::cargo(&plugins);
        clippy.args(["clippy", "--workspace"]);
        match target {
            // Only the plugins themselves: their tests run on the host, with the SDK's
            // `testing` stand-ins, which do not exist on wasm.
            Some(target) => clippy.args(["--release", "--target", target]),
            None => clippy.arg("--all-targets"),
        };
        clippy
            .args(["--", "-D", "warnings"])
            .env("CARGO_TARGET_DIR", &target_dir);
        crate::run(&mut clippy)?;
    }
    Ok(())
}

/// Adds the wasm target with rustup unless the toolchain has it already.
fn ensure_target() -> Result<()> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run rustup, which adds the wasm32-wasip2 target plugins are built for")?;
    if !installed.status.success() {
        bail!(
            "`rustup target list --installed` failed: {}",
            installed.status
        );
    }
    if String::from_utf8_lossy(&installed.stdout)
        .lines()
        .any(|line| line.trim() == WASM_TARGET)
    {
        return Ok(());
    }
    crate::run(Command::new("rustup").args(["target", "add", WASM_TARGET]))
}
