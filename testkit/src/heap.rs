//! Helpers for the dhat heap tests (`tests/heap_*.rs`, one scenario per file because the
//! profiler is global to the process).
//!
//! Each scenario warms up first (a runtime with its worker threads, the rayon pool, a server
//! and one transfer) so that one-time allocations are not counted, then measures a region
//! with a profiler in testing mode.

/// A multi-threaded runtime like the CLI's, on this machine's 2 cores, with its blocking
/// pool started up front: `BLOCKING_THREADS` threads that stay alive for the whole test, so
/// that a thread started (or retired) in the middle of a measurement does not show up as heap
/// that a transfer left behind.
pub fn runtime() -> tokio::runtime::Runtime {
    const BLOCKING_THREADS: usize = 32;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(BLOCKING_THREADS)
        .thread_keep_alive(std::time::Duration::from_secs(3600))
        .enable_all()
        .build()
        .unwrap();
    let all_running = std::sync::Arc::new(std::sync::Barrier::new(BLOCKING_THREADS));
    rt.block_on(async {
        let tasks: Vec<_> = (0..BLOCKING_THREADS)
            .map(|_| {
                let b = std::sync::Arc::clone(&all_running);
                tokio::task::spawn_blocking(move || {
                    b.wait();
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        // Each worker allocates its list of deferred wake-ups the first time a task on it
        // yields: make both workers do so now (the barrier holds each task on its own worker).
        let both = std::sync::Arc::new(std::sync::Barrier::new(2));
        let tasks: Vec<_> = (0..2)
            .map(|_| {
                let b = std::sync::Arc::clone(&both);
                tokio::spawn(async move {
                    b.wait();
                    for _ in 0..8 {
                        tokio::task::yield_now().await;
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    });
    rt
}

/// Heap statistics of one measured region.
#[derive(Debug, Clone, Copy)]
pub struct Region {
    pub max_bytes: usize,
    pub max_blocks: usize,
    pub curr_bytes: usize,
    pub curr_blocks: usize,
    pub total_blocks: u64,
}

/// Runs `work` under a testing-mode profiler and returns what it allocated.
pub async fn measure<F: std::future::Future>(work: F) -> (F::Output, Region) {
    let profiler = dhat::Profiler::builder().testing().build();
    let out = work.await;
    let s = dhat::HeapStats::get();
    drop(profiler);
    let region = Region {
        max_bytes: s.max_bytes,
        max_blocks: s.max_blocks,
        curr_bytes: s.curr_bytes,
        curr_blocks: s.curr_blocks,
        total_blocks: s.total_blocks,
    };
    eprintln!("{region:?}");
    (out, region)
}

pub const MIB: usize = 1 << 20;

fn live(s: &dhat::HeapStats) -> (usize, usize) {
    (s.curr_bytes, s.curr_blocks)
}

/// Watches the live heap until it has stayed the same for 200 ms (ten looks 20 ms apart),
/// or for at most 5 s.
struct Settling {
    last: dhat::HeapStats,
    same: u32,
    looks: u32,
}

impl Settling {
    const PAUSE: std::time::Duration = std::time::Duration::from_millis(20);

    fn new() -> Self {
        Settling {
            last: dhat::HeapStats::get(),
            same: 0,
            looks: 0,
        }
    }

    /// Looks again after a pause; true once settled or out of time.
    fn look(&mut self) -> bool {
        let now = dhat::HeapStats::get();
        self.same = if live(&now) == live(&self.last) {
            self.same + 1
        } else {
            0
        };
        self.last = now;
        self.looks += 1;
        self.same == 10 || self.looks == 250
    }
}

/// The heap statistics once the live heap has stopped changing (the same for 200 ms; at most
/// 5 s). Ended tasks are freed by the runtime's threads a moment after their results have
/// been collected, so a snapshot taken at once can catch a task that is about to be freed.
///
/// The wait lets the calling `block_on` future be polled: blocking its thread instead can
/// leave a block live at the baseline that goes away later. [`settled_blocking`] is for a
/// caller whose runtime is gone.
pub async fn settled() -> dhat::HeapStats {
    let mut s = Settling::new();
    loop {
        tokio::time::sleep(Settling::PAUSE).await;
        if s.look() {
            return s.last;
        }
    }
}

/// [`settled`] for a thread with no runtime: a rayon thread may still be dropping the closure
/// of the job whose result ended the workload, for a moment after it returned.
pub fn settled_blocking() -> dhat::HeapStats {
    let mut s = Settling::new();
    loop {
        std::thread::sleep(Settling::PAUSE);
        if s.look() {
            return s.last;
        }
    }
}

/// Waits (at most 5 s) for the live heap to come back to `target`'s, and returns the heap
/// statistics then, or settled ones at the deadline: a leak never comes back.
pub async fn settle_to(target: &dhat::HeapStats) -> dhat::HeapStats {
    for _ in 0..250 {
        let now = dhat::HeapStats::get();
        if live(&now) == live(target) {
            return now;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    settled().await
}

/// Sends enough jobs through the global rayon pool that its injector queue moves on to a
/// new block (it allocates one every 63 jobs and frees the old one). Called under the
/// profiler before a baseline snapshot, so that the block live at the snapshot was allocated
/// under the profiler and its later replacement balances out.
pub fn cycle_rayon_injector() {
    const JOBS: usize = 64;
    let pool = tidegate::pipeline::hash::HashPool::default();
    let (tx, rx) = std::sync::mpsc::sync_channel(JOBS);
    for _ in 0..JOBS {
        let tx = tx.clone();
        pool.spawn(move || {
            let _ = tx.send(());
        });
    }
    for _ in 0..JOBS {
        rx.recv().unwrap();
    }
}
