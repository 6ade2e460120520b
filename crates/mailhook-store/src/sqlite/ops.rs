//! The write operations the writer thread runs, each inside a (shared) transaction.

use std::sync::Arc;

use mailhook_core::signature::Secret;
use mailhook_core::{AccountId, WebhookSettings};
use rusqlite::{Connection, OptionalExtension, params};

use super::counts::Counts;
use super::leases::{Accounts, Counted, Leases};
use super::{now_ms, rows};
use crate::{Completion, EventState, InsertOutcome, Job, Lease, NewEvent, Result, StoredSettings};

/// One kind of write. `apply` runs inside a transaction the writer may share with other
/// requests, so it must not begin or commit one itself.
pub(super) trait Op: Send + 'static {
    type Output: Send + 'static;
    /// Whether the caller was promised durability: its transaction commits with
    /// `synchronous=FULL`.
    const DURABLE: bool;
    /// Whether it changes the database; a group of non-writes needs no transaction.
    const WRITES: bool = true;

    /// Rows touched, counted against `events_per_commit_max`.
    fn weight(&self) -> usize {
        1
    }

    /// `memory` is what the writer keeps next to the database: held claims (`leases.rs`)
    /// and the changes to event counts (`counts.rs`) of the transaction.
    fn apply(&self, conn: &Connection, memory: &mut Memory) -> Result<Self::Output>;
}

/// What the writer thread keeps in memory next to the database.
#[derive(Debug, Default)]
pub(super) struct Memory {
    pub leases: Leases,
    pub counts: Counts,
    /// Ids of the accounts named in `leases`.
    pub accounts: Accounts,
}

/// Whether an event of this (account, MsgId, type) is stored already: the exact "first open
/// (or click)" of intake. `INDEXED BY` because, without statistics, SQLite's planner prefers
/// `events_by_state (account, type, ...)`, which walks every event of the account and type
/// (one intake of opens got slower with every event stored; `cargo xtask soak` showed it);
/// `events_by_message` finds the few events of one MsgId.
pub(super) const SEEN_BEFORE: &str =
    "SELECT EXISTS (SELECT 1 FROM events INDEXED BY events_by_message
     WHERE account = ?1 AND msg_id = ?2 AND type = ?3)";

impl Memory {
    /// Counts an event counted as `from` in state `to` instead.
    fn count_moved(&mut self, from: Counted, to: EventState) {
        self.counts.moved(
            self.accounts.name(from.account),
            from.event_type,
            from.test,
            from.state,
            to,
        );
    }
}

/// What event `id` is counted as, or `None` when it is not stored or its row cannot be read
/// (its count is then left alone: a row SQLite cannot read was counted as what it was).
fn counted_as(conn: &Connection, accounts: &mut Accounts, id: i64) -> Option<Counted> {
    let mut select = conn
        .prepare_cached("SELECT account, type, test, state FROM events WHERE id = ?1")
        .ok()?;
    let (account, event_type, test, state) = select
        .query_row([id], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, bool>(2)?,
                row.get::<_, String>(3)?,
            ))
        })
        .ok()?;
    Some(Counted {
        account: accounts.id(&account),
        event_type: mailhook_core::EventType::parse(&event_type)?,
        test,
        state: EventState::parse(&state)?,
    })
}

pub(super) struct Insert {
    pub events: Vec<NewEvent>,
}

impl Op for Insert {
    type Output = InsertOutcome;
    const DURABLE: bool = true;

    fn weight(&self) -> usize {
        self.events.len()
    }

    fn apply(&self, conn: &Connection, memory: &mut Memory) -> Result<InsertOutcome> {
        insert(conn, &self.events, &mut memory.counts)
    }
}

