//! The PostgreSQL store: several gateway nodes share one database as their queue.
//!
//! Every call takes a connection from a deadpool pool (broken connections are dropped and
//! replaced on the next checkout, so a server restart heals by itself). Claims lease events
//! with `FOR UPDATE SKIP LOCKED`, so nodes never wait on each other's rows and never claim
//! the same event; a lease is a due time in the future plus a token, so a node that dies
//! mid-delivery has its work taken over by the others once the lease passes, and its late
//! completion (if it was only slow) is ignored. Intake, release and replay `NOTIFY
//! mailhook_work`; each node keeps one `LISTEN` connection that rings its work bus.
//! Connection problems are `Error::Unavailable` (intake answers 503 with Retry-After).

mod listen;
mod rows;
mod schema;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use mailhook_core::AccountId;
use mailhook_core::WebhookSettings;
use mailhook_core::bus::WorkBus;
use mailhook_core::signature::Secret;
use tokio::task::JoinHandle;
use tokio_postgres::error::SqlState;
use tokio_postgres::{IsolationLevel, NoTls};

use crate::sqlite::now_ms;
use crate::{
    Completion, Error, EventRecord, EventState, InsertOutcome, Job, Lease, NewEvent, QueueStats,
    Result, Stats, Store, StoredSettings, lanes,
};
use rows::{ATTEMPT_COLUMNS, EVENT_RECORD_COLUMNS, JOB_COLUMNS, SETTINGS_COLUMNS};

/// Limits and identity of a PostgreSQL store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresOptions {
    /// Most pooled connections (the LISTEN connection is one more).
    pub pool_size_max: usize,
    /// How long opening a connection, or waiting for a free pooled one, may take before the
    /// call fails with `Unavailable`.
    pub connect_timeout: Duration,
    /// This node's name in `leased_by`. It must stay the same across restarts of one node
    /// and differ between nodes: at open, the store takes back the leases its own name
    /// still holds (a crash left them), which is only safe if no other live node has it.
    pub node_id: String,
}

impl Default for PostgresOptions {
    fn default() -> PostgresOptions {
        PostgresOptions {
            pool_size_max: 16,
            connect_timeout: Duration::from_secs(5),
            node_id: "mailhook".to_owned(),
        }
    }
}

