//! A token bucket: the per-account intake rate limit as pure arithmetic over `now`.

/// Holds up to `burst` tokens, refilled at `per_second`; one event costs one token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenBucket {
    tokens: f64,
    updated_ms: i64,
}

impl TokenBucket {
    pub fn full(burst: u32, now_ms: i64) -> TokenBucket {
        TokenBucket {
            tokens: f64::from(burst),
            updated_ms: now_ms,
        }
    }

    /// Takes `cost` tokens if there are enough: `Ok(())`, or `Err(wait_ms)`, the time until
    /// there will be. A cost above the burst can never pass; its wait is for a full bucket.
    pub fn take(&mut self, cost: u32, per_second: u32, burst: u32, now_ms: i64) -> Result<(), u64> {
        let elapsed_ms = (now_ms - self.updated_ms).max(0) as f64;
        self.tokens =
            (self.tokens + elapsed_ms * f64::from(per_second) / 1000.0).min(f64::from(burst));
        self.updated_ms = now_ms.max(self.updated_ms);
        let cost = f64::from(cost);
        if cost <= self.tokens {
            self.tokens -= cost;
            return Ok(());
        }
        let missing = cost.min(f64::from(burst)) - self.tokens;
        Err(((missing * 1000.0 / f64::from(per_second.max(1))).ceil() as u64).max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spends_the_burst_then_refills_at_the_rate() {
        let mut bucket = TokenBucket::full(100, 0);
        assert_eq!(bucket.take(60, 10, 100, 0), Ok(()));
        assert_eq!(bucket.take(40, 10, 100, 0), Ok(()));
        assert_eq!(
            bucket.take(1, 10, 100, 0),
            Err(100),
            "one token comes after 100 ms at 10/s"
        );
        assert_eq!(bucket.take(5, 10, 100, 200), Err(300));
        assert_eq!(bucket.take(5, 10, 100, 500), Ok(()));
        assert_eq!(
            bucket.take(1, 10, 100, 1_000_000),
            Ok(()),
            "refill stops at the burst"
        );
        assert_eq!(bucket.take(100, 10, 100, 1_000_000), Err(100));
    }
}
