//! Reading rows back into the store's types. Nothing read from the file is trusted: a value
//! that does not fit becomes `Error::Corrupt` naming the column and the value, never a panic.

use std::sync::Arc;

use mailhook_core::chain::ChainPos;
use mailhook_core::event::truncate;
use mailhook_core::settings::Role;
use mailhook_core::signature::Secret;
use mailhook_core::time::TIMESTAMP_MS_MAX;
use mailhook_core::{EventType, WebhookSettings, WebhookUrl};
use rusqlite::Row;
use rusqlite::types::{FromSql, ValueRef};

use crate::{AttemptRecord, Error, EventRecord, EventState, Job, Result, StoredSettings};

/// Reads a column, turning a value of the wrong type or range into `Corrupt`.
pub(super) fn get<T: FromSql>(row: &Row<'_>, column: &str) -> Result<T> {
    get_at(row, column, column)
}

/// `get` at `at`, a name or a position; `column` names it in errors. Hot queries whose
/// columns are fixed (`JOB_BY_ID`) read by position: a lookup by name compares it with every
/// column name (`sqlite3_column_name` and `strcmp` were ~1.3% of the gateway's CPU in a bench).
fn get_at<T: FromSql, I: rusqlite::RowIndex + Copy>(
    row: &Row<'_>,
    at: I,
    column: &str,
) -> Result<T> {
    row.get(at).map_err(|err| match err {
        rusqlite::Error::FromSqlConversionFailure(..)
        | rusqlite::Error::InvalidColumnType(..)
        | rusqlite::Error::IntegralValueOutOfRange(..) => {
            let value = row.get_ref(at).map_or_else(|_| "?".to_owned(), describe);
            Error::Corrupt(format!("column `{column}` holds {value}: {err}"))
        }
        other => Error::Sqlite(other),
    })
}

/// A stored value as an error message shows it: short, and never a whole body.
fn describe(value: ValueRef<'_>) -> String {
    match value {
        ValueRef::Null => "NULL".to_owned(),
        ValueRef::Integer(i) => i.to_string(),
        ValueRef::Real(f) => f.to_string(),
        ValueRef::Text(text) => format!("`{}`", truncate(&String::from_utf8_lossy(text), 64)),
        ValueRef::Blob(blob) => format!("a blob of {} bytes", blob.len()),
    }
}

fn corrupt(column: &str, value: &str, expected: &str) -> Error {
    Error::Corrupt(format!(
        "column `{column}` holds `{}`, expected {expected}",
        truncate(value, 64)
    ))
}

fn event_type(row: &Row<'_>) -> Result<EventType> {
    let text: String = get(row, "type")?;
    EventType::parse(&text).ok_or_else(|| corrupt("type", &text, "an event type"))
}

fn state(row: &Row<'_>) -> Result<EventState> {
    let text: String = get(row, "state")?;
    EventState::parse(&text).ok_or_else(|| corrupt("state", &text, "an event state"))
}

fn role(column: &str, text: &str) -> Result<Role> {
    Role::parse(text).ok_or_else(|| corrupt(column, text, "primary, backup-1 or backup-2"))
}

fn timestamp(row: &Row<'_>, column: &str) -> Result<i64> {
    let ms: i64 = get(row, column)?;
    if (0..=TIMESTAMP_MS_MAX).contains(&ms) {
        Ok(ms)
    } else {
        Err(corrupt(
            column,
            &ms.to_string(),
            "Unix milliseconds between 1970 and 9999",
        ))
    }
}

/// One event by id, with the columns `job` reads, in its order.
pub(super) const JOB_BY_ID: &str = "SELECT id, account, event_id, msg_id, type, test, body, \
     addr_index, addr_tries, round, attempts, accepted_at_ms, state FROM events WHERE id = ?1";

/// The state of a claimed event, from a row of `JOB_BY_ID`.
pub(super) fn job_state(row: &Row<'_>) -> Result<EventState> {
    state_at(row, 12)
}

/// The text in column `at` (named `column` in errors), borrowed from the row.
pub(super) fn text_at<'r>(row: &'r Row<'_>, at: usize, column: &str) -> Result<&'r str> {
    let value = row.get_ref(at)?;
    value.as_str().map_err(|_| {
        Error::Corrupt(format!(
            "column `{column}` holds {}, expected text",
            describe(value)
        ))
    })
}

/// The event type in column `at`, read without a copy.
pub(super) fn event_type_at(row: &Row<'_>, at: usize) -> Result<EventType> {
    let text = text_at(row, at, "type")?;
    EventType::parse(text).ok_or_else(|| corrupt("type", text, "an event type"))
}

/// The event state in column `at`, read without a copy.
pub(super) fn state_at(row: &Row<'_>, at: usize) -> Result<EventState> {
    let text = text_at(row, at, "state")?;
    EventState::parse(text).ok_or_else(|| corrupt("state", text, "an event state"))
}