/// Stores `events`, each new one due at once.
fn insert(conn: &Connection, events: &[NewEvent], counts: &mut Counts) -> Result<InsertOutcome> {
    // Conflicts count as duplicates; that covers an event stored earlier, one repeated
    // in this batch, and one inserted by another request of the same group.
    let mut insert = conn.prepare_cached(
        "INSERT INTO events (account, event_id, msg_id, type, timestamp_ms, accepted_at_ms,
             test, body, state, due_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'pending', ?6)
         ON CONFLICT (account, event_id) DO NOTHING",
    )?;
    // The single writer makes "no earlier open of this MsgId" exact: nothing else writes
    // between this look and the insert.
    let mut seen_before = conn.prepare_cached(SEEN_BEFORE)?;
    let accepted_at_ms = now_ms();
    let mut outcome = InsertOutcome::with_capacity(events.len());
    for NewEvent { event, body } in events {
        let mut unique = false;
        let mut unique_body = None;
        if event.is_engagement() && !event.test {
            let key = params![
                event.account.as_str(),
                event.msg_id.as_str(),
                event.event_type.as_str()
            ];
            unique = !seen_before.query_row(key, |row| row.get::<_, bool>(0))?;
            if unique {
                // Only the first open/click of a MsgId is rendered again; every other
                // event keeps the bytes intake rendered.
                let mut first = event.clone();
                if let Some(engagement) = first.engagement.as_mut() {
                    engagement.unique = true;
                }
                unique_body = Some(first.render_payload());
            }
        }
        let inserted = insert.execute(params![
            event.account.as_str(),
            event.event_id.as_str(),
            event.msg_id.as_str(),
            event.event_type.as_str(),
            event.timestamp_ms,
            accepted_at_ms,
            event.test,
            unique_body.as_ref().unwrap_or(body),
        ])?;
        if inserted == 1 {
            counts.add(
                event.account.as_str(),
                event.event_type,
                event.test,
                EventState::Pending,
                1,
            );
        }
        outcome.record(event.event_id.as_str(), inserted == 1, unique);
    }
    Ok(outcome)
}

pub(super) struct Claim {
    pub now_ms: i64,
    pub limit: usize,
    pub lease_ms: i64,
    /// The retry lane's share of `limit` (`lanes::retry_share`).
    pub retry_share: usize,
}

/// The two claim lanes. Each one's predicate matches its partial index exactly, so SQLite
/// walks that index, `(due_at_ms, id)`, in due order; the first-attempt lane without reading
/// a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Lane {
    /// Events never attempted.
    First,
    /// Retries after a backoff, recovery rounds, replays.
    Retry,
}

/// A lane's events in due order: `$columns` of those with `$lane` attempts `$due`.
/// The predicate must stay the one of the lane's partial index (`schema.rs`).
macro_rules! lane_sql {
    ($columns:literal, $lane:literal, $due:literal) => {
        concat!(
            "SELECT ",
            $columns,
            " FROM events WHERE due_at_ms IS NOT NULL AND attempts ",
            $lane,
            $due,
            " ORDER BY due_at_ms, id"
        )
    };
}

impl Lane {
    /// The lane's events due by `?1`, oldest due first.
    pub(super) fn due_sql(self) -> &'static str {
        match self {
            Lane::First => lane_sql!("id", "= 0", " AND due_at_ms <= ?1"),
            Lane::Retry => lane_sql!("id", "> 0", " AND due_at_ms <= ?1"),
        }
    }

    /// Every event of the lane with its due time, oldest due first.
    pub(super) fn queue_sql(self) -> &'static str {
        match self {
            Lane::First => lane_sql!("id, due_at_ms", "= 0", ""),
            Lane::Retry => lane_sql!("id, due_at_ms", "> 0", ""),
        }
    }
}

