//! `GET /v1/stats[?account=A]`: the console's live overview. Event counts by type and state
//! come from the store (all time, so they survive restarts, unlike the process's metrics);
//! the queue figures are the ones `/metrics` exports as gauges.

use http::{Response, StatusCode};
use mailhook_core::AccountId;
use mailhook_core::time::format_rfc3339_ms;
use mailhook_delivery::now_ms;
use mailhook_store::StateCounts;
use serde_json::{Value, json};

use super::{Api, Result};
use crate::response::{Body, json};

impl Api {
    pub(super) async fn stats(&self, account: Option<&AccountId>) -> Result<Response<Body>> {
        let stats = self.store.stats(account).await?;
        let queue = self.store.queue_stats().await?;
        let now = now_ms();
        let mut totals = StateCounts::default();
        let types: Vec<Value> = stats
            .by_type
            .iter()
            .map(|(event_type, counts)| {
                add(&mut totals, counts);
                let mut row = counts_json(counts);
                row["type"] = json!(event_type.as_str());
                row
            })
            .collect();
        let failures = totals.failed + totals.dead + stats.tests.failed + stats.tests.dead;
        Ok(json(
            StatusCode::OK,
            &json!({
                "account": account,
                "types": types,
                "totals": counts_json(&totals),
                "tests": counts_json(&stats.tests),
                "failures": failures,
                "queue_depth": totals.pending + stats.tests.pending,
                // Every account's queue, as `/metrics` reports it.
                "queue": {
                    "depth": queue.depth,
                    "oldest_age_ms": queue.oldest_accepted_at_ms.map(|at| (now - at).max(0)),
                },
                "generated_at": format_rfc3339_ms(now),
            }),
        ))
    }
}

fn counts_json(counts: &StateCounts) -> Value {
    json!({
        "received": counts.total(),
        "delivered": counts.delivered,
        "pending": counts.pending,
        "failed": counts.failed,
        "dead": counts.dead,
        "skipped": counts.skipped,
    })
}

fn add(totals: &mut StateCounts, counts: &StateCounts) {
    totals.pending += counts.pending;
    totals.delivered += counts.delivered;
    totals.failed += counts.failed;
    totals.dead += counts.dead;
    totals.skipped += counts.skipped;
}
