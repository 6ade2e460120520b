//! The PostgreSQL schema: versioned migrations, applied in one transaction under an advisory
//! lock so that several nodes starting at once migrate exactly once.

use tokio_postgres::Client;

use crate::{Error, Result};

/// Key of the advisory lock migrations hold ("mailhook" in ASCII, then 0 for migrate).
/// Advisory locks are scoped to the database, so two mailhook databases on one server do not
/// contend.
pub(super) const MIGRATE_LOCK: i64 = 0x6d61_696c_686f_6f00;
/// Key of the advisory lock the pruning node holds for one batch.
pub(super) const PRUNE_LOCK: i64 = 0x6d61_696c_686f_6f01;

/// Migrations in order; `mailhook_migrations` records those applied. Append, never edit: a
/// database in the field has run the old text.
///
/// The columns mirror the SQLite schema (same names, same meaning). Differences: native
/// `BOOLEAN`, `BYTEA` and `TEXT[]` types; `leased_by` names the node holding a lease (the
/// SQLite store has one node, so a flag is enough there); and partial indexes per claim lane.
const MIGRATIONS: &[&str] = &[r"
CREATE TABLE events (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account TEXT NOT NULL,
    event_id TEXT NOT NULL,
    msg_id TEXT NOT NULL,
    type TEXT NOT NULL,
    timestamp_ms BIGINT NOT NULL,
    accepted_at_ms BIGINT NOT NULL,
    test BOOLEAN NOT NULL,
    body BYTEA NOT NULL,
    state TEXT NOT NULL,
    detail TEXT,
    delivered_to TEXT,
    due_at_ms BIGINT,
    lease_token BIGINT NOT NULL DEFAULT 0,
    leased_by TEXT,
    addr_index INTEGER NOT NULL DEFAULT 0,
    addr_tries INTEGER NOT NULL DEFAULT 0,
    round INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    settled_at_ms BIGINT,
    UNIQUE (account, event_id)
);
CREATE INDEX events_by_message ON events (account, msg_id);
CREATE INDEX events_due_first ON events (due_at_ms, id)
    WHERE due_at_ms IS NOT NULL AND attempts = 0;
CREATE INDEX events_due_retry ON events (due_at_ms, id)
    WHERE due_at_ms IS NOT NULL AND attempts > 0;
CREATE INDEX events_failures ON events (account, id) WHERE state IN ('failed', 'dead');
CREATE INDEX events_settled ON events (settled_at_ms) WHERE settled_at_ms IS NOT NULL;
CREATE INDEX events_leased_by ON events (leased_by) WHERE leased_by IS NOT NULL;

CREATE TABLE attempts (
    event BIGINT NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    number INTEGER NOT NULL,
    role TEXT NOT NULL,
    url TEXT NOT NULL,
    status INTEGER,
    error TEXT,
    duration_ms BIGINT NOT NULL,
    at_ms BIGINT NOT NULL,
    PRIMARY KEY (event, number)
);

CREATE TABLE settings (
    account TEXT PRIMARY KEY,
    enabled BOOLEAN NOT NULL,
    addresses TEXT[] NOT NULL,
    events TEXT[] NOT NULL,
    secret TEXT NOT NULL,
    previous_secret TEXT,
    previous_until_ms BIGINT,
    updated_at_ms BIGINT NOT NULL
);
"];

/// Applies the migrations this database has not seen, in one transaction. The transaction
/// first takes an advisory lock, so a second node starting at the same moment waits, then
/// finds everything applied. Returns the schema version.
pub(super) async fn migrate(client: &mut Client) -> Result<usize> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATE_LOCK])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS mailhook_migrations (
             version INTEGER PRIMARY KEY,
             applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
         )",
    )
    .await?;
    let row = tx
        .query_one(
            "SELECT COALESCE(MAX(version), 0) FROM mailhook_migrations",
            &[],
        )
        .await?;
    let version: i32 = row.try_get(0)?;
    let applied = usize::try_from(version)
        .map_err(|_| Error::Corrupt(format!("mailhook_migrations holds version {version}")))?;
    if applied > MIGRATIONS.len() {
        return Err(Error::Unavailable(format!(
            "schema version {applied} is newer than this mailhook knows ({}); run a newer mailhook",
            MIGRATIONS.len()
        )));
    }
    if applied == MIGRATIONS.len() {
        return Ok(applied);
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
        tx.batch_execute(sql).await?;
        let version = i32::try_from(index + 1).unwrap_or(i32::MAX);
        tx.execute(
            "INSERT INTO mailhook_migrations (version) VALUES ($1)",
            &[&version],
        )
        .await?;
    }
    tx.commit().await?;
    tracing::info!(
        from = applied,
        to = MIGRATIONS.len(),
        "migrated the postgresql schema"
    );
    Ok(MIGRATIONS.len())
}
