//! Whether a small file is written on its connection's own task or on tokio's blocking pool.
//!
//! Handing each small file to a pool thread and back costs two thread wake-ups; for 10,000
//! files of 4–64 KiB that was several percent of the receiver's throughput (README, Figures).
//! Creating and writing a small file into the page cache takes tens of microseconds, short
//! enough to do on an async worker. But a filesystem can also stall (a full journal, a network
//! filesystem that hangs), and a worker blocked in a write runs nothing else: accepting,
//! timeouts and shutdown all need one. So at most one piece of such work runs inline at a
//! time, and only on a runtime with at least two workers; the rest go to the blocking pool.
//! However the filesystem behaves, the other workers stay free.

use std::sync::atomic::{AtomicBool, Ordering};

/// Decides, per call, where blocking filesystem work runs.
#[derive(Debug)]
pub(crate) struct InlineGate {
    /// The runtime it was made on has a worker to spare.
    allowed: bool,
    /// Some work is running inline right now.
    busy: AtomicBool,
}

impl Default for InlineGate {
    /// A gate for the runtime it is made on (none: never inline).
    fn default() -> Self {
        let allowed =
            tokio::runtime::Handle::try_current().is_ok_and(|h| h.metrics().num_workers() >= 2);
        InlineGate {
            allowed,
            busy: AtomicBool::new(false),
        }
    }
}

/// Clears `busy` when the inline work ends, even by unwinding.
struct Release<'a>(&'a AtomicBool);

impl Drop for Release<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl InlineGate {
    /// Runs `work` on this task if no other work is running inline and the runtime has
    /// another worker; otherwise on the blocking pool.
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> std::io::Result<T> {
        if self.allowed
            && self
                .busy
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
        {
            let _release = Release(&self.busy);
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_piece_of_work_at_a_time_runs_inline() {
        let gate = Arc::new(InlineGate::default());
        let here = std::thread::current().id();
        let ran_on = gate.run(move || std::thread::current().id()).await.unwrap();
        assert_eq!(ran_on, here, "nothing else inline: on this task");
        // While one runs inline (blocked until released), the next goes to the pool.
        let (hold_tx, hold_rx) = std::sync::mpsc::channel::<()>();
        let (started_tx, started_rx) = std::sync::mpsc::channel::<()>();
        let first = tokio::spawn({
            let gate = Arc::clone(&gate);
            async move {
                gate.run(move || {
                    started_tx.send(()).unwrap();
                    hold_rx.recv().unwrap();
                })
                .await
                .unwrap()
            }
        });
        tokio::task::spawn_blocking(move || started_rx.recv().unwrap())
            .await
            .unwrap();
        let here = std::thread::current().id();
        let ran_on = gate.run(move || std::thread::current().id()).await.unwrap();
        assert_ne!(ran_on, here, "another one inline: on the blocking pool");
        hold_tx.send(()).unwrap();
        first.await.unwrap();
        assert!(!gate.busy.load(Ordering::Acquire));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_single_worker_never_runs_it_inline() {
        let gate = InlineGate::default();
        let here = std::thread::current().id();
        let ran_on = gate.run(move || std::thread::current().id()).await.unwrap();
        assert_ne!(ran_on, here);
    }
}