/// The shared store.
pub struct PostgresStore {
    pool: Pool,
    /// For the LISTEN connection, which lives outside the pool.
    config: tokio_postgres::Config,
    node_id: String,
    closed: AtomicBool,
    /// Claims so far; spreads the retry lane's share (`lanes::retry_share`).
    claims: AtomicU64,
    listener: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The config may hold a password: show only where it points.
        f.debug_struct("PostgresStore")
            .field("database", &self.config.get_dbname())
            .field("node_id", &self.node_id)
            .field("closed", &self.closed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// Parses a `postgres://` URL (or a `key=value` connection string) as libpq would.
pub fn parse_url(url: &str) -> Result<tokio_postgres::Config> {
    url.parse::<tokio_postgres::Config>().map_err(|err| {
        Error::Unavailable(format!("store.url is not a valid PostgreSQL URL: {err}"))
    })
}

/// Connects once and applies pending migrations (`mailhook migrate`); returns the schema
/// version.
pub async fn migrate(url: &str, connect_timeout: Duration) -> Result<usize> {
    let mut config = parse_url(url)?;
    config.connect_timeout(connect_timeout);
    let (mut client, connection) = config.connect(NoTls).await.map_err(classify)?;
    let driver = tokio::spawn(connection);
    let migrated = schema::migrate(&mut client).await;
    drop(client);
    let _ = driver.await;
    migrated
}

impl PostgresStore {
    /// Connects, applies pending migrations (under an advisory lock: nodes starting together
    /// migrate once), and takes back the leases this node's id still holds from a run that
    /// crashed, so its in-flight work is due at once instead of after the lease.
    pub async fn open(url: &str, options: PostgresOptions) -> Result<PostgresStore> {
        let mut config = parse_url(url)?;
        config.connect_timeout(options.connect_timeout);
        if config.get_application_name().is_none() {
            config.application_name(format!("mailhook {}", options.node_id));
        }
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                // `is_closed` is enough: a connection the server dropped is closed by the
                // time it is checked out again, and a query on one that breaks mid-call
                // fails as `Unavailable` and is retried by its caller.
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(options.pool_size_max.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(options.connect_timeout))
            .create_timeout(Some(options.connect_timeout))
            .recycle_timeout(Some(options.connect_timeout))
            .build()
            .map_err(|err| {
                Error::Unavailable(format!("cannot build the connection pool: {err}"))
            })?;
        let store = PostgresStore {
            pool,
            config,
            node_id: options.node_id,
            closed: AtomicBool::new(false),
            claims: AtomicU64::new(0),
            listener: Mutex::new(None),
        };
        {
            let mut client = store.client().await?;
            schema::migrate(&mut client).await?;
            let recovered = client
                .execute(
                    "UPDATE events SET leased_by = NULL, due_at_ms = 0,
                         lease_token = lease_token + 1
                     WHERE leased_by = $1",
                    &[&store.node_id],
                )
                .await?;
            if recovered > 0 {
                tracing::info!(
                    events = recovered,
                    node = %store.node_id,
                    "events this node claimed before a restart are due again"
                );
            }
        }
        Ok(store)
    }

    fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::SeqCst) {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }

    async fn client(&self) -> Result<deadpool_postgres::Object> {
        self.check_open()?;
        self.pool.get().await.map_err(|err| match err {
            PoolError::Backend(err) => classify(err),
            PoolError::Closed => Error::Closed,
            PoolError::Timeout(kind) => Error::Unavailable(format!(
                "no postgresql connection within the connect timeout ({kind:?})"
            )),
            other => Error::Unavailable(format!("postgresql connection pool: {other}")),
        })
    }

    /// Leases up to `limit` due events of one lane, oldest due first, until `lease_until_ms`.
    async fn claim_lane(
        &self,
        client: &deadpool_postgres::Object,
        lane: &str,
        (now_ms, lease_until_ms): (i64, i64),
        limit: usize,
        claimed: &mut Claimed,
    ) -> Result<()> {
        if limit == 0 {
            return Ok(());
        }
        // SKIP LOCKED: rows another node is claiming right now are passed over, not waited
        // for; the re-check after locking drops rows whose lease another claim just took.
        let sql = format!(
            "WITH picked AS (
                 SELECT id FROM events
                 WHERE {lane} AND due_at_ms <= $1
                 ORDER BY due_at_ms, id
                 LIMIT $2
                 FOR UPDATE SKIP LOCKED
             )
             UPDATE events e SET due_at_ms = $3, lease_token = e.lease_token + 1, leased_by = $4
             FROM picked WHERE e.id = picked.id
             RETURNING {JOB_COLUMNS}"
        );
        let statement = client.prepare_cached(&sql).await?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = client
            .query(
                &statement,
                &[&now_ms, &limit, &lease_until_ms, &self.node_id],
            )
            .await?;
        for row in &rows {
            match rows::job(row) {
                Ok(job) => claimed.jobs.push(job),
                Err(err) => claimed.unreadable.push((rows::get(row, "id")?, err)),
            }
        }
        Ok(())
    }

    /// Events and their attempts, read in one snapshot so they agree with each other.
    async fn records(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<EventRecord>> {
        let mut client = self.client().await?;
        let tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        let selected = tx.query(sql, params).await?;
        let mut found = Vec::with_capacity(selected.len());
        let mut ids = Vec::with_capacity(selected.len());
        for row in &selected {
            let id: i64 = rows::get(row, "id")?;
            ids.push(id);
            found.push((id, rows::event_record(row)?));
        }
        if !ids.is_empty() {
            let attempts = tx
                .query(
                    &format!(
                        "SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE event = ANY($1)
                         ORDER BY event, number"
                    ),
                    &[&ids],
                )
                .await?;
            let mut by_event: HashMap<i64, Vec<crate::AttemptRecord>> = HashMap::new();
            for row in &attempts {
                let event: i64 = rows::get(row, "event")?;
                by_event
                    .entry(event)
                    .or_default()
                    .push(rows::attempt_record(row)?);
            }
            for (id, record) in &mut found {
                record.attempts = by_event.remove(id).unwrap_or_default();
            }
        }
        tx.commit().await?;
        Ok(found.into_iter().map(|(_, record)| record).collect())
    }
}

/// What one claim gathered over its lanes: jobs, and rows that could not be read (with why).
#[derive(Default)]
struct Claimed {
    jobs: Vec<Job>,
    unreadable: Vec<(i64, Error)>,
}

impl Claimed {
    fn len(&self) -> usize {
        self.jobs.len() + self.unreadable.len()
    }
}

/// The two claim lanes, as the SQL that selects each one's due events. Each matches the
/// predicate of its partial index, so PostgreSQL walks that index in due order.
const FIRST_ATTEMPTS: &str = "due_at_ms IS NOT NULL AND attempts = 0";
const RETRIES: &str = "due_at_ms IS NOT NULL AND attempts > 0";

/// Sorts PostgreSQL errors: those that mean the server cannot be reached or cannot serve now
/// (connection lost, shutting down, starting up, out of resources, read-only standby,
/// deadlock or serialization failure) are `Unavailable`, so intake answers 503 and the
/// dispatcher retries; the rest are bugs, logged as such.
pub(crate) fn classify(err: tokio_postgres::Error) -> Error {
    let Some(code) = err.code() else {
        // No SQLSTATE: the socket, the connect timeout, or a closed connection.
        return Error::Unavailable(format!("postgresql: {err}"));
    };
    let class = &code.code()[..2.min(code.code().len())];
    let transient = matches!(class, "08" | "53" | "57" | "58")
        || *code == SqlState::T_R_SERIALIZATION_FAILURE
        || *code == SqlState::T_R_DEADLOCK_DETECTED
        || *code == SqlState::READ_ONLY_SQL_TRANSACTION
        || *code == SqlState::LOCK_NOT_AVAILABLE;
    if transient {
        Error::Unavailable(format!("postgresql: {err}"))
    } else {
        Error::Postgres(err)
    }
}

impl From<tokio_postgres::Error> for Error {
    fn from(err: tokio_postgres::Error) -> Error {
        classify(err)
    }
}

/// PostgreSQL text cannot hold NUL. Intake refuses control characters in the fields it
/// stores as text, but attempt errors quote receivers: replace the odd NUL rather than fail
/// the write that records them.
fn text(value: &str) -> std::borrow::Cow<'_, str> {
    if value.contains('\0') {
        std::borrow::Cow::Owned(value.replace('\0', "\u{fffd}"))
    } else {
        std::borrow::Cow::Borrowed(value)
    }
}

