//! The wasmtime side: one engine per gateway (pooling allocator, fuel, epochs, code cache),
//! loading a plugin file into a pre-instantiated component, and one call in a fresh store
//! under the plugin's limits. Everything here is synchronous and runs on plugin threads.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{
    Cache, CacheConfig, Config, Enabled, Engine, InstanceAllocationStrategy,
    PoolingAllocationConfig, ResourceLimiter, Store, Trap,
};

use crate::bindings::{host, sink, transform, types};
use crate::config::{CallLimits, Kind};
use crate::error::{Error, Result};
use crate::{CallError, PluginOutcome};

/// How often the epoch ticks: a call's time limit is counted in these.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(1);
/// WebAssembly stack a call may use (deep recursion traps instead of growing).
const WASM_STACK_BYTES_MAX: usize = 512 * 1024;
/// Core instances, memories and tables one plugin instance may have. A Rust component
/// built for wasm32-wasip2 has a handful of each (the module, the WASI adapter, shims); one
/// built for wasm32-unknown-unknown, as the SDK's are, fewer.
const CORE_INSTANCES_PER_COMPONENT_MAX: u32 = 16;
const MEMORIES_PER_COMPONENT_MAX: u32 = 4;
const TABLES_PER_COMPONENT_MAX: u32 = 8;
/// Address space reserved for each linear memory, and the guard region after it: enough for
/// the compiler to leave out bounds checks on 32-bit memories.
const MEMORY_RESERVATION_BYTES: u64 = 4 << 30;
const MEMORY_GUARD_BYTES: u64 = 2 << 30;
/// Table elements a plugin may have (function pointers for indirect calls).
const TABLE_ELEMENTS_MAX: usize = 100_000;
/// Bytes of each plugin memory reset in place after a call rather than returned to the kernel:
/// a typical Rust plugin's data, stack and heap for one event fit.
const MEMORY_KEEP_RESIDENT_BYTES: usize = 2 * 1024 * 1024;
/// The same for each table (function pointers, a few KiB).
const TABLE_KEEP_RESIDENT_BYTES: usize = 64 * 1024;
/// Longest error message kept from wasmtime (its messages can carry a whole backtrace).
const ERROR_BYTES_MAX: usize = 400;
/// Most bytes of randomness handed out in one call of `get-random-bytes`.
const RANDOM_BYTES_MAX: u64 = 4096;

/// The namespaces of imports a plugin may have besides `mailhook:plugin/host`. Rust's
/// standard library for wasm32-wasip2 imports these even when a plugin never uses them:
/// their functions trap if called (`wasi:random` is served, see `define_random`).
const TOLERATED_IMPORTS: [&str; 3] = ["wasi:cli/", "wasi:io/", "wasi:random/"];
/// Imports that mean a plugin wants system access, with what mailhook says about it.
const FORBIDDEN_IMPORTS: [(&str, &str); 4] = [
    ("wasi:filesystem/", "a filesystem"),
    ("wasi:sockets/", "the network"),
    ("wasi:http/", "the network"),
    ("wasi:clocks/", "a clock"),
];

/// The wasmtime engine and the epoch ticker that enforces time limits.
pub(crate) struct Runtime {
    pub engine: Engine,
    linker: Linker<CallState>,
    stop: Arc<AtomicBool>,
}

