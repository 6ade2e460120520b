//! The embedded SQLite store: one writer thread that group-commits every write, and a small
//! pool of read-only connections for queries.
//!
//! Why one writer: SQLite allows a single writer at a time anyway, and funnelling every write
//! through one thread lets concurrent requests share a transaction and its fsync (group
//! commit), so throughput grows with load instead of being capped at one fsync per request.
//! Why `synchronous` is toggled per transaction: inserts and settings changes are promises
//! made to a caller (a 202, a saved secret) and must survive power loss, while losing a claim,
//! a completion or a release only means an event is delivered again, which at-least-once
//! delivery allows.

mod counts;
mod leases;
mod ops;
mod reads;
mod rows;
mod schema;
#[cfg(test)]
mod tests;
mod writer;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use mailhook_core::signature::Secret;
use mailhook_core::{AccountId, WebhookSettings};
use rusqlite::Connection;
use rusqlite::ffi::ErrorCode;
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::{
    Completion, Error, EventRecord, InsertOutcome, Job, Lease, NewEvent, QueueStats, Result, Stats,
    Store, StoredSettings, lanes,
};
use ops::Op;
use writer::{Msg, Request, Writer};

/// Limits of the SQLite store. Values of 0 are raised to 1 (a store that can take no write
/// or run no read would only hang its callers) and absurd ones lowered to what tokio's
/// channels and semaphores can count, rather than panicking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqliteOptions {
    /// Most events (inserted, completed or released) one group transaction gathers from the
    /// queue. A single request larger than this still commits whole, alone: batches are all
    /// or nothing.
    pub events_per_commit_max: usize,
    /// Write requests that may wait for the writer; further callers wait for room
    /// (back-pressure) rather than growing memory.
    pub write_queue_max: usize,
    /// Read-only connections, and so concurrent reads.
    pub read_connections: usize,
    /// The writer connection's page cache, in bytes (2 MiB, about SQLite's own default). Pages
    /// it cannot hold are read back from the OS page cache. In `cargo xtask bench` with 100k
    /// events, 32 MiB gave no measurable gain (19.1k vs 19.4k delivered/s) and doubled the
    /// resident memory, so the default stays small.
    pub cache_bytes_max: usize,
}

impl Default for SqliteOptions {
    fn default() -> SqliteOptions {
        SqliteOptions {
            events_per_commit_max: 10_000,
            write_queue_max: 1024,
            read_connections: 2,
            cache_bytes_max: 2 * 1024 * 1024,
        }
    }
}

/// The embedded store. Cheap to clone: clones share the writer thread and the read pool.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: std::path::PathBuf,
    /// The only sender: dropping it ends the writer thread once it has drained the queue.
    writes: Option<mpsc::Sender<Msg>>,
    writer_thread: Mutex<Option<JoinHandle<()>>>,
    readers: Mutex<Vec<Connection>>,
    read_permits: Arc<Semaphore>,
    closed: AtomicBool,
    commits: Arc<AtomicU64>,
    /// Claims so far; spreads the retry lane's share (`lanes::retry_share`).
    claims: AtomicU64,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.inner.path)
            .field("closed", &self.inner.closed.load(Ordering::Relaxed))
            .field("commits", &self.commits())
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (or creates) the database file, applies pending migrations, returns events a
    /// crash left claimed to the queue, and starts the writer thread. The directory must
    /// exist. Blocking, but short; fine to call from inside a tokio runtime.
    pub fn open(path: &Path, options: SqliteOptions) -> Result<SqliteStore> {
        let with_path = |err: Error| match classify(err) {
            Error::Corrupt(m) => Error::Corrupt(format!("{}: {m}", path.display())),
            Error::Unavailable(m) => Error::Unavailable(format!("{}: {m}", path.display())),
            other => other,
        };
        let conn = schema::open_writer(path, options.cache_bytes_max).map_err(with_path)?;
        let read_connections = options.read_connections.clamp(1, Semaphore::MAX_PERMITS);
        let readers = (0..read_connections)
            .map(|_| schema::open_reader(path))
            .collect::<Result<Vec<_>>>()
            .map_err(with_path)?;

        let (writes, queue) =
            mpsc::channel(options.write_queue_max.clamp(1, Semaphore::MAX_PERMITS));
        let commits = Arc::new(AtomicU64::new(0));
        let writer = Writer::new(
            conn,
            queue,
            options.events_per_commit_max.max(1),
            Arc::clone(&commits),
        );
        let writer_thread = std::thread::Builder::new()
            .name("mailhook-sqlite-writer".to_owned())
            .spawn(move || writer.run())
            .map_err(|err| {
                Error::Unavailable(format!("cannot start the sqlite writer thread: {err}"))
            })?;

        Ok(SqliteStore {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                writes: Some(writes),
                writer_thread: Mutex::new(Some(writer_thread)),
                readers: Mutex::new(readers),
                read_permits: Arc::new(Semaphore::new(read_connections)),
                closed: AtomicBool::new(false),
                commits,
                claims: AtomicU64::new(0),
            }),
        })
    }

    /// Write transactions committed so far by the writer thread (group commit shows as far
    /// fewer commits than write requests).
    pub fn commits(&self) -> u64 {
        self.inner.commits.load(Ordering::Relaxed)
    }

    fn check_open(&self) -> Result<()> {
        if self.inner.closed.load(Ordering::SeqCst) {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }

    /// What a caller hears when the writer is gone: `Closed` after `close()`, otherwise the
    /// thread died (it never should), which readiness must report.
    fn writer_gone(&self) -> Error {
        if self.inner.closed.load(Ordering::SeqCst) {
            Error::Closed
        } else {
            Error::Unavailable("the sqlite writer thread has stopped".to_owned())
        }
    }

    /// Queues a write for the writer thread and waits for its transaction to commit.
    async fn write<O: Op>(&self, op: O) -> Result<O::Output> {
        self.check_open()?;
        let writes = self.inner.writes.as_ref().ok_or(Error::Closed)?;
        let (reply, replied) = oneshot::channel();
        writes
            .send(Msg::Write(Box::new(Request::new(op, reply))))
            .await
            .map_err(|_| self.writer_gone())?;
        // The reply sender is dropped unanswered only when the writer stops with the request
        // still queued.
        let (answer, op) = replied.await.map_err(|_| self.writer_gone())?;
        drop(op);
        answer
    }

    /// Runs a query on a pooled read-only connection, off the async worker threads.
    async fn read<T, F>(&self, query: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        self.check_open()?;
        let permit = Arc::clone(&self.inner.read_permits)
            .acquire_owned()
            .await
            .map_err(|_| Error::Closed)?;
        let inner = Arc::clone(&self.inner);
        let joined = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let mut conn = inner.checkout_reader()?;
            let result = query(&mut conn);
            inner.checkin_reader(conn);
            result
        })
        .await;
        match joined {
            Ok(result) => result.map_err(classify),
            Err(err) => Err(Error::Unavailable(format!(
                "a store read task failed: {err}"
            ))),
        }
    }
}