fn to_i32(value: impl TryInto<i32>) -> i32 {
    value.try_into().unwrap_or(i32::MAX)
}

#[async_trait]
impl Store for PostgresStore {
    async fn insert_events(&self, events: Vec<NewEvent>) -> Result<InsertOutcome> {
        if events.is_empty() {
            self.check_open()?;
            return Ok(InsertOutcome::with_capacity(0));
        }
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // A 202 promises the events survive a crash: the commit waits for the WAL flush even
        // on a server whose default is `synchronous_commit = off`. (Concurrent requests,
        // each in its own transaction on its own pooled connection, share WAL flushes:
        // PostgreSQL's own group commit. See ARCHITECTURE.md for the measurement.)
        tx.batch_execute("SET LOCAL synchronous_commit = on")
            .await?;
        // The first open (or click) of a MsgId is decided under a transaction-scoped
        // advisory lock per (account, MsgId, type), so two nodes taking the first two opens
        // of one email at the same moment cannot both call theirs the first. Locks are taken
        // in key order, so concurrent batches never deadlock on them.
        let engagement: Vec<usize> = events
            .iter()
            .enumerate()
            .filter(|(_, e)| e.event.is_engagement() && !e.event.test)
            .map(|(i, _)| i)
            .collect();
        let key = |i: usize| {
            let e = &events[i].event;
            (e.account.as_str(), e.msg_id.as_str(), e.event_type.as_str())
        };
        let mut unique = vec![false; events.len()];
        let mut bodies: Vec<std::borrow::Cow<'_, [u8]>> = events
            .iter()
            .map(|e| std::borrow::Cow::Borrowed(e.body.as_slice()))
            .collect();
        if !engagement.is_empty() {
            let mut keys: Vec<String> = engagement
                .iter()
                .map(|&i| {
                    let (account, msg_id, event_type) = key(i);
                    format!("{account}\u{1f}{msg_id}\u{1f}{event_type}")
                })
                .collect();
            keys.sort_unstable();
            keys.dedup();
            tx.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended(k, 0))
                 FROM unnest($1::text[]) AS k ORDER BY k",
                &[&keys],
            )
            .await?;
            let accounts: Vec<&str> = engagement.iter().map(|&i| key(i).0).collect();
            let msg_ids: Vec<&str> = engagement.iter().map(|&i| key(i).1).collect();
            let types: Vec<&str> = engagement.iter().map(|&i| key(i).2).collect();
            let seen = tx
                .query(
                    "SELECT DISTINCT e.account, e.msg_id, e.type FROM events e
                     JOIN unnest($1::text[], $2::text[], $3::text[]) AS k(account, msg_id, type)
                       ON e.account = k.account AND e.msg_id = k.msg_id AND e.type = k.type",
                    &[&accounts, &msg_ids, &types],
                )
                .await?;
            let mut seen: HashSet<(String, String, String)> = seen
                .iter()
                .map(|row| {
                    Ok((
                        rows::get(row, "account")?,
                        rows::get(row, "msg_id")?,
                        rows::get(row, "type")?,
                    ))
                })
                .collect::<Result<_>>()?;
            for &i in &engagement {
                let (account, msg_id, event_type) = key(i);
                let first =
                    seen.insert((account.to_owned(), msg_id.to_owned(), event_type.to_owned()));
                if first {
                    unique[i] = true;
                    // Only the first open/click of a MsgId is rendered again; every other
                    // event keeps the bytes intake rendered.
                    let mut event = events[i].event.clone();
                    if let Some(engagement) = event.engagement.as_mut() {
                        engagement.unique = true;
                    }
                    bodies[i] = std::borrow::Cow::Owned(event.render_payload());
                }
            }
        }
        let accounts: Vec<&str> = events.iter().map(|e| e.event.account.as_str()).collect();
        let event_ids: Vec<&str> = events.iter().map(|e| e.event.event_id.as_str()).collect();
        let msg_ids: Vec<&str> = events.iter().map(|e| e.event.msg_id.as_str()).collect();
        let types: Vec<&str> = events.iter().map(|e| e.event.event_type.as_str()).collect();
        let timestamps: Vec<i64> = events.iter().map(|e| e.event.timestamp_ms).collect();
        let tests: Vec<bool> = events.iter().map(|e| e.event.test).collect();
        let bodies: Vec<&[u8]> = bodies.iter().map(|b| b.as_ref()).collect();
        let accepted_at_ms = now_ms();
        // One statement for the whole request, committed once: the batch is all or nothing.
        // Conflicts count as duplicates, including one repeated within the batch (DO NOTHING
        // sees rows the same statement inserted; the first in request order wins). The
        // NOTIFY is sent at commit, so other nodes hear of the events once they are durable.
        let statement = tx
            .prepare_cached(
                "WITH input AS (
                     SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[],
                         $5::bigint[], $6::boolean[], $7::bytea[])
                         WITH ORDINALITY AS t(account, event_id, msg_id, type, timestamp_ms,
                             test, body, ord)
                 ), inserted AS (
                     INSERT INTO events (account, event_id, msg_id, type, timestamp_ms,
                         accepted_at_ms, test, body, state, due_at_ms)
                     SELECT account, event_id, msg_id, type, timestamp_ms, $8, test, body,
                         'pending', $8
                     FROM input ORDER BY ord
                     ON CONFLICT (account, event_id) DO NOTHING
                     RETURNING account, event_id
                 ), notified AS (
                     SELECT pg_notify('mailhook_work', '')
                     FROM (SELECT 1 FROM inserted LIMIT 1) AS any_inserted
                 )
                 SELECT account, event_id, (SELECT count(*) FROM notified) AS notified
                 FROM inserted",
            )
            .await?;
        let inserted = tx
            .query(
                &statement,
                &[
                    &accounts,
                    &event_ids,
                    &msg_ids,
                    &types,
                    &timestamps,
                    &tests,
                    &bodies,
                    &accepted_at_ms,
                ],
            )
            .await?;
        let mut fresh: HashSet<(String, String)> = inserted
            .iter()
            .map(|row| Ok((rows::get(row, "account")?, rows::get(row, "event_id")?)))
            .collect::<Result<_>>()?;
        tx.commit().await?;
        let mut outcome = InsertOutcome::with_capacity(events.len());
        for (i, NewEvent { event, .. }) in events.iter().enumerate() {
            // The first of the request's events with this key is the one stored.
            let stored = fresh.remove(&(
                event.account.as_str().to_owned(),
                event.event_id.as_str().to_owned(),
            ));
            outcome.record(event.event_id.as_str(), stored, unique[i]);
        }
        Ok(outcome)
    }

    async fn claim_due(&self, now_ms: i64, limit: usize, lease_ms: i64) -> Result<Vec<Job>> {
        if limit == 0 {
            self.check_open()?;
            return Ok(Vec::new());
        }
        let client = self.client().await?;
        let seq = self.claims.fetch_add(1, Ordering::Relaxed);
        let retry_share = lanes::retry_share(limit, seq).min(limit);
        let lease_until_ms = now_ms.saturating_add(lease_ms.max(0));
        let mut claimed = Claimed::default();
        let window = (now_ms, lease_until_ms);
        let first_share = limit - retry_share;
        self.claim_lane(&client, FIRST_ATTEMPTS, window, first_share, &mut claimed)
            .await?;
        // Each lane's unused share goes to the other: retries fill what new events left,
        // then new events what retries left.
        let room = limit - claimed.len();
        self.claim_lane(&client, RETRIES, window, room, &mut claimed)
            .await?;
        if claimed.len() < limit {
            let room = limit - claimed.len();
            self.claim_lane(&client, FIRST_ATTEMPTS, window, room, &mut claimed)
                .await?;
        }
        let Claimed {
            mut jobs,
            unreadable,
        } = claimed;
        // A row that cannot be read would fail every claim and stall all delivery; park it
        // as dead with the reason instead, where the failures list shows it.
        for (id, err) in unreadable {
            tracing::error!(id, error = %err, "parking an event whose row cannot be read");
            client
                .execute(
                    "UPDATE events SET state = 'dead', detail = $2, due_at_ms = NULL,
                         leased_by = NULL
                     WHERE id = $1",
                    &[&id, &err.to_string()],
                )
                .await?;
        }
        // The set is the oldest due of each lane; insertion order within it keeps the events
        // of one email in the order they came.
        jobs.sort_unstable_by_key(|job| job.id);
        Ok(jobs)
    }

    async fn complete(&self, completions: Arc<[Completion]>) -> Result<()> {
        if completions.is_empty() {
            return self.check_open();
        }
        let mut client = self.client().await?;
        let now = now_ms();
        let ids: Vec<i64> = completions.iter().map(|c| c.id).collect();
        let tokens: Vec<i64> = completions.iter().map(|c| c.lease_token).collect();
        let states: Vec<&str> = completions.iter().map(|c| c.state.as_str()).collect();
        let details: Vec<Option<String>> = completions
            .iter()
            .map(|c| c.detail.as_deref().map(|d| text(d).into_owned()))
            .collect();
        let delivered_to: Vec<Option<&str>> = completions
            .iter()
            .map(|c| c.delivered_to.map(|role| role.as_str()))
            .collect();
        let due: Vec<Option<i64>> = completions.iter().map(|c| c.due_at_ms).collect();
        let addr_index: Vec<i32> = completions.iter().map(|c| to_i32(c.pos.address)).collect();
        let addr_tries: Vec<i32> = completions.iter().map(|c| to_i32(c.pos.tries)).collect();
        let rounds: Vec<i32> = completions.iter().map(|c| to_i32(c.pos.round)).collect();
        let made: Vec<i32> = completions
            .iter()
            .map(|c| to_i32(c.attempts.len()))
            .collect();
        let settled: Vec<Option<i64>> = completions
            .iter()
            .map(|c| c.state.is_settled().then_some(now))
            .collect();
        let tx = client.transaction().await?;
        // Only the latest claim may write: a node whose lease ran out (and whose event
        // another claim took over) must not overwrite the newer outcome.
        let update = tx
            .prepare_cached(
                "UPDATE events e SET state = c.state, detail = c.detail,
                     delivered_to = c.delivered_to, due_at_ms = c.due_at_ms,
                     addr_index = c.addr_index, addr_tries = c.addr_tries, round = c.round,
                     attempts = e.attempts + c.made, leased_by = NULL,
                     settled_at_ms = c.settled_at_ms
                 FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::text[],
                     $6::bigint[], $7::integer[], $8::integer[], $9::integer[], $10::integer[],
                     $11::bigint[])
                     AS c(id, token, state, detail, delivered_to, due_at_ms, addr_index,
                         addr_tries, round, made, settled_at_ms)
                 WHERE e.id = c.id AND e.lease_token = c.token
                 RETURNING e.id",
            )
            .await?;
        let updated = tx
            .query(
                &update,
                &[
                    &ids,
                    &tokens,
                    &states,
                    &details,
                    &delivered_to,
                    &due,
                    &addr_index,
                    &addr_tries,
                    &rounds,
                    &made,
                    &settled,
                ],
            )
            .await?;
        let mut written = HashSet::with_capacity(updated.len());
        for row in &updated {
            written.insert(rows::get::<i64>(row, "id")?);
        }
        // Attempts of the completions that were written, one row per (event, number); the
        // last report of a number wins, as in the event's own columns.
        let mut attempts: HashMap<(i64, u32), &crate::AttemptRecord> = HashMap::new();
        for c in completions.iter() {
            if !written.contains(&c.id) {
                tracing::warn!(
                    id = c.id,
                    lease_token = c.lease_token,
                    attempts = c.attempts.len(),
                    "completion of a claim that is no longer the latest (its lease ran out) or of an event not stored; ignored"
                );
                continue;
            }
            for a in &c.attempts {
                attempts.insert((c.id, a.number), a);
            }
        }
        if !attempts.is_empty() {
            let mut events = Vec::with_capacity(attempts.len());
            let mut numbers = Vec::with_capacity(attempts.len());
            let mut roles = Vec::with_capacity(attempts.len());
            let mut urls = Vec::with_capacity(attempts.len());
            let mut statuses = Vec::with_capacity(attempts.len());
            let mut errors = Vec::with_capacity(attempts.len());
            let mut durations = Vec::with_capacity(attempts.len());
            let mut ats = Vec::with_capacity(attempts.len());
            for ((event, number), a) in &attempts {
                events.push(*event);
                numbers.push(to_i32(*number));
                roles.push(a.role.as_str());
                urls.push(text(&a.url).into_owned());
                statuses.push(a.status.map(i32::from));
                errors.push(a.error.as_deref().map(|e| text(e).into_owned()));
                durations.push(i64::try_from(a.duration_ms).unwrap_or(i64::MAX));
                ats.push(a.at_ms);
            }
            let record = tx
                .prepare_cached(
                    "INSERT INTO attempts (event, number, role, url, status, error, duration_ms,
                         at_ms)
                     SELECT * FROM unnest($1::bigint[], $2::integer[], $3::text[], $4::text[],
                         $5::integer[], $6::text[], $7::bigint[], $8::bigint[])
                     ON CONFLICT (event, number) DO UPDATE SET role = excluded.role,
                         url = excluded.url, status = excluded.status, error = excluded.error,
                         duration_ms = excluded.duration_ms, at_ms = excluded.at_ms",
                )
                .await?;
            tx.execute(
                &record,
                &[
                    &events, &numbers, &roles, &urls, &statuses, &errors, &durations, &ats,
                ],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn release(&self, leases: Vec<Lease>) -> Result<()> {
        if leases.is_empty() {
            return self.check_open();
        }
        let client = self.client().await?;
        let ids: Vec<i64> = leases.iter().map(|l| l.id).collect();
        let tokens: Vec<i64> = leases.iter().map(|l| l.token).collect();
        // Only a leased event has a lease to end, and only its latest claim may end it. The
        // NOTIFY tells every node (this one included) that the events are due now.
        client
            .execute(
                "WITH released AS (
                     UPDATE events e SET leased_by = NULL, due_at_ms = 0
                     FROM unnest($1::bigint[], $2::bigint[]) AS r(id, token)
                     WHERE e.id = r.id AND e.lease_token = r.token AND e.leased_by IS NOT NULL
                     RETURNING 1
                 )
                 SELECT pg_notify('mailhook_work', '')
                 FROM (SELECT 1 FROM released LIMIT 1) AS any_released",
                &[&ids, &tokens],
            )
            .await?;
        Ok(())
    }

    async fn next_due_at(&self) -> Result<Option<i64>> {
        let client = self.client().await?;
        // One MIN per lane, each answered from its partial index; LEAST ignores NULLs.
        let row = client
            .query_one(
                "SELECT LEAST(
                     (SELECT MIN(due_at_ms) FROM events
                      WHERE due_at_ms IS NOT NULL AND attempts = 0),
                     (SELECT MIN(due_at_ms) FROM events
                      WHERE due_at_ms IS NOT NULL AND attempts > 0)) AS due",
                &[],
            )
            .await?;
        rows::get(&row, "due")
    }

    async fn get_settings(&self, account: &AccountId) -> Result<Option<StoredSettings>> {
        let client = self.client().await?;
        let found = client
            .query(
                &format!("SELECT {SETTINGS_COLUMNS} FROM settings WHERE account = $1"),
                &[&account.as_str()],
            )
            .await?;
        found.first().map(rows::stored_settings).transpose()
    }

    async fn put_settings(
        &self,
        account: &AccountId,
        settings: WebhookSettings,
        new_secret: Secret,
        now_ms: i64,
    ) -> Result<StoredSettings> {
        let client = self.client().await?;
        let addresses: Vec<&str> = settings.addresses.iter().map(|a| a.as_str()).collect();
        let events: Vec<&str> = settings.events.iter().map(|t| t.as_str()).collect();
        // The secret is only written by the insert: a later save keeps the secret (and the
        // previous one) the receivers already verify with.
        let saved = client
            .query(
                &format!(
                    "INSERT INTO settings (account, enabled, addresses, events, secret,
                         updated_at_ms)
                     VALUES ($1, $2, $3, $4, $5, $6)
                     ON CONFLICT (account) DO UPDATE SET enabled = excluded.enabled,
                         addresses = excluded.addresses, events = excluded.events,
                         updated_at_ms = excluded.updated_at_ms
                     RETURNING {SETTINGS_COLUMNS}"
                ),
                &[
                    &account.as_str(),
                    &settings.enabled,
                    &addresses,
                    &events,
                    &new_secret.expose(),
                    &now_ms,
                ],
            )
            .await?;
        match saved.first() {
            Some(row) => rows::stored_settings(row),
            None => Err(Error::Corrupt("settings upsert returned no row".to_owned())),
        }
    }

    async fn rotate_secret(
        &self,
        account: &AccountId,
        new_secret: Secret,
        grace_until_ms: i64,
        now_ms: i64,
    ) -> Result<Option<StoredSettings>> {
        let client = self.client().await?;
        let rotated = client
            .query(
                &format!(
                    "UPDATE settings SET previous_secret = secret, previous_until_ms = $2,
                         secret = $3, updated_at_ms = $4
                     WHERE account = $1
                     RETURNING {SETTINGS_COLUMNS}"
                ),
                &[
                    &account.as_str(),
                    &grace_until_ms,
                    &new_secret.expose(),
                    &now_ms,
                ],
            )
            .await?;
        rotated.first().map(rows::stored_settings).transpose()
    }

    async fn message(&self, account: &AccountId, msg_id: &str) -> Result<Vec<EventRecord>> {
        self.records(
            &format!(
                "SELECT {EVENT_RECORD_COLUMNS} FROM events WHERE account = $1 AND msg_id = $2
                 ORDER BY timestamp_ms, id"
            ),
            &[&account.as_str(), &msg_id],
        )
        .await
    }

    async fn event(&self, account: &AccountId, event_id: &str) -> Result<Option<EventRecord>> {
        Ok(self
            .records(
                &format!(
                    "SELECT {EVENT_RECORD_COLUMNS} FROM events
                     WHERE account = $1 AND event_id = $2"
                ),
                &[&account.as_str(), &event_id],
            )
            .await?
            .pop())
    }

    async fn failures(&self, account: &AccountId, limit: usize) -> Result<Vec<EventRecord>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.records(
            &format!(
                "SELECT {EVENT_RECORD_COLUMNS} FROM events
                 WHERE account = $1 AND state IN ('failed', 'dead')
                 ORDER BY id DESC LIMIT $2"
            ),
            &[&account.as_str(), &limit],
        )
        .await
    }

    async fn replay(
        &self,
        account: &AccountId,
        event_ids: Option<Vec<String>>,
        now_ms: i64,
    ) -> Result<Vec<String>> {
        let client = self.client().await?;
        debug_assert_eq!(EventState::Failed.as_str(), "failed");
        debug_assert_eq!(EventState::Dead.as_str(), "dead");
        // A new lease token: a node still working on a recovery round of a listed event
        // cannot overwrite the replay with its late completion.
        const REQUEUE: &str = "UPDATE events SET state = 'pending', due_at_ms = $2,
                 addr_index = 0, addr_tries = 0, round = 0, detail = NULL, leased_by = NULL,
                 lease_token = lease_token + 1
             WHERE account = $1 AND state IN ('failed', 'dead')";
        let account = account.as_str();
        let replayed: Vec<String> = match &event_ids {
            None => {
                let rows = client
                    .query(
                        &format!("{REQUEUE} RETURNING id, event_id"),
                        &[&account, &now_ms],
                    )
                    .await?;
                let mut requeued = rows
                    .iter()
                    .map(|row| Ok((rows::get::<i64>(row, "id")?, rows::get(row, "event_id")?)))
                    .collect::<Result<Vec<(i64, String)>>>()?;
                requeued.sort_unstable_by_key(|(id, _)| *id);
                requeued.into_iter().map(|(_, event_id)| event_id).collect()
            }
            Some(listed) => {
                let rows = client
                    .query(
                        &format!("{REQUEUE} AND event_id = ANY($3) RETURNING event_id"),
                        &[&account, &now_ms, listed],
                    )
                    .await?;
                let requeued = rows
                    .iter()
                    .map(|row| rows::get::<String>(row, "event_id"))
                    .collect::<Result<HashSet<String>>>()?;
                // In the order listed, each once, like the embedded store.
                let mut seen = HashSet::new();
                listed
                    .iter()
                    .filter(|id| requeued.contains(*id) && seen.insert(id.as_str()))
                    .cloned()
                    .collect()
            }
        };
        if !replayed.is_empty() {
            client
                .execute("SELECT pg_notify('mailhook_work', '')", &[])
                .await?;
        }
        Ok(replayed)
    }

    async fn prune(&self, settled_before_ms: i64, batch_max: usize) -> Result<usize> {
        if batch_max == 0 {
            self.check_open()?;
            return Ok(0);
        }
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // One node prunes at a time: the others find the lock taken and leave at once,
        // rather than deleting the same rows and waiting on each other's locks.
        let locked: bool = rows::get(
            &tx.query_one(
                "SELECT pg_try_advisory_xact_lock($1) AS locked",
                &[&schema::PRUNE_LOCK],
            )
            .await?,
            "locked",
        )?;
        if !locked {
            return Ok(0);
        }
        let limit = i64::try_from(batch_max).unwrap_or(i64::MAX);
        // Attempts go with their event (ON DELETE CASCADE).
        let deleted = tx
            .execute(
                "DELETE FROM events WHERE id IN (SELECT id FROM events
                     WHERE settled_at_ms IS NOT NULL AND settled_at_ms < $1
                     ORDER BY settled_at_ms LIMIT $2)",
                &[&settled_before_ms, &limit],
            )
            .await?;
        tx.commit().await?;
        Ok(usize::try_from(deleted).unwrap_or(usize::MAX))
    }

    fn subscribe_work(&self, bus: WorkBus) {
        if self.closed.load(Ordering::SeqCst) {
            return;
        }
        let task = tokio::spawn(listen::run(self.config.clone(), bus));
        let previous = self
            .listener
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .replace(task);
        if let Some(previous) = previous {
            previous.abort();
        }
    }

    async fn queue_stats(&self) -> Result<QueueStats> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "SELECT COUNT(*) AS depth, MIN(accepted_at_ms) AS oldest FROM events
                 WHERE due_at_ms IS NOT NULL",
                &[],
            )
            .await?;
        let depth: i64 = rows::get(&row, "depth")?;
        Ok(QueueStats {
            depth: u64::try_from(depth).unwrap_or(0),
            oldest_accepted_at_ms: rows::get(&row, "oldest")?,
        })
    }

    async fn delivery_times(
        &self,
        account: &AccountId,
        msg_ids: Vec<String>,
    ) -> Result<HashMap<String, i64>> {
        let client = self.client().await?;
        let found = client
            .query(
                "SELECT msg_id, MIN(timestamp_ms) AS at FROM events
                 WHERE account = $1 AND msg_id = ANY($2) AND type = 'delivery'
                 GROUP BY msg_id",
                &[&account.as_str(), &msg_ids],
            )
            .await?;
        found
            .iter()
            .map(|row| Ok((rows::get(row, "msg_id")?, rows::get(row, "at")?)))
            .collect()
    }

    async fn stats(&self, account: Option<&AccountId>) -> Result<Stats> {
        let client = self.client().await?;
        let counted = match account {
            Some(account) => {
                client
                    .query(
                        "SELECT type, test, state, COUNT(*) AS n FROM events WHERE account = $1
                         GROUP BY type, test, state",
                        &[&account.as_str()],
                    )
                    .await?
            }
            None => {
                client
                    .query(
                        "SELECT type, test, state, COUNT(*) AS n FROM events
                         GROUP BY type, test, state",
                        &[],
                    )
                    .await?
            }
        };
        let mut stats = Stats::default();
        // Every type is listed, counted or not.
        stats.add(
            mailhook_core::EventType::Send,
            false,
            EventState::Pending,
            0,
        );
        for row in &counted {
            let (event_type, test, state) = rows::type_test_state(row)?;
            let count: i64 = rows::get(row, "n")?;
            stats.add(event_type, test, state, u64::try_from(count).unwrap_or(0));
        }
        Ok(stats)
    }

    async fn ping(&self) -> Result<()> {
        let client = self.client().await?;
        // Reachable is not enough: a standby answers reads but refuses every write.
        let row = client
            .query_one("SELECT pg_is_in_recovery() AS standby", &[])
            .await?;
        if rows::get::<bool>(&row, "standby")? {
            return Err(Error::Unavailable(
                "postgresql is a read-only standby (in recovery)".to_owned(),
            ));
        }
        Ok(())
    }

    async fn close(&self) -> Result<()> {
        if self.closed.swap(true, Ordering::SeqCst) {
            return Err(Error::Closed);
        }
        if let Some(listener) = self
            .listener
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            listener.abort();
        }
        // Every call awaits its own commit, so nothing is pending: closing the pool drops
        // idle connections, and those checked out close when their call ends.
        self.pool.close();
        Ok(())
    }
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        if let Some(listener) = self
            .listener
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            listener.abort();
        }
    }
}
