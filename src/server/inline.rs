//! Whether a small file is written on its connection's own task or on tokio's blocking pool.
//!
//! Handing each small file to a pool thread and back costs two thread wake-ups; for 10,000
//! files of 4–64 KiB that is several percent of the receiver's throughput
//! (docs/PERFORMANCE.md).
//! Creating and writing a small file into the page cache takes tens of microseconds, short
//! enough to do on an async worker. But a filesystem can also stall (a full journal, a network
//! filesystem that hangs), and a worker blocked in a write runs nothing else: accepting,
//! timeouts and shutdown all need one. So such work runs inline on at most all workers but
//! one at a time (none on a runtime with a single worker); the rest goes to the blocking pool.
//! However the filesystem behaves, one worker stays free. (`tidegate serve` runs one worker
//! more than there are cores, so that every core can write inline.)

use tokio::sync::Semaphore;

/// Decides, per call, where blocking filesystem work runs.
#[derive(Debug)]
pub(crate) struct InlineGate {
    /// One permit per piece of work that may run inline at once: workers but one.
    free: Semaphore,
}

impl Default for InlineGate {
    /// A gate for the runtime it is made on (none: never inline).
    fn default() -> Self {
        let workers =
            tokio::runtime::Handle::try_current().map_or(0, |h| h.metrics().num_workers());
        InlineGate {
            free: Semaphore::new(workers.saturating_sub(1)),
        }
    }
}

impl InlineGate {
    /// Runs `work` on this task if a permit is free (given back when it ends, even by
    /// unwinding); otherwise on the blocking pool.
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> std::io::Result<T> {
        if let Ok(_permit) = self.free.try_acquire() {
            return Ok(work());
        }
        tokio::task::spawn_blocking(work)
            .await
            .map_err(std::io::Error::other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// Starts a piece of work that holds its slot until the sender is dropped or sent to;
    /// returns once it runs.
    async fn hold_one(
        gate: &Arc<InlineGate>,
    ) -> (std::sync::mpsc::Sender<()>, tokio::task::JoinHandle<()>) {
        let (hold_tx, hold_rx) = std::sync::mpsc::channel::<()>();
        let (started_tx, started_rx) = std::sync::mpsc::channel::<()>();
        let held = tokio::spawn({
            let gate = Arc::clone(gate);
            async move {
                gate.run(move || {
                    started_tx.send(()).unwrap();
                    let _ = hold_rx.recv();
                })
                .await
                .unwrap()
            }
        });
        tokio::task::spawn_blocking(move || started_rx.recv().unwrap())
            .await
            .unwrap();
        (hold_tx, held)
    }

    /// Where `gate` runs a piece of work now: on this task's thread or not.
    async fn runs_here(gate: &InlineGate) -> bool {
        let here = std::thread::current().id();
        gate.run(move || std::thread::current().id()).await.unwrap() == here
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_piece_of_work_at_a_time_runs_inline() {
        let gate = Arc::new(InlineGate::default());
        assert!(runs_here(&gate).await, "nothing else inline: on this task");
        let (release, held) = hold_one(&gate).await;
        assert!(!runs_here(&gate).await, "another one inline: on the pool");
        release.send(()).unwrap();
        held.await.unwrap();
        assert_eq!(gate.free.available_permits(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 3)]
    async fn all_workers_but_one_may_run_it_inline() {
        let gate = Arc::new(InlineGate::default());
        let (release, held) = hold_one(&gate).await;
        assert!(runs_here(&gate).await, "one of three busy: still inline");
        let (release2, held2) = hold_one(&gate).await;
        assert!(!runs_here(&gate).await, "two of three busy: on the pool");
        drop((release, release2));
        held.await.unwrap();
        held2.await.unwrap();
        assert_eq!(gate.free.available_permits(), 2);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_single_worker_never_runs_it_inline() {
        let gate = Arc::new(InlineGate::default());
        assert!(!runs_here(&gate).await);
    }
}