/// The event claimed with `lease_token`, from a row of `JOB_BY_ID`.
pub(super) fn job(row: &Row<'_>, lease_token: i64) -> Result<Job> {
    let text = |index: usize, column: &str| get_at::<String, _>(row, index, column);
    let event_type: String = text(4, "type")?;
    let body = match row.get_ref(6)? {
        ValueRef::Blob(body) => Arc::from(body),
        other => {
            return Err(Error::Corrupt(format!(
                "column `body` holds {}, expected a blob",
                describe(other)
            )));
        }
    };
    Ok(Job {
        id: get_at(row, 0, "id")?,
        account: text(1, "account")?,
        event_id: text(2, "event_id")?,
        msg_id: text(3, "msg_id")?,
        event_type: EventType::parse(&event_type)
            .ok_or_else(|| corrupt("type", &event_type, "an event type"))?,
        test: get_at(row, 5, "test")?,
        body,
        pos: ChainPos {
            address: get_at(row, 7, "addr_index")?,
            tries: get_at(row, 8, "addr_tries")?,
            round: get_at(row, 9, "round")?,
        },
        attempts: get_at(row, 10, "attempts")?,
        accepted_at_ms: get_at(row, 11, "accepted_at_ms")?,
        lease_token,
    })
}

/// The columns `event_record` reads, plus `id` to find its attempts.
pub(super) const EVENT_RECORD_COLUMNS: &str = "id, event_id, account, msg_id, type, \
     timestamp_ms, accepted_at_ms, test, state, detail, delivered_to, due_at_ms, round";

/// An event as the admin API shows it, without its attempts (the caller adds them).
pub(super) fn event_record(row: &Row<'_>) -> Result<EventRecord> {
    let delivered_to: Option<String> = get(row, "delivered_to")?;
    Ok(EventRecord {
        event_id: get(row, "event_id")?,
        account: get(row, "account")?,
        msg_id: get(row, "msg_id")?,
        event_type: event_type(row)?,
        timestamp_ms: timestamp(row, "timestamp_ms")?,
        accepted_at_ms: get(row, "accepted_at_ms")?,
        test: get(row, "test")?,
        state: state(row)?,
        detail: get(row, "detail")?,
        delivered_to: delivered_to
            .map(|text| role("delivered_to", &text))
            .transpose()?,
        due_at_ms: get(row, "due_at_ms")?,
        round: get(row, "round")?,
        attempts: Vec::new(),
    })
}

/// The columns `attempt_record` reads.
pub(super) const ATTEMPT_COLUMNS: &str = "number, role, url, status, error, duration_ms, at_ms";

pub(super) fn attempt_record(row: &Row<'_>) -> Result<AttemptRecord> {
    let role_text: String = get(row, "role")?;
    Ok(AttemptRecord {
        number: get(row, "number")?,
        role: role("role", &role_text)?,
        url: get(row, "url")?,
        status: get(row, "status")?,
        error: get(row, "error")?,
        duration_ms: get(row, "duration_ms")?,
        at_ms: get(row, "at_ms")?,
    })
}

/// The columns `stored_settings` reads.
pub(super) const SETTINGS_COLUMNS: &str =
    "enabled, addresses, events, secret, previous_secret, previous_until_ms, updated_at_ms";

pub(super) fn stored_settings(row: &Row<'_>) -> Result<StoredSettings> {
    let addresses = json_list(row, "addresses")?
        .iter()
        .map(|text| {
            WebhookUrl::parse(text).map_err(|err| {
                Error::Corrupt(format!(
                    "column `addresses` holds `{}`: {err}",
                    truncate(text, 64)
                ))
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let events = json_list(row, "events")?
        .iter()
        .map(|text| EventType::parse(text).ok_or_else(|| corrupt("events", text, "an event type")))
        .collect::<Result<Vec<_>>>()?;
    let previous_secret: Option<String> = get(row, "previous_secret")?;
    let previous_until_ms: Option<i64> = get(row, "previous_until_ms")?;
    let previous_secret = match (previous_secret, previous_until_ms) {
        (Some(text), Some(until_ms)) => Some((secret("previous_secret", &text)?, until_ms)),
        (None, None) => None,
        (Some(_), None) => {
            return Err(Error::Corrupt(
                "column `previous_until_ms` is NULL while `previous_secret` is set".to_owned(),
            ));
        }
        (None, Some(until_ms)) => {
            return Err(Error::Corrupt(format!(
                "column `previous_until_ms` holds {until_ms} while `previous_secret` is NULL"
            )));
        }
    };
    let secret_text: String = get(row, "secret")?;
    Ok(StoredSettings {
        settings: WebhookSettings {
            enabled: get(row, "enabled")?,
            addresses,
            events,
        },
        secret: secret("secret", &secret_text)?,
        previous_secret,
        updated_at_ms: get(row, "updated_at_ms")?,
    })
}

/// Parses a stored secret. The message never quotes the value: secrets stay out of logs.
fn secret(column: &str, text: &str) -> Result<Secret> {
    Secret::parse(text)
        .map_err(|err| Error::Corrupt(format!("column `{column}` holds an invalid secret: {err}")))
}

fn json_list(row: &Row<'_>, column: &str) -> Result<Vec<String>> {
    let text: String = get(row, column)?;
    serde_json::from_str(&text)
        .map_err(|err| corrupt(column, &text, &format!("a JSON array of strings ({err})")))
}
