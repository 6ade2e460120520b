//! The writer thread: takes write requests off the queue in groups and commits each group
//! in one transaction, so concurrent requests share one fsync.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rusqlite::{Connection, TransactionBehavior};
use tokio::sync::{mpsc, oneshot};

use super::classify;
use super::ops::Memory;
use super::ops::Op;
use crate::{Error, Result};

/// What the store sends to the writer thread.
pub(super) enum Msg {
    Write(Box<dyn Pending>),
    /// Run what is queued ahead, then stop; answered once the last transaction is done.
    Shutdown(oneshot::Sender<()>),
}

/// A queued write with its reply channel, its output type erased so one queue carries
/// every kind.
pub(super) trait Pending: Send {
    fn weight(&self) -> usize;
    fn durable(&self) -> bool;
    fn writes(&self) -> bool;
    /// Runs the write inside the current transaction, keeping its output for `finish`.
    fn apply(&mut self, conn: &Connection, memory: &mut Memory) -> Result<()>;
    /// Answers the caller: the kept output if its transaction committed, else the error.
    fn finish(self: Box<Self>, committed: Result<()>);
}

/// What the writer sends back: the outcome, and the op itself, so that the caller's thread,
/// not the writer's, frees it. An intake's events (their parsed JSON maps) took ~8% of the
/// writer thread's time to free, and the writer is the one thread every write waits for.
pub(super) type Answer<O> = (Result<<O as Op>::Output>, O);

pub(super) struct Request<O: Op> {
    op: O,
    reply: oneshot::Sender<Answer<O>>,
    output: Option<O::Output>,
}

impl<O: Op> Request<O> {
    pub(super) fn new(op: O, reply: oneshot::Sender<Answer<O>>) -> Request<O> {
        Request {
            op,
            reply,
            output: None,
        }
    }
}

impl<O: Op> Pending for Request<O> {
    fn weight(&self) -> usize {
        self.op.weight().max(1)
    }

    fn durable(&self) -> bool {
        O::DURABLE
    }

    fn writes(&self) -> bool {
        O::WRITES
    }

    fn apply(&mut self, conn: &Connection, memory: &mut Memory) -> Result<()> {
        self.output = Some(self.op.apply(conn, memory)?);
        Ok(())
    }

    fn finish(self: Box<Self>, committed: Result<()>) {
        let Request { op, reply, output } = *self;
        let answer = match (committed, output) {
            (Ok(()), Some(output)) => Ok(output),
            (Ok(()), None) => {
                debug_assert!(false, "a write committed without being applied");
                Err(Error::Unavailable(
                    "internal: write committed without being applied".to_owned(),
                ))
            }
            (Err(err), _) => Err(classify(err)),
        };
        // The caller may have given up waiting (its future dropped); the write stands anyway.
        let _ = reply.send((answer, op));
    }
}

pub(super) struct Writer {
    conn: Connection,
    queue: mpsc::Receiver<Msg>,
    events_per_commit_max: usize,
    commits: Arc<AtomicU64>,
    /// The `synchronous` level set on the connection: `Some(true)` for FULL; `None` when
    /// unknown after a failed switch.
    synchronous_full: Option<bool>,
    /// The claims held now; only this thread reads or changes them.
    memory: Memory,
}

impl Writer {
    pub(super) fn new(
        conn: Connection,
        queue: mpsc::Receiver<Msg>,
        events_per_commit_max: usize,
        commits: Arc<AtomicU64>,
    ) -> Writer {
        // `open_writer` left the connection at FULL.
        Writer {
            conn,
            queue,
            events_per_commit_max,
            commits,
            synchronous_full: Some(true),
            memory: Memory::default(),
        }
    }

    /// The thread's body: until the store is dropped or closed, take the first waiting
    /// request, gather what else is already queued, and commit it all at once.
    pub(super) fn run(mut self) {
        // A request that did not fit the previous group opens the next one.
        let mut carried: Option<Box<dyn Pending>> = None;
        loop {
            let first = match carried.take() {
                Some(pending) => Msg::Write(pending),
                None => match self.queue.blocking_recv() {
                    Some(msg) => msg,
                    None => return,
                },
            };
            let mut group = Vec::new();
            let mut weight = 0;
            let mut shutdown = None;
            match first {
                Msg::Write(pending) => {
                    weight += pending.weight();
                    group.push(pending);
                }
                Msg::Shutdown(ack) => shutdown = Some(ack),
            }
            while shutdown.is_none() && weight < self.events_per_commit_max {
                match self.queue.try_recv() {
                    Ok(Msg::Write(pending)) => {
                        if weight + pending.weight() > self.events_per_commit_max {
                            carried = Some(pending);
                            break;
                        }
                        weight += pending.weight();
                        group.push(pending);
                    }
                    Ok(Msg::Shutdown(ack)) => shutdown = Some(ack),
                    Err(_) => break,
                }
            }
            if !group.is_empty() {
                self.run_group(group);
            }
            if let Some(ack) = shutdown {
                // Drop the connection (closing the file) before the store hears we are done.
                drop(self);
                let _ = ack.send(());
                return;
            }
        }
    }

    fn run_group(&mut self, mut group: Vec<Box<dyn Pending>>) {
        if !group.iter().any(|p| p.writes()) {
            // Pings only: nothing to commit.
            for mut pending in group {
                let result = pending.apply(&self.conn, &mut self.memory);
                pending.finish(result);
            }
            return;
        }
        match self.transact(&mut group) {
            Ok(()) => {
                for pending in group {
                    pending.finish(Ok(()));
                }
            }
            Err(err) if group.len() == 1 => {
                if let Some(pending) = group.pop() {
                    pending.finish(Err(err));
                }
            }
            Err(err) => {
                // One bad request must not fail the others: retry each alone, so only the
                // culprit (or all, if the disk is the problem) gets an error.
                tracing::warn!(
                    error = %err,
                    requests = group.len(),
                    "group commit failed; retrying its requests one by one"
                );
                for mut pending in group {
                    let result = self.transact(std::slice::from_mut(&mut pending));
                    pending.finish(result);
                }
            }
        }
    }

    /// Runs requests in one transaction and commits it, or rolls it all back.
    fn transact(&mut self, group: &mut [Box<dyn Pending>]) -> Result<()> {
        let durable = group.iter().any(|p| p.durable());
        self.set_synchronous(durable)?;
        // The table of claims changes with the rows it describes, and the count changes are
        // written at commit: a transaction that fails leaves both as they were.
        let leases_before = self.memory.leases.clone();
        let done = Self::apply_and_commit(&mut self.conn, &mut self.memory, group);
        match done {
            Ok(()) => {
                self.commits.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                self.memory.leases = leases_before;
                self.memory.counts.discard();
            }
        }
        done
    }

    fn apply_and_commit(
        conn: &mut Connection,
        memory: &mut Memory,
        group: &mut [Box<dyn Pending>],
    ) -> Result<()> {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        for pending in group.iter_mut() {
            pending.apply(&tx, memory)?;
        }
        memory.counts.write(&tx)?;
        tx.commit()?;
        Ok(())
    }

    /// FULL syncs the WAL at commit (a 202 survives power loss); NORMAL syncs it only at
    /// checkpoints, enough for claims and completions, whose loss means a redelivery.
    fn set_synchronous(&mut self, full: bool) -> Result<()> {
        if self.synchronous_full != Some(full) {
            self.synchronous_full = None;
            self.conn
                .pragma_update(None, "synchronous", if full { "FULL" } else { "NORMAL" })?;
            self.synchronous_full = Some(full);
        }
        Ok(())
    }
}