impl Inner {
    fn checkout_reader(&self) -> Result<Connection> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(Error::Closed);
        }
        let pooled = self
            .readers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        match pooled {
            Some(conn) => Ok(conn),
            // The permit guarantees a pooled connection unless a read panicked while holding
            // one; replace it rather than fail every read after.
            None => schema::open_reader(&self.path),
        }
    }

    fn checkin_reader(&self, conn: Connection) {
        if !self.closed.load(Ordering::SeqCst) {
            self.readers
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(conn);
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Dropping the only sender ends the writer once it has run what is queued. Joining
        // here (briefly blocking, at most one transaction) means the file is closed when the
        // last handle is gone, so a reopen right after sees a quiet database.
        self.writes.take();
        let thread = self
            .writer_thread
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(thread) = thread
            && thread.join().is_err()
        {
            tracing::error!("the sqlite writer thread panicked");
        }
    }
}

/// The wall clock in Unix milliseconds; the store stamps `accepted_at` with it. A clock set
/// before 1970 reads as 0 rather than failing intake.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Turns SQLite errors that mean "not now" into `Unavailable` and damaged files into
/// `Corrupt`, so callers can tell a full disk (503, retry) from a bug.
fn classify(err: Error) -> Error {
    let Error::Sqlite(inner) = err else {
        return err;
    };
    match inner.sqlite_error_code() {
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => {
            Error::Corrupt(inner.to_string())
        }
        Some(code) if is_unavailable(code) => Error::Unavailable(inner.to_string()),
        _ => Error::Sqlite(inner),
    }
}

/// Whether a SQLite error code means the disk or the file refuses service (callers answer
/// 503 and retry later) rather than a bug.
fn is_unavailable(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::DiskFull
            | ErrorCode::SystemIoFailure
            | ErrorCode::ReadOnly
            | ErrorCode::DatabaseBusy
            | ErrorCode::DatabaseLocked
            | ErrorCode::CannotOpen
            | ErrorCode::PermissionDenied
            | ErrorCode::FileLockingProtocolFailed
            | ErrorCode::OutOfMemory
    )
}

#[async_trait]
impl Store for SqliteStore {
    async fn insert_events(&self, events: Vec<NewEvent>) -> Result<InsertOutcome> {
        if events.is_empty() {
            self.check_open()?;
            return Ok(InsertOutcome::with_capacity(0));
        }
        self.write(ops::Insert { events }).await
    }

