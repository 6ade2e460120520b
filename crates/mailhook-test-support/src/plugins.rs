//! The WASM plugins the tests load: built from source by `cargo xtask plugins` (which
//! `cargo xtask test` runs first) into `<target dir>/plugins/wasm32-unknown-unknown/release/`,
//! and the two that import WASI into `<target dir>/plugins/wasm32-wasip2/release/`.

use std::path::PathBuf;

use mailhook::Config;
use mailhook_plugin_host::{Kind, PluginSpec, Policy, TransformChain};

/// The plugins built for wasm32-wasip2 because they must import WASI (xtask's `WASI_PLUGINS`).
const WASI_PLUGINS: [&str; 2] = ["wasi-files", "wasi-sockets"];

/// Where `cargo xtask plugins` puts the built plugins of `target`: next to the test
/// executable's target dir (`target/<profile>/deps/<test>` -> `target/plugins/...`).
fn built_dir(target: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe
        .ancestors()
        .nth(3)
        .expect("test exe lives in target/<profile>/deps");
    dir.join("plugins").join(target).join("release")
}

/// Where the plugins built for wasm32-unknown-unknown, all but `WASI_PLUGINS`, are.
pub fn plugins_dir() -> PathBuf {
    built_dir("wasm32-unknown-unknown")
}

/// The built plugin `crate_name` (`uspeedo-format`, `hostile` ones like `spin`, ...).
pub fn plugin_file(crate_name: &str) -> PathBuf {
    let dir = if WASI_PLUGINS.contains(&crate_name) {
        built_dir("wasm32-wasip2")
    } else {
        plugins_dir()
    };
    let path = dir.join(format!("{}.wasm", crate_name.replace('-', "_")));
    assert!(
        path.is_file(),
        "{} is missing: build the plugins with `cargo xtask plugins` (cargo xtask test does)",
        path.display()
    );
    path
}

/// A `[[plugins.load]]` entry for the built plugin `crate_name`, named `name`.
pub fn plugin(name: &str, crate_name: &str, kind: Kind) -> PluginSpec {
    PluginSpec {
        name: name.to_owned(),
        file: plugin_file(crate_name),
        kind,
        policy: Policy::FailClosed,
        config: serde_json::Map::new(),
        fuel: None,
        timeout: None,
        memory_bytes_max: None,
    }
}

/// Loads `plugins`, with `chains` as `(account, [transform, ...])`, and a compiled-code
/// cache shared by every test (compiling a plugin is the slow part of loading it).
pub fn use_plugins(config: &mut Config, plugins: Vec<PluginSpec>, chains: &[(&str, &[&str])]) {
    config.plugins.dir = plugins_dir();
    config.plugins.cache_dir = plugins_dir().join("cache");
    config.plugins.reload_poll = std::time::Duration::from_millis(100);
    config.plugins.load = plugins;
    config.plugins.transforms = chains
        .iter()
        .map(|(account, chain)| TransformChain {
            account: (*account).to_owned(),
            chain: chain.iter().map(|name| (*name).to_owned()).collect(),
        })
        .collect();
}
