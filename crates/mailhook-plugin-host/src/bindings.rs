//! Typed bindings of `plugins/wit/plugin.wit` (`mailhook:plugin@0.1.0`), one per world. The
//! sink world reuses the transform world's types and host interface, so the host implements
//! its imports once.

pub mod transform {
    wasmtime::component::bindgen!({
        path: "../../plugins/wit",
        world: "transform",
    });
}

pub mod sink {
    wasmtime::component::bindgen!({
        path: "../../plugins/wit",
        world: "sink",
        with: {
            "mailhook:plugin/types": super::transform::mailhook::plugin::types,
            "mailhook:plugin/host": super::transform::mailhook::plugin::host,
        },
    });
}

pub use transform::mailhook::plugin::host;
pub use transform::mailhook::plugin::types;
