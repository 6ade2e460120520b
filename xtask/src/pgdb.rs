//! A fresh PostgreSQL database on the local server for one run of a task (bench, chaos,
//! soak), named `mailhook_<purpose>_<pid>` and dropped after it. Databases of earlier runs
//! whose process is gone (killed before they could drop theirs) are dropped first.

use anyhow::{Context, Result};
use tokio_postgres::NoTls;

const SERVER_DEFAULT: &str = "postgres://postgres@127.0.0.1:5432";

pub struct TempDatabase {
    name: String,
    server: String,
    server_env: &'static str,
    pub url: String,
}

/// The server URL from `server_env`, or the local default.
fn server(server_env: &str) -> String {
    std::env::var(server_env)
        .unwrap_or_else(|_| SERVER_DEFAULT.to_owned())
        .trim_end_matches('/')
        .to_owned()
}

async fn admin(server: &str, server_env: &str) -> Result<tokio_postgres::Client> {
    let url = format!("{server}/postgres");
    let (client, connection) = tokio_postgres::connect(&url, NoTls)
        .await
        .with_context(|| format!("cannot reach PostgreSQL at {url} (set {server_env})"))?;
    tokio::spawn(connection);
    Ok(client)
}

impl TempDatabase {
    /// Creates `mailhook_<purpose>_<pid>` on the server `server_env` names.
    pub async fn create(purpose: &str, server_env: &'static str) -> Result<TempDatabase> {
        let server = server(server_env);
        let admin = admin(&server, server_env).await?;
        let prefix = format!("mailhook_{purpose}_");
        for row in admin
            .query(
                "SELECT datname FROM pg_database WHERE starts_with(datname, $1)",
                &[&prefix],
            )
            .await?
        {
            let name: String = row.try_get(0)?;
            let alive = name[prefix.len()..]
                .parse::<u32>()
                .is_ok_and(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists());
            // Our own pid alive but a database of that name left: a pid reused; drop it too.
            if !alive || name == format!("{prefix}{}", std::process::id()) {
                admin
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await?;
            }
        }
        let name = format!("{prefix}{}", std::process::id());
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .with_context(|| format!("cannot create the {purpose} database {name}"))?;
        Ok(TempDatabase {
            url: format!("{server}/{name}"),
            name,
            server,
            server_env,
        })
    }

    /// Bytes the database takes on disk (tables, indexes, TOAST).
    pub async fn size_bytes(&self) -> Result<u64> {
        let admin = admin(&self.server, self.server_env).await?;
        let size: i64 = admin
            .query_one("SELECT pg_database_size($1)", &[&self.name])
            .await?
            .try_get(0)?;
        Ok(u64::try_from(size).unwrap_or(0))
    }

    pub async fn drop_database(self) -> Result<()> {
        admin(&self.server, self.server_env)
            .await?
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .await?;
        Ok(())
    }
}
