//! Dev-only helpers for mailhook's tests: gateways on 127.0.0.1 (in-process or the real
//! binary), an API client, scriptable receivers (HTTP or HTTPS), and a throwaway test PKI.

pub mod client;
pub mod gateway;
pub mod pki;
pub mod receiver;

pub use client::{Answer, ApiClient};
pub use gateway::{
    ADMIN_TOKEN, GatewayProcess, INTAKE_TOKEN, StaticResolver, TestGateway, test_config,
};
pub use pki::TestPki;
pub use receiver::{Receiver, Recorded, Reply};