impl Claim {
    /// Claims up to `limit` due events of one lane, oldest due first, skipping those held.
    fn lane(
        &self,
        conn: &Connection,
        memory: &mut Memory,
        lane: Lane,
        limit: usize,
        jobs: &mut Vec<Job>,
        unreadable: &mut Vec<(i64, crate::Error)>,
    ) -> Result<()> {
        if limit == 0 {
            return Ok(());
        }
        let lease_until_ms = self.now_ms.saturating_add(self.lease_ms.max(0));
        let mut due = conn.prepare_cached(lane.due_sql())?;
        let mut one = conn.prepare_cached(rows::JOB_BY_ID)?;
        let mut due = due.query(params![self.now_ms])?;
        let mut taken = 0;
        // Held events sit at the head of the index (they were the oldest due when claimed):
        // at most `leases.len()` entries are skipped.
        let Memory {
            leases, accounts, ..
        } = memory;
        while taken < limit {
            let Some(row) = due.next()? else { break };
            let id: i64 = row.get(0)?;
            if leases.is_held(id, self.now_ms) {
                continue;
            }
            taken += 1;
            let mut found = one.query(params![id])?;
            let Some(row) = found.next()? else { continue };
            // What it is counted as: its completion moves the count from there.
            let claimed = rows::job(row, 0).and_then(|mut job| {
                let claimed = Counted {
                    account: accounts.id(&job.account),
                    event_type: job.event_type,
                    test: job.test,
                    state: rows::job_state(row)?,
                };
                job.lease_token = leases.grant(id, lease_until_ms, claimed);
                Ok(job)
            });
            match claimed {
                Ok(job) => jobs.push(job),
                Err(err) => {
                    leases.revoke(id);
                    unreadable.push((id, err));
                }
            }
        }
        Ok(())
    }
}

impl Op for Claim {
    type Output = Vec<Job>;
    const DURABLE: bool = false;

    fn apply(&self, conn: &Connection, memory: &mut Memory) -> Result<Vec<Job>> {
        let mut jobs = Vec::new();
        let mut unreadable = Vec::new();
        let retry_share = self.retry_share.min(self.limit);
        // Each lane gets its share when it has that much due, and what one leaves goes to
        // the other. Retries first: their lane is short, and the first-attempt lane (a
        // backlog's, under load) is then walked once per claim.
        self.lane(
            conn,
            memory,
            Lane::Retry,
            retry_share,
            &mut jobs,
            &mut unreadable,
        )?;
        let claimed = jobs.len() + unreadable.len();
        self.lane(
            conn,
            memory,
            Lane::First,
            self.limit - claimed,
            &mut jobs,
            &mut unreadable,
        )?;
        let claimed = jobs.len() + unreadable.len();
        if claimed < self.limit {
            self.lane(
                conn,
                memory,
                Lane::Retry,
                self.limit - claimed,
                &mut jobs,
                &mut unreadable,
            )?;
        }
        // A row that cannot be read would fail every claim and stall all delivery; park it
        // as dead with the reason instead, where the failures list shows it.
        for (id, err) in unreadable {
            tracing::error!(id, error = %err, "parking an event whose row cannot be read");
            let counted = counted_as(conn, &mut memory.accounts, id);
            conn.execute(
                "UPDATE events SET state = 'dead', detail = ?2, due_at_ms = NULL WHERE id = ?1",
                params![id, err.to_string()],
            )?;
            if let Some(counted) = counted {
                memory.count_moved(counted, EventState::Dead);
            }
        }
        // The set is the oldest due of each lane; insertion order within it keeps the events
        // of one email in the order they came.
        jobs.sort_unstable_by_key(|job| job.id);
        Ok(jobs)
    }
}

/// When the dispatcher should look again: the earliest due time of an event not held, or
/// the earliest end of a held lease.
pub(super) struct NextDueAt {
    pub now_ms: i64,
}

impl Op for NextDueAt {
    type Output = Option<i64>;
    const DURABLE: bool = false;
    const WRITES: bool = false;

    fn apply(&self, conn: &Connection, memory: &mut Memory) -> Result<Option<i64>> {
        let leases = &memory.leases;
        let mut next = leases.first_end_ms();
        for lane in [Lane::First, Lane::Retry] {
            let mut queue = conn.prepare_cached(lane.queue_sql())?;
            let mut queue = queue.query([])?;
            while let Some(row) = queue.next()? {
                if !leases.is_held(row.get(0)?, self.now_ms) {
                    let due: i64 = row.get(1)?;
                    next = Some(next.map_or(due, |n| n.min(due)));
                    break;
                }
            }
        }
        Ok(next)
    }
}

