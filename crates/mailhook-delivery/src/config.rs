//! The `[delivery]` config section: the seed's retry rules plus the engine's own limits.

use std::time::Duration;

use mailhook_core::breaker::BreakerPolicy;
use mailhook_core::chain::RetryPolicy;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// Whether this node delivers. `false` makes an intake-only node: events are accepted
    /// and stored, and nodes with delivery on (sharing the PostgreSQL store) push them.
    pub enabled: bool,
    /// Retries after the first attempt on each address (seed: 3, so 4 attempts).
    pub retries_per_address: u32,
    /// Delay before retry 1, 2, 3 on the same address; the last one repeats.
    #[serde(with = "durations")]
    pub retry_backoff: Vec<Duration>,
    /// A receiver has this long to answer 2xx, body included.
    #[serde(with = "humantime_serde")]
    pub attempt_timeout: Duration,
    /// Connecting (TCP) must finish within this, inside `attempt_timeout`.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// After the whole chain failed: re-run it at these delays; `[]` = the seed's behaviour
    /// (log the failure and keep the event for replay, state `dead`).
    #[serde(with = "durations")]
    pub recovery_schedule: Vec<Duration>,
    /// Longest `Retry-After` (429/503) honoured.
    #[serde(with = "humantime_serde")]
    pub retry_after_max: Duration,
    /// Consecutive failed attempts to one address (across events) that open its circuit.
    /// Must be above 1 + `retries_per_address`, so one failing event never trips it.
    pub circuit_failure_threshold: u32,
    /// How long an open circuit skips its address before one probe.
    #[serde(with = "humantime_serde")]
    pub circuit_cooldown: Duration,
    /// Events claimed and being delivered at once, across all addresses: those in flight and
    /// those waiting in memory for a slot of their address.
    pub concurrency: usize,
    /// Requests in flight to one address at once; as many more events may wait for a slot,
    /// the rest are deferred in the store (see `address.rs`: head-of-line isolation).
    pub in_flight_per_address_max: usize,
    /// Events claimed from the store in one go.
    pub claim_batch_max: usize,
    /// How long a claim holds an event; after it, another claim may take it over.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// Longest sleep of an idle dispatcher between looks at the store.
    #[serde(with = "humantime_serde")]
    pub idle_poll: Duration,
    /// Account settings are cached this long; a change through another node shows within it.
    #[serde(with = "humantime_serde")]
    pub settings_ttl: Duration,
    /// Bytes of a receiver's response body read (to keep the connection); more drops it.
    pub response_bytes_max: usize,
    /// Keep-alive connections kept open per receiver (scheme, host and port) between
    /// pushes; a connection past this is closed once its answer is read. 0 closes each
    /// connection after its push.
    pub idle_connections_per_address_max: usize,
    /// How long a keep-alive connection may sit unused before it is closed.
    #[serde(with = "humantime_serde")]
    pub idle_connection_timeout: Duration,
    /// Longest a "Simulate Send Test" request waits for its push's outcome before answering
    /// with what happened so far (`timed_out: true`). At most 60 s (the contract).
    #[serde(with = "humantime_serde")]
    pub test_timeout: Duration,
}

/// The contract's cap on how long a test push request waits.
pub const TEST_TIMEOUT_MAX: Duration = Duration::from_secs(60);

impl Default for DeliveryConfig {
    fn default() -> DeliveryConfig {
        let retry = RetryPolicy::default();
        let breaker = BreakerPolicy::default();
        DeliveryConfig {
            enabled: true,
            retries_per_address: retry.retries_per_address,
            retry_backoff: retry.retry_backoff,
            attempt_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            recovery_schedule: retry.recovery_schedule,
            retry_after_max: retry.retry_after_max,
            circuit_failure_threshold: breaker.failure_threshold,
            circuit_cooldown: breaker.cooldown,
            concurrency: 1024,
            in_flight_per_address_max: 64,
            claim_batch_max: 512,
            lease: Duration::from_secs(300),
            idle_poll: Duration::from_secs(1),
            settings_ttl: Duration::from_secs(1),
            response_bytes_max: 64 * 1024,
            idle_connections_per_address_max: 256,
            idle_connection_timeout: Duration::from_secs(60),
            test_timeout: TEST_TIMEOUT_MAX,
        }
    }
}

