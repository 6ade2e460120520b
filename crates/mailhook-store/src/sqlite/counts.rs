//! Event counts by account, type, test flag and state (`event_counts`), kept by the writer.
//!
//! Why a table of counts instead of an index over `events`: the console's overview counts
//! events by type and state. An index on `(account, type, test, state)` answered it, but every
//! completion moved the event's entry (a delete and an insert in a B-tree as large as the
//! table), and every insert added one: ~4% of the gateway's CPU end to end (A/B, 100k events:
//! 3.57 -> 3.44 CPU-s/100k without the index). Here each write notes its change in memory,
//! and the transaction writes one upsert per changed (account, type, test, state) before it
//! commits: a few rows of a tiny table, whatever the number of events.
//!
//! The writer thread owns this, like the leases: the changes of a transaction that fails are
//! dropped with it, so the table always agrees with the rows it counts.

use std::collections::HashMap;

use mailhook_core::EventType;
use rusqlite::{Connection, params};

use crate::{EventState, Result};

/// Index of a state in a row of counts (its place in `EventState::ALL`).
fn slot(state: EventState) -> usize {
    match state {
        EventState::Pending => 0,
        EventState::Delivered => 1,
        EventState::Failed => 2,
        EventState::Dead => 3,
        EventState::Skipped => 4,
    }
}

/// The changes to `event_counts` not yet written.
#[derive(Debug, Default)]
pub(super) struct Counts {
    /// By account, then by (type, test): the change of each state's count.
    changed: HashMap<String, HashMap<(EventType, bool), [i64; 5]>>,
}

impl Counts {
    /// Counts `by` more (or fewer, when negative) events of this kind in `state`.
    pub(super) fn add(
        &mut self,
        account: &str,
        event_type: EventType,
        test: bool,
        state: EventState,
        by: i64,
    ) {
        // Looked up by `&str` first: the account is copied only once per transaction.
        let of_account = match self.changed.get_mut(account) {
            Some(of_account) => of_account,
            None => self.changed.entry(account.to_owned()).or_default(),
        };
        of_account.entry((event_type, test)).or_default()[slot(state)] += by;
    }

    /// Moves one event of this kind from state `from` to `to`.
    pub(super) fn moved(
        &mut self,
        account: &str,
        event_type: EventType,
        test: bool,
        from: EventState,
        to: EventState,
    ) {
        if from != to {
            self.add(account, event_type, test, from, -1);
            self.add(account, event_type, test, to, 1);
        }
    }

    /// Writes the changes into `event_counts` (inside the caller's transaction) and forgets
    /// them.
    pub(super) fn write(&mut self, conn: &Connection) -> Result<()> {
        if self.changed.is_empty() {
            return Ok(());
        }
        let mut upsert = conn.prepare_cached(
            "INSERT INTO event_counts (account, type, test, state, n) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (account, type, test, state) DO UPDATE SET n = n + excluded.n",
        )?;
        for (account, kinds) in self.changed.drain() {
            for ((event_type, test), by_state) in kinds {
                for state in EventState::ALL {
                    let by = by_state[slot(state)];
                    if by != 0 {
                        upsert.execute(params![
                            account,
                            event_type.as_str(),
                            test,
                            state.as_str(),
                            by
                        ])?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Drops the changes of a transaction that did not commit.
    pub(super) fn discard(&mut self) {
        self.changed.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::slot;
    use crate::EventState;

    #[test]
    fn each_state_has_its_own_slot_in_all_order() {
        for (i, state) in EventState::ALL.into_iter().enumerate() {
            assert_eq!(slot(state), i, "{state:?}");
        }
    }
}
