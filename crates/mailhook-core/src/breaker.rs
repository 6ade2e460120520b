//! A circuit breaker per address: after `failure_threshold` consecutive failed attempts
//! (across events) the address is skipped for `cooldown`; then one probe is let through, and
//! its result closes the circuit or opens it again.

use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakerPolicy {
    /// Consecutive failed attempts that open the circuit. Above 1 + `retries_per_address`
    /// (checked at start), so one failing event alone never trips it.
    pub failure_threshold: u32,
    /// How long an open circuit skips its address before a probe.
    pub cooldown: Duration,
}

impl Default for BreakerPolicy {
    fn default() -> BreakerPolicy {
        BreakerPolicy {
            failure_threshold: 5,
            cooldown: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed {
        failures: u32,
    },
    /// Skipped until `until_ms`.
    Open {
        until_ms: i64,
    },
    /// One probe is out since `since_ms`; others skip the address meanwhile.
    HalfOpen {
        since_ms: i64,
    },
}

/// What a state change means to the operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Opened,
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Breaker {
    pub state: State,
}

impl Default for Breaker {
    fn default() -> Breaker {
        Breaker {
            state: State::Closed { failures: 0 },
        }
    }
}

impl Breaker {
    /// Whether an attempt may go to this address now. Taking the half-open probe slot is a
    /// state change, so this is `&mut`. A probe that never reports back frees its slot after
    /// one more cool-down.
    pub fn allow(&mut self, policy: &BreakerPolicy, now_ms: i64) -> bool {
        let cooldown_ms = policy.cooldown.as_millis() as i64;
        match self.state {
            State::Closed { .. } => true,
            State::Open { until_ms } | State::HalfOpen { since_ms: until_ms }
                if now_ms >= until_ms =>
            {
                self.state = State::HalfOpen {
                    since_ms: now_ms + cooldown_ms,
                };
                true
            }
            State::Open { .. } | State::HalfOpen { .. } => false,
        }
    }

    /// Whether the circuit is open (skipping), without taking a probe slot.
    pub fn is_open(&self) -> bool {
        !matches!(self.state, State::Closed { .. })
    }

    pub fn record(
        &mut self,
        policy: &BreakerPolicy,
        success: bool,
        now_ms: i64,
    ) -> Option<Transition> {
        let cooldown_ms = policy.cooldown.as_millis() as i64;
        match (self.state, success) {
            (State::Closed { .. }, true) => {
                self.state = State::Closed { failures: 0 };
                None
            }
            (State::Closed { failures }, false) => {
                let failures = failures + 1;
                if failures >= policy.failure_threshold {
                    self.state = State::Open {
                        until_ms: now_ms + cooldown_ms,
                    };
                    Some(Transition::Opened)
                } else {
                    self.state = State::Closed { failures };
                    None
                }
            }
            (State::Open { .. } | State::HalfOpen { .. }, true) => {
                self.state = State::Closed { failures: 0 };
                Some(Transition::Closed)
            }
            (State::HalfOpen { .. }, false) => {
                self.state = State::Open {
                    until_ms: now_ms + cooldown_ms,
                };
                None
            }
            // A late failure from before the circuit opened: it stays open as it is.
            (State::Open { .. }, false) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_probes_after_cooldown_and_closes_on_success() {
        let policy = BreakerPolicy {
            failure_threshold: 3,
            cooldown: Duration::from_millis(100),
        };
        let mut b = Breaker::default();
        assert_eq!(b.record(&policy, false, 0), None);
        assert_eq!(b.record(&policy, false, 1), None);
        assert!(b.allow(&policy, 2));
        assert_eq!(b.record(&policy, false, 2), Some(Transition::Opened));
        assert!(!b.allow(&policy, 50), "open: skipped during cool-down");
        assert!(
            b.allow(&policy, 102),
            "first caller after cool-down is the probe"
        );
        assert!(!b.allow(&policy, 103), "only one probe at a time");
        assert_eq!(
            b.record(&policy, false, 110),
            None,
            "failed probe: open again"
        );
        assert!(!b.allow(&policy, 150));
        assert!(b.allow(&policy, 211));
        assert_eq!(b.record(&policy, true, 212), Some(Transition::Closed));
        assert!(b.allow(&policy, 213));
    }

    #[test]
    fn success_resets_the_count() {
        let policy = BreakerPolicy {
            failure_threshold: 2,
            cooldown: Duration::from_secs(1),
        };
        let mut b = Breaker::default();
        b.record(&policy, false, 0);
        b.record(&policy, true, 0);
        assert_eq!(b.record(&policy, false, 0), None);
        assert!(!b.is_open());
    }

    #[test]
    fn a_lost_probe_frees_its_slot_after_a_cooldown() {
        let policy = BreakerPolicy {
            failure_threshold: 1,
            cooldown: Duration::from_millis(100),
        };
        let mut b = Breaker::default();
        b.record(&policy, false, 0);
        assert!(b.allow(&policy, 100));
        assert!(!b.allow(&policy, 150));
        assert!(b.allow(&policy, 200));
    }
}