    async fn claim_due(&self, now_ms: i64, limit: usize, lease_ms: i64) -> Result<Vec<Job>> {
        if limit == 0 {
            self.check_open()?;
            return Ok(Vec::new());
        }
        let seq = self.inner.claims.fetch_add(1, Ordering::Relaxed);
        self.write(ops::Claim {
            now_ms,
            limit,
            lease_ms,
            retry_share: lanes::retry_share(limit, seq),
        })
        .await
    }

    async fn complete(&self, completions: Arc<[Completion]>) -> Result<()> {
        if completions.is_empty() {
            return self.check_open();
        }
        self.write(ops::Complete { completions }).await
    }

    async fn release(&self, leases: Vec<Lease>) -> Result<()> {
        if leases.is_empty() {
            return self.check_open();
        }
        self.write(ops::Release { leases }).await
    }

    async fn prune(&self, settled_before_ms: i64, batch_max: usize) -> Result<usize> {
        if batch_max == 0 {
            self.check_open()?;
            return Ok(0);
        }
        self.write(ops::Prune {
            settled_before_ms,
            batch_max,
        })
        .await
    }

    async fn next_due_at(&self) -> Result<Option<i64>> {
        // On the writer thread: only it knows which events are claimed.
        self.write(ops::NextDueAt { now_ms: now_ms() }).await
    }

    async fn queue_stats(&self) -> Result<QueueStats> {
        self.read(reads::queue_stats).await
    }

    async fn delivery_times(
        &self,
        account: &AccountId,
        msg_ids: Vec<String>,
    ) -> Result<HashMap<String, i64>> {
        let account = account.clone();
        self.read(move |conn| reads::delivery_times(conn, &account, &msg_ids))
            .await
    }

    async fn get_settings(&self, account: &AccountId) -> Result<Option<StoredSettings>> {
        let account = account.clone();
        self.read(move |conn| reads::settings(conn, &account)).await
    }

    async fn put_settings(
        &self,
        account: &AccountId,
        settings: WebhookSettings,
        new_secret: Secret,
        now_ms: i64,
    ) -> Result<StoredSettings> {
        self.write(ops::PutSettings {
            account: account.clone(),
            settings,
            new_secret,
            now_ms,
        })
        .await
    }

    async fn rotate_secret(
        &self,
        account: &AccountId,
        new_secret: Secret,
        grace_until_ms: i64,
        now_ms: i64,
    ) -> Result<Option<StoredSettings>> {
        self.write(ops::RotateSecret {
            account: account.clone(),
            new_secret,
            grace_until_ms,
            now_ms,
        })
        .await
    }

    async fn message(&self, account: &AccountId, msg_id: &str) -> Result<Vec<EventRecord>> {
        let account = account.clone();
        let msg_id = msg_id.to_owned();
        self.read(move |conn| reads::message(conn, &account, &msg_id))
            .await
    }

    async fn event(&self, account: &AccountId, event_id: &str) -> Result<Option<EventRecord>> {
        let account = account.clone();
        let event_id = event_id.to_owned();
        self.read(move |conn| reads::event(conn, &account, &event_id))
            .await
    }

    async fn failures(&self, account: &AccountId, limit: usize) -> Result<Vec<EventRecord>> {
        let account = account.clone();
        self.read(move |conn| reads::failures(conn, &account, limit))
            .await
    }

    async fn replay(
        &self,
        account: &AccountId,
        event_ids: Option<Vec<String>>,
        now_ms: i64,
    ) -> Result<Vec<String>> {
        self.write(ops::Replay {
            account: account.clone(),
            event_ids,
            now_ms,
        })
        .await
    }

    async fn stats(&self, account: Option<&AccountId>) -> Result<Stats> {
        let account = account.cloned();
        self.read(move |conn| reads::stats(conn, account.as_ref()))
            .await
    }

    async fn ping(&self) -> Result<()> {
        self.read(reads::ping).await?;
        self.write(ops::Ping).await
    }

    async fn close(&self) -> Result<()> {
        if self.inner.closed.swap(true, Ordering::SeqCst) {
            return Err(Error::Closed);
        }
        self.inner.read_permits.close();
        self.inner
            .readers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        if let Some(writes) = &self.inner.writes {
            // The writer runs everything queued before the shutdown message, then stops;
            // requests that slip in behind it are dropped and their callers get `Closed`.
            let (ack, acked) = oneshot::channel();
            if writes.send(Msg::Shutdown(ack)).await.is_ok() {
                let _ = acked.await;
            }
        }
        let thread = self
            .inner
            .writer_thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(thread) = thread {
            let joined = tokio::task::spawn_blocking(move || thread.join()).await;
            if !matches!(joined, Ok(Ok(()))) {
                return Err(Error::Unavailable(
                    "the sqlite writer thread panicked".to_owned(),
                ));
            }
        }
        Ok(())
    }
}
