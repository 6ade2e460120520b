//! The `[plugins]` config section: where plugin files are, the limits every call runs under,
//! which plugins to load, and each account's transform chain.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Shopify Functions' budget: 11 million instructions per run.
pub const FUEL_DEFAULT: u64 = 11_000_000;
/// A call that takes longer is interrupted (an epoch deadline).
pub const TIMEOUT_DEFAULT: Duration = Duration::from_millis(50);
/// Linear memory a plugin instance may grow to, all its memories together.
pub const MEMORY_BYTES_DEFAULT: usize = 32 * 1024 * 1024;
/// The most any plugin may be given: the pooling allocator reserves this per memory slot.
pub const MEMORY_BYTES_LIMIT: usize = 1024 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PluginsConfig {
    /// Plugin files (`file` of each `load` entry) are relative to this directory.
    pub dir: PathBuf,
    /// Threads that run plugin calls; the async runtime's threads never do.
    pub threads: usize,
    /// Calls waiting for a plugin thread; when full, the delivery tasks asking wait.
    pub queue_max: usize,
    /// Fuel (about one unit per WebAssembly instruction) a call may burn, unless the
    /// plugin's entry says otherwise.
    pub fuel: u64,
    /// Wall-clock time a call may take, unless the plugin's entry says otherwise.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Linear memory a plugin instance may use, unless the plugin's entry says otherwise.
    pub memory_bytes_max: usize,
    /// Largest payload handed to a plugin; a bigger one fails the call (`too_large`).
    pub input_bytes_max: usize,
    /// Largest payload a transform may return, and largest sum of a sink's request bodies.
    pub output_bytes_max: usize,
    /// Most effects (HTTP requests and log lines) one sink call may return.
    pub effects_max: usize,
    /// Log lines one call may write through the host's `log`; more are counted, not written.
    pub log_lines_max: usize,
    /// Longest log line written for a plugin, in bytes; longer ones are cut.
    pub log_line_bytes_max: usize,
    /// Consecutive failed calls after which a plugin is suspended (an ERROR log and a
    /// metric say so) until its file changes; 0 never suspends.
    pub failures_before_suspend: u32,
    /// How often plugin files are checked for changes (a changed file is reloaded without
    /// a restart); "0s" turns hot reload off.
    #[serde(with = "humantime_serde")]
    pub reload_poll: Duration,
    /// Where compiled plugins are cached across restarts; empty: `<data_dir>/plugin-cache`.
    pub cache_dir: PathBuf,
    /// The plugins to load.
    pub load: Vec<PluginSpec>,
    /// Per account, the transforms every event goes through before it is signed, in order.
    pub transforms: Vec<TransformChain>,
}

impl Default for PluginsConfig {
    fn default() -> PluginsConfig {
        PluginsConfig {
            dir: PathBuf::from("./plugins"),
            threads: std::thread::available_parallelism().map_or(2, usize::from),
            queue_max: 1024,
            fuel: FUEL_DEFAULT,
            timeout: TIMEOUT_DEFAULT,
            memory_bytes_max: MEMORY_BYTES_DEFAULT,
            input_bytes_max: 256 * 1024,
            output_bytes_max: 256 * 1024,
            effects_max: 8,
            log_lines_max: 16,
            log_line_bytes_max: 1024,
            failures_before_suspend: 50,
            reload_poll: Duration::from_secs(1),
            cache_dir: PathBuf::new(),
            load: Vec::new(),
            transforms: Vec::new(),
        }
    }
}

/// One `[[plugins.load]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginSpec {
    /// How accounts refer to it: in `transforms` chains, or as the address `plugin:<name>`.
    pub name: String,
    /// The `.wasm` component, relative to `plugins.dir`.
    pub file: PathBuf,
    /// `transform` or `sink`: the world the plugin was built for.
    pub kind: Kind,
    /// What happens to an event when the plugin fails (transforms only; a failing sink is
    /// a failed attempt, and the chain moves on).
    #[serde(default)]
    pub policy: Policy,
    /// The plugin's own settings, handed to it as JSON.
    #[serde(default)]
    pub config: serde_json::Map<String, serde_json::Value>,
    /// Overrides `plugins.fuel` for this plugin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuel: Option<u64>,
    /// Overrides `plugins.timeout` for this plugin.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "humantime_serde::option"
    )]
    pub timeout: Option<Duration>,
    /// Overrides `plugins.memory_bytes_max` for this plugin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes_max: Option<usize>,
}