impl DeliveryConfig {
    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            retries_per_address: self.retries_per_address,
            retry_backoff: self.retry_backoff.clone(),
            recovery_schedule: self.recovery_schedule.clone(),
            retry_after_max: self.retry_after_max,
        }
    }

    pub fn breaker_policy(&self) -> BreakerPolicy {
        BreakerPolicy {
            failure_threshold: self.circuit_failure_threshold,
            cooldown: self.circuit_cooldown,
        }
    }

    /// Checks the values that cannot be expressed in the types; each message names its key.
    pub fn validate(&self) -> Result<(), String> {
        let checks = [
            (
                self.retry_backoff.is_empty() && self.retries_per_address > 0,
                "delivery.retry_backoff must list at least one delay when retries_per_address > 0"
                    .to_owned(),
            ),
            (
                self.attempt_timeout.is_zero(),
                "delivery.attempt_timeout must be above 0".to_owned(),
            ),
            (
                self.connect_timeout.is_zero(),
                "delivery.connect_timeout must be above 0".to_owned(),
            ),
            (
                self.circuit_failure_threshold <= 1 + self.retries_per_address,
                format!(
                    "delivery.circuit_failure_threshold = {} must be above 1 + retries_per_address = {}, \
                     or one failing event alone would open the circuit",
                    self.circuit_failure_threshold,
                    1 + self.retries_per_address
                ),
            ),
            (
                self.concurrency == 0,
                "delivery.concurrency must be at least 1".to_owned(),
            ),
            (
                self.in_flight_per_address_max == 0,
                "delivery.in_flight_per_address_max must be at least 1".to_owned(),
            ),
            (
                self.claim_batch_max == 0,
                "delivery.claim_batch_max must be at least 1".to_owned(),
            ),
            (
                self.lease <= self.attempt_timeout,
                "delivery.lease must be longer than delivery.attempt_timeout".to_owned(),
            ),
            (
                self.idle_poll.is_zero(),
                "delivery.idle_poll must be above 0".to_owned(),
            ),
            (
                self.idle_connection_timeout.is_zero(),
                "delivery.idle_connection_timeout must be above 0 (to keep no connections \
                 open, set delivery.idle_connections_per_address_max = 0)"
                    .to_owned(),
            ),
            (
                self.test_timeout.is_zero() || self.test_timeout > TEST_TIMEOUT_MAX,
                format!(
                    "delivery.test_timeout = {} must be above 0 and at most 60s",
                    humantime_serde::re::humantime::format_duration(self.test_timeout)
                ),
            ),
        ];
        match checks.into_iter().find(|(bad, _)| *bad) {
            Some((_, message)) => Err(message),
            None => Ok(()),
        }
    }
}

/// `Vec<Duration>` as a list of strings (`["1s", "5s"]`).
mod durations {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(value: &[Duration], s: S) -> Result<S::Ok, S::Error> {
        let texts: Vec<String> = value
            .iter()
            .map(|d| humantime_serde::re::humantime::format_duration(*d).to_string())
            .collect();
        texts.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|t| {
                humantime_serde::re::humantime::parse_duration(t).map_err(|err| {
                    serde::de::Error::custom(format!("invalid duration `{t}`: {err}"))
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_the_threshold_rule_is_checked() {
        DeliveryConfig::default().validate().unwrap();
        let bad = DeliveryConfig {
            circuit_failure_threshold: 4,
            ..DeliveryConfig::default()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .contains("circuit_failure_threshold")
        );
        for test_timeout in [Duration::ZERO, Duration::from_secs(61)] {
            let bad = DeliveryConfig {
                test_timeout,
                ..DeliveryConfig::default()
            };
            assert!(
                bad.validate()
                    .unwrap_err()
                    .contains("delivery.test_timeout")
            );
        }
        let short = DeliveryConfig {
            test_timeout: Duration::from_millis(500),
            ..DeliveryConfig::default()
        };
        short.validate().unwrap();
        let never_idle = DeliveryConfig {
            idle_connection_timeout: Duration::ZERO,
            ..DeliveryConfig::default()
        };
        assert!(
            never_idle
                .validate()
                .unwrap_err()
                .contains("delivery.idle_connection_timeout")
        );
    }
}
