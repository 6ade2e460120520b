//! The failover chain as a pure state machine: after each attempt, where and when the next
//! one goes, or whether the event is delivered, failed for now, or dead.
//!
//! Seed rules: primary first, then backup-1, backup-2; each address gets one attempt plus up
//! to `retries_per_address` retries, `retry_backoff` apart. When the whole chain fails the
//! event is `failed` and `recovery_schedule` re-runs the chain later; after the last round it
//! is `dead`.

use std::time::Duration;

/// The retry rules, from the `[delivery]` config section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt on each address (the seed's 3).
    pub retries_per_address: u32,
    /// Delay before retry 1, 2, 3... on the same address; the last entry repeats.
    pub retry_backoff: Vec<Duration>,
    /// After the whole chain failed: re-run it after each of these delays; `[]` = never.
    pub recovery_schedule: Vec<Duration>,
    /// Longest `Retry-After` from a receiver that is honoured.
    pub retry_after_max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            retries_per_address: 3,
            retry_backoff: vec![
                Duration::from_secs(1),
                Duration::from_secs(5),
                Duration::from_secs(30),
            ],
            recovery_schedule: vec![
                Duration::from_secs(600),
                Duration::from_secs(3600),
                Duration::from_secs(6 * 3600),
            ],
            retry_after_max: Duration::from_secs(300),
        }
    }
}

/// Where an event stands in its chain. Persisted with the event, so a restart resumes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ChainPos {
    /// Index of the address to try: 0 primary, 1 backup-1, 2 backup-2.
    pub address: usize,
    /// Attempts already made on that address in this round.
    pub tries: u32,
    /// Recovery rounds already started (0 in the first run of the chain).
    pub round: u32,
}

/// What one attempt came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A 2xx within the attempt timeout.
    Delivered,
    /// Anything else. `retry_after` comes from a 429/503 `Retry-After`; `gone` says that
    /// retrying this address cannot help: a 410, or the SSRF guard refused its IP.
    Failed {
        retry_after: Option<Duration>,
        gone: bool,
    },
}

impl Outcome {
    pub const FAILED: Outcome = Outcome::Failed {
        retry_after: None,
        gone: false,
    };
}

/// What to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    Delivered,
    /// Attempt again at `pos` after `delay` (zero: at once).
    Attempt {
        pos: ChainPos,
        delay: Duration,
    },
    /// Every address failed: the event is `failed`; the chain runs again from the primary
    /// after `retry_in`, as round `pos.round`.
    ChainFailed {
        pos: ChainPos,
        retry_in: Duration,
    },
    /// Every address failed and no recovery round is left.
    Dead,
}

impl RetryPolicy {
    /// The delay before retry number `retry` (1-based) on the same address.
    pub fn backoff(&self, retry: u32) -> Duration {
        let i = (retry.max(1) - 1) as usize;
        self.retry_backoff
            .get(i)
            .or(self.retry_backoff.last())
            .copied()
            .unwrap_or(Duration::ZERO)
    }

    /// Decides the next step after an attempt at `pos` ended with `outcome`.
    /// `addresses` is the length of the account's chain (1 to 3).
    pub fn after_attempt(&self, pos: ChainPos, addresses: usize, outcome: Outcome) -> Next {
        debug_assert!(
            pos.address < addresses,
            "attempted address {} of {addresses}",
            pos.address
        );
        let Outcome::Failed { retry_after, gone } = outcome else {
            return Next::Delivered;
        };
        let tries = pos.tries + 1;
        if !gone && tries <= self.retries_per_address {
            let mut delay = self.backoff(tries);
            if let Some(asked) = retry_after {
                delay = delay.max(asked.min(self.retry_after_max));
            }
            return Next::Attempt {
                pos: ChainPos { tries, ..pos },
                delay,
            };
        }
        self.next_address(pos, addresses)
    }

    /// Moves past the address at `pos`: to the next one at once, or the chain has failed.
    pub fn next_address(&self, pos: ChainPos, addresses: usize) -> Next {
        if pos.address + 1 < addresses {
            return Next::Attempt {
                pos: ChainPos {
                    address: pos.address + 1,
                    tries: 0,
                    round: pos.round,
                },
                delay: Duration::ZERO,
            };
        }
        match self.recovery_schedule.get(pos.round as usize) {
            Some(&retry_in) => Next::ChainFailed {
                pos: ChainPos {
                    address: 0,
                    tries: 0,
                    round: pos.round + 1,
                },
                retry_in,
            },
            None => Next::Dead,
        }
    }
}

