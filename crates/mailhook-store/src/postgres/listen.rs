//! The LISTEN connection: one per node, outside the pool, that rings the local work bus on
//! every `NOTIFY mailhook_work` (new events, released leases, replays from any node), and
//! reconnects by itself with backoff when the server goes away.

use std::time::Duration;

use mailhook_core::bus::WorkBus;
use tokio_postgres::{AsyncMessage, NoTls};

/// The channel intake, release and replay notify on.
pub(super) const CHANNEL: &str = "mailhook_work";

/// First pause after a failed connection; it doubles up to `BACKOFF_MAX`.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Runs until aborted (the store's `close` aborts it).
pub(super) async fn run(config: tokio_postgres::Config, bus: WorkBus) {
    let mut backoff = BACKOFF_MIN;
    let mut lost = false;
    loop {
        match config.connect(NoTls).await {
            Ok((client, mut connection)) => {
                // The connection delivers notifications only while it is polled, and the
                // LISTEN below only completes while it is polled: drive it alongside.
                let ring = bus.clone();
                let driven = async move {
                    loop {
                        match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                            Some(Ok(AsyncMessage::Notification(_))) => ring.ring(),
                            Some(Ok(_)) => {}
                            Some(Err(err)) => return err.to_string(),
                            None => return "connection closed".to_owned(),
                        }
                    }
                };
                tokio::pin!(driven);
                let listen = format!("LISTEN {CHANNEL}");
                let listened = tokio::select! {
                    listened = client.batch_execute(&listen) => listened.map_err(|err| err.to_string()),
                    reason = &mut driven => Err(reason),
                };
                match listened {
                    Ok(()) => {
                        if lost {
                            tracing::info!("postgresql LISTEN connection is back");
                        }
                        backoff = BACKOFF_MIN;
                        // Work may have come while nobody listened: look at once.
                        bus.ring();
                        let reason = driven.await;
                        tracing::warn!(error = %reason, "postgresql LISTEN connection lost; reconnecting");
                        lost = true;
                    }
                    Err(reason) => {
                        tracing::warn!(error = %reason, "cannot LISTEN on postgresql; retrying");
                        lost = true;
                    }
                }
                drop(client);
            }
            Err(err) => {
                if !lost {
                    tracing::warn!(error = %err, "cannot open the postgresql LISTEN connection; retrying");
                }
                lost = true;
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}
