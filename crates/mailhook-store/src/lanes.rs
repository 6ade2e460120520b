//! How one claim divides its batch between the first-attempt lane and the retry lane.

/// Share of a claim reserved for the retry lane: one in `RETRY_SHARE_DIVISOR`.
const RETRY_SHARE_DIVISOR: usize = 4;

/// The retry lane's share of a claim of `limit` events; the first-attempt lane gets the
/// rest, and either lane's unused share goes to the other.
///
/// `claim_seq` counts the store's claims. It spreads the remainder, so that when the
/// dispatcher claims one or two events at a time (a busy node refilling freed slots) the
/// retry lane still gets its quarter on average instead of nothing: with `limit = 1` every
/// fourth claim looks at the retry lane first.
pub(crate) fn retry_share(limit: usize, claim_seq: u64) -> usize {
    let spread = (claim_seq % RETRY_SHARE_DIVISOR as u64) as usize;
    limit.saturating_add(spread) / RETRY_SHARE_DIVISOR
}

#[cfg(test)]
mod tests {
    use super::retry_share;

    #[test]
    fn the_retry_lane_gets_a_quarter_on_average() {
        // (limit, retry shares over four consecutive claims)
        let cases: [(usize, [usize; 4]); 6] = [
            (0, [0, 0, 0, 0]),
            (1, [0, 0, 0, 1]),
            (2, [0, 0, 1, 1]),
            (4, [1, 1, 1, 1]),
            (8, [2, 2, 2, 2]),
            (512, [128, 128, 128, 128]),
        ];
        for (limit, expected) in cases {
            let shares: Vec<usize> = (0..4).map(|seq| retry_share(limit, seq)).collect();
            assert_eq!(shares, expected, "limit {limit}");
            assert!(shares.iter().all(|&s| s <= limit));
        }
        assert_eq!(retry_share(usize::MAX, 3), usize::MAX / 4);
    }
}
