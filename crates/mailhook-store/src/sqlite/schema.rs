//! Opening connections: PRAGMAs, the versioned migrations, and the crash recovery of leases.

use std::path::Path;
use std::time::Duration;

use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags, TransactionBehavior};

use crate::{Error, Result};

/// How long a statement waits for a lock before failing with `Unavailable`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Prepared statements kept per connection: more than the writer's and a reader's distinct
/// statements, so none is compiled again for lack of room.
const STATEMENT_CACHE_CAPACITY: usize = 64;

/// Migrations in order; `PRAGMA user_version` counts those applied. Append, never edit: a
/// database in the field has run the old text.
///
/// Tables are STRICT so a value of the wrong type is refused on write rather than found on
/// read.
pub(super) const MIGRATIONS: &[&str] = &[
    r"
CREATE TABLE events (
    id INTEGER PRIMARY KEY,
    account TEXT NOT NULL,
    event_id TEXT NOT NULL,
    msg_id TEXT NOT NULL,
    type TEXT NOT NULL,
    timestamp_ms INTEGER NOT NULL,
    accepted_at_ms INTEGER NOT NULL,
    test INTEGER NOT NULL,
    body BLOB NOT NULL,
    state TEXT NOT NULL,
    detail TEXT,
    delivered_to TEXT,
    due_at_ms INTEGER,
    leased INTEGER NOT NULL DEFAULT 0,
    addr_index INTEGER NOT NULL DEFAULT 0,
    addr_tries INTEGER NOT NULL DEFAULT 0,
    round INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    UNIQUE (account, event_id)
) STRICT;
CREATE INDEX events_by_message ON events (account, msg_id);
CREATE INDEX events_due ON events (due_at_ms) WHERE due_at_ms IS NOT NULL;
CREATE INDEX events_failures ON events (account, id) WHERE state IN ('failed', 'dead');

CREATE TABLE attempts (
    event INTEGER NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    number INTEGER NOT NULL,
    role TEXT NOT NULL,
    url TEXT NOT NULL,
    status INTEGER,
    error TEXT,
    duration_ms INTEGER NOT NULL,
    at_ms INTEGER NOT NULL,
    PRIMARY KEY (event, number)
) WITHOUT ROWID, STRICT;

CREATE TABLE settings (
    account TEXT PRIMARY KEY,
    enabled INTEGER NOT NULL,
    addresses TEXT NOT NULL,
    events TEXT NOT NULL,
    secret TEXT NOT NULL,
    previous_secret TEXT,
    previous_until_ms INTEGER,
    updated_at_ms INTEGER NOT NULL
) STRICT;
",
    // 2: lease tokens (a late completion from an expired claim is ignored), the time an
    // event came to rest (retention prunes by it), and one due index per claim lane.
    r"
ALTER TABLE events ADD COLUMN lease_token INTEGER NOT NULL DEFAULT 0;
ALTER TABLE events ADD COLUMN settled_at_ms INTEGER;
UPDATE events SET settled_at_ms = accepted_at_ms WHERE state IN ('delivered', 'skipped');
DROP INDEX events_due;
CREATE INDEX events_due_first ON events (due_at_ms, id)
    WHERE due_at_ms IS NOT NULL AND attempts = 0;
CREATE INDEX events_due_retry ON events (due_at_ms, id)
    WHERE due_at_ms IS NOT NULL AND attempts > 0;
CREATE INDEX events_settled ON events (settled_at_ms) WHERE settled_at_ms IS NOT NULL;
",
    // 3: the console's overview counts events by type and state (`Store::stats`); this
    // covering index makes that an index-only scan instead of a read of every stored body.
    r"
CREATE INDEX events_by_state ON events (account, type, test, state);
",
    // 4: the counts by state move from that index to a table of counts the writer keeps
    // (`counts.rs`): the index cost a B-tree delete and insert on every completion.
    r"
CREATE TABLE event_counts (
    account TEXT NOT NULL,
    type TEXT NOT NULL,
    test INTEGER NOT NULL,
    state TEXT NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (account, type, test, state)
) WITHOUT ROWID, STRICT;
INSERT INTO event_counts (account, type, test, state, n)
    SELECT account, type, test, state, COUNT(*) FROM events GROUP BY account, type, test, state;
DROP INDEX events_by_state;
",
];

