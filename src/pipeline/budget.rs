//! The memory budget: a byte-counting semaphore.
//!
//! The source may not create a chunk until the budget has room for all of its bytes. The
//! [`Permit`] it gets travels inside the chunk and gives its bytes back when dropped, so a
//! slow consumer stalls the reader and the bytes in flight never exceed the budget. It does
//! not decide *when* chunks are dropped; the consumers do.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A byte budget shared by everything that holds chunk memory. Cloning shares it.
#[derive(Debug, Clone)]
pub struct Budget {
    semaphore: Arc<Semaphore>,
    total_bytes: usize,
}

/// Bytes reserved from a [`Budget`]; given back on drop.
#[derive(Debug)]
pub struct Permit {
    inner: OwnedSemaphorePermit,
}

impl Permit {
    /// How many bytes this permit holds.
    pub fn bytes(&self) -> usize {
        self.inner.num_permits()
    }
}

impl Budget {
    /// A budget of `total_bytes`, clamped to what the semaphore can count.
    pub fn new(total_bytes: usize) -> Self {
        let total_bytes = total_bytes.min(Semaphore::MAX_PERMITS);
        Budget {
            semaphore: Arc::new(Semaphore::new(total_bytes)),
            total_bytes,
        }
    }

    /// The budget's size.
    pub fn total_bytes(&self) -> usize {
        self.total_bytes
    }

    /// Bytes currently reserved by live permits.
    pub fn in_flight_bytes(&self) -> usize {
        self.total_bytes - self.semaphore.available_permits()
    }

    /// Reserves `bytes` (clamped as in [`Budget::acquire`]) if they are free now and nobody
    /// is waiting ahead; `None` otherwise.
    pub fn try_acquire(&self, bytes: usize) -> Option<Permit> {
        let want = u32::try_from(bytes.min(self.total_bytes)).unwrap_or(u32::MAX);
        Arc::clone(&self.semaphore)
            .try_acquire_many_owned(want)
            .ok()
            .map(|inner| Permit { inner })
    }

    /// Waits until `bytes` are free and reserves them. Requests larger than the whole budget
    /// are clamped to it, so they wait for an empty budget rather than forever. Waiters are
    /// served in order.
    pub async fn acquire(&self, bytes: usize) -> Permit {
        let want = u32::try_from(bytes.min(self.total_bytes)).unwrap_or(u32::MAX);
        match Arc::clone(&self.semaphore).acquire_many_owned(want).await {
            Ok(inner) => Permit { inner },
            // The semaphore is never closed: nothing calls `close` on it.
            Err(_) => unreachable!("the budget semaphore is never closed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn permits_return_bytes_on_drop() {
        let budget = Budget::new(100);
        let a = budget.acquire(60).await;
        assert_eq!(a.bytes(), 60);
        assert_eq!(budget.in_flight_bytes(), 60);
        let blocked = tokio::time::timeout(Duration::from_millis(20), budget.acquire(50)).await;
        assert!(blocked.is_err(), "60 + 50 exceeds the budget");
        drop(a);
        let b = budget.acquire(50).await;
        assert_eq!(budget.in_flight_bytes(), 50);
        drop(b);
        assert_eq!(budget.in_flight_bytes(), 0);
    }

    #[tokio::test]
    async fn try_acquire_takes_only_what_is_free() {
        let budget = Budget::new(100);
        let a = budget.try_acquire(60).unwrap();
        assert!(
            budget.try_acquire(50).is_none(),
            "60 + 50 exceeds the budget"
        );
        let b = budget.try_acquire(1000);
        assert!(
            b.is_none(),
            "clamped to the whole budget, which is not free"
        );
        drop(a);
        assert_eq!(budget.try_acquire(1000).unwrap().bytes(), 100);
        assert_eq!(budget.in_flight_bytes(), 0);
    }

    #[tokio::test]
    async fn oversized_request_is_clamped() {
        let budget = Budget::new(10);
        let p = budget.acquire(1000).await;
        assert_eq!(p.bytes(), 10);
    }
}