/// Picks the address to attempt, starting at `from`, skipping addresses whose circuit is open.
///
/// `allows(i)` says whether address `i`'s circuit lets an attempt through. When every address
/// of the account is open, the chain is still tried in order rather than failed unattempted;
/// when only the remaining ones are open (an earlier, healthy one already failed this event),
/// `None`: the chain has failed.
pub fn choose_address(
    from: usize,
    addresses: usize,
    mut allows: impl FnMut(usize) -> bool,
) -> Option<usize> {
    if let Some(i) = (from..addresses).find(|&i| allows(i)) {
        return Some(i);
    }
    // `allows` may take a half-open probe slot, so only ask about the earlier ones now.
    let any_earlier_closed = (0..from.min(addresses)).any(&mut allows);
    (!any_earlier_closed && from < addresses).then_some(from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            retries_per_address: 3,
            retry_backoff: vec![
                Duration::from_secs(1),
                Duration::from_secs(5),
                Duration::from_secs(30),
            ],
            recovery_schedule: vec![Duration::from_secs(600), Duration::from_secs(3600)],
            retry_after_max: Duration::from_secs(120),
        }
    }

    fn pos(address: usize, tries: u32, round: u32) -> ChainPos {
        ChainPos {
            address,
            tries,
            round,
        }
    }

    fn attempt(p: ChainPos, secs: u64) -> Next {
        Next::Attempt {
            pos: p,
            delay: Duration::from_secs(secs),
        }
    }

    #[test]
    fn table() {
        let p = policy();
        let fail = Outcome::FAILED;
        let after = |retry_after: u64| Outcome::Failed {
            retry_after: Some(Duration::from_secs(retry_after)),
            gone: false,
        };
        let gone = Outcome::Failed {
            retry_after: None,
            gone: true,
        };
        let cases = [
            (pos(0, 0, 0), 3, Outcome::Delivered, Next::Delivered),
            (pos(0, 0, 0), 3, fail, attempt(pos(0, 1, 0), 1)),
            (pos(0, 1, 0), 3, fail, attempt(pos(0, 2, 0), 5)),
            (pos(0, 2, 0), 3, fail, attempt(pos(0, 3, 0), 30)),
            // fourth failure on the primary: backup-1 at once
            (pos(0, 3, 0), 3, fail, attempt(pos(1, 0, 0), 0)),
            (
                pos(2, 3, 0),
                3,
                fail,
                Next::ChainFailed {
                    pos: pos(0, 0, 1),
                    retry_in: Duration::from_secs(600),
                },
            ),
            (
                pos(0, 3, 1),
                1,
                fail,
                Next::ChainFailed {
                    pos: pos(0, 0, 2),
                    retry_in: Duration::from_secs(3600),
                },
            ),
            (pos(0, 3, 2), 1, fail, Next::Dead),
            // Retry-After stretches the backoff, within the cap, and never shortens it
            (pos(0, 0, 0), 3, after(60), attempt(pos(0, 1, 0), 60)),
            (pos(0, 0, 0), 3, after(9999), attempt(pos(0, 1, 0), 120)),
            (pos(0, 2, 0), 3, after(2), attempt(pos(0, 3, 0), 30)),
            // 410 moves on without retrying
            (pos(0, 0, 0), 2, gone, attempt(pos(1, 0, 0), 0)),
        ];
        for (at, n, outcome, expected) in cases {
            assert_eq!(
                p.after_attempt(at, n, outcome),
                expected,
                "{at:?} of {n}, {outcome:?}"
            );
        }
    }

    #[test]
    fn each_address_gets_one_plus_retries_attempts() {
        for retries in 0..5 {
            let p = RetryPolicy {
                retries_per_address: retries,
                recovery_schedule: vec![],
                ..policy()
            };
            let mut at = ChainPos::default();
            let mut per_address = [0u32; 3];
            loop {
                per_address[at.address] += 1;
                match p.after_attempt(at, 3, Outcome::FAILED) {
                    Next::Attempt { pos, .. } => at = pos,
                    Next::Dead => break,
                    other => panic!("unexpected {other:?}"),
                }
            }
            assert_eq!(per_address, [retries + 1; 3]);
        }
    }

    #[test]
    fn choose_skips_open_circuits_but_never_fails_unattempted() {
        let open = |set: &'static [usize]| move |i: usize| !set.contains(&i);
        assert_eq!(choose_address(0, 3, open(&[])), Some(0));
        assert_eq!(choose_address(0, 3, open(&[0])), Some(1));
        assert_eq!(choose_address(0, 3, open(&[0, 1])), Some(2));
        // every address open: try them anyway, in order
        assert_eq!(choose_address(0, 3, open(&[0, 1, 2])), Some(0));
        assert_eq!(choose_address(1, 3, open(&[0, 1, 2])), Some(1));
        // the primary is healthy and already failed this event; the backups are open
        assert_eq!(choose_address(1, 3, open(&[1, 2])), None);
        assert_eq!(choose_address(3, 3, open(&[])), None);
    }
}