pub(super) struct Complete {
    pub completions: Arc<[Completion]>,
}

impl Op for Complete {
    type Output = ();
    const DURABLE: bool = false;

    fn weight(&self) -> usize {
        self.completions.len()
    }

    fn apply(&self, conn: &Connection, memory: &mut Memory) -> Result<()> {
        let mut update = conn.prepare_cached(
            "UPDATE events SET state = ?2, detail = ?3, delivered_to = ?4, due_at_ms = ?5,
                 addr_index = ?6, addr_tries = ?7, round = ?8, attempts = attempts + ?9,
                 settled_at_ms = ?10
             WHERE id = ?1",
        )?;
        // A held claim has one report; should a second of the same number come (a store
        // restored from a backup), the later report wins, like the event's columns.
        let mut record = conn.prepare_cached(
            "INSERT INTO attempts (event, number, role, url, status, error, duration_ms, at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
             ON CONFLICT (event, number) DO UPDATE SET role = excluded.role,
                 url = excluded.url, status = excluded.status, error = excluded.error,
                 duration_ms = excluded.duration_ms, at_ms = excluded.at_ms",
        )?;
        let now = now_ms();
        for c in self.completions.iter() {
            // Only the latest claim may write: a dispatcher whose lease ran out (and whose
            // event another claim took over) must not overwrite the newer outcome.
            let claimed = memory.leases.end_claim(c.id, c.lease_token);
            let updated = match claimed {
                Some(claimed) => {
                    let updated = update.execute(params![
                        c.id,
                        c.state.as_str(),
                        c.detail,
                        c.delivered_to.map(|role| role.as_str()),
                        c.due_at_ms,
                        c.pos.address,
                        c.pos.tries,
                        c.pos.round,
                        c.attempts.len(),
                        c.state.is_settled().then_some(now),
                    ])?;
                    if updated == 1 {
                        // From what the claim saw, not the row read back: a `RETURNING`
                        // made SQLite open a temporary B-tree per completion (~3% of the
                        // gateway's CPU in perf).
                        memory.count_moved(claimed, c.state);
                    }
                    updated
                }
                None => 0,
            };
            if updated == 0 {
                tracing::warn!(
                    id = c.id,
                    lease_token = c.lease_token,
                    attempts = c.attempts.len(),
                    "completion of a claim that is no longer the latest (its lease ran out) or of an event not stored; ignored"
                );
                continue;
            }
            for a in &c.attempts {
                record.execute(params![
                    c.id,
                    a.number,
                    a.role.as_str(),
                    a.url,
                    a.status,
                    a.error,
                    a.duration_ms,
                    a.at_ms,
                ])?;
            }
        }
        Ok(())
    }
}

pub(super) struct Release {
    pub leases: Vec<Lease>,
}

impl Op for Release {
    type Output = ();
    const DURABLE: bool = false;

    fn weight(&self) -> usize {
        self.leases.len()
    }

    fn apply(&self, conn: &Connection, memory: &mut Memory) -> Result<()> {
        // Only a held claim can be ended, and only by its latest token: releasing an event
        // already completed (and at rest), or claimed again since, must not make it due and
        // deliver it again.
        let mut release = conn.prepare_cached(
            "UPDATE events SET due_at_ms = 0 WHERE id = ?1 AND due_at_ms IS NOT NULL",
        )?;
        for lease in &self.leases {
            if memory.leases.end(lease.id, lease.token) {
                release.execute(params![lease.id])?;
            }
        }
        Ok(())
    }
}

pub(super) struct Prune {
    pub settled_before_ms: i64,
    pub batch_max: usize,
}

impl Op for Prune {
    type Output = usize;
    const DURABLE: bool = false;

