//! A fresh PostgreSQL database for the bench's PostgreSQL run, on the local server
//! (`MAILHOOK_BENCH_PG`, default `postgres://postgres@127.0.0.1:5432`), dropped after it.

use anyhow::{Context, Result};
use tokio_postgres::NoTls;

const SERVER_ENV: &str = "MAILHOOK_BENCH_PG";
const SERVER_DEFAULT: &str = "postgres://postgres@127.0.0.1:5432";
const PREFIX: &str = "mailhook_bench_";

pub struct BenchDatabase {
    name: String,
    pub url: String,
}

fn server() -> String {
    std::env::var(SERVER_ENV)
        .unwrap_or_else(|_| SERVER_DEFAULT.to_owned())
        .trim_end_matches('/')
        .to_owned()
}

async fn admin() -> Result<tokio_postgres::Client> {
    let url = format!("{}/postgres", server());
    let (client, connection) = tokio_postgres::connect(&url, NoTls)
        .await
        .with_context(|| format!("cannot reach PostgreSQL at {url} (set {SERVER_ENV})"))?;
    tokio::spawn(connection);
    Ok(client)
}

impl BenchDatabase {
    /// Creates `mailhook_bench_<pid>`, after dropping those of bench runs no longer alive.
    pub async fn create() -> Result<BenchDatabase> {
        let admin = admin().await?;
        for row in admin
            .query(
                "SELECT datname FROM pg_database WHERE starts_with(datname, $1)",
                &[&PREFIX],
            )
            .await?
        {
            let name: String = row.try_get(0)?;
            let alive = name[PREFIX.len()..]
                .parse::<u32>()
                .is_ok_and(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists());
            if !alive {
                admin
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await?;
            }
        }
        let name = format!("{PREFIX}{}", std::process::id());
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .with_context(|| format!("cannot create the bench database {name}"))?;
        Ok(BenchDatabase {
            url: format!("{}/{name}", server()),
            name,
        })
    }

    /// Bytes the database takes on disk (tables, indexes, TOAST).
    pub async fn size_bytes(&self) -> Result<u64> {
        let admin = admin().await?;
        let size: i64 = admin
            .query_one("SELECT pg_database_size($1)", &[&self.name])
            .await?
            .try_get(0)?;
        Ok(u64::try_from(size).unwrap_or(0))
    }

    pub async fn drop_database(self) -> Result<()> {
        let admin = admin().await?;
        admin
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .await?;
        Ok(())
    }
}
