//! Retention: a task that deletes events long at rest (delivered or skipped) in bounded
//! batches, so the store's size follows the traffic of `store.retention`, not of all time.

use std::sync::Arc;
use std::time::Duration;

use mailhook_delivery::now_ms;
use mailhook_store::Store;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Pause between two full batches of one run, so a large backlog of old events never holds
/// the store (SQLite's single writer, or a PostgreSQL connection) for long at a stretch.
const BETWEEN_BATCHES: Duration = Duration::from_millis(10);

/// The running pruning task.
pub(crate) struct Pruner {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Pruner {
    /// Starts pruning every `interval` (the first run one interval after start).
    pub(crate) fn start(
        store: Arc<dyn Store>,
        retention: Duration,
        interval: Duration,
        batch_max: usize,
    ) -> Pruner {
        let (stop, mut stopped) = watch::channel(false);
        let retention_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(interval) => {}
                    _ = stopped.changed() => return,
                }
                let mut pruned = 0;
                loop {
                    if *stopped.borrow() {
                        return;
                    }
                    let cutoff = now_ms().saturating_sub(retention_ms);
                    match store.prune(cutoff, batch_max).await {
                        Ok(deleted) => {
                            pruned += deleted;
                            // A short batch means nothing older is left (or another node
                            // holds the pruning lock): wait for the next run.
                            if deleted < batch_max {
                                break;
                            }
                        }
                        Err(err) => {
                            tracing::warn!(error = %err, "cannot prune old events; next run will retry");
                            break;
                        }
                    }
                    tokio::time::sleep(BETWEEN_BATCHES).await;
                }
                if pruned > 0 {
                    tracing::info!(
                        events = pruned,
                        "pruned events delivered or skipped before the retention"
                    );
                }
            }
        });
        Pruner { stop, task }
    }

    /// Stops after the batch in progress, if any.
    pub(crate) async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}