/// The world a plugin implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Transform,
    Sink,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Transform => "transform",
            Kind::Sink => "sink",
        }
    }
}

/// What a failing transform does to the event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// The event is not pushed: it is recorded as failed with the plugin's error (recovery
    /// rounds, then dead; replayable once the plugin is fixed).
    #[default]
    FailClosed,
    /// The event goes on without this plugin's change (the payload it was given).
    FailOpen,
}

impl Policy {
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::FailClosed => "fail_closed",
            Policy::FailOpen => "fail_open",
        }
    }
}

/// One `[[plugins.transforms]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransformChain {
    /// The account whose events go through the chain.
    pub account: String,
    /// Transform plugin names, applied in this order.
    pub chain: Vec<String>,
}

/// The limits one call of one plugin runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallLimits {
    pub fuel: u64,
    pub timeout: Duration,
    pub memory_bytes_max: usize,
}

impl PluginsConfig {
    /// A plugin's path: its `file` under `dir` (an absolute `file` stays as it is).
    pub fn path_of(&self, spec: &PluginSpec) -> PathBuf {
        self.dir.join(&spec.file)
    }

    pub fn limits_of(&self, spec: &PluginSpec) -> CallLimits {
        CallLimits {
            fuel: spec.fuel.unwrap_or(self.fuel),
            timeout: spec.timeout.unwrap_or(self.timeout),
            memory_bytes_max: spec.memory_bytes_max.unwrap_or(self.memory_bytes_max),
        }
    }

    /// The plugin named `name`, if one is configured.
    pub fn spec(&self, name: &str) -> Option<&PluginSpec> {
        self.load.iter().find(|spec| spec.name == name)
    }

    /// Names of the configured sinks (what `plugin:<name>` addresses may name).
    pub fn sink_names(&self) -> Vec<String> {
        self.load
            .iter()
            .filter(|spec| spec.kind == Kind::Sink)
            .map(|spec| spec.name.clone())
            .collect()
    }

    /// Checks what the types cannot say; each message names its key. Plugin files are not
    /// read here: a missing or broken file is reported when loading (and fixed by hot
    /// reload), not a reason to refuse the whole gateway.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("plugins.threads", self.threads),
            ("plugins.queue_max", self.queue_max),
            ("plugins.input_bytes_max", self.input_bytes_max),
            ("plugins.output_bytes_max", self.output_bytes_max),
            ("plugins.effects_max", self.effects_max),
            ("plugins.log_line_bytes_max", self.log_line_bytes_max),
        ];
        if let Some((key, _)) = positive.iter().find(|(_, value)| *value == 0) {
            return Err(format!("{key} must be at least 1"));
        }
        if self.threads > 64 {
            return Err(format!(
                "plugins.threads = {} must be at most 64",
                self.threads
            ));
        }
        check_limits("plugins", self.fuel, self.timeout, self.memory_bytes_max)?;
        let mut names = HashSet::new();
        for (i, spec) in self.load.iter().enumerate() {
            let key = format!("plugins.load[{i}]");
            mailhook_core::settings::check_plugin_name(&spec.name)
                .map_err(|message| format!("{key}.name: {message}"))?;
            if !names.insert(spec.name.as_str()) {
                return Err(format!(
                    "{key}.name: plugin `{}` is loaded twice",
                    spec.name
                ));
            }
            if spec.file.as_os_str().is_empty() {
                return Err(format!("{key}.file: name the plugin's .wasm file"));
            }
            let limits = self.limits_of(spec);
            check_limits(&key, limits.fuel, limits.timeout, limits.memory_bytes_max)?;
        }
        let mut accounts = HashSet::new();
        for (i, chain) in self.transforms.iter().enumerate() {
            let key = format!("plugins.transforms[{i}]");
            mailhook_core::AccountId::parse(&chain.account)
                .map_err(|message| format!("{key}.account: {message}"))?;
            if !accounts.insert(chain.account.as_str()) {
                return Err(format!(
                    "{key}.account: account `{}` has two transform chains; list every plugin in one",
                    chain.account
                ));
            }
            for name in &chain.chain {
                match self.spec(name) {
                    None => {
                        return Err(format!(
                            "{key}.chain: no plugin named `{name}` in [[plugins.load]]"
                        ));
                    }
                    Some(spec) if spec.kind != Kind::Transform => {
                        return Err(format!(
                            "{key}.chain: plugin `{name}` is a {}, not a transform",
                            spec.kind.as_str()
                        ));
                    }
                    Some(_) => {}
                }
            }
        }
        Ok(())
    }
}