    fn weight(&self) -> usize {
        self.batch_max
    }

    fn apply(&self, conn: &Connection, memory: &mut Memory) -> Result<usize> {
        // The writer runs without foreign-key enforcement (`schema::open_writer`), so the
        // event's attempts are deleted here rather than by ON DELETE CASCADE.
        let mut prune = conn.prepare_cached(
            "DELETE FROM events WHERE id IN (SELECT id FROM events
                 WHERE settled_at_ms IS NOT NULL AND settled_at_ms < ?1
                 ORDER BY settled_at_ms LIMIT ?2)
             RETURNING id, account, type, test, state",
        )?;
        let limit = i64::try_from(self.batch_max).unwrap_or(i64::MAX);
        let mut pruned = prune.query(params![self.settled_before_ms, limit])?;
        let mut ids = Vec::new();
        while let Some(row) = pruned.next()? {
            ids.push(row.get::<_, i64>(0)?);
            let account = rows::text_at(row, 1, "account")?;
            let event_type = rows::event_type_at(row, 2)?;
            let test: bool = row.get(3)?;
            let state = rows::state_at(row, 4)?;
            memory.counts.add(account, event_type, test, state, -1);
        }
        drop(pruned);
        let mut attempts = conn.prepare_cached("DELETE FROM attempts WHERE event = ?1")?;
        for id in &ids {
            attempts.execute([id])?;
        }
        let deleted = ids.len();
        Ok(deleted)
    }
}

pub(super) struct PutSettings {
    pub account: AccountId,
    pub settings: WebhookSettings,
    pub new_secret: Secret,
    pub now_ms: i64,
}

impl Op for PutSettings {
    type Output = StoredSettings;
    const DURABLE: bool = true;

    fn apply(&self, conn: &Connection, _memory: &mut Memory) -> Result<StoredSettings> {
        let addresses: Vec<&str> = self.settings.addresses.iter().map(|a| a.as_str()).collect();
        let events: Vec<&str> = self.settings.events.iter().map(|t| t.as_str()).collect();
        // The secret is only written by the insert: a later save keeps the secret (and the
        // previous one) the receivers already verify with.
        let mut upsert = conn.prepare_cached(
            "INSERT INTO settings (account, enabled, addresses, events, secret, updated_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (account) DO UPDATE SET enabled = excluded.enabled,
                 addresses = excluded.addresses, events = excluded.events,
                 updated_at_ms = excluded.updated_at_ms
             RETURNING enabled, addresses, events, secret, previous_secret,
                 previous_until_ms, updated_at_ms",
        )?;
        let mut saved = upsert.query(params![
            self.account.as_str(),
            self.settings.enabled,
            to_json(&addresses)?,
            to_json(&events)?,
            self.new_secret.expose(),
            self.now_ms,
        ])?;
        match saved.next()? {
            Some(row) => rows::stored_settings(row),
            None => Err(crate::Error::Corrupt(
                "settings upsert returned no row".to_owned(),
            )),
        }
    }
}

pub(super) struct RotateSecret {
    pub account: AccountId,
    pub new_secret: Secret,
    pub grace_until_ms: i64,
    pub now_ms: i64,
}

impl Op for RotateSecret {
    type Output = Option<StoredSettings>;
    const DURABLE: bool = true;

    fn apply(&self, conn: &Connection, _memory: &mut Memory) -> Result<Option<StoredSettings>> {
        let mut rotate = conn.prepare_cached(
            "UPDATE settings SET previous_secret = secret, previous_until_ms = ?2,
                 secret = ?3, updated_at_ms = ?4
             WHERE account = ?1
             RETURNING enabled, addresses, events, secret, previous_secret,
                 previous_until_ms, updated_at_ms",
        )?;
        let mut rotated = rotate.query(params![
            self.account.as_str(),
            self.grace_until_ms,
            self.new_secret.expose(),
            self.now_ms,
        ])?;
        rotated.next()?.map(rows::stored_settings).transpose()
    }
}

