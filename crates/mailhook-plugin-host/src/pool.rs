//! The plugin threads: plugin calls are synchronous and CPU-bound, so they run here, never on
//! the async runtime's worker threads. A bounded queue in front of them: when it is full,
//! the delivery tasks asking for a call wait (back-pressure), nothing grows.
//!
//! The queue is a `VecDeque` under a mutex with a condvar for the threads, not a channel:
//! a call wakes a sleeping thread only when no other wake-up is already on its way, and a
//! thread that finishes a call takes the next one without sleeping in between. The
//! back-pressure is a semaphore of free places, which async callers wait on.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use tokio::sync::{Semaphore, oneshot};
use wasmtime::Engine;

use crate::error::{Error, Result};

type Job = Box<dyn FnOnce(&Engine) + Send>;

pub(crate) struct Pool {
    shared: Arc<Shared>,
}

struct Shared {
    queue: Mutex<Queue>,
    /// Signalled when a job is queued for a sleeping thread, or when the pool closes.
    ready: Condvar,
    /// Free places in the queue: a caller takes one before queueing, the thread that takes
    /// the job off gives it back.
    room: Semaphore,
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    /// Threads waiting on `ready`.
    asleep: usize,
    /// Of those, how many have been signalled and not yet woken: a new job needs another
    /// wake-up only if there are more sleepers than that.
    waking: usize,
    closed: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // The lock is never held while a job runs, so a poisoned lock still guards a whole
        // queue.
        self.queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues `job`; gives it back when the pool is closed.
    fn push(&self, job: Job) -> std::result::Result<(), Job> {
        let mut queue = self.lock();
        if queue.closed {
            return Err(job);
        }
        queue.jobs.push_back(job);
        let wake = queue.asleep > queue.waking;
        if wake {
            queue.waking += 1;
        }
        drop(queue);
        if wake {
            self.ready.notify_one();
        }
        Ok(())
    }

    /// The next job for a thread, waiting for one; `None` once the pool is closed and the
    /// queue is empty.
    fn next(&self) -> Option<Job> {
        let mut queue = self.lock();
        loop {
            if let Some(job) = queue.jobs.pop_front() {
                drop(queue);
                self.room.add_permits(1);
                return Some(job);
            }
            if queue.closed {
                return None;
            }
            queue.asleep += 1;
            queue = self
                .ready
                .wait(queue)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            queue.asleep -= 1;
            // A spurious wake-up may take a signal's place; then the count is one short,
            // which costs at most one extra signal later, never a missed one.
            queue.waking = queue.waking.saturating_sub(1);
        }
    }
}

impl Pool {
    pub fn start(threads: usize, queue_max: usize, engine: Engine) -> Result<Pool> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            ready: Condvar::new(),
            room: Semaphore::new(queue_max),
        });
        for i in 0..threads {
            let shared = shared.clone();
            let engine = engine.clone();
            std::thread::Builder::new()
                .name(format!("plugin-{i}"))
                .spawn(move || {
                    while let Some(job) = shared.next() {
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
        Ok(Pool { shared })
    }

    /// Runs `call` on a plugin thread and returns what it returned; `None` when the threads
    /// are gone (shutting down) or the call panicked.
    pub async fn run<R: Send + 'static>(
        &self,
        call: impl FnOnce(&Engine) -> R + Send + 'static,
    ) -> Option<R> {
        // The place is given back by the thread that takes the job off the queue, not by
        // this task: a caller that stops waiting must not free a place its job still holds.
        self.shared.room.acquire().await.ok()?.forget();
        let (done, result) = oneshot::channel();
        let job: Job = Box::new(move |engine| {
            let _ = done.send(call(engine));
        });
        self.shared.push(job).ok()?;
        result.await.ok()
    }
}

impl Drop for Pool {
    /// The threads finish the jobs already queued, then end; callers waiting for a place
    /// get `None`.
    fn drop(&mut self) {
        self.shared.room.close();
        self.shared.lock().closed = true;
        self.shared.ready.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    fn pool(threads: usize, queue_max: usize) -> Arc<Pool> {
        let engine = Engine::new(&wasmtime::Config::new()).expect("an engine with defaults");
        Arc::new(Pool::start(threads, queue_max, engine).expect("the threads start"))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_call_runs_once_and_returns_its_result() {
        let pool = pool(3, 4);
        let ran = Arc::new(AtomicUsize::new(0));
        let calls: Vec<_> = (0..500usize)
            .map(|i| {
                let (pool, ran) = (pool.clone(), ran.clone());
                tokio::spawn(async move {
                    pool.run(move |_| {
                        ran.fetch_add(1, Ordering::Relaxed);
                        i * 2
                    })
                    .await
                })
            })
            .collect();
        for (i, call) in calls.into_iter().enumerate() {
            assert_eq!(call.await.expect("the task ends"), Some(i * 2));
        }
        assert_eq!(ran.load(Ordering::Relaxed), 500);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_queue_makes_callers_wait() {
        let pool = pool(1, 2);
        let (release, hold) = std::sync::mpsc::channel::<()>();
        let hold = Arc::new(Mutex::new(hold));
        // One call holds the only thread; two more fill the queue.
        let held: Vec<_> = (0..3)
            .map(|_| {
                let (pool, hold) = (pool.clone(), hold.clone());
                tokio::spawn(async move {
                    pool.run(move |_| hold.lock().expect("not poisoned").recv().ok())
                        .await
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let fourth = {
            let pool = pool.clone();
            tokio::spawn(async move { pool.run(|_| 4).await })
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            !fourth.is_finished(),
            "a fourth call must wait while the thread is busy and the queue is full"
        );
        for _ in 0..3 {
            release.send(()).expect("the calls wait for it");
        }
        for call in held {
            assert_eq!(call.await.expect("the task ends"), Some(Some(())));
        }
        assert_eq!(fourth.await.expect("the task ends"), Some(4));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_call_fails_alone() {
        let pool = pool(1, 4);
        assert_eq!(
            pool.run(|_| -> u32 { panic!("a bug in host code") }).await,
            None
        );
        assert_eq!(pool.run(|_| 7).await, Some(7));
    }
}
