//! `cargo xtask plugins`: builds the WASM plugins in `plugins/` (the SDK's examples and the
//! hostile plugins the tests load), adding their targets with rustup when this toolchain
//! lacks them. Plugins are built for wasm32-unknown-unknown (no WASI: a component of the
//! plugin and mailhook's host interface only, which the host instantiates faster), except the
//! two hostile plugins that try to reach the system: they are built for wasm32-wasip2, where
//! Rust's standard library imports WASI's files and sockets. They go to
//! `<target dir>/plugins/<target>/release/`, where the tests look for them; the plugins
//! workspace has its own target dir there, so its builds never fight the host workspace's
//! over features or locks.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

/// The target plugins are built for: no system interface at all (mailhook grants none), linked
/// into a component by the toolchain's `wasm-component-ld` (`plugins/.cargo/config.toml`).
const WASM_TARGET: &str = "wasm32-unknown-unknown";
/// The target of the plugins that must import WASI to show that mailhook refuses them.
const WASI_TARGET: &str = "wasm32-wasip2";
/// Those plugins (crate names); `mailhook-test-support` looks for them under `WASI_TARGET`.
const WASI_PLUGINS: [&str; 2] = ["wasi-files", "wasi-sockets"];

/// Builds every plugin; returns the directory holding the `.wasm` files of `WASM_TARGET`.
pub fn build(root: &Path) -> Result<PathBuf> {
    ensure_targets()?;
    let target_dir = crate::target_dir(root)?.join("plugins");
    let plugins = root.join("plugins");
    let mut bare = crate::cargo(&plugins);
    bare.args(["build", "--release", "--workspace", "--target", WASM_TARGET]);
    let mut wasi = crate::cargo(&plugins);
    wasi.args(["build", "--release", "--target", WASI_TARGET]);
    for name in WASI_PLUGINS {
        bare.args(["--exclude", name]);
        wasi.args(["-p", name]);
    }
    crate::run(bare.env("CARGO_TARGET_DIR", &target_dir))?;
    crate::run(wasi.env("CARGO_TARGET_DIR", &target_dir))?;
    let out = target_dir.join(WASM_TARGET).join("release");
    eprintln!(
        "xtask: plugins built in {} (and {} in {})",
        out.display(),
        WASI_PLUGINS.join(", "),
        target_dir.join(WASI_TARGET).join("release").display()
    );
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

/// `cargo fmt --check` and clippy with `-D warnings` over the plugins, for the wasm targets
/// they are built for and the host their tests run on.
pub fn lint(root: &Path) -> Result<()> {
    ensure_targets()?;
    let target_dir = crate::target_dir(root)?.join("plugins");
    let plugins = root.join("plugins");
    crate::run(crate::cargo(&plugins).args(["fmt", "--all", "--", "--check"]))?;
    for target in [None, Some(WASM_TARGET), Some(WASI_TARGET)] {
        let mut clippy = crate::cargo(&plugins);
        clippy.arg("clippy");
        match target {
            // Only the plugins themselves: their tests run on the host, with the SDK's
            // `testing` stand-ins, which do not exist on wasm.
            Some(WASI_TARGET) => {
                clippy.args(["--release", "--target", WASI_TARGET]);
                for name in WASI_PLUGINS {
                    clippy.args(["-p", name]);
                }
            }
            Some(target) => {
                clippy.args(["--workspace", "--release", "--target", target]);
                for name in WASI_PLUGINS {
                    clippy.args(["--exclude", name]);
                }
            }
            None => {
                clippy.args(["--workspace", "--all-targets"]);
            }
        }
        clippy
            .args(["--", "-D", "warnings"])
            .env("CARGO_TARGET_DIR", &target_dir);
        crate::run(&mut clippy)?;
    }
    Ok(())
}

/// Adds the wasm targets with rustup unless the toolchain has them already.
fn ensure_targets() -> Result<()> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run rustup, which adds the wasm targets plugins are built for")?;
    if !installed.status.success() {
        bail!(
            "`rustup target list --installed` failed: {}",
            installed.status
        );
    }
    let installed = String::from_utf8_lossy(&installed.stdout);
    let missing: Vec<&str> = [WASM_TARGET, WASI_TARGET]
        .into_iter()
        .filter(|target| !installed.lines().any(|line| line.trim() == *target))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    crate::run(Command::new("rustup").args(["target", "add"]).args(missing))
}