pub(super) struct Replay {
    pub account: AccountId,
    pub event_ids: Option<Vec<String>>,
    pub now_ms: i64,
}

impl Op for Replay {
    type Output = Vec<String>;
    const DURABLE: bool = true;

    fn weight(&self) -> usize {
        self.event_ids.as_ref().map_or(1, Vec::len)
    }

    fn apply(&self, conn: &Connection, memory: &mut Memory) -> Result<Vec<String>> {
        // Its claim ends: a dispatcher still working on a recovery round of a listed event
        // cannot overwrite the replay with its late completion.
        const REQUEUE: &str = "UPDATE events SET state = 'pending', due_at_ms = ?2,
                 addr_index = 0, addr_tries = 0, round = 0, detail = NULL
             WHERE account = ?1 AND state IN ('failed', 'dead')";
        debug_assert_eq!(EventState::Failed.as_str(), "failed");
        debug_assert_eq!(EventState::Dead.as_str(), "dead");
        let account = self.account.as_str();
        match &self.event_ids {
            None => {
                // What is about to be requeued, counted before it is.
                let mut kinds = conn.prepare_cached(
                    "SELECT type, test, state, COUNT(*) FROM events
                     WHERE account = ?1 AND state IN ('failed', 'dead')
                     GROUP BY type, test, state",
                )?;
                let mut counted = kinds.query([account])?;
                while let Some(row) = counted.next()? {
                    let event_type = rows::event_type_at(row, 0)?;
                    let test: bool = row.get(1)?;
                    let state = rows::state_at(row, 2)?;
                    let n: i64 = row.get(3)?;
                    let counts = &mut memory.counts;
                    counts.add(account, event_type, test, state, -n);
                    counts.add(account, event_type, test, EventState::Pending, n);
                }
                let mut all = conn.prepare_cached(&format!("{REQUEUE} RETURNING id, event_id"))?;
                let mut requeued = all
                    .query_map(params![account, self.now_ms], |row| {
                        Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?))
                    })?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                for (id, _) in &requeued {
                    memory.leases.revoke(*id);
                }
                requeued.sort_unstable_by_key(|(id, _)| *id);
                Ok(requeued.into_iter().map(|(_, event_id)| event_id).collect())
            }
            Some(event_ids) => {
                let mut one = conn.prepare_cached(&format!(
                    "{REQUEUE} AND event_id = ?3 RETURNING id, event_id"
                ))?;
                let mut find = conn
                    .prepare_cached("SELECT id FROM events WHERE account = ?1 AND event_id = ?2")?;
                let mut requeued = Vec::new();
                for event_id in event_ids {
                    let counted = find
                        .query_row(params![account, event_id], |row| row.get::<_, i64>(0))
                        .optional()?
                        .and_then(|id| counted_as(conn, &mut memory.accounts, id));
                    // A repeated id matches once: the first pass made it pending.
                    let found: Option<(i64, String)> = one
                        .query_row(params![account, self.now_ms, event_id], |row| {
                            Ok((row.get(0)?, row.get(1)?))
                        })
                        .optional()?;
                    if let Some((id, event_id)) = found {
                        memory.leases.revoke(id);
                        if let Some(counted) = counted {
                            memory.count_moved(counted, EventState::Pending);
                        }
                        requeued.push(event_id);
                    }
                }
                Ok(requeued)
            }
        }
    }
}

/// A round trip through the writer, so readiness fails when the writer thread is dead.
pub(super) struct Ping;

impl Op for Ping {
    type Output = ();
    const DURABLE: bool = false;
    const WRITES: bool = false;

    fn apply(&self, conn: &Connection, _memory: &mut Memory) -> Result<()> {
        conn.query_row("SELECT 1", [], |_| Ok(()))?;
        Ok(())
    }
}

fn to_json(items: &[&str]) -> Result<String> {
    serde_json::to_string(items)
        .map_err(|err| crate::Error::Unavailable(format!("cannot encode settings as JSON: {err}")))
}
