//! The queries run on the read-only connections, off the writer thread.

use std::collections::HashMap;

use mailhook_core::AccountId;
use rusqlite::{Connection, params};

use super::rows::{self, ATTEMPT_COLUMNS, EVENT_RECORD_COLUMNS, SETTINGS_COLUMNS};
use crate::{Error, EventRecord, EventState, QueueStats, Result, Stats, StoredSettings};

pub(super) fn ping(conn: &mut Connection) -> Result<()> {
    conn.query_row("SELECT 1", [], |_| Ok(()))?;
    Ok(())
}

/// The queue's depth and its oldest event, each answered from the two lanes' partial indexes,
/// so the cost follows the queue, not the table. (`WHERE due_at_ms IS NOT NULL` alone matches
/// neither partial index: every `/metrics` scrape read the whole table, bodies included.)
/// Ids grow in acceptance order, so the smallest queued id is the oldest queued event.
pub(super) const QUEUE_STATS: &str = "SELECT
     (SELECT COUNT(*) FROM events INDEXED BY events_due_first
          WHERE due_at_ms IS NOT NULL AND attempts = 0)
     + (SELECT COUNT(*) FROM events INDEXED BY events_due_retry
          WHERE due_at_ms IS NOT NULL AND attempts > 0),
     (SELECT MIN(accepted_at_ms) FROM events WHERE id IN (
          SELECT MIN(id) FROM events INDEXED BY events_due_first
              WHERE due_at_ms IS NOT NULL AND attempts = 0
          UNION ALL
          SELECT MIN(id) FROM events INDEXED BY events_due_retry
              WHERE due_at_ms IS NOT NULL AND attempts > 0))";

/// The first `delivery` event of a MsgId, for the engagement rules. `INDEXED BY` for the same
/// reason as `ops::SEEN_BEFORE`: without it SQLite walked `events_by_state (account, type,
/// ...)`, every delivery of the account, for each open and click taken in
/// (`cargo xtask soak` showed intake's CPU growing with the table).
pub(super) const FIRST_DELIVERY: &str = "SELECT MIN(timestamp_ms) FROM events
     INDEXED BY events_by_message
     WHERE account = ?1 AND msg_id = ?2 AND type = 'delivery'";

pub(super) fn queue_stats(conn: &mut Connection) -> Result<QueueStats> {
    let (depth, oldest): (i64, Option<i64>) =
        conn.query_row(QUEUE_STATS, [], |row| Ok((row.get(0)?, row.get(1)?)))?;
    Ok(QueueStats {
        depth: depth.max(0) as u64,
        oldest_accepted_at_ms: oldest,
    })
}

pub(super) fn delivery_times(
    conn: &mut Connection,
    account: &AccountId,
    msg_ids: &[String],
) -> Result<HashMap<String, i64>> {
    let mut first_delivery = conn.prepare_cached(FIRST_DELIVERY)?;
    let mut times = HashMap::new();
    for msg_id in msg_ids {
        let at: Option<i64> =
            first_delivery.query_row(params![account.as_str(), msg_id], |row| row.get(0))?;
        if let Some(at) = at {
            times.insert(msg_id.clone(), at);
        }
    }
    Ok(times)
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

/// Counts by type, test flag and state, from the counts the writer keeps (`counts.rs`).
pub(super) fn stats(conn: &mut Connection, account: Option<&AccountId>) -> Result<Stats> {
    let sql = match account {
        Some(_) => {
            "SELECT type, test, state, SUM(n) AS n FROM event_counts WHERE account = ?1
             GROUP BY type, test, state"
        }
        None => {
            "SELECT type, test, state, SUM(n) AS n FROM event_counts GROUP BY type, test, state"
        }
    };
    let mut select = conn.prepare_cached(sql)?;
    let mut counted = match account {
        Some(account) => select.query([account.as_str()])?,
        None => select.query([])?,
    };
    let mut stats = Stats::default();
    // Every type is listed, counted or not.
    stats.add(
        mailhook_core::EventType::Send,
        false,
        EventState::Pending,
        0,
    );
    while let Some(row) = counted.next()? {
        let type_text: String = rows::get(row, "type")?;
        let state_text: String = rows::get(row, "state")?;
        let test: bool = rows::get(row, "test")?;
        let count: i64 = rows::get(row, "n")?;
        let event_type = mailhook_core::EventType::parse(&type_text).ok_or_else(|| {
            Error::Corrupt(format!(
                "column `type` holds `{type_text}`, expected an event type"
            ))
        })?;
        let state = EventState::parse(&state_text).ok_or_else(|| {
            Error::Corrupt(format!(
                "column `state` holds `{state_text}`, expected an event state"
            ))
        })?;
        stats.add(event_type, test, state, u64::try_from(count).unwrap_or(0));
    }
    Ok(stats)
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
