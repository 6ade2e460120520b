//! `cargo xtask bench --plugin PATH`: the gateway run again with a transform plugin on every
//! event, its throughput next to the run without, and the plugin's per-call latency read
//! from the gateway's own histogram (`mailhook_plugin_call_duration_seconds`).

use std::path::Path;

use anyhow::{Context, Result, bail};

/// The name the bench gives the plugin in the gateway's config.
pub const NAME: &str = "bench";
/// The goal: with the plugin, at least this share of the throughput without.
pub const TARGET_RATIO: f64 = 0.8;

/// The `[plugins]` section that runs `file` as the transform of every event.
pub fn config(file: &Path, data_dir: &Path) -> Result<serde_json::Value> {
    let dir = file.parent().context("--plugin names no file")?;
    let name = file.file_name().context("--plugin names no file")?;
    Ok(serde_json::json!({
        "dir": dir.to_str().context("the plugin's path is not UTF-8")?,
        "cache_dir": data_dir.join("plugin-cache").to_str().context("the temp dir is not UTF-8")?,
        "load": [{ "name": NAME, "file": name.to_str().context("the plugin's name is not UTF-8")?, "kind": "transform" }],
        "transforms": [{ "account": "default", "chain": [NAME] }],
    }))
}

/// What the gateway's metrics say about the plugin's calls.
#[derive(Debug, Clone)]
pub struct Calls {
    pub ok: f64,
    pub failed: f64,
    /// Per call, in microseconds, interpolated within the histogram's buckets.
    pub p50_us: f64,
    pub p99_us: f64,
}

/// The plugin's calls, from a gateway's `/metrics` text.
pub fn parse(text: &str) -> Result<Calls> {
    let plugin = format!("plugin=\"{NAME}\"");
    let mut buckets: Vec<(f64, f64)> = Vec::new();
    let (mut ok, mut failed) = (0.0, 0.0);
    for line in text.lines().filter(|line| line.contains(&plugin)) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let value: f64 = value.parse().unwrap_or(0.0);
        if series.starts_with("mailhook_plugin_call_duration_seconds_bucket") {
            let le = series
                .split("le=\"")
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .context("a bucket without le")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse()?
            };
            buckets.push((le, value));
        } else if series.starts_with("mailhook_plugin_calls_total") {
            if series.contains("outcome=\"ok\"") || series.contains("outcome=\"dropped\"") {
                ok += value;
            } else {
                failed += value;
            }
        }
    }
    if buckets.is_empty() {
        bail!("the gateway's metrics have no mailhook_plugin_call_duration_seconds for the plugin");
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    Ok(Calls {
        ok,
        failed,
        p50_us: quantile(&buckets, 0.5) * 1e6,
        p99_us: quantile(&buckets, 0.99) * 1e6,
    })
}

/// Prometheus' `histogram_quantile`: linear within the bucket the rank falls in.
fn quantile(buckets: &[(f64, f64)], q: f64) -> f64 {
    let total = buckets.last().map_or(0.0, |b| b.1);
    if total == 0.0 {
        return 0.0;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return lower.0;
            }
            let share = if count > lower.1 {
                (rank - lower.1) / (count - lower.1)
            } else {
                1.0
            };
            return lower.0 + (le - lower.0) * share;
        }
        lower = (le, count);
    }
    lower.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_quantiles_like_prometheus() {
        let text = "mailhook_plugin_call_duration_seconds_bucket{plugin=\"bench\",le=\"0.00001\"} 0\n\
                    mailhook_plugin_call_duration_seconds_bucket{plugin=\"bench\",le=\"0.0001\"} 50\n\
                    mailhook_plugin_call_duration_seconds_bucket{plugin=\"bench\",le=\"0.001\"} 100\n\
                    mailhook_plugin_call_duration_seconds_bucket{plugin=\"bench\",le=\"+Inf\"} 100\n\
                    mailhook_plugin_calls_total{plugin=\"bench\",outcome=\"ok\"} 99\n\
                    mailhook_plugin_calls_total{plugin=\"bench\",outcome=\"trap\"} 1\n";
        let calls = parse(text).unwrap();
        assert!((calls.p50_us - 100.0).abs() < 1e-6, "{calls:?}");
        assert!((calls.p99_us - 982.0).abs() < 1e-6, "{calls:?}");
        assert_eq!((calls.ok, calls.failed), (99.0, 1.0));
    }
}
