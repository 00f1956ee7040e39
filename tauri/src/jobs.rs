//! The plugin's managed state: every running job (transfer, hash, receiver) with its
//! cancellation token and task, and what `transfers()` reports of it. A job's entry leaves
//! when the job ends, so the state holds only what runs now.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use serde::Serialize;
use tauri::async_runtime::JoinHandle;
use tokio_util::sync::CancellationToken;

/// What kind of job an id names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Transfer,
    Hash,
    Receiver,
}

/// Live counts a transfer's task updates and `transfers()` reads.
#[derive(Debug, Default)]
pub(crate) struct Live {
    pub(crate) done_bytes: AtomicU64,
    /// `u64::MAX` until the total is known.
    pub(crate) total_bytes: AtomicU64,
}

#[derive(Debug)]
struct Job {
    kind: Kind,
    cancel: CancellationToken,
    task: Option<JoinHandle<()>>,
    sources: Vec<String>,
    destinations: Vec<String>,
    live: Arc<Live>,
}

/// A running transfer, as `transfers()` lists it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TransferInfo {
    /// Its id.
    pub id: u64,
    /// The sources as given.
    pub sources: Vec<String>,
    /// The destinations as given.
    pub destinations: Vec<String>,
    /// Bytes done.
    pub done_bytes: u64,
    /// All bytes, once counted.
    pub total_bytes: Option<u64>,
    /// `running`, or `cancelling` once cancelled and not yet ended.
    pub state: &'static str,
}

/// Every running job.
#[derive(Debug, Default)]
pub struct Jobs {
    next: AtomicU64,
    running: Mutex<HashMap<u64, Job>>,
}

impl Jobs {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Job>> {
        self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a job before its task starts; returns its id and live counts.
    pub(crate) fn add(
        &self,
        kind: Kind,
        cancel: CancellationToken,
        sources: Vec<String>,
        destinations: Vec<String>,
    ) -> (u64, Arc<Live>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let live = Arc::new(Live {
            done_bytes: AtomicU64::new(0),
            total_bytes: AtomicU64::new(u64::MAX),
        });
        let job = Job {
            kind,
            cancel,
            task: None,
            sources,
            destinations,
            live: Arc::clone(&live),
        };
        self.lock().insert(id, job);
        (id, live)
    }

    /// Keeps the job's task, unless the job has ended already.
    pub(crate) fn set_task(&self, id: u64, task: JoinHandle<()>) {
        if let Some(job) = self.lock().get_mut(&id) {
            job.task = Some(task);
        }
    }

    /// The job ended: its entry leaves.
    pub(crate) fn remove(&self, id: u64) {
        let mut running = self.lock();
        running.remove(&id);
        if running.len() <= running.capacity() / 4 {
            running.shrink_to_fit();
        }
    }

    /// Cancels job `id` if it is of one of `kinds`; false when there is none.
    pub(crate) fn cancel(&self, id: u64, kinds: &[Kind]) -> bool {
        match self.lock().get(&id) {
            Some(job) if kinds.contains(&job.kind) => {
                job.cancel.cancel();
                true
            }
            _ => false,
        }
    }

    /// Cancels every job (the app is exiting).
    pub(crate) fn cancel_all(&self) {
        for job in self.lock().values() {
            job.cancel.cancel();
        }
    }

    /// The running transfers, by id.
    pub(crate) fn transfers(&self) -> Vec<TransferInfo> {
        let mut list: Vec<_> = self
            .lock()
            .iter()
            .filter(|(_, j)| j.kind == Kind::Transfer)
            .map(|(&id, j)| {
                let total = j.live.total_bytes.load(Ordering::Relaxed);
                TransferInfo {
                    id,
                    sources: j.sources.clone(),
                    destinations: j.destinations.clone(),
                    done_bytes: j.live.done_bytes.load(Ordering::Relaxed),
                    total_bytes: (total != u64::MAX).then_some(total),
                    state: if j.cancel.is_cancelled() {
                        "cancelling"
                    } else {
                        "running"
                    },
                }
            })
            .collect();
        list.sort_by_key(|t| t.id);
        list
    }

    /// Jobs held: 0 once every job has ended.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no job is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