fn check_limits(
    key: &str,
    fuel: u64,
    timeout: Duration,
    memory_bytes_max: usize,
) -> Result<(), String> {
    if fuel == 0 {
        return Err(format!("{key}: fuel must be at least 1"));
    }
    if timeout.is_zero() || timeout > Duration::from_secs(60) {
        return Err(format!("{key}: timeout must be above 0 and at most 60s"));
    }
    if !(1024 * 1024..=MEMORY_BYTES_LIMIT).contains(&memory_bytes_max) {
        return Err(format!(
            "{key}: memory_bytes_max = {memory_bytes_max} must be from 1 MiB to 1 GiB"
        ));
    }
    Ok(())
}

/// The cache directory to use: `cache_dir`, or `<data_dir>/plugin-cache`.
pub fn cache_dir(config: &PluginsConfig, data_dir: &Path) -> PathBuf {
    if config.cache_dir.as_os_str().is_empty() {
        data_dir.join("plugin-cache")
    } else {
        config.cache_dir.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, kind: Kind) -> PluginSpec {
        PluginSpec {
            name: name.to_owned(),
            file: PathBuf::from(format!("{name}.wasm")),
            kind,
            policy: Policy::FailClosed,
            config: serde_json::Map::new(),
            fuel: None,
            timeout: None,
            memory_bytes_max: None,
        }
    }

    #[test]
    fn names_what_is_wrong() {
        let base = PluginsConfig {
            load: vec![spec("up", Kind::Transform), spec("slack", Kind::Sink)],
            transforms: vec![TransformChain {
                account: "default".to_owned(),
                chain: vec!["up".to_owned()],
            }],
            ..PluginsConfig::default()
        };
        base.validate().unwrap();
        assert_eq!(base.sink_names(), vec!["slack".to_owned()]);
        type Change = Box<dyn Fn(&mut PluginsConfig)>;
        let cases: Vec<(Change, &str)> = vec![
            (Box::new(|c| c.threads = 0), "plugins.threads"),
            (
                Box::new(|c| c.load[0].name = "Up!".to_owned()),
                "plugins.load[0].name",
            ),
            (
                Box::new(|c| c.load[1].name = "up".to_owned()),
                "loaded twice",
            ),
            (
                Box::new(|c| c.load[0].fuel = Some(0)),
                "plugins.load[0]: fuel",
            ),
            (
                Box::new(|c| c.load[0].memory_bytes_max = Some(10)),
                "memory_bytes_max",
            ),
            (
                Box::new(|c| c.transforms[0].chain.push("slack".to_owned())),
                "is a sink",
            ),
            (
                Box::new(|c| c.transforms[0].chain.push("nope".to_owned())),
                "no plugin named `nope`",
            ),
            (
                Box::new(|c| c.transforms[0].account = "a b".to_owned()),
                "plugins.transforms[0].account",
            ),
            (Box::new(|c| c.timeout = Duration::ZERO), "plugins: timeout"),
        ];
        for (change, expected) in cases {
            let mut config = base.clone();
            change(&mut config);
            let err = config.validate().unwrap_err();
            assert!(
                err.contains(expected),
                "{err:?} should mention {expected:?}"
            );
        }
    }
}
