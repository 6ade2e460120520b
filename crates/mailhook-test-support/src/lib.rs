//! Dev-only helpers for mailhook's tests: gateways on 127.0.0.1 (in-process or the real
//! binary), an API client, scriptable receivers (HTTP or HTTPS), a throwaway test PKI, and
//! throwaway PostgreSQL databases (`MAILHOOK_TEST_STORE=postgres` runs every gateway of the
//! end-to-end suite on one), and a headless Chromium for the console (`browser.rs`).

pub mod browser;
pub mod client;
pub mod gateway;
pub mod pki;
pub mod plugins;
pub mod receiver;
pub mod test_db;

pub use browser::Browser;
pub use client::{Answer, ApiClient};
pub use gateway::{
    ADMIN_TOKEN, GatewayProcess, INTAKE_TOKEN, STORE_ENV, StaticResolver, TestGateway, test_config,
    test_store_is_postgres,
};
pub use pki::TestPki;
pub use receiver::{Receiver, Recorded, Reply};
pub use test_db::TestDatabase;
