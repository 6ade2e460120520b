//! Claims of the embedded store, held in memory by the writer thread.
//!
//! Why in memory: one process owns the SQLite file (the data directory is locked), so a
//! lease only has to be seen by this process, and a crash ends every lease by itself. A claim
//! written to the row (lease end as `due_at_ms`, a new token) cost a rewrite of the row and
//! of its due-index entry per event: ~17% of the gateway's CPU in an end-to-end bench (perf).
//! Held here, a claim is a read of the due index that skips held events.
//!
//! Only the writer thread touches this table, between the same statements that read and write
//! the rows, so a claim always sees every completion committed before it, and a completion
//! never races a claim. The writer keeps a copy while a transaction runs and puts it back when
//! the transaction fails, so the table never says more than the database does.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use mailhook_core::EventType;

use crate::EventState;

/// What an event is counted as in `event_counts` (`counts.rs`). A claim keeps it so that the
/// event's completion can move the count without reading the row again: nothing but a
/// replay, which revokes the claim, changes the state of a held event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Counted {
    /// The account, as an id of [`Accounts`].
    pub account: u32,
    pub event_type: EventType,
    pub test: bool,
    /// The state it is counted in (for a claim: the state it was claimed in).
    pub state: EventState,
}

/// One held claim: the token a completion or release must present, when it ends, and what
/// the event is counted as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Held {
    token: i64,
    until_ms: i64,
    claimed: Counted,
}

/// Account names by small ids, so a held claim stays a few bytes and the lease table (cloned
/// per transaction) holds no strings. Only grows: an account seen once keeps its id.
#[derive(Debug, Default)]
pub(super) struct Accounts {
    names: Vec<Box<str>>,
    ids: HashMap<Box<str>, u32>,
}

impl Accounts {
    pub(super) fn id(&mut self, name: &str) -> u32 {
        if let Some(id) = self.ids.get(name) {
            return *id;
        }
        let id = u32::try_from(self.names.len()).expect("fewer than 2^32 accounts");
        self.names.push(name.into());
        self.ids.insert(name.into(), id);
        id
    }

    pub(super) fn name(&self, id: u32) -> &str {
        &self.names[id as usize]
    }
}

#[derive(Debug, Clone, Default)]
pub(super) struct Leases {
    held: HashMap<i64, Held, BuildHasherDefault<IdHasher>>,
    /// The last token handed out. Tokens only have to tell this process's claims apart (a
    /// completion from a process that died cannot arrive), so they count up from 1 per open.
    last_token: i64,
}

impl Leases {
    /// Whether event `id` is claimed and its lease has not ended at `now_ms`.
    pub(super) fn is_held(&self, id: i64, now_ms: i64) -> bool {
        self.held.get(&id).is_some_and(|h| h.until_ms > now_ms)
    }

    /// Claims event `id` until `until_ms` and returns the new token; a claim whose lease
    /// ended is replaced, so its late completion is ignored.
    pub(super) fn grant(&mut self, id: i64, until_ms: i64, claimed: Counted) -> i64 {
        self.last_token += 1;
        let token = self.last_token;
        self.held.insert(
            id,
            Held {
                token,
                until_ms,
                claimed,
            },
        );
        token
    }

    /// Ends the claim of `id` if `token` is its latest; false when it is not (the lease ran
    /// out and another claim took the event) or there is none (completed or released already).
    pub(super) fn end(&mut self, id: i64, token: i64) -> bool {
        self.end_claim(id, token).is_some()
    }

    /// As [`Leases::end`], answering with what the event was claimed as.
    pub(super) fn end_claim(&mut self, id: i64, token: i64) -> Option<Counted> {
        match self.held.get(&id) {
            Some(held) if held.token == token => self.held.remove(&id).map(|held| held.claimed),
            _ => None,
        }
    }

    /// Ends the claim of `id` whoever holds it (a replay starts the event over).
    pub(super) fn revoke(&mut self, id: i64) {
        self.held.remove(&id);
    }

    /// When the first held lease ends: the event comes due again then.
    pub(super) fn first_end_ms(&self) -> Option<i64> {
        self.held.values().map(|h| h.until_ms).min()
    }
}

/// Hashes a row id with one multiplication. Ids are ours (not chosen by a client, so no
/// flooding to defend against) and every claim looks up each id it walks past: SipHash was
/// a visible share of a claim's cost.
#[derive(Debug, Default, Clone, Copy)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(byte)).wrapping_mul(SPREAD);
        }
    }

    fn write_i64(&mut self, id: i64) {
        self.0 = (id as u64).wrapping_mul(SPREAD);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// 2^64 / golden ratio: consecutive ids land far apart in the table (Fibonacci hashing).
const SPREAD: u64 = 0x9E37_79B9_7F4A_7C15;

#[cfg(test)]
mod tests {
    use mailhook_core::EventType;

    use super::{Accounts, Counted, Leases};
    use crate::EventState;

    fn counted(state: EventState) -> Counted {
        Counted {
            account: 0,
            event_type: EventType::Open,
            test: false,
            state,
        }
    }

    #[test]
    fn accounts_get_one_id_each() {
        let mut accounts = Accounts::default();
        let acme = accounts.id("acme");
        let other = accounts.id("other");
        assert_ne!(acme, other);
        assert_eq!(accounts.id("acme"), acme);
        assert_eq!(accounts.name(other), "other");
    }

    #[test]
    fn a_lease_is_held_until_it_ends_and_only_its_latest_token_ends_it() {
        let mut leases = Leases::default();
        let first = leases.grant(7, 1_000, counted(EventState::Pending));
        assert!(leases.is_held(7, 999));
        assert!(!leases.is_held(7, 1_000), "ended at its end time");
        assert!(!leases.is_held(8, 0));
        // Counted again after the end: the first claim's token no longer counts.
        let second = leases.grant(7, 2_000, counted(EventState::Failed));
        assert!(second > first);
        assert!(!leases.end(7, first));
        assert!(leases.is_held(7, 1_500));
        assert_eq!(leases.first_end_ms(), Some(2_000));
        assert_eq!(
            leases.end_claim(7, second),
            Some(counted(EventState::Failed)),
            "the state it was claimed in"
        );
        assert!(!leases.end(7, second), "ended once");
        assert_eq!(leases.first_end_ms(), None);
        leases.grant(9, 5, counted(EventState::Pending));
        leases.revoke(9);
        assert!(!leases.is_held(9, 0));
    }
}
