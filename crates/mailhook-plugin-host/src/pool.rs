//! The plugin threads: plugin calls are synchronous and CPU-bound, so they run here, never on
//! the async runtime's worker threads. A bounded queue in front of them: when it is full,
//! the delivery tasks asking for a call wait (back-pressure), nothing grows.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};
use wasmtime::Engine;

use crate::error::{Error, Result};

type Job = Box<dyn FnOnce(&Engine) + Send>;

pub(crate) struct Pool {
    jobs: mpsc::Sender<Job>,
}

impl Pool {
    pub fn start(threads: usize, queue_max: usize, engine: Engine) -> Result<Pool> {
        let (jobs, queue) = mpsc::channel::<Job>(queue_max);
        let queue = Arc::new(Mutex::new(queue));
        for i in 0..threads {
            let queue = queue.clone();
            let engine = engine.clone();
            std::thread::Builder::new()
                .name(format!("plugin-{i}"))
                .spawn(move || {
                    loop {
                        // One thread waits on the queue at a time; the others wait on the
                        // lock, which is the same thing.
                        let job = queue
                            .lock()
                            .unwrap_or_else(|poisoned| poisoned.into_inner())
                            .blocking_recv();
                        let Some(job) = job else { return };
                        // A bug in the host code of one call must not take a thread down
                        // with it; the caller then hears nothing and reports the call failed.
                        let _ = std::panic::catch_unwind(AssertUnwindSafe(|| job(&engine)));
                    }
                })
                .map_err(|source| Error::Thread {
                    what: "call",
                    source,
                })?;
        }
        Ok(Pool { jobs })
    }

    /// Runs `call` on a plugin thread and returns what it returned; `None` when the threads
    /// are gone (shutting down) or the call panicked.
    pub async fn run<R: Send + 'static>(
        &self,
        call: impl FnOnce(&Engine) -> R + Send + 'static,
    ) -> Option<R> {
        let (done, result) = oneshot::channel();
        let job: Job = Box::new(move |engine| {
            let _ = done.send(call(engine));
        });
        self.jobs.send(job).await.ok()?;
        result.await.ok()
    }
}