impl Runtime {
    /// `slots`: calls that may run at once (the plugin threads); `memory_bytes_max`: the
    /// most any plugin may use; `cache_dir`: where
    /// compiled code is kept across restarts (`None`: not kept).
    pub fn new(slots: u32, memory_bytes_max: usize, cache_dir: Option<&Path>) -> Result<Runtime> {
        let mut pool = PoolingAllocationConfig::default();
        // Two instances per plugin thread: a call's instance, and one being torn down.
        let instances = slots * 2;
        pool.total_component_instances(instances)
            .total_core_instances(instances * CORE_INSTANCES_PER_COMPONENT_MAX)
            .total_memories(instances * MEMORIES_PER_COMPONENT_MAX)
            .total_tables(instances * TABLES_PER_COMPONENT_MAX)
            .max_core_instances_per_component(CORE_INSTANCES_PER_COMPONENT_MAX)
            .max_memories_per_component(MEMORIES_PER_COMPONENT_MAX)
            .max_tables_per_component(TABLES_PER_COMPONENT_MAX)
            .table_elements(TABLE_ELEMENTS_MAX)
            // The most a plugin memory may grow to (the limiter says so per call, too).
            .max_memory_size(memory_bytes_max)
            // A fresh instance per call means a memory and table reset per call. Reset the
            // first bytes by writing zeros (or the initial image) instead of giving pages back
            // to the kernel: `madvise` on every call made each one pay TLB shootdowns across
            // the cores (a third of the gateway's CPU with a plugin on every event).
            .linear_memory_keep_resident(MEMORY_KEEP_RESIDENT_BYTES.min(memory_bytes_max))
            .table_keep_resident(TABLE_KEEP_RESIDENT_BYTES)
            // And reset only the pages a call wrote, found with the PAGEMAP_SCAN ioctl (Linux
            // 6.7+; elsewhere the whole kept region is reset as before). Without it, the
            // memset and copy of the kept 2 MiB after every call was ~12% of the gateway's
            // CPU with a plugin on every event (perf), for the few pages one call touches.
            .pagemap_scan(Enabled::Auto);
        let mut config = Config::new();
        config
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
            // Address space, not memory: with 4 GiB reserved and a 2 GiB guard behind each
            // linear memory, every 32-bit address a plugin can form lands in the reservation,
            // so Cranelift drops the bounds check (and its Spectre guard) on each load and
            // store, and the guard pages trap what is past the memory's size. Reserving only
            // `memory_bytes_max` made each access check: per-call p50 38 -> 23 us with a
            // transform on every event. At the 64-thread maximum the pool reserves 512
            // memories, 3 TiB of the 128 TiB a 64-bit Linux process may address; the cap on
            // what a plugin may use is `max_memory_size` above and the limiter, as before.
            .memory_reservation(MEMORY_RESERVATION_BYTES)
            .memory_guard_size(MEMORY_GUARD_BYTES)
            .memory_reservation_for_growth(0)
            .consume_fuel(true)
            .epoch_interruption(true)
            .max_wasm_stack(WASM_STACK_BYTES_MAX);
        if let Some(dir) = cache_dir {
            let mut cache = CacheConfig::new();
            cache.with_directory(dir);
            let cache = Cache::new(cache)
                .map_err(|err| Error::Engine(format!("plugin cache `{}`: {err}", dir.display())))?;
            config.cache(Some(cache));
        }
        let engine = Engine::new(&config).map_err(|err| Error::Engine(err.to_string()))?;
        let mut linker = Linker::new(&engine);
        host::add_to_linker::<CallState, HasSelf<CallState>>(&mut linker, |state| state)
            .map_err(|err| Error::Engine(err.to_string()))?;

        let stop = Arc::new(AtomicBool::new(false));
        let ticker = engine.clone();
        let stopped = stop.clone();
        std::thread::Builder::new()
            .name("plugin-epoch".to_owned())
            .spawn(move || {
                while !stopped.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    ticker.increment_epoch();
                }
            })
            .map_err(|source| Error::Thread {
                what: "epoch",
                source,
            })?;
        Ok(Runtime {
            engine,
            linker,
            stop,
        })
    }

    /// Compiles a plugin file's bytes and links it for `kind`. The error says, in words an
    /// operator can act on, why the file cannot be used.
    pub fn load(&self, bytes: &[u8], kind: Kind) -> Result<Loaded, String> {
        let component = Component::new(&self.engine, bytes)
            .map_err(|err| format!("not a usable WebAssembly component: {}", short(&err)))?;
        let mut linker = self.linker.clone();
        let mut random = Vec::new();
        let mut forbidden = Vec::new();
        for (name, _) in component.component_type().imports(&self.engine) {
            if let Some((_, what)) = FORBIDDEN_IMPORTS.iter().find(|(p, _)| name.starts_with(p)) {
                forbidden.push(format!("`{name}` ({what})"));
                continue;
            }
            if name.starts_with("mailhook:plugin/") {
                continue;
            }
            if !TOLERATED_IMPORTS.iter().any(|p| name.starts_with(p)) {
                return Err(format!(
                    "it imports `{name}`, which mailhook does not provide (plugins may import \
                     only mailhook:plugin/host@0.1.0)"
                ));
            }
            if name.starts_with("wasi:random/") {
                random.push(name.to_owned());
            }
        }
        if !forbidden.is_empty() {
            return Err(format!(
                "it imports {}: plugins get no filesystem, network or clock of their own \
                 (mailhook does all I/O: a sink returns HTTP requests for the host to make)",
                forbidden.join(", ")
            ));
        }
        for name in &random {
            define_random(&mut linker, name).map_err(|err| short(&err))?;
        }
        linker
            .define_unknown_imports_as_traps(&component)
            .map_err(|err| short(&err))?;
        let pre = linker.instantiate_pre(&component).map_err(|err| {
            format!(
                "it cannot be linked with mailhook's plugin interface: {}",
                short(&err)
            )
        })?;
        let pre = match kind {
            Kind::Transform => transform::TransformPre::new(pre).map(Pre::Transform),
            Kind::Sink => sink::SinkPre::new(pre).map(Pre::Sink),
        }
        .map_err(|err| {
            format!(
                "it is not a {} plugin (mailhook:plugin@0.1.0, world `{}`): {}",
                kind.as_str(),
                kind.as_str(),
                short(&err)
            )
        })?;
        Ok(Loaded { pre })
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A plugin file compiled and linked: instantiating it is cheap (a fresh store per call).
pub(crate) struct Loaded {
    pre: Pre,
}

enum Pre {
    Transform(transform::TransformPre<CallState>),
    Sink(sink::SinkPre<CallState>),
}

/// What one call runs with besides the event.
pub(crate) struct CallContext {
    pub plugin: Arc<str>,
    pub config: Arc<str>,
    pub limits: CallLimits,
    pub log_lines_max: usize,
    pub log_line_bytes_max: usize,
}

/// A store's data: the plugin's view of the host for one call.
pub(crate) struct CallState {
    config: Arc<str>,
    limiter: MemoryLimiter,
    log: EffectLog,
    random: u64,
}

impl CallState {
    fn new(context: &CallContext) -> CallState {
        CallState {
            config: context.config.clone(),
            limiter: MemoryLimiter {
                bytes_max: context.limits.memory_bytes_max,
                bytes: 0,
                hit: false,
            },
            log: EffectLog::new(context),
            random: RandomState::new().hash_one(0u8) | 1,
        }
    }

    /// xorshift64*: randomness for hash-map seeds inside plugins, not for secrets.
    fn next_random(&mut self) -> u64 {
        let mut x = self.random;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.random = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// A plugin's log lines of one call: attributed, one line each, cut, and capped.
pub(crate) struct EffectLog {
    plugin: Arc<str>,
    lines: usize,
    lines_max: usize,
    line_bytes_max: usize,
}

impl EffectLog {
    pub fn new(context: &CallContext) -> EffectLog {
        EffectLog {
            plugin: context.plugin.clone(),
            lines: 0,
            lines_max: context.log_lines_max,
            line_bytes_max: context.log_line_bytes_max,
        }
    }

    pub fn write(&mut self, level: types::LogLevel, message: &str) {
        self.lines += 1;
        if self.lines > self.lines_max {
            if self.lines == self.lines_max + 1 {
                tracing::warn!(plugin = %self.plugin, lines_max = self.lines_max, "plugin wrote more log lines in one call than plugins.log_lines_max; the rest are left out");
            }
            return;
        }
        // Control characters (newlines) would let a plugin forge log lines.
        let mut line: String = message
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        if line.len() > self.line_bytes_max {
            let mut end = self.line_bytes_max;
            while !line.is_char_boundary(end) {
                end -= 1;
            }
            line.truncate(end);
            line.push_str(" [cut]");
        }
        let plugin = &*self.plugin;
        match level {
            types::LogLevel::Debug => tracing::debug!(plugin, "{line}"),
            types::LogLevel::Info => tracing::info!(plugin, "{line}"),
            types::LogLevel::Warn => tracing::warn!(plugin, "{line}"),
            types::LogLevel::Error => tracing::error!(plugin, "{line}"),
        }
    }
}

impl host::Host for CallState {
    fn config(&mut self) -> String {
        self.config.to_string()
    }

    fn log(&mut self, level: types::LogLevel, message: String) {
        self.log.write(level, &message);
    }
}

impl types::Host for CallState {}

/// Caps a store's linear memories, all together, and remembers when it said no, so the
/// trap that follows (the guest's allocator gives up) is reported as out of memory.
struct MemoryLimiter {
    bytes_max: usize,
    bytes: usize,
    hit: bool,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self.bytes.saturating_add(desired.saturating_sub(current));
        if total > self.bytes_max {
            self.hit = true;
            return Ok(false);
        }
        self.bytes = total;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= TABLE_ELEMENTS_MAX)
    }
}

/// `wasi:random/*` for plugins: Rust's hash maps ask for a seed. Served from a per-call
/// generator, so nothing about the host leaks and a call cannot exhaust anything.
fn define_random(linker: &mut Linker<CallState>, name: &str) -> wasmtime::Result<()> {
    let mut instance = linker.instance(name)?;
    let bytes = |state: &mut CallState, len: u64| -> wasmtime::Result<(Vec<u8>,)> {
        if len > RANDOM_BYTES_MAX {
            wasmtime::bail!("a plugin asked for {len} random bytes; at most {RANDOM_BYTES_MAX}");
        }
        Ok(((0..len).map(|_| state.next_random() as u8).collect(),))
    };
    let interface = name.split('@').next().unwrap_or(name);
    match interface {
        "wasi:random/random" => {
            instance.func_wrap("get-random-bytes", move |mut store, (len,): (u64,)| {
                bytes(store.data_mut(), len)
            })?;
            instance.func_wrap("get-random-u64", |mut store, (): ()| {
                Ok((store.data_mut().next_random(),))
            })?;
        }
        "wasi:random/insecure" => {
            instance.func_wrap(
                "get-insecure-random-bytes",
                move |mut store, (len,): (u64,)| bytes(store.data_mut(), len),
            )?;
            instance.func_wrap("get-insecure-random-u64", |mut store, (): ()| {
                Ok((store.data_mut().next_random(),))
            })?;
        }
        "wasi:random/insecure-seed" => {
            instance.func_wrap("insecure-seed", |mut store, (): ()| {
                let state = store.data_mut();
                Ok(((state.next_random(), state.next_random()),))
            })?;
        }
        _ => {}
    }
    Ok(())
}

/// What a transform call returned, checked.
pub(crate) enum TransformReturn {
    Payload(String),
    Drop(String),
}

/// Runs `transform` in a fresh store under the call's limits.
pub(crate) fn call_transform(
    engine: &Engine,
    loaded: &Loaded,
    context: &CallContext,
    event: &types::Event,
) -> Result<TransformReturn, CallError> {
    let Pre::Transform(pre) = &loaded.pre else {
        return Err(CallError::new(
            PluginOutcome::Unavailable,
            "the plugin is not a transform",
        ));
    };
    let mut store = new_store(engine, context)?;
    let result = pre
        .instantiate(&mut store)
        .and_then(|instance| instance.call_transform(&mut store, event));
    match result {
        Ok(Ok(types::Transformed::Payload(payload))) => Ok(TransformReturn::Payload(payload)),
        Ok(Ok(types::Transformed::Drop(reason))) => Ok(TransformReturn::Drop(reason)),
        Ok(Err(message)) => Err(CallError::new(PluginOutcome::Error, message)),
        Err(err) => Err(classify(&err, store.data())),
    }
}

/// Runs `deliver` in a fresh store under the call's limits.
pub(crate) fn call_sink(
    engine: &Engine,
    loaded: &Loaded,
    context: &CallContext,
    event: &types::Event,
) -> Result<Vec<types::Effect>, CallError> {
    let Pre::Sink(pre) = &loaded.pre else {
        return Err(CallError::new(
            PluginOutcome::Unavailable,
            "the plugin is not a sink",
        ));
    };
    let mut store = new_store(engine, context)?;
    let result = pre
        .instantiate(&mut store)
        .and_then(|instance| instance.call_deliver(&mut store, event));
    match result {
        Ok(Ok(effects)) => Ok(effects),
        Ok(Err(message)) => Err(CallError::new(PluginOutcome::Error, message)),
        Err(err) => Err(classify(&err, store.data())),
    }
}

fn new_store(engine: &Engine, context: &CallContext) -> Result<Store<CallState>, CallError> {
    let mut store = Store::new(engine, CallState::new(context));
    store.limiter(|state| &mut state.limiter);
    store
        .set_fuel(context.limits.fuel)
        .map_err(|err| CallError::new(PluginOutcome::Trap, short(&err)))?;
    let ticks = context
        .limits
        .timeout
        .as_micros()
        .div_ceil(EPOCH_TICK.as_micros()) as u64;
    // One tick more: the tick in progress when the call starts may end at once.
    store.set_epoch_deadline(ticks + 1);
    store.epoch_deadline_trap();
    Ok(store)
}

/// Which limit ended a call that did not return.
fn classify(err: &wasmtime::Error, state: &CallState) -> CallError {
    let limits = &state.limiter;
    if limits.hit {
        return CallError::new(
            PluginOutcome::OutOfMemory,
            format!(
                "the plugin ran out of memory: it may use {} bytes (memory_bytes_max)",
                limits.bytes_max
            ),
        );
    }
    match err.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => CallError::new(
            PluginOutcome::OutOfFuel,
            "the plugin ran out of fuel (the fuel limit of one call)",
        ),
        Some(Trap::Interrupt) => CallError::new(
            PluginOutcome::Timeout,
            "the plugin ran past its time limit (timeout)",
        ),
        Some(trap) => CallError::new(PluginOutcome::Trap, format!("the plugin trapped: {trap}")),
        None => CallError::new(
            PluginOutcome::Trap,
            format!("the plugin failed: {}", short(err)),
        ),
    }
}

/// A wasmtime error on one line, with its causes, cut to a readable length.
fn short(err: &wasmtime::Error) -> String {
    let mut text = format!("{err:#}").replace('\n', " ");
    if text.len() > ERROR_BYTES_MAX {
        let mut end = ERROR_BYTES_MAX;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str("...");
    }
    text
}
