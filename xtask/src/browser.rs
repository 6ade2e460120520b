//! The Debian programs the suite drives: `chromium` and `chromium-driver` for the console's
//! browser tests, `prometheus` for the metrics tests; installed by `cargo xtask test` when
//! missing (CI runs as root on a fresh machine).

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};

/// Where Debian puts them; the tests look there unless `MAILHOOK_CHROMIUM` and
/// `MAILHOOK_CHROMEDRIVER` point elsewhere.
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// Prometheus and promtool, for the metrics tests (a real Prometheus runs every PromQL
/// expression of the shipped dashboard and alerts).
const PROMETHEUS: &str = "/usr/bin/prometheus";
const PROMTOOL: &str = "/usr/bin/promtool";

/// Installs, with one apt-get run, the Debian packages the suite drives that are missing:
/// Chromium and its WebDriver (unless the tests are pointed at others), and Prometheus.
pub fn ensure_installed() -> Result<()> {
    let pointed_elsewhere = std::env::var_os("MAILHOOK_CHROMIUM").is_some()
        && std::env::var_os("MAILHOOK_CHROMEDRIVER").is_some();
    let mut missing = Vec::new();
    let browser_there = Path::new(CHROMIUM).is_file() && Path::new(CHROMEDRIVER).is_file();
    if !(pointed_elsewhere || browser_there) {
        missing.extend(["chromium", "chromium-driver"]);
    }
    if !(Path::new(PROMETHEUS).is_file() && Path::new(PROMTOOL).is_file()) {
        missing.push("prometheus");
    }
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!(
        "xtask: installing Debian's {} for the browser and metrics tests",
        missing.join(", ")
    );
    let hint = "installing test tools needs root and Debian's apt; or install chromium, \
                chromium-driver and prometheus yourself";
    crate::run(Command::new("apt-get").arg("update")).context(hint)?;
    crate::run(
        Command::new("apt-get")
            .args(["install", "-y"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .context(hint)
}
