//! Throwaway PostgreSQL databases for tests: each is created fresh on the local server
//! (`mailhook_test_<pid>_<n>`, through the `postgres` maintenance database) and dropped when
//! its handle is dropped, on panic too. Databases left by a test process that was killed are
//! dropped by the next one that starts.
//!
//! The server is `MAILHOOK_TEST_PG` (default `postgres://postgres@127.0.0.1:5432`, trust
//! auth as set up by `.ci/run`). This file is also compiled into `mailhook-store`'s own
//! tests (`#[path]`), so it depends on nothing but tokio and tokio-postgres.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use tokio_postgres::NoTls;

/// Names the server tests create their databases on.
pub const SERVER_ENV: &str = "MAILHOOK_TEST_PG";
const SERVER_DEFAULT: &str = "postgres://postgres@127.0.0.1:5432";
const PREFIX: &str = "mailhook_test_";
/// How long to keep trying to reach the server: one test restarts it on purpose.
const CONNECT_FOR: Duration = Duration::from_secs(60);

static NEXT: AtomicU32 = AtomicU32::new(0);
static SWEPT: AtomicBool = AtomicBool::new(false);

/// The local test server's URL, without a database.
pub fn server_url() -> String {
    std::env::var(SERVER_ENV)
        .unwrap_or_else(|_| SERVER_DEFAULT.to_owned())
        .trim_end_matches('/')
        .to_owned()
}

/// A database that exists while this value lives.
#[derive(Debug)]
pub struct TestDatabase {
    name: String,
    url: String,
}

impl TestDatabase {
    /// Creates a fresh, empty database.
    pub async fn create() -> TestDatabase {
        let admin = admin_client().await;
        if !SWEPT.swap(true, Ordering::SeqCst) {
            sweep_leftovers(&admin).await;
        }
        let name = format!(
            "{PREFIX}{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap_or_else(|err| panic!("cannot create test database {name}: {err}"));
        TestDatabase {
            url: format!("{}/{name}", server_url()),
            name,
        }
    }

    /// `postgres://...` of this database, for `store.url`.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // Drop may run inside a tokio runtime (a test's end, or its unwinding), where a
        // runtime cannot be started or blocked on: do it on a thread of its own.
        let name = self.name.clone();
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async move {
                let admin = admin_client().await;
                // FORCE ends the sessions a gateway still holds (one that was not shut down).
                admin
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await
                    .ok()
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(()))) {
            eprintln!(
                "test database {} was not dropped; the next test run drops it",
                self.name
            );
        }
    }
}

/// A connection to the `postgres` maintenance database, retried while the server restarts.
async fn admin_client() -> tokio_postgres::Client {
    let url = format!("{}/postgres", server_url());
    let deadline = tokio::time::Instant::now() + CONNECT_FOR;
    loop {
        match tokio_postgres::connect(&url, NoTls).await {
            Ok((client, connection)) => {
                tokio::spawn(connection);
                return client;
            }
            Err(err) if tokio::time::Instant::now() < deadline => {
                let _ = err;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(err) => panic!("cannot reach the test PostgreSQL server at {url}: {err}"),
        }
    }
}

/// Drops databases of test processes that no longer run (killed before their Drop ran).
async fn sweep_leftovers(admin: &tokio_postgres::Client) {
    let Ok(rows) = admin
        .query(
            "SELECT datname FROM pg_database WHERE starts_with(datname, $1)",
            &[&PREFIX],
        )
        .await
    else {
        return;
    };
    for row in rows {
        let Ok(name) = row.try_get::<_, String>(0) else {
            continue;
        };
        let pid = name[PREFIX.len()..]
            .split('_')
            .next()
            .and_then(|pid| pid.parse::<u32>().ok());
        let alive = pid.is_some_and(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists());
        if !alive {
            let _ = admin
                .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .await;
        }
    }
}