/// Opens the writer connection: WAL, migrations applied, and leases a crash
/// left behind ended.
pub(super) fn open_writer(path: &Path, cache_bytes_max: usize) -> Result<Connection> {
    let mut conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    plan_once(&conn)?;
    // The first statement that reads the file: a file that is not a database fails here
    // with SQLITE_NOTADB, which `classify` turns into `Corrupt`.
    let mode: String =
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(Error::Unavailable(format!(
            "cannot switch to WAL journal mode (got `{mode}`); is the file on a network file system?"
        )));
    }
    // Off: the single writer keeps attempts with their events itself (a completion writes
    // attempts only for the event it just updated; a prune deletes both). Enforcement cost a
    // parent lookup per attempt row: A/B, 100k end to end, 3.27/3.19 -> 3.18/3.06 CPU-s/100k.
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    // A negative cache_size is in KiB; at least SQLite's own minimum of a few pages.
    let cache_kib = i64::try_from(cache_bytes_max / 1024)
        .unwrap_or(i64::MAX)
        .max(64);
    conn.pragma_update(None, "cache_size", -cache_kib)?;
    // FULL until the writer picks per transaction: migrations must reach the disk.
    conn.pragma_update(None, "synchronous", "FULL")?;
    migrate(&mut conn)?;
    recover_leases(&conn)?;
    Ok(conn)
}

/// Opens a read-only connection. WAL lets it read while the writer writes.
pub(super) fn open_reader(path: &Path) -> Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_URI;
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    plan_once(&conn)?;
    Ok(conn)
}

/// Cached statements are planned once and kept, whatever values are bound.
///
/// Why: the bundled SQLite is built with STAT4, and without the query planner stability
/// guarantee (QPSG) a statement whose plan looked at a bound value (the claim's `LIMIT ?`,
/// its `due_at_ms <= ?`) is marked expired whenever that value changes, so nearly every claim
/// was compiled again: `sqlite3Reprepare` was ~4% of the gateway's CPU in an end-to-end
/// bench (perf). Every hot query matches a partial index by its predicate or names its index,
/// so its plan does not depend on the values. The statement cache holds every statement the
/// writer uses (rusqlite's default keeps 16).
fn plan_once(conn: &Connection) -> Result<()> {
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE_CAPACITY);
    Ok(())
}

/// Applies the migrations this database has not seen, all in one transaction.
fn migrate(conn: &mut Connection) -> Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let version: i64 = tx.pragma_query_value(None, "user_version", |row| row.get(0))?;
    let applied = usize::try_from(version)
        .map_err(|_| Error::Corrupt(format!("schema version (user_version) is {version}")))?;
    if applied > MIGRATIONS.len() {
        return Err(Error::Unavailable(format!(
            "schema version {applied} is newer than this mailhook knows ({}); run a newer mailhook",
            MIGRATIONS.len()
        )));
    }
    if applied == MIGRATIONS.len() {
        return Ok(());
    }
    for sql in &MIGRATIONS[applied..] {
        tx.execute_batch(sql)?;
    }
    tx.pragma_update(None, "user_version", MIGRATIONS.len())?;
    tx.commit()?;
    tracing::info!(
        from = applied,
        to = MIGRATIONS.len(),
        "migrated the sqlite schema"
    );
    Ok(())
}

/// Events still leased at open were claimed by a run that crashed: the data directory is
/// ours alone, so nobody is working on them. They are due at once, not after the lease.
/// (Only versions before the in-memory leases of `leases.rs` wrote `leased` and
/// `lease_token`; the columns stay for this and for older files.)
fn recover_leases(conn: &Connection) -> Result<()> {
    let recovered = conn.execute(
        "UPDATE events SET leased = 0, due_at_ms = 0 WHERE leased = 1",
        [],
    )?;
    if recovered > 0 {
        tracing::info!(
            events = recovered,
            "events claimed before a restart are due again"
        );
    }
    Ok(())
}
