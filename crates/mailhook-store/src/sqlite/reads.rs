//! The queries run on the read-only connections, off the writer thread.

use mailhook_core::AccountId;
use rusqlite::{Connection, params};

use super::rows::{self, ATTEMPT_COLUMNS, EVENT_RECORD_COLUMNS, SETTINGS_COLUMNS};
use crate::{EventRecord, Result, StoredSettings};

pub(super) fn ping(conn: &mut Connection) -> Result<()> {
    conn.query_row("SELECT 1", [], |_| Ok(()))?;
    Ok(())
}

pub(super) fn next_due_at(conn: &mut Connection) -> Result<Option<i64>> {
    let due: Option<i64> = conn.query_row(
        "SELECT MIN(due_at_ms) FROM events WHERE due_at_ms IS NOT NULL",
        [],
        |row| row.get(0),
    )?;
    Ok(due)
}

pub(super) fn settings(
    conn: &mut Connection,
    account: &AccountId,
) -> Result<Option<StoredSettings>> {
    let mut select = conn.prepare_cached(&format!(
        "SELECT {SETTINGS_COLUMNS} FROM settings WHERE account = ?1"
    ))?;
    let mut found = select.query([account.as_str()])?;
    found.next()?.map(rows::stored_settings).transpose()
}

pub(super) fn message(
    conn: &mut Connection,
    account: &AccountId,
    msg_id: &str,
) -> Result<Vec<EventRecord>> {
    let sql = format!(
        "SELECT {EVENT_RECORD_COLUMNS} FROM events WHERE account = ?1 AND msg_id = ?2
         ORDER BY timestamp_ms, id"
    );
    records(conn, &sql, params![account.as_str(), msg_id])
}

pub(super) fn event(
    conn: &mut Connection,
    account: &AccountId,
    event_id: &str,
) -> Result<Option<EventRecord>> {
    let sql =
        format!("SELECT {EVENT_RECORD_COLUMNS} FROM events WHERE account = ?1 AND event_id = ?2");
    Ok(records(conn, &sql, params![account.as_str(), event_id])?.pop())
}

pub(super) fn failures(
    conn: &mut Connection,
    account: &AccountId,
    limit: usize,
) -> Result<Vec<EventRecord>> {
    // The state test is written exactly as in the partial index so SQLite uses it.
    let sql = format!(
        "SELECT {EVENT_RECORD_COLUMNS} FROM events
         WHERE account = ?1 AND state IN ('failed', 'dead')
         ORDER BY id DESC LIMIT ?2"
    );
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    records(conn, &sql, params![account.as_str(), limit])
}

/// Events and their attempts, read in one transaction so they agree with each other.
fn records(
    conn: &mut Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<EventRecord>> {
    let tx = conn.transaction()?;
    let mut found = Vec::new();
    {
        let mut select = tx.prepare_cached(sql)?;
        let mut selected = select.query(params)?;
        while let Some(row) = selected.next()? {
            let id: i64 = rows::get(row, "id")?;
            found.push((id, rows::event_record(row)?));
        }
        let mut attempts = tx.prepare_cached(&format!(
            "SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE event = ?1 ORDER BY number"
        ))?;
        for (id, record) in &mut found {
            let mut rows_of_event = attempts.query([*id])?;
            while let Some(row) = rows_of_event.next()? {
                record.attempts.push(rows::attempt_record(row)?);
            }
        }
    }
    // Read-only: ending the transaction either way releases the snapshot.
    tx.finish()?;
    Ok(found.into_iter().map(|(_, record)| record).collect())
}
